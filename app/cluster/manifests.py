"""The Kubernetes objects of one session, as plain dicts. Pure: session + template + settings in,
manifests out; the only module that knows object shapes (spec: "Pod Specification Constraints",
"Selkies-GStreamer Configuration", "Networking & Traefik Ingress"; DESIGN: "Kubernetes objects")."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from app.config import Settings
from app.security import SELKIES_BASIC_AUTH_USER
from app.templates.schemas import TemplateSpec

Manifest = dict[str, Any]

# Labels
SESSION_TYPE_LABEL = "vdi.kasm.io/session-type"  # the spec's NetworkPolicy selector
SESSION_TYPE = "desktop"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "vdi-control"
SESSION_ID_LABEL = "vdi-control.io/session-id"
USER_LABEL = "vdi-control.io/user"
COMPONENT_LABEL = "app.kubernetes.io/component"
# Every session object (not the user's PVC) is found by these; the orphan sweep relies on them.
SESSION_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},{SESSION_TYPE_LABEL}={SESSION_TYPE}"

SELKIES_PORT = 8080
TURN_PROTOCOL = "udp"
CONTAINER_NAME = "desktop"
UID = 1000
GID = 1000
HOME = "/home/user"
HARDWARE_ENCODER = "nvh264enc"
SOFTWARE_ENCODER = "x264enc"
GPU_RESOURCE = "nvidia.com/gpu"

# Secret keys (DESIGN: "What the pod gets")
PASSWORD_KEY = "SELKIES_BASIC_AUTH_PASSWORD"
AGENT_TOKEN_KEY = "VDI_AGENT_TOKEN"
TURN_USERNAME_KEY = "SELKIES_TURN_USERNAME"
TURN_PASSWORD_KEY = "SELKIES_TURN_PASSWORD"
# Selkies' secure mode (a template that shares): the agent's alone, never the desktop user's
MASTER_TOKEN_KEY = "SELKIES_MASTER_TOKEN"
SECRET_KEYS = (
    PASSWORD_KEY,
    AGENT_TOKEN_KEY,
    TURN_USERNAME_KEY,
    TURN_PASSWORD_KEY,
    MASTER_TOKEN_KEY,
)


@dataclass(frozen=True)
class SessionView:
    """What the manifests need to know of a session."""

    id: uuid.UUID
    user: str
    template: str
    spec: TemplateSpec


@dataclass(frozen=True)
class SessionCredentials:
    password: str
    agent_token: str
    turn_username: str
    turn_password: str
    master_token: str


def object_name(session_id: uuid.UUID) -> str:
    return f"vdi-{session_id}"


def home_claim_name(user: str) -> str:
    return f"home-{user}"


def session_host(user: str, settings: Settings) -> str:
    return f"{user}.{settings.base_domain}"


def session_labels(session: SessionView) -> dict[str, str]:
    return {
        SESSION_TYPE_LABEL: SESSION_TYPE,
        MANAGED_BY_LABEL: MANAGED_BY,
        "app.kubernetes.io/name": "vdi-session",
        "app.kubernetes.io/instance": object_name(session.id),
        COMPONENT_LABEL: "desktop",
        SESSION_ID_LABEL: str(session.id),
        USER_LABEL: session.user,
    }


def owner_reference(pod: Manifest) -> dict[str, Any]:
    """Secret, Service and IngressRoute belong to the Pod: whoever deletes it collects them."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod["metadata"]["name"],
        "uid": pod["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": False,
    }


def _metadata(session: SessionView, settings: Settings, owner: Manifest | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": object_name(session.id),
        "namespace": settings.namespace,
        "labels": session_labels(session),
    }
    if owner is not None:
        metadata["ownerReferences"] = [owner_reference(owner)]
    return metadata


def secret(
    session: SessionView, credentials: SessionCredentials, settings: Settings, owner: Manifest
) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(session, settings, owner),
        "type": "Opaque",
        "stringData": {
            PASSWORD_KEY: credentials.password,
            AGENT_TOKEN_KEY: credentials.agent_token,
            TURN_USERNAME_KEY: credentials.turn_username,
            TURN_PASSWORD_KEY: credentials.turn_password,
            MASTER_TOKEN_KEY: credentials.master_token,
        },
    }


