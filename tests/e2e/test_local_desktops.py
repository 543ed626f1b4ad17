"""Local desktops (VDI_CLUSTER=local) as an operator gets them: `vdi-control serve` in a process of
its own, sessions created through the API, each one real processes on this machine (Xvfb, the
real vdi-agent, the real Selkies 2.x from `pip install -e '.[desktop]'`), opened in a real headless
Chromium with the credentials GET .../connection hands out. Processes are found by the marker
every process of a session carries in its environment, and stopped by their PIDs.

The tests share one server (its start-up is the slow part) and nothing else: each makes the
sessions it needs, for users no other test uses, and ends them; the restart test runs a server of
its own. The browser's view of the first desktop is saved to .artifacts/local-desktop.png (the
README's screenshot is one of these).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from app.runtimes.local import RUNTIME_MARKER, SESSION_MARKER
from harness.browser_viewer import READ_STATS, chromium
from tests.cluster.test_x_authority import x_handshake
from tests.conftest import TEST_SECRET_KEY, TEST_TURN_SECRET
from tests.instants import disorder
from tests.test_cli import free_port
from tests.tools import REPO, VENV_BIN, tool

pytestmark = pytest.mark.e2e

SCREENSHOT = REPO / ".artifacts" / "local-desktop.png"
ADMIN = "vdi_" + "local-desktops-admin-token-0123456789"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
SERVE = [sys.executable, "-c", "from app.cli import main; main()", "serve"]


@dataclass
class Server:
    base: str
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes]
    database_url: str = ""

    @property
    def desktops(self) -> str:
        return str((self.data_dir / "desktops").resolve())

    def get(self, path: str) -> Any:
        response = httpx.get(self.base + path, headers=HEADERS, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, session_id: str, phases: set[str], timeout_s: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            session: dict[str, Any] = self.get(f"/v1/sessions/{session_id}")
            if session["phase"] in phases:
                return session
            assert self.process.poll() is None, self.log.read_text()[-4000:]
            time.sleep(0.25)
        raise AssertionError(f"session {session_id} not in {phases}: {session}")

    def create(self, user: str, template: str = "desktop") -> dict[str, Any]:
        response = httpx.post(
            self.base + "/v1/sessions",
            json={"user": user, "template": template},
            headers=HEADERS,
            timeout=10,
        )
        assert response.status_code == 202, response.text
        created: dict[str, Any] = response.json()
        return created

    def events(self, session_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get(f"/v1/sessions/{session_id}/events")["items"]
        return items

    def processes(self, session_id: str | None = None) -> list[psutil.Process]:
        """This server's desktop processes (of one session, or of any)."""
        found = []
        for process in psutil.process_iter(["environ"]):
            environ = process.info.get("environ") or {}
            if environ.get(RUNTIME_MARKER) != self.desktops:
                continue
            if session_id is None or environ.get(SESSION_MARKER) == session_id:
                found.append(process)
        return found


