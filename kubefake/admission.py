"""Admission: what the API server checks and fills in before it stores a created object.

The name, the namespace, the kind against the URL; the official schemas (`kubernetes-validate`,
strict; Traefik's CRDs for its kinds) answering 400 for unknown fields and 422 `Invalid` for the
rest, as `fieldValidation` says; the checks a real server makes beyond its schemas for the fields
templates set; then the defaults: metadata (uid, resourceVersion, creationTimestamp), Secret
`stringData` folded into `data`, a Pod's port protocols and QoS class, a Service's type, cluster
IP and ports."""

from __future__ import annotations

import base64
import functools
import re
import uuid
from collections.abc import Callable
from typing import Any

import jsonschema

from app import k8s_rules
from kubefake import errors, resources
from kubefake.resources import K8S_VERSION, Kind
from kubefake.store import Raw, now

NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@functools.cache
def core_validator(kind: str, api_version: str) -> Any:
    """kubernetes-validate's strict schema for a kind, loaded once (its validate() re-reads the
    schema files on every call, which dominates a busy fake)."""
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    wanted = utils.major_minor(K8S_VERSION)
    version = [v for v in utils.all_versions() if utils.major_minor(v) <= wanted][-1]
    schema_dir = f"v{version}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = utils.schema_contents(
        f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group_version}.json", K8S_VERSION
    )
    definitions = utils.schema_contents(
        f"kubernetes-json-schema/{schema_dir}/_definitions.json", K8S_VERSION
    )
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


@functools.cache
def _crd_validator(plural: str) -> Any:
    schema = resources.crd_schema(plural)
    return None if schema is None else jsonschema.validators.validator_for(schema)(schema)


def validator(kind: Kind) -> Any:
    """The schema admission checks a kind against: the official one for Kubernetes' own kinds,
    the CRD's for Traefik's (those we ship); None where there is none."""
    if kind.schema == "core":
        return core_validator(kind.kind, kind.api_version)
    return _crd_validator(kind.plural)


def semantic_problems(kind: str, data: Raw) -> list[tuple[str, str]]:
    """What the real API server's validation refuses beyond its OpenAPI schema, for the fields
    templates set: node selectors and tolerations (Pods), storage requests (PVCs)."""
    spec = data.get("spec") or {}
    problems: list[tuple[str, str]] = []
    if kind == "Pod":
        problems += [
            (f"spec.{field.replace('node_selector', 'nodeSelector')}", message)
            for field, message in k8s_rules.node_selector_errors(spec.get("nodeSelector") or {})
        ]
        for index, toleration in enumerate(spec.get("tolerations") or []):
            problems += [
                (f"spec.{field.replace('toleration_seconds', 'tolerationSeconds')}", message)
                for field, message in k8s_rules.toleration_errors(index, toleration)
            ]
    elif kind == "PersistentVolumeClaim":
        storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
        if storage is not None and not k8s_rules.quantity_is_positive(str(storage)):
            problems.append(("spec.resources.requests[storage]", "must be greater than zero"))
    return problems


