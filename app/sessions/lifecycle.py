"""The session state machine: which phase follows which, and what a health report changes.

Pure: it mutates a session object in memory and returns the events to record; it never
touches the database or the network, so every rule is unit-testable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from app.errors import Conflict
from app.models import VDISession
from app.sessions.schemas import (
    CheckName,
    ConditionReason,
    ConditionStatus,
    ConditionType,
    EventType,
    HealthCheck,
    HealthReport,
    Phase,
    SessionReason,
    ViewerReport,
)

TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.pending: frozenset({Phase.provisioning, Phase.terminating}),
    Phase.provisioning: frozenset({Phase.starting, Phase.failed, Phase.terminating}),
    Phase.starting: frozenset({Phase.running, Phase.failed, Phase.terminating}),
    Phase.running: frozenset({Phase.failed, Phase.terminating}),
    Phase.failed: frozenset({Phase.terminating}),
    Phase.terminating: frozenset({Phase.terminated}),
    Phase.terminated: frozenset(),
}
# Phases that count against a user's session limit: the desktop exists or is on its way.
ACTIVE_PHASES = frozenset({Phase.pending, Phase.provisioning, Phase.starting, Phase.running})
# Phases in which the session is over: keepalive, connection and reports no longer apply.
ENDED_PHASES = frozenset({Phase.failed, Phase.terminating, Phase.terminated})
DELETED_PHASES = frozenset({Phase.terminating, Phase.terminated})
# Phases in which the session's pod may exist: a Failed session keeps it through its grace
# period, a Terminating one until the kubelet has stopped it.
POD_HOLDING_PHASES = frozenset(
    {Phase.provisioning, Phase.starting, Phase.running, Phase.failed, Phase.terminating}
)
# What counts for the per-user limit: live sessions, and Failed ones still holding their pod.
COUNTED_PHASES = ACTIVE_PHASES | {Phase.failed}

GPU_INIT_ERROR = "GPU_INIT_ERROR"
ENCODER_UNAVAILABLE = "ENCODER_UNAVAILABLE"
SOFTWARE_FALLBACK = "SoftwareFallback"
NO_GPU_ON_HOST = "NoGpuOnHost"  # the agent's gpu check on a local desktop without a GPU
# The streamer exited with a configuration error, kept crashing, or never answered its health
# check: the desktop cannot be reached, whatever the checks said.
STREAMER_FAILED = "STREAMER_FAILED"

_CHECK_CONDITION = {
    CheckName.gpu: ConditionType.gpu_available,
    CheckName.encoder: ConditionType.encoder_ready,
    CheckName.stream: ConditionType.stream_healthy,
    CheckName.latency: ConditionType.latency_within_slo,
    CheckName.relay: ConditionType.relay_ready,
}
# reason of a passing / unknown check, per condition
_OK_REASON = {
    ConditionType.gpu_available: "GPUReady",
    ConditionType.encoder_ready: "HardwareEncoder",
    ConditionType.stream_healthy: "FramesDecoded",
    ConditionType.latency_within_slo: "WithinSLO",
    ConditionType.relay_ready: "CredentialsFresh",
}
_FAILED_REASON = {
    ConditionType.gpu_available: GPU_INIT_ERROR,
    ConditionType.encoder_ready: ENCODER_UNAVAILABLE,
    ConditionType.stream_healthy: "StreamUnhealthy",
    ConditionType.latency_within_slo: "LatencyAboveSLO",
    ConditionType.relay_ready: "TurnRenewalFailing",
}


class InvalidTransition(Conflict):
    """The session's phase does not allow this change (a lifecycle rule, named in `detail`)."""

    slug, title = "invalid-transition", "Invalid phase transition"


@dataclass(frozen=True)
class EventDraft:
    type: str
    phase: str
    reason: str | None
    message: str | None
    data: dict[str, Any] = field(default_factory=dict)


def can_transition(current: Phase, target: Phase) -> bool:
    return target in TRANSITIONS[current]


# Conditions that appear only once the agent reports them (a session streaming without TURN,
# a local desktop on loopback, never has a relay to renew).
REPORTED_ONLY = frozenset({ConditionType.relay_ready})


