"""The pod watch: what the session pods say (scheduled, unschedulable, failed, deleted) folded
into their sessions. List once, then watch from there; every replica watches, and folding is
idempotent. It also remembers, for the others, each session pod's uid and which pods it saw
deleted."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.cluster import manifests
from app.cluster.kube import KubeCluster
from app.config import Settings
from app.controllers.queue import WorkQueue
from app.models._types import utcnow
from app.sessions import capacity, lifecycle
from app.sessions.records import ScheduledFact
from app.sessions.repository import api as repository
from app.sessions.repository import eventlog, workqueue
from app.sessions.schemas import ConditionStatus, ConditionType, EventType, Phase
from app.sessions.service import reschedule

log = structlog.get_logger("vdi.reconciler")

GONE_PODS_KEPT_S = 600.0  # how long a seen pod deletion is remembered
RELIST_CHUNK = 1000  # sessions read per query when a relist compares pods with the database


class Seen(NamedTuple):
    """What a pod last said that matters to its session (most pod events change none of it)."""

    deleted: bool
    scheduled: bool | None
    failure_reason: str | None
    waiting_for: str = ""  # the scheduler's message while it waits for capacity


NOTHING = Seen(False, None, None)


def seen_of(observation: manifests.PodObservation, *, deleted: bool = False) -> Seen:
    waiting_for = observation.schedule_message if observation.short_of_capacity else ""
    return Seen(deleted, observation.scheduled, observation.failure_reason, waiting_for)


class PodWatch:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        cluster: KubeCluster,
        queue: WorkQueue,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.cluster = cluster
        self.queue = queue
        self.connected = asyncio.Event()  # set once the first list is folded in
        self._seen: dict[str, Seen] = {}  # pod name -> what it said last
        self._gone: dict[str, float] = {}  # pod name -> when its deletion was seen
        self._uids: dict[str, str] = {}  # session pod name -> uid

    def pod_gone(self, name: str) -> bool:
        """Whether this replica saw the pod deleted (in the last GONE_PODS_KEPT_S)."""
        return name in self._gone

    def uid_of(self, name: str) -> str | None:
        """The uid of a session pod this replica has seen (kept a while after its deletion)."""
        return self._uids.get(name)

    async def run(self) -> None:
        """A watch that ends (the server's timeout) resumes from the last event seen, and only
        a 410 or an error lists again."""
        version = ""
        while True:
            try:
                if not version:
                    pods, version = await self.cluster.list("Pod", manifests.SESSION_SELECTOR)
                    await self.observe_relist(pods)
                    self.connected.set()
                async for event in self.cluster.watch_pods(manifests.SESSION_SELECTOR, version):
                    if event.type == "RESYNC":
                        version = ""
                        break
                    metadata = event.object.get("metadata") or {}
                    version = str(metadata.get("resourceVersion") or version)
                    if event.type in ("ADDED", "MODIFIED", "DELETED"):
                        await self.observe_pod(event.object, deleted=event.type == "DELETED")
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("pod watch interrupted; relisting", error=str(error))
                version = ""
                await asyncio.sleep(1.0)

    async def observe_relist(self, pods: list[manifests.Manifest]) -> None:
        """Fold a full list of pods in, writing only what differs from the database: after a
        restart every pod is "new" to this replica, but few say anything the sessions do not
        already record. Sessions are read in chunks without locks; the few that differ go
        through the locking path."""
        self._seen.clear()
        # the uids come again with the list; those of pods seen deleted are kept a while
        self._uids = {n: u for n, u in self._uids.items() if n in self._gone}
        listed = []
        for pod in pods:
            observation = manifests.observe_pod(pod)
            if observation.session_id is not None:
                listed.append((pod.get("metadata", {}).get("name", ""), observation))
                self._remember_uid(pod)
        for start in range(0, len(listed), RELIST_CHUNK):
            chunk = listed[start : start + RELIST_CHUNK]
            async with self.sessionmaker() as db:
                states = await workqueue.pod_facts(
                    db, [o.session_id for _, o in chunk if o.session_id]
                )
            for name, observation in chunk:
                state = states.get(observation.session_id) if observation.session_id else None
                if state is not None and _needs_write(observation, state.phase, state.scheduled):
                    await self.apply_observation(observation, deleted=False)
                self._seen[name] = seen_of(observation)
        self.prune()

    async def observe_pod(self, pod: manifests.Manifest, *, deleted: bool) -> None:
        """Fold what a pod says into its session (idempotent: every replica sees every event)."""
        observation = manifests.observe_pod(pod)
        if observation.session_id is None:
            return
        name = pod.get("metadata", {}).get("name", "")
        self._remember_uid(pod)  # kept after its deletion: its last events come after
        if deleted:
            self._gone[name] = asyncio.get_running_loop().time()
        seen = seen_of(observation, deleted=deleted)
        if not deleted and seen in (self._seen.get(name), NOTHING):
            return  # nothing new: most pod events are status noise for us
        await self.apply_observation(observation, deleted=deleted)
        if deleted:
            self._seen.pop(name, None)
        else:
            self._seen[name] = seen  # after the write: a failed write is tried again

    def _remember_uid(self, pod: manifests.Manifest) -> None:
        metadata = pod.get("metadata") or {}
        if metadata.get("name") and metadata.get("uid"):
            self._uids[str(metadata["name"])] = str(metadata["uid"])

    def prune(self) -> None:
        """Forget the deletions (and those pods' uids) older than GONE_PODS_KEPT_S."""
        horizon = asyncio.get_running_loop().time() - GONE_PODS_KEPT_S
        for name in [n for n, at in self._gone.items() if at < horizon]:
            del self._gone[name]
            self._uids.pop(name, None)

    async def apply_observation(
        self, observation: manifests.PodObservation, *, deleted: bool
    ) -> None:
        assert observation.session_id is not None
        async with self.sessionmaker() as db, db.begin():
            session = await repository.get(db, observation.session_id, for_update=True)
            if session is None:
                return
            now = lifecycle.instant(session, utcnow())
            phase = Phase(session.phase)
            if phase is Phase.terminating and deleted:
                session.next_reconcile_at = now  # finish it at once
                self.queue.wake.set()
                return
            if phase not in (Phase.provisioning, Phase.starting, Phase.running):
                return
            events = []
            if deleted:
                if phase is not Phase.provisioning:
                    await self.queue.move(
                        db,
                        session,
                        Phase.failed,
                        "PodDeleted",
                        "The session's pod was deleted outside vdi-control",
                        now,
                    )
                    reschedule(session, self.settings, now)
                return
            if observation.scheduled and session.scheduled_at is None:
                # seen late (the watch behind the agent's first report): it was scheduled by the
                # time it ran at the latest
                session.scheduled_at = min(now, session.running_at or now)
            if observation.scheduled is not None:
                status, reason, message = _scheduled_condition(observation)
                event = lifecycle.set_condition(
                    session,
                    ConditionType.pod_scheduled,
                    status,
                    reason=reason,
                    message=message,
                    now=now,
                )
                if event is not None:
                    events.append(event)
                if observation.scheduled:
                    events += capacity.capacity_came(session, "the pod is on a node", now)
                elif observation.short_of_capacity:
                    events += capacity.wait_for_capacity(session, observation.schedule_message, now)
            await eventlog.add_events(db, session, events, now)
            if any(e.type == EventType.capacity_changed for e in events):
                self.queue.capacity_changed.set()
            if (failure := capacity.fails_now(session)) is not None:
                await self.queue.move(db, session, Phase.failed, *failure, now)
                reschedule(session, self.settings, now)
            elif observation.failure_reason is not None:
                await self.queue.move(
                    db,
                    session,
                    Phase.failed,
                    observation.failure_reason,
                    observation.failure_message,
                    now,
                )
                reschedule(session, self.settings, now)


def _needs_write(
    observation: manifests.PodObservation, phase: str, scheduled: ScheduledFact | None
) -> bool:
    """Whether a pod observation would change its session (see `apply_observation`)."""
    if Phase(phase) not in (Phase.provisioning, Phase.starting, Phase.running):
        return False
    if observation.failure_reason is not None:
        return True
    if observation.scheduled is None:
        return False
    status, reason, _message = _scheduled_condition(observation)
    return scheduled != (status.value, reason)


def _scheduled_condition(
    observation: manifests.PodObservation,
) -> tuple[ConditionStatus, str, str]:
    """The PodScheduled condition a scheduled (or unschedulable) pod gives its session."""
    if observation.scheduled:
        return ConditionStatus.true, "Scheduled", "The pod is on a node"
    return ConditionStatus.false, "Unschedulable", observation.schedule_message
