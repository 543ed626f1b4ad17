"""Which peers a session's TURN credential reaches through coturn started exactly as the Helm
chart starts it, in a private network namespace.

coturn runs with the arguments `charts/vdi-control/templates/coturn.yaml` renders (the secret
and the pod IP substituted as the kubelet does; a writable userdb and pidfile added, as this
machine is not the image). A TURN client (aioice) with the control plane's credentials allocates
a relay and tries to reach UDP peers on veths: private, cluster-like, loopback, link-local,
CGNAT and a public-range address. Prints, as JSON, which peers coturn refused (403 on the
permission) and which received the datagram; also what a TCP allocation (RFC 6062) and an
expired credential get.

    .venv/bin/python -m bench.turn_peers --args-json '["-c", "/run/coturn/turnserver.conf", ...]' \
        --secret-command-json '["sh", "-c", "..."]'
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aioice import stun
from aioice.turn import TurnClientUdpProtocol, create_turn_endpoint

from app.security import turn_credentials
from harness.network import reexec_in_private_network, stop, stun_binding_answered

IN_NETNS = "VDI_G2G_IN_NETNS"
POD_IP = "10.213.5.1"  # coturn's pod
CLIENT_IP = "10.213.5.2"  # a session's Selkies, or a browser
PEER_PORT = 40000
PEERS = {
    "public": "11.22.33.44",
    "private-192.168": "192.168.7.7",
    "cluster-service": "10.96.0.10",
    "private-172.16": "172.16.0.5",
    "cgnat": "100.64.0.9",
    "link-local-metadata": "169.254.169.254",
    "loopback": "127.0.0.1",
}
TCP_TRANSPORT = 0x06000000  # REQUESTED-TRANSPORT: TCP (RFC 6062)


def set_up_network() -> None:
    commands = [
        "ip link set lo up",
        "ip link add vdit0 type veth peer name vdit1",
        f"ip addr add {POD_IP}/24 dev vdit0",
        f"ip addr add {CLIENT_IP}/24 dev vdit1",
        "ip link set vdit0 up",
        "ip link set vdit1 up",
        "ip link add vdiq0 type veth peer name vdiq1",
        "ip link set vdiq0 up",
        "ip link set vdiq1 up",
    ]
    commands += [f"ip addr add {ip}/32 dev vdiq1" for ip in PEERS.values() if ip != "127.0.0.1"]
    for command in commands:
        subprocess.run(command.split(), check=True, capture_output=True)


CONFIG_DIR = "/run/coturn"  # the chart's memory volume for coturn's config file


def write_secret_file(command: list[str], secret: str, workdir: Path) -> None:
    """The chart's init container: its command, with the secret in its environment, writing
    into `workdir` instead of the pod's /run/coturn volume."""
    script = [part.replace(CONFIG_DIR, str(workdir)) for part in command]
    subprocess.run(script, env={"PATH": "/usr/bin:/bin", "VDI_TURN_SECRET": secret}, check=True)


def coturn_command(chart_args: list[str], secret: str, workdir: Path) -> list[str]:
    """The chart's arguments as the kubelet expands them ($(VAR) from the container's env),
    its config file in `workdir`."""
    expanded = [
        a.replace("$(VDI_TURN_SECRET)", secret)
        .replace("$(POD_IP)", POD_IP)
        .replace(CONFIG_DIR, str(workdir))
        for a in chart_args
    ]
    return [
        "turnserver",
        *expanded,
        f"--userdb={workdir / 'turndb'}",
        f"--pidfile={workdir / 'turnserver.pid'}",
    ]


class Received(asyncio.DatagramProtocol):
    def __init__(self, name: str, got: dict[str, bytes]) -> None:
        self.name, self.got = name, got

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got[self.name] = data


async def allocate(username: str, password: str, port: int) -> TurnClientUdpProtocol:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(
            (POD_IP, port),
            username=username,
            password=password,
            lifetime=600,
            channel_refresh_time=500,
        ),
        local_addr=(CLIENT_IP, 0),
        remote_addr=(POD_IP, port),
    )
    return client


def error_code(error: Exception) -> int | None:
    if isinstance(error, stun.TransactionFailed):
        return int(error.response.attributes["ERROR-CODE"][0])
    return None


async def _quota_probe(port: int, secret: str, quota: int) -> dict[str, Any]:
    expiry = datetime.now(UTC) + timedelta(minutes=15)
    hog, hog_password = turn_credentials(secret, uuid.uuid4(), expiry)
    held: list[TurnClientUdpProtocol] = []
    outcome: dict[str, Any] = {"quota": quota, "granted": 0, "refused": None}
    try:
        for _ in range(quota + 3):
            client = await allocate(hog, hog_password, port)
            held.append(client)
            try:
                await client.connect()
                outcome["granted"] += 1
            except Exception as error:
                outcome["refused"] = error_code(error)
                break
        other, other_password = turn_credentials(secret, uuid.uuid4(), expiry)
        client = await allocate(other, other_password, port)
        held.append(client)
        try:
            await client.connect()
            outcome["other_credential"] = "allocated"
        except Exception as error:
            outcome["other_credential"] = f"refused {error_code(error)}"
    finally:
        for client in held:
            client.transport.close()
    return outcome


