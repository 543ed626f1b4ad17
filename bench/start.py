"""Time to desktop: created -> Running, cold and warm (bench of the time-to-desktop issue).

The real API (uvicorn on loopback) and reconciler against the fake cluster, whose kubelet pulls
each cold pod's image for `--pull-s` (every node fresh: no image is kept) and whose stand-in
agent reports the checks passed `--agent-s` after the container starts. For each scenario,
`--sessions` sessions for as many users, created all at once (a burst) and one at a time:
- cold: a template without a pool;
- warm: a template whose pool has a member for every user (refilled between the two runs);
- exhausted: a pool of a fifth of them: the rest fall back to cold starts;
- capacity: a cluster with no GPU left, whose autoscaler adds nodes of `--gpus-per-node` that
  are Ready `--node-join-s` after the scale-up and advertise their GPUs `--gpu-advertise-s`
  after that (the device plugin): the sessions wait (`WaitingForCapacity`), none fails, each
  runs once a node has its GPU. Its note: nodes added, how long the sessions waited for
  capacity (their `CapacityAvailable` events), and the start p50 vs the node's join and
  advertisement plus the pull and the checks (the floor: what no control plane can beat).
It prints p50/p95 of created -> Running (the sessions' own `created_at` and `running_at`, what
`vdi_session_start_seconds` observes) and, as the floor, the API's own latency for a cold create
(its 202) in the same run; the warm p95 vs that floor; and how long the pool took to be full
again after the warm burst, vs one cold start.

    python -m bench.start [--sessions 50] [--pull-s 20] [--agent-s 2] [--node-join-s 30]
        [--gpu-advertise-s 10] [--gpus-per-node 8]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from app.cluster.kube import KubeCluster
from app.config import Settings
from app.main import create_app
from app.observability import configure_logging
from app.runtimes.simulated import StandInAgent
from harness.database import bench_database
from harness.servers import serve_on
from kubefake import FakeKubernetes, start_fake_cluster
from kubefake.autoscaler import Autoscaler, NodeGroup
from kubefake.scheduler import GPU

ADMIN = "vdi_bench-admin-" + "a" * 32
IMAGE = "registry.example/vdi/session:1"


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Bench:
    def __init__(self, http: httpx.AsyncClient, db: asyncpg.Connection, sessions: int) -> None:
        self.http = http
        self.db = db
        self.sessions = sessions
        # Each create's latency (its 202), by (warm, burst): cold ones are the floor.
        self.latencies: dict[tuple[bool, bool], list[float]] = {}
        self.wave = 0

    async def create(self, user: str, template: str, burst: bool) -> dict[str, Any]:
        began = time.perf_counter()
        response = await self.http.post("/v1/sessions", json={"user": user, "template": template})
        elapsed = time.perf_counter() - began
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        self.latencies.setdefault((body["warm"], burst), []).append(elapsed)
        return body

    async def wave_of(self, template: str, *, burst: bool) -> tuple[list[dict[str, Any]], float]:
        """`sessions` creates (at once, or one after the other), waited until all are Running:
        their documents at the end, and when the first create was sent."""
        self.wave += 1
        users = [f"w{self.wave}-u{i}" for i in range(self.sessions)]
        began = time.perf_counter()
        if burst:
            created = await asyncio.gather(*(self.create(u, template, burst) for u in users))
        else:
            created = [await self.create(u, template, burst) for u in users]
        ids = [c["id"] for c in created]
        while True:
            phases = await self.db.fetch(
                "SELECT phase, running_at FROM sessions WHERE id = ANY($1::uuid[])", ids
            )
            if any(p["phase"] == "Failed" for p in phases):
                raise RuntimeError("a session failed")
            # a claimed warm member is Running before its route exists; running_at is when
            # its user can reach it
            if all(p["phase"] == "Running" and p["running_at"] for p in phases):
                break
            await asyncio.sleep(0.05)
        shown = [(await self.http.get(f"/v1/sessions/{i}")).json() for i in ids]
        return shown, began

    async def end(self, shown: list[dict[str, Any]]) -> None:
        await asyncio.gather(*(self.http.delete(f"/v1/sessions/{s['id']}") for s in shown))
        ended = "SELECT count(*) FROM sessions WHERE NOT pool_member AND phase <> 'Terminated'"
        while await self.db.fetchval(ended):  # noqa: ASYNC110 - polling the database
            await asyncio.sleep(0.05)

    async def pool_full(self, template: str, size: int) -> float:
        """When (perf_counter) the template's pool has `size` members ready."""
        while True:
            available = (await self.http.get(f"/v1/templates/{template}")).json()
            if available["warm_available"] >= size:
                return time.perf_counter()
            await asyncio.sleep(0.05)


def _starts(shown: list[dict[str, Any]]) -> list[float]:
    return [
        (
            datetime.fromisoformat(s["running_at"]) - datetime.fromisoformat(s["created_at"])
        ).total_seconds()
        for s in shown
    ]


