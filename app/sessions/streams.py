"""Open event streams in this replica: bounded per token and per replica (over the bound: 429
with Retry-After), and closed when the token that opened them is revoked, here or on another
replica (the revocation is NOTIFYed on app.db.TOKEN_REVOKED_CHANNEL)."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from app.errors import TooManyRequests


@dataclass(eq=False)
class Stream:
    token_id: uuid.UUID
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # set: end the stream now
    released: bool = False


class StreamRegistry:
    def __init__(self, per_token: int, per_replica: int) -> None:
        self.per_token = per_token
        self.per_replica = per_replica
        self._by_token: defaultdict[uuid.UUID, set[Stream]] = defaultdict(set)
        self.open_count = 0

    def open(self, token_id: uuid.UUID) -> Stream:
        if len(self._by_token[token_id]) >= self.per_token:
            raise TooManyRequests(
                f"This token already has {self.per_token} event streams open on this replica "
                "(VDI_MAX_STREAMS_PER_TOKEN); close one, or retry after the Retry-After delay",
                retry_after_s=5,
            )
        if self.open_count >= self.per_replica:
            raise TooManyRequests(
                f"This replica serves its maximum of {self.per_replica} event streams "
                "(VDI_MAX_STREAMS_PER_REPLICA); retry after the Retry-After delay",
                retry_after_s=5,
            )
        stream = Stream(token_id)
        self._by_token[token_id].add(stream)
        self.open_count += 1
        return stream

    def release(self, stream: Stream) -> None:
        if stream.released:
            return
        stream.released = True
        self.open_count -= 1
        streams = self._by_token.get(stream.token_id)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._by_token[stream.token_id]

    def revoke(self, token_id: uuid.UUID) -> int:
        """End every stream the token opened; how many there were."""
        streams = list(self._by_token.get(token_id, ()))
        for stream in streams:
            stream.closed.set()
        return len(streams)
