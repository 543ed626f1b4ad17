"""Text Postgres cannot store, refused at the edge with a 422 naming the field.

JSON allows "\\u0000" and unpaired UTF-16 surrogates ("\\ud800"), and Python decodes both into
a str; Postgres text cannot hold a NUL and UTF-8 cannot encode a lone surrogate, so either would
fail deep in a transaction as a 500. Every JSON body, query string and path is checked first."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import (
    FieldError,
    FieldLocation,
    UnsupportedEncoding,
    ValidationFailed,
    problem_response,
)

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
BODY_METHODS = {"POST", "PUT", "PATCH"}
# No document of this API nests deeper than a few levels; a parser recursing 5,000 levels
# deep runs out of stack (a 500). Refused before any parser sees it.
MAX_JSON_DEPTH = 32
_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in `body` (strings skipped), without parsing."""
    depth = deepest = 0
    for token in _STRUCTURE.finditer(body):
        char = token.group()[:1]
        if char in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif char in (b"]", b"}"):
            depth -= 1
    return deepest


# UTF-16 and UTF-32 byte order marks (UTF-32 LE starts as UTF-16 LE's); a UTF-8 one may be
# ignored (RFC 8259) and is: the bytes after it are scanned as they are parsed.
BYTE_ORDER_MARKS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")


def _not_utf8_json(body: bytes) -> bool:
    """UTF-16 or UTF-32: NUL bytes (never in UTF-8 JSON, where a NUL must be escaped) or their
    byte order mark."""
    return b"\x00" in body or body.startswith(BYTE_ORDER_MARKS)


def unstorable(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(dotted field path, the bad character named) for each string that cannot be stored."""
    if isinstance(value, str):
        if match := UNSTORABLE.search(value):
            yield path, _name(match.group())
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            yield from unstorable(key, child)
            yield from unstorable(item, child)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from unstorable(item, f"{path}.{index}" if path else str(index))


def _name(char: str) -> str:
    return (
        "a NUL character (\\u0000)"
        if char == "\x00"
        else f"an unpaired surrogate (\\u{ord(char):04x})"
    )


class TextGuardMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bad = [("path", "", name) for _, name in unstorable(scope.get("path", ""))]
        query = scope.get("query_string", b"").decode("latin-1")
        bad += [
            ("query", field, name)
            for key, value in parse_qsl(query, keep_blank_values=True)
            for field, name in unstorable({key: value})
        ]
        if bad:
            await self._refuse(scope, receive, send, bad)
            return
        if scope.get("method") not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if _not_utf8_json(body):
            # json.loads would detect UTF-16 or UTF-32 by itself (and decode a \u0000 this
            # guard did not see); JSON between systems is UTF-8 (RFC 8259 section 8.1).
            response = problem_response(
                None,
                status=UnsupportedEncoding.status,
                slug=UnsupportedEncoding.slug,
                title=UnsupportedEncoding.title,
                detail="The JSON body must be UTF-8 (RFC 8259); it has NUL bytes or a "
                "UTF-16/UTF-32 byte order mark",
            )
            await response(scope, receive, send)
            return
        # Most bodies (a heartbeat) need neither scan: fewer brackets than the depth limit
        # cannot nest deeper, and in JSON text a NUL or a lone surrogate can only be written
        # as a \u escape.
        if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH and b"\\u" not in body:
            await self.app(scope, replay_body(body, receive), send)
            return
        depth = json_depth(body)
        if depth > MAX_JSON_DEPTH:
            too_deep = FieldError(
                field="body",
                location=FieldLocation.body,
                message=f"nested {depth} levels deep (at most {MAX_JSON_DEPTH})",
                type="json_too_deep",
            )
            detail = (
                f"The JSON body nests {depth} levels deep; at most {MAX_JSON_DEPTH} are "
                "accepted. Send the document the API describes"
            )
            await _problem(scope, receive, send, [too_deep], detail)
            return
        try:
            document = json.loads(body) if body else None
        except ValueError:
            document = None  # not JSON: the route's own validation answers
        bad = [("body", field, name) for field, name in unstorable(document)]
        if bad:
            await self._refuse(scope, receive, send, bad)
            return
        await self.app(scope, replay_body(body, receive), send)

    @staticmethod
    async def _refuse(
        scope: Scope, receive: Receive, send: Send, bad: list[tuple[str, str, str]]
    ) -> None:
        errors = [
            FieldError(
                field=field or location,
                location=FieldLocation(location),
                message=f"contains {name}, which cannot be stored; remove it",
                type="unstorable_character",
            )
            for location, field, name in bad
        ]
        first = errors[0]
        await _problem(scope, receive, send, errors, f"{first.field}: {first.message}")


async def _problem(
    scope: Scope, receive: Receive, send: Send, errors: list[FieldError], detail: str
) -> None:
    """The 422 problem the routes' own validation gives, answered from the edge."""
    response = problem_response(
        None,
        status=ValidationFailed.status,
        slug=ValidationFailed.slug,
        title=ValidationFailed.title,
        detail=detail,
        errors=errors,
    )
    await response(scope, receive, send)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` whole once (it was read already), then the client's."""
    return replay([{"type": "http.request", "body": body, "more_body": False}], receive)


def replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives `messages` first (they were read already), then the client's."""

    async def replayed() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return replayed
