"""The private network a streaming harness runs in, and coturn on it: new network and PID
namespaces (the harness re-executes itself there), a veth pair with a private address at each
end, and a real TURN server with REST-API credentials. Processes started here are stopped by
their PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
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
def coturn(workdir: Path, turn_secret: str, denied_peers: tuple[str, ...] = ()) -> Iterator[Path]:
    """turnserver on TURN_IP:3478, REST-API credentials (use-auth-secret). The secret goes in a
    0600 config file, never on the command line. `denied_peers` (coturn ranges, `a-b`) are
    refused as peers; the relay's own address stays allowed, so relay-to-relay always works.
    Yields its log file."""
    config = workdir / "turnserver.conf"
    peers = [f"denied-peer-ip={r}" for r in denied_peers]
    if denied_peers:
        peers.append(f"allowed-peer-ip={TURN_IP}")
    log = workdir / "turnserver.log"
    config.touch(mode=0o600)
    config.write_text(
        "\n".join(
            [
                f"listening-ip={TURN_IP}",
                f"relay-ip={TURN_IP}",
                f"listening-port={TURN_PORT}",
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
        while not stun_binding_answered(TURN_IP, TURN_PORT, 0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"coturn did not start: {tail(log)}")
        yield log
    finally:
        stop(process)


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
