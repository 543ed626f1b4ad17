"""FakeKubernetes: kmock's KubernetesEmulator extended where a controller needs a real API server.

Added on top of kmock: object metadata (uid, resourceVersion, creationTimestamp), admission with
the official schemas (`kubernetes-validate`, strict; Traefik's CRD for IngressRoutes) answering
422 `Invalid` like a real API server, Secret `stringData` folded into `data`, label selectors and
`timeoutSeconds` on list/watch, owner-reference garbage collection, a simulated scheduler and
kubelet (GPU capacity, PVC and Secret references, image pull errors, crash loops, graceful pod
termination), and injected latency and failures (500, 429, timeouts)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import contextvars
import datetime
import functools
import hashlib
import hmac
import json
import math
import random
import re
import ssl
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonschema
import kmock
import yaml
from kmock import Bus  # type: ignore[attr-defined]  # exported at its top level, not in __all__
from sortedcontainers import SortedDict

from app import k8s_rules
from kubefake import openapi, resources, selectors, tables, tls
from kubefake.resources import K8S_VERSION, Kind

NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
NODE_NAME = "fake-gpu-node-1"
UNSCHEDULABLE_GPU = (
    "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are "
    "available: 1 No preemption victims found for incoming pod."
)

POD = kmock.resource("", "v1", "pods")
EVENT = kmock.resource("", "v1", "events")
DAEMONSET = kmock.resource("apps", "v1", "daemonsets")
SERVICE = kmock.resource("", "v1", "services")
NODE = kmock.resource("", "v1", "nodes")
ENDPOINTSLICE = kmock.resource("discovery.k8s.io", "v1", "endpointslices")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SLICE_MANAGER = "endpointslice-controller.k8s.io"
NODE_IP = "10.0.0.10"
NODE_LABELS = {
    "kubernetes.io/hostname": NODE_NAME,
    "kubernetes.io/os": "linux",
    "kubernetes.io/arch": "amd64",
    "nvidia.com/gpu.present": "true",
}
EVENTS_KEPT = 50_000  # the oldest go first (a real API server expires them after an hour)
METADATA_LIST = "as=PartialObjectMetadataList"  # in Accept: list metadata only (as kubectl can)
Key = tuple[Any, str | None, str]  # (resource, namespace, name), kmock's object key
RBAC_VERBS = {"FETCH": "get", "UPDATE": "patch"}  # kmock action -> RBAC verb (others: lowercased)


@dataclass
class FaultPlan:
    """Latency for every API call, and a share of calls that fail."""

    rate: float = 0.0
    kinds: tuple[str, ...] = ("500", "429", "timeout")
    latency_s: float = 0.0
    timeout_hold_s: float = 3.0  # a "timeout" applies the call, then answers this late
    seed: int | None = None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@functools.cache
def _core_validator(kind: str, api_version: str) -> Any:
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


def _semantic_problems(kind: str, data: dict[str, Any]) -> list[tuple[str, str]]:
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


def _validator(kind: Kind) -> Any:
    """The schema admission checks a kind against: the official one for Kubernetes' own kinds,
    the CRD's for Traefik's (those we ship); None where there is none."""
    if kind.schema == "core":
        return _core_validator(kind.kind, kind.api_version)
    return _crd_validator(kind.plural)


@functools.cache
def _crd_validator(plural: str) -> Any:
    schema = resources.crd_schema(plural)
    return None if schema is None else jsonschema.validators.validator_for(schema)(schema)


def _field_path(path: Any) -> str:
    """`spec.containers[0].image`, as the API server writes a field."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def _unknown_fields(kind: Kind, validator: Any, data: dict[str, Any], mode: str) -> list[Any]:
    """Unknown fields, as `fieldValidation` says: Strict (kubectl's default, and the fake's
    when unset, where a real server warns: a typo in our own manifests must not pass) answers
    400 with each field; Warn and Ignore drop them, as a real server does. The other schema
    errors, for a 422."""
    errors = list(validator.iter_errors(data))
    unknown = [
        (error, key)
        for error in errors
        if error.validator == "additionalProperties" and isinstance(error.instance, dict)
        for key in list(error.instance)
        if key not in (error.schema.get("properties") or {})
    ]
    if not unknown:
        return sorted(errors, key=lambda e: [str(p) for p in e.path])
    if mode in ("Warn", "Ignore"):
        for error, key in unknown:
            error.instance.pop(key, None)
        return sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.path])
    fields = ", ".join(
        f'unknown field "{_field_path([*error.path, key])}"' for error, key in unknown
    )
    raise kmock.KubernetesError(
        status=400,
        reason="BadRequest",
        message=f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
        f"strict decoding error: {fields}",
        details={},
    )


def _invalid(kind: str, name: str, problems: list[tuple[str, str]]) -> kmock.KubernetesError:
    """422 Invalid as the API server writes it: the message, and one cause per field."""
    detail = "; ".join(f"{field}: {message}" if field else message for field, message in problems)
    return kmock.KubernetesError(
        status=422,
        reason="Invalid",
        message=f'{kind} "{name}" is invalid: {detail}',
        details={
            "name": name,
            "group": "",
            "kind": kind,
            "causes": [
                {"reason": "FieldValueInvalid", "message": message, "field": field}
                for field, message in problems
            ],
        },
    )


def _no_such_resource() -> kmock.KubernetesError:
    """404 for a path the server does not serve (a kind, a group version)."""
    return kmock.KubernetesError(
        status=404,
        reason="NotFound",
        message="the server could not find the requested resource",
        details={},
    )


def _not_found(kind: Kind, name: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=404,
        reason="NotFound",
        message=f'{kind.plural}{"." + kind.group if kind.group else ""} "{name}" not found',
        details={"name": name, "group": kind.group, "kind": kind.plural},
    )


def _check_selectors(request: kmock.Request) -> None:
    """400 for a label or field selector the API server would refuse."""
    try:
        selectors.parse(request.params.get("labelSelector"))
        selectors.parse_fields(
            request.params.get("fieldSelector"),
            str(request.resource.plural if request.resource else ""),
        )
    except ValueError as error:
        raise kmock.KubernetesError(status=400, reason="BadRequest", message=str(error)) from None


class _HookedBus(Bus[Any]):
    """A watch bus that shows every change to a hook before its watchers see it."""

    def __init__(self, hook: Callable[[Any, dict[str, Any]], None], resource: Any) -> None:
        super().__init__()
        self._hook = hook
        self._resource = resource

    async def put(self, *items: Any) -> None:
        for item in items:
            self._hook(self._resource, item)
        await super().put(*items)


class _HookedBuses(dict[Any, _HookedBus]):
    def __init__(self, hook: Callable[[Any, dict[str, Any]], None]) -> None:
        super().__init__()
        self._hook = hook

    def __missing__(self, resource: Any) -> _HookedBus:
        bus = self[resource] = _HookedBus(self._hook, resource)
        return bus


# The request a task serves (FakeKubernetes.__iter__).
_CURRENT_REQUEST: contextvars.ContextVar[kmock.Request | None] = contextvars.ContextVar(
    "fake_kubernetes_request", default=None
)


