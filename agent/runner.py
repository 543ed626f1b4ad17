"""`vdi-agent run`: checks, encoder choice, the streamer (either Selkies line) started and
awaited healthy, the first report, then the streamer under supervision with the stream, latency
and CPU watched, a heartbeat, and a report on every change. A streamer that is configured wrong
or never healthy fails the session with STREAMER_FAILED."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import structlog

from agent import checks, latency, metrics
from agent.access import AccessKeeper
from agent.callbacks import Reporter
from agent.listeners import port_is_ours
from agent.pipeline import Element, StreamSettings, build
from agent.policy import LATENCY_LIMIT_MS, Change, CpuThrottle, LatencyAdapter
from agent.streamers import STREAMER_FAILED, StreamConfig, Streamer, UnsafeConfiguration
from agent.streamers.selkies_gstreamer import SelkiesGStreamer
from agent.supervisor import Outcome, Supervisor
from agent.turn import RTC_CONFIG_ENV, NoRelay, TurnRenewal

log = structlog.get_logger("vdi.agent")

# Set by the local runtime (VDI_CLUSTER=local) on a host where nvidia-smi does not work: a
# session that asked for a GPU runs as a CPU session and says so (SoftwareFallback), where a
# session pod without its GPU fails (GPU_INIT_ERROR).
NO_GPU_ENV = "VDI_NO_GPU"
NO_GPU_ON_HOST = "NoGpuOnHost"

MONITOR_S = 2.0
SIZE_TIMEOUT_S = 10.0  # reading the display's size (a Python start and one X round trip)
ACCESS_READY_S = 10.0  # for Selkies to take its first token table (secure mode)


@dataclass(frozen=True)
class AgentEnv:
    session_id: str
    callback_url: str
    token: str
    gpus: int
    fallback_allowed: bool
    framerate: int
    bitrate_kbps: int
    gop_size: int
    streamer_start_timeout_s: float = 60.0
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> AgentEnv:
        env = dict(os.environ if environ is None else environ)
        missing = [
            n for n in ("VDI_SESSION_ID", "VDI_CALLBACK_URL", "VDI_AGENT_TOKEN") if not env.get(n)
        ]
        if missing:
            raise SystemExit(f"vdi-agent: {', '.join(missing)} not set (the pod spec injects them)")
        return cls(
            session_id=env["VDI_SESSION_ID"],
            callback_url=env["VDI_CALLBACK_URL"],
            token=env["VDI_AGENT_TOKEN"],
            gpus=int(env.get("VDI_GPU", "1")),
            fallback_allowed=env.get("VDI_ENCODER_FALLBACK", "true").lower() == "true",
            framerate=int(env.get("SELKIES_FRAMERATE", "60")),
            bitrate_kbps=int(env.get("SELKIES_VIDEO_BITRATE", "8000")),
            gop_size=int(env.get("VDI_GOP_SIZE", "30")),
            streamer_start_timeout_s=float(env.get("VDI_STREAMER_START_TIMEOUT_S", "60")),
            env=env,
        )

    def stream_config(
        self, choice: checks.EncoderChoice, framerate: int, bitrate_kbps: int
    ) -> StreamConfig:
        assert choice.encoder is not None
        return StreamConfig.from_env(
            self.env,
            encoder=choice.encoder,
            fallback=choice.fallback,
            framerate=framerate,
            bitrate=bitrate_kbps,
        )


def check_report(
    agent: AgentEnv, streamer: Streamer | None = None
) -> tuple[dict[str, Any], checks.EncoderChoice]:
    """Checks 1-2 and the encoder choice for the streamer's line, as a health report (what
    `vdi-agent check` prints). Without a streamer: the spec's line (Selkies-GStreamer)."""
    streamer = streamer or SelkiesGStreamer(["selkies-gstreamer"], "unknown")
    no_gpu = agent.env.get(NO_GPU_ENV, "")
    if agent.gpus > 0 and no_gpu:
        gpu, choice = _no_gpu_on_host(agent, streamer, no_gpu)
    else:
        gpu = checks.check_gpu(agent.gpus)
        choice = streamer.choose_encoder(
            gpu, gpus_requested=agent.gpus, fallback_allowed=agent.fallback_allowed
        )
    report: dict[str, Any] = {
        "checks": [gpu.report(), choice.check.report()],
        "encoder": choice.encoder,
        "fallback": choice.fallback,
        "framerate": agent.framerate,
        "bitrate_kbps": agent.bitrate_kbps,
        "streamer": streamer.label,
    }
    if agent.env.get("VDI_TURN") == "none":
        report["turn"] = False
    if choice.encoder and streamer.line == "selkies-gstreamer":
        pipeline = build(
            choice.encoder,
            StreamSettings(agent.bitrate_kbps, agent.gop_size),
            nvenc_available=choice.nvenc_properties,
        )
        report["pipeline"] = pipeline.render()
        if pipeline.dropped:
            report["checks"][1]["detail"] += (
                f"; not supported by this {choice.encoder}: {', '.join(pipeline.dropped)}"
            )
    elif choice.encoder:
        try:
            config = agent.stream_config(choice, agent.framerate, agent.bitrate_kbps)
        except UnsafeConfiguration:
            return report, choice  # the stream check says why, when the streamer would start
        for what in streamer.not_applied(config):
            report["checks"][1]["detail"] += f"; not applied: {what}"
    return report, choice


