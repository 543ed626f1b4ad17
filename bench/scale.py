"""Scale: a morning rush of N desktops on R replicas, heartbeats, a restart, a termination wave.

One embedded Postgres, the fake Kubernetes API in its own process (schema admission off, a
kubelet tick of 0.2 s), R `vdi-control serve` replicas. In this process: the portals (P of them
creating sessions as fast as they can, over T templates) and every session's agent (reporting
ready when its pod runs, then heartbeating at the interval the server asks for).

Phases, each timed and checked (nothing lost, duplicated, failed or left behind):
1. rush: N creates; every session Running (none Failed);
2. steady: heartbeats alone (their CPU), then heartbeats and a probe of GET session, list and
   /healthz (latencies, measured from a process of its own); then at rest (the agents silent
   for a while): replica CPU per second, which must not grow with N;
3. restart: every replica killed (SIGKILL) and started again: time to /readyz, CPU of the first
   30 s, and no session failed by it;
4. termination wave: every session deleted; time until all are Terminated and the cluster holds
   none of their objects.
CPU is each process's own (user + system seconds), printed for the replicas, Postgres, the fake
API and this load generator, so a reader sees what was measured. The CPU per heartbeat is the
replicas' CPU in the steady window divided by the reports they answered, less their CPU at rest.

Usage: python -m bench.scale [--sessions N] [--replicas R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import psutil

from app.cluster import manifests
from app.cluster.kube import KubeCluster
from app.embedded import EmbeddedPostgres, ensure_database
from app.security import agent_token
from harness.servers import free_port, processes, start_fake_api, wait_ready
from kubefake import write_kubeconfig

VDI = [sys.executable, "-c", "from app.cli import main; main()"]
READY = {
    "checks": [
        {"name": "gpu", "ok": True, "detail": "bench GPU"},
        {"name": "encoder", "ok": True, "detail": "bench encoder"},
        {"name": "stream", "ok": None, "detail": "no viewer connected"},
    ],
    "encoder": "nvh264enc",
    "fallback": False,
}
INTERVAL_HEADER = "VDI-Report-Interval"


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def postgres_pids(data_dir: Path) -> list[int]:
    """The postmaster and its children now (backends, checkpointer, ...). A backend that has
    exited takes its CPU time with it; the replicas' pools keep theirs open."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if str(data_dir) in " ".join(process.info["cmdline"] or []):
                found.append(process.pid)
                found.extend(child.pid for child in process.children(recursive=True))
    return sorted(set(found))


@dataclass
class Agents:
    """Every session's agent: a first report once its pod runs, then heartbeats."""

    bases: list[str]
    secret_key: str
    http: aiohttp.ClientSession  # httpx's pool costs O(waiting x connections) per request
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    answered: int = 0  # reports a replica answered (any status)
    paused: asyncio.Event = field(default_factory=asyncio.Event)  # set: silent

    def pod_running(self, session_id: str) -> None:
        if session_id not in self.tasks:
            self.tasks[session_id] = asyncio.create_task(self._agent(session_id))

    async def _agent(self, session_id: str) -> None:
        headers = {"Authorization": f"Bearer {agent_token(self.secret_key, uuid.UUID(session_id))}"}
        interval, backoff = 15.0, 0.5
        first = True
        while True:
            if self.paused.is_set() and not first:
                await asyncio.sleep(1.0)
                continue
            base = random.choice(self.bases)
            try:
                async with self.http.post(
                    f"{base}/v1/sessions/{session_id}/health", json=READY, headers=headers
                ) as response:
                    status, text = response.status, await response.text()
                    asked = response.headers.get(INTERVAL_HEADER)
                    retry_after = float(response.headers.get("Retry-After", "1"))
            except (aiohttp.ClientError, TimeoutError):  # as the agent does: retry, backing off
                self.statuses["unreachable"] += 1
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(30.0, backoff * 2)
                continue
            backoff = 0.5
            self.answered += 1
            self.statuses[str(status)] += 1
            if status == 200:
                first = False
                interval = float(asked or interval)
                await asyncio.sleep(interval * random.uniform(0.9, 1.1))
            elif status == 409 and "session-not-started" in text:
                await asyncio.sleep(1.0)
            elif status in (429, 503):
                await asyncio.sleep(retry_after)
            else:
                return  # ended (409), gone (404): the agent stops

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def watch_pods(url: str, agents: Agents, stop: asyncio.Event) -> None:
    """Start an agent for each session pod that runs (as the kubelet would start the container)."""
    cluster = KubeCluster.for_host(url, "vdi", "traefik.io/v1alpha1")
    try:
        version = ""
        while not stop.is_set():
            if not version:
                pods, version = await cluster.list("Pod", manifests.SESSION_SELECTOR)
                for pod in pods:
                    _maybe_start(pod, agents)
            async for event in cluster.watch_pods(manifests.SESSION_SELECTOR, version):
                if event.type == "RESYNC":
                    version = ""
                    break
                version = str(event.object.get("metadata", {}).get("resourceVersion") or version)
                if event.type != "DELETED":
                    _maybe_start(event.object, agents)
    finally:
        cluster.close()