@attrs.define(kw_only=True)
class FakeKubernetes(kmock.KubernetesEmulator):
    gpu_capacity: int = 4
    faults: FaultPlan = attrs.field(factory=FaultPlan)
    kubelet_interval_s: float = 0.02
    termination_delay_s: float = 0.05
    failing_images: tuple[str, ...] = ("does-not-exist",)
    crashing_images: tuple[str, ...] = ("crashes",)
    on_pod_running: Callable[[dict[str, Any]], Coroutine[Any, Any, None]] | None = None
    # A container runtime behind the kubelet (app.runtimes.local): told of each pod admitted
    # (it may annotate it), and of each pod being deleted, which stays until that returns.
    on_pod_admitted: Callable[[dict[str, Any]], None] | None = None
    on_pod_terminating: Callable[[dict[str, Any]], Coroutine[Any, Any, None]] | None = None
    # The node's image store: a pod whose image is there starts at once ("already present on
    # machine"); any other pulls it for `image_pull_s` first. `keep_pulled_images=False` is a
    # fleet of fresh nodes: every pod pulls (but a pre-pull DaemonSet still fills the store).
    image_pull_s: float = 0.0
    keep_pulled_images: bool = True
    node_images: set[str] = attrs.field(factory=set)

    _resource_version: int = attrs.field(default=1, init=False)
    _random: random.Random = attrs.field(factory=random.Random, init=False)
    _kubelet_task: asyncio.Task[None] | None = attrs.field(default=None, init=False)
    _delete_after: dict[str, float] = attrs.field(factory=dict, init=False)
    keep_request_log: bool = False
    validate: bool = True  # admission against the official schemas (pure Python: ~30 ms a Pod)
    api_calls: int = attrs.field(default=0, init=False)
    verbs: set[tuple[str, str, str]] = attrs.field(factory=set, init=False)
    faults_injected: int = attrs.field(default=0, init=False)
    # Indexes, so that a call costs the same with 10 objects or 50,000 (kmock scans them all):
    # live objects by (resource, namespace) and name, in name order (paged lists); live uids;
    # dependents by owner uid (garbage collection); the pods the kubelet still has work on.
    _index: dict[tuple[Any, str | None], SortedDict] = attrs.field(factory=dict, init=False)
    _uids: dict[str, Key] = attrs.field(factory=dict, init=False)
    _dependents: dict[str, set[Key]] = attrs.field(factory=dict, init=False)
    _kubelet_work: dict[Key, None] = attrs.field(factory=dict, init=False)
    _gpus_used: int = attrs.field(default=0, init=False)
    _pulls: dict[str, float] = attrs.field(factory=dict, init=False)  # pod uid -> pulled at
    _events: collections.deque[Key] = attrs.field(factory=collections.deque, init=False)
    _new_events: list[dict[str, Any]] = attrs.field(factory=list, init=False)
    _daemonset_work: dict[Key, float] = attrs.field(factory=dict, init=False)  # -> pulled at
    _runtime_tasks: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)
    _event_clock: int = attrs.field(default=0, init=False)
    # The address the kubelet gives a pod that starts (an end-to-end test gives its network
    # namespace's); None or unset: the next of the pod network's, 10.42.0.0/16.
    pod_ip: Callable[[dict[str, Any]], str | None] | None = None
    # A bearer token every request must carry (401 otherwise), as a real API server asks of
    # its clients; None: open (tests on loopback).
    token: str | None = attrs.field(default=None, repr=False)
    ca_pem: bytes | None = attrs.field(default=None, init=False)  # its CA, when it has TLS
    _ips_given: int = attrs.field(default=0, init=False)
    _cluster_ips_given: int = attrs.field(default=0, init=False)
    # The EndpointSlice controller's indexes: pods by (namespace, label, value); services by
    # (namespace, selector label, value); the services each pod was an endpoint of; the
    # services whose slice is to be brought up to date (the kubelet's tick does it).
    _pods_by_label: dict[tuple[str, str, str], set[str]] = attrs.field(factory=dict, init=False)
    _pod_labels: dict[tuple[str, str], dict[str, str]] = attrs.field(factory=dict, init=False)
    _services_by_label: dict[tuple[str, str, str], set[str]] = attrs.field(factory=dict, init=False)
    _service_selectors: dict[tuple[str, str], dict[str, str]] = attrs.field(
        factory=dict, init=False
    )
    _endpoint_work: dict[tuple[str, str], None] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for kind in resources.KINDS:
            self.resources[f"{kind.api_version}/{kind.plural}"] = kmock.ResourceInfo(
                kind=kind.kind,
                namespaced=kind.namespaced,
                singular=kind.singular_name,
                verbs=set(resources.VERBS),
                shortnames=set(kind.short_names),
                categories=set(kind.categories),
            )
        # Every change of every kind passes the hook (the EndpointSlice controller's informer).
        self._buses = _HookedBuses(self._observe)  # type: ignore[assignment]
        if self.faults.seed is not None:
            self._random.seed(self.faults.seed)
        self._add_node()

    async def __aenter__(self) -> FakeKubernetes:
        await super().__aenter__()
        self._kubelet_task = asyncio.create_task(self._kubelet(), name="fake-kubelet")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._kubelet_task is not None:
            self._kubelet_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._kubelet_task
        await super().__aexit__(*exc_info)

    # --- inspection, for tests and the simulated agent ------------------------------------

    def live(self, plural: str | None = None) -> Iterator[dict[str, Any]]:
        for (resource, _namespace), names in list(self._index.items()):
            if plural is None or resource.plural == plural:
                for obj in list(names.values()):
                    yield obj.raw

    def find(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        for (resource, in_namespace), names in self._index.items():
            if resource.plural == plural and in_namespace == namespace:
                obj = names.get(name)
                return None if obj is None else obj.raw
        return None

    # --- the node, and the EndpointSlice controller -------------------------------------

    def _add_node(self) -> None:
        """The one simulated node, as its kubelet registers it: its labels (which node
        selectors are matched against), its GPU capacity, Ready."""
        capacity = {
            "cpu": "64",
            "memory": "503Gi",
            "pods": "110",
            "ephemeral-storage": "1Ti",
            "nvidia.com/gpu": str(self.gpu_capacity),
        }
        raw = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_version(),
                "creationTimestamp": _now(),
                "labels": dict(NODE_LABELS),
            },
            "spec": {"podCIDR": "10.42.0.0/16", "podCIDRs": ["10.42.0.0/16"]},
            "status": {
                "capacity": capacity,
                "allocatable": dict(capacity),
                "conditions": [
                    {
                        **_condition("Ready", "True", "KubeletReady"),
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": _now(),
                    }
                ],
                "addresses": [
                    {"type": "InternalIP", "address": NODE_IP},
                    {"type": "Hostname", "address": NODE_NAME},
                ],
                "nodeInfo": {
                    "machineID": uuid.uuid4().hex,
                    "systemUUID": str(uuid.uuid4()),
                    "bootID": str(uuid.uuid4()),
                    "kernelVersion": "6.1.0",
                    "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "containerRuntimeVersion": "containerd://2.0.0",
                    "kubeletVersion": f"v{K8S_VERSION}.0",
                    "kubeProxyVersion": "",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }
        key: Key = (NODE, None, NODE_NAME)
        self.objects[key] = raw
        self._remember(key)

    def _pod_address(self, raw: dict[str, Any]) -> str:
        if self.pod_ip is not None and (address := self.pod_ip(raw)):
            return address
        self._ips_given += 1
        number = self._ips_given
        return f"10.42.{number // 250 % 250}.{1 + number % 250}"

    def _observe(self, resource: Any, event: dict[str, Any]) -> None:
        """Every change on its way to the watchers: pods and services mark the services whose
        EndpointSlice may change (the controller's informers, on the indexes: a change costs
        the same with 10 services or 10,000)."""
        if resource == POD:
            self._observe_pod(event)
        elif resource == SERVICE:
            self._observe_service(event)

    def _observe_pod(self, event: dict[str, Any]) -> None:
        metadata = event["object"]["metadata"]
        namespace, name = metadata.get("namespace") or "", metadata["name"]
        old = self._pod_labels.pop((namespace, name), {})
        new = {} if event["type"] == "DELETED" else dict(metadata.get("labels") or {})
        for label, value in old.items():
            names = self._pods_by_label.get((namespace, label, value))
            if names is not None:
                names.discard(name)
                if not names:
                    del self._pods_by_label[(namespace, label, value)]
        for label, value in new.items():
            self._pods_by_label.setdefault((namespace, label, value), set()).add(name)
        if new:
            self._pod_labels[(namespace, name)] = new
        for label, value in set(old.items()) | set(new.items()):  # those it left and joined
            for service in self._services_by_label.get((namespace, label, value), ()):
                self._endpoint_work[(namespace, service)] = None

    def _observe_service(self, event: dict[str, Any]) -> None:
        raw = event["object"]
        namespace, name = raw["metadata"].get("namespace") or "", raw["metadata"]["name"]
        for label, value in self._service_selectors.pop((namespace, name), {}).items():
            services = self._services_by_label.get((namespace, label, value))
            if services is not None:
                services.discard(name)
                if not services:
                    del self._services_by_label[(namespace, label, value)]
        if event["type"] == "DELETED":
            self._endpoint_work.pop((namespace, name), None)
            return  # its slice goes with it (owner reference)
        selector = dict((raw.get("spec") or {}).get("selector") or {})
        if selector:
            self._service_selectors[(namespace, name)] = selector
            for label, value in selector.items():
                self._services_by_label.setdefault((namespace, label, value), set()).add(name)
            self._endpoint_work[(namespace, name)] = None

    def _endpoint_step(self) -> list[tuple[str, dict[str, Any]]]:
        """The EndpointSlice controller: for each service marked, one slice (IPv4) of the pods
        its selector matches that have an address, with their readiness, owned by the
        service; written only when it changed."""
        changes: list[tuple[str, dict[str, Any]]] = []
        for namespace, name in list(self._endpoint_work):
            del self._endpoint_work[(namespace, name)]
            service = self._live((SERVICE, namespace, name))
            selector = self._service_selectors.get((namespace, name))
            if service is None or not selector:
                continue
            wanted = self._endpoints(namespace, selector)
            ports = [
                {
                    "name": port.get("name", ""),
                    "port": port.get("targetPort", port.get("port")),
                    "protocol": port.get("protocol", "TCP"),
                }
                for port in service.raw["spec"].get("ports") or []
                if isinstance(port.get("targetPort", port.get("port")), int)
            ]
            uid = service.raw["metadata"]["uid"]
            slice_name = f"{name}-{hashlib.sha256(uid.encode()).hexdigest()[:5]}"
            key: Key = (ENDPOINTSLICE, namespace, slice_name)
            existing = self._live(key)
            if existing is not None:
                if existing.raw.get("endpoints") == wanted and existing.raw.get("ports") == ports:
                    continue
                existing.patch(
                    {
                        "metadata": {"resourceVersion": self._next_version()},
                        "endpoints": wanted,
                        "ports": ports,
                    }
                )
                changes.append(("MODIFIED", existing.raw))
                continue
            self.objects[key] = {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name,
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": self._next_version(),
                    "creationTimestamp": _now(),
                    "generation": 1,
                    "generateName": f"{name}-",
                    "labels": {
                        SERVICE_NAME_LABEL: name,
                        "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER,
                    },
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Service",
                            "name": name,
                            "uid": uid,
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "addressType": "IPv4",
                "endpoints": wanted,
                "ports": ports,
            }
            self._remember(key)
            changes.append(("ADDED", self.objects[key].raw))
        return changes

    def _endpoints(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        names: set[str] | None = None
        for label, value in selector.items():
            found = self._pods_by_label.get((namespace, label, value), set())
            names = set(found) if names is None else names & found
        endpoints = []
        for pod_name in sorted(names or ()):
            pod = self._live((POD, namespace, pod_name))
            if pod is None:
                continue
            raw = pod.raw
            status = raw.get("status") or {}
            if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
                continue
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or []
            )
            terminating = bool(raw["metadata"].get("deletionTimestamp"))
            endpoint: dict[str, Any] = {
                "addresses": [status["podIP"]],
                "conditions": {
                    "ready": ready and not terminating,
                    "serving": ready,
                    "terminating": terminating,
                },
                "targetRef": {
                    "kind": "Pod",
                    "namespace": namespace,
                    "name": pod_name,
                    "uid": raw["metadata"]["uid"],
                },
            }
            if raw["spec"].get("nodeName"):
                endpoint["nodeName"] = raw["spec"]["nodeName"]
            endpoints.append(endpoint)
        return endpoints

    # --- the indexes -----------------------------------------------------------------------

    def _live(self, key: Key) -> kmock.Object | None:
        names = self._index.get((key[0], key[1]))
        return None if names is None else names.get(key[2])

    def _exists(self, plural: str, namespace: str, name: str) -> bool:
        return self.find(plural, namespace, name) is not None

    def _remember(self, key: Key) -> None:
        """A created object joins the indexes."""
        if key not in self.objects or self.objects[key].deleted:
            return  # deleted before its create finished answering
        obj = self.objects[key]
        metadata = obj.raw["metadata"]
        self._index.setdefault((key[0], key[1]), SortedDict())[key[2]] = obj
        self._uids[metadata["uid"]] = key
        for owner in metadata.get("ownerReferences") or []:
            self._dependents.setdefault(owner.get("uid"), set()).add(key)
        if key[0] == POD:
            self._kubelet_work[key] = None
        elif key[0] == DAEMONSET:
            self._daemonset_work[key] = asyncio.get_running_loop().time() + self.image_pull_s

    def _forget(self, key: Key, raw: dict[str, Any]) -> None:
        """A deleted object leaves the indexes, and memory (kmock would keep its history)."""
        names = self._index.get((key[0], key[1]))
        if names is not None:
            names.pop(key[2], None)
        metadata = raw.get("metadata") or {}
        self._uids.pop(metadata.get("uid", ""), None)
        for owner in metadata.get("ownerReferences") or []:
            dependents = self._dependents.get(owner.get("uid"))
            if dependents is not None:
                dependents.discard(key)
                if not dependents:
                    del self._dependents[owner.get("uid")]
        if key[0] == POD:
            self._kubelet_work.pop(key, None)
            self._delete_after.pop(metadata.get("uid", ""), None)
            self._pulls.pop(metadata.get("uid", ""), None)
        elif key[0] == DAEMONSET:
            self._daemonset_work.pop(key, None)
            if (raw.get("spec") or {}).get("nodeName"):
                self._gpus_used -= _gpus(raw)
        if key in self.objects:
            del self.objects[key]

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        """A Status as the API server writes it; no traceback for its own refusals (kmock adds
        one where `details` is empty)."""
        if isinstance(exc, kmock.KubernetesError):
            return aiohttp.web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": exc.message or "",
                    "reason": exc.reason or "",
                    "details": exc.details or {},
                    "code": exc.status,
                },
                status=exc.status or 500,
            )
        return await super()._render_error(exc)

    # --- discovery and the OpenAPI documents --------------------------------------------

    async def _serve_version(self, request: kmock.Request) -> Any:
        assert request.resource is not None
        document = resources.resource_list(
            str(request.resource.group or ""), str(request.resource.version or "")
        )
        if document is None:
            raise _no_such_resource()
        return document

    async def _serve_group(self, request: kmock.Request) -> Any:
        assert request.resource is not None
        document = resources.group(str(request.resource.group or ""))
        if document is None:
            raise _no_such_resource()
        return document

    async def _serve_apis(self, request: kmock.Request) -> Any:
        return resources.group_list()

    async def _serve_server_version(self, request: kmock.Request) -> Any:
        major, minor = K8S_VERSION.split(".")
        return {
            "major": major,
            "minor": minor,
            "gitVersion": f"v{K8S_VERSION}.0-vdi-fake",
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "",
            "compiler": "fake",
            "platform": "linux/amd64",
        }

    def _serve_openapi(self, request: kmock.Request) -> aiohttp.web.Response:
        """`/openapi/v3` and its group versions (JSON); `/openapi/v2` is protobuf only for
        client-go, which the fake does not speak: 404, as a server without it answers."""
        path = request.url.path.rstrip("/")
        if path == "/openapi/v3":
            return aiohttp.web.json_response(openapi.root())
        document = openapi.group_version(path.removeprefix("/openapi/v3/"))
        if not path.startswith("/openapi/v3/") or document is None:
            raise _no_such_resource()
        return aiohttp.web.Response(body=document, content_type="application/json")

    # --- the request path ----------------------------------------------------------------

    def _next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def __iter__(self) -> Iterator[kmock.Request]:
        """The requests kmock's reactions are matched against. kmock finds a request's reaction
        by iterating every request it keeps (`request in reaction`), so each call cost as much
        as the log was long, or, with only the calls in flight kept, as many as were in flight
        (at 20 ms of latency most of the fake's CPU). Without a log, a request sees only itself
        (the task's own request)."""
        if self.keep_request_log:
            yield from super().__iter__()
            return
        current = _CURRENT_REQUEST.get()
        if current is not None:
            yield current

    async def _handle(self, request: kmock.Request) -> Any:
        if not self.keep_request_log:
            self._requests.clear()  # kmock appended it; nothing reads the log but assertions
        token = _CURRENT_REQUEST.set(request)
        try:
            return await self._serve(request)
        finally:
            _CURRENT_REQUEST.reset(token)

    async def _serve(self, request: kmock.Request) -> Any:
        if self.token is not None:
            given = _header(request, "authorization")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                raise kmock.KubernetesError(
                    status=401, reason="Unauthorized", message="Unauthorized", details={}
                )
        hold_s = 0.0
        if request.url.path.startswith("/openapi/"):
            return self._serve_openapi(request)
        if request.resource is not None and request.resource.plural is not None:
            kind = self._kind(request)
            self.api_calls += 1
            if request.action is not None:
                # what RBAC calls the verb; the chart's Role is checked against this log
                verb = RBAC_VERBS.get(request.action.name, request.action.name.lower())
                self.verbs.add((str(request.resource.group), str(request.resource.plural), verb))
            hold_s = await self._inject(request)
            if request.name is not None and request.action in (
                kmock.action.FETCH,
                kmock.action.UPDATE,
                kmock.action.DELETE,
            ):
                if self._live(_key(request)) is None:
                    raise _not_found(kind, request.name)
            if request.action == kmock.action.CREATE:
                self._admit(request, kind)
                if self._live(_key(request)) is not None:
                    raise kmock.KubernetesError(
                        status=409,
                        reason="AlreadyExists",
                        message=f'{kind.plural} "{_key(request)[2]}" already exists',
                        details={"name": _key(request)[2], "kind": kind.plural},
                    )
            elif request.action == kmock.action.WATCH:
                _check_selectors(request)
                return await self._watch(request, kind, hold_s)
            elif request.action == kmock.action.UPDATE and isinstance(request.data, dict):
                request.data.setdefault("metadata", {})["resourceVersion"] = self._next_version()
            elif request.action == kmock.action.LIST:
                _check_selectors(request)
            elif (
                request.action == kmock.action.DELETE
                and request.resource == POD
                and self.termination_delay_s
            ):
                response = await self._begin_pod_termination(request)
                await asyncio.sleep(hold_s)
                return response
        response = await super()._handle(request)
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            self._remember(_key(request))
            if response.status == 200 and not response.prepared:
                response.set_status(201)  # Created, as the API server answers a create
        elif request.action == kmock.action.DELETE and request.name is not None:
            key = _key(request)
            if key in self.objects and self.objects[key].deleted:
                raw = self.objects[key].last.raw
                self._forget(key, raw)
                await self._collect_garbage([raw["metadata"]["uid"]])
        if hold_s:
            await asyncio.sleep(hold_s)
        return response

    async def _inject(self, request: kmock.Request) -> float:
        plan = self.faults
        if plan.latency_s:
            await asyncio.sleep(plan.latency_s)
        if (
            request.action == kmock.action.WATCH
            or not plan.rate
            or self._random.random() >= plan.rate
        ):
            return 0.0
        self.faults_injected += 1
        kind = self._random.choice(plan.kinds)
        if kind == "429":
            raise kmock.KubernetesError(
                status=429,
                reason="TooManyRequests",
                message="injected: slow down",
                details={"retryAfterSeconds": 1},
            )
        if kind == "timeout":
            return plan.timeout_hold_s
        raise kmock.KubernetesError(
            status=500, reason="InternalError", message="injected: etcd hiccup"
        )

    def _kind(self, request: kmock.Request) -> Kind:
        """The kind a request addresses; 404 for one this server does not serve."""
        assert request.resource is not None
        kind = resources.find(
            request.resource.group, request.resource.version, request.resource.plural
        )
        if kind is None:
            raise _no_such_resource()
        return kind

    def _admit(self, request: kmock.Request, kind: Kind) -> None:
        data = request.data
        if not isinstance(data, dict):
            raise kmock.KubernetesError(
                status=400, reason="BadRequest", message="the body is not a JSON object"
            )
        metadata = data.setdefault("metadata", {})
        name = metadata.get("name", "")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise _invalid(
                kind.kind,
                str(name),
                [("metadata.name", "Invalid value: a lowercase RFC 1123 subdomain")],
            )
        if not kind.namespaced:
            metadata.pop("namespace", None)
        elif (
            request.namespace
            and metadata.setdefault("namespace", request.namespace) != request.namespace
        ):
            raise kmock.KubernetesError(
                status=400,
                reason="BadRequest",
                message="the namespace of the object does not match the namespace of the URL",
            )
        if data.get("kind") != kind.kind or data.get("apiVersion") != kind.api_version:
            raise kmock.KubernetesError(
                status=400,
                reason="BadRequest",
                message=f"{data.get('apiVersion')}/{data.get('kind')} does not match the URL "
                f"({kind.api_version}/{kind.kind})",
            )
        if self.validate:
            validator = _validator(kind)
            if validator is not None:
                errors = _unknown_fields(
                    kind, validator, data, request.params.get("fieldValidation") or "Strict"
                )
                if errors:
                    raise _invalid(
                        kind.kind,
                        name,
                        [(_field_path(e.path), e.message) for e in errors[:10]],
                    )
            problems = _semantic_problems(kind.kind, data)
            if problems:
                raise _invalid(kind.kind, name, problems)
        if kind.kind == "Secret" and "stringData" in data:
            encoded = {
                k: base64.b64encode(str(v).encode()).decode()
                for k, v in data.pop("stringData").items()
            }
            data["data"] = {**data.get("data", {}), **encoded}
        metadata.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_version(),
            creationTimestamp=_now(),
            generation=1,
        )
        if kind.kind == "Pod":
            for container in [
                *data["spec"].get("initContainers", []),
                *data["spec"].get("containers", []),
            ]:
                for port in container.get("ports") or []:
                    port.setdefault("protocol", "TCP")
            data["status"] = {"phase": "Pending", "qosClass": _qos_class(data)}
            if self.on_pod_admitted is not None:
                self.on_pod_admitted(data)
        elif kind.kind == "Service":
            self._default_service(data)

    def _default_service(self, data: dict[str, Any]) -> None:
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

    async def _serve_list(self, request: kmock.Request) -> Any:
        """A list: label selector, `limit` and `continue` pages in name order (served from the
        live state, not from a snapshot as etcd does), and metadata only when the Accept header
        asks for a PartialObjectMetadataList."""
        matches = _matcher(request)
        limit = int(request.params.get("limit") or 0)
        after = _decode_continue(request.params.get("continue"))
        items: list[dict[str, Any]] = []
        more = False
        async with self._lock:
            for raw in self._matching(request, after):
                if not matches(raw):
                    continue
                if limit and len(items) == limit:
                    more = True
                    break
                items.append(raw)
            version = str(self._resource_version)
        kind = self._kind(request)
        metadata: dict[str, Any] = {"resourceVersion": version}
        if more:
            last = items[-1]["metadata"]
            metadata["continue"] = _encode_continue(last.get("namespace"), last["name"])
        accept = _accept(request)
        if tables.wants_table(accept):
            include = request.params.get("includeObject") or "Metadata"
            return tables.table(kind.plural, items, metadata, include_object=include)
        if METADATA_LIST in accept.replace(" ", ""):
            meta = "meta.k8s.io/v1"
            return {
                "apiVersion": meta,
                "kind": "PartialObjectMetadataList",
                "metadata": metadata,
                "items": [
                    {"apiVersion": meta, "kind": "PartialObjectMetadata", "metadata": i["metadata"]}
                    for i in items
                ],
            }
        return {
            "apiVersion": kind.api_version,
            "kind": f"{kind.kind}List",
            "metadata": metadata,
            "items": items,
        }

    def _matching(
        self, request: kmock.Request, after: tuple[str | None, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The live objects a list or watch addresses, by namespace then name, after `after`."""
        groups = sorted(
            (
                (namespace or "", names)
                for (resource, namespace), names in self._index.items()
                if resource == request.resource
                and (request.namespace is None or namespace == request.namespace)
            ),
            key=lambda group: group[0],
        )
        for namespace, names in groups:
            if after is not None and namespace < (after[0] or ""):
                continue
            if after is not None and namespace == (after[0] or ""):
                names_after = names.irange(minimum=after[1], inclusive=(False, True))
                for name in names_after:
                    yield names[name].raw
            else:
                for obj in names.values():
                    yield obj.raw

    # kmock's own lookups scan every object; these use the index.
    async def _serve_fetch(self, request: kmock.Request) -> Any:
        kind = self._kind(request)
        obj = self._live(_key(request))
        if obj is None:
            raise _not_found(kind, str(request.name))
        if tables.wants_table(_accept(request)):
            include = request.params.get("includeObject") or "Metadata"
            metadata = {"resourceVersion": obj.raw["metadata"].get("resourceVersion", "")}
            return tables.table(kind.plural, [obj.raw], metadata, include_object=include)
        return obj.raw

    async def _serve_create(self, request: kmock.Request) -> Any:
        return self.objects[_key(request)].raw

    async def _serve_update(self, request: kmock.Request) -> Any:
        return self.objects[_key(request)].last.raw

    async def _serve_delete(self, request: kmock.Request) -> Any:
        return self.objects[_key(request)].last.raw

    async def _watch(
        self, request: kmock.Request, kind: Kind, hold_s: float
    ) -> aiohttp.web.StreamResponse:
        """A watch, as newline-delimited JSON (`application/json`, as client-go requires):
        ADDED for the objects changed since `resourceVersion` (all of them without one), then
        every change. With `sendInitialEvents=true` (watch-list, as client-go's informers ask)
        the initial events end with a BOOKMARK annotated `k8s.io/initial-events-end`. Tables
        (kubectl get -w) when the Accept header asks for them."""
        matches = _matcher(request)
        params = request.params
        timeout_s = float(params.get("timeoutSeconds") or 0) or None
        since_text = str(params.get("resourceVersion") or "")
        since = int(since_text) if since_text.isdigit() else 0
        watch_list = params.get("sendInitialEvents") == "true"
        as_table = tables.wants_table(_accept(request))
        include = params.get("includeObject") or "Metadata"
        assert request.resource is not None
        assert request._raw_request is not None
        bus = self._buses[request.resource]
        mark = await bus.mark()  # before the snapshot: no change falls between the two

        def render(kind_of_event: str, raw: dict[str, Any]) -> bytes:
            obj = raw
            if as_table:
                meta = {"resourceVersion": raw["metadata"].get("resourceVersion", "")}
                obj = tables.table(kind.plural, [raw], meta, include_object=include)
            return json.dumps({"type": kind_of_event, "object": obj}).encode() + b"\n"

        response = aiohttp.web.StreamResponse(
            status=200, headers={"Content-Type": "application/json"}
        )
        try:
            async with self._lock:
                initial = [
                    raw
                    for raw in self._matching(request)
                    if matches(raw)
                    and (watch_list or int(raw["metadata"].get("resourceVersion", 0)) > since)
                ]
                snapshot = self._resource_version
            if hold_s:
                await asyncio.sleep(hold_s)
            await response.prepare(request._raw_request)
            for raw in initial:
                await response.write(render("ADDED", raw))
            if watch_list:
                bookmark = {
                    "kind": kind.kind,
                    "apiVersion": kind.api_version,
                    "metadata": {
                        "resourceVersion": str(snapshot),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                }
                await response.write(
                    json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    async for event in bus.stream(since=mark):
                        raw = event.get("object", {})
                        metadata = raw.get("metadata", {})
                        if (
                            request.namespace is not None
                            and metadata.get("namespace") != request.namespace
                        ):
                            continue
                        if event["type"] != "DELETED" and (
                            int(metadata.get("resourceVersion") or 0) <= snapshot
                        ):
                            continue  # the snapshot has it already
                        if matches(raw):
                            await response.write(render(event["type"], raw))
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the watcher went away
        finally:
            await bus.unmark(mark)
        return response

    # --- deletion and garbage collection -------------------------------------------------

    async def _begin_pod_termination(self, request: kmock.Request) -> Any:
        async with self._lock:
            assert request.resource is not None
            assert request.name is not None
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            obj = self.objects[key]
            if not obj.raw["metadata"].get("deletionTimestamp"):
                obj.patch(
                    {
                        "metadata": {
                            "deletionTimestamp": _now(),
                            "resourceVersion": self._next_version(),
                        }
                    }
                )
                uid = obj.raw["metadata"]["uid"]
                self._delete_after[uid] = (
                    asyncio.get_running_loop().time() + self.termination_delay_s
                )
                if self.on_pod_terminating is not None:
                    self._delete_after[uid] = math.inf  # until its processes are stopped
                    task = asyncio.create_task(self._stop_containers(obj.raw))
                    self._runtime_tasks.add(task)
                    task.add_done_callback(self._runtime_tasks.discard)
                self._kubelet_work[key] = None
                if obj.raw["spec"].get("nodeName"):
                    self._record_event(obj.raw, "Killing", "Stopping container desktop")
            raw = obj.raw
            events, self._new_events = self._new_events, []
        await self._buses[POD].put({"type": "MODIFIED", "object": raw})
        for event in events:
            await self._buses[EVENT].put({"type": "ADDED", "object": event})
        return aiohttp.web.json_response(raw)

    async def _stop_containers(self, raw: dict[str, Any]) -> None:
        """The runtime stops the pod's processes; then the kubelet may delete it."""
        assert self.on_pod_terminating is not None
        uid = raw["metadata"]["uid"]
        try:
            await self.on_pod_terminating(raw)
        finally:
            if uid in self._delete_after:
                self._delete_after[uid] = 0.0

    async def container_exited(
        self, namespace: str, name: str, exit_code: int | None, message: str
    ) -> None:
        """The runtime says the pod's container died: as a kubelet about to restart it, the
        pod says CrashLoopBackOff (with the exit code and why) and is not ready."""
        async with self._lock:
            key: Key = (POD, namespace, name)
            obj = self._live(key)
            if obj is None or obj.raw["metadata"].get("deletionTimestamp"):
                return
            raw = obj.raw
            image = raw["spec"]["containers"][0]["image"]
            previous = (raw.get("status", {}).get("containerStatuses") or [{}])[0]
            restarts = int(previous.get("restartCount", 0)) + 1
            waiting = {"reason": "CrashLoopBackOff", "message": message}
            container = _container_status(image, waiting=waiting, restarts=restarts)
            container["lastState"] = {
                "terminated": {
                    "exitCode": -1 if exit_code is None else exit_code,
                    "reason": "Error",
                    "message": message,
                    "finishedAt": _now(),
                }
            }
            obj.patch(
                {
                    "metadata": {"resourceVersion": self._next_version()},
                    "status": {
                        "conditions": [
                            _condition("PodScheduled", "True"),
                            _condition("Ready", "False"),
                        ],
                        "containerStatuses": [container],
                    },
                }
            )
            self._record_event(
                raw,
                "BackOff",
                f"Back-off restarting failed container desktop in pod {name}",
                warning=True,
            )
            raw = obj.raw
            events, self._new_events = self._new_events, []
        await self._buses[POD].put({"type": "MODIFIED", "object": raw})
        for event in events:
            await self._buses[EVENT].put({"type": "ADDED", "object": event})

    async def _collect_garbage(self, gone: list[str]) -> None:
        """Delete the dependents of the objects with uids `gone` whose owners are all gone
        (background propagation), and theirs in turn."""
        while gone:
            events = []
            async with self._lock:
                next_gone = []
                for uid in gone:
                    for key in list(self._dependents.pop(uid, ())):
                        obj = self._live(key)
                        if obj is None:
                            continue
                        raw = obj.raw
                        owners = raw["metadata"].get("ownerReferences") or []
                        if any(owner.get("uid") in self._uids for owner in owners):
                            continue
                        obj.delete()
                        self._forget(key, raw)
                        events.append((key[0], {"type": "DELETED", "object": raw}))
                        next_gone.append(raw["metadata"]["uid"])
            for resource, event in events:
                await self._buses[resource].put(event)
            gone = next_gone

    # --- the scheduler and kubelet -------------------------------------------------------

    async def _kubelet(self) -> None:
        while True:
            await asyncio.sleep(self.kubelet_interval_s)
            async with self._lock:
                changes = self._kubelet_step()
                daemonsets = self._daemonset_step()
                events, self._new_events = self._new_events, []
                slices = self._endpoint_step()
            gone = []
            for change, raw in changes:
                await self._buses[POD].put({"type": change, "object": raw})
                if change == "DELETED":
                    gone.append(raw["metadata"]["uid"])
                if (
                    change == "MODIFIED"
                    and raw["status"].get("phase") == "Running"
                    and self.on_pod_running
                ):
                    if _just_started(raw):
                        asyncio.create_task(self.on_pod_running(raw))
            for raw in daemonsets:
                await self._buses[DAEMONSET].put({"type": "MODIFIED", "object": raw})
            for raw in events:
                await self._buses[EVENT].put({"type": "ADDED", "object": raw})
            for change, raw in slices:
                await self._buses[ENDPOINTSLICE].put({"type": change, "object": raw})
            await self._collect_garbage(gone)

    def _record_event(
        self,
        pod: dict[str, Any],
        reason: str,
        message: str,
        *,
        warning: bool = False,
        component: str = "kubelet",
    ) -> None:
        """A core/v1 Event about `pod`, as the scheduler or the kubelet writes it (under the lock;
        the kubelet's tick puts it on the watch bus)."""
        metadata = pod["metadata"]
        namespace, now = metadata["namespace"], _now()
        # named as the API server's recorder names it, `<object>.<UnixNano in hex>`: in the
        # order they happened (kubectl describe sorts them; equal timestamps keep this order)
        self._event_clock = max(self._event_clock + 1, time.time_ns())
        name = f"{metadata['name']}.{self._event_clock:x}"
        source = {"component": component}
        if component == "kubelet":
            source["host"] = NODE_NAME
        raw = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_version(),
                "creationTimestamp": now,
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": metadata["name"],
                "namespace": namespace,
                "uid": metadata["uid"],
            },
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "source": source,
            "reportingComponent": component,
            "reportingInstance": NODE_NAME if component == "kubelet" else "",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        key: Key = (EVENT, namespace, name)
        self.objects[key] = raw
        self._remember(key)
        self._events.append(key)
        self._new_events.append(self.objects[key].raw)
        while len(self._events) > EVENTS_KEPT:
            old = self._events.popleft()
            obj = self._live(old)
            if obj is not None:
                obj.delete()
                self._forget(old, obj.last.raw)

    def _daemonset_step(self) -> list[dict[str, Any]]:
        """The DaemonSet controller and the pulls its pods do, on the one node: once the image
        pull time has passed, the node has the images (if the node selector matches it)."""
        now = asyncio.get_running_loop().time()
        changed = []
        for key, pulled_at in list(self._daemonset_work.items()):
            if now < pulled_at:
                continue
            del self._daemonset_work[key]
            obj = self._live(key)
            if obj is None:
                continue
            template = (obj.raw.get("spec") or {}).get("template") or {}
            spec = template.get("spec") or {}
            selector = spec.get("nodeSelector") or {}
            fits = all(NODE_LABELS.get(k) == v for k, v in selector.items())
            if fits:
                for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
                    self.node_images.add(container["image"])
            count = 1 if fits else 0
            obj.patch(
                {
                    "metadata": {"resourceVersion": self._next_version()},
                    "status": {
                        "observedGeneration": 1,
                        "desiredNumberScheduled": count,
                        "currentNumberScheduled": count,
                        "updatedNumberScheduled": count,
                        "numberReady": count,
                        "numberAvailable": count,
                        "numberMisscheduled": 0,
                    },
                }
            )
            changed.append(obj.raw)
        return changed

    def _kubelet_step(self) -> list[tuple[str, dict[str, Any]]]:
        """One tick over the pods with something left to do (a running pod has none until it is
        deleted): schedule, pull, start, crash, finish terminating."""
        changes: list[tuple[str, dict[str, Any]]] = []
        now = asyncio.get_running_loop().time()
        for key in list(self._kubelet_work):
            obj = self._live(key)
            if obj is None:
                self._kubelet_work.pop(key, None)
                continue
            raw = obj.raw
            metadata = raw["metadata"]
            if metadata.get("deletionTimestamp"):
                if now >= self._delete_after.get(metadata["uid"], 0):
                    obj.delete()
                    self._forget(key, raw)
                    changes.append(("DELETED", raw))
                continue
            status = self._pod_status(raw, now)
            if status is None:
                if (raw.get("status") or {}).get("phase") == "Running":
                    self._kubelet_work.pop(key, None)  # settled: running, or crashed for good
                continue
            if status.pop("_scheduled", False):
                self._gpus_used += _gpus(raw)
                obj.patch({"spec": {"nodeName": NODE_NAME}})
                self._record_event(
                    raw,
                    "Scheduled",
                    f"Successfully assigned {metadata['namespace']}/{metadata['name']} "
                    f"to {NODE_NAME}",
                    component="default-scheduler",
                )
            obj.patch({"status": status, "metadata": {"resourceVersion": self._next_version()}})
            changes.append(("MODIFIED", obj.raw))
        return changes

    def _pull(self, raw: dict[str, Any], image: str, now: float) -> bool:
        """The image pull of a scheduled pod (its events on the way): whether it is done."""
        uid = raw["metadata"]["uid"]
        pulled_at = self._pulls.get(uid)
        if pulled_at is None:
            if image in self.node_images:
                self._pulls[uid] = -1.0
                self._record_event(
                    raw, "Pulled", f'Container image "{image}" already present on machine'
                )
                return True
            self._pulls[uid] = pulled_at = now + self.image_pull_s
            self._record_event(raw, "Pulling", f'Pulling image "{image}"')
        if pulled_at < 0:
            return True
        if now < pulled_at:
            return False
        self._pulls[uid] = -1.0
        if self.keep_pulled_images:
            self.node_images.add(image)
        self._record_event(
            raw, "Pulled", f'Successfully pulled image "{image}" in {self.image_pull_s:.3f}s'
        )
        return True

    def _pod_status(self, raw: dict[str, Any], now: float) -> dict[str, Any] | None:
        """The next status of a pod, or None when it does not change."""
        spec, status = raw["spec"], raw.get("status", {})
        namespace = raw["metadata"]["namespace"]
        if not spec.get("nodeName"):
            missing = [
                c for c in _claims(raw) if not self._exists("persistentvolumeclaims", namespace, c)
            ]
            if missing:
                message = f'persistentvolumeclaim "{missing[0]}" not found'
            elif self._gpus_used + _gpus(raw) > self.gpu_capacity:
                message = UNSCHEDULABLE_GPU
            else:
                return {"_scheduled": True, "conditions": [_condition("PodScheduled", "True")]}
            wanted = [_condition("PodScheduled", "False", "Unschedulable", message)]
            if _same_conditions(status, wanted):
                return None
            self._record_event(
                raw, "FailedScheduling", message, warning=True, component="default-scheduler"
            )
            return {"phase": "Pending", "conditions": wanted}
        if status.get("phase") == "Running" and not _crashing(raw, self.crashing_images):
            return None
        image = spec["containers"][0]["image"]
        scheduled = _condition("PodScheduled", "True")
        current = (status.get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {})
        if any(bad in image for bad in self.failing_images):
            waiting = {
                "reason": "ErrImagePull",
                "message": f'failed to pull and unpack image "{image}": not found',
            }
            if current.get("reason") != waiting["reason"]:
                self._record_event(raw, "Pulling", f'Pulling image "{image}"')
                self._record_event(
                    raw,
                    "Failed",
                    f'Failed to pull image "{image}": {waiting["message"]}',
                    warning=True,
                )
        elif not self._pull(raw, image, now):
            waiting = {"reason": "ContainerCreating", "message": ""}
        elif missing_secrets := [
            s for s in _secrets(raw) if not self._exists("secrets", namespace, s)
        ]:
            waiting = {
                "reason": "CreateContainerConfigError",
                "message": f'secret "{missing_secrets[0]}" not found',
            }
            if current.get("reason") != waiting["reason"]:
                self._record_event(raw, "Failed", f"Error: {waiting['message']}", warning=True)
        elif any(bad in image for bad in self.crashing_images):
            restarts = int((status.get("containerStatuses") or [{}])[0].get("restartCount", 0)) + 1
            if restarts > 3:
                return None
            waiting = {
                "reason": "CrashLoopBackOff",
                "message": "back-off 10s restarting failed container=desktop",
            }
            if restarts == 1:
                self._record_event(raw, "Created", "Created container: desktop")
                self._record_event(raw, "Started", "Started container desktop")
            self._record_event(
                raw,
                "BackOff",
                f"Back-off restarting failed container desktop in pod {raw['metadata']['name']}",
                warning=True,
            )
            return {
                "phase": "Running",
                "conditions": [scheduled, _condition("Ready", "False")],
                "containerStatuses": [_container_status(image, waiting=waiting, restarts=restarts)],
            }
        else:
            self._record_event(raw, "Created", "Created container: desktop")
            self._record_event(raw, "Started", "Started container desktop")
            return {
                "phase": "Running",
                "podIP": (address := self._pod_address(raw)),
                "podIPs": [{"ip": address}],
                "hostIP": NODE_IP,
                "hostIPs": [{"ip": NODE_IP}],
                "startTime": _now(),
                "conditions": [scheduled, _condition("Ready", "True")],
                "containerStatuses": [_container_status(image, running=True)],
            }
        if current.get("reason") == waiting["reason"]:
            return None
        return {
            "phase": "Pending",
            "conditions": [scheduled],
            "containerStatuses": [_container_status(image, waiting=waiting)],
        }


def _header(request: kmock.Request, name: str) -> str:
    """A request header by its lower-case name, or ''."""
    return next((v for k, v in request.headers.items() if k.lower() == name), "")


def _accept(request: kmock.Request) -> str:
    return _header(request, "accept")


def _matcher(request: kmock.Request) -> Callable[[dict[str, Any]], bool]:
    """A list's or watch's label and field selectors, as one predicate on an object."""
    labels = selectors.parse(request.params.get("labelSelector"))
    plural = str(request.resource.plural if request.resource else "")
    fields = selectors.parse_fields(request.params.get("fieldSelector"), plural)
    return lambda raw: labels(raw.get("metadata", {}).get("labels") or {}) and fields(raw)


def _key(request: kmock.Request) -> Key:
    """The object a request addresses: from the URL, or for a create from the body."""
    name = request.name
    namespace = request.namespace
    if name is None and isinstance(request.data, dict):
        metadata = request.data.get("metadata") or {}
        name, namespace = metadata.get("name"), namespace or metadata.get("namespace")
    return (request.resource, namespace, str(name))


def _encode_continue(namespace: str | None, name: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([namespace, name]).encode()).decode()


def _decode_continue(token: str | None) -> tuple[str | None, str] | None:
    if not token:
        return None
    try:
        namespace, name = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(name, str) or not (namespace is None or isinstance(namespace, str)):
            raise ValueError(token)
    except (ValueError, TypeError, binascii.Error):
        raise kmock.KubernetesError(
            status=400, reason="BadRequest", message="invalid continue token"
        ) from None
    return namespace, name


def _just_started(raw: dict[str, Any]) -> bool:
    statuses = raw["status"].get("containerStatuses") or []
    return bool(statuses and statuses[0].get("ready"))


def _crashing(raw: dict[str, Any], crashing: tuple[str, ...]) -> bool:
    return any(bad in raw["spec"]["containers"][0]["image"] for bad in crashing)


def _qos_class(raw: dict[str, Any]) -> str:
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


def _gpus(raw: dict[str, Any]) -> int:
    total = 0
    for container in raw["spec"].get("containers", []):
        total += int(container.get("resources", {}).get("requests", {}).get("nvidia.com/gpu", 0))
    return total


def _claims(raw: dict[str, Any]) -> list[str]:
    return [
        v["persistentVolumeClaim"]["claimName"]
        for v in raw["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    ]


def _secrets(raw: dict[str, Any]) -> list[str]:
    names = []
    for container in raw["spec"].get("containers", []):
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] not in names:
                names.append(ref["name"])
    return names


def _condition(
    kind: str, status: str, reason: str | None = None, message: str | None = None
) -> dict[str, Any]:
    condition = {"type": kind, "status": status, "lastTransitionTime": _now()}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _same_conditions(status: dict[str, Any], wanted: list[dict[str, Any]]) -> bool:
    def strip(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in items]

    return strip(status.get("conditions") or []) == strip(wanted)


def _container_status(
    image: str, *, running: bool = False, waiting: dict[str, str] | None = None, restarts: int = 0
) -> dict[str, Any]:
    state: dict[str, Any] = (
        {"running": {"startedAt": _now()}} if running else {"waiting": waiting or {}}
    )
    return {
        "name": "desktop",
        "image": image,
        "imageID": "",
        "ready": running,
        "started": running,
        "restartCount": restarts,
        "state": state,
    }


def write_kubeconfig(
    path: Path,
    server: str,
    namespace: str | None = None,
    token: str | None = None,
    ca_pem: bytes | None = None,
) -> Path:
    """A kubeconfig that points the real client (or `vdi-control serve`, or kubectl) at a fake
    API; owner-only when it carries a token."""
    context: dict[str, str] = {"cluster": "fake", "user": "fake"}
    if namespace:
        context["namespace"] = namespace
    if token is not None:
        path.unlink(missing_ok=True)
        path.touch(mode=0o600)
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "fake",
                        "cluster": {"server": server}
                        | (
                            {"certificate-authority-data": base64.b64encode(ca_pem).decode()}
                            if ca_pem
                            else {}
                        ),
                    }
                ],
                "users": [{"name": "fake", "user": {"token": token} if token else {}}],
                "contexts": [{"name": "fake", "context": context}],
                "current-context": "fake",
            }
        )
    )
    return path


