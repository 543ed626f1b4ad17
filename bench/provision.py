"""Provisioning throughput: sessions taken from Pending to Starting per second, through the
reconciler, the real kubernetes client and the fake API (bench of the Kubernetes issue).

For each per-call latency of the fake API (0 ms and 20 ms by default) it creates N sessions at
once and times until all are Starting. Two floors, each printed beside the rate as a ratio:
- latency floor: (dependent round trips a session needs x latency) / concurrency, the rate if
  nothing but the API's latency counted (no CPU anywhere);
- calls floor, measured in the same run: the same objects of N sessions created by the same
  client, two dependent rounds per session, as many sessions at once, against a fresh fake with
  the same latency, and nothing else (no database, no reconciler): what the cluster calls alone
  cost on this machine, the fake's CPU and the client's included.
Usage: python -m bench.provision [--sessions N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from app.cluster import manifests
from app.cluster.kube import CALL_THREADS, KubeCluster
from app.config import Settings
from app.controllers import Reconciler
from app.controllers.provision import create_session_objects
from app.main import create_app
from app.observability import configure_logging
from app.templates.schemas import TemplateSpec
from harness.database import bench_database
from harness.servers import processes, start_fake_api

# Dependent round trips per session: PVC and Pod together, then Secret, Service and
# IngressRoute together (they need the Pod's uid for their owner reference).
ROUND_TRIPS_PER_SESSION = 2
ADMIN = "vdi_bench-admin-" + "a" * 32


def fake_options(latency_ms: float, validate: bool) -> list[str]:
    options = ["--latency-ms", str(latency_ms), "--gpus", "100000"]
    return options if validate else [*options, "--no-validate"]


async def calls_only(sessions: int, latency_ms: float, concurrency: int) -> float:
    """The calls floor: provisioning's cluster calls and nothing else, as the reconciler makes
    them (same manifests, client and rounds), `concurrency` sessions at a time."""
    settings = Settings(
        secret_key="bench-secret-key-" + "k" * 32,
        turn_secret="bench-turn-secret-" + "t" * 32,
        namespace="vdi",
    )
    spec = TemplateSpec(image="registry.example/vdi:1")
    credentials = manifests.SessionCredentials("p" * 32, "token", "1:x", "y", "m" * 64)
    with processes() as started:
        _fake, server = await start_fake_api(started, *fake_options(latency_ms, validate=False))
        cluster = KubeCluster.for_host(server, "vdi", settings.ingress_api_version)
        pending = [
            manifests.SessionView(id=uuid.uuid4(), user=f"floor-{i}", template="desk", spec=spec)
            for i in range(sessions)
        ]

        async def worker() -> None:
            while pending:
                await create_session_objects(cluster, pending.pop(), credentials, settings)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
        cluster.close()
    return sessions / elapsed


async def one_run(
    url: str, sessions: int, latency_ms: float, run: int, validate: bool = False
) -> float:
    settings = Settings(
        database_url=url,
        secret_key="bench-secret-key-" + "k" * 32,
        turn_secret="bench-turn-secret-" + "t" * 32,
        bootstrap_token=ADMIN,
        namespace="vdi",
        reconcile_interval_s=0.2,
        log_level="WARNING",
    )
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    db = await asyncpg.connect(dsn)
    await db.execute(
        "TRUNCATE session_events, idempotency_keys, sessions, templates, api_tokens CASCADE"
    )
    # The fake runs in its own process, so its CPU is not the reconciler's.
    with processes() as started:
        _fake, server = await start_fake_api(started, *fake_options(latency_ms, validate))
        cluster = KubeCluster.for_host(server, "vdi", settings.ingress_api_version)
        # The API stores the sessions first (reconciler off), so only provisioning is timed.
        app = create_app(settings.model_copy(update={"reconciler": False}), url)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            headers = {"Authorization": f"Bearer {ADMIN}"}
            async with httpx.AsyncClient(
                transport=transport, base_url="http://bench", headers=headers
            ) as http:
                await http.put("/v1/templates/desk", json={"image": "registry.example/vdi:1"})
                for i in range(sessions):
                    body = {"user": f"r{run}-u{i}", "template": "desk"}
                    assert (await http.post("/v1/sessions", json=body)).status_code == 202
            reconciler = Reconciler(settings, app.state.sessionmaker, cluster)
            began = time.perf_counter()
            reconciler.start()
            query = "SELECT count(*) FROM sessions WHERE phase = 'Starting'"
            while await db.fetchval(query) < sessions:  # noqa: ASYNC110 - polling another process's writes
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - began
            await reconciler.stop()
        cluster.close()
    await db.close()
    return sessions / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latencies-ms", type=float, nargs="+", default=[0.0, 20.0])
    args = parser.parse_args()
    configure_logging("WARNING", json=False)
    with bench_database() as url:
        concurrency = min(Settings().reconcile_concurrency, CALL_THREADS)
        print(
            f"\n{args.sessions} stored sessions taken to Starting by one reconciler "
            f"({concurrency} at once, {CALL_THREADS} call threads); fake API without schema "
            f"admission; median of {args.rounds} rounds"
        )
        print(
            f"{'API latency':>12} {'sessions/s':>11} {'latency floor/s':>16} {'vs it':>7} "
            f"{'calls floor/s':>14} {'vs it':>7}"
        )
        for latency in args.latencies_ms:
            rates, floors = [], []
            for r in range(args.rounds):
                rates.append(asyncio.run(one_run(url, args.sessions, latency, r)))
                floors.append(asyncio.run(calls_only(args.sessions, latency, concurrency)))
            rate, calls_floor = statistics.median(rates), statistics.median(floors)
            per_session_s = ROUND_TRIPS_PER_SESSION * latency / 1000 / concurrency
            floor = f"{1 / per_session_s:16.0f}" if per_session_s else f"{'inf':>16}"
            ratio = f"{rate * per_session_s:6.2f}x" if per_session_s else f"{'-':>7}"
            print(
                f"{latency:10.0f}ms {rate:11.1f} {floor} {ratio} {calls_floor:14.1f} "
                f"{rate / calls_floor:6.2f}x"
            )


if __name__ == "__main__":
    main()
