"""Warm pools (DESIGN "Time to desktop").

A template's warm pool is sessions of it with no user (`pool_member`): provisioned by the
reconciler as any session, checked by the agent (Running: GPU and encoder passed), then waiting.
A create takes the oldest ready one under the user's lock (`SKIP LOCKED`: never one member for
two users, on any replica) and routes the user's host to it: one cluster call, here. This keeper
holds each pool at its size: it adds members behind claims, replaces failed, expired (the
lifecycle's deadline) and outdated ones (the template changed), and ends the surplus when the
size shrinks. One replica at a time keeps the pools (an advisory lock). Members' provisioning
yields to users' sessions: the reconciler claims users' work first and members only with the
room left, at most `VDI_POOL_CONCURRENCY` at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.cluster import manifests
from app.cluster.kube import ClusterError, KubeCluster
from app.config import Settings
from app.controllers.queue import Claim, WorkQueue, backoff
from app.models import VDISession
from app.models._types import utcnow
from app.sessions import lifecycle
from app.sessions.repository import api as repository
from app.sessions.repository import eventlog, workqueue
from app.sessions.schemas import Phase, SessionReason
from app.sessions.service import new_session_row, reschedule, to_schema
from app.sessions.warm import RoutedClaim
from app.templates import repository as templates_repository
from app.templates.schemas import TemplateSpec, pod_shape
from app.templates.service import template_spec

log = structlog.get_logger("vdi.pools")

POOL_LOCK = 0x76646970_6F6F6C  # pg advisory lock: one replica keeps the pools at a time
LIVE_MEMBER_PHASES = (Phase.pending, Phase.provisioning, Phase.starting, Phase.running)
OnReady = Callable[[str, bool, float], None]  # template, warm, seconds from creation to Running


class PoolKeeper:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        cluster: KubeCluster,
        queue: WorkQueue,
        *,
        on_ready: OnReady | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.cluster = cluster
        self.queue = queue
        self.wake = queue.wake  # new members to provision
        self.on_ready = on_ready
        self.kick = asyncio.Event()  # a claim took a member: refill now

    # --- routing a claimed member to its user -------------------------------------------------

    async def route_claimed(self, claimed: VDISession) -> RoutedClaim | None:
        """Create the claimed session's IngressRoute (the user's host, owned by its pod): then
        it is Running for its user. Returns the session as JSON as it is from now on, and the
        write that records it (one statement; the caller runs it after answering); None when
        it was no longer waiting for its route. Cluster errors propagate: the reconciler tries
        again when the claim's grace runs out (as it does if the record is never written)."""
        if claimed.reason != "WarmClaimed":
            return None
        view = manifests.SessionView(
            id=claimed.id,
            user=claimed.user,
            template=claimed.template_name,
            spec=TemplateSpec.model_validate(claimed.template_spec),
        )
        owner = {"metadata": {"name": manifests.object_name(claimed.id), "uid": claimed.pod_uid}}
        if claimed.pod_uid is None:  # provisioned before pod uids were kept
            pod = await self.cluster.get("Pod", manifests.object_name(claimed.id))
            if pod is None:
                raise ClusterError(f"the pod of warm session {claimed.id} is gone")
            owner = pod
        await self.cluster.create(
            "IngressRoute", manifests.ingress_route(view, self.settings, owner)
        )
        now = max(utcnow(), claimed.updated_at)  # never before the claim (instants in order)
        host = manifests.session_host(claimed.user, self.settings)
        reason = SessionReason.warm_ready
        message = f"From the warm pool: checked before the claim; {host} routes to it"
        if self.settings.cluster == "local":  # no router: the desktop's own address
            message = f"From the warm pool: checked before the claim; its desktop is {claimed.url}"
        shown = to_schema(claimed).model_copy(
            update={"reason": reason, "message": message, "running_at": now, "updated_at": now}
        )

        async def record() -> None:
            async with self.sessionmaker() as db, db.begin():
                row = await repository.mark_routed(
                    db,
                    claimed.id,
                    reason=reason,
                    message=message,
                    now=now,
                    heartbeat=timedelta(seconds=self.settings.heartbeat_timeout_s),
                )
            self.kick.set()  # refill behind the claim
            if row is not None and self.on_ready is not None:
                self.on_ready(row.template_name, True, (now - row.created_at).total_seconds())

        return RoutedClaim(shown.model_dump_json().encode(), record)

    async def route_late(self, claim: Claim) -> None:
        """A warm session its API replica did not route (it failed, or died) within the grace."""
        try:
            routed = await self.route_claimed(claim.session)
            if routed is not None:
                await routed.record()
        except ClusterError as error:
            log.warning("routing a claimed warm session failed; will retry", error=str(error))

            async def later(db: AsyncSession, row: VDISession, now: datetime) -> datetime:
                row.attempts += 1
                return now + backoff(row.attempts)

            await self.queue.finish(claim, later)

    # --- keeping the pools ------------------------------------------------------------------

    async def keep_pools(self) -> tuple[int, int]:
        """One pass over every pool: (members added, members ended)."""
        added = ended = 0
        async with self.sessionmaker() as db, db.begin():
            if not await workqueue.try_xact_lock(db, POOL_LOCK):
                return 0, 0
            now = utcnow()
            members: dict[str, list[VDISession]] = {}
            for member in await workqueue.pool_members(db):
                members.setdefault(member.template_name, []).append(member)
            # only templates with a pool, or with members left: idle templates cost nothing
            pooled = await templates_repository.list_pooled(db, set(members))
            templates = {t.name: template_spec(t) for t in pooled}
            batch: list[tuple[VDISession, list[lifecycle.EventDraft]]] = []
            ending: list[tuple[VDISession, str, str]] = []  # (member, reason, message)
            # Members never take capacity from users: while users' sessions wait for it, no
            # member is added, and members not on a node yet end (one on a node stays: a user
            # can claim it), so that the capacity that comes goes to the users first.
            users_waiting = await workqueue.users_waiting_for_capacity(db)

            for name in sorted(set(templates) | set(members)):
                spec = templates.get(name)
                shape = pod_shape(spec.model_dump()) if spec is not None else None
                live = []
                for member in members.get(name, []):
                    phase = Phase(member.phase)
                    if phase is Phase.failed:  # never handed out; a fresh one replaces it
                        ending.append(
                            (member, "WarmPoolMemberFailed", f"Replaced: {member.reason}")
                        )
                    elif spec is None:
                        ending.append((member, "TemplateDeleted", f"Template '{name}' was deleted"))
                    elif pod_shape(member.template_spec) != shape:
                        ending.append(
                            (member, "TemplateChanged", f"Template '{name}' changed: replaced")
                        )
                    elif users_waiting and phase in LIVE_MEMBER_PHASES and not member.scheduled_at:
                        ending.append(
                            (
                                member,
                                SessionReason.warm_pool_yielded.value,
                                f"Ended to leave capacity to the {users_waiting} users' "
                                "sessions waiting for it",
                            )
                        )
                    elif phase in LIVE_MEMBER_PHASES:
                        live.append(member)
                wanted = spec.warm_pool if spec is not None else 0
                if len(live) > wanted:
                    # Ready members stay longest (oldest first among the not-yet-ready goes).
                    live.sort(key=lambda m: (m.phase == Phase.running.value, m.created_at))
                    for member in live[: len(live) - wanted]:
                        ending.append(
                            (member, "WarmPoolShrunk", f"warm_pool of '{name}' is {wanted}")
                        )
                for _ in range(0 if users_waiting else wanted - len(live)):
                    assert spec is not None
                    member, created = new_session_row(
                        self.settings, name, spec, "", now, member=True
                    )
                    db.add(member)
                    batch.append((member, [created]))
                    added += 1
            # The members were read with no lock, and a create may have claimed one since:
            # end only those still members, locked now (a claim in flight skips them too).
            still = await workqueue.lock_members(db, [m.id for m, _r, _m in ending])
            for member, reason, message in ending:
                if member.id in still and lifecycle.can_transition(
                    Phase(member.phase), Phase.terminating
                ):
                    event = lifecycle.transition(
                        member, Phase.terminating, reason=reason, message=message, now=now
                    )
                    reschedule(member, self.settings, now)
                    batch.append((member, [event]))
                    ended += 1
            await db.flush()
            await eventlog.add_events_of(db, batch, now)
        if added or ended:
            log.info("warm pools kept", added=added, ended=ended)
            self.wake.set()
        return added, ended
