"""The pods' Kubernetes events, forwarded into their sessions' logs: a spawn page's progress
(scheduled, pulling, started) and why a start failed. Only the scheduler's and the kubelets'
events about the session pod itself (its uid) are kept, each once, in batches."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.cluster import manifests
from app.cluster.kube import KubeCluster
from app.config import Settings
from app.controllers.queue import WorkQueue
from app.models._types import utcnow
from app.sessions import capacity, lifecycle
from app.sessions.records import PodEventRow
from app.sessions.repository import api as repository
from app.sessions.repository import eventlog
from app.sessions.schemas import AutoscalerVerdict, Phase, PodEventReason
from app.sessions.service import reschedule

log = structlog.get_logger("vdi.reconciler")

POD_EVENTS_SELECTOR = "involvedObject.kind=Pod"
# The pod events that tell a user's wait (a spawn page's progress) or why it failed; others
# (probe failures every few seconds, ...) would flood the log.
POD_EVENT_REASONS = frozenset(reason.value for reason in PodEventReason)
EVENT_BATCH_WAIT_S = 0.05
# Whose events are forwarded into a session's log: the scheduler's, the kubelets' and the
# cluster autoscaler's only (any principal that may create Events in the namespace could write
# others).
AUTOSCALER = "cluster-autoscaler"
TRUSTED_EVENT_SOURCES = frozenset({"default-scheduler", "kubelet", AUTOSCALER})
AUTOSCALER_VERDICTS = frozenset(verdict.value for verdict in AutoscalerVerdict)
# An event may come before this replica has seen its pod: it waits this long for the pod's uid.
EVENT_UID_WAIT_S = 10.0


class PodEventForwarder:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        cluster: KubeCluster,
        *,
        uid_of: Callable[[str], str | None],
        settings: Settings,
        queue: WorkQueue,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.cluster = cluster
        self.settings = settings
        self.queue = queue  # a template may fail a session the autoscaler cannot help
        self.uid_of = uid_of  # a session pod's uid, as the pod watch saw it
        self._queue: list[tuple[float, manifests.Manifest]] = []  # (queued at, event)
        self._queued = asyncio.Event()

    async def watch(self) -> None:
        """Watch the namespace's pod events from now on (what happened while no replica watched
        is not replayed: the session's phase and conditions already say where it is)."""
        version = ""
        while True:
            try:
                if not version:
                    version = await self.cluster.latest_version("Event", POD_EVENTS_SELECTOR)
                async for event in self.cluster.watch(
                    "Event", version, field_selector=POD_EVENTS_SELECTOR
                ):
                    if event.type == "RESYNC":
                        version = ""
                        break
                    metadata = event.object.get("metadata") or {}
                    version = str(metadata.get("resourceVersion") or version)
                    if event.type == "ADDED" and event.object.get("reason") in POD_EVENT_REASONS:
                        queued_at = asyncio.get_running_loop().time()
                        self._queue.append((queued_at, event.object))
                        self._queued.set()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("event watch interrupted; watching again", error=str(error))
                version = ""
                await asyncio.sleep(1.0)

    async def forward(self) -> None:
        """Write the queued pod events to their sessions' logs, a batch per transaction (a burst
        of starts is thousands of events). Every replica forwards; each event is kept once."""
        while True:
            await self._queued.wait()
            await asyncio.sleep(EVENT_BATCH_WAIT_S)  # let a burst gather
            self._queued.clear()
            batch, self._queue = self._queue, []
            rows, waiting = [], []
            now = asyncio.get_running_loop().time()
            for queued_at, event in batch:
                verdict = self.is_the_pods(event)
                if verdict and (row := pod_event_row(event)) is not None:
                    rows.append(row)
                elif verdict is None and now - queued_at < EVENT_UID_WAIT_S:
                    waiting.append((queued_at, event))  # its pod not seen yet here
            if waiting:
                self._queue.extend(waiting)
                self._queued.set()
            if not rows:
                continue
            try:
                async with self.sessionmaker() as db, db.begin():
                    await eventlog.add_pod_events(db, rows, utcnow())
                    for row in rows:
                        if row.data["source"] == AUTOSCALER and row.reason in AUTOSCALER_VERDICTS:
                            await self.autoscaler_said(db, row)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pod events not recorded", events=len(rows))

    async def autoscaler_said(self, db: AsyncSession, row: PodEventRow) -> None:
        """The cluster autoscaler's verdict on a session's pod: into its wait for capacity
        (idempotent: every replica forwards every event)."""
        session = await repository.get(db, row.session_id, for_update=True)
        if session is None:
            return
        now = lifecycle.instant(session, utcnow())
        verdict = AutoscalerVerdict(row.reason)
        events = capacity.autoscaler_said(session, verdict, row.message, now)
        if not events:
            return
        await eventlog.add_events(db, session, events, now)
        self.queue.capacity_changed.set()
        if (failure := capacity.fails_now(session)) is not None:
            await self.queue.move(db, session, Phase.failed, *failure, now)
            reschedule(session, self.settings, now)

    def is_the_pods(self, event: manifests.Manifest) -> bool | None:
        """Whether an event is the scheduler's or a kubelet's about the session pod itself (its
        uid, not only its name); None while this replica has not seen that pod yet."""
        source = (event.get("source") or {}).get("component") or event.get("reportingComponent")
        if source not in TRUSTED_EVENT_SOURCES:
            return False
        involved = event.get("involvedObject") or {}
        known = self.uid_of(str(involved.get("name") or ""))
        if known is None:
            return None
        return bool(involved.get("uid")) and involved.get("uid") == known


def pod_event_row(event: manifests.Manifest) -> PodEventRow | None:
    """A session event from a Kubernetes event about a session's pod, or None (not a session
    pod's)."""
    involved = event.get("involvedObject") or {}
    name = str(involved.get("name") or "")
    if involved.get("kind") != "Pod" or not name.startswith("vdi-"):
        return None
    try:
        session_id = uuid.UUID(name.removeprefix("vdi-"))
    except ValueError:
        return None
    uid = str((event.get("metadata") or {}).get("uid") or "")
    source = event.get("source") or {}
    data: dict[str, object] = {
        # Kubernetes has two event types; anything else is shown as Normal
        "type": "Warning" if event.get("type") == "Warning" else "Normal",
        "source": source.get("component") or event.get("reportingComponent") or "",
        "count": event.get("count") or 1,
        "at": event.get("lastTimestamp") or event.get("eventTime") or "",
    }
    return PodEventRow(
        session_id, uid, str(event.get("reason")), str(event.get("message") or ""), data
    )
