"""End to end through the real kubernetes client and the fake API server."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from app.cluster import kube, manifests
from app.cluster.kube import KubeCluster
from app.models import VDISession
from app.models._types import utcnow
from app.templates.schemas import TemplateSpec
from kubefake import FakeKubernetes, FaultPlan
from tests.cluster.conftest import eventually, name_of, phase_is
from tests.conftest import ADMIN, bearer

Fake = tuple[FakeKubernetes, KubeCluster]
NewSession = Callable[..., Awaitable[dict[str, Any]]]


async def agent_report(
    api: httpx.AsyncClient, cluster: KubeCluster, session_id: str, **fields: Any
) -> httpx.Response:
    """Report as the agent does: with the token from the session's Secret."""
    secret = await cluster.get("Secret", name_of(session_id))
    assert secret is not None
    token = base64.b64decode(secret["data"]["VDI_AGENT_TOKEN"]).decode()
    report = {
        "checks": [{"name": "gpu", "ok": True}, {"name": "encoder", "ok": True}],
        "encoder": "nvh264enc",
        **fields,
    }
    return await api.post(f"/v1/sessions/{session_id}/health", json=report, headers=bearer(token))


def objects_of(emulator: FakeKubernetes, session_id: str) -> dict[str, dict[str, Any]]:
    found = {}
    for plural in ("pods", "secrets", "services", "ingressroutes"):
        obj = emulator.find(plural, "vdi", name_of(session_id))
        if obj is not None:
            found[plural] = obj
    return found


async def test_create_run_delete_terminated_and_the_home_is_reused(
    api: httpx.AsyncClient, fake: Fake, new_session: NewSession
) -> None:
    emulator, cluster = fake
    session = await new_session("alice")
    await eventually(phase_is(api, session["id"], "Starting"))
    objects = objects_of(emulator, session["id"])
    assert set(objects) == {"pods", "secrets", "services", "ingressroutes"}
    pod_uid = objects["pods"]["metadata"]["uid"]
    for plural in ("secrets", "services", "ingressroutes"):
        assert objects[plural]["metadata"]["ownerReferences"][0]["uid"] == pod_uid
    home = emulator.find("persistentvolumeclaims", "vdi", "home-alice")
    assert home is not None

    running = await agent_report(api, cluster, session["id"])
    assert running.json()["phase"] == "Running"
    scheduled = {c["type"]: c for c in running.json()["conditions"]}["PodScheduled"]
    assert scheduled["status"] == "True"
    # time to desktop, each step recorded when the reconciler or the agent saw it
    at = {
        k: datetime.fromisoformat(v) for k, v in running.json().items() if k.endswith("_at") and v
    }
    assert at["created_at"] <= at["provisioned_at"] <= at["running_at"]
    assert at["created_at"] <= at["scheduled_at"] <= at["running_at"]

    assert (await api.delete(f"/v1/sessions/{session['id']}", headers=ADMIN)).status_code == 202
    ended = await eventually(phase_is(api, session["id"], "Terminated"))
    assert ended["reason"] == "ObjectsDeleted"
    assert objects_of(emulator, session["id"]) == {}
    kept = emulator.find("persistentvolumeclaims", "vdi", "home-alice")
    assert kept is not None
    assert kept["metadata"]["uid"] == home["metadata"]["uid"]

    again = await new_session("alice")
    await eventually(phase_is(api, again["id"], "Starting"))
    pod = emulator.find("pods", "vdi", name_of(again["id"]))
    assert pod is not None
    assert pod["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"] == "home-alice"
    reused = emulator.find("persistentvolumeclaims", "vdi", "home-alice")
    assert reused is not None
    assert reused["metadata"]["uid"] == home["metadata"]["uid"]


async def test_image_pull_error_fails(api: httpx.AsyncClient, new_session: NewSession) -> None:
    session = await new_session("carol", image="registry.test/does-not-exist:1")
    failed = await eventually(phase_is(api, session["id"], "Failed"))
    assert failed["reason"] == "ImagePullError"


