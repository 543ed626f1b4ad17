"""What the fake API answers as a real API server does, in raw HTTP (what client-go and kubectl
see, which the Python client would forgive): watch streams, watch-list, every list's
group/version, the kinds Traefik lists, nodes, pod and cluster IPs, the EndpointSlice
controller."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from app.cluster.kube import KubeCluster
from kubefake import FakeKubernetes
from kubefake.admission import core_validator
from kubefake.resources import TRAEFIK_KINDS
from tests.cluster.conftest import eventually

Fake = tuple[FakeKubernetes, KubeCluster]
NS = "/api/v1/namespaces/vdi"


def pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "desktop", "image": "registry.test/vdi:1"}]},
    }


def service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }


@pytest.fixture
async def http(fake: Fake) -> Any:
    async with httpx.AsyncClient(base_url=fake[1].api_client.configuration.host, timeout=10) as c:
        yield c


async def watch_lines(
    http: httpx.AsyncClient, path: str, params: dict[str, str], count: int
) -> tuple[str, list[dict[str, Any]]]:
    """The content type and the first `count` events of a watch."""
    events: list[dict[str, Any]] = []
    async with http.stream("GET", path, params={"watch": "true", **params}) as response:
        content_type = response.headers["content-type"]
        async for line in response.aiter_lines():
            if line.strip():
                events.append(json.loads(line))
            if len(events) == count:
                break
    return content_type, events


async def test_watch_list_sends_the_objects_then_the_initial_events_end_bookmark(
    http: httpx.AsyncClient,
) -> None:
    for name in ("a", "b"):
        assert (await http.post(f"{NS}/configmaps", json=cm(name))).status_code == 201
    content_type, events = await watch_lines(
        http,
        f"{NS}/configmaps",
        {
            "sendInitialEvents": "true",
            "allowWatchBookmarks": "true",
            "resourceVersionMatch": "NotOlderThan",
            "timeoutSeconds": "5",
        },
        3,
    )
    assert content_type == "application/json"  # client-go refuses application/octet-stream
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events[:2]] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
    ]
    bookmark = events[2]
    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["object"]["kind"] == "ConfigMap"
    assert bookmark["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    newest = max(int(e["object"]["metadata"]["resourceVersion"]) for e in events[:2])
    assert int(bookmark["object"]["metadata"]["resourceVersion"]) >= newest


async def test_a_watch_from_a_version_sends_only_what_changed_after_it(
    http: httpx.AsyncClient,
) -> None:
    await http.post(f"{NS}/configmaps", json=cm("old"))
    listed = (await http.get(f"{NS}/configmaps")).json()
    version = listed["metadata"]["resourceVersion"]

    async def later() -> None:
        await asyncio.sleep(0.3)
        await http.post(f"{NS}/configmaps", json=cm("new"))

    task = asyncio.create_task(later())
    _, events = await watch_lines(
        http, f"{NS}/configmaps", {"resourceVersion": version, "timeoutSeconds": "5"}, 1
    )
    await task
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "new")]


def cm(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {}}


@pytest.mark.parametrize(
    ("path", "kind", "api_version"),
    [
        (f"{NS}/configmaps", "ConfigMapList", "v1"),
        ("/api/v1/nodes", "NodeList", "v1"),
        ("/apis/discovery.k8s.io/v1/namespaces/vdi/endpointslices", "EndpointSliceList", None),
        ("/apis/apps/v1/namespaces/vdi/daemonsets", "DaemonSetList", "apps/v1"),
        *(
            (
                f"/apis/traefik.io/v1alpha1/namespaces/vdi/{plural}",
                f"{kind}List",
                "traefik.io/v1alpha1",
            )
            for plural, kind in TRAEFIK_KINDS
        ),
    ],
)
async def test_every_list_carries_its_group_version(
    http: httpx.AsyncClient, path: str, kind: str, api_version: str | None
) -> None:
    listed = await http.get(path)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["kind"] == kind
    assert body["apiVersion"] == (api_version or "discovery.k8s.io/v1")


async def test_unknown_kinds_and_group_versions_are_404_not_500(http: httpx.AsyncClient) -> None:
    assert (await http.get(f"{NS}/widgets")).status_code == 404
    assert (await http.get("/apis/example.com/v1")).status_code == 404
    discovery = (await http.get("/api/v1")).json()
    assert discovery["groupVersion"] == "v1"
    pods = next(r for r in discovery["resources"] if r["name"] == "pods")
    assert (pods["singularName"], pods["shortNames"]) == ("pod", ["po"])
    assert {"get", "list", "watch", "create", "patch", "delete"} <= set(pods["verbs"])


async def test_the_node_pod_ips_and_cluster_ips_are_as_a_cluster_gives_them(
    http: httpx.AsyncClient, fake: Fake
) -> None:
    [node] = (await http.get("/api/v1/nodes")).json()["items"]
    core_validator("Node", "v1").validate(node)
    assert node["status"]["capacity"]["nvidia.com/gpu"] == str(fake[0].gpu_capacity)
    created = await http.post(f"{NS}/services", json=service("web", {"app": "web"}))
    assert created.status_code == 201
    spec = created.json()["spec"]
    assert spec["clusterIP"].startswith("10.96.")
    assert spec["clusterIPs"] == [spec["clusterIP"]]
    assert spec["ports"][0]["protocol"] == "TCP"
    await http.post(f"{NS}/pods", json=pod("web-1", {"app": "web"}))
    await http.post(f"{NS}/pods", json=pod("web-2", {"app": "web"}))

    async def both_running() -> list[dict[str, Any]]:
        items = (await http.get(f"{NS}/pods")).json()["items"]
        ips = [p for p in items if p["status"].get("podIP")]
        return ips if len(ips) == 2 else []

    pods = await eventually(both_running)
    assert len({p["status"]["podIP"] for p in pods}) == 2  # each its own address
    assert all(p["status"]["hostIP"] for p in pods)


async def slice_of(http: httpx.AsyncClient, name: str) -> dict[str, Any] | None:
    listed = await http.get(
        "/apis/discovery.k8s.io/v1/namespaces/vdi/endpointslices",
        params={"labelSelector": f"kubernetes.io/service-name={name}"},
    )
    items = listed.json()["items"]
    assert len(items) <= 1
    return items[0] if items else None


def addresses(endpoint_slice: dict[str, Any] | None, ready: bool | None = None) -> set[str]:
    return {
        address
        for endpoint in (endpoint_slice or {}).get("endpoints") or []
        if ready is None or endpoint["conditions"]["ready"] == ready
        for address in endpoint["addresses"]
    }


async def test_the_endpointslice_follows_the_services_pods(
    http: httpx.AsyncClient, fake: Fake
) -> None:
    emulator = fake[0]
    await http.post(f"{NS}/services", json=service("desk", {"session": "s1"}))
    await http.post(f"{NS}/pods", json=pod("desk-pod", {"session": "s1"}))
    await http.post(f"{NS}/pods", json=pod("other-pod", {"session": "s2"}))

    async def ready_address() -> dict[str, Any] | None:
        found = await slice_of(http, "desk")
        return found if addresses(found, ready=True) else None

    endpoint_slice = await eventually(ready_address)
    core_validator("EndpointSlice", "discovery.k8s.io/v1").validate(endpoint_slice)
    desk_pod = emulator.find("pods", "vdi", "desk-pod")
    assert desk_pod is not None
    assert addresses(endpoint_slice) == {desk_pod["status"]["podIP"]}  # not other-pod's
    [endpoint] = endpoint_slice["endpoints"]
    assert endpoint["targetRef"]["name"] == "desk-pod"
    assert endpoint["nodeName"] == "fake-gpu-node-1"
    assert endpoint_slice["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    [owner] = endpoint_slice["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("Service", "desk")

    # a crash: not ready; a deletion: terminating, then gone
    await emulator.container_exited("vdi", "desk-pod", 1, "exited")

    async def not_ready() -> bool:
        found = await slice_of(http, "desk")
        return bool(addresses(found)) and not addresses(found, ready=True)

    await eventually(not_ready)
    assert (await http.delete(f"{NS}/pods/desk-pod")).status_code == 200

    async def emptied() -> bool:
        found = await slice_of(http, "desk")
        return found is not None and not addresses(found)

    await eventually(emptied)
    # a new pod with the label joins; the Service's deletion takes its slice with it
    await http.post(f"{NS}/pods", json=pod("desk-pod-2", {"session": "s1"}))
    await eventually(ready_address)
    assert (await http.delete(f"{NS}/services/desk")).status_code == 200

    async def slice_gone() -> bool:
        return await slice_of(http, "desk") is None

    await eventually(slice_gone)


async def test_a_pods_change_marks_only_the_services_that_select_it(fake: Fake) -> None:
    """The controller works from label indexes: among 300 services, a pod's change marks its
    own service for the next step and no other (no scan of the services)."""
    emulator = fake[0]
    for index in range(300):
        raw = service(f"s{index}", {"session": f"x{index}"})
        raw["metadata"]["namespace"] = "vdi"
        emulator.endpoint_slices.observe_service({"type": "ADDED", "object": raw})
    emulator.endpoint_slices.work.clear()
    labels = {"session": "x7", "app": "desk"}
    raw_pod = {"metadata": {"name": "p", "namespace": "vdi", "labels": labels}}
    emulator.endpoint_slices.observe_pod({"type": "ADDED", "object": raw_pod})
    assert list(emulator.endpoint_slices.work) == [("vdi", "s7")]
    # relabelled: both the service it left and the one it joined are marked
    emulator.endpoint_slices.work.clear()
    raw_pod["metadata"]["labels"] = {"session": "x9"}
    emulator.endpoint_slices.observe_pod({"type": "MODIFIED", "object": raw_pod})
    assert set(emulator.endpoint_slices.work) == {("vdi", "s7"), ("vdi", "s9")}
