"""Route dependencies: bearer authentication and one alias per scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.schemas import Scope
from app.auth.service import Principal, authenticate
from app.db import DbSession
from app.errors import Forbidden, Unauthorized

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An API token (`vdi_...`) or, for health reports, the session's agent token.",
)
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


async def _principal(db: DbSession, credentials: BearerCredentials, request: Request) -> Principal:
    if credentials is None:
        raise Unauthorized("Send an API token as `Authorization: Bearer <token>`")
    cache = getattr(request.app.state, "token_cache", None)
    principal = await authenticate(db, credentials.credentials, cache)
    if principal is None:
        raise Unauthorized("The token is unknown or revoked; ask an admin for a valid one")
    structlog.contextvars.bind_contextvars(caller=principal.name)
    return principal


def require(scope: Scope) -> Callable[[Principal], Awaitable[Principal]]:
    async def _check(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
        if not principal.allows(scope):
            raise Forbidden(
                f"This operation needs the scope `{scope}`; the token `{principal.name}` has "
                f"{', '.join(sorted(principal.scopes))}"
            )
        return principal

    return _check


Admin = Annotated[Principal, Depends(require(Scope.admin))]
SessionsRead = Annotated[Principal, Depends(require(Scope.sessions_read))]
SessionsWrite = Annotated[Principal, Depends(require(Scope.sessions_write))]
SessionsConnect = Annotated[Principal, Depends(require(Scope.sessions_connect))]
TemplatesWrite = Annotated[Principal, Depends(require(Scope.templates_write))]

AUTH_ERRORS = (Unauthorized, Forbidden)