def initial_conditions(gpu: int, now: datetime) -> list[dict[str, Any]]:
    stamp = now.isoformat()
    conditions = []
    for condition_type in ConditionType:
        if condition_type in REPORTED_ONLY:
            continue
        status, reason, message = ConditionStatus.unknown, "NotChecked", "No report yet"
        if condition_type is ConditionType.gpu_available and gpu == 0:
            status, reason, message = (
                ConditionStatus.false,
                "NotRequested",
                "A CPU session (gpu: 0)",
            )
        conditions.append(
            {
                "type": condition_type.value,
                "status": status.value,
                "reason": reason,
                "message": message,
                "last_transition_time": stamp,
            }
        )
    return conditions


def instant(session: VDISession, now: datetime) -> datetime:
    """`now`, or the session's latest instant when that is later: what a change to the session
    is stamped with, so that its instants and events stay in order. A clock read before a wait
    for the session's row lock (or on another replica, a little behind) is earlier than what the
    holder of the lock wrote; stamped as it was, a report waiting behind the reconciler's
    provisioning made `running_at` earlier than `provisioned_at`."""
    moments = [
        moment
        for moment in (
            session.created_at,
            session.updated_at,
            session.provisioned_at,
            session.scheduled_at,
            session.running_at,
        )
        if moment is not None
    ]
    return max([now, *moments])


def transition(
    session: VDISession, target: Phase, *, reason: str, message: str, now: datetime
) -> EventDraft:
    current = Phase(session.phase)
    now = instant(session, now)
    if not can_transition(current, target):
        raise InvalidTransition(
            f"Session {session.id} cannot go from {current} to {target}; "
            f"from {current} it can go to {', '.join(sorted(TRANSITIONS[current])) or 'nothing'}"
        )
    session.phase = target.value
    session.reason = reason
    session.message = message
    session.updated_at = now
    if target is Phase.starting and session.provisioned_at is None:
        session.provisioned_at = now  # its objects exist
        if session.scheduled_at is not None:  # seen scheduled while its objects were made
            session.scheduled_at = now
    if target is Phase.running:
        session.running_at = now
    if target in (Phase.failed, Phase.terminating) and session.ended_at is None:
        session.ended_at = now
    if target not in (Phase.provisioning, Phase.starting):
        session.capacity_wait = None  # no longer waiting (a failure's message says for what)
    return EventDraft(
        type="PhaseChanged",
        phase=target.value,
        reason=reason,
        message=message,
        data={"from": current.value, "to": target.value},
    )


def set_condition(
    session: VDISession,
    condition_type: ConditionType,
    status: ConditionStatus,
    *,
    reason: str,
    message: str,
    now: datetime,
) -> EventDraft | None:
    """Set one condition; an event only when its status or reason changed."""
    now = instant(session, now)
    conditions = [dict(item) for item in session.conditions]
    existing = next((c for c in conditions if c["type"] == condition_type.value), None)
    if existing is None:
        existing = {"type": condition_type.value, "last_transition_time": now.isoformat()}
        conditions.append(existing)
    changed = existing.get("status") != status.value or existing.get("reason") != reason
    if existing.get("status") != status.value:
        existing["last_transition_time"] = now.isoformat()
    existing.update(status=status.value, reason=reason, message=message)
    session.conditions = conditions  # a new list, so the JSONB column is marked dirty
    if not changed:
        return None
    session.updated_at = now
    return EventDraft(
        type="ConditionChanged",
        phase=session.phase,
        reason=reason,
        message=message,
        data={"condition": condition_type.value, "status": status.value},
    )


def _condition_from_check(
    check: HealthCheck, report: HealthReport
) -> tuple[ConditionStatus, str, str]:
    """A check's condition. Its reason is the agent's code where that is a known reason (the
    set is closed, `ConditionReason`); another code is kept in the message."""
    condition_type = _CHECK_CONDITION[check.name]
    known = check.code if check.code in _CONDITION_REASONS else None
    unknown = f"[{check.code}] " if check.code and known is None else ""
    if check.ok is None:
        return (
            ConditionStatus.unknown,
            known or "NotMeasured",
            unknown + (check.detail or "Not known yet"),
        )
    if check.ok:
        reason = _OK_REASON[condition_type]
        if condition_type is ConditionType.encoder_ready and report.fallback:
            reason = SOFTWARE_FALLBACK
        return ConditionStatus.true, reason, check.detail or _describe_ok(check.name, report)
    return (
        ConditionStatus.false,
        known or _FAILED_REASON[condition_type],
        unknown + (check.detail or f"The {check.name} check failed"),
    )


_CONDITION_REASONS = frozenset(reason.value for reason in ConditionReason)
_SESSION_REASONS = frozenset(reason.value for reason in SessionReason)


