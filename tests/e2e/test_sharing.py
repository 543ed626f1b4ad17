"""Sharing a local desktop, in Chromium: the user and a view-only viewer both decode it, the
viewer's typing does not reach it and a collaborator's does, a revoked or expired share is
disconnected within seconds and opens nothing more, and one session's share opens no other.
Each page is a real headless Chromium on Selkies 2.x's own page, opened as a portal would open
it: the connection's `launch_url` for the user, the share's `link` for the others (no Basic
auth: a template that shares runs Selkies' secure mode). What reached the desktop is read in
the user's home; who is watching in the session's `viewers`, as its agent reports them.

The figures of revocation, expiry and disconnection are printed (`-s` shows them)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.db import asyncpg_dsn
from harness.browser_viewer import chromium, frames_decoded, video_stopped_after
from harness.desktop_use import arrives, click, type_keys
from tests.e2e.test_local_desktops import HEADERS, Server, _server
from tests.tools import tool

pytestmark = pytest.mark.e2e

TEMPLATE = {"image": "local", "gpu": 0, "idle_timeout_s": 600, "audio": False}
IN_THE_TERMINAL = (300, 200)  # inside the xterm the local desktop opens (100x32+60+60)
QUIET_S = 6  # how long a page that must not type is watched
GONE_WITHIN_S = 10  # "within a few seconds"


@pytest.fixture(scope="module")
async def sharing_database(make_database: Callable[[str], Awaitable[str]]) -> str:
    return await make_database("vdi_sharing")


@pytest.fixture(scope="module")
def server(sharing_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with _server(sharing_database, tmp_path_factory.mktemp("sharing")) as served:
        for name, fields in (
            ("collab", {"sharing": "collab"}),
            ("view", {"sharing": "view"}),
            ("recorder", {"recording": True}),
        ):
            put = httpx.put(
                f"{served.base}/v1/templates/{name}",
                json={**TEMPLATE, **fields},
                headers=HEADERS,
                timeout=10,
            )
            assert put.status_code in (200, 201), put.text
        yield served


@contextmanager
def shared_desktop(server: Server, user: str, template: str = "collab") -> Iterator[dict[str, Any]]:
    """A Running desktop that shares, with its connection; ended afterwards."""
    session = server.create(user, template)
    try:
        running = server.wait(session["id"], {"Running", "Failed"})
        assert running["phase"] == "Running", running
        connection = server.get(f"/v1/sessions/{session['id']}/connection")
        yield {**running, "connection": connection}
    finally:
        httpx.delete(f"{server.base}/v1/sessions/{session['id']}", headers=HEADERS, timeout=10)
        server.wait(session["id"], {"Terminated"}, timeout_s=60)


def make_share(server: Server, session_id: str, role: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{server.base}/v1/sessions/{session_id}/shares",
        json={"role": role, **body},
        headers=HEADERS,
        timeout=10,
    )
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    return made


ALERTS: dict[int, list[str]] = {}  # what each page said in an alert (Selkies' page on a refusal)


def frames(driver: Any) -> int:
    return frames_decoded(driver, ALERTS.setdefault(id(driver), []))


def alerts(driver: Any) -> list[str]:
    frames(driver)  # one open now is taken too
    return ALERTS.get(id(driver), [])


def decodes(driver: Any, at_least: int = 30, within_s: float = 60) -> int:
    deadline = time.monotonic() + within_s
    while (count := frames(driver)) < at_least:
        assert time.monotonic() < deadline, f"decoded {count} frames in {within_s:.0f} s"
        time.sleep(0.5)
    return count


def stopped_after(driver: Any, within_s: float) -> float | None:
    return video_stopped_after(driver, within_s, ALERTS.setdefault(id(driver), []))


def opened(driver: Any, url: str) -> Any:
    driver.get(url)
    return driver


def viewers(server: Server, session_id: str) -> list[dict[str, Any]]:
    return list(server.get(f"/v1/sessions/{session_id}")["viewers"] or [])


def watched_by(server: Server, session_id: str, roles: list[str], within_s: float = 20) -> bool:
    def now() -> list[str]:
        return sorted(v["role"] for v in viewers(server, session_id))

    return arrives(now, sorted(roles), within_s)


def home(server: Server, user: str) -> Path:
    return server.data_dir / "desktops" / "homes" / user


def typed(server: Server, user: str, name: str) -> str:
    path = home(server, user) / name
    return path.read_text() if path.exists() else ""


def test_the_user_and_a_viewer_both_decode_and_only_the_users_typing_lands(
    server: Server,
) -> None:
    with shared_desktop(server, "ann") as session:
        link = make_share(server, session["id"], "viewer")["link"]
        with chromium(relay_only=False) as owner, chromium(relay_only=False) as viewer:
            decodes(opened(owner, session["connection"]["launch_url"]))
            decodes(opened(viewer, link))
            assert watched_by(server, session["id"], ["owner", "viewer"])
            [shown] = [v for v in viewers(server, session["id"]) if v["role"] == "viewer"]
            assert shown["share"] is not None
            assert shown["since"] is not None
            assert shown["address"] == "127.0.0.1"

            click(owner, *IN_THE_TERMINAL)  # the terminal has the focus: a key would land
            marker = uuid.uuid4().hex
            click(viewer, *IN_THE_TERMINAL)
            type_keys(viewer, f"echo viewer {marker} > ~/viewer.txt\n")
            assert not arrives(
                lambda: typed(server, "ann", "viewer.txt"), f"viewer {marker}\n", QUIET_S
            )
            type_keys(owner, f"echo owner {marker} > ~/owner.txt\n")
            assert arrives(lambda: typed(server, "ann", "owner.txt"), f"owner {marker}\n", 15)
            assert typed(server, "ann", "viewer.txt") == ""
            # the viewer still watches: its refusal was of input, not of the stream
            before = frames(viewer)
            assert arrives(lambda: frames(viewer) > before, True, 10)


def test_a_collaborators_typing_reaches_the_desktop(server: Server) -> None:
    with shared_desktop(server, "bea") as session:
        made = make_share(server, session["id"], "collaborator")
        link = made["link"]
        # files: Selkies refuses a viewer's token the upload it takes from a collaborator's
        viewer_token = make_share(server, session["id"], "viewer")["token"]
        selkies = session["connection"]["url"].rstrip("/")
        for token, status, name in ((viewer_token, 403, "v.txt"), (made["token"], 200, "c.txt")):
            upload = httpx.post(
                f"{selkies}/api/upload",
                params={"token": token},
                headers={"X-Upload-Path": name},
                content=b"from a share",
                timeout=10,
            )
            assert upload.status_code == status, (name, upload.status_code, upload.text)
        assert (home(server, "bea") / "Desktop" / "c.txt").read_text() == "from a share"
        assert not (home(server, "bea") / "Desktop" / "v.txt").exists()
        with chromium(relay_only=False) as collaborator:
            decodes(opened(collaborator, link))
            assert watched_by(server, session["id"], ["collaborator"])
            click(collaborator, *IN_THE_TERMINAL)
            marker = uuid.uuid4().hex
            type_keys(collaborator, f"echo together {marker} > ~/together.txt\n")
            assert arrives(lambda: typed(server, "bea", "together.txt"), f"together {marker}\n", 15)


def test_a_revoked_share_is_disconnected_within_seconds_and_opens_nothing_more(
    server: Server,
) -> None:
    with shared_desktop(server, "cat") as session:
        made = make_share(server, session["id"], "viewer")
        with chromium(relay_only=False) as owner, chromium(relay_only=False) as viewer:
            decodes(opened(owner, session["connection"]["launch_url"]))
            decodes(opened(viewer, made["link"]))
            assert watched_by(server, session["id"], ["owner", "viewer"])
            asked = time.monotonic()
            revoked = httpx.delete(
                f"{server.base}/v1/sessions/{session['id']}/shares/{made['id']}",
                headers=HEADERS,
                timeout=10,
            )
            assert revoked.status_code == 200
            stopped = stopped_after(viewer, GONE_WITHIN_S)
            assert stopped is not None, "the revoked share's page kept its video"
            assert watched_by(server, session["id"], ["owner"], within_s=GONE_WITHIN_S)
            reported = time.monotonic() - asked
            print(f"revocation: video stopped {stopped:.2f} s, gone from viewers {reported:.2f} s")
            # the user's page stays
            before = frames(owner)
            assert arrives(lambda: frames(owner) > before, True, 10)
            # and the link opens nothing now, in a fresh page
            opened(viewer, "about:blank")
            opened(viewer, made["link"])
            time.sleep(QUIET_S)
            assert frames(viewer) == 0
            assert any("Invalid authentication token" in said for said in alerts(viewer))


async def _expire(database_url: str, session_id: str, share_id: str) -> None:
    """The share's end brought forward to now, and the session's listeners told (as a
    commit of its events tells them): its expiry without waiting the shortest lifetime."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute(
            "UPDATE session_shares SET expires_at = now() WHERE id = $1", uuid.UUID(share_id)
        )
        await connection.execute(
            "SELECT pg_notify('vdi_session_events', $1)", f"{session_id} Running"
        )
    finally:
        await connection.close()


