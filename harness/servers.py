"""Servers as the tests and benches run them: an app under a real uvicorn on a loopback port
inside the caller's event loop; processes started, waited for until ready, and stopped by their
PID; the fake API in a process of its own; free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn
from fastapi import FastAPI

from app.httpserver import uvicorn_options


@asynccontextmanager
async def serve(app: FastAPI, port: int = 0) -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # inherited by accepted connections (uvicorn sets it only on sockets it binds itself):
    # without it every answer waits out the client's delayed ACK, 40 ms
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    # An app already started by a fixture keeps its own lifespan: running it twice would
    # replace (and leak) its engine and event hub.
    lifespan: Literal["on", "off"] = "off" if hasattr(app.state, "sessionmaker") else "on"
    async with serve_on(app, sock, lifespan=lifespan):
        yield f"http://127.0.0.1:{port}"


@asynccontextmanager
async def serve_on(
    app: FastAPI, sock: socket.socket, *, lifespan: Literal["auto", "on", "off"] = "on"
) -> AsyncIterator[None]:
    """uvicorn serving `app` on a socket bound by the caller, until the block ends; the socket
    is closed after."""
    config = uvicorn.Config(
        app, log_config=None, lifespan=lifespan, timeout_graceful_shutdown=5, **uvicorn_options()
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]  # older uvicorn
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield
    finally:
        server.should_exit = True
        await task
        sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now (the caller binds it soon after), drawn from below the
    kernel's ephemeral range: a process that binds port 0 meanwhile (the simulated cluster's
    API, any client socket) cannot take it before the caller does, as one drawn by binding 0
    itself could be (seen in CI: serve and its simulated cluster on one port)."""
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {low} on {host}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A process with its output dropped."""
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(url: str, process: subprocess.Popen[Any], log: Path | None = None) -> None:
    """Until `url` answers 200; a process that exits or never answers stops the bench, with
    the end of its log when there is one."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited {process.returncode}{log_tail(log)}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} never became ready{log_tail(log)}")


def log_tail(log: Path | None, chars: int = 3000) -> str:
    if log is None or not log.exists():
        return ""
    return "\n" + log.read_text(errors="replace")[-chars:]


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[Any]]]:
    started: list[subprocess.Popen[Any]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


async def start_fake_api(
    started: list[subprocess.Popen[Any]], *options: str
) -> tuple[subprocess.Popen[str], str]:
    """`python -m kubefake <options>` in its own process (its CPU is not ours), kept in
    `started` to be stopped; returns it and the URL it serves."""
    fake = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        [sys.executable, "-m", "kubefake", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    started.append(fake)
    assert fake.stdout is not None
    return fake, (await asyncio.to_thread(fake.stdout.readline)).strip()


def collect_closed_sockets() -> None:
    """Collect now, with ResourceWarning off, the sockets an in-process simulated cluster leaves
    to the garbage collector when its server stops (its stand-in agents' connections, cut at
    shutdown; not yet tracked down): otherwise pytest reports them at exit as unraisable."""
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