def _environment(data_dir: Path, database_url: str) -> dict[str, str]:
    """A newcomer's shell: the system directories only; the runtime finds Selkies beside this
    Python, Xvfb in the system directories."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "VDI_CLUSTER": "local",
        "VDI_DATA_DIR": str(data_dir),
        "VDI_DATABASE_URL": database_url,
        "VDI_SECRET_KEY": TEST_SECRET_KEY,
        "VDI_TURN_SECRET": TEST_TURN_SECRET,
        "VDI_BOOTSTRAP_TOKEN": ADMIN,
        "VDI_LOG_JSON": "true",
        "VDI_ORPHAN_SWEEP_INTERVAL_S": "2",
        "VDI_AUTO_MIGRATE": "true",
    }


@contextmanager
def _serving(env: dict[str, str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*SERVE, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()[-4000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


@pytest.fixture(scope="module")
async def local_database(make_database: Callable[[str], Awaitable[str]]) -> str:
    return await make_database("vdi_local_desktops")


@contextmanager
def _server(
    database_url: str, directory: Path, settings: dict[str, str] | None = None
) -> Iterator[Server]:
    """`vdi-control serve` with local desktops; `settings` are more VDI_* variables."""
    tool("Xvfb")
    if not (VENV_BIN / "selkies").exists():
        pytest.fail(f"no Selkies 2.x beside {sys.executable}: pip install -e '.[desktop]'")
    env = {**_environment(directory / "data", database_url), **(settings or {})}
    port = free_port()
    log = directory / "serve.log"
    with _serving(env, port, log) as process:
        base = f"http://127.0.0.1:{port}"
        ready = httpx.get(f"{base}/readyz", timeout=10).json()
        assert ready["checks"]["cluster"].startswith("local")  # and it says so
        served = Server(base, directory / "data", log, process, database_url)
        put = httpx.put(
            f"{served.base}/v1/templates/desktop",
            json={"image": "local", "gpu": 1, "idle_timeout_s": 600},
            headers=HEADERS,
        )
        assert put.status_code in (200, 201), put.text
        yield served
        if served.process is not process and served.process.poll() is None:
            served.process.send_signal(signal.SIGTERM)  # the restart test's second run
            served.process.wait(timeout=60)
    # however the tests ended, the servers took every desktop process with them
    assert served.processes() == []


@pytest.fixture(scope="module")
def server(local_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with _server(local_database, tmp_path_factory.mktemp("local-desktops")) as served:
        yield served


@contextmanager
def desktop(server: Server, user: str) -> Iterator[dict[str, Any]]:
    """A Running local desktop for `user`, ended (and its processes gone) afterwards."""
    session = server.create(user)
    try:
        running = server.wait(session["id"], {"Running", "Failed"})
        assert running["phase"] == "Running", running
        yield running
    finally:
        httpx.delete(f"{server.base}/v1/sessions/{session['id']}", headers=HEADERS, timeout=10)
        server.wait(session["id"], {"Terminated"}, timeout_s=60)
        assert server.processes(session["id"]) == []


def _decoded_in_chromium(connection: dict[str, Any], screenshot: Path | None) -> dict[str, Any]:
    with chromium(connection["username"], connection["password"], relay_only=False) as driver:
        driver.get(connection["url"])
        deadline = time.monotonic() + 60
        stats: dict[str, Any] = {}
        while time.monotonic() < deadline:
            stats = driver.execute_async_script(READ_STATS)
            if (stats.get("frames_decoded") or 0) >= 30:
                break
            time.sleep(0.5)
        if screenshot is not None:
            screenshot.parent.mkdir(exist_ok=True)
            driver.save_screenshot(str(screenshot))
        return stats


def test_a_session_is_a_real_desktop_that_chromium_decodes(server: Server) -> None:
    with desktop(server, "alice") as running:
        session_id = running["id"]
        assert running["url"].startswith("http://127.0.0.1:")
        assert running["streamer"].startswith("selkies 2.")
        # no TURN host is configured: loopback needs none, and the session says so
        assert "without TURN" in running["message"]
        conditions = {c["type"]: c for c in running["conditions"]}
        if subprocess.run(["sh", "-c", "command -v nvidia-smi"], check=False).returncode != 0:
            # a GPU template on a host without one: a CPU session, said as a fallback
            assert conditions["GPUAvailable"]["reason"] == "NoGpuOnHost"
            assert conditions["EncoderReady"]["reason"] == "SoftwareFallback"
            assert running["encoder"] == "h264enc/x264"
        connection = server.get(f"/v1/sessions/{session_id}/connection")
        assert connection["url"] == running["url"]
        assert connection["ice_servers"] == []
        assert httpx.get(connection["url"], timeout=10).status_code == 401  # basic auth, always

        SCREENSHOT.unlink(missing_ok=True)
        stats = _decoded_in_chromium(connection, SCREENSHOT)
        assert stats["frames_decoded"] >= 30, stats
        assert (stats["pair"]["local"], stats["pair"]["remote"]) == ("host", "host")
        assert SCREENSHOT.stat().st_size > 5000
        names = {p.name() for p in server.processes(session_id)}
        assert {"Xvfb", "selkies"} <= names, names
        # the display takes only the session's own cookie (finding 27.2)
        [xvfb] = [p for p in server.processes(session_id) if p.name() == "Xvfb"]
        assert "-auth" in xvfb.cmdline()
        displays = {p.info["environ"].get("DISPLAY") for p in server.processes(session_id)}
        [display] = displays - {None}
        assert not x_handshake(display, None)


def test_two_users_at_once_each_on_their_own_desktop(server: Server) -> None:
    with desktop(server, "bob") as bob, desktop(server, "bea") as bea:
        assert server.get(f"/v1/sessions/{bob['id']}")["phase"] == "Running"
        assert bob["url"] != bea["url"]
        bob_connection = server.get(f"/v1/sessions/{bob['id']}/connection")
        bea_connection = server.get(f"/v1/sessions/{bea['id']}/connection")
        # one user's password opens only that user's desktop
        refused = httpx.get(bea["url"], auth=("user", bob_connection["password"]), timeout=10)
        assert refused.status_code == 401
        stats = _decoded_in_chromium(bea_connection, None)
        assert stats["frames_decoded"] >= 30, stats
        # each user's desktop runs as an account of their own (not root, not the other's), in
        # a sandbox where the home is /home/user; on this host it is the user's own directory
        accounts = {}
        for user, session in (("bob", bob), ("bea", bea)):
            processes = server.processes(session["id"])
            uids = {p.uids().real for p in processes if p.name() not in ("bwrap",)}
            assert len(uids) == 1, (user, uids)
            [accounts[user]] = uids
            assert {p.info["environ"]["HOME"] for p in processes} == {"/home/user"}
            home = server.data_dir.resolve() / "desktops" / "homes" / user
            assert home.stat().st_uid == accounts[user]
            assert oct(home.stat().st_mode & 0o777) == "0o700"
        assert accounts["bob"] != accounts["bea"]
        assert 0 not in accounts.values()
        assert os.getuid() not in accounts.values()
        for session in (bob, bea):  # real desktops, cold: instants and events in order
            current = server.get(f"/v1/sessions/{session['id']}")
            events = server.get(f"/v1/sessions/{session['id']}/events")["items"]
            assert disorder(current, events) == []


def test_a_killed_selkies_is_restarted_and_the_restart_reported(server: Server) -> None:
    with desktop(server, "dave") as running:
        session_id = running["id"]
        (selkies,) = [p for p in server.processes(session_id) if p.name() == "selkies"]
        selkies.kill()
        deadline = time.monotonic() + 60
        while not any(e["reason"] == "StreamerRestarted" for e in server.events(session_id)):
            assert time.monotonic() < deadline, "no StreamerRestarted event"
            time.sleep(0.5)
        while not [p for p in server.processes(session_id) if p.name() == "selkies"]:
            assert time.monotonic() < deadline, "Selkies not back"
            time.sleep(0.5)
        assert server.get(f"/v1/sessions/{session_id}")["phase"] == "Running"


def test_a_crashed_display_fails_the_session_as_a_crashed_container(server: Server) -> None:
    with desktop(server, "frank") as running:
        session_id = running["id"]
        (xvfb,) = [p for p in server.processes(session_id) if p.name() == "Xvfb"]
        xvfb.kill()
        failed = server.wait(session_id, {"Failed"}, timeout_s=60)
        assert failed["reason"] == "CrashLoopBackOff"
        assert "Xvfb" in failed["message"]
        assert "SIGKILL" in failed["message"]
        # the rest of the session's processes went with it
        assert server.processes(session_id) == []


def test_delete_leaves_no_process_and_keeps_the_users_home(server: Server) -> None:
    home = server.data_dir / "desktops" / "homes" / "gina"
    with desktop(server, "gina") as running:
        (home / "notes.txt").write_text("kept")
        deleted = httpx.delete(
            f"{server.base}/v1/sessions/{running['id']}", headers=HEADERS, timeout=10
        )
        assert deleted.status_code == 202
        ended = server.wait(running["id"], {"Terminated"}, timeout_s=60)
        assert ended["phase"] == "Terminated"
        assert server.processes(running["id"]) == []
        assert not (server.data_dir / "desktops" / "sessions" / running["id"]).exists()
    # kept: in the home's own filesystem image (home_size), unmounted with the session
    assert not os.path.ismount(home)
    image = home.with_name("gina.img")
    with tempfile.TemporaryDirectory() as look:
        subprocess.run(["mount", "-o", "loop,ro", str(image), look], check=True)
        try:
            assert (Path(look) / "notes.txt").read_text() == "kept"
        finally:
            subprocess.run(["umount", look], check=True)


def test_the_sweep_stops_processes_of_no_session(server: Server) -> None:
    """A process marked as this runtime's with a session it does not run (as a previous run's
    would be) is stopped by the sweep (every 2 s here)."""
    env = {
        "PATH": "/usr/bin:/bin",
        RUNTIME_MARKER: server.desktops,
        SESSION_MARKER: "00000000-0000-0000-0000-000000000000",
    }
    stray = subprocess.Popen(["sleep", "300"], env=env)
    try:
        assert stray.wait(timeout=30) == -signal.SIGTERM
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()


def test_a_warm_pool_of_local_desktops_hands_one_out_at_once(server: Server) -> None:
    """A member is a checked local desktop for no one; a create claims it and answers Running
    with the member's own address, which opens with the credentials the user is given."""
    template = {"image": "local", "gpu": 0, "warm_pool": 1, "persistent_home": False}
    put = httpx.put(f"{server.base}/v1/templates/pool", json=template, headers=HEADERS)
    assert put.status_code == 201, put.text
    deadline = time.monotonic() + 90
    while server.get("/v1/templates/pool")["warm_available"] < 1:
        assert time.monotonic() < deadline, "no warm member"
        time.sleep(0.5)
    claimed = server.create("erin", "pool")
    assert (claimed["phase"], claimed["warm"]) == ("Running", True)
    assert claimed["url"].startswith("http://127.0.0.1:")
    assert f"its desktop is {claimed['url']}" in claimed["message"]
    connection = server.get(f"/v1/sessions/{claimed['id']}/connection")
    page = httpx.get(
        connection["url"], auth=(connection["username"], connection["password"]), timeout=10
    )
    assert page.status_code == 200
    # its home goes with it (no persistent home in a pool)
    (erin,) = {p.info["environ"]["HOME"] for p in server.processes(claimed["id"])}
    assert "/homes/" not in erin
    template["warm_pool"] = 0
    assert httpx.put(f"{server.base}/v1/templates/pool", json=template, headers=HEADERS).is_success
    deleted = httpx.delete(f"{server.base}/v1/sessions/{claimed['id']}", headers=HEADERS)
    assert deleted.status_code == 202
    ended = server.wait(claimed["id"], {"Terminated"}, timeout_s=60)
    assert ended["phase"] == "Terminated"
    assert server.processes(claimed["id"]) == []
    # from a warm pool: instants in order (the claim is its start), its log too
    assert disorder(ended, server.get(f"/v1/sessions/{claimed['id']}/events")["items"]) == []


