"""create_app(): routers, middleware and the lifespan (database, event hub, bootstrap token)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import asyncpg
import structlog
from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import __version__, openapi
from app.audit.delivery import AuditDeliverer
from app.audit.router import router as audit_router
from app.auth import service as auth_service
from app.auth.router import router as tokens_router
from app.cluster.kube import KubeCluster
from app.config import Settings
from app.controllers import Reconciler
from app.cors import ApiCors
from app.db import asyncpg_dsn, create_engine, create_sessionmaker, open_direct_pool
from app.errors import install_error_handlers
from app.observability import KNOWN_REASONS, EdgeMiddleware, Metrics
from app.ops.router import router as ops_router
from app.ratelimit import PerKeyLimit
from app.runtimes import start_runtime
from app.sessions.events import EventHub
from app.sessions.lane import HeartbeatLane
from app.sessions.repository import eventlog
from app.sessions.router import router as sessions_router
from app.sessions.schemas import Phase, SessionEventFrame
from app.sessions.streams import StreamRegistry
from app.shares.router import router as shares_router
from app.templates.router import router as templates_router
from app.textguard import TextGuardMiddleware

log = structlog.get_logger("vdi.app")

DESCRIPTION = """
Control plane for GPU remote-desktop sessions (Selkies-GStreamer over WebRTC) on Kubernetes.

