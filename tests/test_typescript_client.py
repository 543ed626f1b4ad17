"""The API as a TypeScript portal uses it: types generated from the live document by the real
openapi-typescript (pinned in clients/typescript/package-lock.json), a portal flow compiled with
`tsc --strict` (no casts) and run with node against a real server on the simulated cluster; and
the SSE stream followed by a stock EventSource (the `eventsource` package) through a proxy that
cuts its first connection: it reconnects with Last-Event-ID and gets every event once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from harness.servers import collect_closed_sockets, free_port, serve
from tests.conftest import ADMIN, TEST_BOOTSTRAP_TOKEN, _truncate, simulated_app
from tests.tools import REPO

PROJECT = REPO / "clients" / "typescript"
SOURCES = ("portal.ts", "resume.ts", "tsconfig.json", "package.json")


def _node_tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node, "node is needed (apt-get install nodejs npm; .ci/run does)"
    assert npm, "npm is needed (apt-get install nodejs npm; .ci/run does)"
    return node, npm


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The flow compiled against the types of this server's document (`out/*.js`)."""
    node, npm = _node_tools()
    if not (PROJECT / "node_modules" / ".package-lock.json").exists():
        # exactly the lockfile's versions, as CI installs them
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=PROJECT, check=True)
    work = tmp_path_factory.mktemp("portal")
    for name in SOURCES:
        shutil.copy(PROJECT / name, work / name)
    (work / "node_modules").symlink_to(PROJECT / "node_modules")
    document = subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main(['openapi'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (work / "openapi.json").write_text(document)
    bin_ = PROJECT / "node_modules" / ".bin"
    generated = subprocess.run(
        [node, str(bin_ / "openapi-typescript"), "openapi.json", "-o", "vdi-control.ts"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    compiled = subprocess.run(
        [node, str(bin_ / "tsc"), "-p", "tsconfig.json"], cwd=work, capture_output=True, text=True
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    return work


@pytest.fixture
async def server(settings: Settings, database_url: str) -> AsyncIterator[str]:
    """vdi-control on the simulated cluster, its stand-in agents reporting: sessions run."""
    port = free_port()
    app = simulated_app(settings, database_url, port)
    try:
        async with serve(app, port) as url:
            yield url
    finally:
        collect_closed_sockets()
        await _truncate(database_url)


async def _node(
    work: Path,
    script: str,
    env: dict[str, str],
    timeout_s: float,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """Run a compiled script to its end; `on_line` sees each line of its output as it comes."""
    node, _npm = _node_tools()
    process = await asyncio.create_subprocess_exec(
        node,
        str(work / "out" / script),
        cwd=work,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    lines: list[str] = []

    async def read() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            lines.append(raw.decode())
            if on_line is not None:
                on_line(lines[-1])
        await process.wait()

    try:
        await asyncio.wait_for(read(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{script} did not finish:\n{''.join(lines)}") from None
    assert process.returncode == 0, "".join(lines)
    return "".join(lines)


async def test_a_portal_flow_compiles_strictly_and_runs_against_the_server(
    compiled: Path, server: str
) -> None:
    output = await _node(
        compiled, "portal.js", {"VDI_URL": server, "VDI_TOKEN": TEST_BOOTSTRAP_TOKEN}, 120
    )
    assert "portal flow: ok" in output
    assert "time to desktop: " in output


class CuttingProxy:
    """A TCP proxy to the server that keeps each connection's request head and drops the first
    connection when told to (`cut`), as a network would."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: list[bytes] = []
        self.cut = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = not self.requests
        self.writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers.append(up_writer)
        up_writer.write(head)
        await up_writer.drain()
        tasks = {
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        }
        if first:
            tasks.add(asyncio.create_task(self.cut.wait()))
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for end in (writer, up_writer):
            end.close()
            with contextlib.suppress(Exception):
                await end.wait_closed()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for writer in self.writers:  # Server.close() leaves accepted connections open
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


async def test_a_stock_event_source_resumes_with_last_event_id_and_misses_nothing(
    compiled: Path, server: str
) -> None:
    async with httpx.AsyncClient(base_url=server, headers=ADMIN) as api:
        put = await api.put("/v1/templates/desktop", json={"image": "registry.test/vdi:1"})
        assert put.status_code in (200, 201)
        session = (
            await api.post("/v1/sessions", json={"user": "alice", "template": "desktop"})
        ).json()
        for _ in range(100):  # Running: a backlog of several events to resume within
            if (await api.get(f"/v1/sessions/{session['id']}")).json()["phase"] == "Running":
                break
            await asyncio.sleep(0.1)
        proxy = CuttingProxy(int(server.rsplit(":", 1)[1]))
        port = await proxy.start()

        def cut_after_the_first_event(line: str) -> None:
            if line.startswith("{"):  # node has an event: now the network fails
                proxy.cut.set()

        try:
            follower = asyncio.create_task(
                _node(
                    compiled,
                    "resume.js",
                    {
                        "VDI_STREAM_URL": f"http://127.0.0.1:{port}/v1/sessions/"
                        f"{session['id']}/events/stream",
                        "VDI_TOKEN": TEST_BOOTSTRAP_TOKEN,
                    },
                    60,
                    on_line=cut_after_the_first_event,
                )
            )
            for _ in range(300):  # until it has reconnected (eventsource waits 3 s or so)
                if len(proxy.requests) >= 2 or follower.done():
                    break
                await asyncio.sleep(0.1)
            assert len(proxy.requests) >= 2, "the stream was cut but never opened again"
            # The rest of the session's events come on the resumed stream only
            assert (await api.delete(f"/v1/sessions/{session['id']}")).status_code == 202
            output = await follower
        finally:
            await proxy.stop()
        stored = (await api.get(f"/v1/sessions/{session['id']}/events")).json()["items"]
    received: list[dict[str, Any]] = [
        json.loads(line) for line in output.splitlines() if line.startswith("{")
    ]
    assert [e["id"] for e in received] == [e["id"] for e in stored]  # once each, in order
    assert all(str(e["id"]) == e["lastEventId"] for e in received)
    assert received[-1]["type"] == "PhaseChanged"
    assert b"last-event-id" not in proxy.requests[0].lower()
    # The reconnect named an event the client had, at least the one it printed before the cut
    resumed = [
        line.split(":", 1)[1].strip()
        for line in proxy.requests[1].decode().split("\r\n")
        if line.lower().startswith("last-event-id:")
    ]
    assert len(resumed) == 1, proxy.requests[1]
    assert int(resumed[0]) >= received[0]["id"]
    assert resumed[0] in {str(e["id"]) for e in received}
    # and the events stored after it came after the reconnect (not all in the cut backlog)
    assert any(e["id"] > int(resumed[0]) for e in received)


async def test_the_stream_is_lf_framed_with_id_event_and_json_data(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, headers=ADMIN, timeout=10) as api:
        await api.put("/v1/templates/desktop", json={"image": "registry.test/vdi:1"})
        session = (
            await api.post("/v1/sessions", json={"user": "bob", "template": "desktop"})
        ).json()
        raw = b""
        async with api.stream("GET", f"/v1/sessions/{session['id']}/events/stream") as answer:
            assert answer.headers["content-type"].startswith("text/event-stream")
            async for chunk in answer.aiter_bytes():
                raw += chunk
                if raw.count(b"\n\n") >= 2:
                    break
        await api.delete(f"/v1/sessions/{session['id']}")
    assert b"\r" not in raw
    frames = [frame for frame in raw.decode().split("\n\n") if frame.startswith("id: ")]
    lines = dict(line.split(": ", 1) for line in frames[0].split("\n"))
    assert set(lines) == {"id", "event", "data"}
    event = json.loads(lines["data"])
    assert (str(event["id"]), event["type"]) == (lines["id"], lines["event"])
    assert event["data"] == {"from": None, "to": "Pending"}
