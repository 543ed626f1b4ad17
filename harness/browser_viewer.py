"""A real browser as the viewer: Debian's headless Chromium driven by chromedriver.

Two uses:
- a session's own page (Selkies'), with basic auth on every request and every peer connection
  forced relay only (or only recorded) before any page script runs;
- the glass-to-glass harness: a page of ours answers a GStreamer sender's offer (bench/
  webrtc_sender.py) with Chromium's own WebRTC stack.

Either way the page can measure glass to glass: `MEASURE` (injected before any page script)
times every picture the <video> element presents with `requestVideoFrameCallback`, reads the
capture time stamped in the picture (harness/pixelcode.py) from a canvas copy of its top rows, and
keeps both in the page's clock. `ClockServer` answers the harness' CLOCK_MONOTONIC over HTTP; the
page measures the offset between the two clocks itself (the fetch with the shortest round trip,
as NTP does), so a capture time and a presentation time compare on one clock. Chromium's
`performance.now()` runs on CLOCK_MONOTONIC too (base::TimeTicks on Linux), so the offset does
not drift; the harness checks that by calibrating again at the end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psutil

from harness import pixelcode

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# Before any page script: every RTCPeerConnection relay only (as a user behind a strict NAT) and
# kept where the harness can read its getStats. RECORD_PEERS only keeps them.
FORCE_RELAY = """
(() => {
  const Original = window.RTCPeerConnection;
  window.__vdiPeers = [];
  window.RTCPeerConnection = function (config, ...rest) {
    const pc = new Original(Object.assign({}, config || {}, {iceTransportPolicy: "relay"}),
                            ...rest);
    window.__vdiPeers.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
  Object.setPrototypeOf(window.RTCPeerConnection, Original);
})();
"""
RECORD_PEERS = FORCE_RELAY.replace('{iceTransportPolicy: "relay"}', "{}")

# The spec's Check 3, read where the spec says: the browser's own statistics.
READ_STATS = """
const done = arguments[arguments.length - 1];
const peers = window.__vdiPeers || [];
if (!peers.length) { done({peers: 0}); return; }
const pc = peers[peers.length - 1];
pc.getStats().then((stats) => {
  const out = {peers: peers.length, state: pc.connectionState, local_types: [], remote_types: []};
  const byId = {};
  stats.forEach((r) => { byId[r.id] = r; });
  stats.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") {
      Object.assign(out, {frames_decoded: r.framesDecoded, jitter_s: r.jitter,
        fps: r.framesPerSecond, frames_dropped: r.framesDropped, packets_lost: r.packetsLost,
        packets_received: r.packetsReceived, width: r.frameWidth, height: r.frameHeight,
        frames_received: r.framesReceived, jitter_buffer_delay_s: r.jitterBufferDelay,
        jitter_buffer_target_delay_s: r.jitterBufferTargetDelay,
        jitter_buffer_emitted: r.jitterBufferEmittedCount, total_decode_time_s: r.totalDecodeTime,
        total_processing_delay_s: r.totalProcessingDelay,
        total_assembly_time_s: r.totalAssemblyTime, freeze_count: r.freezeCount,
        decoder: r.decoderImplementation});
    }
    if (r.type === "local-candidate") out.local_types.push(r.candidateType);
    if (r.type === "remote-candidate") out.remote_types.push(r.candidateType);
    if (r.type === "transport" && r.selectedCandidatePairId) {
      const pair = byId[r.selectedCandidatePairId];
      if (pair) {
        out.pair = {local: (byId[pair.localCandidateId] || {}).candidateType,
                    remote: (byId[pair.remoteCandidateId] || {}).candidateType,
                    rtt_s: pair.currentRoundTripTime};
      }
    }
  });
  done(out);
}).catch((e) => done({error: String(e)}));
"""

# The measurement, installed before any page script as window.__vdiMeasure. attach(video) times
# every picture the element presents; the pixel code is read exactly as harness/pixelcode.py
# reads it (the mean luma of each block's inner pixels against mid-grey, then the check).
MEASURE = (
    "(() => {\n"
    f"  const BLOCK = {pixelcode.BLOCK}, BITS = {pixelcode.BITS};\n"
    f"  const TIME_BITS = {pixelcode.TIME_BITS}n, SEQ_BITS = {pixelcode.SEQ_BITS}n;\n"
    f"  const CHECK_BITS = {pixelcode.CHECK_BITS}n;\n"
    """
  const check = (payload) => {
    let folded = 0x5an;
    for (let shift = 0n; shift < TIME_BITS + SEQ_BITS; shift += 8n) {
      folded ^= (payload >> shift) & 0xffn;
    }
    return folded;
  };
  // The blocks' bits from luma: `luma(x, y)` of the picture's top BLOCK lines.
  const decode = (luma) => {
    let value = 0n;
    const lo = BLOCK / 4, hi = BLOCK - BLOCK / 4, threshold = 128 * (hi - lo) * (hi - lo);
    for (let i = 0; i < BITS; i++) {
      let total = 0;
      for (let y = lo; y < hi; y++) {
        for (let x = i * BLOCK + lo; x < i * BLOCK + hi; x++) total += luma(x, y);
      }
      value = (value << 1n) | (total > threshold ? 1n : 0n);
    }
    const payload = value >> CHECK_BITS;
    if (check(payload) !== (value & 0xffn)) return null;
    return [Number(payload >> SEQ_BITS), Number(payload & 0xffn)];
  };
  const WIDTH = BITS * BLOCK;
  const RGB = {RGBA: [0, 1, 2], RGBX: [0, 1, 2], BGRA: [2, 1, 0], BGRX: [2, 1, 0]};
  // The stamp of the picture the element shows now. A VideoFrame of the element copies just
  // the stamp's rectangle in the decoder's own format (the Y plane of I420/NV12 is luma, read
  // as harness/pixelcode.py reads it); a canvas copy converts the whole picture to RGB first
  // (12 ms a picture at 720p here), so it is only the fallback.
  const readStamp = async (video, context) => {
    if (typeof VideoFrame !== "undefined") {
      // No current picture (the element is between pictures, e.g. as the stream's size
      // changes): this callback's picture is gone, so it is skipped, and the next one read.
      // Counted apart (element_between_pictures), never as a read error.
      if (video.readyState < HTMLMediaElement.HAVE_CURRENT_DATA) {
        m.between_pictures++;
        return null;
      }
      let frame = null;
      try {
        frame = new VideoFrame(video);
        const rect = {x: 0, y: 0, width: WIDTH, height: BLOCK};
        const buffer = new Uint8Array(frame.allocationSize({rect}));
        const layout = await frame.copyTo(buffer, {rect});
        const format = frame.format;
        if (format === "I420" || format === "I420A" || format === "NV12") {
          const {offset, stride} = layout[0];
          return decode((x, y) => buffer[offset + y * stride + x]);
        }
        if (RGB[format]) {
          const [r, g, b] = RGB[format], {offset, stride} = layout[0];
          return decode((x, y) => {
            const p = offset + y * stride + x * 4;
            return 0.299 * buffer[p + r] + 0.587 * buffer[p + g] + 0.114 * buffer[p + b];
          });
        }
      } catch (error) {
        if (frame === null && error.name === "InvalidStateError") {
          // the same, seen by the constructor: "Invalid source state" (no current picture)
          m.between_pictures++;
          return null;
        }
        m.errors.add(String(error));
      } finally {
        if (frame !== null) frame.close();
      }
    }
    context.drawImage(video, 0, 0, WIDTH, BLOCK, 0, 0, WIDTH, BLOCK);
    const data = context.getImageData(0, 0, WIDTH, BLOCK).data;
    m.canvas_reads++;
    return decode((x, y) => {
      const p = (y * WIDTH + x) * 4;
      return 0.299 * data[p] + 0.587 * data[p + 1] + 0.114 * data[p + 2];
    });
  };
  const m = window.__vdiMeasure = {frames: [], unreadable: 0, callbacks: 0, attached: null,
    canvas_reads: 0, between_pictures: 0, errors: new Set()};
  m.calibrate = async (url, count) => {
    let best = null;
    const rtts = [];
    for (let i = 0; i < count; i++) {
      const t0 = performance.now();
      const answer = await fetch(url, {cache: "no-store"});
      const text = await answer.text();
      const t1 = performance.now();
      const offset = JSON.parse(text).monotonic_us / 1000 - (t0 + t1) / 2;
      rtts.push(t1 - t0);
      if (best === null || t1 - t0 < best.rtt_ms) best = {rtt_ms: t1 - t0, offset_ms: offset};
    }
    rtts.sort((a, b) => a - b);
    best.median_rtt_ms = rtts[rtts.length >> 1];
    return best;
  };
  m.attach = (video) => {
    if (m.attached === video) return;
    m.attached = video;
    const canvas = document.createElement("canvas");
    canvas.width = WIDTH;
    canvas.height = BLOCK;
    const context = canvas.getContext("2d", {willReadFrequently: true});
    const onFrame = (now, meta) => {
      if (m.attached !== video) return;
      video.requestVideoFrameCallback(onFrame);
      m.callbacks++;
      if (video.videoWidth < WIDTH) { m.unreadable++; return; }
      const t0 = performance.now();
      readStamp(video, context).then((stamp) => {
        const read = performance.now() - t0;
        if (stamp === null) { m.unreadable++; return; }
        m.frames.push([stamp[0], stamp[1], meta.presentationTime, meta.expectedDisplayTime,
          meta.receiveTime === undefined ? null : meta.receiveTime, now, meta.presentedFrames,
          read, meta.width, meta.height]);
      }, (error) => { m.errors.add(String(error)); m.unreadable++; });
    };
    video.requestVideoFrameCallback(onFrame);
  };
  // The first <video> that shows a live stream: a session page's own element.
  m.find = () => {
    for (const video of document.querySelectorAll("video")) {
      const stream = video.srcObject;
      if (stream && stream.getVideoTracks && stream.getVideoTracks().length && video.videoWidth) {
        return video;
      }
    }
    return null;
  };
  m.take = () => {
    const frames = m.frames;
    m.frames = [];
    const out = {frames, unreadable: m.unreadable, callbacks: m.callbacks,
      canvas_reads: m.canvas_reads, between_pictures: m.between_pictures, errors: [...m.errors]};
    m.unreadable = 0;
    m.between_pictures = 0;
    m.callbacks = 0;
    m.canvas_reads = 0;
    return out;
  };
})();
"""
)

# Our viewer page for a GStreamer sender: answer its offer (no trickle: it offers once its
# gathering is complete, and our answer goes back once ours is), show the stream, measure it.
VIEWER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>vdi glass to glass</title>
<style>html,body{margin:0;background:#000}video{display:block}</style></head>
<body><video id="stream" autoplay muted playsinline></video>
<script>
window.__vdiAnswer = async (offer, candidates, iceServers, relayOnly) => {
  const video = document.getElementById("stream");
  const pc = new RTCPeerConnection({iceServers,
    iceTransportPolicy: relayOnly ? "relay" : "all"});
  (window.__vdiPeers = window.__vdiPeers || []).push(pc);
  pc.ontrack = (event) => {
    video.srcObject = new MediaStream([event.track]);
    window.__vdiMeasure.attach(video);
  };
  await pc.setRemoteDescription({type: "offer", sdp: offer});
  for (const line of candidates) {
    try {
      await pc.addIceCandidate({candidate: line.replace(/^a=/, ""), sdpMLineIndex: 0});
    } catch (error) { /* already in the offer */ }
  }
  await pc.setLocalDescription(await pc.createAnswer());
  if (pc.iceGatheringState !== "complete") {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, 10000);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
      });
    });
  }
  return pc.localDescription.sdp;
};
</script></body></html>
"""

