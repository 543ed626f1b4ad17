"""PUT/GET/DELETE /v1/templates."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN

PROBLEM = "application/problem+json"


async def test_put_creates_then_replaces(client: httpx.AsyncClient) -> None:
    created = await client.put(
        "/v1/templates/gpu-desktop", json={"image": "reg/session:1"}, headers=ADMIN
    )
    assert created.status_code == 201
    body = created.json()
    assert body["name"] == "gpu-desktop"
    # DESIGN.md defaults
    assert (
        body["gpu"],
        body["shm_size"],
        body["bitrate_kbps"],
        body["framerate"],
        body["gop_size"],
    ) == (
        1,
        "2Gi",
        8000,
        60,
        30,
    )
    assert body["encoder_fallback"] is True

    replaced = await client.put(
        "/v1/templates/gpu-desktop",
        json={
            "image": "reg/session:2",
            "gpu": 2,
            "node_selector": {"nvidia.com/gpu.product": "L4"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
        headers=ADMIN,
    )
    assert replaced.status_code == 200
    assert replaced.json()["created_at"] == body["created_at"]
    assert replaced.json()["updated_at"] > body["updated_at"]
    fetched = (await client.get("/v1/templates/gpu-desktop", headers=ADMIN)).json()
    assert fetched["image"] == "reg/session:2"
    assert fetched["gpu"] == 2
    assert fetched["tolerations"][0]["operator"] == "Exists"
    listing = (await client.get("/v1/templates", headers=ADMIN)).json()
    assert [t["name"] for t in listing["items"]] == ["gpu-desktop"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "image"),
        ({"image": "i", "gpu": -1}, "gpu"),
        ({"image": "i", "gpu": "one"}, "gpu"),
        ({"image": "i", "memory": "16 gigs"}, "memory"),
        ({"image": "i", "shm_size": "-2Gi"}, "shm_size"),
        ({"image": "i", "bitrate_kbps": 10}, "bitrate_kbps"),
        ({"image": "i", "tolerations": [{"effect": "Sometimes"}]}, "tolerations.0.effect"),
        ({"image": "i", "node_selector": {"bad key!": "x"}}, "node_selector.bad key!.[key]"),
        ({"image": "i", "imagePullPolicy": "Always"}, "imagePullPolicy"),
        ({"image": "i", "idle_timeout_s": 7200, "max_lifetime_s": 3600}, "body"),
    ],
)
async def test_bad_template_is_422_naming_the_field_and_stores_nothing(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.put("/v1/templates/t", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert field in [e["field"] for e in response.json()["errors"]]
    assert (await client.get("/v1/templates/t", headers=ADMIN)).status_code == 404


async def test_bad_template_name_in_the_path(client: httpx.AsyncClient) -> None:
    response = await client.put("/v1/templates/Bad_Name", json={"image": "i"}, headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["errors"][0]["location"] == "path"
    assert "DNS label" in response.json()["errors"][0]["message"]


async def test_a_failed_replace_keeps_the_stored_template(
    client: httpx.AsyncClient, make_template: Callable[..., Awaitable[dict[str, Any]]]
) -> None:
    await make_template("keep", gpu=2)
    bad = await client.put("/v1/templates/keep", json={"image": "i", "gpu": 99}, headers=ADMIN)
    assert bad.status_code == 422
    assert (await client.get("/v1/templates/keep", headers=ADMIN)).json()["gpu"] == 2


async def test_delete_is_refused_while_a_live_session_uses_it(
    client: httpx.AsyncClient,
    make_session: Callable[..., Awaitable[dict[str, Any]]],
    set_phase: Callable[..., Awaitable[None]],
) -> None:
    session = await make_session("alice", "busy")
    refused = await client.delete("/v1/templates/busy", headers=ADMIN)
    assert refused.status_code == 409
    assert refused.json()["title"] == "Template in use"
    assert refused.json()["live_sessions"] == 1
    assert "GET /v1/sessions?template=busy" in refused.json()["detail"]

    await client.delete(f"/v1/sessions/{session['id']}", headers=ADMIN)
    assert (
        await client.delete("/v1/templates/busy", headers=ADMIN)
    ).status_code == 409  # Terminating
    await set_phase(session["id"], "Terminated")
    assert (await client.delete("/v1/templates/busy", headers=ADMIN)).status_code == 204
    missing = await client.delete("/v1/templates/busy", headers=ADMIN)
    assert missing.status_code == 404
    assert "PUT /v1/templates/busy" in missing.json()["detail"]
    # the ended session keeps its record (audit), template name included
    kept = await client.get(f"/v1/sessions/{session['id']}", headers=ADMIN)
    assert kept.json()["template"] == "busy"


async def test_streamer_and_transport_default_and_websockets_needs_selkies_2(
    client: httpx.AsyncClient,
) -> None:
    made = await client.put("/v1/templates/t", json={"image": "i"}, headers=ADMIN)
    assert (made.json()["streamer"], made.json()["transport"]) == ("auto", "webrtc")
    refused = await client.put(
        "/v1/templates/t",
        json={"image": "i", "transport": "websockets", "streamer": "auto"},
        headers=ADMIN,
    )
    assert refused.status_code == 422
    assert "needs streamer 'selkies'" in refused.text
    taken = await client.put(
        "/v1/templates/t",
        json={"image": "i", "transport": "websockets", "streamer": "selkies"},
        headers=ADMIN,
    )
    assert taken.status_code == 200, taken.text
    assert (taken.json()["streamer"], taken.json()["transport"]) == ("selkies", "websockets")


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"node_selector": {"gpu": "a b"}}, "node_selector.gpu"),
        ({"node_selector": {"-gpu": "a100"}}, "node_selector"),
        ({"tolerations": [{"operator": "Exists", "value": "x"}]}, "value must be empty"),
        ({"tolerations": [{"operator": "Equal", "value": "x"}]}, "operator must be Exists"),
        ({"tolerations": [{"key": "k", "toleration_seconds": 30}]}, "NoExecute"),
        ({"tolerations": [{"key": "k", "value": "-x-"}]}, "tolerations.0.value"),
        ({"home_size": "0"}, "home_size must be greater than zero"),
        ({"shm_size": "0Gi"}, "shm_size must be greater than zero"),
        ({"memory": "0"}, "memory must be greater than zero"),
    ],
)
async def test_fields_kubernetes_would_refuse_are_422_at_put(
    client: httpx.AsyncClient, fields: dict[str, Any], said: str
) -> None:
    response = await client.put(
        "/v1/templates/bad", json={"image": "registry.test/vdi:1", **fields}, headers=ADMIN
    )
    assert response.status_code == 422, response.text
    assert said in response.text
    assert (await client.get("/v1/templates/bad", headers=ADMIN)).status_code == 404


async def test_the_desktop_policy_defaults_and_shows_in_the_session(
    client: httpx.AsyncClient,
) -> None:
    made = await client.put("/v1/templates/t", json={"image": "i"}, headers=ADMIN)
    defaults = {
        "clipboard": "both",
        "file_transfer": "both",
        "file_transfer_limit_mbps": 0.0,
        "audio": True,
        "microphone": False,
        "printing": True,
        "gamepads": True,
        "sharing": "off",
    }
    assert {name: made.json()[name] for name in defaults} == defaults
    locked_down = {"clipboard": "in", "file_transfer": "off", "printing": False}
    replaced = await client.put(
        "/v1/templates/t", json={"image": "i", **locked_down}, headers=ADMIN
    )
    assert replaced.status_code == 200, replaced.text

    created = await client.post(
        "/v1/sessions", json={"user": "alice", "template": "t"}, headers=ADMIN
    )
    assert created.status_code == 202, created.text
    session = created.json()
    assert session["policy"] == {**defaults, **locked_down}
    fetched = await client.get(f"/v1/sessions/{session['id']}", headers=ADMIN)
    assert fetched.json()["policy"] == session["policy"]
    listed = await client.get("/v1/sessions?template=t", headers=ADMIN)
    assert listed.json()["items"][0]["policy"] == session["policy"]
    # a session keeps the policy it was created with, which is what its pod enforces
    await client.put("/v1/templates/t", json={"image": "i", "clipboard": "off"}, headers=ADMIN)
    fetched = await client.get(f"/v1/sessions/{session['id']}", headers=ADMIN)
    assert fetched.json()["policy"] == session["policy"]


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"clipboard": "sometimes"}, "'both', 'in', 'out' or 'off'"),
        ({"file_transfer": "sideways"}, "'both', 'upload', 'download' or 'off'"),
        ({"file_transfer_limit_mbps": -1}, "greater than or equal to 0"),
        ({"audio": "loud"}, "valid boolean"),
    ],
)
async def test_a_bad_policy_is_422_naming_the_allowed_values(
    client: httpx.AsyncClient, fields: dict[str, Any], said: str
) -> None:
    response = await client.put("/v1/templates/bad", json={"image": "i", **fields}, headers=ADMIN)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["field"] == next(iter(fields))
    assert said in error["message"]
    assert (await client.get("/v1/templates/bad", headers=ADMIN)).status_code == 404


@pytest.mark.parametrize(
    "fields", [{"audio": False}, {"gamepads": False}, {"microphone": True}], ids=str
)
async def test_a_policy_selkies_gstreamer_cannot_enforce_is_refused(
    client: httpx.AsyncClient, fields: dict[str, Any]
) -> None:
    body = {"image": "i", "streamer": "selkies-gstreamer", **fields}
    response = await client.put("/v1/templates/one", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert next(iter(fields)) in response.text
    assert "streamer 'selkies'" in response.text
    # what 1.x can hold to is taken; the same policy on 2.x or auto is taken
    clipboard = {"image": "i", "streamer": "selkies-gstreamer", "clipboard": "off"}
    assert (await client.put("/v1/templates/one", json=clipboard, headers=ADMIN)).is_success
    for streamer in ("selkies", "auto"):
        body = {"image": "i", "streamer": streamer, **fields}
        assert (await client.put("/v1/templates/two", json=body, headers=ADMIN)).is_success