def _maybe_start(pod: dict[str, Any], agents: Agents) -> None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    if statuses and statuses[0].get("ready"):
        session_id = (pod["metadata"].get("labels") or {}).get(manifests.SESSION_ID_LABEL)
        if session_id:
            agents.pod_running(session_id)


class Fleet:
    """Postgres, the fake API and R replicas, with their PIDs for CPU accounting."""

    def __init__(self, workdir: Path, replicas: int, report_interval_s: int) -> None:
        self.workdir = workdir
        self.replicas = replicas
        self.report_interval_s = report_interval_s
        self.secret_key = secrets.token_urlsafe(48)
        self.admin_token = "vdi_scale-admin-" + secrets.token_urlsafe(24)
        self.ports = [free_port() for _ in range(replicas)]
        self.bases = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.serving: list[subprocess.Popen[Any]] = []
        self.env: dict[str, str] = {}

    def start_replica(self, n: int, started: list[subprocess.Popen[Any]]) -> subprocess.Popen[Any]:
        log = (self.workdir / f"replica-{n}.log").open("ab")
        process = subprocess.Popen(
            [*VDI, "serve", "--port", str(self.ports[n])],
            env={**self.env, "VDI_CALLBACK_URL": self.bases[n]},
            stdout=log,
            stderr=log,
        )
        log.close()
        started.append(process)
        return process


@dataclass
class Probe:
    get_ms: list[float] = field(default_factory=list)
    list_ms: list[float] = field(default_factory=list)
    healthz_ms: list[float] = field(default_factory=list)
    errors: int = 0


async def probe(
    http: httpx.AsyncClient, bases: list[str], admin: dict[str, str], ids: list[str], seconds: float
) -> Probe:
    """GET session, list (limit 50) and /healthz, each 10 times a second, from one client."""
    result = Probe()
    stop_at = time.monotonic() + seconds

    async def loop(call: Callable[[], Awaitable[httpx.Response]], into: list[float]) -> None:
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            try:
                response = await call()
                if response.status_code != 200:
                    result.errors += 1
            except httpx.HTTPError:
                result.errors += 1
            into.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(0.1)

    await asyncio.gather(
        loop(
            lambda: http.get(
                f"{random.choice(bases)}/v1/sessions/{random.choice(ids)}", headers=admin
            ),
            result.get_ms,
        ),
        loop(
            lambda: http.get(f"{random.choice(bases)}/v1/sessions?limit=50", headers=admin),
            result.list_ms,
        ),
        loop(lambda: http.get(f"{random.choice(bases)}/healthz"), result.healthz_ms),
    )
    return result


def probe_in_own_process(
    bases: list[str], admin: dict[str, str], ids: list[str], seconds: float
) -> Probe:
    """The probe with a client and an event loop of its own (run in a child process): the
    load generator's loop, busy with thousands of agents, would otherwise add its own lag to
    every latency measured."""

    async def run() -> Probe:
        async with httpx.AsyncClient(timeout=30) as http:
            return await probe(http, bases, admin, ids, seconds)

    return asyncio.run(run())


