"""Service processes on one database and one (fake) cluster; a replica is killed with SIGKILL
while provisioning, and a fresh one while terminating. Nothing is stuck in Provisioning or
Terminating, nothing is duplicated, nothing is left without a session, no home is deleted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from app import migrate
from kubefake import start_fake_cluster, write_kubeconfig
from tests.conftest import TEST_BOOTSTRAP_TOKEN, TEST_SECRET_KEY, TEST_TURN_SECRET, bearer
from tests.test_cli import environment, free_port, wait_ready

pytestmark = pytest.mark.e2e

SESSIONS = 200
REPLICAS = 3
VDI = [sys.executable, "-c", "from app.cli import main; main()"]


async def test_sigkill_of_a_replica_mid_provisioning_and_mid_termination_loses_nothing(
    make_database: Callable[[str], Awaitable[str]], tmp_path: Path
) -> None:
    url = await make_database("vdi_recovery_test")
    await asyncio.to_thread(migrate.upgrade, url)
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    db = await asyncpg.connect(dsn)
    try:
        await _scenario(db, url, tmp_path)
    finally:
        await db.close()


async def _scenario(db: asyncpg.Connection, url: str, tmp_path: Path) -> None:
    processes: list[subprocess.Popen[bytes]] = []
    async with start_fake_cluster(gpu_capacity=10_000) as (fake, server):
        env = environment(
            VDI_DATABASE_URL=url,
            VDI_SECRET_KEY=TEST_SECRET_KEY,
            VDI_TURN_SECRET=TEST_TURN_SECRET,
            VDI_BOOTSTRAP_TOKEN=TEST_BOOTSTRAP_TOKEN,
            VDI_CLUSTER="kubernetes",
            VDI_NAMESPACE="vdi",
            VDI_RECONCILE_LEASE_S="5",
            VDI_RECONCILE_INTERVAL_S="0.2",
            VDI_LOG_LEVEL="WARNING",
            KUBECONFIG=str(write_kubeconfig(tmp_path / "kubeconfig", server, "vdi")),
        )
        ports = [free_port() for _ in range(REPLICAS)]
        try:
            for n, port in enumerate(ports):
                log = (tmp_path / f"replica-{n}.log").open("wb")
                processes.append(
                    subprocess.Popen(  # noqa: ASYNC220 - returns at once
                        [*VDI, "serve", "--port", str(port)], env=env, stdout=log, stderr=log
                    )
                )
                log.close()
            for port, process in zip(ports, processes, strict=True):
                await asyncio.to_thread(wait_ready, port, process)  # type: ignore[arg-type]
            bases = [f"http://127.0.0.1:{port}" for port in ports]
            async with httpx.AsyncClient(timeout=30, headers=bearer(TEST_BOOTSTRAP_TOKEN)) as http:
                template = {"image": "registry.test/vdi:1", "gpu": 1}
                assert (
                    await http.put(f"{bases[1]}/v1/templates/desk", json=template)
                ).status_code == 201
                semaphore = asyncio.Semaphore(16)

                async def create(i: int) -> str:
                    # Replica 0 only reconciles: a request in flight when it dies fails at
                    # the client, which is not what this test is about.
                    # As a portal would: a dropped connection is retried with the same
                    # Idempotency-Key, so a retry can never make a second session.
                    for attempt in range(5):
                        try:
                            async with semaphore:
                                response = await http.post(
                                    f"{bases[1 + (i + attempt) % (REPLICAS - 1)]}/v1/sessions",
                                    json={"user": f"user-{i}", "template": "desk"},
                                    headers={"Idempotency-Key": f"create-user-{i}"},
                                )
                            break
                        except httpx.TransportError:
                            await asyncio.sleep(0.2)
                    assert response.status_code == 202, response.text
                    return str(response.json()["id"])

                created = asyncio.gather(*(create(i) for i in range(SESSIONS)))
                # kill replica 0 while provisioning is under way
                deadline = time.monotonic() + 60
                while (
                    await db.fetchval("SELECT count(*) FROM sessions WHERE phase = 'Starting'") < 20
                ):
                    assert time.monotonic() < deadline, "provisioning never started"
                    await asyncio.sleep(0.02)
                os.kill(processes[0].pid, signal.SIGKILL)
                await asyncio.to_thread(processes[0].wait, 10)
                at_kill = await db.fetchval(
                    "SELECT count(*) FROM sessions WHERE phase = 'Starting'"
                )
                ids = set(await created)

            deadline = time.monotonic() + 120
            while (
                await db.fetchval("SELECT count(*) FROM sessions WHERE phase = 'Starting'")
                < SESSIONS
            ):
                if time.monotonic() > deadline:
                    rows = await db.fetch(
                        "SELECT phase, reason, message, count(*) FROM sessions GROUP BY 1, 2, 3"
                    )
                    logs = "\n".join(
                        (tmp_path / f"replica-{n}.log").read_text()[-3000:] for n in (1, 2)
                    )
                    stuck = await db.fetch(
                        "SELECT next_reconcile_at, now() AS now, claim_token FROM sessions "
                        "WHERE phase <> 'Starting' LIMIT 3"
                    )
                    activity = await db.fetch(
                        "SELECT pid, state, wait_event_type, left(query, 80) AS q "
                        "FROM pg_stat_activity WHERE datname = current_database()"
                    )
                    raise AssertionError(
                        f"some sessions never reached Starting: {rows}\n{stuck}\n{activity}\n{logs}"
                    )
                await asyncio.sleep(0.1)
            assert at_kill < SESSIONS, "the kill came after the work was done: it proved nothing"
            phases = await db.fetch("SELECT phase, count(*) AS n FROM sessions GROUP BY phase")
            assert {row["phase"]: row["n"] for row in phases} == {"Starting": SESSIONS}
            starting = await db.fetch(
                "SELECT session_id, count(*) AS n FROM session_events "
                "WHERE type = 'PhaseChanged' AND phase = 'Starting' GROUP BY session_id"
            )
            assert len(starting) == SESSIONS
            assert {row["n"] for row in starting} == {1}, "a session reached Starting twice"
            names = {f"vdi-{i}" for i in ids}
            for plural in ("pods", "secrets", "services", "ingressroutes"):
                found = [o["metadata"]["name"] for o in fake.live(plural)]
                assert len(found) == len(set(found)) == SESSIONS, plural
                assert set(found) == names, f"{plural} without a session"
            claims = [o["metadata"]["name"] for o in fake.live("persistentvolumeclaims")]
            assert sorted(claims) == sorted(f"home-user-{i}" for i in range(SESSIONS))

            # Mid-termination: a fresh replica joins, every session is deleted, and the new
            # replica is killed while deleting. Nothing may stay in Terminating.
            port = free_port()
            log = (tmp_path / "replica-3.log").open("wb")
            processes.append(
                subprocess.Popen(  # noqa: ASYNC220 - returns at once
                    [*VDI, "serve", "--port", str(port)], env=env, stdout=log, stderr=log
                )
            )
            log.close()
            await asyncio.to_thread(wait_ready, port, processes[-1])  # type: ignore[arg-type]
            async with httpx.AsyncClient(timeout=30, headers=bearer(TEST_BOOTSTRAP_TOKEN)) as http:
                semaphore = asyncio.Semaphore(16)

                async def delete(n: int, session_id: str) -> None:
                    async with semaphore:
                        response = await http.delete(f"{bases[1 + n % 2]}/v1/sessions/{session_id}")
                    assert response.status_code == 202, response.text

                deleted = asyncio.gather(*(delete(n, i) for n, i in enumerate(sorted(ids))))
                deadline = time.monotonic() + 60
                while (
                    await db.fetchval("SELECT count(*) FROM sessions WHERE phase = 'Terminated'")
                    < 20
                ):
                    assert time.monotonic() < deadline, "termination never started"
                    await asyncio.sleep(0.02)
                os.kill(processes[-1].pid, signal.SIGKILL)
                await asyncio.to_thread(processes[-1].wait, 10)
                at_kill_terminating = await db.fetchval(
                    "SELECT count(*) FROM sessions WHERE phase = 'Terminated'"
                )
                await deleted
            deadline = time.monotonic() + 120
            while (
                await db.fetchval("SELECT count(*) FROM sessions WHERE phase = 'Terminated'")
                < SESSIONS
            ):
                if time.monotonic() > deadline:
                    rows = await db.fetch("SELECT phase, count(*) FROM sessions GROUP BY 1")
                    raise AssertionError(f"sessions stuck on the way to Terminated: {rows}")
                await asyncio.sleep(0.1)
        finally:
            # The fake API lives in this event loop: wait without blocking it.
            for process in processes:
                if process.poll() is None:
                    os.kill(process.pid, signal.SIGTERM)
            for process in processes:
                await asyncio.to_thread(process.wait, 30)
        assert at_kill_terminating < SESSIONS, "the termination kill came too late"
        phases = await db.fetch("SELECT phase, count(*) AS n FROM sessions GROUP BY phase")
        assert {row["phase"]: row["n"] for row in phases} == {"Terminated": SESSIONS}
        left = [
            o["metadata"]["name"]
            for o in fake.live()
            if o["kind"] not in ("PersistentVolumeClaim", "Event", "Node")
        ]
        assert left == [], "objects outlived their sessions"
        claims = [o["metadata"]["name"] for o in fake.live("persistentvolumeclaims")]
        assert len(claims) == SESSIONS, "a user's home was deleted with the session"
