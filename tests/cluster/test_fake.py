"""The fake API server speaks the real protocol: the real client, and raw HTTP where the client's
own validation would stop a bad object before it reaches the server."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from app.cluster import manifests
from app.cluster.kube import ClusterError, KubeCluster
from app.config import Settings
from app.templates.schemas import TemplateSpec
from kubefake import FakeKubernetes, FaultPlan, start_fake_cluster
from tests.cluster.conftest import eventually

SETTINGS = Settings(secret_key="k" * 32, turn_secret="t" * 32, namespace="vdi")


def view(user: str = "alice", **spec: Any) -> manifests.SessionView:
    return manifests.SessionView(
        uuid.uuid4(), user, "t", TemplateSpec(image="registry.test/vdi:1", **spec)
    )


async def test_invalid_objects_get_422_invalid_like_a_real_server(
    fake: tuple[FakeKubernetes, KubeCluster],
) -> None:
    _, cluster = fake
    pod = manifests.pod(view(), SETTINGS)
    pod["metadata"]["name"] = "Not_A_Name"
    with pytest.raises(ClusterError) as raised:
        await cluster.create("Pod", pod)
    assert raised.value.status == 422
    assert not raised.value.temporary
    # raw HTTP: an unknown field and a wrong type, which the client itself would refuse to send
    good = manifests.pod(view(), SETTINGS)
    good["spec"]["containers"][0]["imagePullPolice"] = "Always"
    host = cluster.api_client.configuration.host
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{host}/api/v1/namespaces/vdi/pods", json=good)
        assert response.status_code == 400  # as a real server in fieldValidation=Strict
        assert response.json()["reason"] == "BadRequest"
        assert 'unknown field "spec.containers[0].imagePullPolice"' in response.json()["message"]
        # Ignore (kubectl --validate=false) drops the field, as a real server does
        ignored = await http.post(
            f"{host}/api/v1/namespaces/vdi/pods?fieldValidation=Ignore", json=good
        )
        assert ignored.status_code == 201, ignored.text
        assert "imagePullPolice" not in ignored.json()["spec"]["containers"][0]
        wrong_type = manifests.pod(view(), SETTINGS)
        wrong_type["spec"]["containers"][0]["image"] = 5
        invalid = await http.post(f"{host}/api/v1/namespaces/vdi/pods", json=wrong_type)
        assert invalid.status_code == 422
        assert invalid.json()["reason"] == "Invalid"
        [cause] = invalid.json()["details"]["causes"]
        assert cause["field"] == "spec.containers[0].image"
        route = manifests.ingress_route(view(), SETTINGS, {"metadata": {"name": "p", "uid": "u"}})
        route["spec"]["routes"][0]["kind"] = "Sometimes"
        bad_route = await http.post(
            f"{host}/apis/traefik.io/v1alpha1/namespaces/vdi/ingressroutes", json=route
        )
        assert bad_route.status_code == 422


@pytest.mark.parametrize(
    ("kind", "change", "said"),
    [
        ("Pod", lambda o: o["spec"].update(nodeSelector={"gpu": "a b"}), "nodeSelector"),
        ("Pod", lambda o: o["spec"].update(nodeSelector={"-bad": "x"}), "name part"),
        ("Pod", lambda o: o["spec"].update(nodeSelector={"a..b/x": "y"}), "prefix part"),
        (
            "Pod",
            lambda o: o["spec"].update(tolerations=[{"operator": "Exists", "value": "x"}]),
            "value must be empty",
        ),
        (
            "Pod",
            lambda o: o["spec"].update(tolerations=[{"key": "", "operator": "Equal"}]),
            "operator must be Exists",
        ),
        (
            "Pod",
            lambda o: o["spec"].update(
                tolerations=[{"key": "k", "operator": "Exists", "tolerationSeconds": 5}]
            ),
            "NoExecute",
        ),
        (
            "PersistentVolumeClaim",
            lambda o: o["spec"]["resources"]["requests"].update(storage="0"),
            "greater than zero",
        ),
    ],
)
async def test_admission_refuses_what_the_api_servers_validation_refuses(
    fake: tuple[FakeKubernetes, KubeCluster], kind: str, change: Any, said: str
) -> None:
    """Beyond the OpenAPI schema: label keys and values, toleration rules, zero sizes."""
    _, cluster = fake
    obj = (
        manifests.pod(view(), SETTINGS) if kind == "Pod" else manifests.home_claim(view(), SETTINGS)
    )
    change(obj)
    with pytest.raises(ClusterError) as raised:
        await cluster.create(kind, obj)
    assert raised.value.status == 422
    assert said in str(raised.value)


async def test_metadata_selectors_secret_data_and_owner_gc(
    fake: tuple[FakeKubernetes, KubeCluster],
) -> None:
    emulator, cluster = fake
    mine, other = view("alice"), view("bob")
    await cluster.create("PersistentVolumeClaim", manifests.home_claim(mine, SETTINGS))
    pod = await cluster.create("Pod", manifests.pod(mine, SETTINGS))
    assert pod["metadata"]["uid"]
    assert pod["metadata"]["resourceVersion"]
    assert pod["metadata"]["creationTimestamp"]
    credentials = manifests.SessionCredentials("pw", "token", "1:x", "tp", "mt")
    secret = await cluster.create("Secret", manifests.secret(mine, credentials, SETTINGS, pod))
    assert "stringData" not in secret
    assert set(secret["data"]) == set(manifests.SECRET_KEYS)
    await cluster.create("Service", manifests.service(mine, SETTINGS, pod))
    assert (await cluster.create("Pod", manifests.pod(mine, SETTINGS)))["metadata"]["uid"] == pod[
        "metadata"
    ]["uid"]
    await cluster.create("Pod", manifests.pod(other, SETTINGS))
    selected, _ = await cluster.list("Pod", f"{manifests.USER_LABEL}=alice")
    assert [p["metadata"]["name"] for p in selected] == [pod["metadata"]["name"]]
    everything, _ = await cluster.list("Pod", manifests.SESSION_SELECTOR)
    assert len(everything) == 2
    assert await cluster.delete("Pod", pod["metadata"]["name"])

    async def collected() -> bool:
        return (
            emulator.find("secrets", "vdi", secret["metadata"]["name"]) is None
            and emulator.find("services", "vdi", secret["metadata"]["name"]) is None
        )

    await eventually(collected)
    assert not await cluster.delete("Secret", secret["metadata"]["name"])  # 404 is not an error
    assert emulator.find("persistentvolumeclaims", "vdi", "home-alice") is not None


async def test_watch_streams_pod_changes_with_a_selector(
    fake: tuple[FakeKubernetes, KubeCluster],
) -> None:
    _, cluster = fake
    mine = view("carol", gpu=0)
    await cluster.create("PersistentVolumeClaim", manifests.home_claim(mine, SETTINGS))
    _, version = await cluster.list("Pod", manifests.SESSION_SELECTOR)
    seen: list[tuple[str, str]] = []

    async def watch() -> None:
        async for event in cluster.watch_pods(manifests.SESSION_SELECTOR, version):
            seen.append((event.type, (event.object.get("status") or {}).get("phase", "")))
            if ("MODIFIED", "Running") in seen:
                return

    watcher = asyncio.create_task(watch())
    pod = await cluster.create("Pod", manifests.pod(mine, SETTINGS))
    await cluster.create(
        "Secret",
        manifests.secret(
            mine, manifests.SessionCredentials("a", "b", "c", "d", "e"), SETTINGS, pod
        ),
    )
    await asyncio.wait_for(watcher, timeout=20)
    assert seen[0] == ("ADDED", "Pending")
    assert ("MODIFIED", "Running") in seen


@pytest.mark.parametrize("fake_options", [{"faults": FaultPlan(rate=1.0, kinds=("429",))}])
async def test_injected_failures_are_status_bodies_and_retried(
    fake: tuple[FakeKubernetes, KubeCluster],
) -> None:
    emulator, cluster = fake
    with pytest.raises(ClusterError) as raised:
        await cluster.list("Pod", manifests.SESSION_SELECTOR)
    assert raised.value.status == 429
    assert raised.value.temporary
    assert emulator.faults_injected == 6  # the adapter tried six times


async def test_bad_label_selector_is_400() -> None:
    async with start_fake_cluster() as (_fake, url), httpx.AsyncClient() as http:
        response = await http.get(
            f"{url}/api/v1/namespaces/vdi/pods", params={"labelSelector": "a in (b"}
        )
    assert response.status_code == 400


async def test_field_selectors_select_events_and_unknown_fields_are_400() -> None:
    """The kubelet's events about a pod, selected by field as the reconciler asks for them; a
    field the API server cannot select on is a 400, as there."""
    async with (
        start_fake_cluster(image_pull_s=0.1) as (fake, url),
        httpx.AsyncClient(base_url=url) as http,
    ):
        cluster = KubeCluster.for_host(url, "vdi", "traefik.io/v1alpha1")
        try:
            await cluster.create("Pod", manifests.pod(view("eve", persistent_home=False), SETTINGS))
            events = "/api/v1/namespaces/vdi/events"

            async def reasons() -> list[str]:
                body = (
                    await http.get(events, params={"fieldSelector": "involvedObject.kind=Pod"})
                ).json()
                ordered = sorted(body["items"], key=lambda e: int(e["metadata"]["resourceVersion"]))
                return [e["reason"] for e in ordered]  # (a list is in name order)

            await eventually(lambda: _has(reasons, "Pulled"))
            assert (await reasons())[:3] == ["Scheduled", "Pulling", "Pulled"]
            none = await http.get(events, params={"fieldSelector": "involvedObject.kind=Node"})
            assert none.json()["items"] == []
            bad = await http.get(events, params={"fieldSelector": "spec.secret=x"})
            assert bad.status_code == 400
            assert "field label not supported" in bad.text
            assert "registry.test/vdi:1" in fake.node_images
        finally:
            cluster.close()


async def _has(reasons: Any, reason: str) -> bool:
    return reason in await reasons()


@pytest.mark.parametrize("fake_options", [{"gpu_capacity": 1, "termination_delay_s": 0.0}])
async def test_a_deleted_pod_gives_its_gpu_back_to_the_node(
    fake: tuple[FakeKubernetes, KubeCluster],
) -> None:
    """One GPU, used by one pod after another: each deletion frees it for the next pod."""
    emulator, cluster = fake
    for user in ("gina", "hugo", "ines"):
        pod = await cluster.create(
            "Pod", manifests.pod(view(user, persistent_home=False), SETTINGS)
        )
        name = pod["metadata"]["name"]

        async def scheduled(name: str = name) -> bool:
            raw = emulator.find("pods", "vdi", name)
            return raw is not None and bool(raw["spec"].get("nodeName"))

        await eventually(scheduled)
        assert await cluster.delete("Pod", name)
        await eventually(lambda name=name: _gone(emulator, name))


async def _gone(emulator: FakeKubernetes, name: str) -> bool:
    return emulator.find("pods", "vdi", name) is None