Authenticate with `Authorization: Bearer <token>`. Errors are `application/problem+json`.
"""


def _operation_id(route: APIRoute) -> str:
    return route.name


async def _start_cluster_side(
    app: FastAPI,
    settings: Settings,
    hub: EventHub,
    cluster: KubeCluster | None,
    stack: contextlib.AsyncExitStack,
) -> None:
    mode = "given"
    if cluster is None:
        runtime = await start_runtime(settings, stack)
        cluster, mode = runtime.cluster, runtime.mode
        if settings.cluster != mode:  # `auto` resolved: the API sees the cluster it runs on
            settings = settings.model_copy(update={"cluster": mode})
            app.state.settings = settings
        app.state.local_single_user = runtime.single_user
    assert cluster is not None
    app.state.cluster = cluster
    app.state.cluster_mode = mode
    metrics = app.state.metrics
    histogram = metrics.session_start_seconds

    def on_ready(template: str, warm: bool, seconds: float) -> None:
        histogram.labels(template=template, warm="true" if warm else "false").observe(seconds)

    def on_step_error(step: str, error: BaseException) -> None:
        if isinstance(error, DBAPIError | asyncpg.PostgresError | ConnectionError):
            metrics.database_errors.labels("reconciler").inc()

    cluster.on_error = lambda verb, kind, error: metrics.cluster_errors.labels(
        verb, kind, error
    ).inc()
    reconciler = Reconciler(
        settings,
        app.state.sessionmaker,
        cluster,
        wake=hub.work_event,
        on_ready=on_ready,
        on_step_error=on_step_error,
    )
    app.state.reconciler = reconciler
    if mode in ("local", "simulated"):
        # The in-process cluster starts empty: what a previous run started is gone.
        ended = await reconciler.end_sessions_of_a_previous_run(
            "ControlPlaneRestarted",
            f"vdi-control serve restarted: this {mode} session's pod ran in the server's own "
            "process and ended with it"
            + (
                "; the user's home directory is kept: create a new session"
                if mode == "local"
                else ""
            ),
        )
        if ended:
            log.warning("sessions of a previous run ended", sessions=ended, cluster=mode)
    # A create that claimed a warm pool member routes the user's host to it at once.
    app.state.warm_router = reconciler.pools
    reconciler.start()
    stack.push_async_callback(reconciler.stop)


BOOTSTRAP_RETRY_S = 2.0


async def _sync_bootstrap(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> bool:
    """Only the current VDI_BOOTSTRAP_TOKEN works (earlier values revoked); False when the
    database cannot be reached."""
    plaintext = settings.bootstrap_token
    try:
        async with sessionmaker() as db, db.begin():
            outcome = await auth_service.sync_bootstrap_token(
                db,
                plaintext.get_secret_value() if plaintext is not None else None,
                settings.bootstrap_generation,
            )
    except (OSError, DBAPIError) as error:
        log.warning(
            "bootstrap token not synced yet: database unreachable", error=type(error).__name__
        )
        return False
    log.info("bootstrap admin token", outcome=outcome)
    return True


async def _sync_bootstrap_until_done(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    for attempt in itertools.count(1):
        await asyncio.sleep(BOOTSTRAP_RETRY_S)
        if await _sync_bootstrap(sessionmaker, settings):
            log.info("bootstrap token synced after the database came back", attempts=attempt)
            return


EMBEDDED_CHECK_S = 5.0  # how often the embedded Postgres is checked (and restarted if dead)


class SupervisedDatabase(Protocol):
    restarts: int

    def ensure_running(self) -> bool: ...


async def _supervise_database(app: FastAPI, server: SupervisedDatabase) -> None:
    """Restart the embedded Postgres when it dies (the OOM killer, a crash); while it is down
    and cannot be started, /healthz fails, so a service manager or probe restarts us."""
    while True:
        await asyncio.sleep(EMBEDDED_CHECK_S)
        before = server.restarts
        up = await asyncio.to_thread(server.ensure_running)
        if up and server.restarts > before:
            log.warning("embedded postgres had stopped: restarted", restarts=server.restarts)
        elif not up:
            log.error("embedded postgres is down and could not be restarted")
        app.state.database_supervised = up


def create_app(
    settings: Settings,
    database_url: str,
    *,
    cluster: KubeCluster | None = None,
    database_server: SupervisedDatabase | None = None,
) -> FastAPI:
    """The ASGI app. `database_url` is resolved (an embedded server is started by the caller,
    and given as `database_server` to be supervised); `cluster`, when given, is used instead
    of the one VDI_CLUSTER names (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        engine = create_engine(database_url)
        sessionmaker = create_sessionmaker(engine)
        app.state.engine = engine
        app.state.sessionmaker = sessionmaker
        app.state.direct_pool = await open_direct_pool(asyncpg_dsn(database_url))
        hub = EventHub(database_url, app.state.streams)
        app.state.event_hub = hub
        # Token lookups cached while revocation notices arrive (app.auth.service.TokenCache).
        app.state.token_cache = auth_service.TokenCache(usable=lambda: hub.listening)
        hub.on_token_revoked.append(app.state.token_cache.clear)
        app.state.cluster = None
        app.state.cluster_mode = "disabled"
        app.state.local_single_user = ""
        app.state.warm_router = None
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(engine.dispose)
            stack.push_async_callback(app.state.direct_pool.close)
            if not await _sync_bootstrap(sessionmaker, settings):
                # The database is down: serve anyway (/readyz says 503) and sync when it is back.
                retry = asyncio.create_task(_sync_bootstrap_until_done(sessionmaker, settings))
                stack.callback(retry.cancel)
            await hub.start()
            stack.push_async_callback(hub.stop)
            failures = app.state.metrics.failures

            def on_phase(phase: str, reason: str | None) -> None:
                if phase == Phase.failed.value:
                    failures.labels(reason if reason in KNOWN_REASONS else "Other").inc()

            eventlog.phase_observers.append(on_phase)
            stack.callback(eventlog.phase_observers.remove, on_phase)
            if database_server is not None:
                supervisor = asyncio.create_task(_supervise_database(app, database_server))
                stack.callback(supervisor.cancel)
            if settings.reconciler:
                await _start_cluster_side(app, settings, hub, cluster, stack)
            if settings.audit_webhook_url:
                deliverer = AuditDeliverer(
                    settings, database_url, app.state.metrics.audit_deliveries
                )
                deliverer.start()
                stack.push_async_callback(deliverer.stop)
            log.info(
                "vdi-control ready",
                version=__version__,
                embedded_database=settings.embedded_database,
                cluster=app.state.cluster_mode,
            )
            yield {}

    app = FastAPI(
        title="vdi-control",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    app.state.database_supervised = True
    app.state.metrics = Metrics()
    app.state.report_limit = PerKeyLimit(settings.report_rate_limit)
    app.state.turn_limit = PerKeyLimit(settings.turn_rate_limit)
    app.state.streams = StreamRegistry(
        settings.max_streams_per_token, settings.max_streams_per_replica
    )
    install_error_handlers(app)
    routers = (tokens_router, templates_router, sessions_router, shares_router, audit_router)
    for router in (*routers, ops_router):
        app.include_router(router)
    openapi.install(app, extra_schemas=[SessionEventFrame])
    app.add_middleware(HeartbeatLane, state=app.state)  # innermost: after the body checks
    app.add_middleware(TextGuardMiddleware)  # inside the edge: its 413 and 500 apply first
    app.add_middleware(
        EdgeMiddleware, metrics=app.state.metrics, max_body_bytes=settings.max_body_bytes
    )
    if settings.cors_origin_list:  # outside the edge: a preflight needs no body, no token
        app.add_middleware(ApiCors, origins=settings.cors_origin_list)
    app.add_middleware(CorrelationIdMiddleware, header_name="X-Request-ID")
    return app