async def test_crash_loop_fails(api: httpx.AsyncClient, new_session: NewSession) -> None:
    session = await new_session("dora", image="registry.test/crashes:1")
    failed = await eventually(phase_is(api, session["id"], "Failed"))
    assert failed["reason"] == "CrashLoopBackOff"


async def _shift(app: FastAPI, session_id: str, **values: Any) -> None:
    async with app.state.sessionmaker() as db, db.begin():
        await db.execute(
            update(VDISession).where(VDISession.id == uuid.UUID(session_id)).values(**values)
        )
    app.state.reconciler.wake.set()


async def test_no_health_report_is_start_timeout(
    cluster_app: FastAPI, api: httpx.AsyncClient, new_session: NewSession
) -> None:
    session = await new_session("erin", start_timeout_s=30)
    await eventually(phase_is(api, session["id"], "Starting"))
    # The deadline is real; only the clock of this session is moved past it.
    await _shift(
        cluster_app,
        session["id"],
        claimed_at=utcnow() - timedelta(seconds=31),
        next_reconcile_at=utcnow(),
    )
    failed = await eventually(phase_is(api, session["id"], "Failed"))
    assert failed["reason"] == "START_TIMEOUT"


async def test_silent_agent_is_agent_lost_and_idle_is_terminated(
    cluster_app: FastAPI, api: httpx.AsyncClient, fake: Fake, new_session: NewSession
) -> None:
    lost, idle = await new_session("fred"), await new_session("gwen")
    for session in (lost, idle):
        await eventually(phase_is(api, session["id"], "Starting"))
        assert (await agent_report(api, fake[1], session["id"])).json()["phase"] == "Running"
    await _shift(
        cluster_app,
        lost["id"],
        last_report_at=utcnow() - timedelta(seconds=61),
        next_reconcile_at=utcnow(),
    )
    await _shift(cluster_app, idle["id"], idle_deadline=utcnow(), next_reconcile_at=utcnow())
    assert (await eventually(phase_is(api, lost["id"], "Failed")))["reason"] == "AGENT_LOST"
    assert (await eventually(phase_is(api, idle["id"], "Terminated")))["phase"] == "Terminated"
    events = (await api.get(f"/v1/sessions/{idle['id']}/events", headers=ADMIN)).json()["items"]
    assert "IdleTimeout" in [e["reason"] for e in events]


async def test_idle_measured_by_viewers_ends_the_unwatched_session_and_keeps_the_watched(
    cluster_app: FastAPI, api: httpx.AsyncClient, fake: Fake, new_session: NewSession
) -> None:
    """A template with `idle: viewers`: no idle deadline while a page is connected; from the
    moment the last one left, idle_timeout_s; keepalives do not count. The same minute passes
    for both sessions (their deadlines moved back by it): the unwatched one ends."""
    template = {"streamer": "selkies", "idle": "viewers", "idle_timeout_s": 60}
    alone = await new_session("hal", "by-viewers", **template)
    watched = await new_session("ida", "by-viewers", **template)
    page = {"id": "client-1", "role": "owner", "since": "2026-12-07T12:00:00Z"}
    for session, pages in ((alone, []), (watched, [page])):
        await eventually(phase_is(api, session["id"], "Starting"))
        reported = await agent_report(api, fake[1], session["id"], viewers=pages)
        assert reported.json()["phase"] == "Running"
    alone_now = (await api.get(f"/v1/sessions/{alone['id']}", headers=ADMIN)).json()
    watched_now = (await api.get(f"/v1/sessions/{watched['id']}", headers=ADMIN)).json()
    assert watched_now["idle_deadline"] == watched_now["expires_at"]
    assert watched_now["message"] == (
        "GPU and encoder ready (nvh264enc). Kept alive by 1 connected page (owner); idle: viewers"
    )
    left = datetime.fromisoformat(alone_now["idle_deadline"]) - utcnow()
    assert timedelta(seconds=55) < left <= timedelta(seconds=60)
    # a keepalive counts for nothing here
    await api.post(f"/v1/sessions/{alone['id']}/keepalive", headers=ADMIN)
    kept = (await api.get(f"/v1/sessions/{alone['id']}", headers=ADMIN)).json()
    assert kept["idle_deadline"] == alone_now["idle_deadline"]

    for session in (alone_now, watched_now):  # a minute and a second later, for both
        deadline = datetime.fromisoformat(session["idle_deadline"]) - timedelta(seconds=61)
        await _shift(cluster_app, session["id"], idle_deadline=deadline, next_reconcile_at=utcnow())
    assert (await eventually(phase_is(api, alone["id"], "Terminated")))["phase"] == "Terminated"
    events = (await api.get(f"/v1/sessions/{alone['id']}/events", headers=ADMIN)).json()["items"]
    [idle] = [e for e in events if e["reason"] == "IdleTimeout"]
    assert idle["message"] == "No page connected to the desktop for idle_timeout_s (60 s)"
    still = (await api.get(f"/v1/sessions/{watched['id']}", headers=ADMIN)).json()
    assert still["phase"] == "Running"

    # its page leaves: the idle time runs from then
    gone = await agent_report(api, fake[1], watched["id"], viewers=[])
    body = gone.json()
    assert body["message"].startswith("No page connected since ")
    left = datetime.fromisoformat(body["idle_deadline"]) - utcnow()
    assert timedelta(seconds=55) < left <= timedelta(seconds=60)