async def phases(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT phase, count(*) AS n FROM sessions GROUP BY phase")
    return {row["phase"]: int(row["n"]) for row in rows}


async def wait_for(
    db: asyncpg.Connection, done: Callable[[dict[str, int]], bool], timeout_s: float
) -> tuple[float, dict[str, int]]:
    began = time.monotonic()
    counts: dict[str, int] = {}
    while time.monotonic() - began < timeout_s:
        counts = await phases(db)
        if done(counts):
            return time.monotonic() - began, counts
        await asyncio.sleep(0.25)
    raise RuntimeError(f"not reached within {timeout_s:.0f} s: {counts}")


@dataclass
class Rush:
    """One run's parts, as the phases use them."""

    args: argparse.Namespace
    workdir: Path
    fleet: Fleet
    replicas: list[subprocess.Popen[Any]]
    started: list[subprocess.Popen[Any]]
    fake: subprocess.Popen[Any]
    fake_url: str
    db: asyncpg.Connection
    http: httpx.AsyncClient
    agents: Agents
    admin: dict[str, str]
    watcher: asyncio.Task[None]
    stop_watch: asyncio.Event
    created: dict[str, str] = field(default_factory=dict)  # user -> session id

    async def stop_agents(self) -> None:
        """The pod watch, then the agents it started."""
        self.stop_watch.set()
        self.watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.watcher
        await self.agents.stop()

    @property
    def n(self) -> int:
        return int(self.args.sessions)

    def cpu(self) -> dict[str, float]:
        return {
            "replicas": cpu_seconds([p.pid for p in self.replicas]),
            "postgres": cpu_seconds(postgres_pids(self.workdir / "pg")),
            "fake": cpu_seconds([self.fake.pid]),
            "load": cpu_seconds([os.getpid()]),
        }


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The four phases on a fresh fleet: the rush, steady state and rest, a restart of every
    replica, the termination wave; then the audit."""
    postgres = await asyncio.to_thread(EmbeddedPostgres, workdir / "pg")
    figures: dict[str, Any] = {"sessions": args.sessions, "replicas": args.replicas}
    try:
        await ensure_database(postgres.url(), "vdi")
        with processes() as started:
            async with _fleet(args, workdir, postgres.url("vdi"), started) as rush:
                figures["rush"] = await _rush(rush)
                figures["steady"] = await _steady(rush)
                figures["restart"] = await _restart(rush)
                figures["termination"] = await _termination(rush)
                await rush.stop_agents()
                figures["audit"] = await _audit(rush)
    finally:
        await asyncio.to_thread(postgres.stop)
    return figures


@contextlib.asynccontextmanager
async def _fleet(
    args: argparse.Namespace,
    workdir: Path,
    database_url: str,
    started: list[subprocess.Popen[Any]],
) -> AsyncIterator[Rush]:
    """The fake API, R replicas (one after the other: the first migrates), the templates, the
    agents answering for every pod the fake starts."""
    fake, fake_url = await start_fake_api(
        started,
        *("--no-validate", "--gpus", str(args.sessions * 2)),
        *("--kubelet-interval-s", str(args.kubelet_interval_s)),
        *("--termination-delay-s", "1.0"),
    )
    fleet = Fleet(workdir, args.replicas, args.report_interval_s)
    fleet.env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VDI_")},
        "VDI_DATABASE_URL": database_url,
        "VDI_AUTO_MIGRATE": "true",
        "VDI_SECRET_KEY": fleet.secret_key,
        "VDI_TURN_SECRET": secrets.token_urlsafe(48),
        "VDI_BOOTSTRAP_TOKEN": fleet.admin_token,
        "VDI_CLUSTER": "kubernetes",
        "KUBECONFIG": str(write_kubeconfig(workdir / "kubeconfig", fake_url)),
        "VDI_NAMESPACE": "vdi",
        "VDI_MAX_SESSIONS_PER_USER": "1",
        "VDI_REPORT_INTERVAL_S": str(args.report_interval_s),
        "VDI_REPORT_RATE_LIMIT": "600/minute",
        "VDI_LOG_LEVEL": "WARNING",
    }
    replicas = []
    for index in range(args.replicas):
        replicas.append(fleet.start_replica(index, started))
        await asyncio.to_thread(wait_ready, f"{fleet.bases[index]}/readyz", replicas[-1])
    admin = {"Authorization": f"Bearer {fleet.admin_token}"}
    db = await asyncpg.connect(database_url)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    try:
        async with (
            httpx.AsyncClient(timeout=30, limits=limits) as http,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256),
                timeout=aiohttp.ClientTimeout(total=30),
            ) as reporting,
        ):
            for t in range(args.templates):
                spec = {"image": f"vdi/session:scale-{t}", "gpu": 1, "start_timeout_s": 300}
                response = await http.put(
                    f"{fleet.bases[0]}/v1/templates/t{t}", json=spec, headers=admin
                )
                response.raise_for_status()
            agents = Agents(fleet.bases, fleet.secret_key, reporting)
            stop_watch = asyncio.Event()
            watcher = asyncio.create_task(watch_pods(fake_url, agents, stop_watch))
            try:
                yield Rush(
                    args,
                    workdir,
                    fleet,
                    replicas,
                    started,
                    fake,
                    fake_url,
                    db,
                    http,
                    agents,
                    admin,
                    watcher,
                    stop_watch,
                )
            finally:
                stop_watch.set()
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher
    finally:
        await db.close()


async def _rush(rush: Rush) -> dict[str, Any]:
    """1. N creates from the portals, spread over the replicas, until all are Running."""
    n, args = rush.n, rush.args
    statuses: Counter[str] = Counter()
    queue = iter(range(n))
    cpu_before, began = rush.cpu(), time.monotonic()

    async def portal() -> None:
        for i in queue:
            body = {"user": f"u{i}", "template": f"t{i % args.templates}"}
            while True:
                try:
                    response = await rush.http.post(
                        f"{random.choice(rush.fleet.bases)}/v1/sessions",
                        json=body,
                        headers={**rush.admin, "Idempotency-Key": f"rush-{i}"},
                    )
                except httpx.HTTPError:
                    statuses["unreachable"] += 1
                    continue
                statuses[str(response.status_code)] += 1
                if response.status_code == 202:
                    rush.created[body["user"]] = response.json()["id"]
                    break
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))

    await asyncio.gather(*(portal() for _ in range(args.portals)))
    accepted_s = time.monotonic() - began
    all_running = lambda c: c.get("Running", 0) == n or c.get("Failed", 0) > 0  # noqa: E731
    running_s, counts = await wait_for(rush.db, all_running, args.timeout_s)
    running_s += accepted_s
    cpu_after = rush.cpu()
    return {
        "accepted_s": round(accepted_s, 1),
        "all_running_s": round(running_s, 1) if counts.get("Running") == n else None,
        "phases": counts,
        "create_statuses": dict(statuses),
        "provisioned_per_s": round(n / running_s, 1),
        "cpu_s": {k: round(cpu_after[k] - cpu_before[k], 1) for k in cpu_after},
    }


async def _steady(rush: Rush) -> dict[str, Any]:
    """2. Steady state: heartbeats alone (their CPU), then with the probe (the latencies);
    then rest, the agents paused (the idle CPU)."""
    args, agents = rush.args, rush.agents
    await asyncio.sleep(min(10.0, args.steady_s / 3))  # first reports settle
    ids = list(rush.created.values())
    cpu_before, answered_before = rush.cpu(), agents.answered
    began = time.monotonic()
    await asyncio.sleep(args.heartbeat_window_s)
    hb_elapsed = time.monotonic() - began
    hb_cpu, reports = rush.cpu(), agents.answered - answered_before
    hb_busy = hb_cpu["replicas"] - cpu_before["replicas"]
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as prober:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(prober, time.sleep, 0)  # started, imported
        cpu_before = rush.cpu()
        began = time.monotonic()
        measured = await loop.run_in_executor(
            prober, probe_in_own_process, rush.fleet.bases, rush.admin, ids, args.steady_s
        )
        elapsed = time.monotonic() - began
    cpu_after = rush.cpu()
    agents.paused.set()
    await asyncio.sleep(2.0)
    rest_before, rest_began = rush.cpu(), time.monotonic()
    await asyncio.sleep(args.rest_s)
    rest_after, rest_elapsed = rush.cpu(), time.monotonic() - rest_began
    agents.paused.clear()
    rest_per_s = (rest_after["replicas"] - rest_before["replicas"]) / rest_elapsed
    busy = cpu_after["replicas"] - cpu_before["replicas"]
    return {
        "seconds": round(elapsed, 1),
        "heartbeats_per_s": round(reports / hb_elapsed, 1),
        "replica_cpu_percent_each": round(100 * hb_busy / hb_elapsed / args.replicas, 1),
        "cpu_ms_per_heartbeat": round(
            1000 * (hb_busy - rest_per_s * hb_elapsed) / max(1, reports), 3
        ),
        "replica_cpu_percent_each_with_probe": round(100 * busy / elapsed / args.replicas, 1),
        "get_p50_ms": round(statistics.median(measured.get_ms), 1),
        "get_p99_ms": round(_p(measured.get_ms, 99), 1),
        "list_p50_ms": round(statistics.median(measured.list_ms), 1),
        "list_p99_ms": round(_p(measured.list_ms, 99), 1),
        "healthz_p99_ms": round(_p(measured.healthz_ms, 99), 1),
        "probe_errors": measured.errors,
        "cpu_percent": {
            k: round(100 * (cpu_after[k] - cpu_before[k]) / elapsed, 1) for k in cpu_after
        },
        "rest_replica_cpu_percent_each": round(100 * rest_per_s / args.replicas, 2),
        "rest_cpu_percent": {
            k: round(100 * (rest_after[k] - rest_before[k]) / rest_elapsed, 2) for k in rest_after
        },
    }


async def _restart(rush: Rush) -> dict[str, Any]:
    """3. Every replica killed at once, then started again: time to ready, CPU of the first
    seconds, and the phases after."""
    replicas, fleet = rush.replicas, rush.fleet
    for process in replicas:
        os.kill(process.pid, signal.SIGKILL)
    for process in replicas:
        await asyncio.to_thread(process.wait)
    began = time.monotonic()
    replicas[:] = [fleet.start_replica(i, rush.started) for i in range(rush.args.replicas)]
    ready = await asyncio.gather(
        *(
            asyncio.to_thread(_time_ready, f"{base}/readyz", process, began)
            for base, process in zip(fleet.bases, replicas, strict=True)
        )
    )
    await asyncio.sleep(max(0.0, rush.args.restart_window_s - (time.monotonic() - began)))
    first_30 = cpu_seconds([p.pid for p in replicas])
    return {
        "readyz_s": [round(s, 2) for s in ready],
        "replica_cpu_s_first_30s": round(first_30, 1),
        "phases_after": await phases(rush.db),
    }


async def _termination(rush: Rush) -> dict[str, Any]:
    """4. Every session deleted, until all are Terminated; the cluster objects left."""
    began = time.monotonic()
    cpu_before = rush.cpu()
    pending = iter(list(rush.created.values()))

    async def deleter() -> None:
        for session_id in pending:
            while True:
                try:
                    response = await rush.http.delete(
                        f"{random.choice(rush.fleet.bases)}/v1/sessions/{session_id}",
                        headers=rush.admin,
                    )
                except httpx.HTTPError:
                    continue
                if response.status_code == 202:
                    break
                await asyncio.sleep(1.0)

    await asyncio.gather(*(deleter() for _ in range(rush.args.portals)))
    deleted_s = time.monotonic() - began
    done_s, _counts = await wait_for(
        rush.db, lambda c: c.get("Terminated", 0) == rush.n, rush.args.timeout_s
    )
    cpu_after = rush.cpu()
    return {
        "deletes_accepted_s": round(deleted_s, 1),
        "all_terminated_s": round(deleted_s + done_s, 1),
        "objects_left": await _objects_left(rush.fake_url),
        "cpu_s": {k: round(cpu_after[k] - cpu_before[k], 1) for k in cpu_after},
    }


async def _audit(rush: Rush) -> dict[str, Any]:
    """Nothing lost, duplicated or failed: what was acknowledged against what is stored."""
    stored = await rush.db.fetchval("SELECT count(*) FROM sessions")
    users = await rush.db.fetchval('SELECT count(DISTINCT "user") FROM sessions')
    failed_ever = await rush.db.fetchval(
        "SELECT count(DISTINCT session_id) FROM session_events WHERE phase = 'Failed'"
    )
    return {
        "acknowledged": len(rush.created),
        "stored": int(stored),
        "duplicated": int(stored) - int(users),
        "failed_ever": int(failed_ever),
        "agent_statuses": dict(rush.agents.statuses),
    }


def _time_ready(url: str, process: subprocess.Popen[Any], began: float) -> float:
    wait_ready(url, process)
    return time.monotonic() - began


async def _objects_left(fake_url: str) -> dict[str, int]:
    cluster = KubeCluster.for_host(fake_url, "vdi", "traefik.io/v1alpha1")
    try:
        left = {}
        for kind in ("Pod", "Secret", "Service", "IngressRoute"):
            items, _ = await cluster.list(kind, manifests.SESSION_SELECTOR)
            left[kind] = len(items)
        return left
    finally:
        cluster.close()


def print_table(f: dict[str, Any]) -> None:
    rush, steady, restart, term = f["rush"], f["steady"], f["restart"], f["termination"]
    print(f"\nscale: {f['sessions']} sessions, {f['replicas']} replicas, one Postgres, fake API")
    print("| | figure |\n|---|---|")
    print(f"| creates accepted (all 202) | {rush['accepted_s']} s |")
    print(f"| all Running after | {rush['all_running_s']} s ({rush['provisioned_per_s']}/s) |")
    print(f"| phases after the rush | {rush['phases']} |")
    print(f"| rush CPU s (replicas, Postgres, fake, load) | {rush['cpu_s']} |")
    print(
        f"| heartbeats/s; replica CPU each | {steady['heartbeats_per_s']}; "
        f"{steady['replica_cpu_percent_each']}% ({steady['replica_cpu_percent_each_with_probe']}% "
        "with the probe) |"
    )
    print(f"| CPU per heartbeat (replicas) | {steady['cpu_ms_per_heartbeat']} ms |")
    print(
        f"| GET session p50/p99; list p50/p99 | {steady['get_p50_ms']}/{steady['get_p99_ms']} ms; "
        f"{steady['list_p50_ms']}/{steady['list_p99_ms']} ms (/healthz p99 "
        f"{steady['healthz_p99_ms']} ms) |"
    )
    print(f"| steady CPU % (replicas, Postgres, fake, load) | {steady['cpu_percent']} |")
    print(f"| at rest: replica CPU each | {steady['rest_replica_cpu_percent_each']}% |")
    print(
        f"| restart: /readyz; CPU in first 30 s | {restart['readyz_s']} s; "
        f"{restart['replica_cpu_s_first_30s']} s |"
    )
    print(f"| phases after the restart | {restart['phases_after']} |")
    print(f"| termination wave: all Terminated | {term['all_terminated_s']} s |")
    print(f"| objects left in the cluster | {term['objects_left']} |")
    print(f"| audit | {f['audit']} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--portals", type=int, default=32)
    parser.add_argument("--templates", type=int, default=3)
    parser.add_argument("--report-interval-s", type=int, default=15)
    parser.add_argument("--kubelet-interval-s", type=float, default=0.2)
    parser.add_argument("--heartbeat-window-s", type=float, default=30.0)
    parser.add_argument("--steady-s", type=float, default=30.0, help="the probe's window")
    parser.add_argument("--rest-s", type=float, default=15.0)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument(
        "--restart-window-s", type=float, default=30.0, help="replica CPU measured after a restart"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON last")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vdi-scale-") as tmp:
        figures = asyncio.run(run(args, Path(tmp)))
    print_table(figures)
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
