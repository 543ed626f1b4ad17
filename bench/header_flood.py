"""Everyone's latency while one connection sends a header line that never ends (issue 27,
finding 15), against the same figure with no attack, measured in the same run.

Starts `vdi-control serve` (embedded Postgres, simulated cluster, no reconciler), measures
`/healthz` latency for a while (the floor), then again while an attacker streams one endless
header line as fast as the server takes it, and prints medians, p99 and the ratio, and how many
bytes the server read before it refused the attacker (431). Usage: python -m bench.header_flood
[--seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

VDI = [sys.executable, "-c", "from app.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _latencies(url: str, seconds: float) -> list[float]:
    found = []
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=30) as http:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            http.get(url)
            found.append((time.perf_counter() - start) * 1000)
            time.sleep(0.01)
    return found


def _attack(port: int, stop: threading.Event, outcome: dict[str, object]) -> None:
    """One connection, one header line that never ends; reconnects when refused."""
    sent = refusals = 0
    while not stop.is_set():
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Flood: ")
            try:
                while not stop.is_set():
                    sock.sendall(b"a" * 65536)
                    sent += 65536
            except OSError:
                refusals += 1
                try:
                    answer = sock.recv(200)
                    outcome["answer"] = answer.split(b"\r\n", 1)[0].decode(errors="replace")
                except OSError:
                    pass
    outcome.update(bytes_written_by_attacker=sent, refusals=refusals)


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 2),
        "max_ms": round(ordered[-1], 2),
        "requests": len(ordered),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="vdi-bench-flood-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VDI_")}
        env.update(VDI_DATA_DIR=str(Path(tmp) / "data"), VDI_CLUSTER="simulated")
        env.update(VDI_RECONCILER="false", VDI_LOG_LEVEL="WARNING")
        log = (Path(tmp) / "serve.log").open("w")
        server = subprocess.Popen(
            [*VDI, "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
        try:
            url = f"http://127.0.0.1:{port}/healthz"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("serve did not start")
                time.sleep(0.1)
            floor = _latencies(url, args.seconds)
            stop, outcome = threading.Event(), dict[str, Any]()
            attacker = threading.Thread(target=_attack, args=(port, stop, outcome), daemon=True)
            attacker.start()
            attacked = _latencies(url, args.seconds)
            stop.set()
            attacker.join(timeout=10)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
            log.close()
    quiet, flood = _summary(floor), _summary(attacked)
    print(
        json.dumps(
            {
                "healthz_quiet": quiet,
                "healthz_under_flood": flood,
                "p50_ratio": round(flood["p50_ms"] / quiet["p50_ms"], 2),
                "attacker": outcome,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
