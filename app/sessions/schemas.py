"""Wire models of the session API and the agent's health report."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from app.config import DNS_LABEL_PATTERN

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


class ConditionStatus(StrEnum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(BaseModel):
    type: ConditionType
    status: ConditionStatus
    reason: str
    message: str
    last_transition_time: datetime


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: UserName
    template: TemplateRef


class Session(BaseModel):
    id: uuid.UUID
    user: str
    template: str
    phase: Phase
    reason: str | None = Field(description="Why the session is in this phase, e.g. GPU_INIT_ERROR")
    message: str | None
    conditions: list[Condition]
    url: str = Field(description="Where the user's browser connects")
    encoder: str | None = Field(description="The encoder element the agent chose")
    streamer: str | None = Field(
        default=None, description="The Selkies line and version in use, e.g. `selkies 2.1.0`"
    )
    gpu: int = Field(description="GPUs asked for (0: a CPU session)")
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


class SessionPage(BaseModel):
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
        "warm": row["warm"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "provisioned_at": row["provisioned_at"],
        "scheduled_at": row["scheduled_at"],
        "running_at": row["running_at"],
        "ended_at": row["ended_at"],
        "idle_deadline": row["idle_deadline"],
        "expires_at": row["expires_at"],
    }


def dump_json(document: Any) -> bytes:
    """JSON as pydantic writes the API's models (instants in UTC end in `Z`)."""
    return orjson.dumps(document, option=orjson.OPT_UTC_Z)


class IceServer(BaseModel):
    """An entry of RTCPeerConnection's `iceServers`, as browsers accept it."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


class Connection(BaseModel):
    url: str
    username: str = Field(description="Selkies basic-auth user")
    password: str = Field(description="Selkies basic-auth password, unique to this session")
    ice_servers: list[IceServer]


class TurnCredentials(BaseModel):
    """Fresh TURN credentials for the session's agent, which renews Selkies' before they
    expire."""

    username: str = Field(description="coturn REST-API user name, `<expiry>:<session id>`")
    password: str
    expires_at: datetime
    ttl_s: int = Field(description="Seconds they work for from now; renew well before")
    ice_servers: list[IceServer]


class SessionEventOut(BaseModel):
    id: int
    session_id: uuid.UUID
    type: Literal["PhaseChanged", "ConditionChanged", "PodEvent", "Claimed"] = Field(
        description="`PodEvent`: a Kubernetes event of the session's pod (Scheduled, Pulling, "
        "Pulled, Started, FailedScheduling, BackOff, ...; `data` has its type and source); "
        "`Claimed`: the session was taken from its template's warm pool"
    )
    phase: Phase
    reason: str | None
    message: str | None
    data: dict[str, Any]
    created_at: datetime


class SessionEventList(BaseModel):
    items: list[SessionEventOut]


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