def test_an_expired_share_is_disconnected(server: Server) -> None:
    with shared_desktop(server, "dan", "view") as session:
        made = make_share(server, session["id"], "viewer", expires_in_s=3600)
        with chromium(relay_only=False) as viewer:
            decodes(opened(viewer, made["link"]))
            asyncio.run(_expire(server.database_url, session["id"], made["id"]))
            stopped = stopped_after(viewer, GONE_WITHIN_S)
            assert stopped is not None, "the expired share's page kept its video"
            print(f"expiry: video stopped {stopped:.2f} s after the share's end")
        shares = server.get(f"/v1/sessions/{session['id']}/shares")["items"]
        assert shares[0]["state"] == "expired"


def test_a_kicked_page_is_disconnected(server: Server) -> None:
    with shared_desktop(server, "eve") as session:
        made = make_share(server, session["id"], "viewer")
        with chromium(relay_only=False) as viewer:
            decodes(opened(viewer, made["link"]))
            assert watched_by(server, session["id"], ["viewer"])
            [page] = viewers(server, session["id"])
            asked = time.monotonic()
            kicked = httpx.delete(
                f"{server.base}/v1/sessions/{session['id']}/viewers/{page['id']}",
                headers=HEADERS,
                timeout=10,
            )
            assert kicked.status_code == 202, kicked.text

            def gone() -> bool:
                return page["id"] not in [v["id"] for v in viewers(server, session["id"])]

            assert arrives(gone, True, GONE_WITHIN_S)
            print(f"kick: gone from viewers {time.monotonic() - asked:.2f} s after the request")
        events = server.events(session["id"])
        disconnected = [e for e in events if e["type"] == "ViewerDisconnected"]
        assert page["id"] in [e["data"]["viewer"] for e in disconnected]


