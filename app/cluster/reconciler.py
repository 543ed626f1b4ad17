"""The reconciler: turns stored sessions into cluster objects and cluster facts into phases.

Runs in every replica. Postgres is the work queue: a replica claims due sessions with
`FOR UPDATE SKIP LOCKED`, stamps a claim token and a lease, commits, talks to the cluster
without holding a transaction, then writes the result in a new short transaction, only if its
claim token is still the row's. A replica that dies leaves rows that fall due again when their
lease ends; object names are deterministic and creates idempotent, so a retry converges.
Level-triggered (kopf's model): every pass reads the state and does what is missing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.cluster import manifests
from app.cluster.kube import ClusterError, Kind, KubeCluster
from app.cluster.pools import OnReady, PoolKeeper
from app.config import Settings
from app.models import VDISession
from app.models._types import utcnow
from app.security import SecretBox, agent_token
from app.sessions import lifecycle, repository
from app.sessions.schemas import ConditionStatus, ConditionType, Phase
from app.sessions.service import deadlines, reschedule
from app.templates.schemas import TemplateSpec

log = structlog.get_logger("vdi.reconciler")

MAX_BACKOFF_S = 30.0
# A Terminating session ends on its pod's DELETED watch event; this is only the safety net
# (the watch was down): then the reconciler asks again.
TERMINATION_RECHECK_S = 15.0
GONE_PODS_KEPT_S = 600.0  # how long a seen pod deletion is remembered
# A session waiting for the user's previous pod is woken when that session ends; this is the
# safety net (that end was recorded by a replica that died before waking it).
PREVIOUS_POD_RECHECK_S = 10.0
RELIST_CHUNK = 1000  # sessions read per query when a relist compares pods with the database
SWEEP_LOCK = 0x76646973776565  # pg advisory lock: one replica sweeps orphans at a time
SESSION_KINDS: tuple[Kind, ...] = ("Pod", "Secret", "Service", "IngressRoute")
POD_EVENTS_SELECTOR = "involvedObject.kind=Pod"
# The pod events that tell a user's wait (a spawn page's progress) or why it failed; others
# (probe failures every few seconds, ...) would flood the log.
POD_EVENT_REASONS = frozenset(
    {
        "Scheduled",
        "FailedScheduling",
        "Preempted",
        "TriggeredScaleUp",
        "NotTriggerScaleUp",
        "FailedMount",
        "FailedAttachVolume",
        "SuccessfulAttachVolume",
        "Pulling",
        "Pulled",
        "Failed",
        "ErrImageNeverPull",
        "InspectFailed",
        "BackOff",
        "Created",
        "Started",
        "FailedCreatePodSandBox",
        "Killing",
        "Evicted",
        "OOMKilling",
    }
)
EVENT_BATCH_WAIT_S = 0.05
# Whose events are forwarded into a session's log: the scheduler's and the kubelets' only (any
# principal that may create Events in the namespace could write others).
TRUSTED_EVENT_SOURCES = frozenset({"default-scheduler", "kubelet"})
# An event may come before this replica has seen its pod: it waits this long for the pod's uid.
EVENT_UID_WAIT_S = 10.0


Apply = Callable[[AsyncSession, VDISession, datetime], Awaitable[datetime | None]]


@dataclass(frozen=True)
class Claim:
    session: VDISession
    token: uuid.UUID
    # A session to provision: the user's earlier session whose pod may still exist (it holds
    # the user's home volume and host name), as (id, phase), found with the claim.
    previous: tuple[uuid.UUID, str] | None = None


def _view(session: VDISession) -> manifests.SessionView:
    return manifests.SessionView(
        id=session.id,
        user=session.user,
        template=session.template_name,
        spec=TemplateSpec.model_validate(session.template_spec),
    )


async def create_session_objects(
    cluster: KubeCluster,
    view: manifests.SessionView,
    credentials: manifests.SessionCredentials,
    settings: Settings,
) -> manifests.Manifest:
    """A session's objects (idempotent creates) in rounds, each in parallel: the Pod's uid, the
    others' owner, orders them, and the route comes once its Service exists (a real Traefik
    logs an error for a route whose Service it has not seen). The pod waits for its claim and
    Secret as it would for a slow volume. No home PVC for a template without
    `persistent_home`; no route for a warm pool member (no user yet: the claim routes the
    user's host). The Pod, as created."""
    first = [cluster.create("Pod", manifests.pod(view, settings))]
    if view.spec.persistent_home:
        first.append(cluster.create("PersistentVolumeClaim", manifests.home_claim(view, settings)))
    pod, *_claim = await asyncio.gather(*first)
    await asyncio.gather(
        cluster.create("Secret", manifests.secret(view, credentials, settings, pod)),
        cluster.create("Service", manifests.service(view, settings, pod)),
    )
    if view.user:
        await cluster.create("IngressRoute", manifests.ingress_route(view, settings, pod))
    return pod


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(MAX_BACKOFF_S, 0.2 * 2 ** min(attempts, 10)))


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        cluster: KubeCluster,
        *,
        wake: asyncio.Event | None = None,
        on_ready: OnReady | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.cluster = cluster
        self.wake = wake or asyncio.Event()
        self.identity = uuid.uuid4().hex[:8]
        self._tasks: list[asyncio.Task[None]] = []
        self._secrets = SecretBox(settings.require_secret_key())
        self.watch_connected = asyncio.Event()
        self._observed: dict[str, tuple[bool, bool | None, str | None]] = {}
        self._gone_pods: dict[str, float] = {}  # pod name -> when its deletion was seen
        self._in_flight: set[asyncio.Task[None]] = set()
        self._pool_in_flight: set[asyncio.Task[None]] = set()
        self.pools = PoolKeeper(settings, sessionmaker, cluster, wake=self.wake, on_ready=on_ready)
        self._pod_events: list[tuple[float, manifests.Manifest]] = []  # (queued at, event)
        self._pod_uids: dict[str, str] = {}  # session pod name -> uid, from the pod watch
        self._pod_events_queued = asyncio.Event()

    # --- running ---------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(
                self._loop("work", self._work_once, self.wake), name="vdi-reconcile"
            ),
            asyncio.create_task(self._watch_pods(), name="vdi-pod-watch"),
            asyncio.create_task(
                self._loop("sweep", self._sweep_once, None), name="vdi-orphan-sweep"
            ),
            asyncio.create_task(
                self._loop("pools", self.pools.keep_once, self.pools.kick), name="vdi-pools"
            ),
            asyncio.create_task(self._watch_events(), name="vdi-event-watch"),
            asyncio.create_task(self._forward_events(), name="vdi-event-forward"),
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
            except Exception:
                log.exception("reconciler step failed; retrying", step=name)
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
        claims = await self._claim(room)
        for claim in claims:
            task = asyncio.create_task(self._process(claim))
            self._in_flight.add(task)
            task.add_done_callback(self._processed)
            if claim.session.pool_member and claim.session.phase == Phase.provisioning:
                self._pool_in_flight.add(task)
        if len(claims) == room:
            return 0.0  # there may be more due
        pool_full = len(self._pool_in_flight) >= self.settings.pool_concurrency
        async with self.sessionmaker() as db:
            due = await repository.next_due(db, new_pool_members=not pool_full)
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

    async def _sweep_once(self) -> float:
        await self.sweep_orphans()
        await self.sweep_idempotency_keys()
        return self.settings.orphan_sweep_interval_s

    async def sweep_idempotency_keys(self) -> int:
        """Forget Idempotency-Keys older than their TTL (a reuse after it creates anew anyway)."""
        cutoff = utcnow() - timedelta(seconds=self.settings.idempotency_ttl_s)
        async with self.sessionmaker() as db, db.begin():
            return await repository.delete_idempotency_keys_before(db, cutoff)

    # --- claiming ---------------------------------------------------------------------------

    async def _claim(self, limit: int) -> list[Claim]:
        now = utcnow()
        lease = timedelta(seconds=self.settings.reconcile_lease_s)
        claims = []
        async with self.sessionmaker() as db, db.begin():
            started = []
            due = await repository.claim_due(db, now=now, limit=limit)
            # Warm pool members to provision only with the room users' sessions left, and at
            # most pool_concurrency at once: pool work yields to user work.
            pool_room = min(
                limit - len(due), self.settings.pool_concurrency - len(self._pool_in_flight)
            )
            if pool_room > 0:
                due += await repository.claim_pool_work(db, now=now, limit=pool_room)
            for session in due:
                token = uuid.uuid4()
                session.claim_token = token
                session.next_reconcile_at = now + lease
                if session.phase == Phase.pending.value:
                    session.claimed_at = now
                    event = lifecycle.transition(
                        session,
                        Phase.provisioning,
                        reason="Provisioning",
                        message="Creating the session's objects",
                        now=now,
                    )
                    started.append((session, [event]))
                claims.append(Claim(session, token))
            await repository.add_events_of(db, started, now)
            # The phases are flushed (add_events_of): a user's two sessions claimed together see
            # each other as Provisioning.
            provisioning = [
                c.session
                for c in claims
                if c.session.phase == Phase.provisioning and not c.session.pool_member
            ]
            holders = [p.value for p in lifecycle.POD_HOLDING_PHASES]
            earlier = await repository.earlier_sessions_of_users(db, provisioning, holders)
        return [dataclasses.replace(c, previous=earlier.get(c.session.id)) for c in claims]

    async def _finish(self, claim: Claim, apply: Apply) -> None:
        """Write a result, if the session is still in the phase it was claimed in. Under the
        row lock, so two replicas that both worked on it (a lease ran out while the first was
        slow) record one transition: the second finds the phase moved and changes nothing.
        `apply` may return an explicit next due time; otherwise the phase's deadline is used."""
        async with self.sessionmaker() as db, db.begin():
            session = await repository.get(db, claim.session.id, for_update=True)
            if session is None or session.phase != claim.session.phase:
                return
            if claim.session.pool_member and not session.pool_member:
                return  # handed to a user since: what was worked out for a member is moot
            now = utcnow()
            if session.claim_token == claim.token:
                session.claim_token = None
            due = await apply(db, session, now)
            if due is None:
                reschedule(session, self.settings, now)
            else:
                session.next_reconcile_at = due

    async def _move(
        self,
        db: AsyncSession,
        session: VDISession,
        target: Phase,
        reason: str,
        message: str,
        now: datetime,
    ) -> None:
        if not lifecycle.can_transition(Phase(session.phase), target):
            return
        event = lifecycle.transition(session, target, reason=reason, message=message, now=now)
        await repository.add_events(db, session, [event], now)
        log.info("session moved", session_id=str(session.id), phase=target.value, reason=reason)
        if target is Phase.terminated and await repository.wake_waiting_for(db, session.user, now):
            self.wake.set()  # the user's next session was waiting for this pod to be gone

    async def end_sessions_of_a_previous_run(self, reason: str, message: str) -> int:
        """An in-process cluster starts empty: the sessions a previous run had pods for (their
        processes went with it) end (Terminating with `reason`, then Terminated at once: no pod
        holds the user's home, so the user may start a new one right away)."""
        phases = [p.value for p in (Phase.provisioning, Phase.starting, Phase.running)]
        async with self.sessionmaker() as db, db.begin():
            now = utcnow()
            sessions = await repository.sessions_in_phases(db, phases)
            for session in sessions:
                await self._move(db, session, Phase.terminating, reason, message, now)
                session.next_reconcile_at = now
        if sessions:
            self.wake.set()
        return len(sessions)

    # --- one session --------------------------------------------------------------------------

    async def _process(self, claim: Claim) -> None:
        session = claim.session
        structlog.contextvars.bind_contextvars(session_id=str(session.id))
        try:
            passed = lifecycle.deadline_passed(session, deadlines(self.settings), utcnow())

            if passed is not None:
                target, reason, message = passed

                async def expire(db: AsyncSession, row: VDISession, now: datetime) -> None:
                    await self._move(db, row, target, reason, message, now)
                    return None

                await self._finish(claim, expire)
            elif session.phase == Phase.provisioning.value:
                await self._provision(claim)
            elif session.phase == Phase.terminating.value:
                await self._terminate(claim)
            elif session.phase == Phase.running.value and session.reason == "WarmClaimed":
                await self._route_claimed(claim)
            else:
                await self._finish(claim, _nothing)
        finally:
            structlog.contextvars.unbind_contextvars("session_id")

    async def _provision(self, claim: Claim) -> None:
        session = claim.session
        if claim.previous is not None:
            # One user's home is never mounted by two pods, nor their host name routed twice:
            # wait until the earlier session's pod is gone (a real kubelet takes up to 30 s).
            previous_id, previous_phase = claim.previous
            message = (
                f"Waiting for the pod of the user's previous session {previous_id} "
                f"({previous_phase}) to be gone: it holds home-{session.user} and the user's "
                "host name"
            )

            async def waiting(db: AsyncSession, row: VDISession, now: datetime) -> datetime:
                if row.reason != "WaitingForPreviousSession":
                    log.info("waiting for the user's previous pod", previous=str(previous_id))
                row.reason, row.message, row.updated_at = "WaitingForPreviousSession", message, now
                return now + timedelta(seconds=PREVIOUS_POD_RECHECK_S)

            await self._finish(claim, waiting)
            return
        view = _view(session)
        secrets = self._secrets.open(session.secrets_encrypted)
        credentials = manifests.SessionCredentials(
            password=secrets.password,
            agent_token=agent_token(self.settings.require_secret_key(), session.id),
            turn_username=secrets.turn_username,
            turn_password=secrets.turn_password,
        )
        settings, cluster = self.settings, self.cluster
        try:
            pod = await create_session_objects(cluster, view, credentials, settings)
        except ClusterError as error:
            await self._finish(claim, _retry_or_fail(error, "ProvisioningFailed"))
            return

        async def started(db: AsyncSession, row: VDISession, now: datetime) -> None:
            row.attempts = 0
            row.pod_uid = pod["metadata"].get("uid")
            # A local desktop's pod names the address its runtime chose for it.
            local_url = (pod["metadata"].get("annotations") or {}).get(manifests.LOCAL_URL)
            if local_url:
                row.url = local_url
            message = "Secret, PVC, Pod, Service and IngressRoute exist; waiting for the agent"
            await self._move(db, row, Phase.starting, "ObjectsCreated", message, now)
            return None

        await self._finish(claim, started)

    async def _route_claimed(self, claim: Claim) -> None:
        """A warm session its API replica did not route (it failed, or died) within the grace."""
        try:
            routed = await self.pools.route_claimed(claim.session)
            if routed is not None:
                await routed[1]()
        except ClusterError as error:
            log.warning("routing a claimed warm session failed; will retry", error=str(error))

            async def later(db: AsyncSession, row: VDISession, now: datetime) -> datetime:
                row.attempts += 1
                return now + _backoff(row.attempts)

            await self._finish(claim, later)

    async def _terminate(self, claim: Claim) -> None:
        """Delete the session's objects once; the pod's DELETED watch event ends the session
        (no polling). Deleting a pod already terminating is a no-op, and a 404 means gone."""
        session = claim.session
        name = manifests.object_name(session.id)
        existed = False
        try:
            if name not in self._gone_pods:  # else woken by the pod's DELETED event: all done
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
                    await self._move(db, row, Phase.terminated, "ForceDeleted", forced, now)
                    return None

                await self._finish(claim, forced_end)
            else:
                await self._finish(claim, _retry_or_fail(error, None))
            return

        async def finished(db: AsyncSession, row: VDISession, now: datetime) -> datetime | None:
            if existed and name not in self._gone_pods:  # still shutting down: the watch says
                return now + timedelta(seconds=TERMINATION_RECHECK_S)
            message = "Everything but the user's home is gone"
            await self._move(db, row, Phase.terminated, "ObjectsDeleted", message, now)
            return None

        await self._finish(claim, finished)

    # --- pods ---------------------------------------------------------------------------------

    async def _watch_pods(self) -> None:
        """List once, then watch from there; a watch that ends (the server's timeout) resumes
        from the last event seen, and only a 410 or an error lists again."""
        version = ""
        while True:
            try:
                if not version:
                    pods, version = await self.cluster.list("Pod", manifests.SESSION_SELECTOR)
                    await self.observe_relist(pods)
                    self.watch_connected.set()
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
        self._observed.clear()
        # the uids come again with the list; those of pods seen deleted are kept a while
        self._pod_uids = {n: u for n, u in self._pod_uids.items() if n in self._gone_pods}
        seen = []
        for pod in pods:
            observation = manifests.observe_pod(pod)
            if observation.session_id is not None:
                seen.append((pod.get("metadata", {}).get("name", ""), observation))
                self._remember_uid(pod)
        for start in range(0, len(seen), RELIST_CHUNK):
            chunk = seen[start : start + RELIST_CHUNK]
            async with self.sessionmaker() as db:
                states = await repository.pod_facts(
                    db, [o.session_id for _, o in chunk if o.session_id]
                )
            for name, observation in chunk:
                facts = (False, observation.scheduled, observation.failure_reason)
                state = states.get(observation.session_id) if observation.session_id else None
                if state is not None and _needs_write(observation, *state):
                    await self._apply_observation(observation, deleted=False)
                self._observed[name] = facts
        self._prune_gone_pods()

    async def observe_pod(self, pod: manifests.Manifest, *, deleted: bool) -> None:
        """Fold what a pod says into its session (idempotent: every replica sees every event)."""
        seen = manifests.observe_pod(pod)
        if seen.session_id is None:
            return
        name = pod.get("metadata", {}).get("name", "")
        self._remember_uid(pod)  # kept after its deletion: its last events come after
        if deleted:
            self._gone_pods[name] = asyncio.get_running_loop().time()
        facts = (deleted, seen.scheduled, seen.failure_reason)
        if not deleted and (facts == self._observed.get(name) or facts == (False, None, None)):
            return  # nothing new: most pod events are status noise for us
        await self._apply_observation(seen, deleted=deleted)
        if deleted:
            self._observed.pop(name, None)
        else:
            self._observed[name] = facts  # after the write: a failed write is tried again

    def _remember_uid(self, pod: manifests.Manifest) -> None:
        metadata = pod.get("metadata") or {}
        if metadata.get("name") and metadata.get("uid"):
            self._pod_uids[str(metadata["name"])] = str(metadata["uid"])

    def _prune_gone_pods(self) -> None:
        horizon = asyncio.get_running_loop().time() - GONE_PODS_KEPT_S
        for name in [n for n, at in self._gone_pods.items() if at < horizon]:
            del self._gone_pods[name]
            self._pod_uids.pop(name, None)

    async def _apply_observation(self, seen: manifests.PodObservation, *, deleted: bool) -> None:
        assert seen.session_id is not None
        async with self.sessionmaker() as db, db.begin():
            session = await repository.get(db, seen.session_id, for_update=True)
            if session is None:
                return
            now = utcnow()
            phase = Phase(session.phase)
            if phase is Phase.terminating and deleted:
                session.next_reconcile_at = now  # finish it at once
                self.wake.set()
                return
            if phase not in (Phase.provisioning, Phase.starting, Phase.running):
                return
            events = []
            if deleted:
                if phase is not Phase.provisioning:
                    await self._move(
                        db,
                        session,
                        Phase.failed,
                        "PodDeleted",
                        "The session's pod was deleted outside vdi-control",
                        now,
                    )
                    reschedule(session, self.settings, now)
                return
            if seen.scheduled and session.scheduled_at is None:
                session.scheduled_at = now
            if seen.scheduled is not None:
                status, reason, message = _scheduled_condition(seen)
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
            await repository.add_events(db, session, events, now)
            if seen.failure_reason is not None:
                await self._move(
                    db, session, Phase.failed, seen.failure_reason, seen.failure_message, now
                )
                reschedule(session, self.settings, now)

    # --- the pods' Kubernetes events: progress in the session's log ---------------------------

    async def _watch_events(self) -> None:
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
                        self._pod_events.append((queued_at, event.object))
                        self._pod_events_queued.set()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("event watch interrupted; watching again", error=str(error))
                version = ""
                await asyncio.sleep(1.0)

    async def _forward_events(self) -> None:
        """Write the queued pod events to their sessions' logs, a batch per transaction (a burst
        of starts is thousands of events). Every replica forwards; each event is kept once."""
        while True:
            await self._pod_events_queued.wait()
            await asyncio.sleep(EVENT_BATCH_WAIT_S)  # let a burst gather
            self._pod_events_queued.clear()
            batch, self._pod_events = self._pod_events, []
            rows, waiting = [], []
            now = asyncio.get_running_loop().time()
            for queued_at, event in batch:
                verdict = self._event_is_the_pods(event)
                if verdict and (row := _pod_event_row(event)) is not None:
                    rows.append(row)
                elif verdict is None and now - queued_at < EVENT_UID_WAIT_S:
                    waiting.append((queued_at, event))  # its pod not seen yet here
            if waiting:
                self._pod_events.extend(waiting)
                self._pod_events_queued.set()
            if not rows:
                continue
            try:
                async with self.sessionmaker() as db, db.begin():
                    await repository.add_pod_events(db, rows, utcnow())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pod events not recorded", events=len(rows))

    def _event_is_the_pods(self, event: manifests.Manifest) -> bool | None:
        """Whether an event is the scheduler's or a kubelet's about the session pod itself (its
        uid, not only its name); None while this replica has not seen that pod yet."""
        source = (event.get("source") or {}).get("component") or event.get("reportingComponent")
        if source not in TRUSTED_EVENT_SOURCES:
            return False
        involved = event.get("involvedObject") or {}
        known = self._pod_uids.get(str(involved.get("name") or ""))
        if known is None:
            return None
        return bool(involved.get("uid")) and involved.get("uid") == known

    # --- orphans ------------------------------------------------------------------------------

    async def sweep_orphans(self) -> int:
        """Delete session objects (labelled as ours) whose session is Terminated or unknown.
        One replica at a time (a Postgres advisory lock; the others skip this round). Objects
        are listed (metadata only, in pages) before sessions are read: an object seen here was
        created after its session row committed, so its session is in the read that follows."""
        async with self.sessionmaker() as db:  # the lock lasts as long as this transaction
            if not await repository.try_xact_lock(db, SWEEP_LOCK):
                return 0
            found: list[tuple[Kind, str, str]] = []
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
            live = {str(i) for i in await repository.live_session_ids(db)}
        self._prune_gone_pods()
        swept = 0
        for kind, name, session_id in found:
            if session_id not in live:
                with contextlib.suppress(ClusterError):
                    if await self.cluster.delete(kind, name):
                        swept += 1
                        log.info("orphan deleted", kind=kind, name=name)
        return swept


