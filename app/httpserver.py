"""The HTTP/1.1 connection as uvicorn serves it, with the bounds its default parser lacks.

httptools (llhttp) has no limit on the request line or the header block, and its Python callbacks
join a header value piece by piece, so one header line that never ends costs memory and work
that grows with the square of its length, for everyone on the event loop. This protocol:

- counts the bytes of each request's head (request line and headers) before the parser sees
  them: a head over `MAX_HEAD_BYTES` is answered 431, a request target over `MAX_URL_BYTES` 414,
  and more than `MAX_HEADERS` header lines 431, each with `Connection: close`;
- closes a connection whose head has not arrived within `HEAD_TIMEOUT_S` of its first byte
  (or of the connection, before any byte): the slow-header (slowloris) attack, answered 408.

The bodies stay bounded by the routes (each reads at most its own limit, see `app/main.py`).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 32 * 1024  # nginx's default large_client_header_buffers is 4 x 8k
MAX_URL_BYTES = 8 * 1024
MAX_HEADERS = 100  # Go's net/http and h2 allow about this many
HEAD_TIMEOUT_S = 10.0
LINGER_S = 2.0  # after a refusal: read and drop what the client still sends, then close
LINGER_MAX_BYTES = 1024 * 1024  # ... but no more than this (then close at once)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing heads that are too large, too many or too slow."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # before a request's headers are complete
        self._head_seen = 0
        self._header_count = 0
        self._url_seen = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False  # answered with an error: the parser's further callbacks are moot
        self._discarded = 0  # bytes read and dropped since

    # -- the connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._discarded += len(data)
            if self._discarded > LINGER_MAX_BYTES and not self.transport.is_closing():
                self.transport.close()  # lingering is for the client's last bytes, not a flood
            return
        if self.parser is None or self.transport.is_closing():
            return
        if self._in_head:
            if self._head_timer is None:
                self._arm_head_timer()
            room = MAX_HEAD_BYTES - self._head_seen
            if len(data) > room:
                # feed what fits: if the head ends in it, the rest is body (or the next request)
                self._head_seen += room
                super().data_received(data[:room])
                if self._in_head:
                    self._refuse(
                        431,
                        "Request header fields too large: the request line and headers "
                        f"together may hold at most {MAX_HEAD_BYTES} bytes.",
                    )
                if self._refused or self.transport.is_closing():
                    return
                data = data[room:]
            else:
                self._head_seen += len(data)
        super().data_received(data)

    # -- the parser's callbacks

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._in_head = True
        self._head_seen = 0
        self._header_count = 0
        self._url_seen = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        if self._refused:
            return
        self._url_seen += len(url)
        if self._url_seen > MAX_URL_BYTES:
            self._refuse(414, f"Request target too long: at most {MAX_URL_BYTES} bytes.")
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            self._refuse(431, f"Too many header fields: at most {MAX_HEADERS}.")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()

    # -- refusals

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._in_head:  # armed at the connection and at each request's first byte
            self._refuse(408, f"Request headers not received within {HEAD_TIMEOUT_S:g} s.")

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with a plain-text reason and close; the request never reaches the app."""
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._cancel_head_timer()
        self.logger.warning("refused a request: %s", message)
        body = message.encode("ascii")
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        # A lingering close, as nginx does: closing with unread input would send a reset, and
        # the client's stack could drop our answer with it. Stop writing, drop what still
        # arrives (data_received ignores it now), and close after LINGER_S.
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


AGENT_ROUTES = re.compile(r"^/v1/sessions/[0-9a-fA-F-]{1,64}/(health|turn|access|desktop-audit)$")
AGENT_METHODS = {"health": "POST", "turn": "GET", "access": "GET", "desktop-audit": "POST"}
NOT_HERE = json.dumps(
    {
        "type": "https://vdi-control.dev/problems/not-found",
        "title": "Not found",
        "status": 404,
        "detail": "This listener serves only the agents' callbacks (POST /v1/sessions/{id}/health,"
        " GET /v1/sessions/{id}/turn, GET /v1/sessions/{id}/access, POST "
        "/v1/sessions/{id}/desktop-audit); the API is on the main port",
    }
).encode()


def agent_only(app: ASGIApp) -> ASGIApp:
    """`app` as the agents' listener serves it: their callbacks, nothing else (no
    /metrics, /docs or other routes reach the app from there)."""

    async def only_callbacks(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match = AGENT_ROUTES.match(scope.get("path", ""))
            if match is None or scope.get("method") != AGENT_METHODS[match.group(1)]:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 404,
                        "headers": [
                            (b"content-type", b"application/problem+json"),
                            (b"content-length", str(len(NOT_HERE)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": NOT_HERE})
                return
        elif scope["type"] != "lifespan":
            return  # no websockets here
        await app(scope, receive, send)

    return only_callbacks


def uvicorn_options() -> dict[str, Any]:
    """The settings every uvicorn that serves the API runs with (the CLI's, and the tests')."""
    return {"http": BoundedHttpToolsProtocol}
