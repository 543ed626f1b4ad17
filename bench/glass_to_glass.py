"""Glass-to-glass latency through a real TURN relay, on one machine, with real parts.

In a private network namespace (libnice and aioice skip loopback, so a veth pair carries the
traffic, and nothing leaves the namespace):
- coturn (`turnserver`, use-auth-secret with the control plane's TURN secret) on UDP 3478;
- the control plane (`vdi-control serve`, embedded Postgres) against the fake Kubernetes API;
  a CPU session is created and its pod comes up in the fake;
- this process then plays the pod's agent with the agent's own code: it reads the pod's
  environment (the Secret's values resolved as the kubelet would), runs the agent's checks
  (x264enc on this GPU-less machine), reports them (the session goes Running), and builds the
  agent's pipeline, which a GStreamer process (harness/webrtc_sender.py) runs into webrtcbin with
  the session's TURN credentials, relay only;
- a viewer (aiortc, relay only, harness/webrtc_receiver.py) answers with the credentials of the
  session's `connection`, decodes the H.264 frames and reads back the capture time that the
  sender drew into each picture on the same monotonic clock;
- the viewer's figures are published as Selkies publishes a browser's (`webrtc_statistics`,
  `fps`, `latency` on the metrics port) and the agent's own watch loop reports them, which sets
  the session's StreamHealthy and LatencyWithinSLO conditions.
The same run connects once directly (host candidates, no relay) as the floor, and checks that
a wrong TURN password and an expired credential get no relay.

`python -m bench.glass_to_glass` prints the table; `--json` prints the figures for tests.
Needs root (network namespace), coturn, GStreamer with python3-gi/gi-cairo (Debian packages).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiortc import RTCIceServer
from prometheus_client import CollectorRegistry, Gauge, Info, start_http_server

from agent.pipeline import SOFTWARE, Caps, Element, StreamSettings, build
from agent.runner import Agent, AgentEnv, check_report
from agent.streamers.selkies_gstreamer import METRICS_PORT, SelkiesGStreamer
from app.security import turn_credentials
from harness import browser_viewer
from harness.network import (
    IN_NETNS,
    PEER_IP,
    coturn,
    reexec_in_private_network,
    set_up_network,
    stop,
)
from harness.plane import ControlPlane, control_plane, start_session
from harness.webrtc_receiver import Receiver, browser_like_aiortc, ice_servers
from kubefake import start_fake_cluster

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with gi (the venv has no PyGObject)
SENDER = REPO / "harness" / "webrtc_sender.py"


# -- streaming ----------------------------------------------------------------------------------


def sender_pipeline(
    width: int, height: int, framerate: int, env: AgentEnv, pattern: str, motion: int = 0
) -> str:
    """The agent's x264 pipeline after its capture element. The capture stand-in is a live test
    source at the screen's size behind a one-frame leaky queue, so that, like ximagesrc, it
    captures "now" instead of catching up on frames it could not send before the viewer
    connected; the capture time is drawn into each picture right there."""
    source = (
        Element(
            "videotestsrc",
            (("is-live", "true"), ("pattern", pattern), ("horizontal-speed", str(motion))),
        ),
        Caps(f"video/x-raw,format=BGRx,width={width},height={height},framerate={framerate}/1"),
        Element(
            "queue",
            (
                ("leaky", "downstream"),
                ("max-size-buffers", "1"),
                ("max-size-bytes", "0"),
                ("max-size-time", "0"),
            ),
        ),
        Element("cairooverlay", name="stamp"),
    )
    settings = StreamSettings(bitrate_kbps=env.bitrate_kbps, gop_size=env.gop_size)
    return build(SOFTWARE, settings, source=source).render()


def screen_pipeline(settings_framerate: int, env: AgentEnv) -> str:
    """The agent's pipeline exactly as in the pod: `ximagesrc show-pointer=true` on $DISPLAY,
    the template's frame rate."""
    settings = StreamSettings(
        bitrate_kbps=env.bitrate_kbps, gop_size=env.gop_size, framerate=settings_framerate
    )
    return build(SOFTWARE, settings).render()


def painter_pipeline(width: int, height: int, framerate: int, pattern: str, motion: int) -> str:
    """What the desktop shows: moving pictures stamped with the time they are drawn, put on the
    X screen by ximagesink (the window covers the screen at 0,0: Xvfb has no window manager)."""
    return (
        f"videotestsrc is-live=true pattern={pattern} horizontal-speed={motion} ! "
        f"video/x-raw,format=BGRx,width={width},height={height},framerate={framerate}/1 ! "
        "cairooverlay name=stamp ! ximagesink sync=false"
    )