def home_claim(session: SessionView, settings: Settings) -> Manifest:
    """The user's home: created once, reused by the next session, never owned by a session."""
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": session.spec.home_size}},
    }
    if session.spec.storage_class:
        spec["storageClassName"] = session.spec.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": home_claim_name(session.user),
            "namespace": settings.namespace,
            "labels": {
                MANAGED_BY_LABEL: MANAGED_BY,
                COMPONENT_LABEL: "home",
                USER_LABEL: session.user,
            },
        },
        "spec": spec,
    }


def _secret_env(name: str, key: str, session: SessionView) -> dict[str, Any]:
    return {
        "name": name,
        "valueFrom": {"secretKeyRef": {"name": object_name(session.id), "key": key}},
    }


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _env(session: SessionView, settings: Settings) -> list[dict[str, Any]]:
    spec = session.spec
    plain = {
        # spec: "Mandatory Environment Variables"
        "SELKIES_ENCODER": HARDWARE_ENCODER if spec.gpu > 0 else SOFTWARE_ENCODER,
        "SELKIES_ENABLE_RESIZE": "true",
        "DISPLAY": ":0",
        "PULSE_SERVER": "/run/pulse/native",
        # Selkies' basic auth, our user; the password comes from the Secret below
        "SELKIES_ENABLE_BASIC_AUTH": "true",
        "SELKIES_BASIC_AUTH_USER": SELKIES_BASIC_AUTH_USER,  # as GET .../connection says
        # Our TURN, never Selkies' public default relay
        "SELKIES_TURN_HOST": settings.turn_host_for(session.id),
        "SELKIES_TURN_PORT": str(settings.turn_port),
        "SELKIES_TURN_PROTOCOL": TURN_PROTOCOL,
        "SELKIES_STUN_HOST": settings.turn_host_for(session.id),
        "SELKIES_STUN_PORT": str(settings.turn_port),
        # the template's stream settings
        "SELKIES_VIDEO_BITRATE": str(spec.bitrate_kbps),
        "SELKIES_FRAMERATE": str(spec.framerate),
        "VDI_GOP_SIZE": str(spec.gop_size),
        "VDI_ENCODER_FALLBACK": "true" if spec.encoder_fallback else "false",
        # the template's desktop policy, which the agent maps onto its Selkies line's settings
        "VDI_CLIPBOARD": spec.clipboard,
        "VDI_FILE_TRANSFER": spec.file_transfer,
        "VDI_FILE_TRANSFER_LIMIT_MBPS": f"{spec.file_transfer_limit_mbps:g}",
        "VDI_AUDIO": _flag(spec.audio),
        "VDI_MICROPHONE": _flag(spec.microphone),
        "VDI_PRINTING": _flag(spec.printing),
        "VDI_GAMEPADS": _flag(spec.gamepads),
        "VDI_SHARING": spec.sharing,
        # what the agent needs
        "VDI_SESSION_ID": str(session.id),
        "VDI_CALLBACK_URL": settings.callback_url,
        "VDI_GPU": str(spec.gpu),
        "VDI_STREAMER": spec.streamer,
        "VDI_TRANSPORT": spec.transport,
        # Half the start timeout for the streamer to answer its health check: a failure then
        # says STREAMER_FAILED with its log, not START_TIMEOUT with nothing.
        "VDI_STREAMER_START_TIMEOUT_S": str(max(15, spec.start_timeout_s // 2)),
        "NVIDIA_DRIVER_CAPABILITIES": "all",
        "HOME": HOME,
    }
    env: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in plain.items()]
    env += [
        _secret_env(PASSWORD_KEY, PASSWORD_KEY, session),
        _secret_env(TURN_USERNAME_KEY, TURN_USERNAME_KEY, session),
        _secret_env(TURN_PASSWORD_KEY, TURN_PASSWORD_KEY, session),
        _secret_env(AGENT_TOKEN_KEY, AGENT_TOKEN_KEY, session),
        _secret_env(MASTER_TOKEN_KEY, MASTER_TOKEN_KEY, session),
    ]
    return env


def _non_root_container() -> dict[str, Any]:
    """A container's securityContext: UID/GID 1000, no privilege escalation, no capability
    (a new dict per manifest)."""
    return {
        "runAsUser": UID,
        "runAsGroup": GID,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def _resources(spec: TemplateSpec) -> dict[str, dict[str, str]]:
    # Requests equal limits (spec: "Resource Parity"); quantities are strings for the client.
    amounts: dict[str, str] = {}
    if spec.gpu > 0:
        amounts[GPU_RESOURCE] = str(spec.gpu)
    if spec.cpu:
        amounts["cpu"] = spec.cpu
    if spec.memory:
        amounts["memory"] = spec.memory
    return {"requests": dict(amounts), "limits": dict(amounts)}


def pod(session: SessionView, settings: Settings) -> Manifest:
    spec = session.spec
    mounts = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "home", "mountPath": HOME},
    ]
    volumes: list[dict[str, Any]] = [
        # spec: "Shared Memory"
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
        # spec: "Persistence" (a template without it, as a warm pool's: gone with the pod)
        {"name": "home", "persistentVolumeClaim": {"claimName": home_claim_name(session.user)}}
        if spec.persistent_home
        else {"name": "home", "emptyDir": {"sizeLimit": spec.home_size}},
    ]
    if spec.gpu > 0:
        # spec: "Direct Hardware Access" (NVENC); a CPU session has no GPU to reach
        mounts.append({"name": "dri", "mountPath": "/dev/dri"})
        volumes.append({"name": "dri", "hostPath": {"path": "/dev/dri", "type": "Directory"}})
    # Selkies-GStreamer's /health needs basic auth, so a TCP check (also for `auto`, which may
    # hold either line); Selkies 2.x answers /api/health without auth.
    probe: dict[str, Any] = {"tcpSocket": {"port": SELKIES_PORT}}
    if spec.streamer == "selkies":
        probe = {"httpGet": {"path": "/api/health", "port": SELKIES_PORT}}
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": SELKIES_PORT, "protocol": "TCP"}],
        "env": _env(session, settings),
        "resources": _resources(spec),
        "volumeMounts": mounts,
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe, "initialDelaySeconds": 60, "periodSeconds": 20},
        # spec: "Security Protocol" (non-root, UID 1000)
        "securityContext": {**_non_root_container(), "privileged": False},
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Always",
        "automountServiceAccountToken": False,  # the desktop user has a shell here
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsUser": UID,
            "runAsGroup": GID,
            "fsGroup": GID,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    pod_spec.update(_placement(spec, settings))
    metadata = _metadata(session, settings, None)
    metadata["annotations"] = {"vdi-control.io/template": session.template}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def _placement(spec: TemplateSpec, settings: Settings) -> dict[str, Any]:
    """Where a template's pods may run and how they pull its image: the session pods' and the
    pre-pull DaemonSet's alike."""
    placement: dict[str, Any] = {}
    if spec.node_selector:
        placement["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        placement["tolerations"] = [_toleration(t.model_dump()) for t in spec.tolerations]
    if settings.image_pull_secret:
        placement["imagePullSecrets"] = [{"name": settings.image_pull_secret}]
    return placement


def _toleration(value: dict[str, Any]) -> dict[str, Any]:
    names = {"toleration_seconds": "tolerationSeconds"}
    return {names.get(k, k): v for k, v in value.items() if v is not None}


def service(session: SessionView, settings: Settings, owner: Manifest) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(session, settings, owner),
        "spec": {
            "type": "ClusterIP",
            "selector": {SESSION_ID_LABEL: str(session.id)},
            "ports": [
                # signaling WebSocket and the web client
                {
                    "name": "http",
                    "port": SELKIES_PORT,
                    "targetPort": SELKIES_PORT,
                    "protocol": "TCP",
                }
            ],
        },
    }