def test_a_share_of_one_session_opens_no_other(server: Server) -> None:
    with shared_desktop(server, "fay") as mine, shared_desktop(server, "gus") as other:
        made = make_share(server, mine["id"], "collaborator")
        token = made["token"]
        # Selkies of the other session knows no such token: its API refuses it
        other_url = other["connection"]["url"].rstrip("/")
        refused = httpx.get(f"{other_url}/api/turn", params={"token": token}, timeout=10)
        assert refused.status_code == 401
        assert (
            httpx.get(
                f"{mine['connection']['url'].rstrip('/')}/api/turn",
                params={"token": token},
                timeout=10,
            ).status_code
            == 200
        )
        with chromium(relay_only=False) as intruder:
            opened(intruder, f"{other_url}/#token={token}")
            time.sleep(QUIET_S)
            assert frames(intruder) == 0
            assert any("Invalid authentication token" in said for said in alerts(intruder))
        assert viewers(server, other["id"]) == []


def audit_of(server: Server, session_id: str, kind: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{server.base}/v1/audit",
        params={"session": session_id, "type": kind},
        headers=HEADERS,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def test_a_clipboard_transfer_and_an_upload_in_chromium_are_audit_records(
    server: Server,
) -> None:
    """Selkies' own audit webhook, pointed at the control plane by the agent: what the person
    did in the browser is in the trail, with sizes and names and never the contents."""
    from tests.e2e.test_desktop_use import UPLOAD, paste

    session = server.create("hil")  # the default template: clipboard and files both ways
    try:
        running = server.wait(session["id"], {"Running", "Failed"})
        assert running["phase"] == "Running", running
        connection = server.get(f"/v1/sessions/{session['id']}/connection")
        with chromium(connection["username"], connection["password"], relay_only=False) as page:
            page.execute_cdp_cmd(
                "Browser.grantPermissions",
                {
                    "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"],
                    "origin": connection["url"].rstrip("/"),
                },
            )
            decodes(opened(page, connection["url"]))
            click(page, *IN_THE_TERMINAL)
            secret_text = f"pasted {uuid.uuid4().hex}"
            paste(page, secret_text)
            uploaded = page.execute_async_script(UPLOAD, "audited.txt", "twelve bytes")
            assert uploaded["status"] == 200, uploaded

            def recorded() -> bool:
                return bool(
                    audit_of(server, session["id"], "desktop.clipboard.*")
                    and audit_of(server, session["id"], "desktop.file.upload.end")
                )

            assert arrives(recorded, True, 20)
        [upload] = audit_of(server, session["id"], "desktop.file.upload.end")
        assert upload["data"]["filename"].endswith("audited.txt")
        assert upload["data"]["size_bytes"] == len("twelve bytes")
        assert upload["actor"] == "desktop"
        assert upload["user"] == "hil"
        clipboard = audit_of(server, session["id"], "desktop.clipboard.*")
        assert any(r["data"].get("size_bytes") == len(secret_text) for r in clipboard), clipboard
        connects = audit_of(server, session["id"], "desktop.session.connect")
        assert connects, "the page's connection is in the trail"
        everything = audit_of(server, session["id"], "desktop.*")
        assert secret_text not in json.dumps(everything)
        assert "twelve bytes" not in json.dumps(everything)
    finally:
        httpx.delete(f"{server.base}/v1/sessions/{session['id']}", headers=HEADERS, timeout=10)
        server.wait(session["id"], {"Terminated"}, timeout_s=60)


