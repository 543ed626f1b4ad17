"""Token rules: creation (the plaintext leaves once), revocation, the bootstrap admin token."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import repository
from app.auth.schemas import Scope
from app.errors import NotFound
from app.models import ApiToken
from app.models._types import utcnow
from app.security import hash_api_token, new_api_token

BOOTSTRAP_TOKEN_NAME = "bootstrap"


@dataclass(frozen=True)
class Principal:
    token_id: uuid.UUID
    name: str
    scopes: frozenset[str]

    def allows(self, scope: Scope) -> bool:
        return Scope.admin in self.scopes or scope in self.scopes


class TokenCache:
    """Principals by token hash for a few seconds, so most requests skip the token lookup.
    Cleared by every revocation notice (from any replica) and whenever notices may have been
    missed; not used at all while they cannot arrive (`usable` false), so a revoked token
    stops working as soon as its notice is delivered, as without the cache."""

    def __init__(self, ttl_s: float = 5.0, usable: Callable[[], bool] = lambda: True) -> None:
        self.ttl_s = ttl_s
        self.usable = usable
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, token_hash: str) -> Principal | None:
        entry = self._entries.get(token_hash)
        if entry is None or not self.usable() or time.monotonic() - entry[0] > self.ttl_s:
            return None
        return entry[1]

    def put(self, token_hash: str, principal: Principal) -> None:
        if self.usable():
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[token_hash] = (time.monotonic(), principal)

    def clear(self) -> None:
        self._entries.clear()


class TokenNotFound(NotFound):
    """No API token has this id (or it was deleted)."""

    slug, title = "token-not-found", "Token not found"


async def authenticate(
    db: AsyncSession, presented: str, cache: TokenCache | None = None
) -> Principal | None:
    token_hash = hash_api_token(presented)
    if cache is not None and (known := cache.get(token_hash)) is not None:
        return known
    token = await repository.get_active_by_hash(db, token_hash)
    if token is None:
        return None
    principal = Principal(token_id=token.id, name=token.name, scopes=frozenset(token.scopes))
    if cache is not None:
        cache.put(token_hash, principal)
    return principal


async def create_token(db: AsyncSession, name: str, scopes: list[Scope]) -> tuple[ApiToken, str]:
    plaintext = new_api_token()
    token = ApiToken(
        name=name,
        scopes=sorted({str(scope) for scope in scopes}),
        token_hash=hash_api_token(plaintext),
    )
    db.add(token)
    await db.flush()
    return token, plaintext


async def list_tokens(db: AsyncSession) -> list[ApiToken]:
    return await repository.list_all(db)


async def revoke_token(db: AsyncSession, token_id: uuid.UUID) -> None:
    token = await repository.get(db, token_id)
    if token is None:
        raise TokenNotFound(f"No token with id {token_id}; list tokens with GET /v1/tokens")
    if token.revoked_at is None or token.revoked_reason != REVOKED_BY_ADMIN:
        token.revoked_at = token.revoked_at or utcnow()
        token.revoked_reason = REVOKED_BY_ADMIN  # sticks, even if its bootstrap value returns
        await db.flush()
    # Delivered at commit: every replica ends the event streams this token opened.
    await repository.notify_revoked(db, token_id)


REVOKED_BY_ADMIN = "admin"
REVOKED_BY_ROTATION = "rotated"


async def sync_bootstrap_token(
    db: AsyncSession, plaintext: str | None, generation: int | None = None
) -> str:
    """Make VDI_BOOTSTRAP_TOKEN the one bootstrap token that works; returns what was done.

    - A new value is created; every other bootstrap token is revoked (as rotated); unset
      revokes them all.
    - A value that comes back (T1 -> T2 -> T1: a `helm rollback`, or the old Secret restored
      after T2 leaked) works again, and the values in between are revoked. A value an admin
      revoked (DELETE /v1/tokens/{id}) stays revoked: set a new one.
    - `generation` (VDI_BOOTSTRAP_GENERATION; the chart sets the Helm release revision) orders
      configurations: a replica of an older one (a rolling update's old pod restarting)
      changes nothing. Without it, the last replica to start decides.
    """
    tokens = await repository.bootstrap_tokens(db)
    known = [t.bootstrap_generation for t in tokens if t.bootstrap_generation is not None]
    newest = max(known, default=None)
    if generation is not None and newest is not None and generation < newest:
        return f"generation {generation} is older than {newest}: nothing changed"
    now = utcnow()
    current = None
    outcome = "none set"
    if plaintext is not None:
        token_hash = hash_api_token(plaintext)
        current = next((t for t in tokens if t.token_hash == token_hash), None)
        if current is None and await repository.get_by_hash(db, token_hash) is not None:
            raise ValueError("VDI_BOOTSTRAP_TOKEN equals an API token; choose another value")
        if current is None:
            current = ApiToken(
                name=BOOTSTRAP_TOKEN_NAME,
                scopes=[Scope.admin.value],
                token_hash=token_hash,
                bootstrap=True,
                created_at=now,
            )
            db.add(current)
            outcome = "created"
        elif current.revoked_at is None:
            outcome = "kept"
        elif current.revoked_reason == REVOKED_BY_ADMIN:
            outcome = "revoked by an admin: set a new value"
        else:
            current.revoked_at, current.revoked_reason = None, None
            outcome = "restored"
        current.bootstrap_generation = generation
    revoked = 0
    for token in tokens:
        if token is current or token.revoked_at is not None:
            continue
        token.revoked_at, token.revoked_reason = now, REVOKED_BY_ROTATION
        revoked += 1
        await repository.notify_revoked(db, token.id)  # caches and streams on every replica
    await db.flush()
    return f"{outcome}; revoked {revoked}"