@pytest.fixture
def cluster_settings(cluster_settings: Any, request: pytest.FixtureRequest) -> Any:
    marker = request.node.get_closest_marker("settings")
    return cluster_settings.model_copy(update=marker.kwargs) if marker else cluster_settings


@pytest.mark.settings(failed_grace_s=0)
async def test_failed_sessions_are_cleaned_up_after_the_grace(
    api: httpx.AsyncClient, fake: Fake, new_session: NewSession
) -> None:
    session = await new_session("hank", image="registry.test/does-not-exist:1")
    ended = await eventually(phase_is(api, session["id"], "Terminated"))
    events = [
        e["reason"]
        for e in (await api.get(f"/v1/sessions/{session['id']}/events", headers=ADMIN)).json()[
            "items"
        ]
        if e["type"] == "PhaseChanged"  # (the pod's own events come in between)
    ]
    assert events[-3:] == ["ImagePullError", "FailedCleanup", "ObjectsDeleted"]
    assert objects_of(fake[0], ended["id"]) == {}


@pytest.mark.e2e  # 30% of cluster calls failing: a reliability run, seconds long
@pytest.mark.parametrize(
    "fake_options",
    [{"faults": FaultPlan(rate=0.3, timeout_hold_s=1.5, seed=7), "gpu_capacity": 64}],
    ids=["30%-faults"],
)
async def test_injected_500_429_and_timeouts_still_converge_without_duplicates(
    api: httpx.AsyncClient, fake: Fake, new_session: NewSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube, "REQUEST_TIMEOUT", (1.0, 1.0))  # a held answer is a client timeout
    emulator, _ = fake
    sessions = [await new_session(f"user-{i}") for i in range(8)]
    for session in sessions:
        await eventually(phase_is(api, session["id"], "Starting"), timeout_s=60)
    assert emulator.faults_injected > 5
    for plural in ("pods", "secrets", "services", "ingressroutes"):
        names = [o["metadata"]["name"] for o in emulator.live(plural)]
        assert sorted(names) == sorted(name_of(s["id"]) for s in sessions), plural
    for session in sessions:
        events = (await api.get(f"/v1/sessions/{session['id']}/events", headers=ADMIN)).json()[
            "items"
        ]
        assert [e["phase"] for e in events if e["type"] == "PhaseChanged"] == [
            "Pending",
            "Provisioning",
            "Starting",
        ]
    # Deleted while the API still fails 30% of calls, which then recovers.
    injected = emulator.faults_injected
    for session in sessions:
        await api.delete(f"/v1/sessions/{session['id']}", headers=ADMIN)
    await asyncio.sleep(3)
    assert emulator.faults_injected > injected, "no fault met the deletions"
    emulator.faults = FaultPlan()
    for session in sessions:
        await eventually(phase_is(api, session["id"], "Terminated"), timeout_s=60)
    assert [
        o["metadata"]["name"]
        for o in emulator.live()
        if o["kind"] not in ("PersistentVolumeClaim", "Event", "Node")
    ] == []


