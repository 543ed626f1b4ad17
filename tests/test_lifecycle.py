"""The state machine and the health-report rules, without a database."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.models import VDISession
from app.sessions import lifecycle
from app.sessions.lifecycle import InvalidTransition, Phase
from app.sessions.schemas import HealthCheck, HealthReport

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def make(phase: Phase = Phase.starting, gpu: int = 1) -> VDISession:
    return VDISession(
        id=uuid.uuid4(),
        user="alice",
        template_name="t",
        template_spec={},
        phase=phase.value,
        conditions=lifecycle.initial_conditions(gpu, NOW),
        gpu=gpu,
        url="https://alice.example/",
        secrets_encrypted="x",
        created_at=NOW,
        updated_at=NOW,
        idle_deadline=NOW,
        expires_at=NOW,
    )


def condition(session: VDISession, kind: str) -> dict[str, str]:
    return next(c for c in session.conditions if c["type"] == kind)


def report(*checks: tuple[str, bool | None, str | None], **fields: object) -> HealthReport:
    return HealthReport(
        checks=[HealthCheck(name=name, ok=ok, code=code) for name, ok, code in checks],  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


LEGAL = [(a, b) for a, targets in lifecycle.TRANSITIONS.items() for b in targets]
ILLEGAL = [(a, b) for a in Phase for b in Phase if b not in lifecycle.TRANSITIONS[a]]


@pytest.mark.parametrize(("current", "target"), LEGAL)
def test_legal_transitions_move_the_phase_and_make_one_event(current: Phase, target: Phase) -> None:
    session = make(current)
    event = lifecycle.transition(
        session, target, reason="R", message="m", now=NOW + timedelta(seconds=1)
    )
    assert session.phase == target.value
    assert event.type == "PhaseChanged"
    assert event.data == {"from": current.value, "to": target.value}
    assert session.updated_at == NOW + timedelta(seconds=1)


@pytest.mark.parametrize(("current", "target"), ILLEGAL)
def test_illegal_transitions_are_refused_and_change_nothing(current: Phase, target: Phase) -> None:
    session = make(current)
    with pytest.raises(
        InvalidTransition, match=f"cannot go from {current.value} to {target.value}"
    ):
        lifecycle.transition(session, target, reason="R", message="m", now=NOW)
    assert session.phase == current.value


def test_the_machine_matches_the_design_table() -> None:
    # DESIGN.md "Session lifecycle", column "next".
    assert {p.value: sorted(t.value for t in ts) for p, ts in lifecycle.TRANSITIONS.items()} == {
        "Pending": ["Provisioning", "Terminating"],
        "Provisioning": ["Failed", "Starting", "Terminating"],
        "Starting": ["Failed", "Running", "Terminating"],
        "Running": ["Failed", "Terminating"],
        "Failed": ["Terminating"],
        "Terminating": ["Terminated"],
        "Terminated": [],
    }


def test_running_sets_running_at_and_failure_sets_ended_at_once() -> None:
    session = make(Phase.starting)
    lifecycle.transition(session, Phase.running, reason="R", message="m", now=NOW)
    assert session.running_at == NOW
    assert session.ended_at is None
    lifecycle.transition(session, Phase.failed, reason="R", message="m", now=NOW + timedelta(1))
    lifecycle.transition(
        session, Phase.terminating, reason="R", message="m", now=NOW + timedelta(2)
    )
    assert session.ended_at == NOW + timedelta(1)


def test_gpu_and_encoder_ready_make_a_starting_session_running() -> None:
    session = make(Phase.starting)
    events = lifecycle.apply_health_report(
        session,
        report(("gpu", True, None), ("encoder", True, None), encoder="nvh264enc"),
        fallback_allowed=True,
        now=NOW,
    )
    assert session.phase == "Running"
    assert session.encoder == "nvh264enc"
    assert condition(session, "GPUAvailable")["status"] == "True"
    assert condition(session, "EncoderReady")["reason"] == "HardwareEncoder"
    assert [e.type for e in events] == ["ConditionChanged", "ConditionChanged", "PhaseChanged"]


def test_nvidia_smi_failure_fails_a_gpu_session_with_gpu_init_error() -> None:
    session = make(Phase.starting)
    lifecycle.apply_health_report(
        session, report(("gpu", False, "GPU_INIT_ERROR")), fallback_allowed=True, now=NOW
    )
    assert (session.phase, session.reason) == ("Failed", "GPU_INIT_ERROR")
    assert condition(session, "GPUAvailable")["status"] == "False"


def test_a_cpu_session_ignores_the_gpu_check_and_runs_on_x264() -> None:
    session = make(Phase.starting, gpu=0)
    lifecycle.apply_health_report(
        session,
        report(("gpu", False, "GPU_INIT_ERROR"), ("encoder", True, None), encoder="x264enc"),
        fallback_allowed=False,
        now=NOW,
    )
    assert session.phase == "Running"
    assert condition(session, "GPUAvailable")["reason"] == "NotRequested"


def test_software_fallback_runs_when_the_template_allows_it() -> None:
    session = make(Phase.starting)
    lifecycle.apply_health_report(
        session,
        report(("gpu", True, None), ("encoder", True, None), encoder="x264enc", fallback=True),
        fallback_allowed=True,
        now=NOW,
    )
    assert session.phase == "Running"
    assert condition(session, "EncoderReady")["reason"] == "SoftwareFallback"
    assert "software fallback" in (session.message or "")


def test_a_local_desktop_without_a_gpu_runs_as_a_fallback_and_says_it_has_no_turn() -> None:
    """The local runtime on a host without a GPU: the agent's gpu check is NoGpuOnHost (not a
    failure), the encoder the software fallback; without a TURN host the session says so."""
    session = make(Phase.starting, gpu=1)
    lifecycle.apply_health_report(
        session,
        report(
            ("gpu", None, "NoGpuOnHost"),
            ("encoder", True, "SoftwareFallback"),
            encoder="h264enc/x264",
            fallback=True,
            turn=False,
        ),
        fallback_allowed=True,
        now=NOW,
    )
    assert session.phase == "Running"
    assert condition(session, "GPUAvailable")["reason"] == "NoGpuOnHost"
    message = session.message or ""
    assert "no GPU on this host" in message
    assert "without TURN" in message


def test_an_unknown_gpu_check_on_a_gpu_session_is_not_ready() -> None:
    """Only the local runtime's NoGpuOnHost lets a GPU session run without a GPU."""
    session = make(Phase.starting, gpu=1)
    lifecycle.apply_health_report(
        session,
        report(("gpu", None, None), ("encoder", True, "SoftwareFallback"), fallback=True),
        fallback_allowed=True,
        now=NOW,
    )
    assert session.phase == "Starting"