CALIBRATE = """
const done = arguments[arguments.length - 1];
window.__vdiMeasure.calibrate(arguments[0], arguments[1]).then(done,
  (e) => done({error: String(e)}));
"""
ANSWER = """
const done = arguments[arguments.length - 1];
window.__vdiAnswer(arguments[0], arguments[1], arguments[2], arguments[3]).then(
  (sdp) => done({sdp}), (e) => done({error: String(e)}));
"""


class ClockServer:
    """HTTP on `host`: GET /clock answers this machine's CLOCK_MONOTONIC in microseconds (what
    the stamps carry), GET / the viewer page. Cross-origin reads allowed, so a session's own
    page (another origin) can calibrate too. Runs in a thread; stop() closes it."""

    def __init__(self, host: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/clock"):
                    body = json.dumps({"monotonic_us": time.monotonic_ns() // 1000}).encode()
                    kind = "application/json"
                elif self.path in ("/", "/viewer"):
                    body, kind = VIEWER_PAGE.encode(), "text/html; charset=utf-8"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self._allow()
                self.end_headers()
                self.wfile.write(body)

            def do_OPTIONS(self) -> None:
                self.send_response(204)
                self._allow()
                self.send_header("Access-Control-Allow-Headers", "*")
                self.send_header("Access-Control-Allow-Private-Network", "true")
                self.end_headers()

            def _allow(self) -> None:
                self.send_header("Access-Control-Allow-Origin", "*")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def chromium(
    user: str | None = None,
    password: str | None = None,
    *,
    relay_only: bool = True,
    measure: bool = False,
    window: tuple[int, int] = (1280, 800),
    arguments: tuple[str, ...] = (),
) -> Iterator[Any]:
    """Headless Chromium (Debian's) through chromedriver. With `user`, basic auth on every
    request the page makes (CDP headers: `user:pass@` in the URL breaks Selkies 2.1.0's
    fetches). Peer connections relay only unless `relay_only` is false; `measure` installs the
    glass-to-glass measurement before any page script; `arguments` are added to Chromium's."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a private namespace
        "--disable-gpu",
        "--autoplay-policy=no-user-gesture-required",
        f"--window-size={window[0]},{window[1]}",
        *arguments,
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        if user is not None:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            driver.execute_cdp_cmd(
                "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
            )
        scripts = [FORCE_RELAY if relay_only else RECORD_PEERS]
        if measure:
            scripts.append(MEASURE)
        for source in scripts:
            driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": source})
        yield driver
    finally:
        driver.quit()


def frames_decoded(driver: Any, alerts: list[str] | None = None) -> int:
    """The frames the page has decoded (0 once its peer connection is gone). An alert the page
    raised (Selkies' page says a refusal in one, which blocks the driver) is taken down and
    its text added to `alerts`."""
    from selenium.common.exceptions import UnexpectedAlertPresentException

    try:
        stats = driver.execute_async_script(READ_STATS) or {}
    except UnexpectedAlertPresentException as alert:
        if alerts is not None:
            alerts.append(str(alert.alert_text))
        with contextlib.suppress(Exception):
            driver.switch_to.alert.accept()
        return 0
    return int(stats.get("frames_decoded") or 0)


def video_stopped_after(
    driver: Any, within_s: float, alerts: list[str] | None = None
) -> float | None:
    """Seconds from now until the page's video stopped (no frame decoded for a second after
    it); None if it kept playing for `within_s`."""
    started = time.monotonic()
    last, last_change = frames_decoded(driver, alerts), time.monotonic()
    while time.monotonic() - started < within_s:
        time.sleep(0.2)
        now = frames_decoded(driver, alerts)
        if now != last:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change >= 1.0:
            return last_change - started
    return None


def chromium_processes(driver: Any) -> list[psutil.Process]:
    service = psutil.Process(driver.service.process.pid)
    return [service, *service.children(recursive=True)]


# -- reading the measurement back --------------------------------------------------------------


def calibrate(driver: Any, clock: ClockServer, count: int = 30) -> dict[str, float]:
    """The offset from the page's performance.now() to CLOCK_MONOTONIC (ms), and the shortest
    round trip it was measured with (its uncertainty is half of that)."""
    result: dict[str, Any] = driver.execute_async_script(CALIBRATE, f"{clock.url}/clock", count)
    if "error" in result:
        raise RuntimeError(f"the page could not read the clock: {result['error']}")
    return result


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per-frame figures of the measured spell from two READ_STATS readings: the jitter
    buffer's delay per emitted frame, decode time and processing delay per decoded frame."""

    def per(total: str, count: str) -> float | None:
        frames = (after.get(count) or 0) - (before.get(count) or 0)
        if frames <= 0 or after.get(total) is None:
            return None
        return round(1000 * ((after.get(total) or 0) - (before.get(total) or 0)) / frames, 2)

    return {
        "frames_decoded": after.get("frames_decoded"),
        "frames_dropped": (after.get("frames_dropped") or 0) - (before.get("frames_dropped") or 0),
        "packets_lost": after.get("packets_lost"),
        "jitter_ms": None if after.get("jitter_s") is None else round(after["jitter_s"] * 1000, 2),
        "jitter_buffer_ms": per("jitter_buffer_delay_s", "jitter_buffer_emitted"),
        "decode_ms": per("total_decode_time_s", "frames_decoded"),
        "processing_ms": per("total_processing_delay_s", "frames_decoded"),
        "assembly_ms": per("total_assembly_time_s", "frames_decoded"),
        "freezes": (after.get("freeze_count") or 0) - (before.get("freeze_count") or 0),
        "decoder": after.get("decoder"),
        "fps_reported": after.get("fps"),
        "pair": after.get("pair"),
        "local_candidate_types": sorted(set(after.get("local_types", []))),
        "remote_candidate_types": sorted(set(after.get("remote_types", []))),
    }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))], 2)


