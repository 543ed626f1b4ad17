"""Live session events across replicas: one LISTEN connection per process, fanned out.

Every event row is written with a NOTIFY in the same transaction, so a notification means
"there is something committed to read". While the listener is connected, a waiting subscriber
touches no database at all; while it is not, subscribers poll on a short timer, and on
reconnecting every subscriber is woken once: a lost notification delays an event, never loses
it. Token revocations come on a second channel and end the streams that token opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import structlog

from app.db import TOKEN_REVOKED_CHANNEL, asyncpg_dsn
from app.sessions.repository.eventlog import EVENTS_CHANNEL
from app.sessions.repository.workqueue import RECONCILER_PHASES
from app.sessions.streams import StreamRegistry

log = structlog.get_logger("vdi.events")

RECONNECT_DELAY_S = 1.0
CONNECT_WAIT_S = 5.0  # start() waits this long for the first LISTEN, then goes on polling


class EventHub:
    def __init__(self, database_url: str, streams: StreamRegistry | None = None) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self.streams = streams
        self._subscribers: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self.work_event = asyncio.Event()  # set when a session needs the reconciler now
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        # Called on every token revocation notice, and on each (re)connection of the listener
        # (notices may have been missed while it was down): caches of tokens drop what they hold.
        self.on_token_revoked: list[Callable[[], None]] = []

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="vdi-event-hub")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CONNECT_WAIT_S):  # not wait_for (gh-86296, 3.11)
                await self._connected.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def subscribe(self, session_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set whenever the session may have new events."""
        wake = asyncio.Event()
        key = str(session_id)
        self._subscribers[key].add(wake)
        try:
            yield wake
        finally:
            self._subscribers[key].discard(wake)
            if not self._subscribers[key]:
                del self._subscribers[key]

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        session_id, _, phase = payload.partition(" ")
        if phase in RECONCILER_PHASES:
            self.work_event.set()
        for wake in self._subscribers.get(session_id, ()):
            wake.set()

    @property
    def listening(self) -> bool:
        """Notifications arrive: waiting subscribers need no polling."""
        return self._connected.is_set()

    def _on_token_revoked(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        for forget in self.on_token_revoked:
            forget()
        if self.streams is not None:
            with contextlib.suppress(ValueError):
                self.streams.revoke(uuid.UUID(payload))

    def _wake_all(self) -> None:
        for wakes in self._subscribers.values():
            for wake in wakes:
                wake.set()

    @staticmethod
    async def _until_closed(connection: asyncpg.Connection) -> None:
        closed = asyncio.Event()
        connection.add_termination_listener(lambda _conn: closed.set())
        await closed.wait()

    async def _run(self) -> None:
        while True:
            connection = None
            try:
                connection = await asyncpg.connect(self._dsn)
                await connection.add_listener(EVENTS_CHANNEL, self._on_notify)
                await connection.add_listener(TOKEN_REVOKED_CHANNEL, self._on_token_revoked)
                for forget in self.on_token_revoked:
                    forget()
                self._connected.set()
                self._wake_all()  # catch up on whatever passed while disconnected
                await self._until_closed(connection)
                log.warning("event listener connection lost; reconnecting")
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("event listener cannot connect", error=str(error))
            finally:
                self._connected.clear()
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=2)
            await asyncio.sleep(RECONNECT_DELAY_S)


async def wait_for_wake(
    wake: asyncio.Event, timeout_s: float, closed: asyncio.Event | None = None
) -> None:
    """Until `wake` (new events), `closed` (end the stream) or the timeout."""
    waiters = [asyncio.ensure_future(wake.wait())]
    if closed is not None:
        waiters.append(asyncio.ensure_future(closed.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    wake.clear()
