"""A real Traefik v3 routes each session: its kubernetescrd provider watches the fake API (JSON
watch streams, watch-list with the initial-events-end bookmark, every kind it lists), reads the
IngressRoutes the control plane writes and the TLS Secret they name, and reaches each pod at
the address in the Service's EndpointSlice. Each "pod" here is a small HTTP server on its own
loopback address that says whose it is."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from app.cluster import manifests
from app.cluster.kube import KubeCluster
from app.config import Settings
from harness import traefik as proxying
from kubefake import FakeKubernetes
from tests.cluster.conftest import eventually
from tests.conftest import ADMIN

pytestmark = pytest.mark.e2e

DOMAIN = "vdi.test"
Fake = tuple[FakeKubernetes, KubeCluster]


@pytest.fixture
def fake_options() -> dict[str, Any]:
    """Each pod gets a loopback address of its own, as each pod has its own IP."""
    given: dict[str, str] = {}

    def pod_ip(raw: dict[str, Any]) -> str:
        name = raw["metadata"]["name"]
        return given.setdefault(name, f"127.0.0.{20 + len(given)}")

    return {"pod_ip": pod_ip, "keep_request_log": True}


@pytest.fixture
def cluster_settings(cluster_settings: Settings) -> Settings:
    return cluster_settings.model_copy(
        update={"base_domain": DOMAIN, "tls_secret_name": proxying.TLS_SECRET}
    )


@contextlib.asynccontextmanager
async def pod_server(address: str, says: str) -> AsyncIterator[None]:
    """The desktop's web server at the pod's address and Selkies' port."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=f"{says} {request.path}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, address, manifests.SELKIES_PORT).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def running_pod(emulator: FakeKubernetes, session_id: str) -> dict[str, Any]:
    name = manifests.object_name(session_id)

    async def ready() -> dict[str, Any] | None:
        pod = emulator.find("pods", "vdi", name)
        return pod if pod and (pod.get("status") or {}).get("podIP") else None

    pod: dict[str, Any] = await eventually(ready, timeout_s=20)
    return pod


async def answered(
    proxy: proxying.Traefik, host: str, ca: bytes, status: int = 200
) -> httpx.Response:
    """Until Traefik answers `status` for `host` (a new endpoint takes a moment to reach it)."""

    async def check() -> httpx.Response | None:
        response = await proxying.get(proxy, host, "/desktop", ca_pem=ca)
        return response if response.status_code == status else None

    response: httpx.Response = await eventually(check, timeout_s=15)
    return response


async def test_traefik_routes_each_users_host_to_that_users_pod_only(
    cluster_app: Any,
    api: httpx.AsyncClient,
    fake: Fake,
    new_session: Any,
    tmp_path: Path,
) -> None:
    emulator, cluster = fake
    certificates = proxying.make_certificates(DOMAIN)
    await cluster.create("Secret", proxying.tls_secret(certificates, "vdi"))
    host_url = cluster.api_client.configuration.host
    async with httpx.AsyncClient(base_url=host_url) as http:
        store = await http.post(
            "/apis/traefik.io/v1alpha1/namespaces/vdi/tlsstores",
            json=proxying.default_tls_store("vdi"),
        )
        assert store.status_code == 201, store.text
    async with proxying.traefik(tmp_path, host_url, "vdi") as proxy:
        alice = await new_session("alice")
        bob = await new_session("bob", template="bob-desktop")
        alice_pod = await running_pod(emulator, alice["id"])
        bob_pod = await running_pod(emulator, bob["id"])
        assert alice_pod["status"]["podIP"] != bob_pod["status"]["podIP"]
        async with (
            pod_server(alice_pod["status"]["podIP"], "alice-pod"),
            pod_server(bob_pod["status"]["podIP"], "bob-pod"),
        ):
            router = await proxying.wait_router(proxy, f"alice.{DOMAIN}")
            assert router is not None
            assert router["status"] == "enabled", router
            assert router["entryPoints"] == ["websecure"]
            assert "tls" in router, router  # its certificate: the Secret the route names

            # TLS with the test CA's wildcard certificate (checked: an unknown CA would fail)
            response = await answered(proxy, f"alice.{DOMAIN}", certificates.ca_pem)
            assert response.text == "alice-pod /desktop"
            response = await answered(proxy, f"bob.{DOMAIN}", certificates.ca_pem)
            assert response.text == "bob-pod /desktop"
            for _ in range(5):  # never the other user's pod
                assert (
                    await proxying.get(proxy, f"bob.{DOMAIN}", ca_pem=certificates.ca_pem)
                ).text == "bob-pod /"

            # Traefik's service for alice's route has exactly her pod's address.
            services = {s["name"]: s for s in await proxy.services()}
            alice_service = services[router["service"] + "@kubernetescrd"]
            servers = [s["url"] for s in alice_service["loadBalancer"]["servers"]]
            assert servers == [f"http://{alice_pod['status']['podIP']}:{manifests.SELKIES_PORT}"]

            unknown = await proxying.get(proxy, f"mallory.{DOMAIN}", ca_pem=certificates.ca_pem)
            assert unknown.status_code == 404

            # After DELETE, the router goes within seconds and the host answers 404.
            deleted = await api.delete(f"/v1/sessions/{alice['id']}", headers=ADMIN)
            assert deleted.status_code == 202
            loop = asyncio.get_running_loop()
            started = loop.time()
            await proxying.wait_router(proxy, f"alice.{DOMAIN}", present=False, timeout_s=10)
            assert loop.time() - started < 10
            await answered(proxy, f"alice.{DOMAIN}", certificates.ca_pem, status=404)
            assert (await proxying.get(proxy, f"bob.{DOMAIN}")).text == "bob-pod /"
            await api.delete(f"/v1/sessions/{bob['id']}", headers=ADMIN)
            await proxying.wait_router(proxy, f"bob.{DOMAIN}", present=False, timeout_s=10)
            # no route left: the default store's certificate (the CA checks it), and 404
            unrouted = await proxying.get(proxy, f"bob.{DOMAIN}", ca_pem=certificates.ca_pem)
            assert unrouted.status_code == 404
    errors = proxy.errors()
    assert errors == [], [(e.get("message"), e.get("error")) for e in errors]
    # How Traefik's client-go spoke to the fake: watch-list informers, with its bearer token.
    traefik_calls = [
        r for r in emulator if "traefik" in str(r.headers.get("User-Agent", "")).lower()
    ]
    watch_lists = {
        str(r.resource.plural)
        for r in traefik_calls
        if r.params.get("watch") == "true" and r.params.get("sendInitialEvents") == "true"
    }
    assert {"ingressroutes", "services", "endpointslices", "secrets", "middlewares"} <= (
        watch_lists
    ), watch_lists
    assert all(str(r.headers.get("Authorization", "")).startswith("Bearer ") for r in traefik_calls)
