"""CORS for the API, off unless VDI_CORS_ORIGINS names origins: a browser application on one of
them may call /v1 with a token of its own (scoped for it, see docs/security.md). Never for the
agents' callbacks (a session's health reports and TURN credentials: no page has business there),
never for the operational endpoints, never with credentials (the API takes bearer tokens, not
cookies), never a wildcard."""

from __future__ import annotations

import re

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

AGENT_CALLBACK = re.compile(r"^/v1/sessions/[^/]+/(health|turn)$")
ALLOWED_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Last-Event-ID",
    "X-Request-ID",
]
EXPOSED_HEADERS = [
    "Location",
    "Idempotent-Replayed",
    "Retry-After",
    "X-Request-ID",
    "WWW-Authenticate",
]
PREFLIGHT_MAX_AGE_S = 600


class ApiCors:
    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            allow_credentials=False,
            max_age=PREFLIGHT_MAX_AGE_S,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/v1/") and not AGENT_CALLBACK.match(path):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
