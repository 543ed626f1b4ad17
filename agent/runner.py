"""`vdi-agent run`: checks, encoder choice, first report, then Selkies under supervision with
the stream, latency and CPU watched, a heartbeat, and a report on every change."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import structlog

from agent import checks, latency, metrics
from agent.callbacks import Reporter
from agent.pipeline import Element, StreamSettings, build
from agent.policy import Change, CpuThrottle, LatencyAdapter
from agent.supervisor import METRICS_PORT, StreamConfig, Supervisor, selkies_environment

log = structlog.get_logger("vdi.agent")

HEARTBEAT_S = 15.0
MONITOR_S = 2.0


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
    env: dict[str, str] = field(repr=False)

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
            env=env,
        )


def check_report(agent: AgentEnv) -> tuple[dict[str, Any], checks.EncoderChoice]:
    """Checks 1-2 and the encoder choice, as a health report (what `vdi-agent check` prints)."""
    gpu = checks.check_gpu(agent.gpus)
    choice = checks.choose_encoder(
        gpu, gpus_requested=agent.gpus, fallback_allowed=agent.fallback_allowed
    )
    report: dict[str, Any] = {
        "checks": [gpu.report(), choice.check.report()],
        "encoder": choice.encoder,
        "fallback": choice.fallback,
        "framerate": agent.framerate,
        "bitrate_kbps": agent.bitrate_kbps,
    }
    if choice.encoder:
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
    return report, choice


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
    def __init__(
        self,
        agent: AgentEnv,
        selkies_command: list[str] | None = None,
        *,
        metrics_url: str = f"http://127.0.0.1:{METRICS_PORT}/metrics",
    ) -> None:
        self.agent = agent
        self.metrics_url = metrics_url
        self.reporter = Reporter(agent.callback_url, agent.session_id, agent.token)
        self.throttle = CpuThrottle(agent.framerate)
        self.latency = LatencyAdapter(agent.bitrate_kbps)
        configured = agent.env.get("VDI_SELKIES_COMMAND", "").split()
        self.selkies_command = (
            selkies_command
            or configured
            or [shutil.which("selkies-gstreamer") or "selkies-gstreamer"]
        )
        self.supervisor: Supervisor | None = None
        self.report: dict[str, Any] = {}
        self.changes: list[Change] = []
        self.pipeline_latency_ms: float | None = None

    def wire_report(self) -> dict[str, Any]:
        return {k: v for k, v in self.report.items() if k != "pipeline"}

    async def run(self) -> int:
        self.report, choice = check_report(self.agent)
        if choice.encoder is not None:
            self.pipeline_latency_ms = await asyncio.to_thread(measure_pipeline_latency, choice)
        await self.reporter.send(self.wire_report())
        if choice.encoder is None:
            log.error("no usable encoder: the session is Failed; idling until the pod is deleted")
            await asyncio.Event().wait()
        assert choice.encoder is not None
        env = self.agent.env
        config = StreamConfig(
            encoder=choice.encoder,
            framerate=self.throttle.framerate,
            bitrate_kbps=self.latency.bitrate_kbps,
            password=env.get("SELKIES_BASIC_AUTH_PASSWORD", ""),
            turn_host=env.get("SELKIES_TURN_HOST", ""),
            turn_port=env.get("SELKIES_TURN_PORT", "3478"),
            turn_username=env.get("SELKIES_TURN_USERNAME", ""),
            turn_password=env.get("SELKIES_TURN_PASSWORD", ""),
            stun_host=env.get("SELKIES_STUN_HOST", ""),
            stun_port=env.get("SELKIES_STUN_PORT", "3478"),
        )
        self.supervisor = Supervisor(
            self.selkies_command, selkies_environment(config, env), on_restart=self._restarted
        )
        tasks = [asyncio.create_task(self.supervisor.run()), asyncio.create_task(self.watch())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            return 0
        finally:
            for task in tasks:
                task.cancel()
            await self.supervisor.stop()

    async def _restarted(self, restarts: int, exit_code: int | None) -> None:
        self.report["checks"] = [c for c in self.report["checks"] if c["name"] != "stream"] + [
            {
                "name": "stream",
                "ok": None,
                "code": "SelkiesRestarted",
                "detail": f"selkies-gstreamer exited ({exit_code}); restart {restarts}",
            }
        ]
        await self.reporter.send(self.wire_report(), attempts=2)

    async def watch(self) -> None:
        """Every MONITOR_S: CPU, Selkies' metrics, adaptation; a report on each change and at
        least every HEARTBEAT_S."""
        last_sent = time.monotonic()
        async with httpx.AsyncClient(timeout=2) as http:
            while not self.reporter.stopped:
                await asyncio.sleep(MONITOR_S)
                now = time.monotonic()
                before = len(self.changes)
                changed = self._observe(now, psutil.cpu_percent(), await self._scrape(http))
                await self._apply(self.changes[before:])
                if changed or now - last_sent >= HEARTBEAT_S:
                    await self.reporter.send(self.wire_report(), attempts=3)
                    last_sent = now

    async def _apply(self, changes: list[Change]) -> None:
        """Frame rate and bitrate go to Selkies (restarted with them); resolution through
        Selkies' own resize tool (xrandr on the virtual display)."""
        settings = {}
        for change in changes:
            if change.what == "framerate":
                settings["SELKIES_FRAMERATE"] = change.after
            elif change.what == "bitrate_kbps":
                settings["SELKIES_VIDEO_BITRATE"] = change.after
            elif (
                change.what == "resolution"
                and change.after != "native"
                and shutil.which("selkies-gstreamer-resize")
            ):
                await asyncio.create_subprocess_exec("selkies-gstreamer-resize", change.after)
        if settings and self.supervisor is not None:
            await self.supervisor.reconfigure(settings)

    async def _scrape(self, http: httpx.AsyncClient) -> metrics.StreamStats | None:
        try:
            response = await http.get(self.metrics_url)
            return metrics.parse(response.text) if response.is_success else None
        except httpx.HTTPError:
            return None

    def _latency_ms(self, stats: metrics.StreamStats) -> float | None:
        """The best figure we have: the viewer's RTT + jitter buffer (Selkies) plus our
        pipeline's capture-to-payload latency (measured at start)."""
        if stats.rtt_latency_ms is None:
            return None
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
        checks_now = [c for c in self.report["checks"] if c["name"] not in ("stream", "latency")]
        if stats is not None:
            checks_now.append(stats.stream_check())
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