@contextlib.asynccontextmanager
async def screen(
    width: int,
    height: int,
    framerate: int,
    pattern: str,
    motion: int,
    window: tuple[int, int] | None = None,
) -> AsyncIterator[str]:
    """Xvfb at this size with the painter drawing on it, over the whole screen or in a `window`
    of that size; yields the DISPLAY. Xvfb picks a free display itself and writes its number on
    a pipe once it accepts clients (-displayfd)."""
    read_end, write_end = os.pipe()
    xvfb = await asyncio.to_thread(
        subprocess.Popen,
        [
            "Xvfb",
            "-displayfd",
            str(write_end),
            "-screen",
            "0",
            f"{width}x{height}x24",
            "-nolisten",
            "tcp",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=(write_end,),
    )
    os.close(write_end)
    painter: Sender | None = None
    try:
        with os.fdopen(read_end) as ready:
            number = (await asyncio.wait_for(asyncio.to_thread(ready.readline), 20)).strip()
        if not number.isdigit():
            raise RuntimeError("Xvfb did not start")
        display = f":{number}"
        painted = window or (width, height)
        painter = await Sender.start(
            painter_pipeline(*painted, framerate, pattern, motion), display=display
        )
        await asyncio.sleep(1.0)  # the window is mapped and painting
        if painter.process.returncode is not None:
            raise RuntimeError(f"the painter stopped: {painter.errors}")
        yield display
    finally:
        if painter is not None:
            await painter.stop()
        await asyncio.to_thread(stop, xvfb)


def webrtc_uri(scheme: str, host: str, port: str, user: str = "", password: str = "") -> str:
    """webrtcbin's stun://host:port and turn://user:password@host:port; the REST username holds
    a ':' so both are percent-encoded."""
    if not user:
        return f"{scheme}://{host}:{port}"
    quote = urllib.parse.quote
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}"


def selkies_ice_uris(env: dict[str, str]) -> tuple[str, str]:
    """The STUN and TURN servers the pod's environment gives Selkies, as webrtcbin URIs."""
    stun = webrtc_uri("stun", env["SELKIES_STUN_HOST"], env["SELKIES_STUN_PORT"])
    turn = webrtc_uri(
        "turn",
        env["SELKIES_TURN_HOST"],
        env["SELKIES_TURN_PORT"],
        env["SELKIES_TURN_USERNAME"],
        env["SELKIES_TURN_PASSWORD"],
    )
    return stun, turn


