"""Warm pools, image pre-pull and the pods' progress events, through the real API, reconciler and
client against the fake cluster (DESIGN "Time to desktop")."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from app.cluster.kube import ClusterError, KubeCluster
from app.config import Settings
from app.controllers import Claim
from app.main import create_app
from app.sessions import warm
from app.sessions.repository import api as sessions_repository
from app.sessions.repository import workqueue
from app.sessions.router import warm_router
from app.templates import repository as templates_repository
from harness.servers import serve
from kubefake import FakeKubernetes
from tests.cluster.conftest import eventually, name_of, phase_is, report_ready_pods
from tests.conftest import ADMIN, client_for, running

Fake = tuple[FakeKubernetes, KubeCluster]
POOLED = {
    "image": "registry.test/vdi/session:1",
    "persistent_home": False,
    "warm_pool": 2,
    "home_size": "5Gi",
}


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(
        make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        yield connection
    finally:
        await connection.close()


async def members(db: asyncpg.Connection, template: str = "pooled") -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT id, phase, reason FROM sessions WHERE pool_member AND template_name = $1 "
        "AND phase NOT IN ('Terminating', 'Terminated') ORDER BY created_at",
        template,
    )


async def warm_available(api: httpx.AsyncClient, template: str = "pooled") -> int:
    return int((await api.get(f"/v1/templates/{template}", headers=ADMIN)).json()["warm_available"])


async def fill(
    api: httpx.AsyncClient, emulator: FakeKubernetes, wanted: int, template: str = "pooled"
) -> None:
    async def ready() -> bool:
        await report_ready_pods(api, emulator)
        return await warm_available(api, template) == wanted

    await eventually(ready)


async def create(api: httpx.AsyncClient, user: str, template: str = "pooled") -> httpx.Response:
    return await api.post("/v1/sessions", json={"user": user, "template": template}, headers=ADMIN)


async def test_a_pool_with_a_persistent_home_is_refused(api: httpx.AsyncClient) -> None:
    body = {"image": "registry.test/vdi/session:1", "warm_pool": 2}
    response = await api.put("/v1/templates/pooled", json=body, headers=ADMIN)
    assert response.status_code == 422
    assert "persistent_home" in response.text
    assert "running pod" in response.text
    assert (await api.get("/v1/templates/pooled", headers=ADMIN)).status_code == 404


async def test_members_wait_checked_then_a_create_gets_one_running_and_the_pool_refills(
    api: httpx.AsyncClient, fake: Fake, db: asyncpg.Connection
) -> None:
    emulator, _cluster = fake
    assert (await api.put("/v1/templates/pooled", json=POOLED, headers=ADMIN)).status_code == 201
    await fill(api, emulator, 2)
    pooled = await members(db)
    assert [m["phase"] for m in pooled] == ["Running", "Running"]
    # Members belong to no one: no list shows them, no home PVC, no route.
    assert (await api.get("/v1/sessions", headers=ADMIN)).json()["items"] == []
    assert list(emulator.live("persistentvolumeclaims")) == []
    assert list(emulator.live("ingressroutes")) == []
    pod = emulator.find("pods", "vdi", name_of(str(pooled[0]["id"])))
    assert pod is not None
    [home] = [v for v in pod["spec"]["volumes"] if v["name"] == "home"]
    assert home == {"name": "home", "emptyDir": {"sizeLimit": "5Gi"}}

    response = await create(api, "alice")
    assert response.status_code == 202
    session = response.json()
    assert session["id"] == str(pooled[0]["id"])  # the oldest member
    assert (session["phase"], session["warm"], session["reason"]) == ("Running", True, "WarmReady")
    assert session["user"] == "alice"
    assert session["url"].startswith("https://alice.")
    assert session["running_at"] >= session["created_at"]
    route = emulator.find("ingressroutes", "vdi", name_of(session["id"]))
    assert route is not None
    assert "alice." in route["spec"]["routes"][0]["match"]
    assert route["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
    listed = (await api.get("/v1/sessions", headers=ADMIN)).json()["items"]
    assert [s["id"] for s in listed] == [session["id"]]
    events = (await api.get(f"/v1/sessions/{session['id']}/events", headers=ADMIN)).json()
    kinds = [e["type"] for e in events["items"]]
    assert "Claimed" in kinds
    assert "PodEvent" in kinds
    # The pool refills behind the claim.
    await fill(api, emulator, 2)
    assert session["id"] not in {str(m["id"]) for m in await members(db)}
    metrics = (await api.get("/metrics")).text
    assert 'vdi_session_start_seconds_count{template="pooled",warm="true"} 1.0' in metrics
    assert 'template="pooled",warm="false"' not in metrics  # members' own starts not counted


async def test_shrinking_ends_the_surplus_and_age_out_replaces(
    api: httpx.AsyncClient, fake: Fake, db: asyncpg.Connection
) -> None:
    emulator, _cluster = fake
    assert (await api.put("/v1/templates/pooled", json=POOLED, headers=ADMIN)).is_success
    await fill(api, emulator, 2)
    smaller = {**POOLED, "warm_pool": 1}
    assert (await api.put("/v1/templates/pooled", json=smaller, headers=ADMIN)).is_success
    await eventually(lambda: _count(db, "WarmPoolShrunk", 1))
    await fill(api, emulator, 1)
    [kept] = await members(db)
    # Past its age: the reconciler ends it and the keeper adds a fresh one.
    await db.execute(
        "UPDATE sessions SET expires_at = now(), idle_deadline = now(), "
        "next_reconcile_at = now() WHERE id = $1",
        kept["id"],
    )
    await eventually(lambda: _count(db, "WarmPoolMemberExpired", 1))
    await fill(api, emulator, 1)
    [fresh] = await members(db)
    assert fresh["id"] != kept["id"]
    # Zero: no members left, and a create is a cold start.
    assert (
        await api.put("/v1/templates/pooled", json={**POOLED, "warm_pool": 0}, headers=ADMIN)
    ).is_success
    await eventually(lambda: _none_left(db))
    cold = (await create(api, "bob")).json()
    assert (cold["phase"], cold["warm"]) == ("Pending", False)


async def _count(db: asyncpg.Connection, reason: str, wanted: int) -> bool:
    found = await db.fetchval(
        "SELECT count(*) FROM session_events WHERE reason = $1 AND type = 'PhaseChanged'", reason
    )
    return bool(found == wanted)


async def _none_left(db: asyncpg.Connection) -> bool:
    return not await members(db)


async def test_a_member_that_fails_its_checks_is_replaced_never_handed_out(
    api: httpx.AsyncClient, fake: Fake, db: asyncpg.Connection
) -> None:
    emulator, _cluster = fake
    one = {**POOLED, "warm_pool": 1}
    assert (await api.put("/v1/templates/pooled", json=one, headers=ADMIN)).is_success
    await eventually(_running_pods(emulator, 1))
    failing = [{"name": "gpu", "ok": False, "code": "GPU_INIT_ERROR", "detail": "broken"}]
    await report_ready_pods(api, emulator, checks=failing)
    [failed] = await db.fetch("SELECT id, phase FROM sessions WHERE pool_member")
    assert failed["phase"] == "Failed"
    # Not handed out: a create while it is the only member is a cold start.
    cold = (await create(api, "carol")).json()
    assert (cold["warm"], cold["phase"]) == (False, "Pending")
    await eventually(lambda: _count(db, "WarmPoolMemberFailed", 1))
    await fill(api, emulator, 1)
    [fresh] = await members(db)
    assert fresh["id"] != failed["id"]


def _running_pods(emulator: FakeKubernetes, wanted: int) -> Any:
    async def check() -> bool:
        pods = [p for p in emulator.live("pods") if p["status"].get("phase") == "Running"]
        secrets = list(emulator.live("secrets"))
        return len(pods) == wanted and len(secrets) == wanted

    return check


@pytest.fixture
async def second_replica(
    cluster_app: FastAPI, cluster_settings: Settings, database_url: str, fake: Fake
) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(cluster_settings, database_url, cluster=fake[1])
    async with running(application), client_for(application) as http:
        yield http


async def test_concurrent_claims_on_two_replicas_hand_out_each_member_once(
    api: httpx.AsyncClient,
    second_replica: httpx.AsyncClient,
    fake: Fake,
    db: asyncpg.Connection,
) -> None:
    emulator, _cluster = fake
    four = {**POOLED, "warm_pool": 4}
    assert (await api.put("/v1/templates/pooled", json=four, headers=ADMIN)).is_success
    await fill(api, emulator, 4)
    users = [f"u{i}" for i in range(6)]
    # Six users at once, alternating replicas, and one user twice (once on each replica).
    calls = [create(api if i % 2 else second_replica, user) for i, user in enumerate(users)]
    calls += [create(api, "twice"), create(second_replica, "twice")]
    answers = await asyncio.gather(*calls)
    created = [r.json() for r in answers if r.status_code == 202]
    refused = [r for r in answers if r.status_code != 202]
    assert [r.status_code for r in refused] == [409]  # "twice" got exactly one
    warm = [s for s in created if s["warm"]]
    assert len(warm) == 4, "every ready member handed out once"
    assert len({s["id"] for s in created}) == len(created) == 7
    assert sorted(s["user"] for s in created) == sorted([*users, "twice"])
    assert all(s["phase"] == "Running" for s in warm), warm
    owners = await db.fetch(
        'SELECT "user", count(*) AS n FROM sessions WHERE NOT pool_member GROUP BY 1'
    )
    assert all(row["n"] == 1 for row in owners)


async def test_a_member_locked_for_a_moment_by_its_heartbeat_is_still_handed_out(
    api: httpx.AsyncClient, fake: Fake, db: asyncpg.Connection
) -> None:
    # Something that does not take the member (an agent's heartbeat, the reconciler's claim of
    # its due work) holds its row for a moment: the create waits for it rather than going cold.
    emulator, _cluster = fake
    one = {**POOLED, "warm_pool": 1}
    assert (await api.put("/v1/templates/pooled", json=one, headers=ADMIN)).is_success
    await fill(api, emulator, 1)
    [member] = await members(db)
    async with db.transaction():
        await db.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", member["id"])
        pending = asyncio.ensure_future(create(api, "alice"))
        await asyncio.sleep(0.06)
    response = await pending
    assert response.status_code == 202
    assert (response.json()["id"], response.json()["warm"]) == (str(member["id"]), True)


async def test_prepull_daemonset_follows_its_template(
    cluster_app: FastAPI, api: httpx.AsyncClient, fake: Fake
) -> None:
    emulator, _cluster = fake
    prepulls = cluster_app.state.reconciler.prepulls
    template = {
        "image": "registry.test/vdi/session:1",
        "prepull": True,
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    assert (await api.put("/v1/templates/pulled", json=template, headers=ADMIN)).is_success
    await prepulls.keep_prepulls()
    first = emulator.find("daemonsets", "vdi", "vdi-prepull-pulled")
    assert first is not None
    pod = first["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == "registry.test/vdi/session:1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["containers"][0]["resources"]["requests"] == {"cpu": "1m", "memory": "8Mi"}
    assert "nvidia.com/gpu" not in json.dumps(pod["containers"][0]["resources"])
    # The fake's DaemonSet pulls the image onto the node: a session then starts without pulling.
    await eventually(lambda: _has_image(emulator, "registry.test/vdi/session:1"))
    # A new image: replaced; other fields of the template (bitrate) leave it alone.
    template["image"] = "registry.test/vdi/session:2"
    assert (await api.put("/v1/templates/pulled", json=template, headers=ADMIN)).is_success
    assert await prepulls.keep_prepulls() == 1
    second = emulator.find("daemonsets", "vdi", "vdi-prepull-pulled")
    assert second is not None
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    template["bitrate_kbps"] = 4000
    assert (await api.put("/v1/templates/pulled", json=template, headers=ADMIN)).is_success
    assert await prepulls.keep_prepulls() == 0
    # Turned off: deleted. On again, then the template deleted: deleted (swept).
    template["prepull"] = False
    assert (await api.put("/v1/templates/pulled", json=template, headers=ADMIN)).is_success
    assert await prepulls.keep_prepulls() == 1
    assert emulator.find("daemonsets", "vdi", "vdi-prepull-pulled") is None
    template["prepull"] = True
    assert (await api.put("/v1/templates/pulled", json=template, headers=ADMIN)).is_success
    await prepulls.keep_prepulls()
    assert (await api.delete("/v1/templates/pulled", headers=ADMIN)).status_code == 204
    await prepulls.keep_prepulls()
    assert emulator.find("daemonsets", "vdi", "vdi-prepull-pulled") is None


async def _has_image(emulator: FakeKubernetes, image: str) -> bool:
    return image in emulator.node_images


@pytest.mark.parametrize("fake_options", [{"image_pull_s": 0.4}])
async def test_progress_events_stream_over_sse_once_each(
    cluster_app: FastAPI, api: httpx.AsyncClient, second_replica: httpx.AsyncClient, fake: Fake
) -> None:
    """The pod's events reach the session's SSE stream in order, once each although two
    replicas forward them."""
    # (no home PVC: a pod created beside its PVC may first be FailedScheduling for it)
    body = {"image": "registry.test/vdi/session:7", "persistent_home": False}
    assert (await api.put("/v1/templates/plain", json=body, headers=ADMIN)).is_success
    wanted = ["Scheduled", "Pulling", "Pulled", "Created", "Started"]
    seen: list[dict[str, Any]] = []
    async with serve(cluster_app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        session = (await create(http, "dana", "plain")).json()
        headers = {**ADMIN, "Accept": "text/event-stream"}
        url_events = f"/v1/sessions/{session['id']}/events"
        async with asyncio.timeout(20), http.stream("GET", url_events, headers=headers) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    event = json.loads(line.removeprefix("data:"))
                    if event["type"] == "PodEvent":
                        seen.append(event)
                        if event["reason"] == "Started":
                            break
    assert [e["reason"] for e in seen] == wanted
    assert seen[1]["message"] == 'Pulling image "registry.test/vdi/session:7"'
    assert "in 0.400s" in seen[2]["message"]
    assert seen[0]["data"]["source"] == "default-scheduler"
    await eventually(phase_is(api, session["id"], "Starting"))
    await asyncio.sleep(0.3)  # the other replica's forwarding, had it duplicated anything
    items = (await api.get(f"/v1/sessions/{session['id']}/events", headers=ADMIN)).json()["items"]
    assert [e["reason"] for e in items if e["type"] == "PodEvent"] == wanted


async def test_a_claim_whose_route_failed_is_routed_by_the_reconciler(
    cluster_app: FastAPI,
    api: httpx.AsyncClient,
    fake: Fake,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator, _cluster = fake
    one = {**POOLED, "warm_pool": 1}
    assert (await api.put("/v1/templates/pooled", json=one, headers=ADMIN)).is_success
    await fill(api, emulator, 1)

    class Unreachable:
        async def route_claimed(self, _session: Any) -> Any:
            raise ClusterError("connection refused", temporary=True)

    monkeypatch.setattr(warm, "WARM_ROUTE_GRACE_S", 0.5)
    # the API's router of warm claims fails; the reconciler's (the pool keeper) does not
    monkeypatch.setitem(cluster_app.dependency_overrides, warm_router, Unreachable)
    claimed = (await create(api, "erin")).json()
    assert (claimed["warm"], claimed["phase"], claimed["reason"]) == (
        True,
        "Running",
        "WarmClaimed",
    )
    assert claimed["running_at"] is None
    assert emulator.find("ingressroutes", "vdi", name_of(claimed["id"])) is None

    async def routed_under_heartbeats() -> Any:
        # the agent keeps reporting, unchanged, as it does every few seconds (finding 27.11:
        # each unchanged report used to push the retry to the idle deadline)
        await report_ready_pods(api, emulator)
        return await _reason_is(api, claimed["id"], "WarmReady")

    routed = await eventually(routed_under_heartbeats)
    assert routed["running_at"] is not None
    assert emulator.find("ingressroutes", "vdi", name_of(claimed["id"])) is not None


async def _reason_is(api: httpx.AsyncClient, session_id: str, reason: str) -> Any:
    body = (await api.get(f"/v1/sessions/{session_id}", headers=ADMIN)).json()
    return body if body["reason"] == reason else None


# --- warm claims are final (issue 27, findings 9-11) ------------------------------------------


async def test_a_member_claimed_as_it_ages_out_stays_the_users(
    cluster_app: FastAPI, api: httpx.AsyncClient, fake: Fake, db: asyncpg.Connection
) -> None:
    """The reconciler claimed a member past warm_max_age_s; before it wrote the age-out, a
    create handed that member to a user. The age-out must not end the user's session."""
    emulator, _cluster = fake
    one = {**POOLED, "warm_pool": 1}
    assert (await api.put("/v1/templates/pooled", json=one, headers=ADMIN)).is_success
    await fill(api, emulator, 1)
    [member] = await members(db)
    # aged out, as the reconciler finds it when it claims it (not yet due for the background one)
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second', "
        "next_reconcile_at = now() + interval '1 hour' WHERE id = $1",
        member["id"],
    )
    async with cluster_app.state.sessionmaker() as session_db:
        seen = await sessions_repository.get(session_db, member["id"])
    assert seen is not None
    assert seen.pool_member
    claimed = await create(api, "alice")  # the user's create commits in between
    assert claimed.status_code == 202
    assert claimed.json()["id"] == str(member["id"])
    await cluster_app.state.reconciler.process(Claim(seen, uuid.uuid4()))
    after = (await api.get(f"/v1/sessions/{member['id']}", headers=ADMIN)).json()
    assert (after["phase"], after["user"]) == ("Running", "alice")
    assert not await _count(db, "WarmPoolMemberExpired", 1)


