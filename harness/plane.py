"""`vdi-control serve` as a harness runs it: on a fake cluster, in a process of its own, with
a fresh data dir and secrets; a client for its API as an admin; a session started on it and the
environment its pod's agent would get."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.cluster.manifests import SESSION_ID_LABEL
from harness.network import TURN_IP, TURN_PORT, stop
from harness.servers import free_port, wait_ready
from kubefake import FakeKubernetes, write_kubeconfig

NAMESPACE = "vdi"
# A CPU session's health report, as an agent sends it when its desktop is ready
READY_REPORT = {
    "checks": [
        {"name": "gpu", "ok": None, "detail": "CPU session"},
        {"name": "encoder", "ok": True, "detail": "x264enc"},
    ],
    "encoder": "x264enc",
    "fallback": False,
}


# -- the control plane --------------------------------------------------------------------------


@dataclass
class ControlPlane:
    url: str
    admin: dict[str, str]
    process: subprocess.Popen[Any]
    log: Path

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        async with httpx.AsyncClient(base_url=self.url, headers=self.admin, timeout=30) as http:
            response = await http.request(method, path, **kwargs)
        if not response.is_success:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    async def session(self, session_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/v1/sessions/{session_id}")  # type: ignore[no-any-return]

    async def wait_phase(
        self, session_id: str, phases: set[str], timeout_s: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            session = await self.session(session_id)
            if session["phase"] in phases:
                return session
            if time.monotonic() > deadline:
                raise RuntimeError(f"session stayed {session['phase']} ({session['reason']})")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def control_plane(
    workdir: Path,
    fake_url: str,
    turn_secret: str,
    pod_side_ip: str | None = None,
    settings: dict[str, str] | None = None,
) -> AsyncIterator[ControlPlane]:
    """`vdi-control serve` on the fake cluster. With `pod_side_ip` it also listens there and
    gives pods that address as their callback (agents in their own network namespace);
    `settings` are more VDI_* variables."""
    port = free_port()
    callback_ip = pod_side_ip or "127.0.0.1"
    kubeconfig = write_kubeconfig(workdir / "kubeconfig", fake_url, NAMESPACE)
    admin_token = "vdi_g2g-admin-" + secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "VDI_DATA_DIR": str(workdir / "data"),
        "VDI_SECRET_KEY": secrets.token_urlsafe(48),
        "VDI_TURN_SECRET": turn_secret,
        "VDI_TURN_HOST": TURN_IP,
        "VDI_TURN_PORT": str(TURN_PORT),
        "VDI_BOOTSTRAP_TOKEN": admin_token,
        "VDI_CLUSTER": "kubernetes",
        "VDI_NAMESPACE": NAMESPACE,
        "KUBECONFIG": str(kubeconfig),
        "VDI_HOST": "0.0.0.0" if pod_side_ip else "127.0.0.1",
        "VDI_PORT": str(port),
        "VDI_CALLBACK_URL": f"http://{callback_ip}:{port}",
        "VDI_RECONCILE_INTERVAL_S": "0.2",
        "VDI_LOG_LEVEL": "WARNING",
        **(settings or {}),
    }
    env.pop("VDI_DATABASE_URL", None)
    log = workdir / "control-plane.log"
    process = await asyncio.to_thread(start_serve, env, log)
    plane = ControlPlane(
        f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {admin_token}"}, process, log
    )
    try:
        await asyncio.to_thread(wait_ready, f"{plane.url}/readyz", process, log)
        yield plane
    finally:
        await asyncio.to_thread(stop, process, 20)


def start_serve(env: dict[str, str], log: Path) -> subprocess.Popen[Any]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-c", "from app.cli import main; main()", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def pod_environment(fake: FakeKubernetes, pod_name: str) -> dict[str, str]:
    """The agent container's environment as the kubelet gives it: values, and secretKeyRef
    values read from the Secret."""
    pod = fake.find("pods", NAMESPACE, pod_name)
    if pod is None:
        raise RuntimeError(f"pod {pod_name} not found")
    env: dict[str, str] = {}
    for item in pod["spec"]["containers"][0]["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        secret = fake.find("secrets", NAMESPACE, ref["name"])
        if secret is None:
            raise RuntimeError(f"secret {ref['name']} not found")
        env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return env


async def start_session(
    plane: ControlPlane, fake: FakeKubernetes, template: str, spec: dict[str, Any]
) -> tuple[str, dict[str, str]]:
    """PUT the template, create alice's session of it and wait until its pod exists (Starting);
    returns the session id and the agent's environment as that pod would get it."""
    await plane.request("PUT", f"/v1/templates/{template}", json=spec)
    created = await plane.request(
        "POST", "/v1/sessions", json={"user": "alice", "template": template}
    )
    session_id: str = created["id"]
    await plane.wait_phase(session_id, {"Starting"}, 60)
    pod = next(
        p for p in fake.live("pods") if p["metadata"]["labels"].get(SESSION_ID_LABEL) == session_id
    )
    return session_id, pod_environment(fake, pod["metadata"]["name"])
