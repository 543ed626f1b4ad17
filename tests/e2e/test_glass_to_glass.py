"""The streaming data path end to end, on the benchmark's own harness (bench/glass_to_glass.py):
coturn, the control plane, the agent's checks and its pipeline exactly as in the pod (ximagesrc
on an Xvfb screen, x264enc) into webrtcbin, and a relay-only aiortc viewer, in a private network
namespace. Needs root, coturn and Debian's
GStreamer with python3-gi and python3-gi-cairo (.ci/run installs them)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.tools import bench_report


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return bench_report(
        "bench.glass_to_glass",
        *("--source", "xvfb", "--resolutions", "1280x720", "--seconds", "3"),
        *("--no-floor", "--json"),
    )


def test_frames_cross_the_relay_decoded_in_time_with_nothing_lost(report: dict[str, Any]) -> None:
    assert report["pipeline"].startswith("ximagesrc show-pointer=true ! ")  # the agent's own
    assert "x264enc speed-preset=ultrafast tune=zerolatency" in report["pipeline"]
    (run,) = report["runs"]
    assert run["resolution"] == "1280x720"
    assert run["frames_decoded"] > 0
    assert run["frames_measured"] > 0  # capture times read back from decoded pictures
    assert run["packets_lost"] == 0
    assert run["jitter_ms"] is not None
    assert run["jitter_ms"] < 20
    assert 0 < run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"]


def test_both_ends_use_relay_candidates_only(report: dict[str, Any]) -> None:
    (run,) = report["runs"]
    assert (run["local_candidate"], run["remote_candidate"]) == ("relay", "relay")
    assert run["viewer_candidate_types"] == ["relay"]
    assert run["sender_offered"]
    assert set(run["sender_offered"]) == {"relay"}
    assert run["sender_pair"] == {"local": "relay", "remote": "relay"}


def test_the_agents_reports_move_the_session_and_its_stream_conditions(
    report: dict[str, Any],
) -> None:
    assert report["choice"] == {"encoder": "x264enc", "fallback": False}  # a CPU session
    before = report["session_after_checks"]
    assert (before["phase"], before["encoder"]) == ("Running", "x264enc")
    assert before["conditions"]["StreamHealthy"] == "Unknown"  # no viewer yet
    during = report["session_while_streaming"]
    assert during["phase"] == "Running"
    assert during["conditions"]["StreamHealthy"] == "True"
    assert during["conditions"]["LatencyWithinSLO"] == "True"
    assert "framesDecoded=" in during["messages"]["StreamHealthy"]


def test_a_wrong_password_or_an_expired_credential_gets_no_relay_and_no_connection(
    report: dict[str, Any],
) -> None:
    relay = report["relay_with"]
    assert relay["session_credentials"] == ["relay"]  # the control: the same server, allowed
    assert relay["wrong_password"] == []
    assert relay["expired_credential"] == []
    # ...so a relay-only viewer holding them cannot connect to the session's stream.
    for attempt in report["viewer_connection_with"].values():
        assert attempt["connection"] != "connected"
        assert attempt["ice"] not in ("connected", "completed")
        assert attempt["frames_decoded"] == 0
