"""Wire models of the session API and the agent's health report."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from app.config import DNS_LABEL_PATTERN
from app.templates.schemas import DesktopPolicy, policy_document

UserName = Annotated[
    str,
    Field(
        pattern=DNS_LABEL_PATTERN,
        min_length=1,
        max_length=63,
        description="A DNS label (it becomes the host name `<user>.<base domain>`)",
        examples=["alice"],
    ),
]
TemplateRef = Annotated[
    str, Field(pattern=DNS_LABEL_PATTERN, max_length=63, examples=["gpu-desktop"])
]


class Phase(StrEnum):
    pending = "Pending"
    provisioning = "Provisioning"
    starting = "Starting"
    running = "Running"
    failed = "Failed"
    terminating = "Terminating"
    terminated = "Terminated"


class ConditionType(StrEnum):
    pod_scheduled = "PodScheduled"
    gpu_available = "GPUAvailable"
    encoder_ready = "EncoderReady"
    stream_healthy = "StreamHealthy"
    latency_within_slo = "LatencyWithinSLO"
    relay_ready = "RelayReady"


class SessionReason(StrEnum):
    """Why a session is in its phase (`Session.reason`, and the reason of its `PhaseChanged` and
    `Claimed` events). New values may be added in a later version (an additive change): show an
    unknown one as it is. Failures are in capitals (the spec's codes)."""

    created = "Created"
    provisioning = "Provisioning"
    waiting_for_previous_session = "WaitingForPreviousSession"
    waiting_for_capacity = "WaitingForCapacity"
    capacity_available = "CapacityAvailable"
    objects_created = "ObjectsCreated"
    agent_ready = "AgentReady"
    warm_ready = "WarmReady"
    warm_claimed = "WarmClaimed"
    delete_requested = "DeleteRequested"
    idle_timeout = "IdleTimeout"
    max_lifetime_reached = "MaxLifetimeReached"
    failed_cleanup = "FailedCleanup"
    objects_deleted = "ObjectsDeleted"
    force_deleted = "ForceDeleted"
    control_plane_restarted = "ControlPlaneRestarted"
    warm_pool_member_failed = "WarmPoolMemberFailed"
    warm_pool_shrunk = "WarmPoolShrunk"
    warm_pool_yielded = "WarmPoolYielded"
    template_deleted = "TemplateDeleted"
    template_changed = "TemplateChanged"
    # failures
    gpu_init_error = "GPU_INIT_ERROR"
    encoder_unavailable = "ENCODER_UNAVAILABLE"
    streamer_failed = "STREAMER_FAILED"
    start_timeout = "START_TIMEOUT"
    no_capacity = "NO_CAPACITY"
    agent_lost = "AGENT_LOST"
    provisioning_failed = "ProvisioningFailed"
    unschedulable = "Unschedulable"
    image_pull_error = "ImagePullError"
    crash_loop_back_off = "CrashLoopBackOff"
    pod_failed = "PodFailed"
    pod_deleted = "PodDeleted"


class ConditionReason(StrEnum):
    """Why a condition has its status (`Condition.reason`, and the reason of `ConditionChanged`
    events). New values may be added later (an additive change)."""

    not_checked = "NotChecked"
    not_requested = "NotRequested"
    not_measured = "NotMeasured"
    scheduled = "Scheduled"
    unschedulable = "Unschedulable"
    gpu_ready = "GPUReady"
    no_gpu_on_host = "NoGpuOnHost"
    gpu_init_error = "GPU_INIT_ERROR"
    hardware_encoder = "HardwareEncoder"
    software_fallback = "SoftwareFallback"
    encoder_unavailable = "ENCODER_UNAVAILABLE"
    frames_decoded = "FramesDecoded"
    no_viewer = "NoViewer"
    stream_unhealthy = "StreamUnhealthy"
    streamer_restarted = "StreamerRestarted"
    streamer_failed = "STREAMER_FAILED"
    within_slo = "WithinSLO"
    latency_above_slo = "LatencyAboveSLO"
    credentials_fresh = "CredentialsFresh"
    turn_credentials_expiring = "TurnCredentialsExpiring"
    turn_renewal_failing = "TurnRenewalFailing"


class EventType(StrEnum):
    phase_changed = "PhaseChanged"
    condition_changed = "ConditionChanged"
    pod_event = "PodEvent"
    claimed = "Claimed"
    stream_adapted = "StreamAdapted"
    capacity_changed = "CapacityChanged"
    share_created = "ShareCreated"
    share_revoked = "ShareRevoked"
    viewer_connected = "ViewerConnected"
    viewer_disconnected = "ViewerDisconnected"
    viewer_disconnect_requested = "ViewerDisconnectRequested"
    recording_requested = "RecordingRequested"


class ViewerRole(StrEnum):
    """Who a connected page is: the session's user (`owner`, the connection's credentials), a
    share's `viewer` or `collaborator`, or a `controller` / `viewer` page whose share the
    streamer cannot tell."""

    owner = "owner"
    viewer = "viewer"
    collaborator = "collaborator"
    controller = "controller"


class ShareRole(StrEnum):
    viewer = "viewer"
    collaborator = "collaborator"


class AutoscalerVerdict(StrEnum):
    """What the cluster autoscaler said about a pod waiting for capacity (its events' reasons)."""

    triggered_scale_up = "TriggeredScaleUp"
    not_trigger_scale_up = "NotTriggerScaleUp"


class CapacityReason(StrEnum):
    """Why a session's wait for capacity changed (`CapacityChanged` events)."""

    waiting_for_capacity = "WaitingForCapacity"
    triggered_scale_up = "TriggeredScaleUp"
    not_trigger_scale_up = "NotTriggerScaleUp"
    capacity_available = "CapacityAvailable"


class AdaptedSetting(StrEnum):
    """What the agent's adaptation rules change (spec Fallback 3: the frame rate under CPU
    load; Check 4: bitrate, then resolution, under latency)."""

    framerate = "framerate"
    bitrate_kbps = "bitrate_kbps"
    resolution = "resolution"


class Adaptation(BaseModel):
    """One change the agent made to the stream, and how."""

    model_config = ConfigDict(extra="forbid")

    what: AdaptedSetting
    before: str = Field(max_length=32, pattern=r"^[A-Za-z0-9.]+$", examples=["60"])
    after: str = Field(max_length=32, pattern=r"^[A-Za-z0-9.]+$", examples=["30"])
    why: str = Field(max_length=200, examples=["host CPU above 80% for 10 s"])
    live: bool = Field(
        description="Applied to the running stream, its viewers kept (Selkies 2.x's frame "
        "rate and bitrate); false: the streamer was restarted with it, or the display resized"
    )


class AdaptationOut(Adaptation):
    """One change the agent made to the stream, and how (as an event's data)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class PodEventReason(StrEnum):
    """The reasons of the Kubernetes events of a session's pod that its log keeps."""

    scheduled = "Scheduled"
    failed_scheduling = "FailedScheduling"
    preempted = "Preempted"
    triggered_scale_up = "TriggeredScaleUp"
    not_trigger_scale_up = "NotTriggerScaleUp"
    failed_mount = "FailedMount"
    failed_attach_volume = "FailedAttachVolume"
    successful_attach_volume = "SuccessfulAttachVolume"
    pulling = "Pulling"
    pulled = "Pulled"
    failed = "Failed"
    err_image_never_pull = "ErrImageNeverPull"
    inspect_failed = "InspectFailed"
    back_off = "BackOff"
    created = "Created"
    started = "Started"
    failed_create_pod_sand_box = "FailedCreatePodSandBox"
    killing = "Killing"
    evicted = "Evicted"
    oom_killing = "OOMKilling"


OUT = ConfigDict(json_schema_serialization_defaults_required=True)


class ConditionStatus(StrEnum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(BaseModel):
    model_config = OUT

    type: ConditionType
    status: ConditionStatus
    reason: ConditionReason
    message: str
    last_transition_time: datetime


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: UserName
    template: TemplateRef


class CapacityWait(BaseModel):
    """A session whose pod waits for a node with room: what is short, what the cluster
    autoscaler said, and its place among the sessions waiting for the same."""

    model_config = OUT

    resources: list[str] = Field(
        description="What no node has enough of, e.g. `nvidia.com/gpu` (empty until the "
        "scheduler's word is seen)"
    )
    since: datetime = Field(description="When the wait began")
    scheduler_message: str = Field(description="What the scheduler said, as it said it")
    autoscaler: AutoscalerVerdict | None = Field(
        description="`TriggeredScaleUp`: a node is on its way; `NotTriggerScaleUp`: no node "
        "group can help; null: no word from a cluster autoscaler (there may be none)"
    )
    autoscaler_message: str | None
    position: int | None = Field(
        description="Its place (1: next) among the users' sessions waiting for the same "
        "resources, in the order their pods were made (as the scheduler takes them), as the "
        "reconciler last ranked them (null until then)"
    )
    waiting: int | None = Field(description="How many users' sessions wait for the same")


VIEWER_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,100}$"


class ViewerReport(BaseModel):
    """A page connected to the desktop, as the agent saw it in its streamer."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=VIEWER_ID_PATTERN, description="The streamer's id of the page")
    role: ViewerRole
    share: uuid.UUID | None = Field(default=None, description="The share it opened with")
    since: datetime | None = Field(default=None, description="When it connected")
    address: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[0-9A-Fa-f.:]+$",
        description="Its IP address as the streamer saw it (a proxy's, behind one)",
    )


class Viewer(ViewerReport):
    """A page connected to the desktop now (as the agent last reported)."""

    model_config = OUT


RECORDING_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.mp4$"


class RecordingReport(BaseModel):
    """What the agent's Selkies says of the recording it was asked for."""

    model_config = ConfigDict(extra="forbid")

    request: uuid.UUID = Field(description="The request it answers (`Recording.request`)")
    active: bool
    path: str | None = Field(default=None, max_length=500, description="The file, in the pod")
    size_bytes: int | None = Field(default=None, ge=0)
    duration_s: float | None = Field(default=None, ge=0)
    error: str | None = Field(default=None, max_length=300)


class Recording(BaseModel):
    """A recording of the desktop asked for (POST .../recording) and what its agent reported."""

    model_config = OUT

    wanted: bool = Field(description="Asked to record (true) or to stop (false)")
    request: uuid.UUID = Field(description="This ask's id: a new one for each start")
    name: str | None = Field(description="The file's name asked for; null: Selkies names it")
    requested_by: str | None
    requested_at: datetime
    active: bool | None = Field(
        default=None, description="Recording now, as the agent last said (null: not yet)"
    )
    path: str | None = Field(default=None, description="Where the file is, in the session's home")
    size_bytes: int | None = None
    duration_s: float | None = None
    error: str | None = Field(default=None, description="Why the desktop refused, if it did")


class Session(BaseModel):
    model_config = OUT

    id: uuid.UUID
    user: str
    template: str
    phase: Phase
    reason: SessionReason | None = Field(
        description="Why the session is in this phase, e.g. GPU_INIT_ERROR"
    )
    message: str | None
    conditions: list[Condition]
    url: str = Field(description="Where the user's browser connects")
    encoder: str | None = Field(description="The encoder element the agent chose")
    streamer: str | None = Field(
        default=None, description="The Selkies line and version in use, e.g. `selkies 2.1.0`"
    )
    gpu: int = Field(description="GPUs asked for (0: a CPU session)")
    policy: DesktopPolicy = Field(
        description="What the desktop allows (its template's policy when it was created), "
        "enforced by the streamer: a portal can tell its user"
    )
    warm: bool = Field(
        default=False, description="Claimed from the template's warm pool (already checked)"
    )
    created_at: datetime
    updated_at: datetime
    provisioned_at: datetime | None = Field(
        default=None, description="When its Kubernetes objects existed (it became Starting)"
    )
    scheduled_at: datetime | None = Field(
        default=None, description="When its pod was scheduled on a node"
    )
    running_at: datetime | None
    ended_at: datetime | None = Field(description="When it became unusable (Failed or Terminating)")
    idle_deadline: datetime = Field(description="Terminated after this unless kept alive")
    expires_at: datetime = Field(description="The maximum lifetime's end")
    capacity_wait: CapacityWait | None = Field(
        default=None,
        description="Set while its pod waits for a node with room (reason "
        "`WaitingForCapacity`); null otherwise",
    )
    viewers: list[Viewer] | None = Field(
        default=None,
        description="The pages connected to its desktop, as its agent last reported (every "
        "few seconds while Running); null until the agent has said (a streamer that cannot "
        "tell, or before Running)",
    )
    recording: Recording | None = Field(
        default=None, description="The last recording asked for (null: none ever)"
    )

    @field_validator("policy", mode="before")
    @classmethod
    def _stored_policy(cls, value: Any) -> Any:
        """A stored spec's members, the defaults for those it lacks (as session_document)."""
        return policy_document(value) if isinstance(value, Mapping) else value


class SessionPage(BaseModel):
    model_config = OUT

    items: list[Session]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end"
    )