class Sender:
    """harness/webrtc_sender.py under Debian's python3, spoken to in JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.offer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.stats: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.states: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls,
        pipeline: str,
        stun: str | None = None,
        turn: str | None = None,
        relay_only: bool = False,
        display: str | None = None,
    ) -> Sender:
        args = ["--pipeline", pipeline]
        if stun and turn:
            args += ["--stun", stun, "--turn", turn]
        if relay_only:
            args.append("--relay-only")
        extra = {"DISPLAY": display} if display else {}
        process = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON,
            str(SENDER),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(REPO), **extra},
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            message = json.loads(line)
            if "offer" in message and not self.offer.done():
                self.offer.set_result(message)
            elif "stats" in message and not self.stats.done():
                self.stats.set_result(message)
            elif "state" in message:
                self.states.append((message["state"], message["value"]))
            elif "error" in message:
                self.errors.append(message["error"])
                for future in (self.offer, self.stats):
                    if not future.done():
                        future.set_exception(RuntimeError(message["error"]))
        for future in (self.offer, self.stats):
            if not future.done():
                future.set_exception(RuntimeError(f"the sender exited: {self.errors}"))

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        await self.process.stdin.drain()

    async def stop(self) -> dict[str, Any] | None:
        stats: dict[str, Any] | None = None
        with contextlib.suppress(Exception):
            await self.send({"stop": True})
            stats = await asyncio.wait_for(self.stats, 10)
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            os.kill(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        for future in (self.offer, self.stats):  # a painter never offers: nothing to report
            if future.done() and not future.cancelled():
                future.exception()
        return stats


def sender_candidate_types(stats: dict[str, Any] | None) -> dict[str, str | None]:
    """The ICE pair webrtcbin used, from its own stats."""
    reports = (stats or {}).get("stats", [])
    by_id = {r.get("id"): r for r in reports}
    for report in reports:
        if report.get("kind") == "transport-stats" or report.get("kind") == "candidate-pair":
            local = by_id.get(report.get("local-candidate-id"), {})
            remote = by_id.get(report.get("remote-candidate-id"), {})
            if local or remote:
                return {
                    "local": local.get("candidate-type"),
                    "remote": remote.get("candidate-type"),
                }
    types = {r.get("candidate-type") for r in reports if r.get("kind") == "local-candidate"}
    return {"local": ",".join(sorted(t for t in types if t)) or None, "remote": None}


@dataclass
class SelkiesMetrics:
    """What Selkies' metrics endpoint shows for a connected browser, fed by the viewer."""

    registry: CollectorRegistry
    stats: Info
    fps: Gauge
    latency: Gauge

    @classmethod
    def serve(cls, port: int) -> tuple[SelkiesMetrics, Any]:
        registry = CollectorRegistry()
        metrics = cls(
            registry,
            Info("webrtc_statistics", "WebRTC statistics from the client", registry=registry),
            Gauge("fps", "Frames per second observed by client", registry=registry),
            Gauge("latency", "Latency observed by client (ms)", registry=registry),
        )
        server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
        return metrics, server

    def publish(self, frames_decoded: int, jitter_s: float, fps: float, latency_ms: float) -> None:
        self.stats.info(
            {
                "inbound-rtp.kind": "video",
                "inbound-rtp.framesDecoded": str(frames_decoded),
                "inbound-rtp.jitter": f"{jitter_s:.6f}",
            }
        )
        self.fps.set(fps)
        self.latency.set(latency_ms)


async def stream(
    pipeline: str,
    env: dict[str, str],
    connection: dict[str, Any],
    *,
    seconds: float,
    relay_only: bool = True,
    marker_release: bool = True,
    metrics: SelkiesMetrics | None = None,
    display: str | None = None,
) -> dict[str, Any]:
    """One sender and one viewer for `seconds` after the first frame; their figures."""
    stun, turn = selkies_ice_uris(env)
    sender = await Sender.start(pipeline, stun, turn, relay_only, display)
    sender_stats: dict[str, Any] | None = None
    with browser_like_aiortc(marker_release):
        viewer = Receiver(ice_servers(connection), relay_only=relay_only)
        try:
            offer = await asyncio.wait_for(sender.offer, 30)
            try:
                answer = await viewer.answer(offer["offer"], offer["candidates"])
            except Exception as error:
                media = [
                    line
                    for line in offer["offer"].splitlines()
                    if line.startswith(("m=", "a=rtpmap", "a=fmtp"))
                ]
                raise RuntimeError(f"the viewer refused the offer ({error}): {media}") from error
            await sender.send({"answer": answer})
            await asyncio.wait_for(viewer.connected.wait(), 30)
            deadline = time.monotonic() + seconds + viewer.warmup_s
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                if metrics is not None and viewer.result.latencies_ms:
                    result = await viewer.collect_stats()
                    recent = result.latencies_ms[-60:]
                    metrics.publish(
                        result.frames_decoded,
                        result.jitter_s or 0.0,
                        result.fps,
                        statistics.median(recent),
                    )
            result = await viewer.collect_stats()
        finally:
            sender_stats = await sender.stop()
            await viewer.close()
    summary = result.summary()
    summary["latencies_ms"] = [round(value, 2) for value in result.latencies_ms]
    summary["viewer"] = "aiortc"
    summary["viewer_candidate_types"] = result.local_candidate_types
    summary["sender_offered"] = [c.split()[7] for c in offer["candidates"] if "typ" in c]
    summary["sender_pair"] = sender_candidate_types(sender_stats)
    summary["frames_sent"] = (sender_stats or {}).get("stamped")
    return summary


