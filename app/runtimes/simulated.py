"""The in-process clusters: the fake Kubernetes API with a stand-in agent that reports health for
every pod that starts (simulated: the whole lifecycle on a laptop, nothing real started), or with
local desktops behind its kubelet (local: real desktops, see app.runtimes.local)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog

from app.cluster import manifests
from app.cluster.kube import KubeCluster
from app.config import Settings
from app.runtimes.local import LocalDesktops, find_tools
from kubefake import FakeKubernetes, start_fake_cluster, write_kubeconfig

log = structlog.get_logger("vdi.simulated")

# Local desktops share this machine's GPUs (passed through, not counted out): the scheduler
# does not stop at a number of them.
LOCAL_GPU_CAPACITY = 1_000_000


class StandInAgent:
    """Does what vdi-agent does once its checks pass: reports, then keeps reporting."""

    def __init__(self, fake: FakeKubernetes, namespace: str, heartbeat_s: float) -> None:
        self.fake = fake
        self.namespace = namespace
        self.heartbeat_s = heartbeat_s
        self._tasks: set[asyncio.Task[None]] = set()

    async def pod_running(self, pod: dict[str, Any]) -> None:
        task = asyncio.create_task(self._report(pod))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _report(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        env = {item["name"]: item.get("value") for item in pod["spec"]["containers"][0]["env"]}
        secret = self.fake.find("secrets", self.namespace, name)
        if secret is None:
            return
        token = base64.b64decode(secret["data"][manifests.AGENT_TOKEN_KEY]).decode()
        gpu = int(env.get("VDI_GPU") or 0)
        report: dict[str, Any] = {
            "checks": [
                {"name": "gpu", "ok": True, "detail": "simulated GPU"}
                if gpu
                else {"name": "gpu", "ok": None, "detail": "CPU session"},
                {"name": "encoder", "ok": True, "detail": "simulated encoder"},
                {"name": "stream", "ok": None, "detail": "no viewer connected"},
            ],
            "encoder": env.get("SELKIES_ENCODER"),
            "fallback": False,
            "framerate": int(env.get("SELKIES_FRAMERATE") or 60),
            "bitrate_kbps": int(env.get("SELKIES_VIDEO_BITRATE") or 8000),
        }
        url = f"{env['VDI_CALLBACK_URL']}/v1/sessions/{env['VDI_SESSION_ID']}/health"
        async with httpx.AsyncClient(timeout=10) as http:
            while self.fake.find("pods", self.namespace, name) is not None:
                try:
                    response = await http.post(
                        url, json=report, headers={"Authorization": f"Bearer {token}"}
                    )
                    not_started = response.status_code == 409 and str(
                        response.json().get("type", "")
                    ).endswith(":session-not-started")
                    if response.status_code in (403, 404, 409) and not not_started:
                        return  # the session is over (or not ours): stop, as the agent does
                    if not_started:  # the pod ran before the session recorded Starting
                        await asyncio.sleep(1.0)
                        continue
                except httpx.HTTPError as error:
                    log.warning("stand-in agent cannot report", error=str(error))
                await asyncio.sleep(self.heartbeat_s)


def in_process_client(settings: Settings, fake: FakeKubernetes, url: str) -> KubeCluster:
    """The server's client of its in-process API (HTTPS, its token, its CA in the data dir),
    and a kubeconfig for kubectl beside it (owner-only), which the start-up line names."""
    assert fake.token is not None
    assert fake.ca_pem is not None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ca_file = settings.data_dir / "kube-ca.crt"
    ca_file.write_bytes(fake.ca_pem)
    path = settings.data_dir / "kubeconfig"
    write_kubeconfig(path, url, settings.namespace, fake.token, fake.ca_pem)
    log.info(
        "simulated cluster API: kubectl --kubeconfig " + str(path) + " get pods",
        api=url,
        kubeconfig=str(path),
    )
    return KubeCluster.for_host(
        url, settings.namespace, settings.ingress_api_version, fake.token, str(ca_file)
    )


@asynccontextmanager
async def simulated_cluster(
    settings: Settings,
) -> AsyncIterator[tuple[KubeCluster, FakeKubernetes]]:
    agent: StandInAgent | None = None

    async def pod_running(pod: dict[str, Any]) -> None:
        if agent is not None:
            await agent.pod_running(pod)

    async with start_fake_cluster(
        on_pod_running=pod_running,
        gpu_capacity=settings.simulated_gpus,
        token=secrets.token_urlsafe(32),
    ) as (fake, url):
        agent = StandInAgent(
            fake, settings.namespace, heartbeat_s=max(1.0, settings.heartbeat_timeout_s / 3)
        )
        cluster = in_process_client(settings, fake, url)
        try:
            yield cluster, fake
        finally:
            await agent.stop()
            cluster.close()


@asynccontextmanager
async def local_cluster(
    settings: Settings,
) -> AsyncIterator[tuple[KubeCluster, FakeKubernetes, LocalDesktops]]:
    """The fake API whose kubelet runs each session pod as local processes (app.runtimes.local):
    real desktops on this machine, no cluster. Only the server holds the API's token: another
    local account (loopback reaches every one) reads no Secret and has no pod run."""
    tools = await asyncio.to_thread(find_tools, settings)
    desktops = LocalDesktops(settings, tools)
    async with start_fake_cluster(
        token=secrets.token_urlsafe(32),
        on_pod_running=desktops.pod_running,
        on_pod_admitted=desktops.admitted,
        on_pod_terminating=desktops.pod_terminating,
        gpu_capacity=LOCAL_GPU_CAPACITY,
        termination_delay_s=0.05,
    ) as (fake, url):
        desktops.fake = fake
        await desktops.start()
        cluster = in_process_client(settings, fake, url)
        try:
            yield cluster, fake, desktops
        finally:
            await desktops.close()
            cluster.close()
