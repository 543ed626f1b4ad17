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
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        await db.flush()
    # Delivered at commit: every replica ends the event streams this token opened.
    await repository.notify_revoked(db, token_id)


async def sync_bootstrap_token(db: AsyncSession, plaintext: str | None) -> str:
    """Only the current VDI_BOOTSTRAP_TOKEN works as a bootstrap token: earlier values are
    revoked, and unset revokes them all. Returns what was done ("created", "kept", "revoked
    <n>", ...).

    A bootstrap token an admin revoked stays revoked: rotate it by setting a new value. During
    a rolling update a replica still holding an older value revokes nothing newer than its own
    (only tokens created before the current one are revoked), so replicas never undo each
    other's rotation.
    """
    active = await repository.active_bootstrap_tokens(db)
    current = None
    created = False
    if plaintext is not None:
        token_hash = hash_api_token(plaintext)
        current = await repository.get_by_hash(db, token_hash)
        if current is None:
            current = ApiToken(
                name=BOOTSTRAP_TOKEN_NAME,
                scopes=[Scope.admin.value],
                token_hash=token_hash,
                bootstrap=True,
                created_at=utcnow(),
            )
            db.add(current)
            created = True
    now = utcnow()
    revoked = 0
    for token in active:
        if current is not None and (
            token.id == current.id or token.created_at > current.created_at
        ):
            continue
        token.revoked_at = now
        revoked += 1
        await repository.notify_revoked(db, token.id)  # caches and streams on every replica
    await db.flush()
    return f"{'created' if created else 'kept' if current else 'none set'}; revoked {revoked}"