def take(driver: Any, into: dict[str, Any]) -> None:
    """Move the page's frame records into `into` (frames, unreadable, canvas_reads, errors)."""
    taken = driver.execute_script("return window.__vdiMeasure.take()")
    into.setdefault("frames", []).extend(taken["frames"])
    for key in ("unreadable", "canvas_reads", "callbacks", "between_pictures"):
        into[key] = into.get(key, 0) + taken.get(key, 0)
    into["errors"] = sorted(set(into.get("errors", [])) | set(taken["errors"]))


def latency_figures(taken: dict[str, Any], offset_ms: float) -> dict[str, Any]:
    """From the page's frame records, per picture (its first showing only: a picture captured
    twice is one change), on one clock:
    - capture -> shown (`p50_ms` ...): the page's rendering frame that shows the picture
      (requestVideoFrameCallback's `now`, the frame's start on Chromium's frame clock);
    - capture -> handed to the compositor (`presentationTime`): the same instant for a
      smoothed stream; earlier by up to a frame when the sender asks for no playout delay
      (Chromium's low-latency renderer then passes each picture on as soon as it is decoded,
      and it waits for the next frame there);
    - capture -> last packet received (`receiveTime`): the sender's and the network's part;
    - Chromium's expectedDisplayTime, kept for reference (headless has no display: it is an
      estimate, and on the low-latency path it moved by a frame from one browser to the next).
    """
    seen: set[tuple[int, int]] = set()
    shown, presented, received, expected, reads = [], [], [], [], []
    first = last = None
    repeated = 0
    size = None
    for stamp_us, sequence, present, display, receive, now, _pf, read, w, h in taken["frames"]:
        if (stamp_us, sequence) in seen:
            repeated += 1
            continue
        seen.add((stamp_us, sequence))
        captured = stamp_us / 1000 - offset_ms  # on the page's clock
        shown.append(now - captured)
        presented.append(present - captured)
        expected.append(display - captured)
        if receive is not None:
            received.append(receive - captured)
        reads.append(read)
        first = now if first is None else first
        last, size = now, f"{w}x{h}"
    span_s = (last - first) / 1000 if first is not None and last is not None else 0.0
    return {
        "frames_measured": len(shown),
        "frames_repeated": repeated,
        "frames_unreadable": taken.get("unreadable", 0),
        # the element held no current picture when its callback read it: skipped, not errors
        "frames_between_pictures": taken.get("between_pictures", 0),
        "frames_presented": taken.get("callbacks", 0),
        "canvas_reads": taken.get("canvas_reads", 0),
        "read_errors": taken.get("errors", []),
        "fps": round((len(shown) - 1) / span_s, 1) if span_s > 0 else 0.0,
        "p50_ms": percentile(shown, 50),
        "p95_ms": percentile(shown, 95),
        "p99_ms": percentile(shown, 99),
        "presented_p50_ms": percentile(presented, 50),
        "presented_p95_ms": percentile(presented, 95),
        "received_p50_ms": percentile(received, 50),
        "received_p95_ms": percentile(received, 95),
        "display_p50_ms": percentile(expected, 50),
        "read_ms_median": round(statistics.median(reads), 2) if reads else None,
        "resolution": size,
        "latencies_ms": [round(v, 2) for v in shown],
        "presented_latencies_ms": [round(v, 2) for v in presented],
        "received_latencies_ms": [round(v, 2) for v in received],
    }


