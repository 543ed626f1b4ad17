"""A real desktop session end to end, in a private network namespace: coturn with the control
plane's TURN secret, the control plane on the fake cluster, `vdi-agent run` with the pod's
environment (Secret resolved) on its own Xvfb screen supervising the real Selkies 2.x (installed
by agent/install-selkies.sh, as the session image installs it), and a real headless Chromium
opening Selkies' own page with the credentials from GET /v1/sessions/{id}/connection, relay only.

Prints the browser's figures (getStats: fps, jitter, framesDecoded, candidate types), the CPU
Selkies and Chromium took, what the session said, and the checks of supervision (wrong password,
a killed Selkies, stopping the agent).

    .venv/bin/python -m bench.selkies_session [--seconds 10] [--json] [--screenshot out.png]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from aiohttp import web

from app.cluster.manifests import USER_LABEL, object_name
from bench.glass_to_glass import REPO, screen
from harness import browser_viewer
from harness import traefik as proxying
from harness.browser_viewer import READ_STATS, chromium, chromium_processes
from harness.desktop_use import (
    READ_AUDIO,
    arrives,
    audio_until,
    click,
    display_size,
    lands,
    play_tone,
    pointer,
    sound_server,
    type_keys,
    viewport,
)
from harness.network import PEER_IP, coturn, reexec_in_private_network, set_up_network, stop
from harness.plane import NAMESPACE, ControlPlane, control_plane, start_session
from kubefake import FakeKubernetes, start_fake_cluster

IN_NETNS = "VDI_G2G_IN_NETNS"
SELKIES_VENV = REPO / ".venv-selkies"
SESSION_PORT = 8080
# The session pod: its own network namespace, as on a node. The relay refuses the pod network as
# a peer (as the chart's coturn refuses the cluster's ranges), so a browser reaches Selkies only
# through the relay-to-relay path: relay candidates on both ends.
POD_NETNS = "vdipod"
POD_GATEWAY_IP = "10.213.1.1"
POD_IP = "10.213.1.2"
POD_NETWORK = "10.213.1.0-10.213.1.255"
DOMAIN = "vdi.test"
# bob's "pod": a small web server on a loopback address that says whose it is (no desktop):
# Traefik must send bob's host there and alice's to her desktop, never the other way round.
BOB_POD_IP = "127.0.0.5"


def set_up_pod_network() -> None:
    """The pod's network namespace behind a veth pair, routed to the relay and the control
    plane. /run/netns is a tmpfs of this mount namespace: nothing is left on the host."""
    Path("/run/netns").mkdir(parents=True, exist_ok=True)
    for command in (
        "mount -t tmpfs tmpfs /run/netns",
        f"ip netns add {POD_NETNS}",
        f"ip link add vdip0 type veth peer name vdip1 netns {POD_NETNS}",
        f"ip addr add {POD_GATEWAY_IP}/24 dev vdip0",
        "ip link set vdip0 up",
        f"ip -n {POD_NETNS} link set lo up",
        f"ip -n {POD_NETNS} addr add {POD_IP}/24 dev vdip1",
        f"ip -n {POD_NETNS} link set vdip1 up",
        f"ip -n {POD_NETNS} route add default via {POD_GATEWAY_IP}",
    ):
        subprocess.run(command.split(), check=True, capture_output=True)


def selkies_processes() -> list[psutil.Process]:
    """Every process running from the Selkies venv (this PID namespace holds only ours)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(SELKIES_VENV) in cmdline:
            found.append(process)
    return found


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


