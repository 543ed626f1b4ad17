"""Capacity-aware waiting, through the real API, reconciler and client against the fake cluster,
whose scheduler holds pods unschedulable and whose autoscaler adds nodes later with the events
the real one writes: a session whose pod no node has room for stays Starting
(`WaitingForCapacity`), says what is short, what the autoscaler said and its place in line, and
fails (`NO_CAPACITY`) only at its start timeout."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from app.cluster.kube import KubeCluster
from app.models import VDISession
from app.models._types import utcnow
from app.sessions.capacity import short_resources
from kubefake import FakeKubernetes
from kubefake.autoscaler import NodeGroup
from tests.cluster.conftest import eventually, name_of, phase_is, report_ready_pods
from tests.conftest import ADMIN

Fake = tuple[FakeKubernetes, KubeCluster]
GPU_TEMPLATE = {"image": "registry.test/vdi/session:1", "persistent_home": False}


async def create(api: httpx.AsyncClient, user: str, template: str = "gpu") -> dict[str, Any]:
    response = await api.post(
        "/v1/sessions", json={"user": user, "template": template}, headers=ADMIN
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


async def put_template(api: httpx.AsyncClient, name: str = "gpu", **fields: Any) -> None:
    body = {**GPU_TEMPLATE, **fields}
    response = await api.put(f"/v1/templates/{name}", json=body, headers=ADMIN)
    assert response.status_code in (200, 201), response.text


async def get(api: httpx.AsyncClient, session_id: str) -> dict[str, Any]:
    return dict((await api.get(f"/v1/sessions/{session_id}", headers=ADMIN)).json())


def waiting(api: httpx.AsyncClient, session_id: str, *, autoscaler: str | None = None) -> Any:
    async def check() -> Any:
        body = await get(api, session_id)
        wait = body["capacity_wait"]
        if body["reason"] != "WaitingForCapacity" or wait is None or not wait["resources"]:
            return None
        if autoscaler is not None and wait["autoscaler"] != autoscaler:
            return None
        return body

    return check


async def events(api: httpx.AsyncClient, session_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/sessions/{session_id}/events", headers=ADMIN)
    return list(response.json()["items"])


async def _shift(app: FastAPI, session_id: str, **values: Any) -> None:
    async with app.state.sessionmaker() as db, db.begin():
        await db.execute(
            update(VDISession).where(VDISession.id == uuid.UUID(session_id)).values(**values)
        )
    app.state.reconciler.wake.set()


def _sample(metrics: str, name: str) -> float:
    """The value of one sample of Prometheus's text format, by its name and labels."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the metrics")


def test_what_is_short_is_read_from_the_schedulers_message() -> None:
    assert short_resources(
        "0/3 nodes are available: 1 Insufficient cpu, 2 Insufficient nvidia.com/gpu. preemption: "
        "0/3 nodes are available: 3 No preemption victims found for incoming pod."
    ) == ["cpu", "nvidia.com/gpu"]
    assert short_resources("0/1 nodes are available: 1 Insufficient memory.") == ["memory"]
    assert short_resources('persistentvolumeclaim "home-alice" not found') == []
    assert (
        short_resources(
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
        )
        == []
    )


@pytest.mark.parametrize(
    "fake_options",
    [
        {
            "gpu_capacity": 1,
            "termination_delay_s": 0.0,
            # a node Ready 4 s after its scale-up, its GPU advertised 0.5 s after that
            "autoscaler_group": NodeGroup(max_nodes=3, join_s=4.0, gpus_after_s=0.5),
        }
    ],
)
async def test_a_rush_beyond_capacity_waits_in_line_and_runs_as_nodes_join(
    api: httpx.AsyncClient, fake: Fake
) -> None:
    emulator, _cluster = fake
    await put_template(api)
    first = await create(api, "user-0")
    await eventually(phase_is(api, first["id"], "Starting"))
    await eventually(on_a_node(emulator, first["id"]))
    rush = [await create(api, f"user-{n}") for n in range(1, 4)]
    seen = []
    for session in rush:
        body = await eventually(waiting(api, session["id"], autoscaler="TriggeredScaleUp"))
        assert body["phase"] == "Starting"
        assert body["capacity_wait"]["resources"] == ["nvidia.com/gpu"]
        assert "Insufficient nvidia.com/gpu" in body["capacity_wait"]["scheduler_message"]
        assert "the cluster autoscaler is adding a node" in body["message"]
        seen.append(body)

    # their places in line: 1, 2, 3 of 3, oldest first
    async def ranked() -> list[tuple[int, int]] | None:
        places = [(await get(api, s["id"]))["capacity_wait"] for s in rush]
        found = [(w["position"], w["waiting"]) for w in places if w is not None]
        return found if found == [(1, 3), (2, 3), (3, 3)] else None

    assert await eventually(ranked, timeout_s=10)

    async def all_running() -> bool:
        await report_ready_pods(api, emulator)
        phases = [(await get(api, s["id"]))["phase"] for s in [first, *rush]]
        assert "Failed" not in phases, phases
        return phases == ["Running"] * 4

    await eventually(all_running, timeout_s=30)
    assert emulator.autoscaler is not None
    assert emulator.autoscaler.nodes_added == 3
    for session in rush:
        body = await get(api, session["id"])
        assert body["capacity_wait"] is None
        log = await events(api, session["id"])
        capacity = [e for e in log if e["type"] == "CapacityChanged"]
        reasons = [e["reason"] for e in capacity]
        # the autoscaler's word may be seen before the scheduler's
        assert set(reasons[:2]) == {"WaitingForCapacity", "TriggeredScaleUp"}
        assert reasons[-1] == "CapacityAvailable"
        # the node took its join time and its GPU's advertisement: the wait was at least that
        assert capacity[-1]["data"]["waited_s"] >= 4.0
        pod_events = {e["reason"] for e in log if e["type"] == "PodEvent"}
        assert {"FailedScheduling", "TriggeredScaleUp", "Scheduled"} <= pod_events
        pod = emulator.find("pods", "vdi", name_of(session["id"]))
        assert pod is not None
        assert pod["spec"]["nodeName"].startswith("gpu-pool-")


