"""Local desktops' X displays need the session's cookie (issue 27, finding 2): a real Xvfb started
as the local runtime starts it refuses a client without the cookie and accepts one with it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from app.runtimes.local import XAUTH_COOKIE, write_xauthority


def x_handshake(display: str, cookie: bytes | None) -> bool:
    """The X11 connection setup on the display's unix socket; True when the server accepts."""
    number = display.lstrip(":").split(".")[0]
    name, data = (XAUTH_COOKIE, cookie) if cookie is not None else (b"", b"")

    def padded(value: bytes) -> bytes:
        return value + b"\0" * (-len(value) % 4)

    request = b"l\0" + (11).to_bytes(2, "little") + (0).to_bytes(2, "little")
    request += len(name).to_bytes(2, "little") + len(data).to_bytes(2, "little") + b"\0\0"
    request += padded(name) + padded(data)
    path = f"/tmp/.X11-unix/X{number}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        # the file in /tmp where this /tmp is the display's; else Linux's abstract socket,
        # which every process in the network namespace reaches
        sock.connect(path if os.path.exists(path) else "\0" + path)
        sock.sendall(request)
        answer = sock.recv(1)
    return answer == b"\x01"  # 0: Failed, 1: Success, 2: Authenticate


def test_the_display_refuses_a_client_without_the_sessions_cookie(tmp_path: Path) -> None:
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.fail("Xvfb is not installed (.ci/run installs it)")
    cookie = os.urandom(16)
    authority = write_xauthority(tmp_path / "Xauthority", cookie)
    assert oct(authority.stat().st_mode & 0o777) == "0o600"
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [xvfb, "-displayfd", str(write_end), "-screen", "0", "640x480x24"]
        + ["-nolisten", "tcp", "-auth", str(authority)],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end) as reader:
            display = ":" + reader.readline().strip()
        assert not x_handshake(display, None)  # another account's client: refused
        assert not x_handshake(display, os.urandom(16))  # a guessed cookie: refused
        assert x_handshake(display, cookie)  # the session's own clients
        # and the file works for real X clients through XAUTHORITY
        xterm_env = {"DISPLAY": display, "XAUTHORITY": str(authority), "PATH": "/usr/bin:/bin"}
        probe = shutil.which("xdpyinfo") or shutil.which("xset")
        if probe is not None:
            args = [probe] if probe.endswith("xdpyinfo") else [probe, "q"]
            assert subprocess.run(args, env=xterm_env, capture_output=True).returncode == 0
    finally:
        process.terminate()
        process.wait(timeout=10)
