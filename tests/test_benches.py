"""Every bench still runs and prints its figures (tiny sizes: these are not measurements, the
benches' own runs are). A bench that rots silently is a figure nobody can rerun."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("module", "args", "expected"),
    [
        ("bench.api", ["--requests", "40", "--rounds", "1"], ["floor", "session create"]),
        (
            "bench.provision",
            ["--sessions", "8", "--rounds", "1", "--latencies-ms", "0"],
            ["sessions/s", "calls floor/s"],
        ),
        ("bench.encode", ["--seconds", "1"], ["x264 + rtp", "floor"]),
        (
            "bench.start",
            [
                "--sessions",
                "5",
                "--pull-s",
                "0.3",
                "--agent-s",
                "0.1",
                "--node-join-s",
                "1",
                "--gpu-advertise-s",
                "0.5",
                "--gpus-per-node",
                "2",
            ],
            [
                "cold, at once",
                "5/5 warm",
                "floor: cold, at once",
                "(target <= 2x)",
                "cold, node joins after 1+0.5 s",
                "3 nodes added, 0 failed",
            ],
        ),
        ("bench.soak", ["--portals", "2", "--seconds", "4"], ["lost 0, duplicated 0"]),
        (
            "bench.streams",
            ["--streams", "30", "--requests", "20"],
            ["30 streams opened", "{'200': 30}; one more: 429", "list sessions"],
        ),
        ("bench.header_flood", ["--seconds", "1"], ["healthz_under_flood", "431"]),
    ],
    ids=["api", "provision", "encode", "start", "soak", "streams", "header_flood"],
)
def test_bench_runs_and_prints_its_figures(
    module: str, args: list[str], expected: list[str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for text in expected:
        assert text in result.stdout, result.stdout[-3000:]
