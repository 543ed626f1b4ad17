"""Token rules: creation (the plaintext leaves once), revocation, the bootstrap admin token."""

from __future__ import annotations

import uuid
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


class TokenNotFound(NotFound):
    slug, title = "token-not-found", "Token not found"


async def authenticate(db: AsyncSession, presented: str) -> Principal | None:
    token = await repository.get_active_by_hash(db, hash_api_token(presented))
    if token is None:
        return None
    return Principal(token_id=token.id, name=token.name, scopes=frozenset(token.scopes))


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
    await db.flush()
    return f"{'created' if created else 'kept' if current else 'none set'}; revoked {revoked}"