def _pod_event_row(
    event: manifests.Manifest,
) -> tuple[uuid.UUID, str, str, str, dict[str, object]] | None:
    """A session event's values from a Kubernetes event about a session's pod, or None (not a
    session pod's)."""
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
        "type": event.get("type") or "Normal",
        "source": source.get("component") or event.get("reportingComponent") or "",
        "count": event.get("count") or 1,
        "at": event.get("lastTimestamp") or event.get("eventTime") or "",
    }
    return session_id, uid, str(event.get("reason")), str(event.get("message") or ""), data


def _needs_write(
    seen: manifests.PodObservation, phase: str, scheduled: tuple[str, str] | None
) -> bool:
    """Whether a pod observation would change its session (see `_apply_observation`)."""
    if Phase(phase) not in (Phase.provisioning, Phase.starting, Phase.running):
        return False
    if seen.failure_reason is not None:
        return True
    if seen.scheduled is None:
        return False
    status, reason, _message = _scheduled_condition(seen)
    return scheduled != (status.value, reason)


def _scheduled_condition(
    seen: manifests.PodObservation,
) -> tuple[ConditionStatus, str, str]:
    """The PodScheduled condition a scheduled (or unschedulable) pod gives its session."""
    if seen.scheduled:
        return ConditionStatus.true, "Scheduled", "The pod is on a node"
    return ConditionStatus.false, "Unschedulable", seen.schedule_message


async def _nothing(db: AsyncSession, session: VDISession, now: datetime) -> datetime | None:
    return None


def _retry_or_fail(error: ClusterError, fail_reason: str | None) -> Apply:
    """A permanent refusal fails the session (when `fail_reason`); anything else is retried
    with exponential backoff."""

    async def apply(db: AsyncSession, session: VDISession, now: datetime) -> datetime | None:
        if not error.temporary and fail_reason is not None:
            event = lifecycle.transition(
                session, Phase.failed, reason=fail_reason, message=str(error), now=now
            )
            await repository.add_events(db, session, [event], now)
            return None
        session.attempts += 1
        log.warning("cluster call failed; will retry", error=str(error), attempts=session.attempts)
        return now + _backoff(session.attempts)

    return apply
