"""A real `vdi-control serve` process for the reliability tests: its own embedded Postgres,
the simulated cluster, a loopback port. Stopped by its PID."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.test_cli import environment, free_port, wait_ready


@dataclass
class Service:
    url: str
    admin_token: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def token(self, *scopes: str, revoked: bool = False) -> str:
        """A new API token with these scopes (revoked at once if asked: for refusal tests)."""
        response = httpx.post(
            f"{self.url}/v1/tokens",
            json={"name": "-".join(scopes).replace(":", "-"), "scopes": list(scopes)},
            headers=self.admin,
            timeout=30,
        )
        response.raise_for_status()
        created = response.json()
        if revoked:
            httpx.delete(
                f"{self.url}/v1/tokens/{created['id']}", headers=self.admin, timeout=30
            ).raise_for_status()
        return str(created["token"])


@contextmanager
def service(workdir: Path, **settings: str) -> Iterator[Service]:
    port = free_port()
    admin_token = "vdi_reliability-admin-" + secrets.token_urlsafe(24)
    defaults = {
        "VDI_DATA_DIR": str(workdir / "data"),
        "VDI_BOOTSTRAP_TOKEN": admin_token,
        "VDI_CLUSTER": "simulated",
        "VDI_PORT": str(port),
        "VDI_CALLBACK_URL": f"http://127.0.0.1:{port}",
        "VDI_LOG_LEVEL": "INFO",
    }
    env = environment(**{**defaults, **settings})
    log = workdir / "service.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "from app.cli import main; main()", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Service(f"http://127.0.0.1:{port}", admin_token, process, log)
    try:
        try:
            wait_ready(port, process, timeout_s=90)  # type: ignore[arg-type]
        except AssertionError as error:
            raise AssertionError(f"{error}\n{log.read_text()[-3000:]}") from error
        yield running
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
