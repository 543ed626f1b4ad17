"""The command line, run as operators run it: real processes, stopped by their PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from app import migrate
from harness.servers import free_port
from tests.conftest import TEST_SECRET_KEY, TEST_TURN_SECRET

VDI = [sys.executable, "-c", "from app.cli import main; main()"]


def environment(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VDI_")}
    env.update(values)
    return env


@contextmanager
def serving(env: dict[str, str], port: int) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [*VDI, "serve", "--port", str(port)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def wait_ready(port: int, process: subprocess.Popen[str], timeout_s: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"serve exited {process.returncode}: "
                + (process.stdout.read() if process.stdout else "")
            )
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("serve did not become ready")


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # exited; only its parent has not reaped it
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
async def empty_db(make_database: Callable[[str], Awaitable[str]]) -> str:
    return await make_database("vdi_cli_test")


def test_missing_secrets_with_a_real_database_stop_start_up(empty_db: str) -> None:
    result = subprocess.run(
        [*VDI, "serve"],
        env=environment(VDI_DATABASE_URL=empty_db),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "VDI_SECRET_KEY, VDI_TURN_SECRET must be set" in result.stderr


@pytest.mark.e2e  # serve in processes of its own, with its embedded Postgres
def test_serve_refuses_an_old_schema_then_migrate_token_and_serve(empty_db: str) -> None:
    env = environment(
        VDI_DATABASE_URL=empty_db, VDI_SECRET_KEY=TEST_SECRET_KEY, VDI_TURN_SECRET=TEST_TURN_SECRET
    )
    refused = subprocess.run([*VDI, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "run `vdi-control migrate` first" in refused.stderr

    migrated = subprocess.run(
        [*VDI, "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr
    assert f"schema at {migrate.head_revision()}" in migrated.stdout

    made = subprocess.run(
        [*VDI, "token", "create", "--name", "ops", "--scope", "sessions:read"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("vdi_")
    assert token not in made.stderr

    port = free_port()
    with serving(env, port) as process:
        wait_ready(port, process)
        ok = httpx.get(
            f"http://127.0.0.1:{port}/v1/sessions", headers={"Authorization": f"Bearer {token}"}
        )
        assert ok.status_code == 200
        denied = httpx.get(
            f"http://127.0.0.1:{port}/v1/tokens", headers={"Authorization": f"Bearer {token}"}
        )
        assert denied.status_code == 403
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_bad_scope_is_refused(empty_db: str) -> None:
    env = environment(
        VDI_DATABASE_URL=empty_db, VDI_SECRET_KEY=TEST_SECRET_KEY, VDI_TURN_SECRET=TEST_TURN_SECRET
    )
    result = subprocess.run(
        [*VDI, "token", "create", "--name", "x", "--scope", "root"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown scope" in result.stderr


@pytest.mark.e2e  # serve in processes of its own, with its embedded Postgres
def test_serve_on_the_embedded_database_starts_and_stops_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    env = environment(
        VDI_DATA_DIR=str(data_dir), VDI_BOOTSTRAP_TOKEN="vdi_" + "x" * 40, VDI_CLUSTER="simulated"
    )
    with serving(env, port) as process:
        wait_ready(port, process)
        ready = wait_ready(port, process)
        assert ready.json()["checks"]["cluster"].startswith("simulated")  # and it says so
        admin = {"Authorization": "Bearer vdi_" + "x" * 40}
        base = f"http://127.0.0.1:{port}"
        created = httpx.put(
            f"{base}/v1/templates/cpu", json={"image": "i", "gpu": 0}, headers=admin
        )
        assert created.status_code == 201
        # the whole lifecycle on a laptop: the stand-in agent reports, the session runs
        session = httpx.post(
            f"{base}/v1/sessions", json={"user": "dev", "template": "cpu"}, headers=admin
        )
        deadline = time.monotonic() + 30
        while (
            phase := httpx.get(f"{base}/v1/sessions/{session.json()['id']}", headers=admin).json()[
                "phase"
            ]
        ) != "Running":
            assert time.monotonic() < deadline, phase
            time.sleep(0.1)
        postgres = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(data_dir) in " ".join(p.info["cmdline"] or [])
        ]
        assert postgres, "no embedded postgres process found"
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        output = process.stdout.read() if process.stdout else ""
    assert "embedded postgres stopped" in output
    assert all(_gone(proc) for proc in postgres), "the embedded postgres is still running"
    assert (data_dir / "secret_key").exists()
    assert (data_dir / "postgres" / "PG_VERSION").exists()


@pytest.mark.e2e  # serve in processes of its own, with its embedded Postgres
def test_a_second_server_on_the_same_data_dir_is_refused_and_the_first_keeps_its_sessions(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    token = "vdi_" + "y" * 40
    env = environment(
        VDI_DATA_DIR=str(data_dir), VDI_BOOTSTRAP_TOKEN=token, VDI_CLUSTER="simulated"
    )
    admin = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{port}"
    with serving(env, port) as first:
        wait_ready(port, first)
        httpx.put(f"{base}/v1/templates/cpu", json={"image": "i", "gpu": 0}, headers=admin)
        session = httpx.post(
            f"{base}/v1/sessions", json={"user": "dev", "template": "cpu"}, headers=admin
        ).json()
        second = subprocess.run(
            [*VDI, "serve", "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert f"in use by vdi-control (pid {first.pid}, serve)" in second.stderr
        assert "one server per data dir" in second.stderr
        migrating = subprocess.run(
            [*VDI, "migrate"], env=env, capture_output=True, text=True, timeout=60
        )
        assert migrating.returncode == 2, migrating.stderr
        # the first server still serves, and its session was not ended as a previous run's
        assert wait_ready(port, first).status_code == 200
        events = httpx.get(f"{base}/v1/sessions/{session['id']}/events", headers=admin).json()
        assert "ControlPlaneRestarted" not in [e["reason"] for e in events["items"]]
        assert httpx.get(f"{base}/v1/sessions/{session['id']}", headers=admin).json()[
            "phase"
        ] not in ("Terminating", "Terminated")


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])


def _postgres_processes(data_dir: Path) -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(data_dir) in " ".join(p.info["cmdline"] or []) and "postgres" in p.name()
    ]


def _until(check: Callable[[], bool], timeout_s: float = 45) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.2)


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return 0


@pytest.mark.e2e  # serve in processes of its own, with its embedded Postgres
def test_a_dead_embedded_postgres_is_restarted_and_healthz_fails_while_it_cannot_be(
    tmp_path: Path,
) -> None:
    """Finding 27.7: SIGKILL the postmaster (the OOM killer) and the API answered 503 for good
    while /healthz said 200, so nothing restarted anything."""
    data_dir = tmp_path / "data"
    port = free_port()
    env = environment(VDI_DATA_DIR=str(data_dir), VDI_CLUSTER="simulated", VDI_RECONCILER="false")
    base = f"http://127.0.0.1:{port}"
    with (tmp_path / "serve.log").open("w") as log_file:
        process = subprocess.Popen(
            [*VDI, "serve", "--port", str(port)], env=env, stdout=log_file, stderr=log_file
        )
        try:
            _until(lambda: _status(f"{base}/readyz") == 200)
            os.kill(_postmaster_pid(data_dir), signal.SIGKILL)
            _until(lambda: _status(f"{base}/readyz") == 503)
            # restarted by the server itself: ready again, the same data
            _until(lambda: _status(f"{base}/readyz") == 200)
            assert _status(f"{base}/healthz") == 200
            # now it cannot start (its configuration is gone): liveness fails
            config = data_dir / "postgres" / "postgresql.conf"
            config.rename(config.with_suffix(".away"))
            os.kill(_postmaster_pid(data_dir), signal.SIGKILL)
            _until(lambda: _status(f"{base}/healthz") == 503)
            said = httpx.get(f"{base}/healthz").json()["detail"]
            assert "could not be restarted" in said
            config.with_suffix(".away").rename(config)
            # the next check (every 5 s) starts it; pg_ctl's start can be slow on a loaded host
            _until(lambda: _status(f"{base}/healthz") == 200, 90)
            _until(lambda: _status(f"{base}/readyz") == 200)
        finally:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    logged = (tmp_path / "serve.log").read_text()
    assert "embedded postgres had stopped: restarted" in logged
    _until(lambda: all(_gone(p) for p in _postgres_processes(data_dir)), 15)


@pytest.mark.e2e  # serve in processes of its own, with its embedded Postgres
def test_after_a_killed_server_the_next_one_stops_the_postgres_it_joined(tmp_path: Path) -> None:
    """Finding 27.21: after a SIGKILL, the next `serve` joined the orphaned embedded Postgres
    and its clean shutdown left that postgres running."""
    data_dir = tmp_path / "data"
    env = environment(VDI_DATA_DIR=str(data_dir), VDI_CLUSTER="simulated", VDI_RECONCILER="false")
    port = free_port()
    with serving(env, port) as first:
        wait_ready(port, first)
        orphan = _postmaster_pid(data_dir)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    assert psutil.pid_exists(orphan)  # left behind, as a crash leaves it
    port = free_port()
    with serving(env, port) as second:
        wait_ready(port, second)
        assert _postmaster_pid(data_dir) == orphan  # joined, not a second server
        os.kill(second.pid, signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    _until(lambda: not psutil.pid_exists(orphan) or _gone(psutil.Process(orphan)), 15)
    _until(lambda: all(_gone(p) for p in _postgres_processes(data_dir)), 15)


@pytest.mark.e2e  # serve in processes of its own, with its embedded Postgres
def test_the_agents_listener_serves_their_callbacks_and_nothing_else(tmp_path: Path) -> None:
    """Issue 27: session pods reached the whole API on 8080 (/metrics, /docs, every route, and
    the header-size attack). The agents' callbacks get a listener of their own, and the chart's
    NetworkPolicy lets session pods reach only it."""
    data_dir = tmp_path / "data"
    port, agent_port = free_port(), free_port()
    token = "vdi_" + "z" * 40
    env = environment(
        VDI_DATA_DIR=str(data_dir),
        VDI_CLUSTER="simulated",
        VDI_RECONCILER="false",
        VDI_BOOTSTRAP_TOKEN=token,
        VDI_AGENT_PORT=str(agent_port),
    )
    agents = f"http://127.0.0.1:{agent_port}"
    session = "0b6f3c55-8f7e-4a7e-9d0e-2a4b8f8c1d11"
    with serving(env, port) as process:
        wait_ready(port, process)
        _until(lambda: _status(f"{agents}/v1/sessions/{session}/turn") != 0, 15)
        # the two callbacks reach the app (401: no agent token here)
        health = httpx.post(f"{agents}/v1/sessions/{session}/health", json={"checks": []})
        assert health.status_code == 401
        assert httpx.get(f"{agents}/v1/sessions/{session}/turn").status_code == 401
        # nothing else does, not even with an admin token
        admin = {"Authorization": f"Bearer {token}"}
        for method, path in [
            ("GET", "/v1/sessions"),
            ("GET", "/v1/tokens"),
            ("GET", "/metrics"),
            ("GET", "/docs"),
            ("GET", "/openapi.json"),
            ("GET", f"/v1/sessions/{session}/health"),
            ("GET", f"/v1/sessions/{session}/connection"),
        ]:
            answer = httpx.request(method, f"{agents}{path}", headers=admin)
            assert answer.status_code == 404, (method, path, answer.status_code)
            assert "only the agents' callbacks" in answer.json()["detail"]
        # the API is where it was
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/v1/sessions", headers=admin).status_code == 200
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        output = process.stdout.read() if process.stdout else ""
    assert "embedded postgres stopped" in output
