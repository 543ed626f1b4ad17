"""The controllers a cluster runs beside its API server, as far as the control plane meets
them: the EndpointSlice controller (a Service's ready pods, which Traefik routes to), the
DaemonSet controller (a pre-pull DaemonSet fills the node's image store), and the garbage
collector (dependents go with their owners)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from kubefake.kubelet import fits_node
from kubefake.store import ENDPOINTSLICE, POD, SERVICE, Index, Key, Raw, Store, now

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SLICE_MANAGER = "endpointslice-controller.k8s.io"


class EndpointSlices:
    """Watches every change to pods and services (its informers, on indexes: a change costs
    the same with 10 services or 10,000) and marks the services whose slice may change; each
    kubelet tick brings those slices up to date."""

    def __init__(self, store: Store) -> None:
        self._store = store
        # pods by (namespace, label, value); services by (namespace, selector label, value);
        # the labels each pod had and the selector each service has; the services to do
        self._pods_by_label: dict[tuple[str, str, str], set[str]] = {}
        self._pod_labels: dict[tuple[str, str], dict[str, str]] = {}
        self._services_by_label: dict[tuple[str, str, str], set[str]] = {}
        self._service_selectors: dict[tuple[str, str], dict[str, str]] = {}
        self.work: dict[tuple[str, str], None] = {}

    def observe(self, resource: Any, event: Raw) -> None:
        """A change on its way to the watchers."""
        if resource == POD:
            self.observe_pod(event)
        elif resource == SERVICE:
            self.observe_service(event)

    def observe_pod(self, event: Raw) -> None:
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
                self.work[(namespace, service)] = None

    def observe_service(self, event: Raw) -> None:
        raw = event["object"]
        namespace, name = raw["metadata"].get("namespace") or "", raw["metadata"]["name"]
        for label, value in self._service_selectors.pop((namespace, name), {}).items():
            services = self._services_by_label.get((namespace, label, value))
            if services is not None:
                services.discard(name)
                if not services:
                    del self._services_by_label[(namespace, label, value)]
        if event["type"] == "DELETED":
            self.work.pop((namespace, name), None)
            return  # its slice goes with it (owner reference)
        selector = dict((raw.get("spec") or {}).get("selector") or {})
        if selector:
            self._service_selectors[(namespace, name)] = selector
            for label, value in selector.items():
                self._services_by_label.setdefault((namespace, label, value), set()).add(name)
            self.work[(namespace, name)] = None

    def step(self) -> list[tuple[str, Raw]]:
        """For each service marked, one slice (IPv4) of the pods its selector matches that
        have an address, with their readiness, owned by the service; written only when it
        changed."""
        changes: list[tuple[str, Raw]] = []
        for namespace, name in list(self.work):
            del self.work[(namespace, name)]
            service = self._store.live_object((SERVICE, namespace, name))
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
            existing = self._store.live_object(key)
            if existing is not None:
                if existing.raw.get("endpoints") == wanted and existing.raw.get("ports") == ports:
                    continue
                existing.patch(
                    {
                        "metadata": {"resourceVersion": self._store.next_version()},
                        "endpoints": wanted,
                        "ports": ports,
                    }
                )
                changes.append(("MODIFIED", existing.raw))
                continue
            version = self._store.next_version()
            self._store.objects[key] = _slice(
                name, namespace, slice_name, uid, version, wanted, ports
            )
            self._store.remember(key)
            changes.append(("ADDED", self._store.objects[key].raw))
        return changes

    def _endpoints(self, namespace: str, selector: dict[str, str]) -> list[Raw]:
        names: set[str] | None = None
        for label, value in selector.items():
            found = self._pods_by_label.get((namespace, label, value), set())
            names = set(found) if names is None else names & found
        endpoints = []
        for pod_name in sorted(names or ()):
            pod = self._store.live_object((POD, namespace, pod_name))
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
            endpoint: Raw = {
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


def _slice(
    service: str,
    namespace: str,
    name: str,
    uid: str,
    version: str,
    endpoints: list[Raw],
    ports: list[Raw],
) -> Raw:
    """A new EndpointSlice of `service` (uid `uid`)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": version,
            "creationTimestamp": now(),
            "generation": 1,
            "generateName": f"{service}-",
            "labels": {
                SERVICE_NAME_LABEL: service,
                "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER,
            },
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": service,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }


class DaemonSets:
    """The DaemonSet controller and the pulls its pods do, on the one node: once the image
    pull time has passed, the node has the images (if the node selector matches it)."""

    def __init__(self, store: Store, node_images: set[str], image_pull_s: float) -> None:
        self._store = store
        self._node_images = node_images
        self._image_pull_s = image_pull_s
        self._work: dict[Key, float] = {}  # -> loop time its pods have pulled

    def add(self, key: Key, at: float) -> None:
        self._work[key] = at + self._image_pull_s

    def drop(self, key: Key) -> None:
        self._work.pop(key, None)

    def step(self, at: float) -> list[Raw]:
        changed = []
        for key, pulled_at in list(self._work.items()):
            if at < pulled_at:
                continue
            del self._work[key]
            obj = self._store.live_object(key)
            if obj is None:
                continue
            template = (obj.raw.get("spec") or {}).get("template") or {}
            spec = template.get("spec") or {}
            fits = fits_node(spec.get("nodeSelector") or {})
            if fits:
                for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
                    self._node_images.add(container["image"])
            count = 1 if fits else 0
            obj.patch(
                {
                    "metadata": {"resourceVersion": self._store.next_version()},
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


def collect_garbage(store: Store, index: Index, gone: list[str]) -> tuple[list[Any], list[str]]:
    """One round of background propagation (under the lock): delete the dependents of the
    objects with uids `gone` whose owners are all gone. The deletions, as (resource, event)
    for the watch bus, and the uids deleted, for the next round."""
    events: list[Any] = []
    next_gone: list[str] = []
    for uid in gone:
        for key in list(index.take_dependents(uid)):
            obj = store.live_object(key)
            if obj is None:
                continue
            raw = obj.raw
            owners = raw["metadata"].get("ownerReferences") or []
            if any(index.is_live(owner.get("uid")) for owner in owners):
                continue
            obj.delete()
            store.forget(key, raw)
            events.append((key[0], {"type": "DELETED", "object": raw}))
            next_gone.append(raw["metadata"]["uid"])
    return events, next_gone