async def test_a_member_claimed_during_a_shrink_is_not_ended(
    cluster_app: FastAPI,
    api: httpx.AsyncClient,
    fake: Fake,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The keeper read the members (no lock), a create claimed the oldest, the one the shrink
    picks: the keeper must leave it to its user and end none in its place."""
    emulator, _cluster = fake
    assert (await api.put("/v1/templates/pooled", json=POOLED, headers=ADMIN)).is_success
    await fill(api, emulator, 2)
    ready_seen: list[int] = []  # ready members this pass read
    answers: list[httpx.Response] = []
    list_pooled, pool_members = templates_repository.list_pooled, workqueue.pool_members

    async def members_seen(session_db: Any) -> Any:
        found = await pool_members(session_db)
        ready_seen[:] = [1 for m in found if m.phase == "Running"]
        return found

    async def templates_then_a_claim(session_db: Any, also: set[str]) -> Any:
        # the keeper has read the members (no lock) and now the templates: a create commits
        found = await list_pooled(session_db, also)
        sizes = [t.warm_pool for t in found if t.name == "pooled"]
        if not answers and sizes == [1] and len(ready_seen) == 2:  # this pass will shrink
            answers.append(await create(api, "alice"))
        return found

    monkeypatch.setattr(templates_repository, "list_pooled", templates_then_a_claim)
    monkeypatch.setattr(workqueue, "pool_members", members_seen)
    smaller = {**POOLED, "warm_pool": 1}
    assert (await api.put("/v1/templates/pooled", json=smaller, headers=ADMIN)).is_success
    await eventually(lambda: _true(bool(answers)))
    [claimed] = answers
    assert claimed.status_code == 202
    assert claimed.json()["warm"]
    sid = claimed.json()["id"]
    # a few passes later: the user's session is untouched, the pool holds one member
    await asyncio.sleep(1.0)
    after = (await api.get(f"/v1/sessions/{sid}", headers=ADMIN)).json()
    assert (after["phase"], after["user"]) == ("Running", "alice")
    reasons = [
        e["reason"]
        for e in (await api.get(f"/v1/sessions/{sid}/events", headers=ADMIN)).json()["items"]
    ]
    assert "WarmPoolShrunk" not in reasons
    assert len(await members(db)) == 1


async def _true(value: bool) -> bool:
    return value


async def test_claims_racing_a_shrink_to_zero_each_stay_their_users(
    cluster_app: FastAPI, api: httpx.AsyncClient, fake: Fake, db: asyncpg.Connection
) -> None:
    """Many at once: four ready members (the fake node's GPUs), a shrink to zero and four
    creates, with the keeper run again and again among them. Whatever each create got, a warm
    one stays its user's."""
    emulator, _cluster = fake
    four = {**POOLED, "warm_pool": 4}
    assert (await api.put("/v1/templates/pooled", json=four, headers=ADMIN)).is_success
    await fill(api, emulator, 4)
    keeper = cluster_app.state.reconciler.pools

    async def keep_repeatedly() -> None:
        for _ in range(10):
            await keeper.keep_pools()
            await asyncio.sleep(0)

    zero = api.put("/v1/templates/pooled", json={**POOLED, "warm_pool": 0}, headers=ADMIN)
    creates = [create(api, f"user{i}") for i in range(4)]
    results = await asyncio.gather(zero, keep_repeatedly(), *creates, keep_repeatedly())
    answers = [r for r in results if isinstance(r, httpx.Response)][1:]
    assert all(r.status_code == 202 for r in answers), [r.text for r in answers]
    warm = [r.json()["id"] for r in answers if r.json()["warm"]]
    await eventually(lambda: _none_left(db))
    for sid in warm:
        body = (await api.get(f"/v1/sessions/{sid}", headers=ADMIN)).json()
        assert body["phase"] == "Running", body
    ended_users = await db.fetchval(
        "SELECT count(*) FROM session_events e JOIN sessions s ON s.id = e.session_id "
        "WHERE NOT s.pool_member AND e.reason IN ('WarmPoolShrunk', 'WarmPoolMemberExpired')"
    )
    assert ended_users == 0


async def test_idle_templates_cost_the_pool_keeper_nothing(
    cluster_app: FastAPI, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 27.18: every pass re-read and re-validated every template, so thousands of
    templates with no pool and no pre-pull cost CPU at rest without bound."""
    import app.controllers.pools as pools_module
    import app.controllers.prepull as prepull_module

    idle = {"image": "registry.test/vdi/session:1"}
    for n in range(150):
        assert (await api.put(f"/v1/templates/idle-{n}", json=idle, headers=ADMIN)).is_success
    one = {**POOLED, "warm_pool": 1}
    assert (await api.put("/v1/templates/pooled", json=one, headers=ADMIN)).is_success
    prepulled = {**idle, "prepull": True}
    assert (await api.put("/v1/templates/pulled", json=prepulled, headers=ADMIN)).is_success
    validated: list[str] = []
    real = pools_module.template_spec

    def counted(template: Any) -> Any:
        validated.append(template.name)
        return real(template)

    monkeypatch.setattr(pools_module, "template_spec", counted)
    monkeypatch.setattr(prepull_module, "template_spec", counted)
    keeper = cluster_app.state.reconciler.prepulls
    # the running keeper's passes (every 0.2 s here), and a pre-pull pass of our own (the
    # running one skips it while nothing changed)
    await asyncio.sleep(1.0)
    await keeper.keep_prepulls()
    assert "pooled" in validated  # the keeper did look at its pools meanwhile
    assert sorted(set(validated)) == ["pooled", "pulled"]  # and at no idle template


async def test_the_template_list_is_paginated(api: httpx.AsyncClient) -> None:
    for n in range(5):
        body = {"image": "registry.test/vdi/session:1"}
        assert (await api.put(f"/v1/templates/t{n}", json=body, headers=ADMIN)).is_success
    names, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/templates", params=params, headers=ADMIN)).json()
        names += [t["name"] for t in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert (names, pages) == ([f"t{n}" for n in range(5)], 3)
    everything = (await api.get("/v1/templates", headers=ADMIN)).json()
    assert len(everything["items"]) == 5
    assert everything["next_cursor"] is None
    bad = await api.get("/v1/templates", params={"cursor": "not-ours!"}, headers=ADMIN)
    assert bad.status_code == 422
    assert "cursor" in bad.text
    too_many = await api.get("/v1/templates", params={"limit": 501}, headers=ADMIN)
    assert too_many.status_code == 422
