"""The chart's ValidatingAdmissionPolicy (issue 27): a compromised control plane cannot make a
privileged pod in the sessions namespace. Its CEL expressions are evaluated by a CEL
implementation (common-expression-language, the Rust `cel` crate's bindings) against the
manifests the code builds (admitted) and tampered copies of them (refused)."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

import cel
import pytest

from app.cluster import manifests
from app.config import Settings
from app.templates.schemas import TemplateSpec
from tests.deploy.test_chart import by_kind, render

SETTINGS = Settings(secret_key="k" * 40, turn_secret="t" * 40)
CONTROL_PLANE = "system:serviceaccount:vdi-system:vdi-vdi-control"


def _policy() -> dict[str, Any]:
    [policy] = by_kind(render({}), "ValidatingAdmissionPolicy")
    return policy


def admitted(obj: dict[str, Any], username: str = CONTROL_PLANE) -> list[str]:
    """The messages of the validations `obj` fails ([] = admitted), as the API server
    evaluates them: match conditions, then variables in order, then each validation."""
    spec = _policy()["spec"]
    context: dict[str, Any] = {"object": obj, "request": {"userInfo": {"username": username}}}
    for condition in spec["matchConditions"]:
        if not cel.evaluate(condition["expression"], context):
            return []  # not the control plane: this policy does not apply
    variables: dict[str, Any] = {}
    for variable in spec["variables"]:
        variables[variable["name"]] = cel.evaluate(
            variable["expression"], {**context, "variables": variables}
        )
    failed = []
    for validation in spec["validations"]:
        if not cel.evaluate(validation["expression"], {**context, "variables": variables}):
            failed.append(validation["message"])
    return failed


def session_pod(**spec_fields: Any) -> dict[str, Any]:
    view = manifests.SessionView(
        uuid.uuid4(), "alice", "t", TemplateSpec(image="registry.test/i:1", **spec_fields)
    )
    return manifests.pod(view, SETTINGS)


def prepull() -> dict[str, Any]:
    spec = TemplateSpec(image="registry.test/i:1", prepull=True)
    return manifests.prepull_daemonset("t", spec, SETTINGS)


def test_the_policy_binds_to_the_sessions_namespace_and_denies() -> None:
    [binding] = by_kind(render({}), "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["policyName"] == _policy()["metadata"]["name"]
    selector = binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]
    assert selector == {"kubernetes.io/metadata.name": "vdi-sessions"}
    assert _policy()["spec"]["failurePolicy"] == "Fail"
    assert (
        by_kind(render({"admissionPolicy": {"enabled": False}}), "ValidatingAdmissionPolicy") == []
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda: session_pod(),
        lambda: session_pod(gpu=0),
        lambda: session_pod(persistent_home=False),
        prepull,
    ],
    ids=["gpu-pod", "cpu-pod", "ephemeral-home", "prepull-daemonset"],
)
def test_what_the_control_plane_builds_is_admitted(build: Callable[[], dict[str, Any]]) -> None:
    assert admitted(build()) == []


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
    return spec


TAMPERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "privileged": lambda o: _pod_spec(o)["containers"][0]["securityContext"].update(
        privileged=True
    ),
    "escalation": lambda o: _pod_spec(o)["containers"][0]["securityContext"].update(
        allowPrivilegeEscalation=True
    ),
    "add-capability": lambda o: _pod_spec(o)["containers"][0]["securityContext"].update(
        capabilities={"add": ["SYS_ADMIN"]}
    ),
    "root-user": lambda o: _pod_spec(o)["containers"][0]["securityContext"].update(runAsUser=0),
    "root-allowed": lambda o: _pod_spec(o)["containers"][0]["securityContext"].update(
        runAsNonRoot=False
    ),
    "host-network": lambda o: _pod_spec(o).update(hostNetwork=True),
    "host-pid": lambda o: _pod_spec(o).update(hostPID=True),
    "host-path-root": lambda o: (
        _pod_spec(o).setdefault("volumes", []).append({"name": "root", "hostPath": {"path": "/"}})
    ),
    "host-path-docker-socket": lambda o: (
        _pod_spec(o)
        .setdefault("volumes", [])
        .append({"name": "sock", "hostPath": {"path": "/var/run/docker.sock"}})
    ),
    "a-privileged-init-container": lambda o: (
        _pod_spec(o)
        .setdefault("initContainers", [])
        .append({"name": "x", "image": "busybox", "securityContext": {"privileged": True}})
    ),
    "no-labels": lambda o: (
        o["metadata"] if o["kind"] == "Pod" else o["spec"]["template"]["metadata"]
    ).update(labels={}),
}


@pytest.mark.parametrize("kind", ["pod", "daemonset"])
@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_tampered_manifests_are_refused(kind: str, tamper: str) -> None:
    obj = copy.deepcopy(session_pod() if kind == "pod" else prepull())
    TAMPERS[tamper](obj)
    assert admitted(obj) != [], f"{tamper} on a {kind} was admitted"


def test_other_kinds_from_the_control_plane_are_refused_and_other_users_untouched() -> None:
    pod = session_pod()
    deployment = {
        "kind": "Deployment",
        "metadata": {"labels": {}},
        "spec": {"template": copy.deepcopy({"metadata": pod["metadata"], "spec": pod["spec"]})},
    }
    assert "the control plane creates only session pods" in admitted(deployment)[0]
    tampered = copy.deepcopy(pod)
    TAMPERS["privileged"](tampered)
    # the policy is about the control plane's account only (an admin's pods are others' rules)
    assert admitted(tampered, username="kubernetes-admin") == []
