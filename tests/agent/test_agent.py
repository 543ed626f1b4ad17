"""The agent against the real control plane (down at first), Selkies supervision with a
stand-in process, the commands, and one monitoring round."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from agent import supervisor
from agent.callbacks import Reporter
from agent.metrics import StreamStats
from agent.runner import Agent, AgentEnv, check_report
from agent.streamers import StreamConfig, Streamer, UnsafeConfiguration
from agent.streamers.selkies import Selkies
from agent.streamers.selkies_gstreamer import SelkiesGStreamer
from agent.turn import NoRelay, TurnRenewal
from app.security import agent_token
from harness.servers import serve
from tests.conftest import ADMIN, TEST_SECRET_KEY
from tests.test_cli import free_port

MakeSession = Callable[..., Awaitable[dict[str, Any]]]


def agent_env(session_id: str, callback: str, gpus: int = 1, **extra: str) -> AgentEnv:
    return AgentEnv.from_environ(
        {
            "VDI_SESSION_ID": session_id,
            "VDI_CALLBACK_URL": callback,
            "VDI_AGENT_TOKEN": agent_token(TEST_SECRET_KEY, uuid.UUID(session_id)),
            "VDI_GPU": str(gpus),
            **extra,
        }
    )


async def test_reports_retry_until_the_control_plane_is_up_and_move_the_session(
    app: FastAPI,
    make_session: MakeSession,
    set_phase: Callable[..., Awaitable[None]],
    fake_gpu: Callable[..., None],
) -> None:
    fake_gpu(smi="ok", nvenc=None)  # a GPU without NVENC: the fallback
    session = await make_session("alice")
    await set_phase(session["id"], "Provisioning", "Starting")
    port = free_port()
    env = agent_env(session["id"], f"http://127.0.0.1:{port}")
    report, choice = check_report(env)
    assert (choice.encoder, choice.fallback) == ("x264enc", True)
    reporter = Reporter(env.callback_url, env.session_id, env.token)
    sending = asyncio.create_task(
        reporter.send({k: v for k, v in report.items() if k != "pipeline"}, first_delay_s=0.2)
    )
    await asyncio.sleep(0.5)  # the control plane is down: the reporter is retrying
    assert not sending.done()
    async with serve(app, port=port):
        assert await asyncio.wait_for(sending, timeout=30)
    assert reporter.session_phase == "Running"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        body = (await http.get(f"/v1/sessions/{session['id']}", headers=ADMIN)).json()
    assert (body["phase"], body["encoder"]) == ("Running", "x264enc")
    assert {c["type"]: c["reason"] for c in body["conditions"]}[
        "EncoderReady"
    ] == "SoftwareFallback"


async def test_a_report_before_the_session_is_starting_is_retried_not_final(
    app: FastAPI, make_session: MakeSession
) -> None:
    session = await make_session("carol")  # Pending: its pod does not exist yet
    port = free_port()
    env = agent_env(session["id"], f"http://127.0.0.1:{port}")
    reporter = Reporter(env.callback_url, env.session_id, env.token)
    async with serve(app, port=port):
        delivered = await reporter.send({"checks": []}, attempts=2, first_delay_s=0.05)
    assert delivered is False
    assert reporter.stopped is False  # unlike an ended session: it keeps reporting


async def test_a_refused_token_stops_the_callbacks(app: FastAPI, make_session: MakeSession) -> None:
    session = await make_session("bob")
    async with serve(app) as url:
        reporter = Reporter(url, session["id"], "not-the-token")
        assert not await reporter.send({"checks": []}, first_delay_s=0.01)
        assert reporter.stopped
        assert not await reporter.send({"checks": []})  # and stays stopped


async def never_restarted(count: int, code: int | None) -> None:
    raise AssertionError("a configuration error is not restarted")


def stream_config(**overrides: Any) -> StreamConfig:
    values: dict[str, Any] = {
        "encoder": "x264enc",
        "fallback": False,
        "framerate": 60,
        "bitrate_kbps": 8000,
        "gop_size": 30,
        "password": "s3cret-pw",
        "user": "user",
        "turn_host": "turn.example",
        "turn_port": "3478",
        "turn_username": "1:x",
        "turn_password": "p",
        "stun_host": "turn.example",
        "stun_port": "3478",
    }
    return StreamConfig(**{**values, **overrides})


@pytest.mark.parametrize(
    "streamer",
    [SelkiesGStreamer(["selkies-gstreamer"], "1.6.2"), Selkies(["selkies"], "2.1.0")],
    ids=["1.x", "2.x"],
)
def test_neither_line_starts_with_unsafe_defaults(streamer: Streamer) -> None:
    with pytest.raises(UnsafeConfiguration, match="password"):
        streamer.environment(stream_config(password="mypasswd"), {})
    with pytest.raises(UnsafeConfiguration, match="password"):
        streamer.environment(stream_config(password=""), {})
    with pytest.raises(UnsafeConfiguration, match="public relay"):
        streamer.environment(stream_config(turn_host="", turn_username=""), {})


def test_selkies_gstreamer_gets_the_spec_environment() -> None:
    env = SelkiesGStreamer(["selkies-gstreamer"], "1.6.2").environment(
        stream_config(encoder="nvh264enc"), {"DISPLAY": ":0"}
    )
    assert env["SELKIES_ENCODER"] == "nvh264enc"
    assert env["SELKIES_TURN_PROTOCOL"] == "udp"
    assert env["SELKIES_ENABLE_METRICS_HTTP"] == "true"
    assert env["SELKIES_METRICS_HTTP_PORT"] == "9081"
    assert env["SELKIES_ENABLE_WEBRTC_STATISTICS"] == "true"
    assert (env["SELKIES_BASIC_AUTH_USER"], env["SELKIES_ADDR"]) == ("user", "0.0.0.0")
    assert env["DISPLAY"] == ":0"


@pytest.mark.parametrize(
    ("encoder", "use_cpu"), [("h264enc/nvenc", "false"), ("h264enc/x264", "true")]
)
def test_selkies_2_gets_the_spec_intent_in_its_own_settings(encoder: str, use_cpu: str) -> None:
    pod = {"SELKIES_ENCODER": "nvh264enc", "SELKIES_ADDR": "0.0.0.0", "DISPLAY": ":0"}
    env = Selkies(["selkies"], "2.1.0").environment(
        stream_config(encoder=encoder, framerate=60, gop_size=30, bitrate_kbps=6000), pod
    )
    assert env["SELKIES_ENCODER"] == "h264enc"  # 2.x rejects nvh264enc
    assert env["SELKIES_USE_CPU"] == use_cpu
    assert "SELKIES_ADDR" not in env  # with SELKIES_PUBLIC it refuses to start
    assert (env["SELKIES_PUBLIC"], env["SELKIES_PORT"]) == ("true", "8080")
    assert (env["SELKIES_MODE"], env["SELKIES_ENABLE_DUAL_MODE"]) == ("webrtc", "false")
    assert env["SELKIES_BASIC_AUTH_USER"] == "user"  # not 2.x's default, ubuntu
    assert (env["SELKIES_VIDEO_BITRATE"], env["SELKIES_RATE_CONTROL_MODE"]) == ("6000", "cbr")
    assert (env["SELKIES_FRAMERATE"], env["SELKIES_KEYFRAME_INTERVAL"]) == ("60", "0.5")
    assert env["SELKIES_TURN_USERNAME"] == "1:x"
    assert env["SELKIES_ENABLE_METRICS_HTTP"] == env["SELKIES_ENABLE_WEBRTC_STATISTICS"] == "true"


def test_selkies_2_over_websockets_needs_no_turn() -> None:
    config = stream_config(transport="websockets", turn_host="", turn_username="")
    env = Selkies(["selkies"], "2.1.0").environment(config, {})
    assert env["SELKIES_MODE"] == "websockets"
    assert "SELKIES_TURN_HOST" not in env


async def test_a_dying_selkies_is_restarted_a_bounded_number_of_times(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    script = tmp_path / "selkies"
    script.write_text(f"#!/bin/sh\necho run >> {runs}\nexit 3\n")
    script.chmod(0o755)
    restarts: list[tuple[int, int | None]] = []

    async def on_restart(count: int, code: int | None) -> None:
        restarts.append((count, code))

    supervised = supervisor.Supervisor(
        [str(script)], {}, on_restart=on_restart, max_restarts=3, first_backoff_s=0.01
    )
    outcome = await asyncio.wait_for(supervised.run(), timeout=30)
    assert (outcome.kind, outcome.exit_code) == ("gave_up", 3)
    assert restarts == [(1, 3), (2, 3), (3, 3)]
    assert runs.read_text().count("run") == 4


def test_monitoring_round_reports_stream_latency_and_throttle() -> None:
    env = agent_env(str(uuid.uuid4()), "http://unused", gpus=0)
    agent = Agent(env)
    agent.report, _ = check_report(env)
    quiet = StreamStats(None, None, None, None)
    assert agent._observe(0.0, 10.0, quiet)  # the stream check appears (Unknown)
    assert {c["name"]: c["ok"] for c in agent.report["checks"]}["stream"] is None
    # Selkies 2.x's latency gauge reads 0 before any viewer: no latency figure from it
    agent._observe(0.5, 10.0, StreamStats(None, None, None, 0.0))
    assert "latency" not in {c["name"] for c in agent.report["checks"]}
    viewer = StreamStats(1500, 3.0, 59.0, 180.0)
    assert agent._observe(1.0, 10.0, viewer)
    checks = {c["name"]: c for c in agent.report["checks"]}
    assert checks["stream"]["ok"] is True
    assert checks["latency"]["ok"] is False
    assert agent.report["bitrate_kbps"] == 6000  # stepped down
    for second in range(2, 14):
        agent._observe(float(second), 95.0, viewer)
    assert agent.report["framerate"] == 30
    assert [c.what for c in agent.changes][:2] == ["bitrate_kbps", "bitrate_kbps"]
    assert "framerate" in [c.what for c in agent.changes]


def _vdi_agent(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from agent.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_and_pipeline_commands(fake_gpu: Callable[..., None]) -> None:
    fake_gpu(smi="ok", nvenc="legacy")
    env = {**os.environ, "VDI_GPU": "1", "SELKIES_VIDEO_BITRATE": "6000"}
    checked = _vdi_agent("check", "--json", env=env)
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["encoder"] == "nvh264enc"
    assert [c["ok"] for c in report["checks"]] == [True, True]
    printed = _vdi_agent("pipeline", env=env)
    assert (
        "nvh264enc preset=low-latency-hq rc-mode=cbr bitrate=6000 gop-size=30 bframes=0 aud=false"
        in printed.stdout
    )
    fake_gpu(smi="no-devices")
    failed = _vdi_agent("check", "--json", env=env)
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["checks"][0]["code"] == "GPU_INIT_ERROR"


def _frame_rate_streamer(tmp_path: Path) -> tuple[Path, supervisor.Supervisor]:
    """A streamer that writes the frame rate it was started with to `seen` (one line a start),
    supervised at 60 fps; a restart counted as a failure fails the test."""
    seen = tmp_path / "seen"
    script = tmp_path / "selkies"
    script.write_text(f'#!/bin/sh\necho "$SELKIES_FRAMERATE" >> {seen}\nexec sleep 60\n')
    script.chmod(0o755)

    async def on_restart(count: int, code: int | None) -> None:
        raise AssertionError("a reconfiguration is not a failure")

    return seen, supervisor.Supervisor(
        [str(script)], {"SELKIES_FRAMERATE": "60"}, on_restart=on_restart
    )


async def test_reconfigure_restarts_selkies_with_new_settings_without_counting_a_failure(
    tmp_path: Path,
) -> None:
    seen, supervised = _frame_rate_streamer(tmp_path)
    running = asyncio.create_task(supervised.run())

    async def lines() -> list[str]:
        for _ in range(200):
            if seen.exists() and seen.read_text().strip():
                break
            await asyncio.sleep(0.05)
        return seen.read_text().split()

    assert await lines() == ["60"]
    await supervised.reconfigure({"SELKIES_FRAMERATE": "30"})
    for _ in range(600):  # up to 30 s: a loaded CI host is slow to stop and start a process
        if len(seen.read_text().split()) == 2:
            break
        await asyncio.sleep(0.05)
    assert seen.read_text().split() == ["60", "30"]
    assert supervised.restarts == 0
    await supervised.stop()
    await asyncio.wait_for(running, timeout=15)


async def test_settings_that_come_while_selkies_is_being_started_are_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child can run (and Selkies read its settings) before the supervisor holds its
    process: a reconfiguration in that window once did nothing (CI saw only the old frame rate)."""
    seen, supervised = _frame_rate_streamer(tmp_path)
    real_exec = asyncio.create_subprocess_exec
    starts = 0

    async def exec_then_reconfigure(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        nonlocal starts
        process = await real_exec(*args, **kwargs)
        starts += 1
        if starts == 1:  # the child is started, run() does not hold it yet
            assert supervised.process is None
            await supervised.reconfigure({"SELKIES_FRAMERATE": "30"})
        return process

    monkeypatch.setattr(supervisor.asyncio, "create_subprocess_exec", exec_then_reconfigure)
    running = asyncio.create_task(supervised.run())
    for _ in range(600):
        if seen.exists() and len(seen.read_text().split()) == 2:
            break
        await asyncio.sleep(0.05)
    assert seen.read_text().split() == ["60", "30"]
    assert supervised.restarts == 0
    await supervised.stop()
    await asyncio.wait_for(running, timeout=15)


def test_pipeline_latency_is_measured_with_the_tracer(fake_gpu: Callable[..., None]) -> None:
    from agent import checks
    from agent.runner import measure_pipeline_latency

    fake_gpu(smi="missing")
    choice = checks.choose_encoder(checks.check_gpu(0), gpus_requested=0, fallback_allowed=True)
    measured = measure_pipeline_latency(choice)
    assert measured is not None
    assert 0 < measured < 1000


async def test_a_configuration_error_is_not_restarted_and_its_log_tail_hides_secrets(
    tmp_path: Path,
) -> None:
    script = tmp_path / "selkies"
    script.write_text(
        "#!/bin/sh\necho starting with password $SELKIES_BASIC_AUTH_PASSWORD\n"
        "echo 'no basic auth password set' >&2\nexit 78\n"
    )
    script.chmod(0o755)

    supervised = supervisor.Supervisor(
        [str(script)],
        {"SELKIES_BASIC_AUTH_PASSWORD": "hunter2-session-pw"},
        on_restart=never_restarted,
        config_error_codes=Selkies.config_error_codes,
        secrets=["hunter2-session-pw"],
    )
    outcome = await asyncio.wait_for(supervised.run(), timeout=30)
    assert (outcome.kind, outcome.exit_code) == ("config_error", 78)
    assert outcome.log_tail == ("starting with password ***", "no basic auth password set")


async def test_the_error_line_is_kept_when_later_lines_push_it_out_of_the_tail(
    tmp_path: Path,
) -> None:
    script = tmp_path / "selkies"
    script.write_text(
        "#!/bin/sh\necho INFO:server:starting\necho 'ERROR:server:port 8080 is taken'\n"
        "for i in $(seq 1 30); do echo INFO:ws:shutting down $i; done\nexit 78\n"
    )
    script.chmod(0o755)

    supervised = supervisor.Supervisor(
        [str(script)], {}, on_restart=never_restarted, config_error_codes={78}
    )
    outcome = await asyncio.wait_for(supervised.run(), timeout=30)
    assert outcome.log_tail[:2] == ("ERROR:server:port 8080 is taken", "…")
    assert outcome.log_tail[2:] == tuple(f"INFO:ws:shutting down {i}" for i in range(11, 31))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


async def test_stop_ends_the_streamers_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = tmp_path / "selkies"
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pids}\nexec sleep 300\n")
    script.chmod(0o755)

    async def on_restart(count: int, code: int | None) -> None:
        raise AssertionError("stopping is not a crash")

    supervised = supervisor.Supervisor([str(script)], {}, on_restart=on_restart)
    running = asyncio.create_task(supervised.run())
    for _ in range(200):
        # the script may write its pid before create_subprocess_exec has returned to run()
        if pids.exists() and pids.read_text().strip() and supervised.process is not None:
            break
        await asyncio.sleep(0.05)
    child = int(pids.read_text())
    assert supervised.process is not None
    leader = supervised.process.pid
    assert os.getpgid(child) == leader  # the streamer leads a group of its own
    await supervised.stop()
    outcome = await asyncio.wait_for(running, timeout=15)
    assert outcome.kind == "stopped"
    for _ in range(100):
        if not _alive(child):
            break
        await asyncio.sleep(0.05)
    assert not _alive(leader)
    assert not _alive(child)  # its own child too: nothing left running