def on_a_node(emulator: FakeKubernetes, session_id: str) -> Any:
    async def check() -> bool:
        pod = emulator.find("pods", "vdi", name_of(session_id))
        return pod is not None and bool(pod["spec"].get("nodeName"))

    return check


@pytest.mark.parametrize(
    "fake_options", [{"gpu_capacity": 1, "autoscaler_group": NodeGroup(max_nodes=0)}]
)
async def test_a_wait_no_autoscaler_can_help_lasts_until_the_start_timeout_then_no_capacity(
    cluster_app: FastAPI, api: httpx.AsyncClient, fake: Fake
) -> None:
    await put_template(api, start_timeout_s=60)
    holder = await create(api, "holder")
    await eventually(on_a_node(fake[0], holder["id"]))
    session = await create(api, "late")
    body = await eventually(waiting(api, session["id"], autoscaler="NotTriggerScaleUp"))
    assert "max node group size reached" in body["capacity_wait"]["autoscaler_message"]
    assert "cannot add one" in body["message"]
    # many reconciler passes (0.2 s) and pod updates later, it still waits
    await asyncio.sleep(2.0)
    assert (await get(api, session["id"]))["phase"] == "Starting"
    # The deadline is real; only this session's clock is moved past it.
    await _shift(
        cluster_app,
        session["id"],
        claimed_at=utcnow() - timedelta(seconds=61),
        next_reconcile_at=utcnow(),
    )
    failed = await eventually(phase_is(api, session["id"], "Failed"))
    assert failed["reason"] == "NO_CAPACITY"
    assert "nvidia.com/gpu" in failed["message"]
    assert "max node group size reached" in failed["message"]
    assert failed["capacity_wait"] is None
    metrics = (await api.get("/metrics")).text
    assert _sample(metrics, 'vdi_session_failures_total{reason="NO_CAPACITY"}') == 1.0
    assert "vdi_sessions_waiting_for_capacity{" not in metrics  # none waits now
    assert _sample(metrics, "vdi_capacity_wait_oldest_seconds") == 0.0


@pytest.mark.parametrize(
    "fake_options", [{"gpu_capacity": 1, "autoscaler_group": NodeGroup(max_nodes=0)}]
)
async def test_a_template_may_fail_at_once_when_no_node_group_can_help(
    api: httpx.AsyncClient, fake: Fake
) -> None:
    await put_template(api, fail_without_scale_up=True)
    holder = await create(api, "holder")
    await eventually(on_a_node(fake[0], holder["id"]))
    session = await create(api, "late")
    failed = await eventually(phase_is(api, session["id"], "Failed"))
    assert failed["reason"] == "NO_CAPACITY"
    assert "fail_without_scale_up" in failed["message"]


@pytest.mark.parametrize("fake_options", [{"gpu_capacity": 1, "termination_delay_s": 0.0}])
async def test_a_session_deleted_while_waiting_leaves_nothing_behind(
    api: httpx.AsyncClient, fake: Fake
) -> None:
    emulator, _cluster = fake
    await put_template(api)
    holder = await create(api, "holder")
    await eventually(on_a_node(emulator, holder["id"]))
    session = await create(api, "late")
    body = await eventually(waiting(api, session["id"]))
    assert body["capacity_wait"]["autoscaler"] is None  # no autoscaler on this cluster
    assert "no word from a cluster autoscaler" in body["message"]
    metrics = (await api.get("/metrics")).text
    assert 'vdi_sessions_waiting_for_capacity{resources="nvidia.com/gpu"} 1.0' in metrics
    assert 'vdi_sessions_by_reason{phase="Starting",reason="WaitingForCapacity"} 1.0' in metrics
    oldest = _sample(metrics, "vdi_capacity_wait_oldest_seconds")
    assert 0 < oldest < 60
    assert (await api.delete(f"/v1/sessions/{session['id']}", headers=ADMIN)).status_code == 202
    ended = await eventually(phase_is(api, session["id"], "Terminated"))
    assert ended["capacity_wait"] is None
    for plural in ("pods", "secrets", "services", "ingressroutes"):
        assert emulator.find(plural, "vdi", name_of(session["id"])) is None
    assert emulator.scheduler.unschedulable == {}
    # capacity that comes later goes to no one: nothing of the session is left to take it
    await emulator.add_node(gpus=1)
    await asyncio.sleep(0.3)
    assert emulator.scheduler.gpus_used == 1


