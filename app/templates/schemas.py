"""Wire models of the template API."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app import k8s_rules
from app.config import DNS_LABEL_PATTERN

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=32, examples=["16Gi"])]
TemplateName = Annotated[
    str, Field(pattern=DNS_LABEL_PATTERN, max_length=63, examples=["gpu-desktop"])
]
LabelKey = Annotated[
    str, Field(pattern=r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
]


class Toleration(BaseModel):
    # Sent back in TemplateOut: there each field is required (the document has Toleration for
    # the request and TolerationOut for the answer).
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

    key: str | None = Field(default=None, max_length=316, examples=["nvidia.com/gpu"])
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)


Clipboard = Literal["both", "in", "out", "off"]
FileTransfer = Literal["both", "upload", "download", "off"]
Sharing = Literal["off", "view", "collab"]
SHARING_DESCRIPTION = (
    "Who besides the user may open the desktop: `off` (no one: no shares), `view` (view-only "
    "shares: video and sound, no keyboard, mouse, clipboard or files) or `collab` (view-only "
    "shares and collaborator shares, whose keyboard and mouse reach the desktop). Selkies 2.x "
    "only (its secure mode): every page then opens with a token, the user's own being "
    "`launch_url` of the connection"
)
# What each line can enforce beyond Selkies-GStreamer 1.x's clipboard (true/false/in/out): 1.x
# always streams audio and takes gamepads, and has no microphone, file transfer or printing.
POLICY_FIELDS = (
    "clipboard",
    "file_transfer",
    "file_transfer_limit_mbps",
    "audio",
    "microphone",
    "printing",
    "gamepads",
    "sharing",
)


def policy_document(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """A session's policy from its template's stored spec: a session created before policies
    existed (or a member missing) has the defaults, which are what it was given then."""
    stored = stored or {}
    document = {
        name: stored[name] if stored.get(name) is not None else POLICY_DEFAULTS[name]
        for name in POLICY_FIELDS
    }
    # a number stored as 0 is written 0.0, as the model writes it
    document["file_transfer_limit_mbps"] = float(document["file_transfer_limit_mbps"])
    return document


class DesktopPolicy(BaseModel):
    """What the desktop lets its user do, as the template sets it and the streamer enforces it
    (Selkies 2.x: each setting locked, so the page cannot change it; sharing through the
    control plane's shares only)."""

    model_config = ConfigDict(extra="forbid")

    clipboard: Clipboard = Field(
        default="both",
        description="Clipboard between the browser and the desktop: `both`, `in` (browser to "
        "desktop only), `out` (desktop to browser only) or `off`",
    )
    file_transfer: FileTransfer = Field(
        default="both",
        description="Selkies 2.x file transfers: `both`, `upload` (into the desktop), "
        "`download` (out of it) or `off`",
    )
    file_transfer_limit_mbps: float = Field(
        default=0,
        ge=0,
        le=100_000,
        description="A cap on the file transfers' rate in Mbit/s (Selkies 2.x); 0: no cap",
    )
    audio: bool = Field(default=True, description="Stream the desktop's sound to the browser")
    microphone: bool = Field(
        default=False, description="Forward the browser's microphone into the desktop (2.x)"
    )
    printing: bool = Field(
        default=True,
        description="Hand the documents printed in the desktop to the browser as PDFs (2.x)",
    )
    gamepads: bool = Field(default=True, description="Forward the browser's gamepads")
    sharing: Sharing = Field(default="off", description=SHARING_DESCRIPTION)


POLICY_DEFAULTS: dict[str, Any] = {
    name: field.default for name, field in DesktopPolicy.model_fields.items()
}


class TemplateSpec(BaseModel):
    """What a session of this template gets. Omitted fields take their defaults."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(
        min_length=1,
        max_length=512,
        pattern=r"^[^\s]+$",
        description="The session image (agent/Dockerfile: Selkies-GStreamer + the agent)",
        examples=["registry.example.com/vdi/session:1.0"],
    )
    gpu: int = Field(
        default=1, ge=0, le=8, description="nvidia.com/gpu; 0 is a CPU session (x264enc)"
    )
    cpu: Quantity | None = Field(default=None, description="CPU request and limit, e.g. `4`")
    memory: Quantity | None = Field(
        default=None, description="Memory request and limit, e.g. `16Gi`"
    )
    shm_size: Quantity = Field(default="2Gi", description="Size of the /dev/shm memory volume")
    home_size: Quantity = Field(default="10Gi", description="Size of the user's home PVC")
    storage_class: str | None = Field(
        default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    bitrate_kbps: int = Field(default=8000, ge=500, le=100_000)
    framerate: int = Field(default=60, ge=10, le=240)
    gop_size: int = Field(default=30, ge=1, le=1000)
    encoder_fallback: bool = Field(
        default=True, description="Allow x264enc when NVENC is unusable; false fails the session"
    )
    start_timeout_s: int = Field(
        default=300,
        ge=30,
        le=3600,
        description="Seconds from the reconciler's claim to Running; a session still waiting "
        "for capacity then fails with NO_CAPACITY, any other with START_TIMEOUT",
    )
    fail_without_scale_up: bool = Field(
        default=False,
        description="Fail a session waiting for capacity at once (NO_CAPACITY) when the "
        "cluster autoscaler says no node group can help (NotTriggerScaleUp), rather than "
        "waiting for nodes an operator may add until the start timeout",
    )
    idle_timeout_s: int = Field(default=3600, ge=60, le=7 * 86400)
    idle: Literal["keepalive", "viewers", "both"] = Field(
        default="keepalive",
        description="What keeps the session from its idle deadline: `keepalive` (the portal's "
        "POST .../keepalive, each pushing it by idle_timeout_s), `viewers` (a page connected "
        "to the desktop: the deadline runs from the moment the last one left; keepalives do not "
        "count) or `both`. Viewers are reported by the agent of Selkies 2.x",
    )
    max_lifetime_s: int = Field(default=43200, ge=300, le=30 * 86400)
    node_selector: dict[LabelKey, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=32
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    streamer: Literal["auto", "selkies-gstreamer", "selkies"] = Field(
        default="auto",
        description="The Selkies line the agent runs: `auto` (the one the image holds), "
        "`selkies-gstreamer` (1.x, the spec's) or `selkies` (2.x)",
    )
    transport: Literal["webrtc", "websockets"] = Field(
        default="webrtc",
        description="`webrtc` (through TURN, always) or `websockets` (Selkies 2.x only; no TURN)",
    )
    clipboard: Clipboard = Field(
        default="both",
        description="Clipboard between the browser and the desktop: `both`, `in` (browser to "
        "desktop only), `out` (desktop to browser only) or `off`",
    )
    file_transfer: FileTransfer = Field(
        default="both",
        description="File transfers (Selkies 2.x): `both`, `upload` (into the desktop), "
        "`download` (out of it) or `off`",
    )
    file_transfer_limit_mbps: float = Field(
        default=0,
        ge=0,
        le=100_000,
        description="A cap on the file transfers' rate in Mbit/s (Selkies 2.x); 0: no cap",
    )
    audio: bool = Field(default=True, description="Stream the desktop's sound to the browser")
    microphone: bool = Field(
        default=False,
        description="Forward the browser's microphone into the desktop (Selkies 2.x)",
    )
    printing: bool = Field(
        default=True,
        description="Hand the documents printed in the desktop to the browser as PDFs "
        "(Selkies 2.x)",
    )
    gamepads: bool = Field(default=True, description="Forward the browser's gamepads")
    sharing: Sharing = Field(default="off", description=SHARING_DESCRIPTION)
    recording: bool = Field(
        default=False,
        description="Allow recording the desktop on demand (POST .../recording; Selkies 2.x): "
        "an MP4 in the user's home (the file manager's directory, ~/Desktop)",
    )
    persistent_home: bool = Field(
        default=True,
        description="The user's home is a PVC (`home-<user>`) kept across sessions; false: an "
        "emptyDir of `home_size`, gone with the session (required by a warm pool)",
    )
    warm_pool: int = Field(
        default=0,
        ge=0,
        le=500,
        description="Sessions kept provisioned and checked (GPU and encoder) for no one yet: a "
        "create takes one and is Running at once. Needs `persistent_home: false`",
    )
    warm_max_age_s: int = Field(
        default=3600,
        ge=300,
        le=7 * 86400,
        description="A warm pool member older than this (unclaimed) is replaced",
    )
    prepull: bool = Field(
        default=False,
        description="Keep a DaemonSet `vdi-prepull-<template>` that pulls the image on every "
        "node the sessions may use (the node selector and tolerations)",
    )

    @model_validator(mode="after")
    def _idle_within_lifetime(self) -> Self:
        if self.idle_timeout_s > self.max_lifetime_s:
            raise ValueError("idle_timeout_s must not exceed max_lifetime_s")
        return self

    @model_validator(mode="after")
    def _what_kubernetes_accepts(self) -> Self:
        """What the API server would refuse when the session's objects are created, refused
        here instead (a 422 at PUT, not a session failing later)."""
        problems = list(k8s_rules.node_selector_errors(self.node_selector))
        for index, toleration in enumerate(self.tolerations):
            problems += k8s_rules.toleration_errors(index, toleration.model_dump())
        for name in ("home_size", "shm_size", "cpu", "memory"):
            value = getattr(self, name)
            if value is not None and not k8s_rules.quantity_is_positive(value):
                problems.append((name, f"{name} must be greater than zero (got {value!r})"))
        if problems:
            raise ValueError("; ".join(f"{field}: {message}" for field, message in problems))
        return self

    @model_validator(mode="after")
    def _warm_pool_without_persistent_home(self) -> Self:
        if self.warm_pool > 0 and self.persistent_home:
            raise ValueError(
                "warm_pool > 0 needs persistent_home: false: a warm session's pod runs before "
                "its user is known, and a user's home PVC cannot be mounted into a running pod; "
                "set persistent_home to false (an emptyDir home of home_size) or warm_pool to 0"
            )
        return self

    @model_validator(mode="after")
    def _policy_the_streamer_enforces(self) -> Self:
        """Selkies-GStreamer 1.x enforces the clipboard's four values and nothing else: a
        template on that line may not ask it to restrict what it cannot."""
        if self.streamer != "selkies-gstreamer":
            return self
        problems = []
        if not self.audio:
            problems.append("audio: false (1.x always streams the desktop's sound)")
        if not self.gamepads:
            problems.append("gamepads: false (1.x always takes gamepads)")
        if self.microphone:
            problems.append("microphone: true (1.x has no microphone)")
        if self.sharing != "off":
            problems.append(f"sharing: {self.sharing} (1.x has no secure mode, no shares)")
        if self.recording:
            problems.append("recording: true (1.x cannot record)")
        if self.idle != "keepalive":
            problems.append(f"idle: {self.idle} (1.x cannot tell who is connected)")
        if problems:
            raise ValueError(
                "streamer 'selkies-gstreamer' cannot enforce "
                + "; ".join(problems)
                + ": use streamer 'selkies' (2.x), or leave these at their defaults"
            )
        return self

    def policy(self) -> DesktopPolicy:
        return DesktopPolicy.model_validate({name: getattr(self, name) for name in POLICY_FIELDS})

    @model_validator(mode="after")
    def _websockets_only_on_selkies_2(self) -> Self:
        if self.transport == "websockets" and self.streamer != "selkies":
            raise ValueError(
                "transport 'websockets' needs streamer 'selkies' (Selkies 2.x): "
                "Selkies-GStreamer streams over WebRTC only"
            )
        return self


class TemplateOut(TemplateSpec):
    """A template as stored: every field, defaults filled in."""

    model_config = ConfigDict(
        from_attributes=True, json_schema_serialization_defaults_required=True
    )

    name: TemplateName
    warm_available: int = Field(
        default=0, description="Warm pool members ready to be claimed now (Running, no user)"
    )
    created_at: datetime
    updated_at: datetime


class TemplateList(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    items: list[TemplateOut]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null at the end"
    )


# Template fields that do not change a session's pod: a warm pool's members stay when only
# these change.
POOL_ONLY_FIELDS = frozenset({"warm_pool", "warm_max_age_s", "prepull"})


def pod_shape(spec: dict[str, object]) -> dict[str, object]:
    """What of a stored template spec makes a session's pod what it is (defaults filled in)."""
    values = TemplateSpec.model_validate(spec).model_dump(mode="json")
    return {k: v for k, v in values.items() if k not in POOL_ONLY_FIELDS}
