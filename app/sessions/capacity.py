"""Capacity-aware waiting: a session whose pod no node has room for (GPUs, CPU, memory) stays
Starting with reason `WaitingForCapacity`, saying what is short and what the cluster autoscaler
said, until its pod is on a node (`CapacityAvailable`) or the start timeout passes (Failed,
`NO_CAPACITY`). On a cluster with an autoscaler, `Insufficient nvidia.com/gpu` is how every
scale-up starts: failing there would fail each session of a morning rush that the autoscaler is
about to serve.

Pure, as `lifecycle`: it changes a session in memory and returns the events to record."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.models import VDISession
from app.sessions.lifecycle import EventDraft, instant
from app.sessions.schemas import (
    AutoscalerVerdict,
    CapacityReason,
    EventType,
    Phase,
    SessionReason,
)

WAITING = SessionReason.waiting_for_capacity.value
WAITING_PHASES = (Phase.provisioning.value, Phase.starting.value)


def short_resources(scheduler_message: str) -> list[str]:
    """What kube-scheduler says no node has enough of: `0/3 nodes are available: 1 Insufficient
    cpu, 2 Insufficient nvidia.com/gpu. preemption: ...` -> ["cpu", "nvidia.com/gpu"]. Empty:
    not a shortage (a volume still binding, a node selector no node matches)."""
    verdicts = scheduler_message.split(". preemption:")[0]
    verdicts = verdicts.split(":", 1)[-1]
    found = set()
    for part in verdicts.split(","):
        words = part.strip().rstrip(".").split()
        if len(words) == 3 and words[0].isdigit() and words[1] == "Insufficient":
            found.add(words[2])
    return sorted(found)


def _new_wait(now: datetime) -> dict[str, Any]:
    """A wait that begins now, before the scheduler's or the autoscaler's word is known."""
    return {
        "resources": [],
        "since": now.isoformat(),
        "scheduler_message": "",
        "autoscaler": None,
        "autoscaler_message": None,
        "position": None,
        "waiting": None,
    }


def _draft(session: VDISession, reason: CapacityReason, message: str, **data: Any) -> EventDraft:
    wait = session.capacity_wait or {}
    return EventDraft(
        type=EventType.capacity_changed.value,
        phase=session.phase,
        reason=reason.value,
        message=message,
        data={
            "resources": list(wait.get("resources") or []),
            "autoscaler": wait.get("autoscaler"),
            "waited_s": None,
            **data,
        },
    )


def describe(wait: dict[str, Any], start_timeout_s: int) -> str:
    """The session's message while it waits."""
    resources = ", ".join(wait.get("resources") or []) or "resources"
    text = f"Waiting for capacity: no node has the {resources} this session requests"
    verdict, said = wait.get("autoscaler"), wait.get("autoscaler_message") or ""
    if verdict == AutoscalerVerdict.triggered_scale_up:
        text += f"; the cluster autoscaler is adding a node ({said})"
    elif verdict == AutoscalerVerdict.not_trigger_scale_up:
        text += (
            f"; the cluster autoscaler cannot add one ({said}): it runs if capacity frees up "
            "or an operator adds a node"
        )
    else:
        text += "; no word from a cluster autoscaler"
    return text + f". It fails with NO_CAPACITY if not started within {start_timeout_s} s"


def _show(session: VDISession, now: datetime) -> None:
    """A Starting session says it waits (its phase stays)."""
    if session.phase == Phase.starting.value and session.capacity_wait is not None:
        timeout = int(session.template_spec["start_timeout_s"])
        session.reason = WAITING
        session.message = describe(session.capacity_wait, timeout)
        session.updated_at = now


def wait_for_capacity(
    session: VDISession, scheduler_message: str, now: datetime
) -> list[EventDraft]:
    """The scheduler said no node has room for the session's pod."""
    if session.phase not in WAITING_PHASES or session.scheduled_at is not None:
        return []
    now = instant(session, now)
    first = not (session.capacity_wait or {}).get("resources")
    session.capacity_wait = {
        **_new_wait(now),
        **(session.capacity_wait or {}),
        "resources": short_resources(scheduler_message),
        "scheduler_message": scheduler_message,
    }
    events = []
    if first:
        events.append(
            _draft(
                session,
                CapacityReason.waiting_for_capacity,
                f"No node has room for the pod: {scheduler_message}",
            )
        )
    _show(session, now)
    return events


def autoscaler_said(
    session: VDISession, verdict: AutoscalerVerdict, message: str, now: datetime
) -> list[EventDraft]:
    """The cluster autoscaler's event about the session's pod (it may come before the
    scheduler's word is seen here)."""
    if session.phase not in WAITING_PHASES or session.scheduled_at is not None:
        return []
    now = instant(session, now)
    wait = {**_new_wait(now), **(session.capacity_wait or {})}
    if wait.get("autoscaler") == verdict.value and wait.get("autoscaler_message") == message:
        return []
    wait.update(autoscaler=verdict.value, autoscaler_message=message)
    session.capacity_wait = wait
    _show(session, now)
    return [_draft(session, CapacityReason(verdict.value), f"Cluster autoscaler: {message}")]


def capacity_came(session: VDISession, node_message: str, now: datetime) -> list[EventDraft]:
    """The pod of a waiting session is on a node: the wait is over."""
    wait = session.capacity_wait
    if wait is None:
        return []
    now = instant(session, now)
    waited = max(0.0, (now - datetime.fromisoformat(wait["since"])).total_seconds())
    resources = ", ".join(wait.get("resources") or []) or "capacity"
    event = _draft(
        session,
        CapacityReason.capacity_available,
        f"Capacity came after {waited:.0f} s waiting for {resources}: {node_message}",
        waited_s=round(waited, 3),
    )
    session.capacity_wait = None
    if session.phase == Phase.starting.value and session.reason == WAITING:
        session.reason = SessionReason.capacity_available.value
        session.message = (
            f"The pod is on a node after {waited:.0f} s waiting for {resources}; "
            "waiting for the agent"
        )
        session.updated_at = now
    return [event]


def starting(session: VDISession, reason: str, message: str) -> tuple[str, str]:
    """The reason and message of a session that becomes Starting: waiting, if its pod was seen
    waiting for capacity while its objects were made."""
    if session.capacity_wait is not None and session.scheduled_at is None:
        timeout = int(session.template_spec["start_timeout_s"])
        return WAITING, describe(session.capacity_wait, timeout)
    return reason, message


def fails_now(session: VDISession) -> tuple[str, str] | None:
    """NO_CAPACITY at once: the template asks it when no node group can help."""
    wait = session.capacity_wait
    if (
        wait is None
        or wait.get("autoscaler") != AutoscalerVerdict.not_trigger_scale_up
        or not session.template_spec.get("fail_without_scale_up")
    ):
        return None
    resources = ", ".join(wait.get("resources") or []) or "capacity"
    return (
        SessionReason.no_capacity.value,
        f"No node has the {resources} this session requests and the cluster autoscaler cannot "
        f"add one ({wait.get('autoscaler_message')}); the template fails such a session at "
        "once (fail_without_scale_up)",
    )