def test_software_fallback_fails_when_the_template_forbids_it() -> None:
    session = make(Phase.starting)
    lifecycle.apply_health_report(
        session,
        report(("gpu", True, None), ("encoder", True, None), encoder="x264enc", fallback=True),
        fallback_allowed=False,
        now=NOW,
    )
    assert (session.phase, session.reason) == ("Failed", "ENCODER_UNAVAILABLE")


def test_encoder_failure_fails_with_its_code() -> None:
    session = make(Phase.running)
    lifecycle.apply_health_report(
        session,
        report(("gpu", True, None), ("encoder", False, "ENCODER_UNAVAILABLE")),
        fallback_allowed=True,
        now=NOW,
    )
    assert (session.phase, session.reason) == ("Failed", "ENCODER_UNAVAILABLE")


def test_stream_and_latency_never_gate_running_and_unknown_is_not_failed() -> None:
    session = make(Phase.starting)
    lifecycle.apply_health_report(
        session,
        report(
            ("gpu", True, None),
            ("encoder", True, None),
            ("stream", None, None),
            ("latency", False, None),
        ),
        fallback_allowed=True,
        now=NOW,
    )
    assert session.phase == "Running"
    assert condition(session, "StreamHealthy")["status"] == "Unknown"
    assert condition(session, "LatencyWithinSLO")["status"] == "False"


def test_gpu_ok_without_encoder_result_stays_starting() -> None:
    session = make(Phase.starting)
    lifecycle.apply_health_report(
        session, report(("gpu", True, None)), fallback_allowed=True, now=NOW
    )
    assert session.phase == "Starting"


def test_a_report_before_starting_changes_nothing() -> None:
    session = make(Phase.provisioning)
    conditions = copy.deepcopy(session.conditions)
    events = lifecycle.apply_health_report(
        session,
        report(("gpu", True, None), ("encoder", True, None)),
        fallback_allowed=True,
        now=NOW,
    )
    assert events == []
    assert (session.phase, session.conditions) == ("Provisioning", conditions)


def test_a_stale_good_report_cannot_undo_a_failure() -> None:
    session = make(Phase.starting)
    lifecycle.apply_health_report(
        session, report(("gpu", False, None)), fallback_allowed=True, now=NOW
    )
    evidence = copy.deepcopy(session.conditions)
    lifecycle.apply_health_report(
        session,
        report(("gpu", True, None), ("encoder", True, None)),
        fallback_allowed=True,
        now=NOW,
    )
    assert (session.phase, session.reason) == ("Failed", "GPU_INIT_ERROR")
    assert session.conditions == evidence  # the failure's evidence stays as it was


def test_an_identical_report_records_no_new_event() -> None:
    session = make(Phase.running)
    same = report(("gpu", True, None), ("encoder", True, None), ("stream", True, None))
    lifecycle.apply_health_report(session, same, fallback_allowed=True, now=NOW)
    assert lifecycle.apply_health_report(session, same, fallback_allowed=True, now=NOW) == []


def test_condition_transition_time_moves_only_when_status_changes() -> None:
    session = make(Phase.running)
    later = NOW + timedelta(minutes=1)
    lifecycle.set_condition(
        session,
        lifecycle.ConditionType.stream_healthy,
        lifecycle.ConditionStatus.true,
        reason="A",
        message="m",
        now=NOW,
    )
    lifecycle.set_condition(
        session,
        lifecycle.ConditionType.stream_healthy,
        lifecycle.ConditionStatus.true,
        reason="B",
        message="m",
        now=later,
    )
    assert condition(session, "StreamHealthy")["last_transition_time"] == NOW.isoformat()


def test_the_start_timeout_counts_from_the_claim_not_from_the_queue() -> None:
    """A session that waited behind a rush longer than its start timeout is not failed once the
    reconciler takes it: the timeout measures the cluster."""
    deadlines = lifecycle.Deadlines(heartbeat_timeout_s=60, failed_grace_s=60)
    session = make(Phase.provisioning)
    session.template_spec = {"start_timeout_s": 300}
    session.expires_at = NOW + timedelta(hours=8)
    session.created_at = NOW - timedelta(seconds=900)  # queued for 15 minutes
    session.claimed_at = NOW - timedelta(seconds=5)
    assert lifecycle.deadline_passed(session, deadlines, NOW) is None
    assert lifecycle.next_check(session, deadlines, NOW) == NOW  # its lease, not a past deadline
    session.claimed_at = NOW - timedelta(seconds=301)
    passed = lifecycle.deadline_passed(session, deadlines, NOW)
    assert passed is not None
    assert passed[1] == "START_TIMEOUT"
