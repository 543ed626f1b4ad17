"""The Helm chart, linted and rendered by real Helm (helm-python-sdk embeds Helm v4), every
object validated against the official schemas, and the Dockerfiles linted by hadolint."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubefake.resources import crd_schema
from tests.tools import tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "vdi-control"
K8S_VERSION = "1.33"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "existing-secret-external-turn": {
        "replicaCount": 3,
        "secrets": {"existingSecret": "vdi-prod-secrets"},
        "sessions": {
            "namespace": "desktops",
            "createNamespace": False,
            "baseDomain": "desk.corp.example",
        },
        "coturn": {"enabled": False},
        "turn": {"host": "turn.corp.example", "externalCidr": "203.0.113.10/32"},
        "api": {"ingressRoute": {"enabled": False}},
    },
    "traefik-v2-tls-no-migrations": {
        "secrets": {
            "secretKey": "k" * 40,
            "turnSecret": "t" * 40,
            "bootstrapToken": "b" * 40,
            "databaseUrl": "postgresql://vdi:pw@db.internal:5432/vdi",
        },
        "sessions": {
            "ingressApiVersion": "traefik.containo.us/v1alpha1",
            "tlsSecretName": "wildcard-tls",
            "imagePullSecret": "regcred",
        },
        "api": {"ingressRoute": {"tlsSecretName": "api-tls"}},
        "migrations": {"enabled": False},
        "callbackUrl": "http://vdi-control.internal:8080",
    },
}


# This render sees no cluster (as helm template, Argo CD): the chart generates no keys then, so
# the tests give them, unless a test is about them.
KEYS = {"secretKey": "k" * 40, "turnSecret": "t" * 40}


def render(values: dict[str, Any], *, keys: bool = True) -> list[dict[str, Any]]:
    if keys and "existingSecret" not in values.get("secrets", {}):
        values = {**values, "secrets": {**KEYS, **values.get("secrets", {})}}
    chart = helm_python.Chart.load(str(CHART))
    try:
        manifests = chart.render(values, name="vdi", namespace="vdi-system", is_install=True)
    finally:
        chart.close()
    return [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_helm_lint_is_clean() -> None:
    report = helm_python.lint(str(CHART), {"secrets": KEYS}, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_rendered_object_validates(name: str) -> None:
    objects = render(VALUE_SETS[name])
    kinds = {o["kind"] for o in objects}
    assert {
        "Deployment",
        "Service",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
    } <= kinds
    for manifest in objects:
        if manifest["kind"] == "IngressRoute":
            jsonschema.validate(manifest, crd_schema("ingressroutes"))
        else:
            kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_deployment_is_replicated_probed_and_non_root() -> None:
    [deployment] = [
        d for d in by_kind(render({}), "Deployment") if d["metadata"]["name"] == "vdi-vdi-control"
    ]
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    [container] = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]
    env = {e["name"]: e for e in container["env"]}
    for secret in ("VDI_SECRET_KEY", "VDI_TURN_SECRET", "VDI_DATABASE_URL"):
        assert "secretKeyRef" in env[secret]["valueFrom"]  # never a literal
    assert env["VDI_CLUSTER"]["value"] == "kubernetes"


def test_network_policy_confines_session_pods() -> None:
    [policy] = by_kind(render({}), "NetworkPolicy")
    spec = policy["spec"]
    assert policy["metadata"]["namespace"] == "vdi-sessions"
    assert spec["podSelector"] == {"matchLabels": {"vdi.kasm.io/session-type": "desktop"}}
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    [ingress] = spec["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "traefik"
    }
    egress_ports = sorted(
        (p["protocol"], p["port"]) for rule in spec["egress"] for p in rule["ports"]
    )
    # the control plane only on the agents' listener (finding 27: not the whole API on 8080)
    assert egress_ports == [("TCP", 53), ("TCP", 8081), ("UDP", 53), ("UDP", 3478)]
    [deployment] = [
        d for d in by_kind(render({}), "Deployment") if not d["metadata"]["name"].endswith("coturn")
    ]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VDI_AGENT_PORT"] == "8081"
    assert env["VDI_CALLBACK_URL"].endswith(":8081")
    assert {"name": "agents", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    [service] = [
        s for s in by_kind(render({}), "Service") if s["metadata"]["name"] == "vdi-vdi-control"
    ]
    assert {p["port"] for p in service["spec"]["ports"]} == {8080, 8081}


def test_sessions_namespace_admits_the_dri_hostpath() -> None:
    [namespace] = by_kind(render({}), "Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"


def test_coturn_uses_the_shared_secret_with_use_auth_secret() -> None:
    objects = render({})
    [coturn] = [
        d for d in by_kind(objects, "StatefulSet") if d["metadata"]["name"].endswith("coturn")
    ]
    pod = coturn["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert "--use-auth-secret" in container["args"]
    # The secret never in coturn's argv (readable by every user on the node): a config file
    # that an init container writes from the Secret on a memory volume.
    assert not any("secret" in arg and "=" in arg for arg in container["args"]), container["args"]
    assert container["args"][:2] == ["-c", "/run/coturn/turnserver.conf"]
    env = {e["name"]: e["valueFrom"] for e in container["env"]}
    assert "VDI_TURN_SECRET" not in env
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    [init] = pod["initContainers"]
    init_env = {e["name"]: e["valueFrom"] for e in init["env"]}
    assert init_env["VDI_TURN_SECRET"]["secretKeyRef"]["key"] == "VDI_TURN_SECRET"
    assert "$VDI_TURN_SECRET" in init["command"][-1]  # the name in the script, not the value
    [volume] = pod["volumes"]
    assert volume["emptyDir"]["medium"] == "Memory"
    [service] = [s for s in by_kind(objects, "Service") if s["metadata"]["name"].endswith("coturn")]
    assert service["spec"]["ports"][0] == {
        "name": "turn-udp",
        "port": 3478,
        "targetPort": "turn-udp",
        "protocol": "UDP",
    }


def coturn_pod(values: dict[str, Any]) -> dict[str, Any]:
    [coturn] = [
        d
        for d in by_kind(render(values), "StatefulSet")
        if d["metadata"]["name"].endswith("coturn")
    ]
    pod: dict[str, Any] = coturn["spec"]["template"]["spec"]
    return pod


def coturn_args(values: dict[str, Any]) -> list[str]:
    args: list[str] = coturn_pod(values)["containers"][0]["args"]
    return args


def coturn_secret_command(values: dict[str, Any]) -> list[str]:
    """The init container's command that writes coturn's secret file."""
    command: list[str] = coturn_pod(values)["initContainers"][0]["command"]
    return command


def test_coturn_refuses_private_and_cluster_peers_and_tcp_relaying_by_default() -> None:
    args = coturn_args({})
    denied = {a.split("=", 1)[1] for a in args if a.startswith("--denied-peer-ip=")}
    for needed in (
        "10.0.0.0-10.255.255.255",
        "172.16.0.0-172.31.255.255",
        "192.168.0.0-192.168.255.255",
        "127.0.0.0-127.255.255.255",
        "169.254.0.0-169.254.255.255",
        "100.64.0.0-100.127.255.255",
        "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ):
        assert needed in denied
    assert "--no-tcp-relay" in args
    assert "--allowed-peer-ip=$(POD_IP)" in args  # relay to relay on this coturn
    # the cluster's own ranges, and exceptions, come from values
    extra = coturn_args(
        {"coturn": {"clusterPeerRanges": ["11.96.0.0-11.111.255.255"], "allowedPeerRanges": []}}
    )
    assert "--denied-peer-ip=11.96.0.0-11.111.255.255" in extra


def test_migration_job_runs_before_install_and_upgrade() -> None:
    [job] = by_kind(render({}), "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    [secret] = by_kind(render({}), "Secret")
    assert (
        int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0
    )  # exists before the Job


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 0},
        {"replicaCount": "two"},
        {"sessions": {"namespace": "Not_A_Namespace"}},
        {"secrets": {"secretKey": "short"}},
        {"secrets": {"databaseUrl": "mysql://db/vdi"}},
        {"sessions": {"ingressApiVersion": "networking.k8s.io/v1"}},
        {"coturn": {"serviceType": "Magic"}},
    ],
)
def test_bad_values_are_rejected_by_the_schema(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmError):
        render(values)


def test_the_audit_webhook_is_configured_with_its_signing_key_from_the_secret() -> None:
    objects = render(
        {
            "audit": {"webhookUrl": "https://siem.example.com/vdi"},
            "secrets": {"auditWebhookSecret": "s" * 40},
        }
    )
    [deployment] = by_kind(objects, "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["VDI_AUDIT_WEBHOOK_URL"]["value"] == "https://siem.example.com/vdi"
    assert env["VDI_AUDIT_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == (
        "VDI_AUDIT_WEBHOOK_SECRET"
    )
    [secret] = by_kind(objects, "Secret")
    assert secret["stringData"]["VDI_AUDIT_WEBHOOK_SECRET"] == "s" * 40
    assert "s" * 40 not in str(deployment)  # the key only in the Secret
    plain = by_kind(render({}), "Deployment")[0]
    assert "VDI_AUDIT_WEBHOOK_URL" not in str(plain)
    with pytest.raises(helm_python.HelmError, match="auditWebhookSecret"):
        render({"audit": {"webhookUrl": "https://siem.example.com/vdi"}})


@pytest.mark.parametrize(
    "dockerfile",
    [
        "Dockerfile",
        "agent/Dockerfile",
        "agent/Dockerfile.selkies",
        "images/python-base.Containerfile",
    ],
)
def test_hadolint_passes(dockerfile: str) -> None:
    result = subprocess.run(
        [tool("hadolint"), str(REPO / dockerfile)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_coturn_has_probes_and_the_migration_job_has_resources() -> None:
    pod = coturn_pod({})
    [container] = pod["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["tcpSocket"]["port"] == "turn-tcp", container
    ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in container["ports"]}
    assert ports["turn-tcp"] == (3478, "TCP")
    # a ResourceQuota refuses a pod without requests and limits
    [job] = by_kind(render({}), "Job")
    [migrate] = job["spec"]["template"]["spec"]["containers"]
    assert set(migrate["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(migrate["resources"]["limits"])
    for init in pod["initContainers"]:
        assert set(init["resources"]) == {"requests", "limits"}


def test_coturn_quotas_and_port_range_hold_the_viewers_they_promise() -> None:
    """Finding 27.12: 41 relay ports, no quota, one replica: one credential took them all."""
    args = coturn_args({})
    values = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if "=" in a}
    ports = int(values["--max-port"]) - int(values["--min-port"]) + 1
    assert int(values["--user-quota"]) >= 4  # a browser's candidates and a few viewers
    assert int(values["--total-quota"]) <= ports
    assert ports // 2 >= 4000  # each viewer holds two allocations
    # a quota past the port range is refused at render time
    with pytest.raises(helm_python.HelmError, match="totalQuota"):
        render({"coturn": {"totalQuota": 100, "minPort": 50000, "maxPort": 50010}})


def test_several_coturn_replicas_each_get_a_service_and_the_control_plane_their_hosts() -> None:
    hosts = ["turn-0.vdi.example.com", "turn-1.vdi.example.com"]
    with pytest.raises(helm_python.HelmError, match="turn.hosts must list 2"):
        render({"coturn": {"replicas": 2}})
    objects = render({"coturn": {"replicas": 2}, "turn": {"hosts": hosts}})
    [coturn] = [
        s for s in by_kind(objects, "StatefulSet") if s["metadata"]["name"].endswith("coturn")
    ]
    assert coturn["spec"]["replicas"] == 2
    services = {s["metadata"]["name"]: s for s in by_kind(objects, "Service")}
    for n in range(2):
        [name] = [k for k in services if k.endswith(f"-coturn-{n}")]
        selector = services[name]["spec"]["selector"]
        assert selector == {"statefulset.kubernetes.io/pod-name": name}
    [deployment] = [
        d for d in by_kind(objects, "Deployment") if not d["metadata"]["name"].endswith("coturn")
    ]
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["VDI_TURN_HOSTS"] == ",".join(hosts)


def test_a_render_that_cannot_see_the_cluster_never_generates_keys() -> None:
    """Finding 27.20: under helm template, Argo CD or a GitOps renderer, `lookup` is empty, so
    new keys were generated on every render, replacing the ones in use."""
    with pytest.raises(helm_python.HelmError, match="existingSecret"):
        render({}, keys=False)
    with pytest.raises(helm_python.HelmError, match="existingSecret"):
        render({"secrets": {"secretKey": "k" * 40}}, keys=False)  # one key alone is not enough
    # given keys, or an existing Secret: the same objects on every render
    assert render({}) == render({})
    existing = {"secrets": {"existingSecret": "vdi-keys"}}
    assert by_kind(render(existing, keys=False), "Secret") == []
    [secret] = by_kind(render({}), "Secret")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


MONITORING_CRDS = Path(__file__).parent / "crds"


def monitoring_schema(plural: str) -> dict[str, Any]:
    crd = yaml.safe_load((MONITORING_CRDS / f"monitoring.coreos.com_{plural}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_a_drain_never_takes_every_replica_and_shutdown_has_its_grace() -> None:
    objects = render({})
    (budget,) = by_kind(objects, "PodDisruptionBudget")
    (deployment,) = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]
    assert budget["spec"]["maxUnavailable"] == 1
    assert (
        budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    )
    spread = pod["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    ]
    assert all(c["labelSelector"]["matchLabels"] == pod["metadata"]["labels"] for c in spread)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["VDI_SHUTDOWN_GRACE_S"] == "20"
    # the server's grace for open requests, then the reconciler's and the pools' stop
    assert pod["spec"]["terminationGracePeriodSeconds"] == 35
    assert by_kind(render({"replicaCount": 1}), "PodDisruptionBudget") == []
    longer = render({"shutdownGraceSeconds": 45})
    assert (
        by_kind(longer, "Deployment")[0]["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ]
        == 60
    )


def test_monitoring_objects_need_their_crds_and_match_the_operators_schemas() -> None:
    wanted = {
        "servicemonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "podmonitor": {"enabled": True},
        "rules": {"enabled": True},
    }
    # no CRDs seen (a render with no cluster, nor assumeCRDs): nothing that would not apply
    kinds = {o["kind"] for o in render({"prometheus": wanted})}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    objects = render({"prometheus": {"assumeCRDs": True, **wanted}})
    (monitor,) = by_kind(objects, "ServiceMonitor")
    (pods,) = by_kind(objects, "PodMonitor")
    (rule,) = by_kind(objects, "PrometheusRule")
    for manifest, plural in (
        (monitor, "servicemonitors"),
        (pods, "podmonitors"),
        (rule, "prometheusrules"),
    ):
        # the schema as Kubernetes reads it: its patterns are Go's (RE2), not all Python's, so
        # the schema itself is not checked against JSON Schema's metaschema
        jsonschema.Draft202012Validator(monitoring_schema(plural)).validate(manifest)
    (service,) = [
        s for s in by_kind(objects, "Service") if s["metadata"]["name"] == "vdi-vdi-control"
    ]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"]
    assert "http" in [p["name"] for p in service["spec"]["ports"]]
    # with a PodMonitor, the alerts select its job (<namespace>/<name>)
    expressions = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert all('job="vdi-system/vdi-vdi-control"' in e for e in expressions)


def test_uninstalling_keeps_the_users_homes_and_the_keys() -> None:
    objects = render({})
    (namespace,) = by_kind(objects, "Namespace")  # the sessions namespace: the home PVCs
    assert namespace["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    secrets = [s for s in by_kind(objects, "Secret") if "annotations" in s["metadata"]]
    assert any(
        s["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep" for s in secrets
    )