async def stream_to_chromium(
    pipeline: str,
    env: dict[str, str],
    connection: dict[str, Any],
    *,
    seconds: float,
    relay_only: bool = True,
    metrics: SelkiesMetrics | None = None,
    display: str | None = None,
    warmup_s: float = 1.0,
) -> dict[str, Any]:
    """The same sender, and headless Chromium as the viewer (harness/browser_viewer.py): its own
    WebRTC stack answers, decodes and presents the stream in a <video>; each presented
    picture's capture time is read back in the page. Figures for `seconds` after a warm-up."""
    stun, turn = selkies_ice_uris(env)
    sender = await Sender.start(pipeline, stun, turn, relay_only, display)
    clock = browser_viewer.ClockServer(PEER_IP)
    sender_stats: dict[str, Any] | None = None
    try:
        with browser_viewer.chromium(relay_only=relay_only, measure=True) as driver:
            await asyncio.to_thread(driver.get, f"{clock.url}/viewer")
            offer = await asyncio.wait_for(sender.offer, 30)
            answer = await asyncio.to_thread(
                driver.execute_async_script,
                browser_viewer.ANSWER,
                offer["offer"],
                offer["candidates"],
                connection["ice_servers"],
                relay_only,
            )
            if "error" in answer:
                raise RuntimeError(f"Chromium refused the offer: {answer['error']}")
            candidates = [
                line.removeprefix("a=")
                for line in answer["sdp"].splitlines()
                if line.startswith("a=candidate:")
            ]
            await sender.send({"answer": answer["sdp"], "candidates": candidates})
            await browser_viewer.wait_decoding(driver)

            async def publish(stats: dict[str, Any], recent: dict[str, Any]) -> None:
                assert metrics is not None
                metrics.publish(
                    stats.get("frames_decoded") or 0,
                    stats.get("jitter_s") or 0.0,
                    stats.get("fps") or 0.0,
                    recent["p50_ms"] or 0.0,
                )

            summary = await browser_viewer.measure(
                driver,
                clock,
                seconds,
                warmup_s=warmup_s,
                on_sample=publish if metrics is not None else None,
            )
    finally:
        sender_stats = await sender.stop()
        clock.stop()
    summary["sender_offered"] = [c.split()[7] for c in offer["candidates"] if "typ" in c]
    summary["sender_pair"] = sender_candidate_types(sender_stats)
    summary["frames_sent"] = (sender_stats or {}).get("stamped")
    summary["viewer"] = "chromium"
    return summary


async def relay_candidates(servers: list[RTCIceServer]) -> list[str]:
    """The candidate types a relay-only peer gathers with these TURN credentials."""
    with browser_like_aiortc():
        viewer = Receiver(servers, relay_only=True)
        try:
            viewer.pc.addTransceiver("video", direction="recvonly")
            await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
            gatherer = viewer.pc.getTransceivers()[0].receiver.transport.transport.iceGatherer
            return [c.type for c in gatherer.getLocalCandidates()]
        finally:
            await viewer.close()


async def connection_attempt(
    pipeline: str, env: dict[str, str], servers: list[RTCIceServer], timeout_s: float = 5
) -> dict[str, Any]:
    """What a relay-only viewer holding these credentials gets within `timeout_s` (the sender
    has the session's own): its connection state and the frames it decoded. Without a relay
    candidate aiortc never even starts ICE checks (it stays "new"; a browser would say
    "failed" after its own timeout)."""
    stun, turn = selkies_ice_uris(env)
    sender = await Sender.start(pipeline, stun, turn, relay_only=True)
    with browser_like_aiortc():
        viewer = Receiver(servers, relay_only=True)
        try:
            offer = await asyncio.wait_for(sender.offer, 30)
            await sender.send({"answer": await viewer.answer(offer["offer"], offer["candidates"])})
            connected = asyncio.create_task(viewer.connected.wait())
            failed = asyncio.create_task(viewer.failed.wait())
            await asyncio.wait(
                {connected, failed}, timeout=timeout_s, return_when="FIRST_COMPLETED"
            )
            for task in (connected, failed):
                task.cancel()
            return {
                "connection": viewer.pc.connectionState,
                "ice": viewer.pc.iceConnectionState,
                "frames_decoded": viewer.result.frames_decoded,
            }
        finally:
            await sender.stop()
            await viewer.close()


# -- the run ------------------------------------------------------------------------------------


