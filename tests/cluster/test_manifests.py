"""Each manifest against the official schemas (strict), and each spec constraint, one by one."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app.cluster import manifests
from app.config import Settings
from app.templates.schemas import TemplateSpec, Toleration
from kubefake.resources import CRD_DIR

K8S_VERSION = "1.33"
CRD = CRD_DIR / "traefik.io_ingressroutes.yaml"
# Traefik v3's own IngressRoute CRD, byte for byte (its sha256): the fake admits what it admits
TRAEFIK_CRD_SHA256 = "6c78d0550ca4dcce238b4a6b470f7e98b8ca834a02b5103b5c29e2dbdc05ad8a"
SETTINGS = Settings(
    secret_key="k" * 32,
    turn_secret="t" * 32,
    base_domain="vdi.example.com",
    namespace="vdi",
    callback_url="http://vdi-control.vdi-system.svc:8080",
    turn_host="turn.example.com",
)
CREDENTIALS = manifests.SessionCredentials(
    "pw-" + "p" * 29, "agent-" + "a" * 58, "1:x", "turnpw-" + "y" * 21, "master-" + "m" * 57
)


def session(**spec: Any) -> manifests.SessionView:
    return manifests.SessionView(
        id=uuid.UUID("6f1c0b9e-1d2a-4c3b-9e8f-0a1b2c3d4e5f"),
        user="alice",
        template="gpu-desktop",
        spec=TemplateSpec(image="registry.example.com/vdi/session:1", **spec),
    )


def created_pod(**spec: Any) -> dict[str, Any]:
    pod = manifests.pod(session(**spec), SETTINGS)
    pod["metadata"]["uid"] = str(uuid.uuid4())
    return pod


def container(pod: dict[str, Any]) -> dict[str, Any]:
    [only] = pod["spec"]["containers"]
    return dict(only)


def env(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        item["name"]: item.get("value", item.get("valueFrom")) for item in container(pod)["env"]
    }


ALL_TEMPLATES = [
    {},
    {"gpu": 0},
    {"gpu": 2, "cpu": "8", "memory": "32Gi", "storage_class": "fast-ssd", "shm_size": "4Gi"},
    {
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
        "tolerations": [
            Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"),
            Toleration(
                key="spot",
                operator="Equal",
                value="true",
                effect="NoExecute",
                toleration_seconds=60,
            ),
        ],
    },
]


@pytest.mark.parametrize("spec", ALL_TEMPLATES)
def test_core_objects_validate_against_the_official_schema_strictly(spec: dict[str, Any]) -> None:
    pod = created_pod(**spec)
    view = session(**spec)
    objects = [
        pod,
        manifests.secret(view, CREDENTIALS, SETTINGS, pod),
        manifests.home_claim(view, SETTINGS),
        manifests.service(view, SETTINGS, pod),
    ]
    for manifest in objects:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_a_broken_pod_is_rejected_by_the_same_validator() -> None:
    pod = created_pod()
    container(pod)  # sanity
    pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = (
        1  # an int, not a quantity string
    )
    pod["spec"]["containers"][0]["imagePullPolice"] = "Always"  # unknown field: strict mode
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def ingress_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return dict(version["schema"]["openAPIV3Schema"])


def test_the_bundled_crd_is_traefiks_unchanged() -> None:
    assert hashlib.sha256(CRD.read_bytes()).hexdigest() == TRAEFIK_CRD_SHA256


@pytest.mark.parametrize("tls_secret", [None, "wildcard-vdi-example-com"])
def test_ingress_route_validates_against_the_traefik_crd(tls_secret: str | None) -> None:
    settings = SETTINGS.model_copy(update={"tls_secret_name": tls_secret})
    route = manifests.ingress_route(session(), settings, created_pod())
    jsonschema.validate(route, ingress_schema())
    assert route["apiVersion"] == "traefik.io/v1alpha1"
    assert route["spec"]["entryPoints"] == ["websecure"]
    [rule] = route["spec"]["routes"]
    assert rule["match"] == "Host(`alice.vdi.example.com`)"
    assert rule["services"] == [{"name": "vdi-6f1c0b9e-1d2a-4c3b-9e8f-0a1b2c3d4e5f", "port": 8080}]
    assert route["spec"]["tls"] == ({"secretName": tls_secret} if tls_secret else {})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**route, "spec": {"entryPoints": ["websecure"]}}, ingress_schema())


def test_ingress_api_version_for_traefik_v2() -> None:
    settings = SETTINGS.model_copy(update={"ingress_api_version": "traefik.containo.us/v1alpha1"})
    assert (
        manifests.ingress_route(session(), settings, created_pod())["apiVersion"]
        == "traefik.containo.us/v1alpha1"
    )


# --- the spec, line by line -------------------------------------------------------------


def test_label_session_type_desktop_on_every_session_object() -> None:
    pod = created_pod()
    view = session()
    for manifest in [
        pod,
        manifests.secret(view, CREDENTIALS, SETTINGS, pod),
        manifests.service(view, SETTINGS, pod),
        manifests.ingress_route(view, SETTINGS, pod),
    ]:
        labels = manifest["metadata"]["labels"]
        assert labels["vdi.kasm.io/session-type"] == "desktop"
        assert labels["app.kubernetes.io/managed-by"] == "vdi-control"
        assert labels["vdi-control.io/session-id"] == str(view.id)
        assert labels["vdi-control.io/user"] == "alice"


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_gpu_limits_equal_requests_as_strings(gpus: int) -> None:
    resources = container(created_pod(gpu=gpus))["resources"]
    assert (
        resources["requests"]["nvidia.com/gpu"]
        == resources["limits"]["nvidia.com/gpu"]
        == str(gpus)
    )


def test_default_gpu_is_one_and_a_cpu_template_asks_for_none() -> None:
    assert container(created_pod())["resources"]["limits"]["nvidia.com/gpu"] == "1"
    cpu = created_pod(gpu=0)
    assert "nvidia.com/gpu" not in container(cpu)["resources"]["limits"]
    assert "nvidia.com/gpu" not in container(cpu)["resources"]["requests"]
    assert env(cpu)["SELKIES_ENCODER"] == "x264enc"


def test_cpu_and_memory_requests_equal_limits() -> None:
    resources = container(created_pod(cpu="8", memory="32Gi"))["resources"]
    assert (
        resources["requests"]
        == resources["limits"]
        == {"nvidia.com/gpu": "1", "cpu": "8", "memory": "32Gi"}
    )


def test_shared_memory_is_a_2gi_memory_emptydir_at_dev_shm() -> None:
    pod = created_pod()
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(pod)["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    bigger = {v["name"]: v for v in created_pod(shm_size="4Gi")["spec"]["volumes"]}
    assert bigger["dshm"]["emptyDir"]["sizeLimit"] == "4Gi"


def test_dev_dri_hostpath_is_mounted_at_dev_dri() -> None:
    pod = created_pod()
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(pod)["volumeMounts"]}
    assert volumes[mounts["/dev/dri"]]["hostPath"]["path"] == "/dev/dri"


def test_home_is_the_users_pvc_at_home_user() -> None:
    pod = created_pod()
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(pod)["volumeMounts"]}
    assert volumes[mounts["/home/user"]]["persistentVolumeClaim"] == {"claimName": "home-alice"}
    claim = manifests.home_claim(session(home_size="50Gi", storage_class="fast"), SETTINGS)
    assert claim["metadata"]["name"] == "home-alice"
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert "ownerReferences" not in claim["metadata"]
    assert "vdi-control.io/session-id" not in claim["metadata"]["labels"]  # it outlives sessions


def test_non_root_uid_1000_no_escalation_no_capabilities_runtime_default_seccomp() -> None:
    pod = created_pod()
    pod_security = pod["spec"]["securityContext"]
    assert pod_security["runAsUser"] == pod_security["runAsGroup"] == 1000
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(pod)["securityContext"]
    assert security["runAsUser"] == 1000
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_mandatory_selkies_environment() -> None:
    variables = env(created_pod())
    assert variables["SELKIES_ENCODER"] == "nvh264enc"
    assert variables["SELKIES_ENABLE_RESIZE"] == "true"
    assert variables["DISPLAY"] == ":0"
    assert variables["PULSE_SERVER"] == "/run/pulse/native"
    assert variables["NVIDIA_DRIVER_CAPABILITIES"] == "all"


def test_secrets_come_by_secret_key_ref_never_as_literals() -> None:
    pod = created_pod()
    variables = env(pod)
    for key in manifests.SECRET_KEYS:
        assert variables[key] == {
            "secretKeyRef": {"name": "vdi-6f1c0b9e-1d2a-4c3b-9e8f-0a1b2c3d4e5f", "key": key}
        }
    text = str(pod)
    for value in (
        CREDENTIALS.password,
        CREDENTIALS.agent_token,
        CREDENTIALS.turn_password,
        CREDENTIALS.master_token,
    ):
        assert value not in text


def test_turn_is_ours_over_udp_3478() -> None:
    variables = env(created_pod())
    assert variables["SELKIES_TURN_HOST"] == "turn.example.com"
    assert variables["SELKIES_TURN_PORT"] == "3478"
    assert variables["SELKIES_TURN_PROTOCOL"] == "udp"


def test_agent_environment_and_template_stream_settings() -> None:
    variables = env(
        created_pod(bitrate_kbps=6000, framerate=30, gop_size=60, encoder_fallback=False)
    )
    assert variables["VDI_SESSION_ID"] == "6f1c0b9e-1d2a-4c3b-9e8f-0a1b2c3d4e5f"
    assert variables["VDI_CALLBACK_URL"] == "http://vdi-control.vdi-system.svc:8080"
    assert variables["VDI_GPU"] == "1"
    assert (
        variables["SELKIES_VIDEO_BITRATE"],
        variables["SELKIES_FRAMERATE"],
        variables["VDI_GOP_SIZE"],
    ) == (
        "6000",
        "30",
        "60",
    )
    assert variables["VDI_ENCODER_FALLBACK"] == "false"


def test_the_desktop_policy_reaches_the_agent() -> None:
    defaults = env(created_pod())
    assert {name: defaults[name] for name in POLICY_ENV} == {
        "VDI_CLIPBOARD": "both",
        "VDI_FILE_TRANSFER": "both",
        "VDI_FILE_TRANSFER_LIMIT_MBPS": "0",
        "VDI_AUDIO": "true",
        "VDI_MICROPHONE": "false",
        "VDI_PRINTING": "true",
        "VDI_GAMEPADS": "true",
    }
    locked = env(
        created_pod(
            clipboard="out",
            file_transfer="upload",
            file_transfer_limit_mbps=12.5,
            audio=False,
            microphone=True,
            printing=False,
            gamepads=False,
        )
    )
    assert [locked[name] for name in POLICY_ENV] == [
        "out",
        "upload",
        "12.5",
        "false",
        "true",
        "false",
        "false",
    ]


POLICY_ENV = (
    "VDI_CLIPBOARD",
    "VDI_FILE_TRANSFER",
    "VDI_FILE_TRANSFER_LIMIT_MBPS",
    "VDI_AUDIO",
    "VDI_MICROPHONE",
    "VDI_PRINTING",
    "VDI_GAMEPADS",
)


def test_probes_are_tcp_on_8080_without_credentials() -> None:
    probe = container(created_pod())["readinessProbe"]
    assert probe["tcpSocket"] == {"port": 8080}
    assert "httpGet" not in probe


def test_node_selector_and_tolerations_from_the_template() -> None:
    pod = created_pod(**ALL_TEMPLATES[3])
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pod["spec"]["tolerations"][1] == {
        "key": "spot",
        "operator": "Equal",
        "value": "true",
        "effect": "NoExecute",
        "tolerationSeconds": 60,
    }


def test_service_on_8080_selects_the_session_pod() -> None:
    pod = created_pod()
    svc = manifests.service(session(), SETTINGS, pod)
    assert svc["spec"]["selector"] == {
        "vdi-control.io/session-id": "6f1c0b9e-1d2a-4c3b-9e8f-0a1b2c3d4e5f"
    }
    assert svc["spec"]["ports"][0]["port"] == svc["spec"]["ports"][0]["targetPort"] == 8080
    assert (
        pod["metadata"]["labels"]["vdi-control.io/session-id"]
        == svc["spec"]["selector"]["vdi-control.io/session-id"]
    )


def test_secret_service_and_route_are_owned_by_the_pod() -> None:
    pod = created_pod()
    view = session()
    for manifest in [
        manifests.secret(view, CREDENTIALS, SETTINGS, pod),
        manifests.service(view, SETTINGS, pod),
        manifests.ingress_route(view, SETTINGS, pod),
    ]:
        [owner] = manifest["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod["metadata"]["name"],
            "uid": pod["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": False,
        }
    assert "ownerReferences" not in pod["metadata"]


def test_secret_holds_the_four_keys() -> None:
    data = manifests.secret(session(), CREDENTIALS, SETTINGS, created_pod())["stringData"]
    assert set(data) == set(manifests.SECRET_KEYS)
    assert data["SELKIES_BASIC_AUTH_PASSWORD"] == CREDENTIALS.password


def _pod_with(status: dict[str, Any]) -> dict[str, Any]:
    pod = created_pod()
    pod["status"] = status
    return pod


def test_observe_pod_maps_failures() -> None:
    insufficient = _pod_with(
        {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        }
    )
    seen = manifests.observe_pod(insufficient)
    assert seen.session_id == session().id
    # a shortage is not a failure: the session waits for capacity (tests/cluster/test_capacity)
    assert (seen.scheduled, seen.failure_reason, seen.short_of_capacity) == (False, None, True)
    binding = _pod_with(
        {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": 'persistentvolumeclaim "home-alice" not found',
                }
            ],
        }
    )
    waiting_for_a_volume = manifests.observe_pod(binding)  # the start timeout bounds it
    assert (waiting_for_a_volume.failure_reason, waiting_for_a_volume.short_of_capacity) == (
        None,
        False,
    )
    pulling = _pod_with(
        {
            "phase": "Pending",
            "containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff"}}}],
        }
    )
    assert manifests.observe_pod(pulling).failure_reason == "ImagePullError"
    crashing = _pod_with(
        {
            "phase": "Running",
            "containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}],
        }
    )
    assert manifests.observe_pod(crashing).failure_reason == "CrashLoopBackOff"
    config = _pod_with(
        {
            "phase": "Pending",
            "containerStatuses": [{"state": {"waiting": {"reason": "CreateContainerConfigError"}}}],
        }
    )
    assert manifests.observe_pod(config).failure_reason is None
    assert (
        manifests.observe_pod(_pod_with({"phase": "Failed", "reason": "Evicted"})).failure_reason
        == "PodFailed"
    )
    running = _pod_with(
        {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}]}
    )
    assert manifests.observe_pod(running) == manifests.PodObservation(
        session().id, True, "", None, ""
    )
