"""The chart's Role grants exactly what the code calls: a whole lifecycle runs against the fake
API, which logs every (group, resource, verb); the rendered Role must match it rule for rule."""

from __future__ import annotations

from typing import Any

import helm_python
import httpx
import yaml
from fastapi import FastAPI

from app.cluster.kube import KubeCluster
from kubefake import FakeKubernetes
from tests.cluster.conftest import eventually, phase_is
from tests.cluster.test_reconciler import agent_report
from tests.conftest import ADMIN
from tests.deploy.test_chart import CHART


def role_grants() -> set[tuple[str, str, str]]:
    chart = helm_python.Chart.load(str(CHART))
    try:
        keys = {"secrets": {"secretKey": "k" * 40, "turnSecret": "t" * 40}}  # no cluster here
        rendered = chart.render(keys, name="vdi", namespace="vdi-system", is_install=True)
    finally:
        chart.close()
    [role] = [
        d
        for d in yaml.safe_load_all(rendered["vdi-control/templates/rbac.yaml"])
        if d and d["kind"] == "Role"
    ]
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


async def test_role_verbs_match_what_the_code_calls(
    cluster_app: FastAPI,
    api: httpx.AsyncClient,
    fake: tuple[FakeKubernetes, KubeCluster],
    new_session: Any,
) -> None:
    emulator, cluster = fake
    first = await new_session("alice")
    await eventually(phase_is(api, first["id"], "Starting"))
    assert (await agent_report(api, cluster, first["id"])).json()["phase"] == "Running"
    assert (await api.get("/readyz")).status_code == 200
    await api.delete(f"/v1/sessions/{first['id']}", headers=ADMIN)
    await eventually(phase_is(api, first["id"], "Terminated"))
    second = await new_session("alice")  # the home PVC exists: create answers 409, then get
    await eventually(phase_is(api, second["id"], "Starting"))
    await cluster_app.state.reconciler.sweep_orphans()
    # A replica that died mid-provisioning makes the next one create again: every kind answers
    # 409 and the adapter reads the existing object (the recovery path of the reconciler).
    name = f"vdi-{second['id']}"
    for kind, plural in (
        ("Pod", "pods"),
        ("Secret", "secrets"),
        ("Service", "services"),
        ("IngressRoute", "ingressroutes"),
        ("PersistentVolumeClaim", "persistentvolumeclaims"),
    ):
        existing = emulator.find(
            plural, "vdi", "home-alice" if plural == "persistentvolumeclaims" else name
        )
        assert existing is not None
        again = await cluster.create(kind, existing)  # type: ignore[arg-type]
        assert again["metadata"]["uid"] == existing["metadata"]["uid"]
    # Pre-pull: a DaemonSet created, replaced when the image changes (delete, create), listed.
    prepulls = cluster_app.state.reconciler.prepulls
    template = {"image": "registry.test/vdi/session:1", "prepull": True}
    assert (await api.put("/v1/templates/pulled", json=template, headers=ADMIN)).is_success
    assert await prepulls.keep_prepulls() in (0, 1)
    template["image"] = "registry.test/vdi/session:2"
    assert (await api.put("/v1/templates/pulled", json=template, headers=ADMIN)).is_success
    assert await prepulls.keep_prepulls() in (0, 1)  # (0: the keeper's own pass was first)
    existing = emulator.find("daemonsets", "vdi", "vdi-prepull-pulled")
    assert existing is not None
    assert existing["spec"]["template"]["spec"]["initContainers"][0]["image"].endswith(":2")
    again = await cluster.create("DaemonSet", existing)  # another replica's pass: 409, read
    assert again["metadata"]["uid"] == existing["metadata"]["uid"]
    used = emulator.verbs
    assert ("", "persistentvolumeclaims", "get") in used
    assert ("", "pods", "watch") in used
    assert used == role_grants()
