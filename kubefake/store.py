"""The fake's objects: the resource handles, the key of an object, and the indexes that make a
call cost the same with 10 objects or 50,000 (kmock itself scans them all).

The parts of the fake (admission, scheduler, kubelet, controllers) see the API server through
`Store`: its object store, a live object by key, a new resourceVersion, and objects joining or
leaving the indexes."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any, Protocol

import kmock
from sortedcontainers import SortedDict

POD = kmock.resource("", "v1", "pods")
EVENT = kmock.resource("", "v1", "events")
DAEMONSET = kmock.resource("apps", "v1", "daemonsets")
SERVICE = kmock.resource("", "v1", "services")
NODE = kmock.resource("", "v1", "nodes")
ENDPOINTSLICE = kmock.resource("discovery.k8s.io", "v1", "endpointslices")

Key = tuple[Any, str | None, str]  # (resource, namespace, name), kmock's object key
Raw = dict[str, Any]  # an object as the API serves it


def now() -> str:
    """An RFC 3339 timestamp, to the second, as the API server writes them."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, status: str, reason: str | None = None, message: str | None = None) -> Raw:
    """A status condition (a pod's, a node's)."""
    found = {"type": kind, "status": status, "lastTransitionTime": now()}
    if reason:
        found["reason"] = reason
    if message:
        found["message"] = message
    return found


class Store(Protocol):
    """What the fake's parts ask of the API server."""

    @property
    def objects(self) -> Any:
        """kmock's object store: `objects[key] = raw` creates, `objects[key]` reads."""
        ...

    def live_object(self, key: Key) -> kmock.Object | None:
        """A live object by key (from the index)."""
        ...

    def exists(self, plural: str, namespace: str, name: str) -> bool: ...

    def next_version(self) -> str:
        """The next resourceVersion."""
        ...

    def remember(self, key: Key) -> None:
        """A created object joins the indexes (and its controller's work)."""
        ...

    def forget(self, key: Key, raw: Raw) -> None:
        """A deleted object leaves the indexes and memory."""
        ...


class Index:
    """Live objects by (resource, namespace) and name, in name order (paged lists); live uids;
    dependents by owner uid (garbage collection)."""

    def __init__(self) -> None:
        self._names: dict[tuple[Any, str | None], SortedDict] = {}
        self._uids: dict[str, Key] = {}
        self._dependents: dict[str, set[Key]] = {}

    def get(self, key: Key) -> kmock.Object | None:
        names = self._names.get((key[0], key[1]))
        return None if names is None else names.get(key[2])

    def find(self, plural: str, namespace: str, name: str) -> Raw | None:
        for (resource, in_namespace), names in self._names.items():
            if resource.plural == plural and in_namespace == namespace:
                obj = names.get(name)
                return None if obj is None else obj.raw
        return None

    def live(self, plural: str | None = None) -> Iterator[Raw]:
        for (resource, _namespace), names in list(self._names.items()):
            if plural is None or resource.plural == plural:
                for obj in list(names.values()):
                    yield obj.raw

    def add(self, key: Key, obj: kmock.Object) -> None:
        metadata = obj.raw["metadata"]
        self._names.setdefault((key[0], key[1]), SortedDict())[key[2]] = obj
        self._uids[metadata["uid"]] = key
        for owner in metadata.get("ownerReferences") or []:
            self._dependents.setdefault(owner.get("uid"), set()).add(key)

    def remove(self, key: Key, raw: Raw) -> None:
        names = self._names.get((key[0], key[1]))
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

    def is_live(self, uid: str) -> bool:
        return uid in self._uids

    def take_dependents(self, uid: str) -> set[Key]:
        """The objects that name `uid` as an owner (no longer tracked as its dependents)."""
        return self._dependents.pop(uid, set())

    def matching(
        self, resource: Any, namespace: str | None, after: tuple[str | None, str] | None = None
    ) -> Iterator[Raw]:
        """The live objects of `resource` (in `namespace`, or all), by namespace then name,
        after `after` (a continue token's place)."""
        groups = sorted(
            (
                (in_namespace or "", names)
                for (kind, in_namespace), names in self._names.items()
                if kind == resource and (namespace is None or in_namespace == namespace)
            ),
            key=lambda group: group[0],
        )
        for group, names in groups:
            if after is not None and group < (after[0] or ""):
                continue
            if after is not None and group == (after[0] or ""):
                for name in names.irange(minimum=after[1], inclusive=(False, True)):
                    yield names[name].raw
            else:
                for obj in names.values():
                    yield obj.raw
