"""HTTP routes of /v1/tokens (admin only)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.audit import service as audit
from app.auth import service
from app.auth.deps import AUTH_ERRORS, Admin
from app.auth.schemas import TokenCreate, TokenCreated, TokenInfo, TokenList
from app.db import DbSession
from app.errors import problem_responses

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


@router.post(
    "",
    name="create_token",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(*AUTH_ERRORS),
    summary="Create an API token (the token is shown only in this response)",
)
async def create_token(body: TokenCreate, db: DbSession, principal: Admin) -> TokenCreated:
    token, plaintext = await service.create_token(db, body.name, body.scopes)
    audit.record(
        db,
        "token.create",
        actor=principal.name,
        data={"token_id": str(token.id), "name": token.name, "scopes": sorted(token.scopes)},
    )
    return TokenCreated(
        id=token.id,
        name=token.name,
        scopes=token.scopes,
        created_at=token.created_at,
        token=plaintext,
    )


@router.get(
    "", name="list_tokens", responses=problem_responses(*AUTH_ERRORS), summary="List tokens"
)
async def list_tokens(db: DbSession, _: Admin) -> TokenList:
    return TokenList(items=[TokenInfo.model_validate(t) for t in await service.list_tokens(db)])


@router.delete(
    "/{token_id}",
    name="revoke_token",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(*AUTH_ERRORS, service.TokenNotFound),
    summary="Revoke a token (revoking twice is not an error)",
)
async def revoke_token(token_id: uuid.UUID, db: DbSession, principal: Admin) -> Response:
    await service.revoke_token(db, token_id)
    audit.record(db, "token.revoke", actor=principal.name, data={"token_id": str(token_id)})
    return Response(status_code=status.HTTP_204_NO_CONTENT)
