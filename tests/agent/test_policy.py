"""The template's desktop policy in the agent: read from the pod's environment, mapped onto each
Selkies line's settings. The 2.x settings are read back by the installed Selkies' own settings
parser, so a value it would not understand, or a lock it would not hold, fails here."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.runner import Agent
from agent.streamers import Permissions, StreamConfig, UnsafeConfiguration
from agent.streamers.selkies import Selkies, policy_settings
from agent.streamers.selkies_gstreamer import SelkiesGStreamer
from tests.agent.test_agent import agent_env, stream_config

# what Selkies 2.x made of its environment: each setting as its parser holds it (a boolean as
# [value, locked]), and the settings payload its page receives
READ_BACK = """
import json, sys
sys.argv = ["selkies"]
from selkies import settings as s
names = json.loads(sys.stdin.read())
held = {name: getattr(s.settings, name) for name in names}
payload = s.build_client_settings_payload()
print(json.dumps({"held": held, "page": {name: payload.get(name) for name in names}}))
"""
NAMES = (
    "enable_clipboard",
    "enable_binary_clipboard",
    "file_transfers",
    "file_transfer_limit_mbps",
    "audio_enabled",
    "microphone_enabled",
    "printing_enabled",
    "gamepad_enabled",
    "webcam_enabled",
    "command_enabled",
    "enable_sharing",
    "enable_shared",
    "enable_collab",
    "enable_player2",
    "enable_player3",
    "enable_player4",
)


def selkies_reads(settings: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", READ_BACK],
        input=json.dumps(NAMES),
        env={"PATH": "/usr/bin:/bin", **settings},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(done.stdout.splitlines()[-1]))


ALWAYS_OFF = {
    name: [False, True]
    for name in (
        "webcam_enabled",
        "command_enabled",
        "enable_sharing",
        "enable_shared",
        "enable_collab",
        "enable_player2",
        "enable_player3",
        "enable_player4",
    )
}


@pytest.mark.parametrize(
    ("permissions", "held"),
    [
        (
            Permissions(),
            {
                "enable_clipboard": "true",
                "enable_binary_clipboard": [True, True],
                "file_transfers": ["upload", "download"],
                "file_transfer_limit_mbps": 0.0,
                "audio_enabled": [True, True],
                "microphone_enabled": [False, True],
                "printing_enabled": [True, True],
                "gamepad_enabled": [True, True],
            },
        ),
        (
            Permissions(
                clipboard="off",
                file_transfer="off",
                file_transfer_limit_mbps=12.5,
                audio=False,
                microphone=True,  # no sound, so no microphone either
                printing=False,
                gamepads=False,
            ),
            {
                "enable_clipboard": "false",
                "enable_binary_clipboard": [False, True],
                "file_transfers": [],
                "file_transfer_limit_mbps": 12.5,
                "audio_enabled": [False, True],
                "microphone_enabled": [False, True],
                "printing_enabled": [False, True],
                "gamepad_enabled": [False, True],
            },
        ),
        (
            Permissions(clipboard="in", file_transfer="upload", microphone=True),
            {
                "enable_clipboard": "in",
                "file_transfers": ["upload"],
                "microphone_enabled": [True, True],
            },
        ),
        (
            Permissions(clipboard="out", file_transfer="download"),
            {"enable_clipboard": "out", "file_transfers": ["download"]},
        ),
    ],
    ids=["defaults", "all-off", "in-upload-mic", "out-download"],
)
def test_selkies_2_holds_the_policy_locked_and_sharing_off(
    permissions: Permissions, held: dict[str, Any]
) -> None:
    read = selkies_reads(policy_settings(permissions))
    assert {name: read["held"][name] for name in held} == held
    assert {name: read["held"][name] for name in ALWAYS_OFF} == ALWAYS_OFF
    # the page is told each boolean is locked, so its menus offer no switch
    assert read["page"]["audio_enabled"]["locked"] is True
    assert read["page"]["enable_sharing"] == {"value": False, "locked": True, "overridden": True}
    assert read["page"]["enable_clipboard"]["value"] == held["enable_clipboard"]


def test_the_policy_comes_from_the_pods_environment() -> None:
    env = {
        "VDI_CLIPBOARD": "in",
        "VDI_FILE_TRANSFER": "download",
        "VDI_FILE_TRANSFER_LIMIT_MBPS": "40",
        "VDI_AUDIO": "false",
        "VDI_MICROPHONE": "true",
        "VDI_PRINTING": "false",
        "VDI_GAMEPADS": "false",
    }
    assert Permissions.from_env(env) == Permissions(
        "in", "download", 40.0, False, True, False, False
    )
    assert Permissions.from_env({}) == Permissions()  # an older control plane: the defaults


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("VDI_CLIPBOARD", "sometimes", "both, in, out, off"),
        ("VDI_FILE_TRANSFER", "sideways", "both, upload, download, off"),
        ("VDI_FILE_TRANSFER_LIMIT_MBPS", "fast", "VDI_FILE_TRANSFER_LIMIT_MBPS"),
    ],
)
def test_a_policy_value_the_agent_does_not_know_stops_it(name: str, value: str, said: str) -> None:
    with pytest.raises(UnsafeConfiguration, match=said):
        StreamConfig.from_env(
            {"SELKIES_PASSWORD": "pw", name: value},
            encoder="x264enc",
            fallback=False,
            framerate=60,
            bitrate=8000,
        )


def test_selkies_gstreamer_holds_the_clipboard_and_refuses_what_it_cannot_hold() -> None:
    line = SelkiesGStreamer(["selkies-gstreamer"], "1.6.2")
    for clipboard, flag in (("both", "true"), ("in", "in"), ("out", "out"), ("off", "false")):
        config = stream_config(permissions=Permissions(clipboard=clipboard))
        assert line.environment(config, {})["SELKIES_ENABLE_CLIPBOARD"] == flag
    # no sound server in the pod: there is no sound to stream, so audio off holds
    assert line.environment(stream_config(permissions=Permissions(audio=False)), {})
    pulse = {"PULSE_SERVER": "unix:/run/pulse/native"}
    for permissions, said in (
        (Permissions(audio=False), "audio: false"),
        (Permissions(gamepads=False), "gamepads: false"),
        (Permissions(microphone=True), "microphone: true"),
    ):
        with pytest.raises(UnsafeConfiguration, match=f"{said}.*streamer 'selkies'"):
            line.environment(stream_config(permissions=permissions), pulse)


def test_selkies_2_gets_the_policy_in_its_environment() -> None:
    config = stream_config(permissions=Permissions(clipboard="off", file_transfer="off"))
    env = Selkies(["selkies"], "2.1.0").environment(config, {})
    assert env["SELKIES_ENABLE_CLIPBOARD"] == "false"
    assert env["SELKIES_FILE_TRANSFERS"] == "none"
    assert env["SELKIES_ENABLE_SHARING"] == "false|locked"


async def test_a_policy_the_agent_cannot_hold_fails_the_session_before_selkies_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = tmp_path / "started"
    script = tmp_path / "selkies"
    script.write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 60\n")
    script.chmod(0o755)
    env = agent_env(
        str(uuid.uuid4()),
        "http://unused",
        gpus=0,
        SELKIES_PASSWORD="s3cret-pw",
        SELKIES_TURN_HOST="turn.example",
        VDI_CLIPBOARD="sometimes",
    )
    agent = Agent(env, Selkies([str(script)], "2.1.0"))
    sent: list[dict[str, Any]] = []

    async def send(report: dict[str, Any], **_: Any) -> bool:
        sent.append(report)
        return True

    monkeypatch.setattr(agent.reporter, "send", send)
    running = asyncio.create_task(agent.run())
    for _ in range(200):
        if sent or running.done():
            break
        await asyncio.sleep(0.02)
    running.cancel()
    if running.done() and not running.cancelled():
        running.result()  # its error, if it ended with one
    stream = next(c for c in sent[-1]["checks"] if c["name"] == "stream")
    assert (stream["ok"], stream["code"]) == (False, "STREAMER_FAILED")
    assert "VDI_CLIPBOARD='sometimes'" in stream["detail"]
    assert agent.supervisor is None
    assert not started.exists()
