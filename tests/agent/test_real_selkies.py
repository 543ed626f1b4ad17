"""The agent against the real Selkies 2.x (pinned, installed by agent/install-selkies.sh as the
session image installs it): its version, its NVENC probe on a machine without NVENC, and its
real configuration-error exit under supervision. The whole session with a browser is
tests/e2e/test_selkies_session.py."""

from __future__ import annotations

import asyncio

import pytest

from agent import checks, supervisor
from agent.streamers import detect
from agent.streamers.selkies import SOFTWARE, Selkies
from tests.agent.test_agent import never_restarted, stream_config
from tests.tools import selkies_2

pytestmark = pytest.mark.e2e


def real_selkies() -> Selkies:
    found = Selkies.find([selkies_2()])
    assert found is not None
    return found


def test_the_pinned_selkies_2_is_found_with_its_version() -> None:
    streamer = detect({"VDI_STREAMER": "auto", "VDI_SELKIES_COMMAND": selkies_2()})
    assert isinstance(streamer, Selkies)
    assert streamer.label == "selkies 2.1.0"  # agent/selkies-requirements.txt


def test_the_nvenc_probe_finds_none_here_and_the_agent_falls_back_to_software() -> None:
    streamer = real_selkies()
    nvenc = streamer.probe_nvenc()
    assert (nvenc.ok, nvenc.code) == (False, checks.ENCODER_UNAVAILABLE)
    assert "no NVENC H.264 encoder" in nvenc.detail
    gpu = checks.Check("gpu", True, None, "stand-in for nvidia-smi: this machine has no GPU")
    choice = streamer.choose_encoder(gpu, gpus_requested=1, fallback_allowed=True)
    assert (choice.encoder, choice.fallback, choice.check.code) == (
        SOFTWARE,
        True,
        "SoftwareFallback",
    )
    refused = streamer.choose_encoder(gpu, gpus_requested=1, fallback_allowed=False)
    assert refused.encoder is None
    assert refused.check.code == checks.ENCODER_UNAVAILABLE


async def test_a_real_configuration_error_exits_78_and_is_not_restarted() -> None:
    """Selkies 2.x with basic auth on and no password exits 78 (EX_CONFIG): the agent never
    starts it so (require_safe), but an image that loses the password must fail the session
    once, with Selkies' own words, not restart it five times."""
    streamer = real_selkies()
    config = stream_config(  # websockets: the webrtc mode retries its signalling for 15 s first
        encoder=SOFTWARE, transport="websockets", turn_host="", turn_username="", turn_password=""
    )
    env = streamer.environment(config, {"HOME": "/tmp", "PATH": "/usr/bin:/bin"})
    del env["SELKIES_BASIC_AUTH_PASSWORD"]

    supervised = supervisor.Supervisor(
        streamer.command,
        env,
        on_restart=never_restarted,
        config_error_codes=streamer.config_error_codes,
        secrets=config.secrets,
    )
    outcome = await asyncio.wait_for(supervised.run(), timeout=60)
    assert (outcome.kind, outcome.exit_code) == ("config_error", 78)
    # Selkies' own error line, although a dozen lines of shutting down follow it.
    assert any(
        line.startswith("ERROR:") and "no password was set" in line for line in outcome.log_tail
    )