async def run(args: argparse.Namespace, url: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Accepted connections inherit it (uvicorn on uvloop sets it only on sockets it binds
    # itself, as `vdi-control serve` does): without it every answer waited out the client's
    # delayed ACK, 40 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = Settings(
        callback_url=base,
        database_url=url,
        secret_key="bench-secret-key-" + "k" * 32,
        turn_secret="bench-turn-secret-" + "t" * 32,
        bootstrap_token=ADMIN,
        namespace="vdi",
        reconcile_interval_s=0.2,
        pool_interval_s=0.5,
        heartbeat_timeout_s=300,
        log_level="WARNING",
    )
    agent: StandInAgent | None = None

    async def pod_running(pod: dict[str, Any]) -> None:
        await asyncio.sleep(args.agent_s)  # the agent's checks
        if agent is not None:
            await agent.pod_running(pod)

    options = {
        "image_pull_s": args.pull_s,
        "keep_pulled_images": False,  # every node fresh: each cold pod pulls
        "gpu_capacity": 100_000,
        "on_pod_running": pod_running,
        "validate": False,
    }
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    db = await asyncpg.connect(dsn)
    async with start_fake_cluster(**options) as (fake, fake_url):
        agent = StandInAgent(fake, "vdi", heartbeat_s=60)
        cluster = KubeCluster.for_host(fake_url, "vdi", settings.ingress_api_version)
        app = create_app(settings, url, cluster=cluster)
        async with serve_on(app, sock):
            split = instrument(app, cluster)
            headers = {"Authorization": f"Bearer {ADMIN}"}
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
                bench = Bench(http, db, args.sessions)
                rows = await scenarios(bench, http, args, split, fake)
        await agent.stop()
        cluster.close()
    await db.close()
    print_table(rows, bench, args, split)


class Split:
    """Where a warm create's time goes, per claim: the route step (cluster call and the routed
    record) and its cluster call alone, timed in the server."""

    def __init__(self) -> None:
        self.routes: list[float] = []
        self.calls: list[float] = []
        self.recording = False


def instrument(app: FastAPI, cluster: KubeCluster) -> Split:
    split = Split()
    router = app.state.warm_router
    create = cluster.create

    class TimedRouter:
        async def route_claimed(self, claimed: Any) -> Any:
            began = time.perf_counter()
            try:
                return await router.route_claimed(claimed)
            finally:
                if split.recording:
                    split.routes.append(time.perf_counter() - began)

    async def timed_create(kind: Any, body: dict[str, Any]) -> dict[str, Any]:
        began = time.perf_counter()
        try:
            return await create(kind, body)
        finally:
            if split.recording and kind == "IngressRoute":
                split.calls.append(time.perf_counter() - began)

    app.state.warm_router = TimedRouter()
    cluster.create = timed_create  # type: ignore[method-assign]
    return split


async def scenarios(
    bench: Bench,
    http: httpx.AsyncClient,
    args: argparse.Namespace,
    split: Split,
    fake: FakeKubernetes,
) -> list[tuple[str, list[float], str]]:
    n = args.sessions
    rows: list[tuple[str, list[float], str]] = []
    cold = {"image": IMAGE, "persistent_home": False}
    await http.put("/v1/templates/cold", json=cold)
    for burst in (True, False):
        shown, _began = await bench.wave_of("cold", burst=burst)
        rows.append((f"cold, {'at once' if burst else 'one at a time'}", _starts(shown), ""))
        await bench.end(shown)
    await http.put("/v1/templates/warm", json={**cold, "warm_pool": n})
    await bench.pool_full("warm", n)
    for burst in (True, False):
        split.recording = not burst
        shown, began = await bench.wave_of("warm", burst=burst)
        split.recording = False
        refill = await bench.pool_full("warm", n) - began
        warm = sum(s["warm"] for s in shown)
        note = f"{warm}/{n} warm; pool full again {refill:.2f} s after the first create"
        rows.append((f"warm, {'at once' if burst else 'one at a time'}", _starts(shown), note))
        await bench.end(shown)
    await http.put("/v1/templates/warm", json={**cold, "warm_pool": 0})
    small = max(1, n // 5)
    await http.put("/v1/templates/short", json={**cold, "warm_pool": small})
    await bench.pool_full("short", small)
    shown, _began = await bench.wave_of("short", burst=True)
    warm_starts = _starts([s for s in shown if s["warm"]])
    cold_starts = _starts([s for s in shown if not s["warm"]])
    note = (
        f"{len(warm_starts)} warm (p95 {_fmt(_p(warm_starts, 0.95))}), "
        f"{len(cold_starts)} cold (p50 {_fmt(statistics.median(cold_starts))})"
        if cold_starts and warm_starts
        else ""
    )
    rows.append(("pool of n/5 exhausted, at once", _starts(shown), note))
    await bench.end(shown)
    await http.put("/v1/templates/short", json={**cold, "warm_pool": 0})
    rows.append(await capacity_scenario(bench, http, args, fake, statistics.median(rows[0][1])))
    return rows


async def capacity_scenario(
    bench: Bench,
    http: httpx.AsyncClient,
    args: argparse.Namespace,
    fake: FakeKubernetes,
    cold_p50: float,
) -> tuple[str, list[float], str]:
    """A burst on a cluster with no GPU free, served by nodes the autoscaler adds."""
    for room in fake.scheduler.nodes.values():  # the nodes there have no GPU to give
        room.allocatable[GPU] = Decimal(0)
    group = NodeGroup(
        max_nodes=-(-args.sessions // args.gpus_per_node),
        gpus_per_node=args.gpus_per_node,
        join_s=args.node_join_s,
        gpus_after_s=args.gpu_advertise_s,
    )
    fake.autoscaler = Autoscaler(fake, fake.events, fake.scheduler, group)
    await http.put("/v1/templates/capacity", json={"image": IMAGE, "persistent_home": False})
    shown, _began = await bench.wave_of("capacity", burst=True)
    failed = [s for s in shown if s["phase"] != "Running"]
    waits = []
    for session in shown:
        log = (await http.get(f"/v1/sessions/{session['id']}/events")).json()["items"]
        waits += [
            e["data"]["waited_s"]
            for e in log
            if e["type"] == "CapacityChanged" and e["reason"] == "CapacityAvailable"
        ]
    starts = _starts(shown)
    # what no control plane can beat: the node's join and advertisement, the pull, the checks
    floor = args.node_join_s + args.gpu_advertise_s + args.pull_s + args.agent_s
    note = (
        f"{fake.autoscaler.nodes_added} nodes added, {len(failed)} failed; waited for capacity "
        f"p50 {_fmt(statistics.median(waits)) if waits else '-'} ({len(waits)} waits); start "
        f"p50 vs join + advertise + pull + checks ({_fmt(floor)}): "
        f"{statistics.median(starts) / floor:.2f}x (a cold start alone: {_fmt(cold_p50)})"
    )
    await bench.end(shown)
    name = f"cold, node joins after {args.node_join_s:g}+{args.gpu_advertise_s:g} s"
    return name, starts, note


def print_table(
    rows: list[tuple[str, list[float], str]],
    bench: Bench,
    args: argparse.Namespace,
    split: Split,
) -> None:
    print(
        f"\n{args.sessions} sessions per run; image pull {args.pull_s:g} s (fresh nodes), agent "
        f"checks {args.agent_s:g} s; created -> Running from the sessions' own timestamps"
    )
    print(f"{'scenario':<32} {'p50':>10} {'p95':>10}  notes")
    for name, starts, note in rows:
        p50, p95 = statistics.median(starts), _p(starts, 0.95)
        print(f"{name:<32} {_fmt(p50):>10} {_fmt(p95):>10}  {note}")
    print("\nThe create request itself (client side, its 202; a warm one answers Running):")
    print(f"{'create':<32} {'p50':>10} {'p95':>10}  vs the floor (cold create's p95)")
    for burst in (True, False):
        mode = "at once" if burst else "one at a time"
        floor = bench.latencies.get((False, burst), [])
        warm = bench.latencies.get((True, burst), [])
        if floor:
            print(
                f"{'floor: cold, ' + mode:<32} {_fmt(statistics.median(floor)):>10} "
                f"{_fmt(_p(floor, 0.95)):>10}  1.00x"
            )
        if floor and warm:
            ratio = _p(warm, 0.95) / _p(floor, 0.95)
            print(
                f"{'warm, ' + mode:<32} {_fmt(statistics.median(warm)):>10} "
                f"{_fmt(_p(warm, 0.95)):>10}  {ratio:.2f}x (target <= 2x)"
            )
    print(f"one cold start (p50, at once): {_fmt(statistics.median(rows[0][1]))}")
    warm = bench.latencies.get((True, False), [])
    if warm and split.routes and split.calls:
        total, routed = statistics.median(warm), statistics.median(split.routes)
        call = statistics.median(split.calls)
        print(
            f"a warm create one at a time, medians: {_fmt(total)} = request, auth and the claim "
            f"transaction {_fmt(total - routed)} + the IngressRoute create {_fmt(call)} + "
            f"the rest of the route step {_fmt(routed - call)} (its Running record is written "
            "after the answer)"
        )


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--pull-s", type=float, default=20.0)
    parser.add_argument("--agent-s", type=float, default=2.0)
    parser.add_argument("--node-join-s", type=float, default=30.0)
    parser.add_argument("--gpu-advertise-s", type=float, default=10.0)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    args = parser.parse_args()
    configure_logging("WARNING", json=False)
    with bench_database() as url:
        asyncio.run(run(args, url))


if __name__ == "__main__":
    main()
