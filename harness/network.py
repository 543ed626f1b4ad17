"""The private network a streaming harness runs in, and coturn on it: new network and PID
namespaces (the harness re-executes itself there), a veth pair with a private address at each
end, and a real TURN server with REST-API credentials. Processes started here are stopped by
their PID."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

IN_NETNS = "VDI_G2G_IN_NETNS"  # set in the re-executed harness
TURN_IP = "10.213.0.1"  # coturn, and the sender's host address
PEER_IP = "10.213.0.2"  # the viewer's host address
TURN_PORT = 3478


# -- the private network ------------------------------------------------------------------------


def reexec_in_private_network(argv: list[str], module: str) -> None:
    """Run this module again in new network and PID namespaces: the veth pair, coturn and every
    peer live and die there (the PID namespace kills whatever is left when the harness ends)."""
    if shutil.which("unshare") is None:
        raise SystemExit(f"{module}: `unshare` (util-linux) is needed")
    command = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    os.execvpe(
        command[0],
        [*command, sys.executable, "-m", module, *argv],
        {**os.environ, IN_NETNS: "1"},
    )


def set_up_network() -> None:
    """lo up, and a veth pair with a private address at each end. Not named veth*: libnice
    ignores interfaces with that prefix."""
    for command in (
        "ip link set lo up",
        "ip link add vdig0 type veth peer name vdig1",
        f"ip addr add {TURN_IP}/24 dev vdig0",
        f"ip addr add {PEER_IP}/24 dev vdig1",
        "ip link set vdig0 up",
        "ip link set vdig1 up",
    ):
        subprocess.run(command.split(), check=True, capture_output=True)


# -- coturn -------------------------------------------------------------------------------------


def stun_binding_answered(host: str, port: int, timeout_s: float) -> bool:
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)  # RFC 5389 Binding request
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(timeout_s)
        probe.sendto(request, (host, port))
        try:
            answer, _ = probe.recvfrom(2048)
        except TimeoutError:
            return False
    return answer[:2] == b"\x01\x01" and answer[8:20] == request[8:20]


@contextlib.contextmanager
def coturn(
    workdir: Path,
    turn_secret: str,
    denied_peers: tuple[str, ...] = (),
    *,
    host: str = TURN_IP,
    port: int = TURN_PORT,
) -> Iterator[Path]:
    """turnserver on host:port (TURN_IP:3478 unless told), REST-API credentials
    (use-auth-secret). The secret goes in a 0600 config file, never on the command line.
    `denied_peers` (coturn ranges, `a-b`) are refused as peers; the relay's own address stays
    allowed, so relay-to-relay always works. On a loopback `host` (a test on this host's
    loopback, no namespace) loopback peers are allowed. Yields its log file."""
    config = workdir / "turnserver.conf"
    peers = [f"denied-peer-ip={r}" for r in denied_peers]
    if denied_peers:
        peers.append(f"allowed-peer-ip={host}")
    if host.startswith("127."):
        peers.append("allow-loopback-peers")
    log = workdir / "turnserver.log"
    config.touch(mode=0o600)
    config.write_text(
        "\n".join(
            [
                f"listening-ip={host}",
                f"relay-ip={host}",
                f"listening-port={port}",
                "min-port=49152",
                "max-port=49500",
                "use-auth-secret",
                f"static-auth-secret={turn_secret}",
                "realm=vdi.test",
                "fingerprint",
                "no-tls",
                "no-dtls",
                "no-cli",
                f"userdb={workdir / 'turndb'}",
                f"pidfile={workdir / 'turnserver.pid'}",
                f"log-file={log}",
                "simple-log",
                *peers,
                "",
            ]
        )
    )
    process = subprocess.Popen(
        ["turnserver", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 15
        while not stun_binding_answered(host, port, 0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"coturn did not start: {tail(log)}")
        yield log
    finally:
        stop(process)


class DelayedLink:
    """A UDP link with a one-way delay that can be changed while it carries traffic: datagrams
    sent to `port` go on to `upstream` and the answers back, each held `delay_s` (so a round
    trip takes 2 x delay_s more), one upstream socket per sender, as a NAT keeps them. For a
    host without netem (tc's delay): put it in front of coturn and a relayed WebRTC connection
    sees the delay in its round trip. One thread; `with` starts and stops it."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.host = host
        self.delay_s = 0.0
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.listener.bind((host, 0))
        self.port: int = self.listener.getsockname()[1]
        self.carried = 0  # datagrams, both ways
        self._outward: dict[tuple[str, int], socket.socket] = {}
        self._sender: dict[socket.socket, tuple[str, int]] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delayed-link", daemon=True)

    def __enter__(self) -> DelayedLink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)
        for sock in (self.listener, *self._sender):
            sock.close()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        order = itertools.count()
        due: list[tuple[float, int, socket.socket, bytes, tuple[str, int]]] = []
        while not self._stopped.is_set():
            wait = 0.05 if not due else min(0.05, max(0.0, due[0][0] - time.monotonic()))
            for key, _ in selector.select(wait):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data, sender = sock.recvfrom(65536)
                except OSError:
                    continue
                at = time.monotonic() + self.delay_s
                if sock is self.listener:
                    out = self._outward.get(sender)
                    if out is None:
                        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        out.bind((self.host, 0))
                        self._outward[sender] = out
                        self._sender[out] = sender
                        selector.register(out, selectors.EVENT_READ)
                    heapq.heappush(due, (at, next(order), out, data, self.upstream))
                else:
                    heapq.heappush(due, (at, next(order), self.listener, data, self._sender[sock]))
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, _, via, data, to = heapq.heappop(due)
                with contextlib.suppress(OSError):
                    via.sendto(data, to)
                    self.carried += 1
        selector.close()


def stop(process: subprocess.Popen[Any], timeout_s: float = 10) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
