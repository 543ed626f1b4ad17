"""The local desktops' sandbox (issue 27, findings 3 and 4), as the runtime builds it, with real
bubblewrap: what a desktop's own shell can see and do, and that nothing it starts outlives it.
The local-desktop e2e (tests/e2e/test_local_desktops.py) runs whole desktops in it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from app.runtimes.sandbox import (
    HOME_INSIDE,
    Accounts,
    Sandbox,
    give,
    runtime_paths,
    why_not_isolated,
)

pytestmark = pytest.mark.e2e

UID_BASE = 2_100_000

# Run inside the sandbox: what the desktop's user can reach, as JSON.
PROBE = r"""
import json, os, sys
data_dir, other_home, server_pid, host_tmp_file = sys.argv[1:5]
def can(action):
    try:
        action()
        return True
    except OSError:
        return False
def write(path):
    with open(path, "w") as out:
        out.write("x")
print(json.dumps({
    "uid": os.getuid(),
    "euid": os.geteuid(),
    "home": os.environ.get("HOME"),
    "write_home": can(lambda: write(os.path.join(os.environ["HOME"], "mine"))),
    "read_secret_key": can(lambda: open(os.path.join(data_dir, "secret_key")).read()),
    "list_data_dir": os.listdir(data_dir) if os.path.isdir(data_dir) else None,
    "read_other_home": can(lambda: os.listdir(other_home)),
    "see_server": os.path.exists(f"/proc/{server_pid}"),
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "host_tmp_file": os.path.exists(host_tmp_file),
    "write_system": can(lambda: write("/usr/vdi-sandbox-probe")),
    "setuid_root": can(lambda: os.setuid(0)),
}))
"""


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    problem = why_not_isolated(UID_BASE)
    if problem:
        pytest.fail(f"local desktops cannot be isolated here: {problem} (.ci/run installs it)")
    data = tmp_path / "data"
    desktops = data / "desktops"
    paths = {
        "data": data,
        "session": desktops / "sessions" / "s1",
        "home": desktops / "homes" / "alice",
        "other_home": desktops / "homes" / "bob",
    }
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    (paths["session"] / "tmp").mkdir(mode=0o700)
    (data / "secret_key").write_text("the server's key")
    (paths["other_home"] / "diary").write_text("bob's")
    return paths


def _sandbox(layout: dict[str, Path], uid: int) -> Sandbox:
    for owned in (layout["session"], layout["session"] / "tmp", layout["home"]):
        give(owned, uid)
    return Sandbox(
        uid,
        hidden=(str(layout["data"]),),
        home=str(layout["home"]),
        session=str(layout["session"]),
        tmp=str(layout["session"] / "tmp"),
        runtime=runtime_paths(),
    )


def test_a_desktops_shell_sees_its_home_and_not_the_server_nor_other_users(
    layout: dict[str, Path], tmp_path: Path
) -> None:
    accounts = Accounts(layout["data"] / "desktops" / "accounts.json", UID_BASE)
    alice = accounts.uid_for("alice")
    assert (accounts.uid_for("bob"), accounts.uid_for("alice")) == (alice + 1, alice)  # kept
    assert Accounts(accounts.path, UID_BASE).uid_for("alice") == alice  # across restarts
    host_tmp_file = Path("/tmp") / f"vdi-sandbox-probe-{os.getpid()}"
    host_tmp_file.write_text("the host's /tmp")
    try:
        command = _sandbox(layout, alice).wrap(
            [sys.executable, "-c", PROBE, str(layout["data"]), str(layout["other_home"])]
            + [str(os.getpid()), str(host_tmp_file)]
        )
        env = {"HOME": HOME_INSIDE, "PATH": "/usr/bin:/bin"}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    finally:
        host_tmp_file.unlink()
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert (seen["uid"], seen["euid"]) == (alice, alice)  # not root, not the server's account
    assert seen["home"] == "/home/user"
    assert seen["write_home"] is True
    assert (layout["home"] / "mine").stat().st_uid == alice  # the user's own file on the host
    assert seen["read_secret_key"] is False
    assert seen["list_data_dir"] in ([], None)  # an empty tmpfs over the data dir
    assert seen["read_other_home"] is False
    assert seen["see_server"] is False  # its own PID namespace
    assert max(seen["pids"]) < 10, seen["pids"]
    assert seen["host_tmp_file"] is False  # a /tmp of its own
    assert seen["write_system"] is False  # the system read-only
    assert seen["setuid_root"] is False


def test_nothing_a_desktop_starts_outlives_it_not_even_setsid_and_env_i(
    layout: dict[str, Path],
) -> None:
    """Finding 27.4: a process that called setsid and dropped the session marker (env -i)
    escaped the group kill and the marker sweep, and kept running after the session."""
    marker = str(100_000 + os.getpid())  # the escapee's sleep, in seconds: its name here
    script = f"(setsid env -i sleep {marker} &); exec sleep 600"
    sandbox = _sandbox(layout, UID_BASE + 7)
    process = subprocess.Popen(
        sandbox.wrap(["sh", "-c", script]), start_new_session=True, env={"PATH": "/usr/bin:/bin"}
    )

    def escapees() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]

    try:
        deadline = time.monotonic() + 20
        while not escapees():
            assert time.monotonic() < deadline, "the escapee never started"
            time.sleep(0.05)
        [escapee] = escapees()
        assert escapee.uids().real == UID_BASE + 7
        assert escapee.environ() == {}  # no marker to find it by
        # the runtime's kill: the session's group; the escapee left it
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while escapees():
            assert time.monotonic() < deadline, "a desktop process outlived its sandbox"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_without_root_local_desktops_are_single_user_and_say_how_to_isolate_them() -> None:
    probe = "from app.runtimes.sandbox import why_not_isolated; print(why_not_isolated(2100000))"
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
        + ["-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert "does not run as root" in result.stdout