def _failure_reason(code: str | None, default: str) -> str:
    """A failure's reason: the agent's code where that is a session reason, else the spec's."""
    return code if code in _SESSION_REASONS else default


def _describe_ok(name: CheckName, report: HealthReport) -> str:
    if name is CheckName.encoder and report.encoder:
        return f"Encoding with {report.encoder}"
    if name is CheckName.stream and report.frames_decoded is not None:
        return f"framesDecoded={report.frames_decoded} jitter={report.jitter_ms} ms"
    if name is CheckName.latency and report.latency_ms is not None:
        return f"glass-to-glass {report.latency_ms} ms"
    return f"The {name} check passed"


def _failure(
    session: VDISession,
    checks: dict[CheckName, HealthCheck],
    report: HealthReport,
    fallback_allowed: bool,
) -> tuple[str, str] | None:
    gpu = checks.get(CheckName.gpu)
    if gpu is not None and gpu.ok is False and session.gpu >= 1:
        return _failure_reason(
            gpu.code, GPU_INIT_ERROR
        ), gpu.detail or "nvidia-smi failed in the pod"
    encoder = checks.get(CheckName.encoder)
    if encoder is not None and encoder.ok is False:
        return (
            _failure_reason(encoder.code, ENCODER_UNAVAILABLE),
            encoder.detail or "No usable encoder",
        )
    stream = checks.get(CheckName.stream)
    if stream is not None and stream.ok is False and stream.code == STREAMER_FAILED:
        return STREAMER_FAILED, stream.detail or "The streamer failed"
    if encoder is not None and encoder.ok and report.fallback and not fallback_allowed:
        return (
            ENCODER_UNAVAILABLE,
            "NVENC is unusable and the template forbids the x264enc fallback",
        )
    return None


def _ready(session: VDISession, checks: dict[CheckName, HealthCheck]) -> bool:
    encoder = checks.get(CheckName.encoder)
    if encoder is None or encoder.ok is not True:
        return False
    if session.gpu == 0:
        return True
    gpu = checks.get(CheckName.gpu)
    return gpu is not None and (gpu.ok is True or _no_gpu_on_host(gpu))


def _no_gpu_on_host(gpu: HealthCheck | None) -> bool:
    """A local desktop on a host without a usable GPU runs as a CPU session (its encoder check
    says SoftwareFallback); a session pod without its GPU fails instead."""
    return gpu is not None and gpu.ok is None and gpu.code == NO_GPU_ON_HOST


def apply_health_report(
    session: VDISession, report: HealthReport, *, fallback_allowed: bool, now: datetime
) -> list[EventDraft]:
    """Fold one agent report into the session: conditions first, then at most one phase move.

    Stream and latency never gate Running (they need a viewer). The caller takes reports only
    on a Starting or Running session: none before the pod exists, none once it has ended (a
    Failed session keeps the evidence of its failure).
    """
    phase = Phase(session.phase)
    if phase not in (Phase.starting, Phase.running):
        return []
    checks = {check.name: check for check in report.checks}
    events: list[EventDraft] = []
    session.last_report_at = now
    if report.encoder:
        session.encoder = report.encoder
    if report.streamer:
        session.streamer = report.streamer
    for name, check in checks.items():
        if name is CheckName.gpu and session.gpu == 0:
            continue  # a CPU session has no GPU to check
        status, reason, message = _condition_from_check(check, report)
        event = set_condition(
            session, _CHECK_CONDITION[name], status, reason=reason, message=message, now=now
        )
        if event is not None:
            events.append(event)

    for adaptation in report.adaptations:
        how = "live, its viewers kept" if adaptation.live else "the streamer restarted"
        events.append(
            EventDraft(
                type=EventType.stream_adapted.value,
                phase=session.phase,
                reason=adaptation.what.value,
                message=f"{adaptation.what.value} {adaptation.before} -> {adaptation.after} "
                f"({how}): {adaptation.why}",
                data=adaptation.model_dump(mode="json"),
            )
        )

    if report.viewers is not None:
        events += apply_viewers(session, report.viewers, now)
    if report.recording is not None:
        _apply_recording(session, report)

    failure = _failure(session, checks, report, fallback_allowed)
    if failure is not None:
        code, detail = failure
        events.append(transition(session, Phase.failed, reason=code, message=detail, now=now))
        return events
    if phase is not Phase.running and _ready(session, checks):
        encoder = report.encoder or "an encoder"
        message = f"GPU and encoder ready ({encoder})"
        if report.fallback:
            why = (
                "no GPU on this host"
                if _no_gpu_on_host(checks.get(CheckName.gpu))
                else ("NVENC is unusable")
            )
            message = f"Running on the software fallback ({encoder}): {why}"
        if report.turn is False:
            message += (
                "; streaming without TURN (a local desktop, reached on this machine's own "
                "addresses; set VDI_TURN_HOST to relay for viewers elsewhere)"
            )
        events.append(
            transition(session, Phase.running, reason="AgentReady", message=message, now=now)
        )
        if report.viewers is not None and idle_mode(session) != "keepalive":
            # what keeps it alive, said from the start (the transition wrote its own message)
            kept = _idle_by_viewers(session, session.viewers or [], now)
            session.message = f"{message}. {kept}" if kept else message
    return events


