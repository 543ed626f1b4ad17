"""Run an app under a real uvicorn on a loopback port, inside the test's event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
    lifespan = "off" if hasattr(app.state, "sessionmaker") else "on"
    async with serve_on(app, sock, lifespan=lifespan):
        yield f"http://127.0.0.1:{port}"


@asynccontextmanager
async def serve_on(
    app: FastAPI, sock: socket.socket, *, lifespan: str = "on"
) -> AsyncIterator[None]:
    """uvicorn serving `app` on a socket bound by the caller, until the block ends; the socket
    is closed after."""
    config = uvicorn.Config(
        app, log_config=None, lifespan=lifespan, timeout_graceful_shutdown=5, **uvicorn_options()
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
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