async def test_orphans_are_swept_and_live_objects_kept(
    cluster_app: FastAPI, api: httpx.AsyncClient, fake: Fake, new_session: NewSession
) -> None:
    emulator, cluster = fake
    live = await new_session("ivan")
    await eventually(phase_is(api, live["id"], "Starting"))
    stray_id = uuid.uuid4()
    view = manifests.SessionView(
        id=stray_id,
        user="nobody",
        template="t",
        spec=TemplateSpec(image="i"),
    )
    stray = await cluster.create("Pod", manifests.pod(view, cluster_app.state.settings))
    await cluster.create("Service", manifests.service(view, cluster_app.state.settings, stray))
    swept = await cluster_app.state.reconciler.sweep_orphans()
    assert swept == 2

    async def pod_gone() -> bool:  # pods terminate gracefully
        return emulator.find("pods", "vdi", f"vdi-{stray_id}") is None

    await eventually(pod_gone)
    assert emulator.find("services", "vdi", f"vdi-{stray_id}") is None
    assert set(objects_of(emulator, live["id"])) == {"pods", "secrets", "services", "ingressroutes"}
    assert emulator.find("persistentvolumeclaims", "vdi", "home-ivan") is not None


async def test_force_delete_ends_a_session_the_cluster_refuses_to_delete(
    cluster_app: FastAPI, api: httpx.AsyncClient, fake: Fake, new_session: NewSession
) -> None:
    emulator, _ = fake
    session = await new_session("judy")
    await eventually(phase_is(api, session["id"], "Starting"))
    emulator.faults = FaultPlan(rate=1.0, kinds=("500",))
    response = await api.delete(
        f"/v1/sessions/{session['id']}", params={"force": "true"}, headers=ADMIN
    )
    assert response.status_code == 202
    ended = await eventually(phase_is(api, session["id"], "Terminated"), timeout_s=60)
    assert ended["reason"] == "ForceDeleted"
    emulator.faults = FaultPlan()
    assert await cluster_app.state.reconciler.sweep_orphans() == 4

    async def all_gone() -> bool:  # the pod terminates gracefully
        return objects_of(emulator, session["id"]) == {}

    await eventually(all_gone)


async def test_a_pod_deleted_behind_our_back_fails_the_session(
    api: httpx.AsyncClient, fake: Fake, new_session: NewSession
) -> None:
    session = await new_session("kate")
    await eventually(phase_is(api, session["id"], "Starting"))
    await fake[1].delete("Pod", name_of(session["id"]))
    failed = await eventually(phase_is(api, session["id"], "Failed"))
    assert failed["reason"] == "PodDeleted"


@pytest.mark.settings(idempotency_ttl_s=60)
async def test_expired_idempotency_keys_are_swept(
    cluster_app: FastAPI, api: httpx.AsyncClient
) -> None:
    await api.put("/v1/templates/t", json={"image": "registry.test/vdi:1"}, headers=ADMIN)
    for user, key in (("old-user", "old-key"), ("new-user", "new-key")):
        response = await api.post(
            "/v1/sessions",
            json={"user": user, "template": "t"},
            headers={**ADMIN, "Idempotency-Key": key},
        )
        assert response.status_code == 202
    from app.models import IdempotencyKey

    async with cluster_app.state.sessionmaker() as db, db.begin():
        await db.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == "old-key")
            .values(created_at=utcnow() - timedelta(seconds=61))
        )
    assert await cluster_app.state.reconciler.sweep_idempotency_keys() == 1
    async with cluster_app.state.sessionmaker() as db:
        from sqlalchemy import select

        left = (await db.execute(select(IdempotencyKey.key))).scalars().all()
    assert left == ["new-key"]


