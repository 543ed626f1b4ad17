"""The GStreamer pipeline as data: the spec's low-latency reference, with the encoder chosen at
run time and the spec's settings mapped onto the properties the element really has."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

HARDWARE = "nvh264enc"
SOFTWARE = "x264enc"

# The spec's nvh264enc settings (legacy element, GStreamer <= 1.24), in its order.
SPEC_NVENC = {
    "preset": "low-latency-hq",
    "rc-mode": "cbr",
    "bitrate": None,
    "gop-size": None,
    "bframes": "0",
    "aud": "false",
}
# GStreamer >= 1.25 names nvh264enc the CUDA encoder: same intent, other names and values.
CUDA_NVENC_EQUIVALENTS = {
    "preset": ("preset", {"low-latency-hq": "p1"}),
    "bframes": ("b-frames", {}),
}
CUDA_EXTRA = {"tune": "ultra-low-latency", "zerolatency": "true"}


@dataclass(frozen=True)
class Element:
    factory: str
    properties: tuple[tuple[str, str], ...] = ()
    name: str | None = None

    def render(self) -> str:
        parts = [self.factory]
        if self.name:
            parts.append(f"name={self.name}")
        parts += [f"{key}={value}" for key, value in self.properties]
        return " ".join(parts)


@dataclass(frozen=True)
class Caps:
    text: str

    def render(self) -> str:
        return self.text


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[Element | Caps, ...]
    applied: Mapping[str, str] = field(default_factory=dict)  # encoder settings really set
    dropped: tuple[str, ...] = ()  # spec settings the element does not have

    def render(self) -> str:
        return " ! ".join(stage.render() for stage in self.stages)

    @property
    def encoder(self) -> str:
        return next(
            s.factory for s in self.stages if isinstance(s, Element) and s.factory.endswith("enc")
        )


@dataclass(frozen=True)
class StreamSettings:
    bitrate_kbps: int = 8000
    gop_size: int = 30
    framerate: int | None = None  # None: capture as fast as the source goes (the spec's form)
    width: int | None = None
    height: int | None = None


def nvenc_properties(
    available: Mapping[str, tuple[str, ...]] | None, settings: StreamSettings
) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The spec's nvh264enc settings, mapped onto the properties the element has.

    `available` is what gst-inspect reported: property name -> accepted enum values (empty for
    non-enums). None means "assume the legacy element" (the spec's exact properties)."""
    wanted = dict(
        SPEC_NVENC, bitrate=str(settings.bitrate_kbps), **{"gop-size": str(settings.gop_size)}
    )
    if available is None:
        return tuple((k, str(v)) for k, v in wanted.items()), ()
    legacy = "low-latency-hq" in available.get("preset", ())
    applied: list[tuple[str, str]] = []
    dropped: list[str] = []
    for key, value in wanted.items():
        target, values = key, dict[str, str]()
        if not legacy and key in CUDA_NVENC_EQUIVALENTS:
            target, values = CUDA_NVENC_EQUIVALENTS[key]
        value = values.get(str(value), str(value))
        choices = available.get(target)
        if choices is None or (choices and value not in choices):
            dropped.append(f"{key}={value}")
            continue
        applied.append((target, value))
    if not legacy:  # the new encoder: ask for its low-latency tuning as well
        for key, value in CUDA_EXTRA.items():
            choices = available.get(key)
            if choices is not None and (not choices or value in choices):
                applied.append((key, value))
    return tuple(applied), tuple(dropped)


def x264_properties(settings: StreamSettings) -> tuple[tuple[str, str], ...]:
    """The spec's fallback: ultrafast, zerolatency, the same bitrate and GOP, no B-frames."""
    return (
        ("speed-preset", "ultrafast"),
        ("tune", "zerolatency"),
        ("bitrate", str(settings.bitrate_kbps)),
        ("key-int-max", str(settings.gop_size)),
        ("bframes", "0"),
    )


# x264enc lists 4:4:4 first among its input formats, so a BGRx screen (ximagesrc) would be
# encoded as High 4:4:4 Predictive, which no browser decodes over WebRTC. The fallback is
# pinned to 4:2:0 in and Constrained Baseline out: every browser decodes that (Firefox's
# OpenH264 and aiortc accept nothing else) and ultrafast uses no Main/High tool anyway.
X264_INPUT = Caps("video/x-raw,format=I420")
X264_OUTPUT = Caps("video/x-h264,profile=constrained-baseline,stream-format=byte-stream")


def build(
    encoder: str,
    settings: StreamSettings,
    *,
    source: Element | Sequence[Element | Caps] | None = None,
    nvenc_available: Mapping[str, tuple[str, ...]] | None = None,
    sink: Element | None = None,
) -> Pipeline:
    """`ximagesrc show-pointer=true ! videoconvert ! <encoder> ! rtph264pay config-interval=1
    pt=96 ! webrtcbin name=sendrecv bundle-policy=max-bundle` (spec), with optional caps for a
    frame-rate cap or a resolution step and another source or sink (tests, benches); the x264
    fallback gets the caps above around the encoder. `source` may be several stages."""
    if source is None:
        source = Element("ximagesrc", (("show-pointer", "true"),))
    stages: list[Element | Caps] = [source] if isinstance(source, Element) else list(source)
    if settings.framerate is not None:
        # Caps alone: ximagesrc (and live test sources) pace themselves to the asked rate. A
        # videorate here would hold every frame until the next one arrives to decide whether to
        # drop or duplicate: one frame interval (16.7 ms at 60 fps) of latency, measured.
        stages.append(Caps(f"video/x-raw,framerate={settings.framerate}/1"))
    stages.append(Element("videoconvert"))
    if encoder == SOFTWARE:
        stages.append(X264_INPUT)
    if settings.width and settings.height:
        stages += [
            Element("videoscale"),
            Caps(f"video/x-raw,width={settings.width},height={settings.height}"),
        ]
    dropped: tuple[str, ...] = ()
    if encoder == HARDWARE:
        properties, dropped = nvenc_properties(nvenc_available, settings)
    elif encoder == SOFTWARE:
        properties = x264_properties(settings)
    else:
        raise ValueError(f"unknown encoder {encoder!r}")
    if encoder == SOFTWARE:
        stages += [Element(encoder, properties), X264_OUTPUT]
    else:
        stages.append(Element(encoder, properties))
    stages.append(Element("rtph264pay", (("config-interval", "1"), ("pt", "96"))))
    stages.append(sink or Element("webrtcbin", (("bundle-policy", "max-bundle"),), name="sendrecv"))
    return Pipeline(tuple(stages), applied=dict(properties), dropped=dropped)