def test_a_recording_started_and_stopped_through_the_api_is_an_mp4_that_decodes(
    server: Server,
) -> None:
    session = server.create("ivy", "recorder")
    try:
        running = server.wait(session["id"], {"Running", "Failed"})
        assert running["phase"] == "Running", running
        connection = server.get(f"/v1/sessions/{session['id']}/connection")
        url = f"{server.base}/v1/sessions/{session['id']}/recording"
        with chromium(connection["username"], connection["password"], relay_only=False) as page:
            decodes(opened(page, connection["url"]))
            asked = httpx.post(url, json={"name": "meeting.mp4"}, headers=HEADERS, timeout=10)
            assert asked.status_code == 202, asked.text

            def recording() -> dict[str, Any]:
                return dict(server.get(f"/v1/sessions/{session['id']}")["recording"] or {})

            assert arrives(lambda: recording().get("active"), True, 15), recording()
            again = httpx.post(url, json={}, headers=HEADERS, timeout=10)
            assert again.status_code == 409  # one at a time
            click(page, *IN_THE_TERMINAL)
            type_keys(page, "ls -la /; date\n")  # something moves on the desktop
            time.sleep(3)
            stopped = httpx.delete(url, headers=HEADERS, timeout=10)
            assert stopped.status_code == 202, stopped.text
            assert arrives(lambda: recording().get("active"), False, 15), recording()
        done = recording()
        assert done["path"].endswith("meeting.mp4")
        assert (done["size_bytes"] or 0) > 0
        assert (done["duration_s"] or 0) > 1
        landed = home(server, "ivy") / "Desktop" / "meeting.mp4"
        assert landed.stat().st_size == done["size_bytes"]
        discovered = subprocess.run(
            [tool("gst-discoverer-1.0"), str(landed)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert discovered.returncode == 0, discovered.stdout + discovered.stderr
        assert "H.264" in discovered.stdout, discovered.stdout
        duration = re.search(r"Duration: (\d+):(\d+):(\d+\.\d+)", discovered.stdout)
        assert duration is not None, discovered.stdout
        assert float(duration[3]) + 60 * int(duration[2]) > 1
        print(f"recording: {done['size_bytes']} bytes, {done['duration_s']:.1f} s")
        started = audit_of(server, session["id"], "desktop.recording.start")
        assert started[0]["data"]["filename"].endswith("meeting.mp4")
        ended = audit_of(server, session["id"], "desktop.recording.stop")
        assert ended[0]["data"]["size_bytes"] == done["size_bytes"]
        asked_by = audit_of(server, session["id"], "recording.*")
        assert [(r["type"], r["actor"]) for r in asked_by] == [
            ("recording.start", "bootstrap"),
            ("recording.stop", "bootstrap"),
        ]
    finally:
        httpx.delete(f"{server.base}/v1/sessions/{session['id']}", headers=HEADERS, timeout=10)
        server.wait(session["id"], {"Terminated"}, timeout_s=60)


def test_a_template_without_recording_refuses_it(server: Server) -> None:
    with shared_desktop(server, "jay", "view") as session:
        refused = httpx.post(
            f"{server.base}/v1/sessions/{session['id']}/recording", headers=HEADERS, timeout=10
        )
        assert refused.status_code == 403
        assert refused.json()["type"].endswith(":recording-not-allowed")
