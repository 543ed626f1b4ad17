"""bench.scale at a small size, for what it checks rather than its figures: a rush of creates
over two replicas all reach Running with none failed, a kill of every replica fails nothing,
and a termination wave leaves no object in the cluster and no session behind."""

from __future__ import annotations

import pytest

from tests.tools import bench_report

pytestmark = pytest.mark.e2e

SESSIONS = 40


def test_rush_restart_and_termination_wave_lose_and_leave_nothing() -> None:
    figures = bench_report(
        "bench.scale",
        *("--sessions", str(SESSIONS), "--portals", "8", "--steady-s", "4", "--rest-s", "2"),
        *("--heartbeat-window-s", "2"),
        *("--restart-window-s", "2", "--timeout-s", "120", "--json"),
        timeout_s=300,
    )
    assert figures["rush"]["phases"] == {"Running": SESSIONS}
    assert figures["rush"]["create_statuses"] == {"202": SESSIONS}
    assert figures["steady"]["probe_errors"] == 0
    assert figures["restart"]["phases_after"] == {"Running": SESSIONS}
    assert all(seconds < 60 for seconds in figures["restart"]["readyz_s"])
    assert figures["termination"]["objects_left"] == {
        "Pod": 0,
        "Secret": 0,
        "Service": 0,
        "IngressRoute": 0,
    }
    audit = figures["audit"]
    assert audit["acknowledged"] == audit["stored"] == SESSIONS
    assert audit["duplicated"] == 0
    assert audit["failed_ever"] == 0
