"""Soak: simulated portals and agents against two replicas for a bounded time, on loopback.

Two `vdi-control serve` processes share one Postgres (embedded) and one fake Kubernetes API (its
own process, `python -m kubefake`). Each portal loops: create a session for its user
(with an Idempotency-Key, retried on a dropped connection or a 503 as a portal would), wait for
Starting, act as the pod's agent (a ready report, then heartbeats), keep it alive, read it and
its connection, delete it and wait for Terminated. Requests alternate between the replicas.
A probe measures GET /healthz on the same replicas throughout: the floor.

At the end, from the database: every session a portal was acknowledged exists exactly once
(lost = acknowledged but absent, duplicated = two sessions for one Idempotency-Key or one
acknowledgement), and none is left between phases.

    python -m bench.soak [--portals 20] [--seconds 120]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.embedded import EmbeddedPostgres, ensure_database
from app.security import agent_token
from harness.plane import READY_REPORT
from harness.servers import free_port, processes, start_fake_api, wait_ready
from kubefake import write_kubeconfig

VDI = [sys.executable, "-c", "from app.cli import main; main()"]


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    acknowledged: dict[str, str] = field(default_factory=dict)  # idempotency key -> session id
    completed: int = 0  # sessions taken from create to Terminated

    async def call(
        self,
        http: httpx.AsyncClient,
        name: str,
        method: str,
        url: str,
        ok: set[int],
        **kwargs: Any,
    ) -> httpx.Response | None:
        """One request, retried as a portal or agent would on a dropped connection or a 503."""
        for _attempt in range(50):
            started = time.perf_counter()
            try:
                response = await http.request(method, url, **kwargs)
            except httpx.TransportError as error:
                self.statuses[f"{name} {type(error).__name__}"] += 1
                await asyncio.sleep(0.2)
                continue
            self.latencies[name].append((time.perf_counter() - started) * 1000)
            self.statuses[f"{name} {response.status_code}"] += 1
            if response.status_code in ok:
                return response
            if response.status_code == 503:
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            self.errors.append(f"{name}: {response.status_code} {response.text[:200]}")
            return None
        self.errors.append(f"{name}: gave up after retries")
        return None


async def portal(
    index: int,
    bases: list[str],
    admin: dict[str, str],
    secret_key: str,
    tally: Tally,
    stop_at: float,
) -> None:
    user = f"soak-{index}"
    async with httpx.AsyncClient(timeout=30) as http:
        round_ = 0
        while time.monotonic() < stop_at:
            round_ += 1
            base = bases[round_ % len(bases)]
            other = bases[(round_ + 1) % len(bases)]
            key = f"{user}-{round_}-{uuid.uuid4().hex[:8]}"
            created = await tally.call(
                http,
                "create",
                "POST",
                f"{base}/v1/sessions",
                {202},
                json={"user": user, "template": "soak"},
                headers={**admin, "Idempotency-Key": key},
            )
            if created is None:
                await asyncio.sleep(1)
                continue
            session_id = created.json()["id"]
            tally.acknowledged[key] = session_id
            session_url = f"/v1/sessions/{session_id}"
            if not await wait_phase(http, other + session_url, admin, {"Starting"}, tally):
                continue
            agent = {"Authorization": f"Bearer {agent_token(secret_key, uuid.UUID(session_id))}"}
            for beat in range(3):  # the ready report, then heartbeats
                await tally.call(
                    http,
                    "health",
                    "POST",
                    f"{bases[beat % 2]}{session_url}/health",
                    {200},
                    json=READY_REPORT,
                    headers=agent,
                )
                await asyncio.sleep(0.2)
            await tally.call(http, "get", "GET", f"{other}{session_url}", {200}, headers=admin)
            await tally.call(
                http, "keepalive", "POST", f"{base}{session_url}/keepalive", {200}, headers=admin
            )
            await tally.call(
                http, "connection", "GET", f"{other}{session_url}/connection", {200}, headers=admin
            )
            await tally.call(http, "delete", "DELETE", f"{base}{session_url}", {202}, headers=admin)
            if await wait_phase(http, other + session_url, admin, {"Terminated"}, tally):
                tally.completed += 1


async def wait_phase(
    http: httpx.AsyncClient, url: str, admin: dict[str, str], phases: set[str], tally: Tally
) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = await tally.call(http, "poll", "GET", url, {200}, headers=admin)
        if response is not None and response.json()["phase"] in phases:
            return True
        if response is not None and response.json()["phase"] == "Failed":
            tally.errors.append(f"session failed: {response.json()['reason']}")
            return False
        await asyncio.sleep(0.2)
    tally.errors.append(f"{url} never reached {phases}")
    return False


async def floor_probe(bases: list[str], stop_at: float, samples: list[float]) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        n = 0
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                await http.get(f"{bases[n % 2]}/healthz")
                samples.append((time.perf_counter() - started) * 1000)
            n += 1
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def cluster(
    workdir: Path, portals: int
) -> AsyncIterator[tuple[list[str], dict[str, str], str, str]]:
    postgres = await asyncio.to_thread(EmbeddedPostgres, workdir / "pg")
    try:
        await ensure_database(postgres.url(), "vdi")
        with processes() as started:
            _fake, fake_url = await start_fake_api(started, "--gpus", str(portals * 2))
            kubeconfig = write_kubeconfig(workdir / "kubeconfig", fake_url)
            admin_token = "vdi_soak-admin-" + secrets.token_urlsafe(24)
            secret_key = secrets.token_urlsafe(48)
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("VDI_")},
                "VDI_DATABASE_URL": postgres.url("vdi"),
                "VDI_AUTO_MIGRATE": "true",
                "VDI_SECRET_KEY": secret_key,
                "VDI_TURN_SECRET": secrets.token_urlsafe(48),
                "VDI_BOOTSTRAP_TOKEN": admin_token,
                "VDI_CLUSTER": "kubernetes",
                "KUBECONFIG": str(kubeconfig),
                "VDI_RECONCILE_INTERVAL_S": "0.2",
                "VDI_LOG_LEVEL": "WARNING",
            }
            bases = []
            for n in range(2):  # one after the other: the first migrates
                port = free_port()
                log = (workdir / f"replica-{n}.log").open("wb")
                started.append(
                    subprocess.Popen(  # noqa: ASYNC220 - returns at once
                        [*VDI, "serve", "--port", str(port)],
                        env={**env, "VDI_CALLBACK_URL": f"http://127.0.0.1:{port}"},
                        stdout=log,
                        stderr=log,
                    )
                )
                log.close()
                base = f"http://127.0.0.1:{port}"
                await asyncio.to_thread(wait_ready, f"{base}/readyz", started[-1])
                bases.append(base)
            yield bases, {"Authorization": f"Bearer {admin_token}"}, secret_key, postgres.url("vdi")
    finally:
        await asyncio.to_thread(postgres.stop)


async def audit(database_url: str, tally: Tally) -> dict[str, int]:
    """Lost, duplicated and stuck sessions, from the database itself."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT id, phase FROM sessions")
        keys = await connection.fetch("SELECT key, session_id FROM idempotency_keys")
    finally:
        await connection.close()
    stored = {str(row["id"]): row["phase"] for row in rows}
    by_key = Counter(row["key"] for row in keys)
    acknowledged = set(tally.acknowledged.values())
    return {
        "acknowledged": len(tally.acknowledged),
        "stored": len(stored),
        "lost": sum(1 for session_id in acknowledged if session_id not in stored),
        "duplicated": sum(n - 1 for n in by_key.values() if n > 1)
        + (len(tally.acknowledged) - len(acknowledged)),
        "not_acknowledged": sum(1 for session_id in stored if session_id not in acknowledged),
        "stuck_between_phases": sum(
            1 for phase in stored.values() if phase in ("Pending", "Provisioning", "Terminating")
        ),
    }


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="vdi-soak-") as tmp:
        async with cluster(Path(tmp), args.portals) as (bases, admin, secret_key, database_url):
            async with httpx.AsyncClient(timeout=30) as http:
                template = {"image": "vdi/session:soak", "gpu": 0}
                response = await http.put(
                    f"{bases[0]}/v1/templates/soak", json=template, headers=admin
                )
                response.raise_for_status()
            tally = Tally()
            floor: list[float] = []
            began = time.monotonic()
            stop_at = began + args.seconds
            await asyncio.gather(
                floor_probe(bases, stop_at, floor),
                *(portal(i, bases, admin, secret_key, tally, stop_at) for i in range(args.portals)),
            )
            elapsed = time.monotonic() - began
            await asyncio.sleep(2)  # let the reconcilers finish what the last deletes started
            figures = await audit(database_url, tally)

    floor_p50 = statistics.median(floor) if floor else 0.0
    print(f"soak: {args.portals} portals and their agents, 2 replicas, {elapsed:.0f} s, loopback\n")
    print("| operation | requests | p50 ms | p99 ms | p50 vs floor |")
    print("|---|---|---|---|---|")
    print(f"| floor: GET /healthz | {len(floor)} | {floor_p50:.1f} | {_p(floor, 99):.1f} | 1.00x |")
    for name in ("create", "poll", "health", "get", "keepalive", "connection", "delete"):
        values = tally.latencies.get(name, [])
        if values:
            p50 = statistics.median(values)
            ratio = f"{p50 / floor_p50:.1f}x" if floor_p50 else "-"
            print(f"| {name} | {len(values)} | {p50:.1f} | {_p(values, 99):.1f} | {ratio} |")
    print(
        f"\nsessions completed (create to Terminated): {tally.completed} "
        f"({tally.completed / elapsed:.2f}/s)"
    )
    print(f"errors: {len(tally.errors)} {tally.errors[:5]}")
    retried = {k: v for k, v in tally.statuses.items() if not k.endswith(("200", "202"))}
    print(f"non-2xx answers and dropped connections (retried): {retried or 'none'}")
    print(
        f"audit: acknowledged {figures['acknowledged']}, stored {figures['stored']}, "
        f"lost {figures['lost']}, duplicated {figures['duplicated']}, "
        f"stored without an acknowledgement {figures['not_acknowledged']}, "
        f"stuck between phases {figures['stuck_between_phases']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--portals", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=120.0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
