"""Fixtures for the cluster side: a FakeKubernetes on loopback, spoken to by the real client, and
the app with its reconciler running against it."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.cluster.kube import KubeCluster
from app.config import Settings
from app.main import create_app
from kubefake import FakeKubernetes, start_fake_cluster
from tests.conftest import ADMIN, _truncate, bearer, client_for, running


@pytest.fixture
def fake_options() -> dict[str, Any]:
    return {}


@pytest.fixture
async def fake(fake_options: dict[str, Any]) -> AsyncIterator[tuple[FakeKubernetes, KubeCluster]]:
    async with start_fake_cluster(**fake_options) as (emulator, url):
        cluster = KubeCluster.for_host(url, "vdi", "traefik.io/v1alpha1")
        try:
            yield emulator, cluster
        finally:
            cluster.close()


@pytest.fixture
def cluster_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "reconciler": True,
            "reconcile_interval_s": 0.2,
            "reconcile_lease_s": 5,
            "orphan_sweep_interval_s": 3600.0,
            "pool_interval_s": 0.2,
            "heartbeat_timeout_s": 60,
            "failed_grace_s": 3600,
            "namespace": "vdi",
        }
    )


@pytest.fixture
async def cluster_app(
    cluster_settings: Settings, database_url: str, fake: tuple[FakeKubernetes, KubeCluster]
) -> AsyncIterator[FastAPI]:
    application = create_app(cluster_settings, database_url, cluster=fake[1])
    try:
        async with running(application):
            yield application
    finally:
        await _truncate(database_url)


@pytest.fixture
async def api(cluster_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(cluster_app) as http:
        yield http


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout_s: float = 20.0) -> Any:
    """Poll `check` until it returns something truthy, within a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s} s (last: {result!r})")
        await asyncio.sleep(0.05)


def phase_is(api: httpx.AsyncClient, session_id: str, *phases: str) -> Callable[[], Awaitable[Any]]:
    async def check() -> Any:
        body = (await api.get(f"/v1/sessions/{session_id}", headers=ADMIN)).json()
        return body if body["phase"] in phases else None

    return check


@pytest.fixture
def new_session(api: httpx.AsyncClient) -> Callable[..., Awaitable[dict[str, Any]]]:
    async def make(
        user: str = "alice", template: str = "gpu-desktop", **fields: Any
    ) -> dict[str, Any]:
        body = {"image": "registry.test/vdi/session:1", **fields}
        assert (
            await api.put(f"/v1/templates/{template}", json=body, headers=ADMIN)
        ).status_code in (200, 201)
        response = await api.post(
            "/v1/sessions", json={"user": user, "template": template}, headers=ADMIN
        )
        assert response.status_code == 202, response.text
        return dict(response.json())

    return make


def name_of(session_id: str) -> str:
    return f"vdi-{uuid.UUID(session_id)}"


async def report_ready_pods(
    api: httpx.AsyncClient, emulator: FakeKubernetes, *, checks: list[dict[str, Any]] | None = None
) -> None:
    """Be the agent of every running pod whose Secret exists: report its checks passed."""
    for pod in list(emulator.live("pods")):
        if (pod.get("status") or {}).get("phase") != "Running":
            continue
        name = pod["metadata"]["name"]
        secret = emulator.find("secrets", "vdi", name)
        if secret is None:
            continue
        token = base64.b64decode(secret["data"]["VDI_AGENT_TOKEN"]).decode()
        session_id = name.removeprefix("vdi-")
        report = {
            "checks": checks or [{"name": "gpu", "ok": True}, {"name": "encoder", "ok": True}],
            "encoder": "nvh264enc",
        }
        await api.post(f"/v1/sessions/{session_id}/health", json=report, headers=bearer(token))
