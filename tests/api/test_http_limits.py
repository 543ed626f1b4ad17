"""The HTTP connection's bounds (issue 27, finding 15): a head that is too large, has too many
lines or arrives too slowly is refused with a status and a closed connection, before the app or
the parser's quadratic joins see it; ordinary requests, bodies and pipelining are untouched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI, Request

from app import httpserver
from harness.servers import serve


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    @app.post("/echo-size")
    async def echo_size(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    return app


@pytest.fixture
async def address() -> AsyncIterator[tuple[str, int]]:
    async with serve(_app()) as url:
        parts = urlsplit(url)
        assert parts.hostname
        assert parts.port
        yield parts.hostname, parts.port


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and the whole rest of the stream, which must end (the server closes it)."""
    data = await asyncio.wait_for(reader.read(), timeout=15)
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ", 2)[1]), data


async def _ping(host: str, port: int) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    status, _ = await _answer(reader)
    writer.close()
    return status


async def test_a_header_line_that_never_ends_is_refused_431_and_the_connection_closed(
    address: tuple[str, int],
) -> None:
    host, port = address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Long: ")
    sent = 0
    try:
        for _ in range(512):  # up to 8 MiB, unless the server hangs up first
            writer.write(b"a" * 16384)
            await writer.drain()
            sent += 16384
            if reader.at_eof() or len(reader._buffer):  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0)
    except ConnectionError:
        pass  # closed under us: what we want, the answer is already in the buffer
    status, data = await _answer(reader)
    assert status == 431
    assert b"connection: close" in data.lower()
    assert str(httpserver.MAX_HEAD_BYTES).encode() in data  # says what the limit is
    assert sent < 4 * 1024 * 1024, "the server read megabytes of one header line"
    writer.close()
    assert await _ping(host, port) == 200  # and everyone else is still served


async def test_too_many_header_lines_are_refused_431(address: tuple[str, int]) -> None:
    host, port = address
    reader, writer = await asyncio.open_connection(host, port)
    lines = b"".join(b"X-%d: v\r\n" % n for n in range(httpserver.MAX_HEADERS + 1))
    writer.write(b"GET /ping HTTP/1.1\r\nHost: t\r\n" + lines + b"\r\n")
    status, data = await _answer(reader)
    assert status == 431
    assert b"Too many header fields" in data
    writer.close()


async def test_a_request_target_over_the_limit_is_refused_414(address: tuple[str, int]) -> None:
    host, port = address
    reader, writer = await asyncio.open_connection(host, port)
    target = b"/ping?q=" + b"x" * (httpserver.MAX_URL_BYTES + 1)
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _ = await _answer(reader)
    assert status == 414
    writer.close()


async def test_slow_headers_time_out_408_and_a_silent_connection_is_closed(
    address: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpserver, "HEAD_TIMEOUT_S", 0.5)
    host, port = address
    # a slowloris: one header byte at a time, never the blank line
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    for _ in range(20):
        try:
            writer.write(b"a")
            await writer.drain()
        except ConnectionError:
            break
        if reader.at_eof() or len(reader._buffer):  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.1)
    status, _ = await _answer(reader)
    assert status == 408
    writer.close()
    # a connection that never sends a byte is not kept either
    reader, writer = await asyncio.open_connection(host, port)
    status, _ = await _answer(reader)
    assert status == 408
    writer.close()


async def test_ordinary_requests_large_bodies_and_pipelining_are_untouched(
    address: tuple[str, int],
) -> None:
    host, port = address
    reader, writer = await asyncio.open_connection(host, port)
    body = b"b" * (3 * httpserver.MAX_HEAD_BYTES)  # head and body arrive in one write
    big = b"POST /echo-size HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
    # headers near (under) the limit still pass
    filler = b"X-Fill: " + b"f" * (httpserver.MAX_HEAD_BYTES - 200) + b"\r\n"
    ping = b"GET /ping HTTP/1.1\r\nHost: t\r\n" + filler + b"\r\n"
    last = b"GET /ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    writer.write(big + body + ping + last)
    data = await asyncio.wait_for(reader.read(), timeout=15)
    assert data.count(b"HTTP/1.1 200 OK") == 3, data[:500]
    assert b'{"size":%d}' % len(body) in data
    writer.close()