def ingress_route(session: SessionView, settings: Settings, owner: Manifest) -> Manifest:
    """Traefik IngressRoute on `websecure` for the user's host. WebSocket upgrades (the signaling
    channel) pass through a Traefik router as they are: no middleware is needed."""
    host = session_host(session.user, settings)
    route: dict[str, Any] = {
        "kind": "Rule",
        "match": f"Host(`{host}`)",
        "services": [{"name": object_name(session.id), "port": SELKIES_PORT}],
    }
    spec: dict[str, Any] = {"entryPoints": ["websecure"], "routes": [route], "tls": {}}
    if settings.tls_secret_name:
        spec["tls"] = {"secretName": settings.tls_secret_name}
    return {
        "apiVersion": settings.ingress_api_version,
        "kind": "IngressRoute",
        "metadata": _metadata(session, settings, owner),
        "spec": spec,
    }


# --- image pre-pull ------------------------------------------------------------------------

PREPULL_TEMPLATE_LABEL = "vdi-control.io/prepull-template"
PREPULL_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},{COMPONENT_LABEL}=prepull"
SPEC_HASH_ANNOTATION = "vdi-control.io/spec-hash"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
# What a pre-pull pod may use: next to nothing (it pulls, then sleeps in `pause`).
PREPULL_RESOURCES = {
    "requests": {"cpu": "1m", "memory": "8Mi"},
    "limits": {"cpu": "50m", "memory": "32Mi"},
}