async def wait_for(what: str, check: Any, timeout_s: float, interval_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(interval_s)


@contextlib.contextmanager
def desktop(display: str, home: Path) -> Iterator[None]:
    """The session image's desktop (agent/entrypoint.sh): openbox, and an xterm in the user's
    home. Stopped by their PIDs."""
    env = {"DISPLAY": display, "HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    shell = "uname -srm; echo; ls -la; echo; exec sh -i"
    processes = [
        subprocess.Popen(
            command, env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for command in (
            ["openbox"],
            [
                "xterm",
                "-geometry",
                "90x30+520+60",
                "-title",
                "alice@desktop",
                "-e",
                "sh",
                "-c",
                shell,
            ],
        )
    ]
    try:
        time.sleep(1.0)  # mapped and drawn before Selkies' first frame
        yield
    finally:
        for process in processes:
            stop(process)


@contextlib.contextmanager
def agent(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`vdi-agent run` as the pod runs it; stopped by its PID (SIGTERM, as the kubelet does)."""
    with log.open("wb") as out:
        process = subprocess.Popen(  # `ip netns exec` execs: the PID is the agent's
            [
                "ip",
                "netns",
                "exec",
                POD_NETNS,
                sys.executable,
                "-c",
                "from agent.cli import main; main()",
                "run",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        stop(process, 20)


@dataclass
class Desktop:
    """The session's desktop as its applications reach it: its X display, its sound server
    and the user's home."""

    x: dict[str, str]
    sound: dict[str, str]
    home: Path


# inside the desktop's terminal (xterm 90x30+520+60), clear of the painter's window at 0,0
IN_THE_TERMINAL = (700, 250)


def use_the_desktop(driver: Any, desktop: Desktop) -> dict[str, Any]:
    """What a person does on Selkies' page, and what the desktop saw: the page's size taken by
    the display (resize on), a click where it was made, a command typed into the terminal
    writing into the home, and a tone played on the desktop heard in the page (Chromium's
    inbound-rtp audio), silent again once it stops."""
    used: dict[str, Any] = {"viewport": viewport(driver)}
    used["resized"] = arrives(lambda: display_size(desktop.x), used["viewport"], 15)
    used["display_size"] = display_size(desktop.x)
    click(driver, *IN_THE_TERMINAL)
    used["click_landed"] = lands(desktop.x, *IN_THE_TERMINAL)
    used["pointer"] = pointer(desktop.x)
    marker = uuid.uuid4().hex[:8]
    typed = desktop.home / "typed.txt"
    type_keys(driver, f"echo typed {marker} > typed.txt\n")
    used["typed"] = arrives(
        lambda: typed.read_text() if typed.exists() else "", f"typed {marker}\n", 15
    )
    offered = driver.execute_async_script(READ_AUDIO)
    used["audio_offered"] = offered.get("offered_audio")
    used["audio_answered"] = offered.get("answered_audio")
    player = play_tone(desktop.sound, amplitude=0.4)
    try:
        used["tone"] = audio_until(driver, lambda a: (a.get("level") or 0) > 0.1, 20)
    finally:
        stop(player)
    used["after_tone"] = audio_until(driver, lambda a: (a.get("level") or 0) < 0.01, 15)
    return used


def conditions(session: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        c["type"]: {"status": c["status"], "reason": c["reason"], "message": c["message"]}
        for c in session["conditions"]
    }


@dataclass
class Pod:
    """A Selkies session as the harness runs it: its control plane, its id, the agent's pod
    environment and a work directory (logs, the user's home); routed, the Traefik in front of
    it and the test CA its certificate comes from."""

    plane: ControlPlane
    session_id: str
    env: dict[str, str]
    workdir: Path
    home: Path
    fake: FakeKubernetes
    proxy: proxying.Traefik | None = None
    certificates: proxying.Certificates | None = None

    @property
    def url(self) -> str:
        """Where a browser opens the desktop: through Traefik (https, alice's host), or the
        pod's own address."""
        if self.proxy is None:
            return f"http://{POD_IP}:{SESSION_PORT}/"
        return f"https://alice.{DOMAIN}:{self.proxy.https_port}/"

    def browser_arguments(self) -> tuple[str, ...]:
        """Chromium resolves the session hosts to Traefik's address and accepts the test
        certificate by its public key only (not every certificate error)."""
        if self.proxy is None or self.certificates is None:
            return ()
        return (
            f"--host-resolver-rules=MAP *.{DOMAIN} {self.proxy.host}",
            f"--ignore-certificate-errors-spki-list={self.certificates.spki_sha256}",
        )

    def agent_environment(
        self, display: str, sound: str | None = None, **extra: str
    ) -> dict[str, str]:
        """The pod's environment plus what the session image provides: the display, the home,
        the Selkies 2.x install, and its PulseAudio where `sound` names one (PULSE_SERVER, as
        the entrypoint runs it), else no audio."""
        audio = {"PULSE_SERVER": sound} if sound else {"SELKIES_AUDIO_ENABLED": "false"}
        return {
            **self.env,
            "DISPLAY": display,
            "HOME": str(self.home),
            "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
            "VDI_SELKIES_COMMAND": str(SELKIES_VENV / "bin" / "selkies"),
            **audio,
            **extra,
        }


def pod_address(raw: dict[str, Any]) -> str | None:
    """The kubelet's address for a pod: alice's is her network namespace's."""
    user = (raw["metadata"].get("labels") or {}).get(USER_LABEL)
    return {"alice": POD_IP, "bob": BOB_POD_IP}.get(str(user))


@contextlib.asynccontextmanager
async def selkies_pod(template: dict[str, Any], *, routed: bool = False) -> AsyncIterator[Pod]:
    """coturn (refusing the pod network as a peer), the control plane on the fake cluster, and
    alice's session of a Selkies CPU template with its pod. Routed: a real Traefik in front,
    TLS with a test CA's wildcard certificate for the session domain in the Secret the
    IngressRoutes name."""
    turn_secret = "turn-" + os.urandom(24).hex()
    with tempfile.TemporaryDirectory(prefix="vdi-selkies-") as tmp:
        workdir = Path(tmp)
        settings = {"VDI_BASE_DOMAIN": DOMAIN, "VDI_TLS_SECRET_NAME": proxying.TLS_SECRET}
        certificates = proxying.make_certificates(DOMAIN) if routed else None
        with coturn(workdir, turn_secret, denied_peers=(POD_NETWORK,)):
            async with (
                start_fake_cluster(pod_ip=pod_address) as (fake, fake_url),
                control_plane(workdir, fake_url, turn_secret, POD_GATEWAY_IP, settings) as plane,
                contextlib.AsyncExitStack() as stack,
            ):
                proxy = None
                if certificates is not None:
                    async with httpx.AsyncClient(base_url=fake_url) as http:
                        secret = proxying.tls_secret(certificates, NAMESPACE)
                        created = await http.post(
                            f"/api/v1/namespaces/{NAMESPACE}/secrets", json=secret
                        )
                        created.raise_for_status()
                        store = await http.post(
                            f"/apis/traefik.io/v1alpha1/namespaces/{NAMESPACE}/tlsstores",
                            json=proxying.default_tls_store(NAMESPACE),
                        )
                        store.raise_for_status()
                    proxy = await stack.enter_async_context(
                        proxying.traefik(workdir, fake_url, NAMESPACE)
                    )
                session_id, env = await start_session(
                    plane,
                    fake,
                    "selkies-cpu",
                    {
                        "image": "vdi/session-selkies:bench",
                        "gpu": 0,
                        "streamer": "selkies",
                        **template,
                    },
                )
                home = workdir / "home"
                home.mkdir()
                yield Pod(plane, session_id, env, workdir, home, fake, proxy, certificates)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {}
    async with selkies_pod({}, routed=True) as pod:
        # A moving picture in a window keeps frames flowing on an idle desktop.
        async with screen(1280, 720, 30, "ball", 0, window=(480, 270)) as display:
            pulse = pod.workdir / "pulse"
            with sound_server(pulse) as sound:
                env = pod.agent_environment(display, sound)
                log = pod.workdir / "agent.log"
                with desktop(display, pod.home), agent(env, log) as agent_process:
                    try:
                        used = Desktop(
                            {"DISPLAY": display, "PATH": "/usr/bin:/bin"},
                            {"PULSE_SERVER": sound, "HOME": str(pulse)},
                            pod.home,
                        )
                        await session_checks(
                            args, pod, agent_process, report, env["SELKIES_TURN_USERNAME"], used
                        )
                    except Exception:
                        report["agent_log"] = log.read_text()[-6000:]
                        raise
        await routing_checks(pod, report)
    return report


async def through_traefik(pod: Pod, host: str, path: str = "/", **kwargs: Any) -> httpx.Response:
    """A request as a browser makes it: https to Traefik for `host`, checked against the CA."""
    assert pod.proxy is not None
    assert pod.certificates is not None
    return await proxying.get(pod.proxy, host, path, ca_pem=pod.certificates.ca_pem, **kwargs)


async def routing_checks(pod: Pod, report: dict[str, Any]) -> None:
    """What Traefik did with our objects: alice's router (read back from its API), an unknown
    host, bob's host reaching only bob's pod, the router gone after DELETE, its errors."""
    assert pod.proxy is not None
    proxy = pod.proxy
    alice, bob = f"alice.{DOMAIN}", f"bob.{DOMAIN}"
    routing: dict[str, Any] = report.setdefault("traefik", {})
    routing["router"] = await proxy.router_for(alice)
    routing["unknown_host_status"] = (await through_traefik(pod, f"mallory.{DOMAIN}")).status_code

    async def bob_pod(request: web.Request) -> web.Response:
        return web.Response(text="bob-pod")

    app = web.Application()
    app.router.add_get("/{tail:.*}", bob_pod)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, BOB_POD_IP, SESSION_PORT).start()
    try:
        created = await pod.plane.request(
            "POST", "/v1/sessions", json={"user": "bob", "template": "selkies-cpu"}
        )
        await proxying.wait_router(proxy, bob)

        async def bob_answers() -> httpx.Response | None:
            response = await through_traefik(pod, bob)
            return response if response.status_code == 200 else None

        await wait_for("bob's host answering", bob_answers, 20)
        routing["bob_host_bodies"] = sorted(
            {(await through_traefik(pod, bob)).text for _ in range(5)}
        )
        answer = await through_traefik(pod, alice)
        routing["alice_host_after_bob"] = {"status": answer.status_code, "body": answer.text}
        await pod.plane.request("DELETE", f"/v1/sessions/{created['id']}")
    finally:
        await runner.cleanup()

    started = time.monotonic()
    await pod.plane.request("DELETE", f"/v1/sessions/{pod.session_id}")
    await proxying.wait_router(proxy, alice, present=False, timeout_s=15)
    routing["router_gone_after_delete_s"] = round(time.monotonic() - started, 2)

    async def gone() -> httpx.Response | None:
        response = await through_traefik(pod, alice)
        return response if response.status_code == 404 else None

    routing["after_delete_status"] = (await wait_for("404 after DELETE", gone, 15)).status_code
    routing["route_object_left"] = pod.fake.find(
        "ingressroutes", NAMESPACE, object_name(uuid.UUID(pod.session_id))
    )
    routing["errors"] = proxy.errors()


async def session_checks(
    args: argparse.Namespace,
    pod: Pod,
    agent_process: subprocess.Popen[bytes],
    report: dict[str, Any],
    pod_turn_username: str,
    used: Desktop,
) -> None:
    plane, session_id = pod.plane, pod.session_id
    running = await plane.wait_phase(session_id, {"Running", "Failed"}, 120)
    report["session_running"] = {
        k: running[k] for k in ("phase", "reason", "encoder", "streamer", "message")
    }
    connection = await plane.request("GET", f"/v1/sessions/{session_id}/connection")
    user, password = connection["username"], connection["password"]
    alice = f"alice.{DOMAIN}"
    assert pod.proxy is not None
    await proxying.wait_router(pod.proxy, alice)

    async def page_routed() -> httpx.Response | None:
        response = await through_traefik(pod, alice, "/api/health")
        return response if response.status_code == 200 else None

    await wait_for("Selkies answering through Traefik", page_routed, 60)
    # What Selkies negotiates with: the agent's renewed credential (its RTC config file), not
    # the pod Secret's.
    served = (await through_traefik(pod, alice, "/api/turn", auth=(user, password))).json()
    turn_users = [s["username"] for s in served["iceServers"] if "username" in s]
    report["selkies_turn"] = {
        "usernames": turn_users,
        "pod_secret_username": pod_turn_username,
        "now": time.time(),
    }
    wrong = await through_traefik(pod, alice, auth=(user, "not-the-password"))
    report["wrong_password_status"] = wrong.status_code
    report["no_password_status"] = (await through_traefik(pod, alice)).status_code
    url = pod.url
    report["browser_url"] = url
    arguments = pod.browser_arguments()

    with chromium(user, password, arguments=arguments) as driver:
        await asyncio.to_thread(driver.get, url)

        async def decoding() -> dict[str, Any] | None:
            stats = await asyncio.to_thread(driver.execute_async_script, READ_STATS)
            return stats if (stats.get("frames_decoded") or 0) > 0 else None

        await wait_for("frames decoded in Chromium", decoding, 60)
        selkies = selkies_processes()
        browser = chromium_processes(driver)
        cpu_before = (cpu_seconds(selkies), cpu_seconds(browser), time.monotonic())
        samples = []
        for _ in range(int(args.seconds)):
            await asyncio.sleep(1)
            samples.append(await asyncio.to_thread(driver.execute_async_script, READ_STATS))
        elapsed = time.monotonic() - cpu_before[2]
        report["browser"] = {
            "samples": samples,
            "fps_median": sorted(s.get("fps") or 0 for s in samples)[len(samples) // 2],
            "jitter_ms_max": max((s.get("jitter_s") or 0) * 1000 for s in samples),
            "frames_decoded": samples[-1].get("frames_decoded"),
            "pair": samples[-1].get("pair"),
            "local_candidate_types": sorted(set(samples[-1].get("local_types", []))),
            "remote_candidate_types": sorted(set(samples[-1].get("remote_types", []))),
            "selkies_cpu_percent": 100 * (cpu_seconds(selkies) - cpu_before[0]) / elapsed,
            "chromium_cpu_percent": 100 * (cpu_seconds(browser) - cpu_before[1]) / elapsed,
        }

        async def stream_healthy() -> dict[str, Any] | None:
            session = await plane.session(session_id)
            status = conditions(session)["StreamHealthy"]["status"]
            return session if status == "True" else None

        healthy = await wait_for("StreamHealthy True", stream_healthy, 30)
        report["session_streaming"] = {
            "phase": healthy["phase"],
            "conditions": conditions(healthy),
        }
        # in a thread: the fake cluster answers on this loop meanwhile
        report["desktop_use"] = await asyncio.to_thread(use_the_desktop, driver, used)
        if args.screenshot:
            await asyncio.to_thread(driver.save_screenshot, str(args.screenshot))

    # A browser with the wrong password gets the 401 page and no video.
    with chromium(user, "not-the-password", arguments=arguments) as driver:
        await asyncio.to_thread(driver.get, url)
        await asyncio.sleep(args.wrong_password_wait)
        stats = await asyncio.to_thread(driver.execute_async_script, READ_STATS)
        report["wrong_password_browser"] = {
            "peers": stats.get("peers", 0),
            "frames_decoded": stats.get("frames_decoded", 0),
            "page": (await asyncio.to_thread(lambda: driver.page_source))[:300],
        }

    # A killed Selkies is restarted and reported.
    leader = next(p for p in selkies_processes() if p.ppid() == agent_process.pid)
    leader.kill()

    async def restarted() -> bool:
        events = await plane.request("GET", f"/v1/sessions/{session_id}/events")
        return any(e["reason"] == "StreamerRestarted" for e in events["items"])

    await wait_for("the restart reported", restarted, 30)
    report["restart_reported"] = True

    async def selkies_back() -> bool:
        return any(p.ppid() == agent_process.pid for p in selkies_processes())

    await wait_for("Selkies back", selkies_back, 30)
    report["session_after_restart"] = (await plane.session(session_id))["phase"]

    # Stopping the agent (the pod being deleted) leaves no Selkies process.
    os.kill(agent_process.pid, signal.SIGTERM)
    report["agent_exit_code"] = await asyncio.to_thread(agent_process.wait, 30)
    await asyncio.sleep(0.5)
    report["selkies_left_after_agent_stopped"] = [
        " ".join(p.cmdline()) for p in selkies_processes() if p.is_running()
    ]


# -- sharing: the user, a viewer and a collaborator through Traefik -------------------------

QUIET_S = 6  # how long the viewer's typing is watched for a leak


async def sharing(args: argparse.Namespace) -> dict[str, Any]:
    """A session of a template that shares (Selkies' secure mode), routed by Traefik and relayed
    by coturn: the user's page (the connection's launch_url), a viewer's and a collaborator's
    (their shares' links), each a Chromium; who typed what landing in the pod's home; the
    viewer's share revoked."""
    report: dict[str, Any] = {}
    async with selkies_pod({"sharing": "collab"}, routed=True) as pod:
        async with screen(1280, 720, 30, "ball", 0, window=(480, 270)) as display:
            env = pod.agent_environment(display)
            log = pod.workdir / "agent.log"
            with desktop(display, pod.home), agent(env, log):
                try:
                    await sharing_checks(pod, report)
                except Exception:
                    report["agent_log"] = log.read_text()[-6000:]
                    raise
    return report


async def sharing_checks(pod: Pod, report: dict[str, Any]) -> None:
    plane, session_id = pod.plane, pod.session_id
    running = await plane.wait_phase(session_id, {"Running", "Failed"}, 120)
    report["session_running"] = {k: running[k] for k in ("phase", "reason", "streamer")}
    assert pod.proxy is not None
    alice = f"alice.{DOMAIN}"
    await proxying.wait_router(pod.proxy, alice)

    async def page_routed() -> httpx.Response | None:
        response = await through_traefik(pod, alice, "/api/health")
        return response if response.status_code == 200 else None

    await wait_for("Selkies answering through Traefik", page_routed, 60)
    connection = await plane.request("GET", f"/v1/sessions/{session_id}/connection")
    shares = f"/v1/sessions/{session_id}/shares"
    viewer = await plane.request("POST", shares, json={"role": "viewer"})
    collaborator = await plane.request("POST", shares, json={"role": "collaborator"})
    port = pod.proxy.https_port

    def routed(url: str) -> str:  # the session's host on Traefik's port
        return url.replace(f"{alice}/", f"{alice}:{port}/", 1)

    # the page's token opens the API through Traefik, Basic auth is off, another token is not
    token = connection["launch_url"].split("#token=", 1)[1]
    report["api_status"] = {
        name: (await through_traefik(pod, alice, "/api/turn", params=params)).status_code
        for name, params in (
            ("user_token", {"token": token}),
            ("viewer_token", {"token": viewer["token"]}),
            ("no_token", {}),
            ("made_up_token", {"token": "vdis_made-up"}),
        )
    }
    arguments = pod.browser_arguments()
    pages: dict[str, Any] = {}
    with (
        chromium(arguments=arguments) as owner,
        chromium(arguments=arguments) as watcher,
        chromium(arguments=arguments) as helper,
    ):
        links = {
            "owner": (owner, connection["launch_url"]),
            "viewer": (watcher, viewer["link"]),
            "collaborator": (helper, collaborator["link"]),
        }
        for driver, link in links.values():
            await asyncio.to_thread(driver.get, routed(link))
        for name, (driver, _link) in links.items():

            async def decoding(driver: Any = driver) -> int | None:
                count = await asyncio.to_thread(browser_viewer.frames_decoded, driver)
                return count if count > 30 else None

            pages[name] = {"frames_decoded": await wait_for(f"{name} decoding", decoding, 90)}

        async def all_watching() -> list[dict[str, Any]] | None:
            viewers = (await plane.session(session_id))["viewers"] or []
            return viewers if len(viewers) == 3 else None

        watching = await wait_for("three viewers reported", all_watching, 30)
        report["viewers"] = sorted(
            (v["role"], v["share"] is not None, v.get("address") is not None) for v in watching
        )
        marker = uuid.uuid4().hex[:8]
        await asyncio.to_thread(click, owner, *IN_THE_TERMINAL)  # the terminal has the focus
        await asyncio.to_thread(click, watcher, *IN_THE_TERMINAL)
        await asyncio.to_thread(type_keys, watcher, f"echo viewer {marker} > viewer.txt\n")
        viewer_file = pod.home / "viewer.txt"
        report["viewer_typed"] = await asyncio.to_thread(
            arrives, lambda: viewer_file.exists(), True, QUIET_S
        )
        await asyncio.to_thread(click, helper, *IN_THE_TERMINAL)
        await asyncio.to_thread(type_keys, helper, f"echo collab {marker} > collab.txt\n")
        collab_file = pod.home / "collab.txt"
        report["collaborator_typed"] = await asyncio.to_thread(
            arrives,
            lambda: collab_file.read_text() if collab_file.exists() else "",
            f"collab {marker}\n",
            15,
        )
        asked = time.monotonic()
        await plane.request("DELETE", f"{shares}/{viewer['id']}")
        alerts: list[str] = []
        stopped = await asyncio.to_thread(browser_viewer.video_stopped_after, watcher, 10, alerts)
        report["revoked_video_stopped_s"] = None if stopped is None else round(stopped, 2)

        async def two_left() -> bool | None:
            viewers = (await plane.session(session_id))["viewers"] or []
            return True if len(viewers) == 2 else None

        await wait_for("the revoked viewer gone", two_left, 15)
        report["revoked_gone_from_viewers_s"] = round(time.monotonic() - asked, 2)
        before = await asyncio.to_thread(browser_viewer.frames_decoded, owner)
        await asyncio.sleep(2)
        report["owner_still_decoding"] = (
            await asyncio.to_thread(browser_viewer.frames_decoded, owner) > before
        )
        await asyncio.to_thread(watcher.get, "about:blank")
        await asyncio.to_thread(watcher.get, routed(viewer["link"]))
        await asyncio.sleep(QUIET_S)
        report["revoked_link_frames"] = await asyncio.to_thread(
            browser_viewer.frames_decoded, watcher, alerts
        )
        report["revoked_link_alerts"] = alerts
    report["pages"] = pages


# -- glass to glass through Selkies' own page -----------------------------------------------


async def latency(args: argparse.Namespace) -> dict[str, Any]:
    """Glass to glass through real Selkies 2.x: per resolution, an Xvfb screen of that size on
    which the painter draws stamped pictures over the whole screen, `vdi-agent run`
    supervising Selkies on it (the template's resolution locked, so the page cannot resize the
    screen), and Chromium opening Selkies' own page, relay only and then direct, `--repeat`
    times each (a new browser, so a new display phase). The measurement attaches to the
    <video> element Selkies' page itself shows the stream in."""
    report: dict[str, Any] = {"runs": []}
    async with selkies_pod({"framerate": args.framerate}) as pod:
        clock = browser_viewer.ClockServer(PEER_IP)
        try:
            for text in args.resolutions:
                width, _, height = text.partition("x")
                await selkies_rows(args, pod, clock, (int(width), int(height)), report)
        finally:
            clock.stop()
    return report


async def selkies_rows(
    args: argparse.Namespace,
    pod: Pod,
    clock: browser_viewer.ClockServer,
    size: tuple[int, int],
    report: dict[str, Any],
) -> None:
    width, height = size
    paint_fps = args.paint_fps or args.framerate - 1
    async with screen(width, height, paint_fps, "ball", 0) as display:
        agent_env = pod.agent_environment(
            display, SELKIES_MANUAL_WIDTH=str(width), SELKIES_MANUAL_HEIGHT=str(height)
        )
        log = pod.workdir / f"agent-{width}x{height}.log"
        with agent(agent_env, log):
            try:
                url = f"http://{POD_IP}:{SESSION_PORT}/"

                async def selkies_up() -> bool:
                    async with httpx.AsyncClient(timeout=2) as http:
                        with contextlib.suppress(httpx.HTTPError):
                            return (await http.get(f"{url}api/health")).status_code == 200
                    return False

                await wait_for("Selkies answering", selkies_up, 60)
                connection = await pod.plane.request(
                    "GET", f"/v1/sessions/{pod.session_id}/connection"
                )
                user, password = connection["username"], connection["password"]
                for mode, relay_only in (("relay", True), ("direct", False)):
                    connections = []
                    for _ in range(args.repeat):
                        figures = await selkies_connection(
                            args, url, user, password, relay_only, size, clock
                        )
                        connections.append(figures)
                    pooled = (
                        browser_viewer.pool(connections) if len(connections) > 1 else connections[0]
                    )
                    pooled.update(mode=mode, target=f"{width}x{height}", streamer="selkies 2.x")
                    report["runs"].append(pooled)
                session = await pod.plane.session(pod.session_id)
                report.setdefault("session", session["streamer"])
            except Exception:
                report["agent_log"] = log.read_text()[-6000:]
                raise


FIND_VIDEO = """
const video = window.__vdiMeasure.find();
if (!video) return null;
window.__vdiMeasure.attach(video);
return {id: video.id, width: video.videoWidth, height: video.videoHeight,
        shown: video.getBoundingClientRect().width > 100};
"""


async def selkies_connection(
    args: argparse.Namespace,
    url: str,
    user: str,
    password: str,
    relay_only: bool,
    size: tuple[int, int],
    clock: browser_viewer.ClockServer,
) -> dict[str, Any]:
    """One Chromium on Selkies' page: decoding, the measurement on the page's own <video>."""
    with chromium(user, password, relay_only=relay_only, measure=True, window=size) as driver:
        await asyncio.to_thread(driver.get, url)
        await browser_viewer.wait_decoding(driver, 60)

        async def video_found() -> dict[str, Any] | None:
            found: dict[str, Any] | None = await asyncio.to_thread(
                driver.execute_script, FIND_VIDEO
            )
            return found

        element = await wait_for("the page's <video> showing the stream", video_found, 20)
        figures = await browser_viewer.measure(driver, clock, args.seconds)
        figures["element"] = element
        return figures


def print_latency_table(report: dict[str, Any]) -> None:
    print(f"streamer: {report.get('session')}")
    print(
        "| stream | path | fps | p50 ms | p95 ms | p99 ms | received p50 ms | jitter ms "
        "| ICE pair |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for run_ in report["runs"]:
        print(
            f"| {run_['target']} | {run_['mode']} | {run_['fps']} | {run_['p50_ms']} "
            f"| {run_['p95_ms']} | {run_['p99_ms']} | {run_['received_p50_ms']} "
            f"| {run_['jitter_ms']} | {run_['local_candidate']}/{run_['remote_candidate']} |"
        )


def print_table(report: dict[str, Any]) -> None:
    browser = report["browser"]
    routing = report["traefik"]
    print(f"session: {report['session_running']}")
    print(
        f"through Traefik: {report['browser_url']}; router {routing['router']['name']} "
        f"({routing['router']['status']}); unknown host {routing['unknown_host_status']}; "
        f"bob's host {routing['bob_host_bodies']}; router gone "
        f"{routing['router_gone_after_delete_s']} s after DELETE, then "
        f"{routing['after_delete_status']}; Traefik errors: {len(routing['errors'])}"
    )
    print(
        f"Chromium: {browser['fps_median']} fps (median), jitter max "
        f"{browser['jitter_ms_max']:.1f} ms, framesDecoded {browser['frames_decoded']}, "
        f"pair {browser['pair']}; Selkies offered {browser['remote_candidate_types']}"
    )
    print(
        f"CPU: Selkies {browser['selkies_cpu_percent']:.0f}% of a core, "
        f"Chromium {browser['chromium_cpu_percent']:.0f}%"
    )
    print(f"StreamHealthy: {report['session_streaming']['conditions']['StreamHealthy']}")
    used = report["desktop_use"]
    print(
        f"desktop use: display {used['display_size']} for a {used['viewport']} page (resized "
        f"{used['resized']}), click landed {used['click_landed']}, typed {used['typed']}; tone "
        f"in Chromium: level {used['tone'].get('level')}, packets {used['tone'].get('packets')}, "
        f"samples {used['tone'].get('samples')}; after it {used['after_tone'].get('level')}"
    )
    print(
        f"wrong password: {report['wrong_password_status']}, in a browser "
        f"{report['wrong_password_browser']['frames_decoded']} frames; restart reported: "
        f"{report['restart_reported']}; left after SIGTERM: "
        f"{report['selkies_left_after_agent_stopped']}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured in the browser")
    parser.add_argument("--screenshot", type=Path, help="save the browser's view here (PNG)")
    parser.add_argument(
        "--wrong-password-wait",
        type=float,
        default=5.0,
        help="seconds a browser with the wrong password is given to get video",
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="measure glass to glass through Selkies' own page instead of the session checks",
    )
    parser.add_argument(
        "--sharing",
        action="store_true",
        help="the user, a viewer and a collaborator in three browsers instead of the checks",
    )
    parser.add_argument("--resolutions", nargs="+", default=["1280x720", "1920x1080"])
    parser.add_argument("--framerate", type=int, default=60)
    parser.add_argument(
        "--paint-fps", type=int, help="the painter's rate (default: the frame rate less one)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="--latency: browsers per row")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not (SELKIES_VENV / "bin" / "selkies").exists():
        raise SystemExit(f"install Selkies 2.x first: bash agent/install-selkies.sh {SELKIES_VENV}")
    if os.environ.get(IN_NETNS) != "1":
        reexec_in_private_network(argv, module="bench.selkies_session")
    set_up_network()
    set_up_pod_network()
    mode = latency if args.latency else sharing if args.sharing else run
    report = asyncio.run(mode(args))
    if args.json or args.sharing:
        print(json.dumps(report))
    elif args.latency:
        print_latency_table(report)
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
