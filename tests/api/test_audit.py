"""The audit trail through the API: the control plane's actions recorded with the API token's
name, the desktop's events from Selkies' webhook (its own token; metadata only), GET /v1/audit
with its filters and pages (admin only), and the webhook's signature."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from app.security import agent_token, desktop_audit_token, sign_delivery, verify_delivery
from tests.conftest import ADMIN, TEST_SECRET_KEY, bearer

MakeSession = Callable[..., Awaitable[dict[str, Any]]]
MakeToken = Callable[..., Awaitable[dict[str, str]]]
SetPhase = Callable[..., Awaitable[None]]


def desktop(session_id: str) -> dict[str, str]:
    return bearer(desktop_audit_token(agent_token(TEST_SECRET_KEY, uuid.UUID(session_id))))


async def audit(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/audit", params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def test_the_control_planes_actions_are_recorded_with_the_tokens_name(
    client: httpx.AsyncClient, make_token: MakeToken, set_phase: SetPhase
) -> None:
    admin = await make_token("admin", name="ops-team")
    portal = await make_token("sessions:write", "sessions:connect", name="portal")
    body = {"image": "i", "streamer": "selkies", "sharing": "view"}
    assert (await client.put("/v1/templates/t", json=body, headers=admin)).status_code == 201
    created = await client.post(
        "/v1/sessions", json={"user": "ann", "template": "t"}, headers=portal
    )
    session = created.json()
    await set_phase(session["id"], "Provisioning", "Starting", "Running")
    share = (
        await client.post(
            f"/v1/sessions/{session['id']}/shares", json={"role": "viewer"}, headers=portal
        )
    ).json()
    await client.delete(f"/v1/sessions/{session['id']}/shares/{share['id']}", headers=portal)
    await client.delete(f"/v1/sessions/{session['id']}", headers=portal)
    await client.delete("/v1/templates/t", headers=admin)  # 409: a session still uses it

    records = await audit(client)
    assert [(r["type"], r["actor"]) for r in records] == [
        ("token.create", "bootstrap"),
        ("token.create", "bootstrap"),
        ("template.put", "ops-team"),
        ("session.create", "portal"),
        ("share.create", "portal"),
        ("share.revoke", "portal"),
        ("session.delete", "portal"),
    ]  # a refused action is no record
    by_type = {r["type"]: r for r in records}
    assert by_type["template.put"]["data"]["spec"]["sharing"] == "view"
    assert by_type["session.create"]["user"] == "ann"
    assert by_type["session.create"]["session_id"] == session["id"]
    assert by_type["share.create"]["data"]["share"] == share["id"]
    assert share["token"] not in str(records)
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    made = records[1]["data"]
    assert made["name"] == "portal"
    assert made["scopes"] == ["sessions:connect", "sessions:write"]
    assert portal["Authorization"].split()[1] not in str(records)  # never the token itself
    revoked = await client.delete(f"/v1/tokens/{made['token_id']}", headers=admin)
    assert revoked.status_code == 204
    [revocation] = await audit(client, type="token.revoke")
    assert revocation["actor"] == "ops-team"
    assert revocation["data"] == {"token_id": made["token_id"]}


async def test_the_desktops_events_come_with_its_own_token_and_keep_only_metadata(
    client: httpx.AsyncClient, make_session: MakeSession
) -> None:
    session = await make_session("bob")
    other = await make_session("cat", "t2")
    url = f"/v1/sessions/{session['id']}/desktop-audit"
    event = {
        "event": "clipboard.receive",
        "ts": "2026-12-07T12:00:00.000Z",
        "mime_type": "text/plain",
        "size_bytes": 23,
        "multipart": False,
        "text": "the clipboard's content",  # never kept, whatever a sender adds
    }
    assert (await client.post(url, json=event, headers=desktop(session["id"]))).status_code == 204
    for headers in (desktop(other["id"]), ADMIN):
        assert (await client.post(url, json=event, headers=headers)).status_code == 403
    assert (await client.post(url, json=event)).status_code == 401
    agent = bearer(agent_token(TEST_SECRET_KEY, uuid.UUID(session["id"])))
    assert (await client.post(url, json=event, headers=agent)).status_code == 403
    bad = await client.post(url, json={"event": "Drop Table"}, headers=desktop(session["id"]))
    assert bad.status_code == 422

    [record] = await audit(client, type="desktop.*")
    assert record["type"] == "desktop.clipboard.receive"
    assert record["actor"] == "desktop"
    assert record["user"] == "bob"
    assert record["data"] == {
        "mime_type": "text/plain",
        "size_bytes": 23,
        "multipart": False,
        "reported_at": "2026-12-07T12:00:00.000Z",
    }
    assert "content" not in str(record)


async def test_the_trail_is_filtered_and_paged_and_for_admins_only(
    client: httpx.AsyncClient, make_session: MakeSession, make_token: MakeToken
) -> None:
    first = await make_session("dan")
    second = await make_session("eve", "t2")
    for session in (first, second):
        for name in ("file.upload.end", "file.download"):
            await client.post(
                f"/v1/sessions/{session['id']}/desktop-audit",
                json={"event": name, "filename": "report.pdf", "size_bytes": 10},
                headers=desktop(session["id"]),
            )
    everything = await audit(client)
    assert len(everything) == 2 + 2 + 4  # two template puts, two creates, four desktop events
    assert {r["user"] for r in await audit(client, user="eve")} == {"eve"}
    assert {r["session_id"] for r in await audit(client, session=first["id"])} == {first["id"]}
    assert len(await audit(client, type="desktop.file.download")) == 2
    assert len(await audit(client, type="desktop.file.*")) == 4
    since = everything[3]["at"]
    assert [r["id"] for r in await audit(client, since=since)] == [
        r["id"] for r in everything if r["at"] >= since
    ]
    assert await audit(client, until=everything[0]["at"]) == []

    page = (await client.get("/v1/audit", params={"limit": 3}, headers=ADMIN)).json()
    assert [r["id"] for r in page["items"]] == [r["id"] for r in everything[:3]]
    rest = (
        await client.get(
            "/v1/audit", params={"limit": 100, "after": page["next_cursor"]}, headers=ADMIN
        )
    ).json()
    assert [r["id"] for r in rest["items"]] == [r["id"] for r in everything[3:]]
    assert rest["next_cursor"] is None

    reader = await make_token("sessions:read", "sessions:write", "sessions:connect")
    assert (await client.get("/v1/audit", headers=reader)).status_code == 403
    assert (await client.get("/v1/audit", params={"type": "a b"}, headers=ADMIN)).status_code == 422


def test_a_delivery_signature_is_checked_and_a_forgery_caught() -> None:
    body = b'{"id":1,"type":"session.create"}'
    now = int(time.time())
    header = sign_delivery("the-webhook-secret-" + "s" * 20, now, body)
    assert header.startswith(f"t={now},v1=")
    secret = "the-webhook-secret-" + "s" * 20
    assert verify_delivery(secret, header, body, now=now)
    assert not verify_delivery(secret, header, body + b" ", now=now)  # another body
    assert not verify_delivery("another-secret-" + "x" * 24, header, body, now=now)
    forged = header.replace(f"t={now}", f"t={now + 1}")  # the time is signed too
    assert not verify_delivery(secret, forged, body, now=now)
    assert not verify_delivery(secret, header, body, now=now + 3600)  # an old one replayed
    assert not verify_delivery(secret, "v1=abc", body, now=now)
