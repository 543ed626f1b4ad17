"""GET /healthz, /readyz, /metrics (no authentication: probes and scrapers)."""

from __future__ import annotations

import asyncio
import time

import structlog
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict
from sqlalchemy import text

from app.errors import DATABASE_FULL_READY_S, ServiceUnavailable, problem_responses
from app.models._types import utcnow
from app.sessions.service import metrics_snapshot

router = APIRouter(tags=["operations"])
log = structlog.get_logger("vdi.ops")

READY_TIMEOUT_S = 2.0


class Health(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    status: str
    checks: dict[str, str] = {}


@router.get(
    "/healthz",
    name="get_liveness",
    responses=problem_responses(ServiceUnavailable),
    summary="Liveness: the process is serving (and its embedded Postgres, if any, is up)",
)
async def healthz(request: Request) -> Health:
    if not request.app.state.database_supervised:
        raise ServiceUnavailable(
            "The embedded Postgres died and could not be restarted (see the server's log and "
            "<data dir>/postgres/log); restart vdi-control",
            retry_after_s=5,
        )
    return Health(status="ok")


@router.get(
    "/readyz",
    name="get_readiness",
    responses=problem_responses(ServiceUnavailable),
    summary="Readiness: the database answers",
)
async def readyz(request: Request) -> Health:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with request.app.state.sessionmaker() as db:
                await db.execute(text("SELECT 1"))
    except Exception as error:
        log.warning("not ready: database", error=type(error).__name__)
        raise ServiceUnavailable("The database does not answer", retry_after_s=5) from None
    full_at = getattr(request.app.state, "database_full_at", None)
    if full_at is not None and time.monotonic() - full_at < DATABASE_FULL_READY_S:
        raise ServiceUnavailable(
            "The database refused a write for lack of disk space (or memory)", retry_after_s=10
        )
    checks = {"database": "ok"}
    reconciler = getattr(request.app.state, "reconciler", None)
    if reconciler is not None and not reconciler.watch_connected.is_set():
        # Until the pod watch's first list is folded in, this replica's view of the cluster is
        # older than its restart: not ready to take traffic that depends on it.
        raise ServiceUnavailable("The pod watch has not caught up yet", retry_after_s=1)
    cluster = request.app.state.cluster
    if cluster is not None:
        try:
            async with asyncio.timeout(READY_TIMEOUT_S * 2):
                await cluster.ping()
        except Exception as error:
            log.warning("not ready: cluster", error=str(error))
            raise ServiceUnavailable(
                "The Kubernetes API does not answer", retry_after_s=5
            ) from None
        single_user = getattr(request.app.state, "local_single_user", "")
        isolation = (
            f"SINGLE-USER: every desktop runs as this server's account ({single_user})"
            if single_user
            else "each user's desktop an account and a sandbox of its own"
        )
        checks["cluster"] = {
            "simulated": "simulated (in-process fake, nothing real runs)",
            "local": "local (in-process fake API; each session is processes on this machine; "
            f"{isolation})",
        }.get(request.app.state.cluster_mode, "ok")
    return Health(status="ok", checks=checks)


@router.get(
    "/metrics",
    name="get_metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        }
    },
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    """The in-process counters, and gauges read from the database now (one query): the same
    numbers from every replica, so aggregate those with max."""
    state = request.app.state
    registry_metrics = state.metrics
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with state.sessionmaker() as db:
                rows = await metrics_snapshot(db)
        registry_metrics.fold_snapshot(rows, utcnow())
        registry_metrics.database_up.set(1)
        reconciler = getattr(state, "reconciler", None)
        caught_up = reconciler is None or reconciler.watch_connected.is_set()
        registry_metrics.ready.set(1 if caught_up else 0)
    except Exception as error:
        log.warning("metrics: the database's figures unavailable", error=type(error).__name__)
        registry_metrics.database_up.set(0)
        registry_metrics.ready.set(0)
        registry_metrics.database_errors.labels("scrape").inc()
    return Response(generate_latest(registry_metrics.registry), media_type=CONTENT_TYPE_LATEST)