@asynccontextmanager
async def start_fake_cluster(**options: Any) -> AsyncIterator[tuple[FakeKubernetes, str]]:
    """A FakeKubernetes served on a loopback port: (fake, base URL for the kubernetes client).
    With a `token`, as a real API server: HTTPS (a CA made for it, `fake.ca_pem`) and the
    bearer token asked of every request (clients do not send tokens over plain HTTP)."""
    fake = FakeKubernetes(**options)
    if fake.token is None:
        async with fake, kmock.Server(fake) as server:
            yield fake, str(server.url).rstrip("/")
        return
    certificates = tls.make_certificates(
        "vdi-control in-process API", dns_names=("localhost",), ip_addresses=("127.0.0.1",)
    )
    fake.ca_pem = certificates.ca_pem
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory(prefix="vdi-fake-tls-") as tmp:  # 0700, gone after load
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert.write_bytes(certificates.cert_pem)
        key.write_bytes(certificates.key_pem)
        context.load_cert_chain(cert, key)
    async with fake:
        # open watches are cut at shutdown, not waited for (aiohttp's default: 60 s)
        runner = aiohttp.web.ServerRunner(aiohttp.web.Server(fake), shutdown_timeout=1.0)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        try:
            port = runner.addresses[0][1]
            yield fake, f"https://127.0.0.1:{port}"
        finally:
            await runner.cleanup()


__all__ = ["FakeKubernetes", "FaultPlan", "start_fake_cluster", "write_kubeconfig"]