async def test_a_stop_while_the_streamer_is_being_started_still_ends_it(tmp_path: Path) -> None:
    """stop() between the spawn and run() learning the process (it finds none to signal):
    run() ends it as soon as it has it, instead of waiting for it to exit by itself."""
    script = tmp_path / "selkies"
    script.write_text("#!/bin/sh\nexec sleep 300\n")
    script.chmod(0o755)

    async def on_restart(count: int, code: int | None) -> None:
        raise AssertionError("stopping is not a crash")

    supervised = supervisor.Supervisor([str(script)], {}, on_restart=on_restart)
    running = asyncio.create_task(supervised.run())
    await asyncio.sleep(0)  # run() is inside create_subprocess_exec now
    assert supervised.process is None
    await supervised.stop()  # finds no process to signal
    outcome = await asyncio.wait_for(running, timeout=15)  # not the 300 s of its sleep
    assert outcome.kind == "stopped"
    assert supervised.process is not None
    assert supervised.process.returncode is not None


async def test_turn_credentials_are_renewed_into_selkies_file_until_the_session_ends(
    app: FastAPI,
    make_session: MakeSession,
    set_phase: Callable[..., Awaitable[None]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = await make_session("alice")
    await set_phase(session["id"], "Provisioning", "Starting")
    port = free_port()
    env = agent_env(session["id"], f"http://127.0.0.1:{port}")
    config = stream_config(
        turn_host="turn.pod.example", stun_host="", turn_username="1:pod-secret-user"
    )
    seen: list[str] = []
    renewal = TurnRenewal(
        env.callback_url, env.session_id, env.token, config, on_secret=seen.append
    )
    try:
        # The control plane is down: Selkies starts with the pod's own credentials.
        path = await renewal.start()
        first = json.loads(path.read_text())
        assert first["iceServers"][1]["username"] == "1:pod-secret-user"
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert oct(path.parent.stat().st_mode & 0o777) == "0o700"

        async with serve(app, port=port):
            monkeypatch.setattr(renewal, "interval_s", lambda: 0.05)
            running = asyncio.create_task(renewal.run())
            for _ in range(200):
                if renewal.renewals >= 2:
                    break
                await asyncio.sleep(0.05)
            assert renewal.renewals >= 2
            rtc = json.loads(path.read_text())
            stun, turn = rtc["iceServers"]
            assert stun["urls"] == ["stun:turn.pod.example:3478"]
            assert turn["urls"] == ["turn:turn.pod.example:3478?transport=udp"]
            expiry, session_id = turn["username"].split(":")
            assert session_id == session["id"]
            assert int(expiry) > time.time() + 60  # fresh from the control plane
            assert turn["credential"] in seen  # masked in Selkies' output from now on

            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t"
            ) as http:
                await http.delete(f"/v1/sessions/{session['id']}", headers=ADMIN)
            await asyncio.wait_for(running, timeout=10)  # 409: renewal stops by itself
            assert renewal.ended
    finally:
        renewal.close()
    assert not path.parent.exists()


def test_a_local_desktops_selkies_listens_on_its_own_port_and_address_without_turn() -> None:
    """VDI_CLUSTER=local: Selkies on the port and address the runtime chose (not every
    interface), and with VDI_TURN=none no TURN setting at all (its defaults name a public
    relay: the RTC file with no ICE server overrides them)."""
    config = StreamConfig.from_env(
        {
            "SELKIES_BASIC_AUTH_PASSWORD": "s3cret-pw",
            "SELKIES_PORT": "41591",
            "VDI_LISTEN_ADDR": "127.0.0.1",
            "VDI_TURN": "none",
        },
        encoder="h264enc/x264",
        fallback=False,
        framerate=60,
        bitrate=8000,
    )
    assert (config.turn, config.port, config.local_url) == (False, 41591, "http://127.0.0.1:41591")
    env = Selkies(["selkies"], "2.1.0").environment(config, {"SELKIES_PUBLIC": "true"})
    assert (env["SELKIES_ADDR"], env["SELKIES_PORT"]) == ("127.0.0.1", "41591")
    assert "SELKIES_PUBLIC" not in env  # with SELKIES_ADDR it refuses to start
    assert not [name for name in env if name.startswith(("SELKIES_TURN", "SELKIES_STUN"))]
    # in a pod (no VDI_TURN), a missing relay is still refused
    with pytest.raises(UnsafeConfiguration, match="public relay"):
        Selkies(["selkies"], "2.1.0").environment(
            dataclasses.replace(config, turn=True, turn_host=""), {}
        )


def test_the_no_relay_file_lists_no_ice_server() -> None:
    no_relay = NoRelay()
    try:
        assert json.loads(no_relay.path.read_text())["iceServers"] == []
        assert no_relay.path.stat().st_mode & 0o077 == 0  # Selkies 2.x refuses a shared one
    finally:
        no_relay.close()
    assert not no_relay.directory.exists()


@pytest.mark.parametrize(("fallback", "encoder"), [("true", "h264enc/x264"), ("false", None)])
def test_a_gpu_template_on_a_host_without_a_gpu_is_a_cpu_session_where_allowed(
    fallback: str, encoder: str | None
) -> None:
    """The local runtime's VDI_NO_GPU: the GPU check says why (NoGpuOnHost, not a failure),
    the encoder is the CPU session's as a fallback, or none where the template forbids it."""
    env = agent_env(
        str(uuid.uuid4()),
        "http://127.0.0.1:1",
        gpus=1,
        VDI_NO_GPU="no GPU on this host (nvidia-smi not found)",
        VDI_ENCODER_FALLBACK=fallback,
        VDI_TURN="none",
    )
    report, choice = check_report(env, Selkies(["selkies"], "2.1.0"))
    gpu, encoder_check = report["checks"]
    assert (gpu["ok"], gpu["code"]) == (None, "NoGpuOnHost")
    assert choice.encoder == encoder
    if encoder:
        assert (encoder_check["ok"], encoder_check["code"], choice.fallback) == (
            True,
            "SoftwareFallback",
            True,
        )
    else:
        assert (encoder_check["ok"], encoder_check["code"]) == (False, "ENCODER_UNAVAILABLE")
    assert report["turn"] is False


async def test_turn_renewal_survives_bad_answers_and_an_unwritable_file_and_reports_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 27.14: one unexpected answer (a proxy's HTML page with a 200, an OSError writing
    the file) used to end the renewal for the rest of the session, silently. It is retried with
    backoff, shown in the `relay` check, and near the credential's expiry the stream is marked
    unhealthy; renewal resumes when the answers do."""
    answers: list[tuple[int, str, str]] = []  # (status, content type, body), the last repeats
    control = FastAPI()

    @control.get("/v1/sessions/{session_id}/turn")
    async def turn(session_id: str) -> Any:
        from fastapi.responses import Response

        status, kind, body = answers[-1]
        return Response(body, status_code=status, media_type=kind)

    monkeypatch.setattr("agent.turn.FIRST_RETRY_S", 0.02)
    monkeypatch.setattr("agent.turn.RETRY_S", 0.05)
    config = stream_config(turn_host="turn.pod.example", turn_username="1:pod-user")
    async with serve(control) as url:
        renewal = TurnRenewal(url, str(uuid.uuid4()), "agent-token", config)
        good = json.dumps({"username": "9999999999:s", "password": "fresh-pw", "ttl_s": 600})
        answers.append((200, "application/json", good))
        try:
            await renewal.start()
            assert renewal.relay_check()["ok"] is True
            monkeypatch.setattr(renewal, "interval_s", lambda: 0.02)
            running = asyncio.create_task(renewal.run())
            answers.append((200, "text/html", "<html>Sign in to the proxy</html>"))

            async def until(check: Callable[[], bool]) -> None:
                for _ in range(400):
                    if check():
                        return
                    await asyncio.sleep(0.01)
                raise AssertionError("not reached")

            await until(lambda: renewal.failures >= 3)
            assert not running.done()  # still renewing
            relay = renewal.relay_check()
            assert (relay["ok"], relay["code"]) == (None, "TurnRenewalFailing")
            assert "not credentials (text/html" in relay["detail"]
            assert "fresh-pw" not in relay["detail"]
            # the backoff grows, and never waits past the expiry margin
            assert renewal.retry_in_s() > 0.02

            # near the end of the credential's life: the relay check fails, and the agent
            # reports the stream unhealthy (new viewers would get no relay)
            renewal.current_until = time.monotonic() + 30
            assert renewal.relay_check()["ok"] is False
            agent = Agent(agent_env(str(uuid.uuid4()), "http://unused", gpus=0))
            agent.report, _ = check_report(agent.agent)
            agent.turn = renewal
            agent._observe(time.monotonic(), 10.0, StreamStats(1500, 3.0, 59.0, 20.0))
            checks = {c["name"]: c for c in agent.report["checks"]}
            assert (checks["relay"]["ok"], checks["relay"]["code"]) == (
                False,
                "TurnCredentialsExpiring",
            )
            assert (checks["stream"]["ok"], checks["stream"]["code"]) == (
                False,
                "TurnCredentialsExpiring",
            )

            # the file's directory gone: an OSError, retried too
            before = renewal.renewals
            answers.append((200, "application/json", good))
            for child in renewal.path.parent.iterdir():
                child.unlink()
            renewal.path.parent.rmdir()
            await until(lambda: renewal.last_error is not None and "RTC file" in renewal.last_error)
            renewal.path.parent.mkdir(mode=0o700)
            await until(lambda: renewal.renewals > before and renewal.failures == 0)
            assert renewal.relay_check()["ok"] is True
            assert json.loads(renewal.path.read_text())["iceServers"][1]["credential"] == "fresh-pw"
            running.cancel()
        finally:
            renewal.close()


IMPOSTOR = """
import http.server, sys
class Any(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Any)
print("listening", flush=True)
server.serve_forever()
"""


@pytest.mark.e2e  # the impostor runs as another account: needs root
def test_a_port_taken_by_another_account_is_never_taken_for_selkies() -> None:
    """Finding 27.5: the port is chosen before Selkies binds it; a local process of another
    account that binds it first answered the health check, the session went Running, and the
    impostor received the desktop's password with the metrics scrape."""
    from agent.listeners import listener_uids, port_is_ours

    port = free_port()
    assert port_is_ours(port) is None  # nobody
    impostor = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        + [sys.executable, "-c", IMPOSTOR, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert impostor.stdout is not None
        assert impostor.stdout.readline().strip() == "listening"
        assert listener_uids(port) == {65534}
        assert port_is_ours(port) is False
        assert httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200  # it answers

        async def agent_checks() -> None:
            env = agent_env(str(uuid.uuid4()), "http://unused", gpus=0)
            env = dataclasses.replace(env, streamer_start_timeout_s=1.5)
            agent = Agent(env, Selkies(["x"], "2"))
            agent.config = stream_config(port=port)

            async def restarted(_restarts: int, _code: int | None) -> None:
                return None

            agent.supervisor = supervisor.Supervisor(["sleep", "30"], {}, on_restart=restarted)
            supervised = asyncio.create_task(asyncio.sleep(30))
            try:
                assert not await agent._wait_healthy(supervised)  # type: ignore[arg-type]
                detail = agent._failure_detail(supervised)  # type: ignore[arg-type]
                assert f"its port {port} is held by another account" in detail
                # and the password-bearing scrape never goes there
                async with httpx.AsyncClient() as http:
                    assert await agent._scrape(http) is None
            finally:
                supervised.cancel()

        asyncio.run(agent_checks())
    finally:
        impostor.terminate()
        impostor.wait(timeout=10)
        if impostor.stdout is not None:
            impostor.stdout.close()
    # our own listener is trusted
    with socket.socket() as own:
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the impostor's TIME_WAIT
        own.bind(("127.0.0.1", port))
        own.listen()
        assert port_is_ours(port) is True


class _LiveSelkies(Selkies):
    """Selkies 2.x whose live control answers as the launcher does (or, with `live=False`,
    is not there)."""

    def __init__(self, live: bool) -> None:
        super().__init__(["selkies"], "2.1.0")
        self.live = live
        self.asked: list[dict[str, int | None]] = []

    async def apply_live(self, settings: Any) -> dict[str, Any] | None:
        self.asked.append(dict(settings))
        return {"framerate": settings.get("framerate")} if self.live else None


@pytest.mark.parametrize("live", [True, False], ids=["live", "restart"])
async def test_the_cpu_rule_changes_the_frame_rate_live_where_it_can_else_restarts(
    live: bool,
) -> None:
    from agent.policy import Change

    streamer = _LiveSelkies(live)
    agent = Agent(agent_env(str(uuid.uuid4()), "http://unused", gpus=0), streamer)
    restarts: list[dict[str, str]] = []

    class Supervised:
        def __init__(self) -> None:
            self.env = {"SELKIES_FRAMERATE": "60"}

        async def reconfigure(self, changes: dict[str, str]) -> None:
            restarts.append(changes)
            self.env.update(changes)  # as the real one: the restart starts with them

    agent.supervisor = Supervised()  # type: ignore[assignment]
    cap = Change("framerate", "60", "30", "host CPU above 80% for 10 s")
    await agent._apply([cap])
    assert streamer.asked == [{"framerate": 30}]
    assert restarts == ([] if live else [{"SELKIES_FRAMERATE": "30"}])
    assert agent.supervisor.env["SELKIES_FRAMERATE"] == "30"  # a later restart keeps it
    assert agent.adaptations == [
        {
            "what": "framerate",
            "before": "60",
            "after": "30",
            "why": "host CPU above 80% for 10 s",
            "live": live,
        }
    ]


class _SizedSelkies(Selkies):
    """Selkies 2.x on a display of `size`, whose resizes are written to `resized`."""

    def __init__(self, size: str, resized: Path) -> None:
        super().__init__(["selkies"], "2.1.0")
        self.display_size = size
        self.resized = resized

    def size_command(self) -> list[str] | None:
        return [sys.executable, "-c", f"print({self.display_size!r})"]

    def resize_command(self, size: str) -> list[str] | None:
        script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
        return [sys.executable, "-c", script, str(self.resized), size]


async def test_the_latency_rule_scales_the_display_it_has_and_restores_that_size(
    tmp_path: Path,
) -> None:
    """A viewer's 1280x656 window (resize on) is stepped down to 5/6 of itself, never up to a
    fixed 1600x900, and "native" gives it back that size (it used to leave the display as it
    was stepped)."""
    resized = tmp_path / "resized"
    agent = Agent(
        agent_env(str(uuid.uuid4()), "http://unused", gpus=0), _SizedSelkies("1280x656", resized)
    )
    slow = StreamStats(frames_decoded=100, jitter_ms=1.0, fps=30, rtt_latency_ms=180.0)
    await agent._read_native_size(slow)
    assert agent.latency.native == (1280, 656)
    agent.latency.observe(0, 180.0)  # bitrate only
    down = agent.latency.observe(6, 180.0)
    assert [(c.what, c.before, c.after) for c in down if c.what == "resolution"] == [
        ("resolution", "native", "1066x546")
    ]
    await agent._apply([c for c in down if c.what == "resolution"])
    agent.streamer.display_size = "1066x546"  # type: ignore[attr-defined]
    await agent._read_native_size(slow)  # stepped: the size it had before stays the native one
    assert agent.latency.native == (1280, 656)
    up = agent.latency.observe(12, 20.0)
    await agent._apply([c for c in up if c.what == "resolution"])
    assert resized.read_text().split() == ["1066x546", "1280x656"]
    assert [a["after"] for a in agent.adaptations] == ["1066x546", "native"]


async def test_a_display_size_that_cannot_be_read_keeps_the_default(tmp_path: Path) -> None:
    agent = Agent(
        agent_env(str(uuid.uuid4()), "http://unused", gpus=0),
        _SizedSelkies("no display", tmp_path / "resized"),
    )
    await agent._read_native_size(
        StreamStats(frames_decoded=100, jitter_ms=1.0, fps=30, rtt_latency_ms=180.0)
    )
    assert agent.latency.native == (1920, 1080)