def _viewer_change(viewer: dict[str, Any]) -> dict[str, Any]:
    return {
        "viewer": viewer["id"],
        "role": viewer["role"],
        "share": viewer.get("share"),
        "address": viewer.get("address"),
    }


def _viewer_words(viewer: dict[str, Any]) -> str:
    who = {"owner": "The user's page"}.get(viewer["role"], f"A {viewer['role']}'s page")
    share = f" (share {viewer['share']})" if viewer.get("share") else ""
    address = f" from {viewer['address']}" if viewer.get("address") else ""
    return f"{who}{share}{address}"


def _apply_recording(session: VDISession, report: HealthReport) -> None:
    """What the agent says of the recording asked for (a report about an older ask is not)."""
    assert report.recording is not None
    asked = session.recording
    if asked is None or str(report.recording.request) != asked.get("request"):
        return
    said = report.recording.model_dump(mode="json", exclude={"request"})
    session.recording = {**asked, **said}


def idle_mode(session: VDISession) -> str:
    """What keeps the session from its idle deadline: keepalive, viewers or both."""
    return str(session.template_spec.get("idle") or "keepalive")


def _idle_by_viewers(
    session: VDISession, watching: list[dict[str, Any]], now: datetime
) -> str | None:
    """A template whose idleness is measured by viewers: no idle deadline while a page is
    connected; from the moment the last one left, idle_timeout_s (keepalives extend it only
    where the template says both count). The message says what keeps it alive."""
    mode = idle_mode(session)
    if mode == "keepalive" or session.pool_member:
        return None
    idle_s = int(session.template_spec["idle_timeout_s"])
    if watching:
        roles = ", ".join(sorted({viewer["role"] for viewer in watching}))
        pages = f"{len(watching)} connected page{'s' if len(watching) != 1 else ''}"
        session.idle_deadline = session.expires_at
        session.message = f"Kept alive by {pages} ({roles}); idle: {mode}"
        return session.message
    session.idle_deadline = min(now + timedelta(seconds=idle_s), session.expires_at)
    unless = "a page connects" + (" or a keepalive comes" if mode == "both" else "")
    session.message = (
        f"No page connected since {now.isoformat(timespec='seconds')}: idle at "
        f"{session.idle_deadline.isoformat(timespec='seconds')} unless {unless}"
    )
    return session.message


def apply_viewers(
    session: VDISession, reported: list[ViewerReport], now: datetime
) -> list[EventDraft]:
    """The pages connected now, as the agent saw them: stored, each arrival and departure an
    event (ViewerConnected, ViewerDisconnected), and where the template measures idleness by
    viewers, the idle deadline moved."""
    now_viewers = [viewer.model_dump(mode="json") for viewer in reported]
    before = {viewer["id"]: viewer for viewer in session.viewers or []}
    after = {viewer["id"]: viewer for viewer in now_viewers}

    def came_or_went(kind: EventType, viewer: dict[str, Any], what: str) -> EventDraft:
        return EventDraft(
            type=kind.value,
            phase=session.phase,
            reason=viewer["role"],
            message=f"{_viewer_words(viewer)} {what}",
            data=_viewer_change(viewer),
        )

    events = [
        came_or_went(EventType.viewer_disconnected, viewer, "left the desktop")
        for viewer_id, viewer in before.items()
        if viewer_id not in after
    ]
    events += [
        came_or_went(EventType.viewer_connected, viewer, "connected")
        for viewer_id, viewer in after.items()
        if viewer_id not in before
    ]
    if events or (session.viewers is None and not now_viewers):
        _idle_by_viewers(session, now_viewers, now)
    session.viewers = now_viewers
    return events