def field_path(path: Any) -> str:
    """`spec.containers[0].image`, as the API server writes a field."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def schema_errors(kind: Kind, checker: Any, data: Raw, mode: str) -> list[Any]:
    """Unknown fields, as `fieldValidation` says: Strict (kubectl's default, and the fake's
    when unset, where a real server warns: a typo in our own manifests must not pass) answers
    400 with each field; Warn and Ignore drop them, as a real server does. The other schema
    errors, for a 422."""
    found = list(checker.iter_errors(data))
    unknown = [
        (error, key)
        for error in found
        if error.validator == "additionalProperties" and isinstance(error.instance, dict)
        for key in list(error.instance)
        if key not in (error.schema.get("properties") or {})
    ]
    if not unknown:
        return sorted(found, key=lambda e: [str(p) for p in e.path])
    if mode in ("Warn", "Ignore"):
        for error, key in unknown:
            error.instance.pop(key, None)
        return sorted(checker.iter_errors(data), key=lambda e: [str(p) for p in e.path])
    fields = ", ".join(
        f'unknown field "{field_path([*error.path, key])}"' for error, key in unknown
    )
    raise errors.bad_request(
        f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
        f"strict decoding error: {fields}"
    )


def qos_class(raw: Raw) -> str:
    """The pod's QoS class, from its containers' CPU and memory requests and limits."""
    containers = raw["spec"].get("containers") or []
    wanted = ("cpu", "memory")
    resources_of = [c.get("resources") or {} for c in containers]
    if not any(
        name in (r.get(part) or {})
        for r in resources_of
        for part in ("requests", "limits")
        for name in wanted
    ):
        return "BestEffort"
    for r in resources_of:
        limits, requests = r.get("limits") or {}, r.get("requests") or {}
        for name in wanted:
            if name not in limits or str(requests.get(name, limits[name])) != str(limits[name]):
                return "Burstable"
    return "Guaranteed"


class Admission:
    """Checks and defaults for created objects; `validate=False` skips the schemas (pure
    Python: about 30 ms a Pod), for benches that create thousands."""

    def __init__(self, *, validate: bool, next_version: Callable[[], str]) -> None:
        self.validate = validate
        self._next_version = next_version
        self._cluster_ips_given = 0

    def admit(self, data: Any, kind: Kind, namespace: str | None, field_validation: str) -> None:
        """Check `data`, a create's body for `kind` in the URL's `namespace`, and fill in what
        the API server does; raises the API server's refusal."""
        if not isinstance(data, dict):
            raise errors.bad_request("the body is not a JSON object")
        metadata = data.setdefault("metadata", {})
        name = metadata.get("name", "")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise errors.invalid(
                kind.kind,
                str(name),
                [("metadata.name", "Invalid value: a lowercase RFC 1123 subdomain")],
            )
        if not kind.namespaced:
            metadata.pop("namespace", None)
        elif namespace and metadata.setdefault("namespace", namespace) != namespace:
            raise errors.bad_request(
                "the namespace of the object does not match the namespace of the URL"
            )
        if data.get("kind") != kind.kind or data.get("apiVersion") != kind.api_version:
            raise errors.bad_request(
                f"{data.get('apiVersion')}/{data.get('kind')} does not match the URL "
                f"({kind.api_version}/{kind.kind})"
            )
        if self.validate:
            self._check(data, kind, name, field_validation)
        if kind.kind == "Secret" and "stringData" in data:
            encoded = {
                k: base64.b64encode(str(v).encode()).decode()
                for k, v in data.pop("stringData").items()
            }
            data["data"] = {**data.get("data", {}), **encoded}
        metadata.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_version(),
            creationTimestamp=now(),
            generation=1,
        )
        if kind.kind == "Pod":
            for container in [
                *data["spec"].get("initContainers", []),
                *data["spec"].get("containers", []),
            ]:
                for port in container.get("ports") or []:
                    port.setdefault("protocol", "TCP")
            data["status"] = {"phase": "Pending", "qosClass": qos_class(data)}
        elif kind.kind == "Service":
            self._default_service(data)

    def _check(self, data: Raw, kind: Kind, name: str, field_validation: str) -> None:
        checker = validator(kind)
        if checker is not None:
            found = schema_errors(kind, checker, data, field_validation)
            if found:
                raise errors.invalid(
                    kind.kind, name, [(field_path(e.path), e.message) for e in found[:10]]
                )
        problems = semantic_problems(kind.kind, data)
        if problems:
            raise errors.invalid(kind.kind, name, problems)

    def _default_service(self, data: Raw) -> None:
        """What the API server fills in a Service: its type, a cluster IP from the service
        range (10.96.0.0/12), each port's protocol and target port."""
        spec = data.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec.get("clusterIP") != "None" and spec["type"] != "ExternalName":
            if not spec.get("clusterIP"):
                self._cluster_ips_given += 1
                number = self._cluster_ips_given
                spec["clusterIP"] = f"10.96.{number // 250 % 250}.{1 + number % 250}"
            spec["clusterIPs"] = [spec["clusterIP"]]
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
        data["status"] = {"loadBalancer": {}}


__all__ = ["Admission", "core_validator", "qos_class", "validator"]
