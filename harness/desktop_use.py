"""Using a desktop as a person does, on either path (local desktops, the Kubernetes path's
session): a sound server as the session image runs it, a tone played into it, keys and clicks
through Chromium on Selkies' page, and what the desktop saw read on its X display (xdotool,
xdpyinfo). Processes started here are stopped by their PID."""

from __future__ import annotations

import array
import contextlib
import math
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from app.runtimes.local import sound_server as local_sound_server
from harness.network import stop

SOUND_TIMEOUT_S = 15

# the page's audio: its receivers' kinds, the audio m-sections of Selkies' offer and of the
# page's answer by direction, and Chromium's inbound-rtp audio figures
READ_AUDIO = """
const done = arguments[arguments.length - 1];
const peers = window.__vdiPeers || [];
if (!peers.length) { done({kinds: []}); return; }
const pc = peers[peers.length - 1];
pc.getStats().then(stats => {
  const sections = d => ((d || {}).sdp || '').split('\\r\\nm=').slice(1);
  const audio = d => sections(d).filter(section => section.startsWith('audio'))
    .map(section => (section.match(/a=(sendonly|recvonly|sendrecv|inactive)/) || ['', '?'])[1]);
  const out = {kinds: pc.getReceivers().map(r => r.track.kind),
               media: sections(pc.remoteDescription).map(section => section.split(' ')[0]),
               offered_audio: audio(pc.remoteDescription),
               answered_audio: audio(pc.localDescription)};
  stats.forEach(r => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') {
      Object.assign(out, {packets: r.packetsReceived, samples: r.totalSamplesReceived,
                          level: r.audioLevel, energy: r.totalAudioEnergy});
    }
  });
  done(out);
});
"""


# -- sound --------------------------------------------------------------------------------------


@contextlib.contextmanager
def sound_server(directory: Path) -> Iterator[str]:
    """PulseAudio, as a local desktop runs it, on a socket in `directory` (no default script:
    nothing of the host's), standing in for the one the session image's entrypoint starts at
    PULSE_SERVER; yields its PULSE_SERVER. Selkies makes its own null sinks on it and streams
    their monitor."""
    directory.mkdir(mode=0o700, exist_ok=True)
    socket = directory / "native"
    command, own = local_sound_server("pulseaudio", str(directory))
    process = subprocess.Popen(
        command,
        env={"PATH": "/usr/bin:/bin", "HOME": str(directory), **own},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + SOUND_TIMEOUT_S
        while not socket.exists():
            if process.poll() is not None:
                raise RuntimeError(f"PulseAudio exited ({process.returncode}) before its socket")
            if time.monotonic() > deadline:
                raise RuntimeError(f"PulseAudio made no socket within {SOUND_TIMEOUT_S} s")
            time.sleep(0.05)
        yield f"unix:{socket}"
    finally:
        stop(process)


def play_tone(
    sound: dict[str, str], hz: int = 440, amplitude: float = 0.4
) -> subprocess.Popen[bytes]:
    """A sine tone into the default sink of the sound server `sound` names (PULSE_SERVER,
    HOME), as an application plays sound (pacat, 48 kHz stereo), until stopped by its PID."""
    second = array.array(
        "h",
        (
            int(amplitude * 32767 * math.sin(2 * math.pi * hz * n / 48000))
            for n in range(48000)
            for _channel in (0, 1)
        ),
    ).tobytes()
    player = subprocess.Popen(
        ["pacat", "--rate=48000", "--channels=2", "--format=s16le"],
        env={"PATH": "/usr/bin:/bin", **sound},
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def feed() -> None:
        assert player.stdin is not None
        try:
            while player.poll() is None:
                player.stdin.write(second)  # pacat takes it at the tone's own pace
        except (BrokenPipeError, ValueError, OSError):
            return  # stopped

    threading.Thread(target=feed, daemon=True).start()
    return player


def audio_until(
    driver: Any, check: Callable[[dict[str, Any]], bool], within_s: float
) -> dict[str, Any]:
    """The page's audio figures once `check` holds, or the last ones after `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        audio: dict[str, Any] = driver.execute_async_script(READ_AUDIO)
        if check(audio) or time.monotonic() > deadline:
            return audio
        time.sleep(0.5)


# -- keyboard, mouse and the window --------------------------------------------------------------


def click(driver: Any, x: int, y: int) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(x, y)  # type: ignore[no-untyped-call]
    actions.pointer_action.click()
    actions.perform()


def type_keys(driver: Any, text: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(text).perform()


def viewport(driver: Any) -> tuple[int, int]:
    """The page's size as the display takes it: even, as the H.264 encoder needs."""
    size = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    return int(size[0]) // 2 * 2, int(size[1]) // 2 * 2


def arrives(read: Callable[[], Any], value: Any, within_s: float) -> bool:
    """`read()` gives `value` within `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if read() == value:
            return True
        time.sleep(0.25)
    return False


# -- the desktop's X display ---------------------------------------------------------------------


def x_output(env: dict[str, str], *command: str) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=15, check=False)
    return done.stdout.strip()


def display_size(env: dict[str, str]) -> tuple[int, int]:
    """The display's size (xdpyinfo) on the display `env` names (DISPLAY, XAUTHORITY)."""
    found = re.search(r"dimensions:\s+(\d+)x(\d+) pixels", x_output(env, "xdpyinfo"))
    assert found, "xdpyinfo printed no dimensions"
    return int(found[1]), int(found[2])


def pointer(env: dict[str, str]) -> tuple[int, int]:
    """Where the display's pointer is (xdotool getmouselocation)."""
    found = re.search(r"x:(\d+) y:(\d+)", x_output(env, "xdotool", "getmouselocation"))
    assert found, "xdotool printed no location"
    return int(found[1]), int(found[2])


def lands(env: dict[str, str], x: int, y: int, within_s: float = 10) -> bool:
    """The desktop's pointer is where the page was clicked (to the pixel the scaling of an odd
    page size onto the even display may take)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        at = pointer(env)
        if abs(at[0] - x) <= 1 and abs(at[1] - y) <= 1:
            return True
        time.sleep(0.25)
    return False