def _no_gpu_on_host(
    agent: AgentEnv, streamer: Streamer, why: str
) -> tuple[checks.Check, checks.EncoderChoice]:
    """A local desktop on a host without a usable GPU: the CPU session's encoder, as a
    fallback (refused where the template forbids it)."""
    gpu = checks.Check("gpu", None, NO_GPU_ON_HOST, why)
    cpu = streamer.choose_encoder(
        checks.check_gpu(0), gpus_requested=0, fallback_allowed=agent.fallback_allowed
    )
    if cpu.encoder is None or not agent.fallback_allowed:
        detail = f"{why}; the template forbids the software fallback"
        check = checks.Check("encoder", False, checks.ENCODER_UNAVAILABLE, detail)
        return gpu, checks.EncoderChoice(None, False, check)
    detail = f"{why}; using {cpu.encoder}"
    return gpu, checks.EncoderChoice(
        cpu.encoder, True, checks.Check("encoder", True, "SoftwareFallback", detail)
    )


def measure_pipeline_latency(choice: checks.EncoderChoice) -> float | None:
    """Capture-to-payload latency of the chosen encoder on this machine, 1080p60, 1 s."""
    assert choice.encoder is not None
    source = Element(
        "videotestsrc", (("is-live", "true"), ("pattern", "ball"), ("num-buffers", "60"))
    )
    built = build(
        choice.encoder,
        StreamSettings(framerate=60, width=1920, height=1080),
        source=source,
        nvenc_available=choice.nvenc_properties,
        sink=Element("fakesink", (("sync", "false"),)),
    )
    try:
        return latency.measure(built.render(), 60, timeout_s=60).p50_ms
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        log.warning("pipeline latency not measured", error=str(error))
        return None