async def probe(port: int, secret: str, user_quota: int = 0) -> dict[str, Any]:
    report: dict[str, Any] = {"peers": {}}
    got: dict[str, bytes] = {}
    loop = asyncio.get_running_loop()
    listeners = []
    for name, ip in PEERS.items():
        transport, _ = await loop.create_datagram_endpoint(
            functools.partial(Received, name, got), local_addr=(ip, PEER_PORT)
        )
        listeners.append(transport)
    session_id = uuid.uuid4()
    username, password = turn_credentials(
        secret, session_id, datetime.now(UTC) + timedelta(minutes=15)
    )
    client = await allocate(username, password, port)
    try:
        relayed = await client.connect()
        report["relayed_address"] = list(relayed)
        for name, ip in PEERS.items():
            outcome: dict[str, Any] = {"ip": ip}
            try:
                await client.send_data(f"hello {name}".encode(), (ip, PEER_PORT))
                outcome["permission"] = "granted"
            except Exception as error:
                outcome["permission"] = "refused"
                outcome["error_code"] = error_code(error)
            report["peers"][name] = outcome
        await asyncio.sleep(0.5)
        for name, outcome in report["peers"].items():
            outcome["received"] = got.get(name) == f"hello {name}".encode()

        # A TCP relay (RFC 6062): coturn must refuse it.
        request = stun.Message(
            message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST
        )
        request.attributes["REQUESTED-TRANSPORT"] = TCP_TRANSPORT
        second = await allocate(username, password, port)
        try:
            await second.request_with_retry(request)
            report["tcp_allocation"] = "granted"
        except Exception as error:
            report["tcp_allocation"] = f"refused {error_code(error)}"
        finally:
            second.transport.close()
    finally:
        client.transport.close()
        for transport in listeners:
            transport.close()

    # Relay to relay on this coturn (its own pod IP is allowed): how a browser and Selkies meet.
    endpoints = [
        await create_turn_endpoint(
            functools.partial(Received, name, got), (POD_IP, port), username, password
        )
        for name in ("relay-a", "relay-b")
    ]
    (a, _), (b, _) = endpoints
    a_address, b_address = a.get_extra_info("sockname"), b.get_extra_info("sockname")
    try:
        for _ in range(3):  # each side's first send creates its permission for the other
            a.sendto(b"hello relay-b", b_address)
            b.sendto(b"hello relay-a", a_address)
            await asyncio.sleep(0.3)
        report["relay_to_relay"] = {
            "addresses": [list(a_address), list(b_address)],
            "a_received": got.get("relay-a") == b"hello relay-a",
            "b_received": got.get("relay-b") == b"hello relay-b",
        }
    finally:
        a.close()
        b.close()

    # One credential cannot take the whole relay: at most --user-quota allocations at once,
    # and another session's credential still gets one.
    if user_quota:
        report["user_quota"] = await _quota_probe(port, secret, user_quota)

    # A credential past its expiry (a session that ended a while ago) opens no relay.
    old_user, old_password = turn_credentials(
        secret, session_id, datetime.now(UTC) - timedelta(seconds=5)
    )
    expired = await allocate(old_user, old_password, port)
    try:
        await expired.connect()
        report["expired_credential"] = "allocated"
    except Exception as error:
        report["expired_credential"] = f"refused {error_code(error)}"
    finally:
        expired.transport.close()
    return report


def run(chart_args: list[str], secret_command: list[str]) -> dict[str, Any]:
    secret = "turn-" + os.urandom(24).hex()
    port = next(
        (int(a.split("=", 1)[1]) for a in chart_args if a.startswith("--listening-port=")), 3478
    )
    with tempfile.TemporaryDirectory(prefix="vdi-turn-peers-") as tmp:
        workdir = Path(tmp)
        write_secret_file(secret_command, secret, workdir)
        command = coturn_command(chart_args, secret, workdir)
        log = workdir / "coturn.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 15
            while not stun_binding_answered(POD_IP, port, 0.2):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"coturn did not start: {log.read_text()[-2000:]}")
            quota = next(
                (int(a.split("=", 1)[1]) for a in chart_args if a.startswith("--user-quota=")), 0
            )
            report = asyncio.run(probe(port, secret, quota))
            # what the chart's probes connect to: coturn's TCP listener on its port
            try:
                socket.create_connection((POD_IP, port), timeout=2).close()
                report["tcp_listening"] = True
            except OSError:
                report["tcp_listening"] = False
        finally:
            stop(process)
        report["coturn_arguments"] = command
        report["secret_in_arguments"] = any(secret in a for a in command)
        return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--args-json", required=True, help="coturn's arguments, a JSON list")
    parser.add_argument(
        "--secret-command-json",
        required=True,
        help="the init container's command that writes the secret file, a JSON list",
    )
    args = parser.parse_args(argv)
    if os.environ.get(IN_NETNS) != "1":
        reexec_in_private_network(argv, module="bench.turn_peers")
    set_up_network()
    print(json.dumps(run(json.loads(args.args_json), json.loads(args.secret_command_json))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
