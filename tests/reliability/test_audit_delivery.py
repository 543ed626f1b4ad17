"""The outgoing audit webhook across a crash: `vdi-control serve` (a process) delivers its
records to a receiver here; the receiver holds one delivery open, the control plane is killed
(SIGKILL) in the middle of it and started again, and the receiver ends with every record
exactly once after deduplication by id, in order, each signature valid. A forged delivery is
caught by the check a receiver makes (app.security.verify_delivery)."""

from __future__ import annotations

import contextlib
import http.server
import json
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.security import SIGNATURE_HEADER, sign_delivery, verify_delivery
from tests.e2e.test_local_desktops import ADMIN, HEADERS, _environment, _serving
from tests.test_cli import free_port

SECRET = "the-receivers-webhook-secret-" + "w" * 16


class Receiver(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        self.deliveries: list[dict[str, Any]] = []  # in arrival order, duplicates included
        self.forged = 0
        self.hold_at = 5  # the delivery (by arrival) that is held open
        self.holding = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", free_port()), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/audit"

    def ids(self) -> list[int]:
        with self.lock:
            return [d["id"] for d in self.deliveries]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        signature = self.headers.get(SIGNATURE_HEADER, "")
        if not verify_delivery(SECRET, signature, body, now=time.time()):
            self.server.forged += 1
            self._answer(401)
            return
        record = json.loads(body)
        assert self.headers.get("VDI-Audit-Id") == str(record["id"])
        with self.server.lock:
            self.server.deliveries.append(record)
            arrived = len(self.server.deliveries)
        if arrived == self.server.hold_at:
            self.server.holding.set()
            self.server.release.wait(60)  # the control plane dies while this is open
        self._answer(200)

    def _answer(self, status: int) -> None:
        with contextlib.suppress(OSError):
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        receiver.shutdown()
        receiver.server_close()
        thread.join(timeout=10)


@pytest.fixture
async def delivery_database(make_database: Callable[[str], Awaitable[str]]) -> str:
    return await make_database("vdi_audit_delivery")


def _until(check: Callable[[], Any], what: str, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(0.1)
    return found


def _put_templates(base: str, names: list[str]) -> None:
    for name in names:
        response = httpx.put(
            f"{base}/v1/templates/{name}", json={"image": "i"}, headers=HEADERS, timeout=10
        )
        assert response.status_code == 201, response.text


def test_every_record_arrives_once_deduplicated_in_order_across_a_kill(
    delivery_database: str, tmp_path: Path
) -> None:
    with receiving() as receiver:
        env = {
            **_environment(tmp_path / "data", delivery_database),
            "VDI_RECONCILER": "false",
            "VDI_AUDIT_WEBHOOK_URL": receiver.url,
            "VDI_AUDIT_WEBHOOK_SECRET": SECRET,
        }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = tmp_path / "serve.log"
        with _serving(env, port, log) as first:
            _put_templates(base, [f"before-{i}" for i in range(8)])
            assert receiver.holding.wait(30), log.read_text()[-3000:]
            first.send_signal(signal.SIGKILL)  # mid-delivery: the held one is not answered
            first.wait(timeout=30)
        receiver.release.set()
        with _serving(env, port, log):
            _put_templates(base, [f"after-{i}" for i in range(4)])
            stored = httpx.get(f"{base}/v1/audit", params={"limit": 1000}, headers=HEADERS)
            expected = [record["id"] for record in stored.json()["items"]]
            assert len(expected) == 12
            _until(lambda: set(receiver.ids()) >= set(expected), "every record delivered")
            time.sleep(1.5)  # and nothing more comes
        # a forged delivery (signed with another key), as an attacker would send it
        body = json.dumps({"id": 999, "type": "session.delete"}).encode()
        forged = httpx.post(
            receiver.url,
            content=body,
            headers={
                SIGNATURE_HEADER: sign_delivery(
                    "not-the-secret-" + "x" * 20, int(time.time()), body
                )
            },
        )
        assert forged.status_code == 401
        assert receiver.forged == 1

    arrived = receiver.ids()
    first_seen = list(dict.fromkeys(arrived))
    assert first_seen == expected  # each once after dedupe, in order
    duplicated = {i for i in arrived if arrived.count(i) > 1}
    assert duplicated == {arrived[receiver.hold_at - 1]}  # only the one in flight at the kill
    by_id: dict[int, dict[str, Any]] = {}
    for delivery in receiver.deliveries:
        assert by_id.setdefault(delivery["id"], delivery) == delivery  # the same each time
    assert [by_id[i]["data"]["template"] for i in expected] == [
        *(f"before-{i}" for i in range(8)),
        *(f"after-{i}" for i in range(4)),
    ]
    assert all(by_id[i]["actor"] == "bootstrap" for i in expected)
    assert ADMIN not in json.dumps(receiver.deliveries)