@pytest.mark.parametrize("fake_options", [{"gpu_capacity": 1, "termination_delay_s": 0.0}])
async def test_warm_pool_members_never_take_capacity_from_a_waiting_user(
    api: httpx.AsyncClient, fake: Fake
) -> None:
    emulator, _cluster = fake
    await put_template(api, "pooled", warm_pool=2)

    # one member takes the only GPU; the other waits for capacity itself
    async def one_ready_one_waiting() -> bool:
        await report_ready_pods(api, emulator)
        body = (await api.get("/v1/templates/pooled", headers=ADMIN)).json()
        return body["warm_available"] == 1 and emulator.scheduler.unschedulable != {}

    await eventually(one_ready_one_waiting)
    claimed = await create(api, "alice", "pooled")  # takes the ready member
    assert claimed["warm"] is True
    user = await create(api, "bob", "pooled")  # no ready member: its own pod, waiting
    await eventually(waiting(api, user["id"]))

    # the waiting member yields, and no new member is made while bob waits
    async def yielded() -> bool:
        pods = [p["metadata"]["name"] for p in emulator.live("pods")]
        return sorted(pods) == sorted([name_of(claimed["id"]), name_of(user["id"])])

    await eventually(yielded)
    node = await emulator.add_node(gpus=1)

    async def bob_runs() -> bool:
        await report_ready_pods(api, emulator)
        return (await get(api, user["id"]))["phase"] == "Running"

    await eventually(bob_runs)
    pod = emulator.find("pods", "vdi", name_of(user["id"]))
    assert pod is not None
    assert pod["spec"]["nodeName"] == node
    log = await events(api, user["id"])
    capacity = [e["reason"] for e in log if e["type"] == "CapacityChanged"]
    assert capacity[-1] == "CapacityAvailable"


def _gpu_pod(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "vdi"},
        "spec": {
            "containers": [
                {
                    "name": "desktop",
                    "image": "registry.test/vdi/session:1",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                }
            ]
        },
    }


def _events_of(emulator: FakeKubernetes, pod: str) -> list[tuple[str, str, str]]:
    return [
        (e["source"]["component"], e["reason"], e["message"])
        for e in emulator.live("events")
        if e["involvedObject"]["name"] == pod
    ]


@pytest.mark.parametrize(
    "fake_options",
    [
        {
            "gpu_capacity": 0,
            "autoscaler_group": NodeGroup(
                max_nodes=1, gpus_per_node=2, join_s=0.3, gpus_after_s=1.5
            ),
        }
    ],
)
async def test_the_fakes_autoscaler_adds_a_node_that_is_ready_before_its_gpus(fake: Fake) -> None:
    """As on a real cluster (kubernetes/autoscaler#2232): the node joins Ready, the device plugin
    advertises its GPUs later, and only then is the GPU pod scheduled there."""
    emulator, cluster = fake
    await cluster.create("Pod", _gpu_pod("wants-one", 1))
    await cluster.create("Pod", _gpu_pod("wants-three", 3))  # more than any node of the group

    async def joined() -> dict[str, Any] | None:
        nodes = emulator.live("nodes")
        return next((n for n in nodes if n["metadata"]["name"] == "gpu-pool-1"), None)

    node = await eventually(joined)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert (ready, node["status"]["allocatable"]["nvidia.com/gpu"]) == ("True", "0")
    pod = emulator.find("pods", "vdi", "wants-one")
    assert pod is not None
    assert not pod["spec"].get("nodeName")  # Ready, but no GPU advertised yet

    async def bound() -> str:
        found = emulator.find("pods", "vdi", "wants-one")
        return str((found or {}).get("spec", {}).get("nodeName") or "")

    assert await eventually(bound) == "gpu-pool-1"
    node = await eventually(joined)
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert (
        "cluster-autoscaler",
        "TriggeredScaleUp",
        "pod triggered scale-up: [{gpu-pool 0->1 (max: 1)}]",
    ) in _events_of(emulator, "wants-one")
    assert (
        "cluster-autoscaler",
        "NotTriggerScaleUp",
        "pod didn't trigger scale-up: 1 Insufficient nvidia.com/gpu",
    ) in _events_of(emulator, "wants-three")
    scheduler = [e for e in _events_of(emulator, "wants-three") if e[1] == "FailedScheduling"]
    assert scheduler[-1][2].startswith("0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
