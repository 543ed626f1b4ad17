"""Ordinary requests while thousands of live event streams are open on one replica.

Starts `vdi-control serve` (embedded Postgres, simulated cluster), creates a session, measures
GET /v1/sessions/{id} and GET /v1/sessions?limit=50 with no stream open (the floor), then opens
`--streams` `text/event-stream` connections on the session's events and measures the same
requests again; then opens one stream past the per-token bound. Prints medians, p99 and the
ratio against the floor, and what the streams got.

    .venv/bin/python -m bench.streams [--streams 4000] [--requests 300] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from harness.network import stop
from harness.plane import start_serve
from harness.servers import free_port, wait_ready


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def measure(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], requests: int
) -> dict[str, float]:
    times: list[float] = []
    statuses: dict[int, int] = {}
    for _ in range(20):  # warm-up: connections, caches
        await http.get(url, headers=headers)
    for _ in range(requests):
        start = time.perf_counter()
        response = await http.get(url, headers=headers)
        times.append((time.perf_counter() - start) * 1000)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    return {
        "p50_ms": statistics.median(times),
        "p99_ms": _p(times, 99),
        "ok": statuses.get(200, 0) / requests,
    }


async def open_stream(
    http: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    opened: list[int],
    all_open: asyncio.Event,
    wanted: int,
) -> None:
    async with http.stream("GET", url, headers={**headers, "Accept": "text/event-stream"}) as r:
        opened.append(r.status_code)
        if len(opened) >= wanted:
            all_open.set()
        if r.status_code == 200:
            async for _ in r.aiter_lines():
                pass


@contextlib.asynccontextmanager
async def service(workdir: Path, streams: int) -> AsyncIterator[tuple[str, dict[str, str]]]:
    port = free_port()
    token = "vdi_bench-" + secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "VDI_DATA_DIR": str(workdir / "data"),
        "VDI_BOOTSTRAP_TOKEN": token,
        "VDI_PORT": str(port),
        "VDI_LOG_LEVEL": "WARNING",
        "VDI_MAX_STREAMS_PER_TOKEN": str(streams),
        "VDI_MAX_STREAMS_PER_REPLICA": str(streams + 10),
    }
    env.pop("VDI_DATABASE_URL", None)
    log = workdir / "serve.log"
    process = await asyncio.to_thread(start_serve, env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_ready, f"{url}/readyz", process, log)
        yield url, {"Authorization": f"Bearer {token}"}
    finally:
        await asyncio.to_thread(stop, process, 30)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    report: dict[str, Any] = {"streams": args.streams}
    with tempfile.TemporaryDirectory(prefix="vdi-streams-") as tmp:
        async with service(Path(tmp), args.streams) as (url, admin):
            limits = httpx.Limits(max_connections=args.streams + 100, max_keepalive_connections=20)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
                await http.put(
                    "/v1/templates/cpu", json={"image": "vdi/session:1", "gpu": 0}, headers=admin
                )
                created = await http.post(
                    "/v1/sessions", json={"user": "bench", "template": "cpu"}, headers=admin
                )
                session = f"/v1/sessions/{created.json()['id']}"
                probes = {"get session": session, "list sessions": "/v1/sessions?limit=50"}
                report["floor"] = {
                    name: await measure(http, path, admin, args.requests)
                    for name, path in probes.items()
                }
                opened: list[int] = []
                all_open = asyncio.Event()
                started = time.monotonic()
                tasks = [
                    asyncio.create_task(
                        open_stream(
                            http, f"{session}/events", admin, opened, all_open, args.streams
                        )
                    )
                    for _ in range(args.streams)
                ]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_open.wait(), timeout=180)
                report["streams_open_s"] = time.monotonic() - started
                report["stream_statuses"] = {str(s): opened.count(s) for s in set(opened)}
                report["with_streams"] = {
                    name: await measure(http, path, admin, args.requests)
                    for name, path in probes.items()
                }
                past = await http.get(
                    f"{session}/events", headers={**admin, "Accept": "text/event-stream"}
                )
                report["past_the_bound"] = past.status_code
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    return report


def print_table(report: dict[str, Any]) -> None:
    print(
        f"{report['streams']} streams opened in {report['streams_open_s']:.1f} s: "
        f"{report['stream_statuses']}; one more: {report['past_the_bound']}"
    )
    print("| request | floor p50 ms | floor p99 ms | with streams p50 | p99 | p99 ratio |")
    print("|---|---|---|---|---|---|")
    for name, floor in report["floor"].items():
        loaded = report["with_streams"][name]
        print(
            f"| {name} | {floor['p50_ms']:.1f} | {floor['p99_ms']:.1f} | "
            f"{loaded['p50_ms']:.1f} | {loaded['p99_ms']:.1f} | "
            f"{loaded['p99_ms'] / floor['p99_ms']:.2f}x |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=4000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    print(json.dumps(report) if args.json else "", end="\n" if args.json else "")
    if not args.json:
        print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