@pytest.mark.parametrize("fake_options", [{"termination_delay_s": 1.5}])
async def test_a_recreated_session_waits_until_the_previous_pod_is_gone(
    api: httpx.AsyncClient, fake: Fake, new_session: NewSession
) -> None:
    """Delete then create at once: the old pod takes a while to stop (a real kubelet up to
    30 s), and the user's home volume must never be mounted by two pods."""
    emulator, cluster = fake
    first = await new_session("ivy")
    await eventually(phase_is(api, first["id"], "Starting"))
    assert (await agent_report(api, cluster, first["id"])).json()["phase"] == "Running"
    assert (await api.delete(f"/v1/sessions/{first['id']}", headers=ADMIN)).status_code == 202
    second = await new_session("ivy")

    waiting = await eventually(lambda: _reason_is(api, second["id"], "WaitingForPreviousSession"))
    assert waiting["phase"] == "Provisioning"
    assert first["id"] in waiting["message"]
    assert emulator.find("pods", "vdi", name_of(second["id"])) is None
    assert emulator.find("pods", "vdi", name_of(first["id"])) is not None  # still stopping

    await eventually(phase_is(api, second["id"], "Starting"))
    old = await api.get(f"/v1/sessions/{first['id']}", headers=ADMIN)
    assert old.json()["phase"] == "Terminated"  # the old pod was gone before the new one
    assert emulator.find("pods", "vdi", name_of(first["id"])) is None


async def test_a_failed_session_counts_for_the_users_limit(
    api: httpx.AsyncClient, fake: Fake, new_session: NewSession
) -> None:
    _, cluster = fake
    failed = await new_session("jay")
    await eventually(phase_is(api, failed["id"], "Starting"))
    gpu_error = [{"name": "gpu", "ok": False, "code": "GPU_INIT_ERROR", "detail": "no GPU"}]
    answer = await agent_report(api, cluster, failed["id"], checks=gpu_error)
    assert answer.json()["phase"] == "Failed"
    refused = await api.post(
        "/v1/sessions", json={"user": "jay", "template": "gpu-desktop"}, headers=ADMIN
    )
    assert refused.status_code == 409
    assert refused.json()["live_session_ids"] == [failed["id"]]
    assert "Failed, still holding its pod" in refused.json()["detail"]


async def _reason_is(api: httpx.AsyncClient, session_id: str, reason: str) -> Any:
    body = (await api.get(f"/v1/sessions/{session_id}", headers=ADMIN)).json()
    return body if body["reason"] == reason else None


@pytest.mark.parametrize("fake_options", [{"termination_delay_s": 1.5}])
async def test_termination_is_ended_by_the_watch_not_by_polling(
    api: httpx.AsyncClient, fake: Fake, new_session: NewSession
) -> None:
    """The objects are deleted once; the pod's DELETED event ends the session. The API calls
    it takes do not grow with the time the pod needs to stop."""
    emulator, cluster = fake
    session = await new_session("quinn")
    await eventually(phase_is(api, session["id"], "Starting"))
    calls_before = emulator.api_calls
    assert (await api.delete(f"/v1/sessions/{session['id']}", headers=ADMIN)).status_code == 202
    ended = await eventually(phase_is(api, session["id"], "Terminated"))
    assert ended["reason"] == "ObjectsDeleted"
    # DELETE of the Pod, Secret, Service and IngressRoute: four calls in 1.5 s of shutdown
    # (polling every 0.25 s made about thirty)
    assert emulator.api_calls - calls_before <= 5


