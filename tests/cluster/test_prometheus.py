"""The dashboard and the alerts against a real Prometheus (Debian's): it scrapes a running
control plane (the real API and reconciler on the fake cluster) with a few sessions: running,
warm, failed and waiting for capacity. Every query of every dashboard panel and every alert
expression runs there; each must succeed, and those that should have data return it. What
Prometheus showed missing from /metrics is what this test was written to catch."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI

from harness.servers import free_port, serve
from kubefake import FakeKubernetes
from tests.cluster.conftest import eventually, report_ready_pods
from tests.conftest import ADMIN
from tests.deploy.test_chart import by_kind, render
from tests.tools import tool

pytestmark = pytest.mark.e2e

DASHBOARD = Path(__file__).resolve().parents[2] / "charts/vdi-control/dashboards/vdi-control.json"
JOB = "vdi"
# Panels that are right to be empty on a healthy control plane (no 5xx, no cluster error).
EMPTY_WHEN_HEALTHY = {"API errors (5xx) by route", "Cluster call errors"}
Fake = tuple[FakeKubernetes, Any]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query) of every target of every panel, as Grafana sends them here: the
    job variable chosen, `$__rate_interval` one minute."""
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"].replace("$job", JOB).replace("$__rate_interval", "1m"))
        for panel in board["panels"]
        for target in panel["targets"]
    ]


@pytest.fixture
async def prometheus(
    cluster_app: FastAPI, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    """Prometheus scraping the control plane every second, with the chart's alerts loaded."""
    async with serve(cluster_app) as base:
        (rule,) = by_kind(
            render({"prometheus": {"assumeCRDs": True, "rules": {"enabled": True, "job": JOB}}}),
            "PrometheusRule",
        )
        rules = tmp_path / "rules.yaml"
        rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        config = tmp_path / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)],
                    "scrape_configs": [
                        {"job_name": JOB, "static_configs": [{"targets": [base[len("http://") :]]}]}
                    ],
                }
            )
        )
        port = free_port()
        log = (tmp_path / "prometheus.log").open("w")
        process = await asyncio.create_subprocess_exec(
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

                async def up() -> bool:
                    try:
                        answer = await http.get(
                            "/api/v1/query", params={"query": f"up{{job='{JOB}'}}"}
                        )
                    except httpx.TransportError:
                        return False
                    result = answer.json()["data"]["result"] if answer.status_code == 200 else []
                    return bool(result) and result[0]["value"][1] == "1"

                await eventually(up, timeout_s=30)
                yield http, tmp_path / "prometheus.log"
        finally:
            process.terminate()  # by its pid
            await asyncio.wait_for(process.wait(), timeout=10)
            log.close()


async def query(http: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    answer = await http.get("/api/v1/query", params={"query": expr})
    body = answer.json()
    assert answer.status_code == 200, (expr, body)
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.mark.parametrize("fake_options", [{"gpu_capacity": 3, "termination_delay_s": 0.0}])
async def test_every_dashboard_query_and_alert_runs_on_a_real_prometheus(
    api: httpx.AsyncClient, fake: Fake, prometheus: tuple[httpx.AsyncClient, Path]
) -> None:
    emulator, _cluster = fake
    http, _log = prometheus
    image = "registry.test/vdi/session:1"
    for name, body in {
        "desk": {"image": image, "persistent_home": False},
        "pooled": {"image": image, "persistent_home": False, "warm_pool": 1},
        "broken": {"image": "registry.test/does-not-exist:1", "persistent_home": False, "gpu": 0},
    }.items():
        assert (await api.put(f"/v1/templates/{name}", json=body, headers=ADMIN)).status_code in (
            200,
            201,
        )

    async def create(user: str, template: str) -> dict[str, Any]:
        response = await api.post(
            "/v1/sessions", json={"user": user, "template": template}, headers=ADMIN
        )
        assert response.status_code == 202, response.text
        return dict(response.json())

    async def phase(session: dict[str, Any]) -> str:
        body = (await api.get(f"/v1/sessions/{session['id']}", headers=ADMIN)).json()
        return str(body["reason"] if body["phase"] == "Starting" else body["phase"])

    # two running desktops and a ready warm member: the three GPUs taken
    running = [await create("alice", "desk"), await create("bob", "desk")]

    async def settled() -> bool:
        await report_ready_pods(api, emulator)
        ready = (await api.get("/v1/templates/pooled", headers=ADMIN)).json()["warm_available"]
        return ready == 1 and [await phase(s) for s in running] == ["Running"] * 2

    await eventually(settled)
    # a failure (after Prometheus has seen the counter at 0) and a wait for capacity
    failed = await create("carol", "broken")
    waiting = await create("dave", "desk")
    await eventually(_is(phase, failed, "Failed"))
    await eventually(_is(phase, waiting, "WaitingForCapacity"))
    await asyncio.sleep(5)  # a few scrapes of the new state

    empty = []
    for title, expr in dashboard_queries():
        if not await query(http, expr):
            empty.append(title)
    assert sorted(set(empty)) == sorted(EMPTY_WHEN_HEALTHY), empty

    # what the panels show is what happened
    failures = await query(
        http, 'sum by (reason) (increase(vdi_session_failures_total{job="vdi"}[1m])) > 0'
    )
    assert [r["metric"]["reason"] for r in failures] == ["ImagePullError"]
    short = await query(http, 'max by (resources) (vdi_sessions_waiting_for_capacity{job="vdi"})')
    assert [(r["metric"]["resources"], r["value"][1]) for r in short] == [("nvidia.com/gpu", "1")]
    pool = await query(http, 'max by (template, state) (vdi_pool_members{job="vdi"})')
    assert {(r["metric"]["template"], r["metric"]["state"]): r["value"][1] for r in pool}[
        ("pooled", "ready")
    ] == "1"

    # every alert expression runs, and on this healthy control plane none fires
    rules = (await http.get("/api/v1/rules")).json()["data"]["groups"]
    alerts = [r for g in rules for r in g["rules"] if r["type"] == "alerting"]
    assert len(alerts) == 8
    for alert in alerts:
        assert alert["health"] == "ok", alert
        await query(http, alert["query"])
    firing = (await http.get("/api/v1/alerts")).json()["data"]["alerts"]
    assert firing == [], firing


def _is(phase: Any, session: dict[str, Any], wanted: str) -> Any:
    async def check() -> bool:
        return bool(await phase(session) == wanted)

    return check


def test_the_dashboard_is_shipped_as_the_sidecars_configmap() -> None:
    (config_map,) = by_kind(render({"dashboards": {"enabled": True}}), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(config_map["data"]["vdi-control.json"])
    assert board == json.loads(DASHBOARD.read_text())
    assert by_kind(render({}), "ConfigMap") == []