@dataclass(frozen=True)
class Deadlines:
    heartbeat_timeout_s: int
    failed_grace_s: int


def _start_deadline(session: VDISession) -> datetime:
    """The start timeout measures the cluster, not the control plane's queue: it counts from
    the reconciler's claim (Pending -> Provisioning), so the tail of a rush is never failed
    before it was tried."""
    since = session.claimed_at or session.created_at
    return since + timedelta(seconds=int(session.template_spec["start_timeout_s"]))


def _heartbeat_deadline(session: VDISession, deadlines: Deadlines) -> datetime:
    last = session.last_report_at or session.running_at or session.updated_at
    return last + timedelta(seconds=deadlines.heartbeat_timeout_s)


def next_check(session: VDISession, deadlines: Deadlines, now: datetime) -> datetime | None:
    """When the reconciler must look at the session next (None: never again)."""
    phase = Phase(session.phase)
    if phase in (Phase.pending, Phase.terminating):
        return now
    if phase is Phase.provisioning:  # claimed: due again when the lease ends, or at its deadline
        return min(session.next_reconcile_at or now, _start_deadline(session))
    if phase is Phase.starting:
        return min(_start_deadline(session), session.expires_at)
    if phase is Phase.running:
        due = min(
            session.idle_deadline, session.expires_at, _heartbeat_deadline(session, deadlines)
        )
        if session.reason == "WarmClaimed" and session.running_at is None:
            # claimed from a warm pool, its route not made yet: the reconciler's retry stays
            due = min(due, session.next_reconcile_at or now)
        return due
    if phase is Phase.failed:
        return (session.ended_at or now) + timedelta(seconds=deadlines.failed_grace_s)
    return None


def deadline_passed(
    session: VDISession, deadlines: Deadlines, now: datetime
) -> tuple[Phase, str, str] | None:
    """The move a passed deadline calls for: (target phase, reason, message), or None."""
    phase = Phase(session.phase)
    if phase in (Phase.starting, Phase.running) and now >= session.expires_at:
        if session.pool_member:
            age = session.template_spec.get("warm_max_age_s")
            return (
                Phase.terminating,
                "WarmPoolMemberExpired",
                f"Unclaimed for warm_max_age_s ({age} s): replaced by a fresh member",
            )
        return Phase.terminating, "MaxLifetimeReached", "The session reached its maximum lifetime"
    if phase in (Phase.provisioning, Phase.starting) and now >= _start_deadline(session):
        timeout = session.template_spec["start_timeout_s"]
        if session.capacity_wait is not None:
            return Phase.failed, SessionReason.no_capacity.value, _no_capacity(session)
        return Phase.failed, "START_TIMEOUT", f"Not Running within the start timeout ({timeout} s)"
    if phase is Phase.running:
        if now >= session.idle_deadline:
            return Phase.terminating, "IdleTimeout", _idle_words(session)
        if now >= _heartbeat_deadline(session, deadlines):
            return (
                Phase.failed,
                "AGENT_LOST",
                f"The agent has been silent for {deadlines.heartbeat_timeout_s} s",
            )
    if phase is Phase.failed and session.ended_at is not None:
        if now >= session.ended_at + timedelta(seconds=deadlines.failed_grace_s):
            return Phase.terminating, "FailedCleanup", f"Cleaning up after {session.reason}"
    return None


def _idle_words(session: VDISession) -> str:
    idle_s = session.template_spec.get("idle_timeout_s")
    return {
        "viewers": f"No page connected to the desktop for idle_timeout_s ({idle_s} s)",
        "both": f"No page connected and no keepalive for idle_timeout_s ({idle_s} s)",
    }.get(idle_mode(session), "No keepalive before the idle deadline")


def _no_capacity(session: VDISession) -> str:
    """Why a session that waited for capacity until its start timeout failed: what was short,
    and what the cluster autoscaler last said."""
    wait = session.capacity_wait or {}
    timeout = session.template_spec["start_timeout_s"]
    resources = ", ".join(wait.get("resources") or []) or "capacity"
    said = wait.get("autoscaler_message")
    autoscaler = f"; the cluster autoscaler said: {said}" if said else ""
    return (
        f"No node had room for the pod within the start timeout ({timeout} s): short of "
        f"{resources}{autoscaler}"
    )