async def test_a_restarted_server_ends_the_sessions_of_its_previous_run(
    make_database: Callable[[str], Awaitable[str]], tmp_path: Path
) -> None:
    """Killed outright (SIGKILL: no shutdown at all), the server takes its desktops with it
    (they die with their parent); the next run ends their sessions cleanly, at once, so the
    user can start again. A server of its own: killing the shared one would end the others'."""
    database_url = await make_database("vdi_local_restart")
    await asyncio.to_thread(_restart_a_killed_server, database_url, tmp_path)


def _restart_a_killed_server(database_url: str, directory: Path) -> None:
    with _server(database_url, directory) as server:
        carol = server.create("carol")["id"]
        assert server.wait(carol, {"Running", "Failed"})["phase"] == "Running"
        assert server.processes(carol)
        server.process.kill()
        server.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while server.processes():
            assert time.monotonic() < deadline, [p.cmdline() for p in server.processes()]
            time.sleep(0.25)
        port = int(server.base.rsplit(":", 1)[1])
        env = _environment(server.data_dir, server.database_url)
        with _serving(env, port, server.log) as again:
            server.process = again
            ended = server.wait(carol, {"Terminated"}, timeout_s=60)
            reasons = [e["reason"] for e in server.events(carol)]
            assert "ControlPlaneRestarted" in reasons
            assert ended["phase"] == "Terminated"
            # and carol gets a desktop again right away
            carol_again = server.create("carol")["id"]
            again_running = server.wait(carol_again, {"Running", "Failed"})
            assert again_running["phase"] == "Running", again_running