async def read_stats(driver: Any) -> dict[str, Any]:
    stats: dict[str, Any] = await asyncio.to_thread(driver.execute_async_script, READ_STATS)
    return stats


async def wait_decoding(driver: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while ((await read_stats(driver)).get("frames_decoded") or 0) == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Chromium decoded nothing: {await read_stats(driver)}")
        await asyncio.sleep(0.2)


async def measure(
    driver: Any,
    clock: ClockServer,
    seconds: float,
    *,
    warmup_s: float = 1.0,
    on_sample: Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """With the page decoding and the measurement attached to its <video>: calibrate the
    clock, let `warmup_s` pass, then collect every presented picture for `seconds`, the
    browser's getStats before and after, and calibrate again (the offset must not move).
    `on_sample(stats, recent_figures)` is called twice a second while measuring."""
    clock_before = await asyncio.to_thread(calibrate, driver, clock)
    await asyncio.sleep(warmup_s)
    await asyncio.to_thread(take, driver, {})
    before = await read_stats(driver)
    taken: dict[str, Any] = {"frames": []}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(take, driver, taken)
        if on_sample is not None and taken["frames"]:
            recent = latency_figures({"frames": taken["frames"][-60:]}, clock_before["offset_ms"])
            await on_sample(await read_stats(driver), recent)
    after = await read_stats(driver)
    clock_after = await asyncio.to_thread(calibrate, driver, clock)
    summary = latency_figures(taken, clock_before["offset_ms"])
    summary.update(stats_delta(before, after))
    pair = summary.get("pair") or {}
    summary["local_candidate"] = pair.get("local")
    summary["remote_candidate"] = pair.get("remote")
    summary["viewer_candidate_types"] = summary["local_candidate_types"]
    summary["clock"] = {
        "rtt_ms": round(clock_before["rtt_ms"], 3),
        "drift_ms": round(clock_after["offset_ms"] - clock_before["offset_ms"], 3),
    }
    summary["viewer"] = "chromium"
    return summary


def pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several connections of one row as one: every picture's figures pooled (each connection
    has its own capture and display phase), the rest from the last; p50 per connection kept."""
    pooled = dict(runs[-1])
    for key in ("latencies_ms", "presented_latencies_ms", "received_latencies_ms"):
        pooled[key] = [value for run in runs for value in run.get(key, [])]
    pooled.update(
        {
            "connections": len(runs),
            "p50_per_connection": [run["p50_ms"] for run in runs],
            "frames_measured": sum(run["frames_measured"] for run in runs),
            "frames_repeated": sum(run.get("frames_repeated", 0) for run in runs),
            "fps": round(statistics.mean(run["fps"] for run in runs), 1),
            "p50_ms": percentile(pooled["latencies_ms"], 50),
            "p95_ms": percentile(pooled["latencies_ms"], 95),
            "p99_ms": percentile(pooled["latencies_ms"], 99),
        }
    )
    for name in ("presented", "received"):
        values = pooled[f"{name}_latencies_ms"]
        if values:
            pooled[f"{name}_p50_ms"] = percentile(values, 50)
            pooled[f"{name}_p95_ms"] = percentile(values, 95)
    for key in ("jitter_ms", "jitter_buffer_ms", "decode_ms", "processing_ms"):
        values = [run[key] for run in runs if run.get(key) is not None]
        if values:
            pooled[key] = max(values) if key == "jitter_ms" else round(statistics.mean(values), 2)
    pooled["frames_dropped"] = sum(run.get("frames_dropped") or 0 for run in runs)
    return pooled
