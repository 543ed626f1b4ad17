"""The reconciler: turns stored sessions into cluster objects and cluster facts into phases.

Runs in every replica, and is the controllers put together, each in its own task: the work
queue's loop (provisioning, routing late warm claims, termination, deadlines), the pod watch,
the pods' events, the orphan sweep and the pool keeper (warm pools and pre-pull). Postgres is
the work queue (`queue`); object names are deterministic and creates idempotent, so a retry
converges. Level-triggered (kopf's model): every pass reads the state and does what is
missing."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.cluster import manifests
from app.cluster.kube import ClusterError, KubeCluster
from app.config import Settings
from app.controllers.orphans import OrphanSweeper
from app.controllers.podevents import PodEventForwarder
from app.controllers.podwatch import PodWatch
from app.controllers.pools import OnReady, PoolKeeper
from app.controllers.prepull import PrepullKeeper
from app.controllers.provision import Provisioner
from app.controllers.queue import Claim, WorkQueue, nothing
from app.controllers.terminate import Terminator
from app.models import VDISession
from app.models._types import utcnow
from app.sessions import lifecycle
from app.sessions.repository import workqueue
from app.sessions.schemas import Phase
from app.sessions.service import deadlines

log = structlog.get_logger("vdi.reconciler")

# How often the waiting sessions' places are ranked again (and at once when a wait begins or
# ends here); cheap when none waits (a partial index).
CAPACITY_RANK_INTERVAL_S = 2.0


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        cluster: KubeCluster,
        *,
        wake: asyncio.Event | None = None,
        on_ready: OnReady | None = None,
        on_step_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.cluster = cluster
        self.wake = wake or asyncio.Event()
        self.on_step_error = on_step_error  # a loop's step failed (the metrics count them)
        self.identity = uuid.uuid4().hex[:8]
        self.queue = WorkQueue(settings, sessionmaker, self.wake)
        self.pods = PodWatch(settings, sessionmaker, cluster, self.queue)
        self.pod_events = PodEventForwarder(
            sessionmaker, cluster, uid_of=self.pods.uid_of, settings=settings, queue=self.queue
        )
        self.provisioner = Provisioner(settings, cluster, self.queue)
        self.terminator = Terminator(cluster, self.queue, pod_gone=self.pods.pod_gone)
        self.sweeper = OrphanSweeper(settings, sessionmaker, cluster)
        self.pools = PoolKeeper(settings, sessionmaker, cluster, self.queue, on_ready=on_ready)
        self.prepulls = PrepullKeeper(settings, sessionmaker, cluster)
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._pool_in_flight: set[asyncio.Task[None]] = set()

    @property
    def watch_connected(self) -> asyncio.Event:
        """Set once the pod watch has folded its first list in (readiness waits for it)."""
        return self.pods.connected

    # --- running ---------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(
                self._loop("work", self._work_once, self.wake), name="vdi-reconcile"
            ),
            asyncio.create_task(self.pods.run(), name="vdi-pod-watch"),
            asyncio.create_task(
                self._loop("sweep", self._sweep_once, None), name="vdi-orphan-sweep"
            ),
            asyncio.create_task(
                self._loop("pools", self._keep_pools_once, self.pools.kick), name="vdi-pools"
            ),
            asyncio.create_task(
                self._loop("capacity", self._rank_once, self.queue.capacity_changed),
                name="vdi-capacity-ranks",
            ),
            asyncio.create_task(self.pod_events.watch(), name="vdi-event-watch"),
            asyncio.create_task(self.pod_events.forward(), name="vdi-event-forward"),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._in_flight]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _loop(
        self, name: str, step: Callable[[], Awaitable[float]], wake: asyncio.Event | None
    ) -> None:
        """Run `step` again after the delay it returns, or sooner when `wake` is set."""
        wake = wake or asyncio.Event()
        while True:
            try:
                delay = await step()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.exception("reconciler step failed; retrying", step=name)
                if self.on_step_error is not None:
                    self.on_step_error(name, error)
                delay = 1.0
            wake.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the event is set (gh-86296), and stop() then waits forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()

    async def _work_once(self) -> float:
        """Claim as many due sessions as there is room for, start working on each, and say how
        long to wait. A pipeline, not batches: a slow session never holds up the others."""
        room = self.settings.reconcile_concurrency - len(self._in_flight)
        if room <= 0:
            return self.settings.reconcile_interval_s  # a finishing task wakes the loop
        claims = await self.queue.claim(room, pool_busy=len(self._pool_in_flight))
        for claim in claims:
            task = asyncio.create_task(self.process(claim))
            self._in_flight.add(task)
            task.add_done_callback(self._processed)
            if claim.session.pool_member and claim.session.phase == Phase.provisioning:
                self._pool_in_flight.add(task)
        if len(claims) == room:
            return 0.0  # there may be more due
        pool_full = len(self._pool_in_flight) >= self.settings.pool_concurrency
        due = await self.queue.next_due(new_pool_members=not pool_full)
        interval = self.settings.reconcile_interval_s
        if due is None:
            return interval
        return max(0.01, min(interval, (due - utcnow()).total_seconds()))

    def _processed(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._pool_in_flight.discard(task)
        self.wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("reconciling a session failed", error=repr(task.exception()))

    async def process(self, claim: Claim) -> None:
        """Do what one claimed session needs next, by its phase and deadlines."""
        session = claim.session
        structlog.contextvars.bind_contextvars(session_id=str(session.id))
        try:
            passed = lifecycle.deadline_passed(session, deadlines(self.settings), utcnow())
            if passed is not None:
                target, reason, message = passed

                async def expire(db: AsyncSession, row: VDISession, now: datetime) -> None:
                    await self.queue.move(db, row, target, reason, message, now)
                    return None

                await self.queue.finish(claim, expire)
            elif session.phase == Phase.provisioning.value:
                await self.provisioner.provision(claim)
            elif session.phase == Phase.terminating.value:
                await self.terminator.terminate(claim)
            elif session.phase == Phase.running.value and session.reason == "WarmClaimed":
                await self.pools.route_late(claim)
            else:
                await self.queue.finish(claim, nothing)
        finally:
            structlog.contextvars.unbind_contextvars("session_id")

    async def _rank_once(self) -> float:
        await self.rank_capacity_waits()
        return CAPACITY_RANK_INTERVAL_S

    async def _sweep_once(self) -> float:
        await self.sweep_orphans()
        await self.sweep_idempotency_keys()
        return self.settings.orphan_sweep_interval_s

    async def _keep_pools_once(self) -> float:
        await self.pools.keep_pools()
        with contextlib.suppress(ClusterError):
            await self.prepulls.keep_prepulls(unless_unchanged=True)
        return self.settings.pool_interval_s

    # --- what the runtimes, the API and the tests call ----------------------------------------

    async def observe_relist(self, pods: list[manifests.Manifest]) -> None:
        await self.pods.observe_relist(pods)

    async def rank_capacity_waits(self) -> int:
        """Each waiting session's place among those waiting for the same resources."""
        async with self.sessionmaker() as db, db.begin():
            return await workqueue.rank_capacity_waits(db)

    async def sweep_orphans(self) -> int:
        swept = await self.sweeper.sweep_orphans()
        self.pods.prune()
        return swept

    async def sweep_idempotency_keys(self) -> int:
        return await self.sweeper.sweep_idempotency_keys()

    async def end_sessions_of_a_previous_run(self, reason: str, message: str) -> int:
        return await self.queue.end_sessions_of_a_previous_run(reason, message)