def _resolution(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"runs": []}
    turn_secret = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="vdi-g2g-") as tmp:
        workdir = Path(tmp)
        with coturn(workdir, turn_secret):
            async with (
                start_fake_cluster() as (fake, fake_url),
                control_plane(workdir, fake_url, turn_secret) as plane,
            ):
                session_id, env = await start_session(
                    plane,
                    fake,
                    "g2g-cpu",
                    {"image": "vdi/session:bench", "gpu": 0, "framerate": args.framerate},
                )

                # The agent in the pod: its checks, its first report, its pipeline.
                agent_env = AgentEnv.from_environ(env)
                metrics, metrics_server = SelkiesMetrics.serve(METRICS_PORT)
                agent = Agent(agent_env, SelkiesGStreamer(["selkies-gstreamer"], "bench"))
                agent.report, choice = check_report(agent_env, agent.streamer)
                agent.config = agent_env.stream_config(
                    choice, agent_env.framerate, agent_env.bitrate_kbps
                )
                if not await agent.reporter.send(agent.wire_report()):
                    raise RuntimeError("the control plane did not take the agent's report")
                running = await plane.wait_phase(session_id, {"Running", "Failed"}, 30)
                report["session_after_checks"] = {
                    "phase": running["phase"],
                    "encoder": running["encoder"],
                    "conditions": _conditions(running),
                }
                connection = await plane.request("GET", f"/v1/sessions/{session_id}/connection")
                watcher = asyncio.create_task(agent.watch())
                try:
                    for index, text in enumerate(args.resolutions):
                        width, height = _resolution(text)
                        if args.source == "xvfb":
                            pipeline = screen_pipeline(args.framerate, agent_env)
                        else:
                            pipeline = sender_pipeline(
                                width, height, args.framerate, agent_env, args.pattern, args.motion
                            )
                        if index == 0:
                            report["pipeline"] = pipeline
                        modes = [("relay", True, True)]
                        if args.floor:
                            modes.append(("direct", False, True))
                        if args.aiortc_jitter_buffer and index == 0 and args.viewer == "aiortc":
                            modes.append(("relay, aiortc jitter buffer", True, False))
                        for mode, relay_only, marker in modes:
                            publish = metrics if index == 0 and mode == "relay" else None
                            connections = [
                                await one_connection(
                                    args,
                                    pipeline,
                                    env,
                                    connection,
                                    (width, height),
                                    relay_only=relay_only,
                                    marker_release=marker,
                                    metrics=publish,
                                )
                                for _ in range(args.repeat)
                            ]
                            figures = (
                                browser_viewer.pool(connections)
                                if len(connections) > 1
                                else connections[0]
                            )
                            figures.update(mode=mode, target=f"{width}x{height}")
                            report["runs"].append(figures)
                            if index == 0 and mode == "relay":
                                report["session_while_streaming"] = await _wait_conditions(
                                    plane, session_id
                                )
                finally:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
                    metrics_server.shutdown()

                report["choice"] = {"encoder": choice.encoder, "fallback": choice.fallback}
                if not args.credential_checks:
                    return report
                # Negative: a wrong password and an expired (correctly signed) credential.
                good = ice_servers(connection)
                turn_url = [u for s in good for u in s.urls if u.startswith("turn:")]
                user = next(s.username for s in good if s.username)
                expired_user, expired_password = turn_credentials(
                    turn_secret, uuid.UUID(session_id), datetime.now(UTC) - timedelta(minutes=5)
                )
                report["relay_with"] = {
                    "session_credentials": await relay_candidates(good),
                    "wrong_password": await relay_candidates(
                        [RTCIceServer(urls=turn_url, username=user, credential="wrong-password")]
                    ),
                    "expired_credential": await relay_candidates(
                        [
                            RTCIceServer(
                                urls=turn_url, username=expired_user, credential=expired_password
                            )
                        ]
                    ),
                }
                wrong = [RTCIceServer(urls=turn_url, username=user, credential="wrong-password")]
                expired = [
                    RTCIceServer(urls=turn_url, username=expired_user, credential=expired_password)
                ]
                small = sender_pipeline(640, 360, args.framerate, agent_env, "ball")
                report["viewer_connection_with"] = {
                    "wrong_password": await connection_attempt(small, env, wrong),
                    "expired_credential": await connection_attempt(small, env, expired),
                }
    return report


