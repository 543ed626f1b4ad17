"""Termination: a Terminating session's objects are deleted once, the route first; its pod's
DELETED watch event ends it (no polling). The user's home PVC stays."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.cluster import manifests
from app.cluster.kube import ClusterError, KubeCluster
from app.controllers.queue import Claim, WorkQueue, retry_or_fail
from app.models import VDISession
from app.sessions.schemas import Phase

# A Terminating session ends on its pod's DELETED watch event; this is only the safety net
# (the watch was down): then the reconciler asks again.
TERMINATION_RECHECK_S = 15.0


class Terminator:
    def __init__(
        self, cluster: KubeCluster, queue: WorkQueue, *, pod_gone: Callable[[str], bool]
    ) -> None:
        self.cluster = cluster
        self.queue = queue
        self.pod_gone = pod_gone  # whether the pod watch has seen this pod deleted

    async def terminate(self, claim: Claim) -> None:
        """Delete the session's objects; deleting a pod already terminating is a no-op, and a
        404 means gone."""
        session = claim.session
        name = manifests.object_name(session.id)
        existed = False
        try:
            if not self.pod_gone(name):  # else woken by the pod's DELETED event: all done
                # The route first: the user's host stops routing before its Service and pod
                # go (a real Traefik logs errors for a route whose Service is gone).
                await self.cluster.delete("IngressRoute", name)
                existed = await self.cluster.delete("Pod", name)
                await asyncio.gather(
                    *(self.cluster.delete(kind, name) for kind in ("Secret", "Service"))
                )
        except ClusterError as error:
            if session.force_delete:
                forced = f"Forced: the cluster refused ({error}); the orphan sweep retries"

                async def forced_end(db: AsyncSession, row: VDISession, now: datetime) -> None:
                    await self.queue.move(db, row, Phase.terminated, "ForceDeleted", forced, now)
                    return None

                await self.queue.finish(claim, forced_end)
            else:
                await self.queue.finish(claim, retry_or_fail(error, None))
            return

        async def finished(db: AsyncSession, row: VDISession, now: datetime) -> datetime | None:
            if existed and not self.pod_gone(name):  # still shutting down: the watch says
                return now + timedelta(seconds=TERMINATION_RECHECK_S)
            message = "Everything but the user's home is gone"
            await self.queue.move(db, row, Phase.terminated, "ObjectsDeleted", message, now)
            return None

        await self.queue.finish(claim, finished)
