"""Warm claims: a create takes a ready member of its template's warm pool (under the user's
lock), and the user's host is routed to it before the answer. The routing is a cluster call:
the runtime's `WarmRouter` (the pool keeper) makes it, injected into the route that calls
`hand_over`; the API layer itself never calls the cluster. Should the call fail, the claim
stands and the reconciler routes it once `WARM_ROUTE_GRACE_S` has passed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import NamedTuple, Protocol

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.models import VDISession
from app.sessions import lifecycle
from app.sessions.repository import api as repository
from app.sessions.repository import eventlog
from app.sessions.schemas import Phase
from app.templates.schemas import TemplateSpec, pod_shape

log = structlog.get_logger("vdi.sessions")


class RoutedClaim(NamedTuple):
    """A claimed member once its user's route exists."""

    document: bytes  # the session as JSON, Running for its user from now on
    record: Callable[[], Awaitable[None]]  # the write that records it; run after the answer


class WarmRouter(Protocol):
    async def route_claimed(self, claimed: VDISession) -> RoutedClaim | None:
        """Route the claimed session's user to it; None when it no longer waits for a route.
        Raises on a cluster error."""
        ...


async def hand_over(router: WarmRouter, claimed: VDISession) -> RoutedClaim | None:
    """Route a committed claim; None (answered as claimed, `WarmClaimed`) when the route could
    not be made now: the reconciler makes it after the grace."""
    try:
        return await router.route_claimed(claimed)
    except Exception as error:  # the claim stands; the reconciler retries the route
        log.warning("routing a warm session failed", error=str(error))
        return None


WARM_ROUTE_GRACE_S = 5.0  # the reconciler routes a claimed session if the API has not by then


async def claim(
    db: AsyncSession,
    settings: Settings,
    user: str,
    template: str,
    spec: TemplateSpec,
    now: datetime,
) -> VDISession | None:
    """Give the user a ready member of the template's warm pool, under the user's lock; None
    (a cold start, or the limit's 409 from the caller) when the user is at the limit, when an
    earlier session of the user still holds a pod (its host name is routed to that pod until it
    is gone: the cold path waits for it), or when no member is ready."""
    holding = [p.value for p in lifecycle.POD_HOLDING_PHASES | {Phase.pending}]
    if await repository.active_sessions_of_user(db, user, holding):
        return None
    member = await repository.claim_warm_member(db, template)
    if member is None or pod_shape(member.template_spec) != pod_shape(spec.model_dump()):
        return None  # none ready, or the oldest is of a replaced template (the keeper ends it)
    now = lifecycle.instant(member, now)  # the member may have changed since `now` was read
    host = f"{user}.{settings.base_domain}"
    pooled_since, ready_since = member.created_at, member.running_at or member.created_at
    # A local desktop's member already has its own address; a pod's is the user's host.
    member.user, member.url = user, member.url or f"https://{host}/"
    member.pool_member, member.warm = False, True
    member.created_at = member.updated_at = now
    # The user's session starts now, its objects already there: its instants are in order
    # (created_at <= provisioned_at <= scheduled_at <= running_at).
    member.provisioned_at = now
    member.scheduled_at = now if member.scheduled_at is not None else None
    member.running_at = None  # Running for the user once the route exists
    member.idle_deadline = now + timedelta(seconds=spec.idle_timeout_s)
    member.expires_at = now + timedelta(seconds=spec.max_lifetime_s)
    member.reason = "WarmClaimed"
    member.message = f"Claimed from the warm pool of '{template}'; routing {host} to it"
    member.next_reconcile_at = now + timedelta(seconds=WARM_ROUTE_GRACE_S)
    event = lifecycle.EventDraft(
        type="Claimed",
        phase=member.phase,
        reason="WarmClaimed",
        message=f"Claimed for '{user}' from the warm pool of '{template}' (ready since "
        f"{ready_since.isoformat()})",
        data={"user": user, "pooled_since": pooled_since.isoformat()},
    )
    await eventlog.add_events(db, member, [event], now)
    return member
