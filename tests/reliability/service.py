"""A real `vdi-control serve` process for the reliability tests: its own embedded Postgres,
the simulated cluster, a loopback port. Stopped by its PID."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def service(workdir: Path, **settings: str) -> Iterator[Service]:
    port = free_port()
    admin_token = "vdi_reliability-admin-" + secrets.token_urlsafe(24)
    env = {
        **{k: v for k, v in os.environ.items() if k != "VDI_DATABASE_URL"},
        "VDI_DATA_DIR": str(workdir / "data"),
        "VDI_BOOTSTRAP_TOKEN": admin_token,
        "VDI_CLUSTER": "simulated",
        "VDI_PORT": str(port),
        "VDI_CALLBACK_URL": f"http://127.0.0.1:{port}",
        "VDI_LOG_LEVEL": "INFO",
        **settings,
    }
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
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the service did not become ready"
            try:
                if httpx.get(f"{running.url}/readyz", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield running
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
