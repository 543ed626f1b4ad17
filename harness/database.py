"""The benches' database: an embedded Postgres of their own, a migrated `vdi_bench` database."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app import migrate
from app.embedded import EmbeddedPostgres, ensure_database


@contextmanager
def bench_database() -> Iterator[str]:
    """The URL of a fresh, migrated database; its server is stopped and deleted after."""
    server = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="vdi-bench-")) / "pg", delete_on_stop=True
    )
    try:
        asyncio.run(ensure_database(server.url(), "vdi_bench"))
        url = server.url("vdi_bench")
        migrate.upgrade(url)
        yield url
    finally:
        server.stop()