async def one_connection(
    args: argparse.Namespace,
    pipeline: str,
    env: dict[str, str],
    connection: dict[str, Any],
    size: tuple[int, int],
    *,
    relay_only: bool,
    marker_release: bool,
    metrics: SelkiesMetrics | None,
) -> dict[str, Any]:
    """One sender and one viewer (a new screen and painter from the screen): new capture and
    display phases each time."""
    async with contextlib.AsyncExitStack() as stack:
        display = None
        if args.source == "xvfb":
            display = await stack.enter_async_context(
                screen(*size, args.paint_fps or args.framerate - 1, args.pattern, args.motion)
            )
        if args.viewer == "chromium":
            return await stream_to_chromium(
                pipeline,
                env,
                connection,
                seconds=args.seconds,
                relay_only=relay_only,
                metrics=metrics,
                display=display,
            )
        return await stream(
            pipeline,
            env,
            connection,
            seconds=args.seconds,
            relay_only=relay_only,
            marker_release=marker_release,
            metrics=metrics,
            display=display,
        )


def _conditions(session: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in session["conditions"]}


async def _wait_conditions(plane: ControlPlane, session_id: str) -> dict[str, Any]:
    """Wait (bounded) for the agent's watch loop to have reported the stream."""
    deadline = time.monotonic() + 15
    while True:
        session = await plane.session(session_id)
        conditions = _conditions(session)
        latency = conditions.get("LatencyWithinSLO")
        done = conditions.get("StreamHealthy") == "True" and latency in ("True", "False")
        if done or time.monotonic() > deadline:
            messages = {c["type"]: c["message"] for c in session["conditions"]}
            return {"phase": session["phase"], "conditions": conditions, "messages": messages}
        await asyncio.sleep(0.25)


def print_table(report: dict[str, Any]) -> None:
    print(f"pipeline: {report['pipeline']}")
    print(
        "\n| stream | path | fps | p50 ms | p95 ms | p99 ms | frames | lost | jitter ms "
        "| ICE pair (viewer) | p50 vs direct |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    direct = {r["target"]: r["p50_ms"] for r in report["runs"] if r["mode"] == "direct"}
    for run_ in report["runs"]:
        floor = direct.get(run_["target"])
        ratio = f"{run_['p50_ms'] / floor:.2f}x" if floor and run_["p50_ms"] else "-"
        print(
            f"| {run_['target']} | {run_['mode']} | {run_['fps']} | {run_['p50_ms']} "
            f"| {run_['p95_ms']} | {run_['p99_ms']} | {run_['frames_decoded']} "
            f"| {run_['packets_lost']} | {run_['jitter_ms']} "
            f"| {run_['local_candidate']}/{run_['remote_candidate']} | {ratio} |"
        )
    streaming = report.get("session_while_streaming", {})
    print(f"\nsession while streaming: {streaming.get('phase')} {streaming.get('conditions')}")
    if "relay_with" in report:
        print(f"relay candidates gathered with: {report['relay_with']}")
        print(f"viewer connection with bad credentials: {report['viewer_connection_with']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", nargs="+", default=["1280x720", "1920x1080"])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured per run")
    parser.add_argument("--framerate", type=int, default=60)
    parser.add_argument(
        "--source",
        choices=("test", "xvfb"),
        default="test",
        help="test: a live test source stamped after capture; xvfb: the agent's own ximagesrc "
        "capturing an Xvfb screen that a painter draws stamped pictures on",
    )
    parser.add_argument(
        "--paint-fps",
        type=int,
        help="--source xvfb: the rate the painter draws stamped pictures at (default: the "
        "frame rate less one, so that the moment of a change sweeps through the capture and "
        "display ticks instead of keeping one phase for the whole run)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="connections per row, their pictures pooled (each has its own capture and "
        "display phase)",
    )
    parser.add_argument("--pattern", default="ball", help="videotestsrc pattern (content)")
    parser.add_argument(
        "--motion", type=int, default=0, help="scroll the whole picture N pixels per frame"
    )
    parser.add_argument("--no-floor", dest="floor", action="store_false", help="skip direct")
    parser.add_argument(
        "--viewer",
        choices=("aiortc", "chromium"),
        default="aiortc",
        help="aiortc: latency read at decode; chromium: headless Chromium, read at presentation",
    )
    parser.add_argument(
        "--no-credential-checks",
        dest="credential_checks",
        action="store_false",
        help="skip the wrong-password and expired-credential checks",
    )
    parser.add_argument(
        "--aiortc-jitter-buffer",
        action="store_true",
        help="also measure the first resolution with aiortc's own jitter buffer",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if os.environ.get(IN_NETNS) != "1":
        reexec_in_private_network(argv, module="bench.glass_to_glass")
    set_up_network()
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