def session_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """A session's stored columns (`repository.api.SHOWN_NAMES`, `template_name` as `template`) as
    the `Session` document, ready for `dump_json`, without building and validating the model:
    the same JSON as `Session.model_validate(row).model_dump_json()` for what the service
    stores (a property test holds the two equal), at a tenth of the CPU. A page of fifty
    sessions spent most of its time in that validation."""
    return {
        "id": str(row["id"]),  # asyncpg's own UUID type, which orjson does not know
        "user": row["user"],
        "template": row["template"],
        "phase": row["phase"],
        "reason": row["reason"],
        "message": row["message"],
        "conditions": [
            {
                "type": condition["type"],
                "status": condition["status"],
                "reason": condition["reason"],
                "message": condition["message"],
                # stored as ISO text; written as every other instant of the API is
                "last_transition_time": datetime.fromisoformat(condition["last_transition_time"]),
            }
            for condition in row["conditions"]
        ],
        "url": row["url"],
        "encoder": row["encoder"],
        "streamer": row["streamer"],
        "gpu": row["gpu"],
        "policy": policy_document(row["policy"]),
        "warm": row["warm"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "provisioned_at": row["provisioned_at"],
        "scheduled_at": row["scheduled_at"],
        "running_at": row["running_at"],
        "ended_at": row["ended_at"],
        "idle_deadline": row["idle_deadline"],
        "expires_at": row["expires_at"],
        "capacity_wait": capacity_wait_document(row["capacity_wait"]),
        "viewers": viewers_document(row["viewers"]),
        "recording": recording_document(row["recording"]),
    }


def recording_document(stored: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stored `recording` as the `Recording` document (its instant parsed)."""
    if stored is None:
        return None
    return {
        "wanted": stored["wanted"],
        "request": stored["request"],
        "name": stored.get("name"),
        "requested_by": stored.get("requested_by"),
        "requested_at": datetime.fromisoformat(stored["requested_at"]),
        "active": stored.get("active"),
        "path": stored.get("path"),
        "size_bytes": stored.get("size_bytes"),
        "duration_s": stored.get("duration_s"),
        "error": stored.get("error"),
    }


def viewers_document(stored: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Stored `viewers` as the `Viewer` documents (their instants parsed)."""
    if stored is None:
        return None
    return [
        {
            "id": viewer["id"],
            "role": viewer["role"],
            "share": viewer.get("share"),
            "since": datetime.fromisoformat(viewer["since"]) if viewer.get("since") else None,
            "address": viewer.get("address"),
        }
        for viewer in stored
    ]


def capacity_wait_document(stored: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stored `capacity_wait` as the `CapacityWait` document (its instant parsed)."""
    if stored is None:
        return None
    return {
        "resources": list(stored.get("resources") or []),
        "since": datetime.fromisoformat(stored["since"]),
        "scheduler_message": stored.get("scheduler_message") or "",
        "autoscaler": stored.get("autoscaler"),
        "autoscaler_message": stored.get("autoscaler_message"),
        "position": stored.get("position"),
        "waiting": stored.get("waiting"),
    }


def dump_json(document: Any) -> bytes:
    """JSON as pydantic writes the API's models (instants in UTC end in `Z`)."""
    return orjson.dumps(document, option=orjson.OPT_UTC_Z)


class IceServer(BaseModel):
    """An entry of RTCPeerConnection's `iceServers`, as browsers accept it."""

    model_config = OUT

    urls: list[str]
    username: str | None = None
    credential: str | None = None


class Connection(BaseModel):
    model_config = OUT

    url: str
    username: str = Field(description="Selkies basic-auth user")
    password: str = Field(
        description="Selkies basic-auth password, unique to this session; in a session whose "
        "template shares, the user's own token instead (Selkies' secure mode has no Basic "
        "auth): `launch_url` carries it"
    )
    ice_servers: list[IceServer]
    launch_url: str = Field(
        description="What to open in the user's browser: `url`, and in a session whose "
        "template shares, with the user's token in its fragment (`#token=`, never sent to a "
        "server)"
    )


class TurnCredentials(BaseModel):
    """Fresh TURN credentials for the session's agent, which renews Selkies' before they
    expire."""

    model_config = OUT

    username: str = Field(description="coturn REST-API user name, `<expiry>:<session id>`")
    password: str
    expires_at: datetime
    ttl_s: int = Field(description="Seconds they work for from now; renew well before")
    ice_servers: list[IceServer]


class _EventBase(BaseModel):
    model_config = OUT

    id: int = Field(
        description="Increasing within the session: resume after it (`after`, `Last-Event-ID`)"
    )
    session_id: uuid.UUID
    phase: Phase = Field(description="The session's phase when the event was stored")
    message: str | None
    created_at: datetime = Field(description="Never earlier than the previous event's")


class PhaseChange(BaseModel):
    model_config = OUT

    from_: Phase | None = Field(alias="from", description="null for the first phase")
    to: Phase


class PhaseChangedEvent(_EventBase):
    """The session moved to another phase."""

    type: Literal[EventType.phase_changed]
    reason: SessionReason | None
    data: PhaseChange


class ConditionChange(BaseModel):
    model_config = OUT

    condition: ConditionType
    status: ConditionStatus


class ConditionChangedEvent(_EventBase):
    """A condition's status or reason changed."""

    type: Literal[EventType.condition_changed]
    reason: ConditionReason | None
    data: ConditionChange


class PodEventType(StrEnum):
    normal = "Normal"
    warning = "Warning"


class KubernetesEvent(BaseModel):
    model_config = OUT

    type: PodEventType = Field(description="The Kubernetes event's type")
    source: str = Field(description="Who reported it: `default-scheduler` or `kubelet`")
    count: int
    at: str = Field(description="Its last time stamp as Kubernetes gave it (may be empty)")


class PodEvent(_EventBase):
    """A Kubernetes event of the session's pod (Scheduled, Pulling, Pulled, Started,
    FailedScheduling, BackOff, ...)."""

    type: Literal[EventType.pod_event]
    reason: PodEventReason | None
    data: KubernetesEvent


class Claim(BaseModel):
    model_config = OUT

    user: str
    pooled_since: datetime = Field(description="When the warm pool member was created")


class ClaimedEvent(_EventBase):
    """The session was taken from its template's warm pool."""

    type: Literal[EventType.claimed]
    reason: SessionReason | None
    data: Claim


class StreamAdaptedEvent(_EventBase):
    """The agent changed the stream to keep the desktop usable (and back when the cause went):
    its `reason` is what it changed."""

    type: Literal[EventType.stream_adapted]
    reason: AdaptedSetting | None
    data: AdaptationOut


class CapacityChange(BaseModel):
    model_config = OUT

    resources: list[str]
    autoscaler: AutoscalerVerdict | None
    waited_s: float | None = Field(description="How long it waited (on CapacityAvailable)")


class CapacityChangedEvent(_EventBase):
    """The session's wait for capacity began, heard from the cluster autoscaler, or ended
    (`CapacityAvailable`: its pod is on a node)."""

    type: Literal[EventType.capacity_changed]
    reason: CapacityReason | None
    data: CapacityChange


class ShareChange(BaseModel):
    model_config = OUT

    share: uuid.UUID
    role: ShareRole
    expires_at: datetime
    by: str | None = Field(description="The name of the API token that did it")


class ShareCreatedEvent(_EventBase):
    """A share of the desktop was made (its token is never in the log)."""

    type: Literal[EventType.share_created]
    reason: ShareRole | None
    data: ShareChange


class ShareRevokedEvent(_EventBase):
    """A share was revoked: its pages are disconnected and its token opens nothing."""

    type: Literal[EventType.share_revoked]
    reason: ShareRole | None
    data: ShareChange


class ViewerChange(BaseModel):
    model_config = OUT

    viewer: str
    role: ViewerRole
    share: uuid.UUID | None
    address: str | None
    by: str | None = Field(
        default=None, description="On a disconnect request: the name of the API token"
    )


class ViewerConnectedEvent(_EventBase):
    """A page connected to the desktop (as the agent saw it)."""

    type: Literal[EventType.viewer_connected]
    reason: ViewerRole | None
    data: ViewerChange


class ViewerDisconnectedEvent(_EventBase):
    """A page left the desktop, or was disconnected."""

    type: Literal[EventType.viewer_disconnected]
    reason: ViewerRole | None
    data: ViewerChange


class ViewerDisconnectRequestedEvent(_EventBase):
    """Someone asked for a page to be disconnected (`DELETE .../viewers/{viewer}`); the agent
    disconnects it, and its `ViewerDisconnected` follows."""

    type: Literal[EventType.viewer_disconnect_requested]
    reason: ViewerRole | None
    data: ViewerChange


class RecordingChange(BaseModel):
    model_config = OUT

    wanted: bool
    request: uuid.UUID
    name: str | None
    by: str | None


class RecordingRequestedEvent(_EventBase):
    """A recording was asked for (`reason` Start) or asked to stop (Stop); the agent drives
    Selkies, and the session's `recording` says what it reported."""

    type: Literal[EventType.recording_requested]
    reason: Literal["Start", "Stop"] | None
    data: RecordingChange


class SessionEventOut(
    RootModel[
        Annotated[
            PhaseChangedEvent
            | ConditionChangedEvent
            | PodEvent
            | ClaimedEvent
            | StreamAdaptedEvent
            | CapacityChangedEvent
            | ShareCreatedEvent
            | ShareRevokedEvent
            | ViewerConnectedEvent
            | ViewerDisconnectedEvent
            | ViewerDisconnectRequestedEvent
            | RecordingRequestedEvent,
            Field(discriminator="type"),
        ]
    ]
):
    """An event of the session's log: its `data` is described by its `type`."""

    model_config = OUT

    @classmethod
    def of(cls, row: Any) -> SessionEventOut:
        """From a stored event (app.models.SessionEvent)."""
        return cls.model_validate(
            {
                "id": row.id,
                "session_id": row.session_id,
                "type": row.type,
                "phase": row.phase,
                "reason": row.reason,
                "message": row.message,
                "data": row.data,
                "created_at": row.created_at,
            }
        )

    @property
    def id(self) -> int:
        return self.root.id

    @property
    def type(self) -> str:
        return self.root.type.value


class SessionEventList(BaseModel):
    model_config = OUT

    items: list[SessionEventOut]


class SessionEventFrame(BaseModel):
    """One message of the SSE stream (`text/event-stream`, LF line endings): `id: <id>`,
    `event: <type>`, `data: <the event as JSON>`, then a blank line. Comment lines (`: ping`)
    keep the connection open."""

    model_config = OUT

    id: str = Field(description="The event's id: sent back as `Last-Event-ID` on reconnecting")
    event: EventType
    data: SessionEventOut = Field(description="JSON, on one line")


class CheckName(StrEnum):
    gpu = "gpu"
    encoder = "encoder"
    stream = "stream"
    latency = "latency"
    relay = "relay"  # the agent's TURN credential renewal (a condition, never a failure)


class HealthCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: CheckName
    ok: bool | None = Field(description="null: not known yet (e.g. no viewer connected)")
    code: str | None = Field(
        default=None, max_length=64, pattern=r"^[A-Za-z0-9_]+$", examples=["GPU_INIT_ERROR"]
    )
    detail: str | None = Field(default=None, max_length=2000)


class HealthReport(BaseModel):
    """What the agent in the session pod reports."""

    model_config = ConfigDict(extra="forbid")

    checks: list[HealthCheck] = Field(max_length=16)
    encoder: str | None = Field(default=None, max_length=64, examples=["nvh264enc"])
    fallback: bool | None = None
    framerate: int | None = Field(default=None, ge=0, le=1000)
    bitrate_kbps: int | None = Field(default=None, ge=0, le=1_000_000)
    resolution: str | None = Field(default=None, pattern=r"^[0-9]{1,5}x[0-9]{1,5}$")
    cpu_percent: float | None = Field(default=None, ge=0, le=100_000)
    frames_decoded: int | None = Field(default=None, ge=0)
    jitter_ms: float | None = Field(default=None, ge=0)
    latency_ms: float | None = Field(default=None, ge=0)
    adaptations: list[Adaptation] = Field(
        default_factory=list,
        max_length=16,
        description="Changes made to the stream since the last report the control plane took",
    )
    streamer: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[a-z0-9-]+ [A-Za-z0-9.+-]+$",
        examples=["selkies 2.1.0", "selkies-gstreamer 1.6.2"],
        description="The Selkies line and version the agent runs",
    )
    turn: bool | None = Field(
        default=None,
        description="False: the streamer offers no TURN relay (a local desktop without "
        "VDI_TURN_HOST, reached on this machine's own addresses); sessions on Kubernetes "
        "always relay",
    )
    viewers: list[ViewerReport] | None = Field(
        default=None,
        max_length=256,
        description="The pages connected to the desktop now; absent: the agent cannot tell",
    )
    recording: RecordingReport | None = Field(
        default=None, description="The state of the recording last asked for"
    )