class Agent:
    def __init__(self, agent: AgentEnv, streamer: Streamer | None = None) -> None:
        self.agent = agent
        self.streamer = streamer or SelkiesGStreamer(["selkies-gstreamer"], "unknown")
        self.reporter = Reporter(agent.callback_url, agent.session_id, agent.token)
        self.throttle = CpuThrottle(agent.framerate)
        self.latency = LatencyAdapter(agent.bitrate_kbps)
        self.liveness = metrics.Liveness()
        self.supervisor: Supervisor | None = None
        self.config: StreamConfig | None = None
        self.report: dict[str, Any] = {}
        self.changes: list[Change] = []
        self.adaptations: list[dict[str, Any]] = []  # applied, not yet taken by the control plane
        self.pipeline_latency_ms: float | None = None
        self.turn: TurnRenewal | None = None
        self.no_relay: NoRelay | None = None
        self.turn_passwords: collections.deque[str] = collections.deque(maxlen=8)
        self._foreign_listener_logged = False
        self.access: AccessKeeper | None = None
        self.viewers: list[dict[str, Any]] | None = None

    def wire_report(self) -> dict[str, Any]:
        report = {k: v for k, v in self.report.items() if k != "pipeline"}
        report["checks"] = [
            {**c, "detail": (c.get("detail") or "")[:2000]} for c in report["checks"]
        ]
        return report

    def _set_check(self, check: dict[str, Any]) -> None:
        self.report["checks"] = [c for c in self.report["checks"] if c["name"] != check["name"]]
        self.report["checks"].append(check)

    async def run(self) -> int:
        """Until the pod is deleted (SIGTERM cancels this; the streamer is stopped whole)."""
        self.report, choice = check_report(self.agent, self.streamer)
        if choice.encoder is None:
            await self.reporter.send(self.wire_report())
            log.error("no usable encoder: the session is Failed; idling until the pod is deleted")
            await asyncio.Event().wait()
        if self.streamer.line == "selkies-gstreamer":
            self.pipeline_latency_ms = await asyncio.to_thread(measure_pipeline_latency, choice)
        try:  # a setting the streamer cannot be trusted with (a policy it cannot hold, ...)
            config = self.agent.stream_config(
                choice, self.throttle.framerate, self.latency.bitrate_kbps
            )
            env = self.streamer.environment(config, self.agent.env)
        except UnsafeConfiguration as error:
            await self._streamer_failed(str(error))
            await asyncio.Event().wait()
        self.config = config
        if config.transport == "webrtc" and not config.turn:
            self.no_relay = NoRelay()
            env[RTC_CONFIG_ENV] = str(self.no_relay.path)
        elif config.transport == "webrtc":
            self.turn = TurnRenewal(
                self.agent.callback_url,
                self.agent.session_id,
                self.agent.token,
                config,
                on_secret=self._new_secret,
            )
            env[RTC_CONFIG_ENV] = str(await self.turn.start())
        self.supervisor = Supervisor(
            self.streamer.launch(config, env),
            env,
            on_restart=self._restarted,
            config_error_codes=self.streamer.config_error_codes,
            secrets=self._secrets(),
        )
        supervised = asyncio.create_task(self.supervisor.run())
        watcher: asyncio.Task[None] | None = None
        kept: asyncio.Task[None] | None = None
        renewal = asyncio.create_task(self.turn.run()) if self.turn else None
        try:
            if not await self._wait_healthy(supervised):
                await self._streamer_failed(self._failure_detail(supervised))
                await self.supervisor.stop()
                await asyncio.Event().wait()
            if self.streamer.line == "selkies":  # shares, disconnects: Selkies 2.x's API
                self.access = AccessKeeper(
                    self.agent.callback_url, self.agent.session_id, self.agent.token, config
                )
                kept = asyncio.create_task(self.access.run(), name="vdi-access")
                with contextlib.suppress(TimeoutError):  # the user's token first, then Running
                    async with asyncio.timeout(ACCESS_READY_S):
                        await self.access.ready.wait()
            await self.reporter.send(self.wire_report())
            watcher = asyncio.create_task(self.watch())
            await asyncio.wait([supervised, watcher], return_when=asyncio.FIRST_COMPLETED)
            if supervised.done():
                await self._streamer_failed(self._failure_detail(supervised))
                await asyncio.Event().wait()
            return 0
        finally:
            for task in (watcher, renewal, kept):
                if task is not None:
                    task.cancel()
            await self.supervisor.stop()
            if self.turn is not None:
                self.turn.close()
            if self.no_relay is not None:
                self.no_relay.close()
            supervised.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervised

    def _secrets(self) -> tuple[str, ...]:
        """What the streamer's output must never show: the session's own secrets and the
        last few TURN passwords."""
        assert self.config is not None
        return (*self.config.secrets, *self.turn_passwords)

    def _new_secret(self, secret: str) -> None:
        """A renewed TURN password: masked in the streamer's output from now on."""
        if secret:
            self.turn_passwords.append(secret)
        if self.supervisor is not None:
            self.supervisor.secrets = self._secrets()

    async def _wait_healthy(self, supervised: asyncio.Task[Outcome]) -> bool:
        """The streamer answers its health check before the start timeout, without having
        ended supervision (a configuration error, or crashing past its restarts)."""
        deadline = time.monotonic() + self.agent.streamer_start_timeout_s
        assert self.config is not None
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline and not supervised.done():
                # an impostor that took the port first would answer the health check too
                if self._port_is_ours() and await self.streamer.healthy(http, self.config):
                    log.info("streamer healthy", streamer=self.streamer.label)
                    return True
                await asyncio.sleep(0.25)
        return False

    def _port_is_ours(self) -> bool:
        """No other account listens on the streamer's port (see agent.listeners; nobody at all
        is fine: then nothing answers there either); logs the first time another does."""
        assert self.config is not None
        ours = port_is_ours(self.config.port)
        if ours is False and not self._foreign_listener_logged:
            self._foreign_listener_logged = True
            log.error(
                "another account listens on the streamer's port: not trusted",
                port=self.config.port,
            )
        return ours is not False

    def _failure_detail(self, supervised: asyncio.Task[Outcome]) -> str:
        assert self.supervisor is not None
        held = self.config is not None and port_is_ours(self.config.port) is False
        if supervised.done() and not supervised.cancelled():
            outcome = supervised.result()
            why = {
                "config_error": f"exited with a configuration error ({outcome.exit_code})",
                "gave_up": f"kept exiting ({outcome.exit_code}) after "
                f"{self.supervisor.restarts} restarts",
            }.get(outcome.kind, f"stopped ({outcome.exit_code})")
            tail = outcome.log_tail
        else:
            why = f"not healthy within {self.agent.streamer_start_timeout_s:g} s"
            tail = tuple(self.supervisor.tail)
        if held:
            assert self.config is not None
            why = f"{why}: its port {self.config.port} is held by another account"
        lines = " | ".join(tail[-8:])
        return f"{self.streamer.label} {why}" + (f"; last output: {lines}" if lines else "")

    async def _streamer_failed(self, detail: str) -> None:
        log.error("streamer failed: the session is Failed", detail=detail)
        self._set_check({"name": "stream", "ok": False, "code": STREAMER_FAILED, "detail": detail})
        await self.reporter.send(self.wire_report())

    async def _restarted(self, restarts: int, exit_code: int | None) -> None:
        if self.access is not None:
            self.access.invalidate()  # the new streamer's token table is empty
        self._set_check(
            {
                "name": "stream",
                "ok": None,
                "code": "StreamerRestarted",
                "detail": f"{self.streamer.label} exited ({exit_code}); restart {restarts}",
            }
        )
        await self.reporter.send(self.wire_report(), attempts=2)

    async def watch(self) -> None:
        """Every MONITOR_S: CPU, Selkies' metrics, adaptation; a report on each change and at
        least every interval the control plane asks for (15 s until it has said)."""
        last_sent = time.monotonic()
        async with httpx.AsyncClient(timeout=2) as http:
            while not self.reporter.stopped:
                await asyncio.sleep(MONITOR_S)
                now = time.monotonic()
                before = len(self.changes)
                stats = await self._scrape(http)
                await self._read_native_size(stats)
                changed = self._observe(now, psutil.cpu_percent(), stats)
                changed = await self._watch_viewers(http) or changed
                changed = self._watch_recording() or changed
                await self._apply(self.changes[before:])
                if changed or now - last_sent >= self.reporter.interval_s:
                    taken = self.adaptations
                    report = {**self.wire_report(), "adaptations": taken[-16:]}
                    if await self.reporter.send(report, attempts=3):
                        self.adaptations = self.adaptations[len(taken) :]
                    last_sent = now

    async def _watch_viewers(self, http: httpx.AsyncClient) -> bool:
        """The pages connected now, into the report; True when who is connected changed."""
        assert self.config is not None
        pages = await self.streamer.viewers(http, self.config) if self._port_is_ours() else None
        if pages is None:
            return False  # unknown this round: the last report's list stands
        viewers = [self._viewer(page) for page in pages]
        before = self.viewers
        self.viewers = viewers
        self.report["viewers"] = viewers
        meaning = [(v["id"], v["role"], v["share"]) for v in viewers]
        return before is None or meaning != [(v["id"], v["role"], v["share"]) for v in before]

    def _watch_recording(self) -> bool:
        """What Selkies said of the recording asked for, into the report; True when new."""
        said = self.access.recording if self.access is not None else None
        if said is None or said == self.report.get("recording"):
            return False
        self.report["recording"] = said
        return True

    def _viewer(self, page: dict[str, Any]) -> dict[str, Any]:
        """A page as the control plane names it: the user's own (`owner`), a share's viewer or
        collaborator, or, whose token is none of ours, the role Selkies gave it."""
        assert self.config is not None
        who = self.access.who(page.get("token")) if self.access is not None else None
        if who is None:
            # without secure mode only the session's credentials open the desktop: the user's
            who = ("owner", None) if not self.config.secure else (page["role"], None)
        role, share = who
        viewer: dict[str, Any] = {"id": page["id"], "role": role, "share": share}
        for name in ("since", "address"):
            if page.get(name):
                viewer[name] = page[name]
        return viewer

    async def _read_native_size(self, stats: metrics.StreamStats | None) -> None:
        """Before the latency rule's first step down, the display's size: what the steps scale
        and what "native" restores (with resize on, the viewer's window, not a fixed 1080p)."""
        if stats is None or self.latency.step != 0:
            return
        latency_ms = self._latency_ms(stats)
        command = self.streamer.size_command()
        if latency_ms is None or latency_ms <= LATENCY_LIMIT_MS or command is None:
            return
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), SIZE_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            out = b""
        size = re.fullmatch(r"(\d+)x(\d+)", out.decode(errors="replace").strip())
        if size is None:
            known = "{}x{}".format(*self.latency.native)
            log.warning(
                "display size unknown: the steps scale the last known",
                size=known,
                exit_code=process.returncode,
            )
            return
        self.latency.native = (int(size[1]), int(size[2]))

    async def _apply(self, changes: list[Change]) -> None:
        """Frame rate and bitrate go to the running streamer where its line takes them live
        (Selkies 2.x over WebRTC: the viewer stays connected), else it is restarted with them
        (1.x takes both only at start); resolution through its own resize tool (xrandr on the
        virtual display)."""
        settings = {}
        live: dict[str, int | None] = {}
        resized = [c for c in changes if c.what == "resolution"]
        for change in changes:
            if change.what == "framerate":
                settings["SELKIES_FRAMERATE"] = change.after
                live["framerate"] = int(change.after)
            elif change.what == "bitrate_kbps":
                settings["SELKIES_VIDEO_BITRATE"] = change.after
                live["bitrate_kbps"] = int(change.after)
            elif change.what == "resolution":
                native = "{}x{}".format(*self.latency.native)
                size = native if change.after == "native" else change.after
                command = self.streamer.resize_command(size)
                if command is None:
                    log.warning("no resize tool in this image", streamer=self.streamer.label)
                    continue
                resize = await asyncio.create_subprocess_exec(
                    *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
                )
                if await resize.wait() != 0:
                    log.warning("resize failed", size=size, exit_code=resize.returncode)
        self._adapted(resized, live=False)
        if not settings or self.supervisor is None:
            return
        streamed = [c for c in changes if c.what in ("framerate", "bitrate_kbps")]
        applied = await self.streamer.apply_live(live)
        if applied is not None:
            log.info("applied live, the viewer kept", settings=applied)
            self.supervisor.env.update(settings)  # and a restart after a crash starts so
            self._adapted(streamed, live=True)
            return
        await self.supervisor.reconfigure(settings)
        self._adapted(streamed, live=False)

    def _adapted(self, changes: list[Change], *, live: bool) -> None:
        """Keep what was changed, and how, for the next report (the newest 64 while the
        control plane takes none)."""
        made = [
            {"what": c.what, "before": c.before, "after": c.after, "why": c.why[:200], "live": live}
            for c in changes
        ]
        self.adaptations = (self.adaptations + made)[-64:]

    async def _scrape(self, http: httpx.AsyncClient) -> metrics.StreamStats | None:
        assert self.config is not None
        # the scrape sends the desktop's password: never to a port another account holds
        stats = await self.streamer.stats(http, self.config) if self._port_is_ours() else None
        return self.liveness.judge(time.monotonic(), stats)

    def _latency_ms(self, stats: metrics.StreamStats) -> float | None:
        """The best figure we have: the viewer's RTT + jitter buffer (Selkies) plus our
        pipeline's capture-to-payload latency (measured at start)."""
        if stats.rtt_latency_ms is None or not stats.viewer_connected:
            return None  # Selkies' gauge reads 0 before any viewer, and stays when one leaves
        return stats.rtt_latency_ms + (self.pipeline_latency_ms or 0.0)

    def _observe(self, now: float, cpu_percent: float, stats: metrics.StreamStats | None) -> bool:
        """Fold one round of measurements into the report; True when something changed."""
        changes: list[Change] = []
        throttle = self.throttle.observe(now, cpu_percent)
        if throttle:
            changes.append(throttle)
        if stats is not None:
            changes += self.latency.observe(now, self._latency_ms(stats))
        before = {c["name"]: (c["ok"], c.get("code")) for c in self.report["checks"]}
        renewed = ("stream", "latency", "relay")
        checks_now = [c for c in self.report["checks"] if c["name"] not in renewed]
        if stats is not None:
            checks_now.append(stats.stream_check())
        if self.turn is not None:
            relay = self.turn.relay_check(now)
            checks_now.append(relay)
            if relay["ok"] is False:  # no relay for new viewers: the stream is not healthy
                checks_now = [c for c in checks_now if c["name"] != "stream"]
                checks_now.append({**relay, "name": "stream"})
        if stats is not None:
            total = self._latency_ms(stats)
            if total is not None:
                ok = total <= 100
                checks_now.append(
                    {
                        "name": "latency",
                        "ok": ok,
                        "code": None if ok else "LatencyAboveSLO",
                        "detail": f"viewer-reported {stats.rtt_latency_ms:.1f} ms"
                        f" + pipeline {self.pipeline_latency_ms or 0:.1f} ms",
                    }
                )
            self.report.update(
                frames_decoded=stats.frames_decoded,
                jitter_ms=stats.jitter_ms,
                latency_ms=total,
            )
        self.report.update(
            checks=checks_now,
            cpu_percent=cpu_percent,
            framerate=self.throttle.framerate,
            bitrate_kbps=self.latency.bitrate_kbps,
        )
        resolution = self.latency.resolution
        self.report["resolution"] = f"{resolution[0]}x{resolution[1]}" if resolution else None
        for change in changes:
            log.info(
                "stream adapted",
                what=change.what,
                before=change.before,
                after=change.after,
                why=change.why,
            )
        self.changes += changes
        after = {c["name"]: (c["ok"], c.get("code")) for c in checks_now}
        return bool(changes) or before != after