def prepull_name(template: str) -> str:
    return f"vdi-prepull-{template}"


def prepull_daemonset(template: str, spec: TemplateSpec, settings: Settings) -> Manifest:
    """A DaemonSet whose pods pull the template's image on every node its sessions may land on
    (the same node selector and tolerations), then sleep: an init container of the image that
    exits at once, and `pause`. Annotated with a hash of its spec, so a changed image or
    placement is seen and the DaemonSet replaced."""
    labels = {
        MANAGED_BY_LABEL: MANAGED_BY,
        COMPONENT_LABEL: "prepull",
        PREPULL_TEMPLATE_LABEL: template,
    }
    security = _non_root_container()
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 0,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [
            {
                "name": "pull",
                "image": spec.image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sh", "-c", "exit 0"],
                "resources": PREPULL_RESOURCES,
                "securityContext": security,
            }
        ],
        "containers": [
            {
                "name": "pause",
                "image": PAUSE_IMAGE,
                "resources": PREPULL_RESOURCES,
                "securityContext": security,
            }
        ],
    }
    pod_spec.update(_placement(spec, settings))
    body: dict[str, Any] = {
        "selector": {"matchLabels": labels},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "100%"}},
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": prepull_name(template),
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": {SPEC_HASH_ANNOTATION: digest},
        },
        "spec": body,
    }


# --- reading pods back -------------------------------------------------------------------

# Set on a pod by the local runtime (VDI_CLUSTER=local) when it admits it: where its desktop
# will be served (http://<VDI_LOCAL_ADDRESS>:<port>/), the session's `url`.
LOCAL_URL = "vdi-control.io/local-url"
IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
CRASH_REASONS = ("CrashLoopBackOff",)


@dataclass(frozen=True)
class PodObservation:
    """What a pod says about its session: whether it is scheduled, and whether it has failed."""

    session_id: uuid.UUID | None
    scheduled: bool | None  # None: not decided yet
    schedule_message: str
    failure_reason: str | None
    failure_message: str
    # Unschedulable for lack of a resource ("Insufficient nvidia.com/gpu"): the session waits
    # for capacity (app.sessions.capacity) rather than failing.
    short_of_capacity: bool = False


def observe_pod(pod: Manifest) -> PodObservation:
    labels = pod.get("metadata", {}).get("labels") or {}
    try:
        session_id: uuid.UUID | None = uuid.UUID(labels.get(SESSION_ID_LABEL, ""))
    except ValueError:
        session_id = None
    status = pod.get("status") or {}
    scheduled: bool | None = None
    schedule_message = ""
    failure_reason: str | None = None
    failure_message = ""
    short = False
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled":
            scheduled = condition.get("status") == "True"
            schedule_message = condition.get("message") or condition.get("reason") or ""
            # A shortage (e.g. "Insufficient nvidia.com/gpu") is how a cluster autoscaler's
            # scale-up starts: the session waits for capacity, bounded by its start timeout, as
            # it waits for other reasons (a PVC still binding).
            short = (
                condition.get("reason") == "Unschedulable"
                and condition.get("status") == "False"
                and "Insufficient" in schedule_message
            )
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in IMAGE_PULL_REASONS:
            failure_reason, failure_message = "ImagePullError", waiting.get("message") or reason
        elif reason in CRASH_REASONS:
            failure_reason, failure_message = "CrashLoopBackOff", waiting.get("message") or reason
    if status.get("phase") == "Failed":
        failure_reason = "PodFailed"
        failure_message = status.get("message") or status.get("reason") or "The pod failed"
    return PodObservation(
        session_id, scheduled, schedule_message, failure_reason, failure_message, short
    )
