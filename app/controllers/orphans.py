"""The orphan sweep: session objects (labelled as ours) whose session is Terminated or unknown
are deleted; and Idempotency-Keys past their TTL are forgotten. One replica sweeps at a time
(a Postgres advisory lock; the others skip the round)."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.cluster import manifests
from app.cluster.kube import ClusterError, Kind, KubeCluster
from app.config import Settings
from app.models._types import utcnow
from app.sessions.repository import api as repository
from app.sessions.repository import workqueue

log = structlog.get_logger("vdi.reconciler")

SWEEP_LOCK = 0x76646973776565  # pg advisory lock: one replica sweeps orphans at a time
SESSION_KINDS: tuple[Kind, ...] = ("Pod", "Secret", "Service", "IngressRoute")


class OrphanSweeper:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        cluster: KubeCluster,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.cluster = cluster

    async def sweep_orphans(self) -> int:
        """Objects are listed (metadata only, in pages) before sessions are read: an object
        seen here was created after its session row committed, so its session is in the read
        that follows. How many were deleted."""
        async with self.sessionmaker() as db:  # the lock lasts as long as this transaction
            if not await workqueue.try_xact_lock(db, SWEEP_LOCK):
                return 0
            found: list[tuple[Kind, str, str]] = []  # (kind, name, session id label)
            for kind in SESSION_KINDS:
                async for page in self.cluster.list_metadata(kind, manifests.SESSION_SELECTOR):
                    found.extend(
                        (
                            kind,
                            metadata.get("name", ""),
                            (metadata.get("labels") or {}).get(manifests.SESSION_ID_LABEL, ""),
                        )
                        for metadata in page
                    )
            live = {str(i) for i in await workqueue.live_session_ids(db)}
        swept = 0
        for kind, name, session_id in found:
            if session_id not in live:
                with contextlib.suppress(ClusterError):
                    if await self.cluster.delete(kind, name):
                        swept += 1
                        log.info("orphan deleted", kind=kind, name=name)
        return swept

    async def sweep_idempotency_keys(self) -> int:
        """Forget Idempotency-Keys older than their TTL (a reuse after it creates anew anyway)."""
        cutoff = utcnow() - timedelta(seconds=self.settings.idempotency_ttl_s)
        async with self.sessionmaker() as db, db.begin():
            return await repository.delete_idempotency_keys_before(db, cutoff)
