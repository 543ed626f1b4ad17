"""The outgoing audit webhook (VDI_AUDIT_WEBHOOK_URL): every stored record POSTed at least once,
in id order (so in order per session), signed (`VDI-Signature`, app.security.sign_delivery).

Records are stored first, in the transaction of what they record; delivery reads them back, so
a restart, a crash or a receiver that is down loses nothing: what was not marked delivered is
sent again (the receiver dedupes by `id`, also in the `VDI-Audit-Id` header). One replica
delivers at a time, the holder of a Postgres advisory lock on its own connection: were two to
deliver at once, a later record could arrive before an earlier one. A failed delivery is
retried with backoff, and nothing after it goes before it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import asyncpg
import httpx
import structlog
from prometheus_client import Counter

from app.config import Settings
from app.db import asyncpg_dsn
from app.security import SIGNATURE_HEADER, sign_delivery

log = structlog.get_logger("vdi.audit")

LOCK_KEY = 0x7664_6961_7564_6974  # "vdiaudit": the deliverer's advisory lock
BATCH = 100
IDLE_S = 1.0  # with nothing to deliver (or another replica delivering), look again after
BACKOFF_S = (0.5, 60.0)
ID_HEADER = "VDI-Audit-Id"


_SELECT = (
    'SELECT id, at, type, actor, "user", session_id, data FROM audit_records '
    "WHERE delivered_at IS NULL ORDER BY id LIMIT $1"
)


def document(row: asyncpg.Record) -> dict[str, Any]:
    data = row["data"]
    return {
        "id": row["id"],
        "at": row["at"].isoformat().replace("+00:00", "Z"),
        "type": row["type"],
        "actor": row["actor"],
        "user": row["user"],
        "session_id": str(row["session_id"]) if row["session_id"] else None,
        "data": json.loads(data) if isinstance(data, str) else data,
    }


class AuditDeliverer:
    def __init__(self, settings: Settings, database_url: str, deliveries: Counter) -> None:
        assert settings.audit_webhook_url
        assert settings.audit_webhook_secret
        self.url = settings.audit_webhook_url
        self._secret = settings.audit_webhook_secret.get_secret_value()
        self.timeout_s = settings.audit_webhook_timeout_s
        self._dsn = asyncpg_dsn(database_url)
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.deliveries = deliveries  # vdi_audit_deliveries_total, by outcome

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="vdi-audit-delivery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                connection = await asyncpg.connect(self._dsn)
                try:
                    while not await connection.fetchval(  # noqa: ASYNC110 (a database poll)
                        "SELECT pg_try_advisory_lock($1)", LOCK_KEY
                    ):
                        await asyncio.sleep(IDLE_S)  # another replica delivers
                    log.info("delivering audit records", url=self.url)
                    await self._deliver_all(connection)
                finally:
                    await connection.close()  # and the lock with it
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("audit delivery paused: database", error=type(error).__name__)
                await asyncio.sleep(IDLE_S)

    async def _deliver_all(self, connection: asyncpg.Connection) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s) as http:
            while True:
                rows = await connection.fetch(_SELECT, BATCH)
                if not rows:
                    await asyncio.sleep(IDLE_S)
                    continue
                for row in rows:
                    await self._deliver(http, connection, row)

    async def _deliver(
        self, http: httpx.AsyncClient, connection: asyncpg.Connection, row: asyncpg.Record
    ) -> None:
        """This record, until the receiver takes it (2xx); nothing later goes first."""
        body = json.dumps(document(row), separators=(",", ":")).encode()
        delay = BACKOFF_S[0]
        while True:
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign_delivery(self._secret, int(time.time()), body),
                ID_HEADER: str(row["id"]),
            }
            try:
                response = await http.post(self.url, content=body, headers=headers)
                failure = "" if response.is_success else f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                failure = type(error).__name__
            if not failure:
                await connection.execute(
                    "UPDATE audit_records SET delivered_at = now(), attempts = attempts + 1 "
                    "WHERE id = $1",
                    row["id"],
                )
                self.deliveries.labels("delivered").inc()
                self.delivered += 1
                return
            self.deliveries.labels("failed").inc()
            await connection.execute(
                "UPDATE audit_records SET attempts = attempts + 1 WHERE id = $1", row["id"]
            )
            log.warning("audit delivery failed; retrying", record=row["id"], error=failure)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_S[1])
