"""Selkies 2.x with a live control socket for the agent: run by Selkies' own Python in place of
the `selkies` command (`python selkies_live.py`), it starts Selkies unchanged and serves, on the
unix socket `VDI_LIVE_SOCKET` (0600, in a directory of the agent's), one JSON request per line:

    {"framerate": 30, "video_bitrate": 4000}  ->  {"applied": {"framerate": 30, ...}}
    {"peers": true}  ->  {"peers": {"<page id>": {"token": "<digest>", "address": "<ip>"}}}

Each value is a ceiling the agent holds (spec Fallback 3: 30 fps under CPU load; Check 4: a lower
bitrate under latency), applied to the running stream through Selkies' own live setters (the
`_VIDEO_SETTING_APPLIERS` of `selkies/webrtc_mode.py`): the viewer stays connected. A setting the
page sends later is held under the ceiling too; `null` lifts a ceiling and restores the value
the agent started Selkies with. `peers` names the token each connected page opened with (by
the first 32 hex digits of its SHA-256, as the agent names it: never the token itself) and the
address its signaling came from: who is watching, which Selkies' `/api/sessions` does not say.

Standalone on purpose: it runs in Selkies' interpreter, which has Selkies and not the agent.
It touches two internals of Selkies 2.1.0 (`WebRTCService._apply_display_setting`,
`CentralizedStreamServer.register_service`), checked at start: if they are missing it exits
with EX_SOFTWARE (70) before serving a viewer, and the agent starts plain `selkies` instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

LIVE = ("framerate", "video_bitrate")
EX_SOFTWARE = 70


def main() -> None:
    try:
        from selkies import __main__ as selkies_main
        from selkies.stream_server import CentralizedStreamServer
        from selkies.webrtc_mode import WebRTCService
    except ImportError as error:
        print(f"selkies_live: {error}", file=sys.stderr)
        sys.exit(EX_SOFTWARE)
    apply_setting = getattr(WebRTCService, "_apply_display_setting", None)
    register = getattr(CentralizedStreamServer, "register_service", None)
    run = getattr(CentralizedStreamServer, "run", None)
    if apply_setting is None or register is None or run is None:
        print("selkies_live: this Selkies has no live setters to drive", file=sys.stderr)
        sys.exit(EX_SOFTWARE)
    path = os.environ.pop("VDI_LIVE_SOCKET", "")
    started = {
        "framerate": _number(os.environ.get("SELKIES_FRAMERATE")),
        "video_bitrate": _number(os.environ.get("SELKIES_VIDEO_BITRATE")),
    }
    ceilings: dict[str, float | None] = dict.fromkeys(LIVE)
    services: list[Any] = []

    def registering(self: Any, name: str, service: Any) -> None:
        if name == "webrtc":
            services.append(service)
        register(self, name, service)

    async def applying(self: Any, display_id: str, key: str, value: Any) -> None:
        ceiling = ceilings.get(key)
        if ceiling is not None and isinstance(value, int | float) and value > ceiling:
            value = type(value)(ceiling)  # the page's own choice, held under the agent's cap
        await apply_setting(self, display_id, key, value)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await answer(line)).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    async def answer(line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except json.JSONDecodeError as error:
            return {"error": f"not JSON: {error}"}
        if request == {"peers": True}:
            return {"peers": _peers(services[-1]) if services else {}}
        if not isinstance(request, dict) or not set(request) <= set(LIVE):
            return {"error": f"expected an object of {', '.join(LIVE)}"}
        if not services:
            return {"error": "the WebRTC service is not up"}
        service = services[-1]
        applied = {}
        for key, value in request.items():
            if value is not None and not isinstance(value, int | float):
                return {"error": f"{key}: a number or null"}
            ceilings[key] = value
            target = value if value is not None else started[key]
            if target is not None:
                await apply_setting(service, "primary", key, int(target))
            applied[key] = getattr(service.args, key, None)
        return {"applied": applied}

    async def running(self: Any) -> None:
        server = await asyncio.start_unix_server(handle, path) if path else None
        if path:
            os.chmod(path, 0o600)
        try:
            await run(self)
        finally:
            if server is not None:
                server.close()

    CentralizedStreamServer.register_service = registering
    CentralizedStreamServer.run = running
    WebRTCService._apply_display_setting = applying
    sys.argv[0] = "selkies"
    _name_process("selkies")  # what ps, pgrep and the agent's own checks look for
    selkies_main.main()


def _digest(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()[:32]


def _peers(service: Any) -> dict[str, dict[str, str | None]]:
    """The WebRTC pages (`rtc_app.peer_connections`, the ids `/api/sessions` lists), each with
    its token's digest and its signaling peer's address (`peer_manager.peers`)."""
    addresses: dict[str, str | None] = {}
    untokened: list[str | None] = []
    manager = getattr(service, "peer_manager", None)
    for peer in list(getattr(manager, "peers", {}).values()):
        if getattr(peer, "peer_type", None) != "client":
            continue
        raddr = getattr(peer, "raddr", None)
        address = str(raddr[0]) if isinstance(raddr, tuple | list) and raddr else None
        token = getattr(peer, "client_token", None)
        if token:
            addresses[token] = address
        else:
            untokened.append(address)
    pages: dict[str, dict[str, str | None]] = {}
    connections = getattr(getattr(service, "rtc_app", None), "peer_connections", {}) or {}
    for page_id, page in list(connections.items()):
        token = page.get("client_token") if isinstance(page, dict) else None
        # without tokens (no secure mode) an address is known only when one page connects
        address = addresses.get(token) if token else (untokened[0] if len(untokened) == 1 else None)
        pages[str(page_id)] = {"token": _digest(token) if token else None, "address": address}
    return pages


def _name_process(name: str) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


if __name__ == "__main__":
    main()
