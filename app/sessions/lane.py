"""The heartbeat lane: an agent's unchanged report answered without the framework.

At 5,000 sessions the agents' heartbeats are most of the requests a replica serves, and almost
all say what the previous report said. This ASGI middleware (inside the edge, correlation and
text guard middlewares, so logs, metrics, request ids and body checks apply as to any request)
admits a report (well-formed, with the session's agent token, within the rate limit: see
`heartbeat.py`) and answers the common case, a Running session whose last report meant the
same: one autocommitted UPDATE and the session as JSON, with the same body and headers the
route would send. An admitted report that changes something goes on to the route with its
`Admitted` record, which the route folds in without deciding again; anything not admitted
(another path, a bad token or body, a limited rate, a database error) goes on to the route
alone, which answers it as it always has."""

from __future__ import annotations

import re
import uuid
from typing import Any

import structlog
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from app.security import check_agent_token
from app.sessions import heartbeat
from app.sessions.schemas import HealthReport
from app.textguard import replay, replay_body

log = structlog.get_logger("vdi.heartbeat")

COUNTED = "vdi_report_counted"  # scope["state"] key: counted by the limiter, nothing decided

PATH = re.compile(r"/v1/sessions/([0-9a-fA-F-]{36})/health")
REPORT_INTERVAL_HEADER = "VDI-Report-Interval"


class HeartbeatLane:
    def __init__(self, app: ASGIApp, *, state: Any) -> None:
        self.app = app
        self.state = state  # the FastAPI app's state: settings, sessionmakers, limiter, metrics
        self._route: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = PATH.fullmatch(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        body, rest = await _read(receive)
        replayed = replay_body(body, receive) if rest is None else rest
        answer = await self._answer(scope, match.group(1), body) if rest is None else None
        if answer is None:
            await self.app(scope, replayed, send)
            return
        payload, interval = answer
        scope["route"] = self._report_route(scope)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (REPORT_INTERVAL_HEADER.lower().encode(), interval.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _answer(self, scope: Scope, raw_id: str, body: bytes) -> tuple[bytes, str] | None:
        settings = self.state.settings
        try:
            session_id = uuid.UUID(raw_id)
            report = HealthReport.model_validate_json(body)
        except (ValueError, ValidationError):
            return None
        token = _bearer(scope)
        if token is None or not check_agent_token(settings.require_secret_key(), session_id, token):
            return None
        if self.state.report_limit.hit(str(session_id)) is not None:
            return None  # the route answers the 429 (and counts nothing more)
        digest = heartbeat.report_digest(report)
        try:
            touched = await heartbeat.touch(self.state.direct_pool, settings, session_id, digest)
        except Exception as error:  # database down, pool exhausted...: the route answers it
            log.warning("heartbeat lane: the route answers", error=type(error).__name__)
            scope.setdefault("state", {})[COUNTED] = True  # admitted but not decided
            return None
        if touched is None:
            admitted = heartbeat.Admitted(session_id, report, digest)
            scope.setdefault("state", {})[heartbeat.ADMITTED] = admitted
            return None
        self.state.metrics.health_reports.labels(outcome=touched.outcome.value).inc()
        return touched.document, str(settings.effective_report_interval_s)

    def _report_route(self, scope: Scope) -> Any:
        """The route's object, for the edge's metrics label (as if the router had matched)."""
        if self._route is None:
            app = scope.get("app")
            routes = getattr(getattr(app, "router", None), "routes", [])
            self._route = next(
                (r for r in routes if getattr(r, "name", "") == "report_session_health"), None
            )
        return self._route


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


async def _read(receive: Receive) -> tuple[bytes, Receive | None]:
    """The whole body; or, when the client sent something else first, a receive that replays
    what was read (then the route deals with it)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"", replay([message], receive)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), None
