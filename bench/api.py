"""API throughput and latency, against a floor measured in the same run.

Starts a real Postgres (embedded), stores 10,000 sessions, starts `vdi-control serve` and a bare
FastAPI app doing one Postgres round trip (bench/floor_app.py), each a uvicorn process with one
worker, then drives both with the same async HTTP client on loopback and prints requests per
second and p50/p99 latency for session create, get, list and health reports, each beside the
floor as a ratio. Medians over rounds. Usage: python -m bench.api [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from app.security import SecretBox, SessionSecrets, agent_token
from app.sessions.heartbeat import report_digest
from app.sessions.schemas import HealthReport
from app.templates.schemas import TemplateSpec
from harness.database import bench_database
from harness.servers import free_port, start, wait_ready

SECRET_KEY = "bench-secret-key-" + "k" * 32
TURN_SECRET = "bench-turn-secret-" + "t" * 32
ADMIN_TOKEN = "vdi_bench-admin-" + "a" * 32
SEEDED = 10_000
REPORT: dict[str, Any] = {
    "checks": [{"name": "gpu", "ok": True}, {"name": "encoder", "ok": True}],
    "encoder": "nvh264enc",
}


@dataclass
class Figures:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


async def seed(url: str) -> list[str]:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    spec = TemplateSpec(image="registry.example/vdi:1", max_lifetime_s=86400)
    sealed = SecretBox(SECRET_KEY).seal(SessionSecrets("p" * 32, "1:x", "y"))
    try:
        await connection.execute(
            """INSERT INTO templates (name, image, gpu, shm_size, home_size, bitrate_kbps,
                 framerate, gop_size, encoder_fallback, start_timeout_s, idle_timeout_s,
                 max_lifetime_s,
                 node_selector, tolerations, created_at, updated_at)
               VALUES ('bench', $1, 1, '2Gi', '10Gi', 8000, 60, 30, true, 300, 3600, 86400,
                 '{}', '[]', now(), now())""",
            spec.image,
        )
        rows = await connection.fetch(
            """INSERT INTO sessions (id, "user", template_name, template_spec, phase, reason,
                 message, conditions, url, gpu, secrets_encrypted, created_at, updated_at,
                 running_at,
                 idle_deadline, expires_at, attempts, force_delete)
               SELECT gen_random_uuid(), 'seed-' || i, 'bench', $1::jsonb, 'Running',
                 'AgentReady', '', '[]'::jsonb, 'https://seed-' || i || '.vdi.example.com/', 1, $2,
                 now() - i * interval '1 second', now(), now(),
                 now() + interval '1 hour', now() + interval '1 day', 0, false
               FROM generate_series(1, $3) AS i
               RETURNING id""",
            spec.model_dump_json(),
            sealed,
            SEEDED,
        )
        # They have reported before (as Running sessions' agents have): a report that says the
        # same again is a heartbeat, which is what the "health report" row measures.
        await connection.execute(
            "UPDATE sessions SET report_digest = $1", report_digest(HealthReport(**REPORT))
        )
        await connection.execute("ANALYZE")
        return [str(row["id"]) for row in rows]
    finally:
        await connection.close()


async def drive(
    client: httpx.AsyncClient,
    requests: int,
    concurrency: int,
    call: Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]],
    expect: int,
) -> Figures:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))

    async def worker() -> None:
        nonlocal errors
        for index in counter:
            began = time.perf_counter()
            response = await call(client, index)
            latencies.append(time.perf_counter() - began)
            if response.status_code != expect:
                errors += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return Figures(
        rps=requests / elapsed,
        p50_ms=latencies[len(latencies) // 2] * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        errors=errors,
    )


async def run(
    service: str, floor: str, ids: list[str], requests: int, rounds: int, concurrency: int
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    run_id = uuid.uuid4().hex[:6]
    agent_headers = {
        sid: {"Authorization": f"Bearer {agent_token(SECRET_KEY, uuid.UUID(sid))}"} for sid in ids
    }
    report = REPORT

    def create(round_no: int) -> Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]:
        return lambda c, i: c.post(
            f"{service}/v1/sessions",
            json={"user": f"u{run_id}-{round_no}-{i}", "template": "bench"},
            headers=admin,
        )

    operations: dict[
        str,
        Callable[[int], tuple[Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]], int]],
    ] = {
        "floor (1 DB round trip)": lambda r: ((lambda c, i: c.get(f"{floor}/floor")), 200),
        "session create": lambda r: (create(r), 202),
        "session get": lambda r: (
            (lambda c, i: c.get(f"{service}/v1/sessions/{random.choice(ids)}", headers=admin)),
            200,
        ),
        "session list (limit 50)": lambda r: (
            (lambda c, i: c.get(f"{service}/v1/sessions?limit=50", headers=admin)),
            200,
        ),
        "health report (heartbeat)": lambda r: (
            (
                lambda c, i: (
                    lambda sid: c.post(
                        f"{service}/v1/sessions/{sid}/health",
                        json=report,
                        headers=agent_headers[sid],
                    )
                )(random.choice(ids))
            ),
            200,
        ),
    }
    results: dict[str, list[Figures]] = {name: [] for name in operations}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        for make in operations.values():  # warm-up
            call, expect = make(-1)
            await drive(client, min(200, requests), concurrency, call, expect)
        for round_no in range(rounds):
            for name, make in operations.items():
                call, expect = make(round_no)
                results[name].append(await drive(client, requests, concurrency, call, expect))

    def median(name: str, field: str) -> float:
        return float(statistics.median(getattr(f, field) for f in results[name]))

    floor_name = "floor (1 DB round trip)"
    floor_rps, floor_p50 = median(floor_name, "rps"), median(floor_name, "p50_ms")
    print(
        f"\n{SEEDED} sessions stored; {requests} requests x {rounds} rounds per operation, "
        f"{concurrency} concurrent, loopback, one uvicorn worker each; medians over rounds"
    )
    header = ("operation", "req/s", "p50 ms", "p99 ms", "errors", "req/s vs floor", "p50 vs floor")
    print("{:26} {:>8} {:>8} {:>8} {:>7} {:>15} {:>13}".format(*header))
    for name in operations:
        rps, p50, p99 = median(name, "rps"), median(name, "p50_ms"), median(name, "p99_ms")
        errors = sum(f.errors for f in results[name])
        ratios = f"{rps / floor_rps:14.2f}x {p50 / floor_p50:12.2f}x"
        print(f"{name:26} {rps:8.0f} {p50:8.2f} {p99:8.2f} {errors:7d} {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    processes: list[subprocess.Popen[bytes]] = []
    with bench_database() as url:
        try:
            ids = asyncio.run(seed(url))
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("VDI_")},
                "VDI_DATABASE_URL": url,
                "VDI_SECRET_KEY": SECRET_KEY,
                "VDI_TURN_SECRET": TURN_SECRET,
                "VDI_BOOTSTRAP_TOKEN": ADMIN_TOKEN,
                "VDI_MAX_SESSIONS_PER_USER": "1",
                "VDI_LOG_LEVEL": "WARNING",
                # The API alone: no reconciler provisioning the created sessions (or expiring the
                # seeded ones) in the same process, which is what this bench measured before the
                # reconciler existed and what bench.provision measures on its own.
                "VDI_RECONCILER": "false",
            }
            service_port, floor_port = free_port(), free_port()
            processes.append(
                start(
                    [
                        sys.executable,
                        "-c",
                        "from app.cli import main; main()",
                        "serve",
                        "--port",
                        str(service_port),
                    ],
                    env,
                )
            )
            processes.append(
                start(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "bench.floor_app:app",
                        "--port",
                        str(floor_port),
                        "--log-level",
                        "warning",
                        "--no-access-log",
                    ],
                    env,
                )
            )
            service, floor = f"http://127.0.0.1:{service_port}", f"http://127.0.0.1:{floor_port}"
            wait_ready(f"{service}/readyz", processes[0])
            wait_ready(f"{floor}/floor", processes[1])
            asyncio.run(run(service, floor, ids, args.requests, args.rounds, args.concurrency))
        finally:
            for process in processes:
                if process.poll() is None:
                    os.kill(process.pid, signal.SIGTERM)
                    process.wait(timeout=30)


if __name__ == "__main__":
    main()