async def test_a_relist_writes_only_what_differs_from_the_database(
    cluster_app: FastAPI,
    api: httpx.AsyncClient,
    fake: Fake,
    new_session: NewSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a restart every pod is new to the replica, but only pods that say something the
    sessions do not record take a locking write."""
    emulator, cluster = fake
    sessions = [await new_session(f"rel{i}") for i in range(4)]
    for session in sessions:
        await eventually(lambda s=session: _scheduled(api, s["id"]))

    async def settled() -> bool:  # no pod event still on its way to the watch
        pods = list(emulator.live("pods"))
        return len(pods) == 4 and all(p["status"].get("phase") == "Running" for p in pods)

    await eventually(settled)
    await asyncio.sleep(0.5)  # the watch has folded the last of them in
    reconciler = cluster_app.state.reconciler
    written: list[str] = []
    real = reconciler.pods.apply_observation

    async def counting(seen: Any, *, deleted: bool) -> None:
        written.append(str(seen.session_id))
        await real(seen, deleted=deleted)

    monkeypatch.setattr(reconciler.pods, "apply_observation", counting)
    pods, _ = await cluster.list("Pod", manifests.SESSION_SELECTOR)
    await reconciler.observe_relist(pods)
    assert written == []  # every session already says its pod is scheduled

    # one session's record is behind its pod: only it is written
    stale = sessions[2]["id"]
    async with cluster_app.state.sessionmaker() as db, db.begin():
        row = await db.get(VDISession, uuid.UUID(stale))
        assert row is not None
        row.conditions = [
            {**c, "status": "Unknown", "reason": "NotChecked"} if c["type"] == "PodScheduled" else c
            for c in row.conditions
        ]
    await reconciler.observe_relist(pods)
    assert written == [stale]
    assert await _scheduled(api, stale)


async def _scheduled(api: httpx.AsyncClient, session_id: str) -> bool:
    body = (await api.get(f"/v1/sessions/{session_id}", headers=ADMIN)).json()
    return any(c["type"] == "PodScheduled" and c["status"] == "True" for c in body["conditions"])


async def test_readyz_waits_for_the_pod_watch(cluster_app: FastAPI, api: httpx.AsyncClient) -> None:
    reconciler = cluster_app.state.reconciler
    await eventually(lambda: _ready(api))
    reconciler.watch_connected.clear()  # as before the first list after a start
    refused = await api.get("/readyz")
    assert refused.status_code == 503
    assert "watch" in refused.json()["detail"]
    reconciler.watch_connected.set()
    assert (await api.get("/readyz")).status_code == 200


async def _ready(api: httpx.AsyncClient) -> bool:
    return (await api.get("/readyz")).status_code == 200


async def test_only_the_schedulers_and_kubelets_events_about_the_pod_itself_are_forwarded(
    cluster_app: FastAPI, api: httpx.AsyncClient, fake: Fake, new_session: NewSession
) -> None:
    """Anyone who may create Events in the namespace could write into a session's log: only
    events whose involved object is the session pod (its uid) and whose source is the
    scheduler or a kubelet are kept."""
    emulator, cluster = fake
    session = await new_session("erin")
    name = name_of(session["id"])

    async def pod_uid() -> str | None:
        pod = emulator.find("pods", "vdi", name)
        return None if pod is None else str(pod["metadata"]["uid"])

    uid = await eventually(pod_uid)

    async def forwarded() -> list[str]:
        listed = await api.get(f"/v1/sessions/{session['id']}/events", headers=ADMIN)
        return [e["message"] for e in listed.json()["items"] if e["type"] == "PodEvent"]

    await eventually(lambda: _has(forwarded, "Started container desktop"))

    def event(suffix: str, involved_uid: str, component: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.forged{suffix}", "namespace": "vdi"},
            "involvedObject": {
                "kind": "Pod",
                "name": name,
                "namespace": "vdi",
                "uid": involved_uid,
            },
            "reason": "Pulled",
            "message": f"message {suffix}",
            "type": "Normal",
            "source": {"component": component},
            "count": 1,
        }

    for suffix, involved_uid, component in (
        ("a", str(uuid.uuid4()), "kubelet"),  # another pod of that name (or none)
        ("b", uid, "mallory"),  # not the scheduler's nor a kubelet's
        ("c", uid, "kubelet"),  # the pod's own kubelet
    ):
        await cluster.create("Event", event(suffix, involved_uid, component))
    await eventually(lambda: _has(forwarded, "message c"))
    await asyncio.sleep(0.3)  # had the others been forwarded, they would be by now
    messages = await forwarded()
    assert "message a" not in messages
    assert "message b" not in messages


async def _has(listing: Callable[[], Awaitable[list[str]]], wanted: str) -> bool:
    return wanted in await listing()
