"""core/v1 Events about pods, as the scheduler and the kubelet record them."""

from __future__ import annotations

import collections
import time
import uuid

from kubefake.store import EVENT, Key, Raw, Store, now

EVENTS_KEPT = 50_000  # the oldest go first (a real API server expires them after an hour)


class EventRecorder:
    """Records events into the store (under the API server's lock) and hands the new ones to
    whoever puts them on the watch bus (`drain`)."""

    def __init__(self, store: Store, node_name: str) -> None:
        self._store = store
        self._node_name = node_name
        self._kept: collections.deque[Key] = collections.deque()
        self._new: list[Raw] = []
        self._clock = 0

    def record(
        self,
        pod: Raw,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        component: str = "kubelet",
    ) -> None:
        metadata = pod["metadata"]
        namespace, at = metadata["namespace"], now()
        # named as the API server's recorder names it, `<object>.<UnixNano in hex>`: in the
        # order they happened (kubectl describe sorts them; equal timestamps keep this order)
        self._clock = max(self._clock + 1, time.time_ns())
        name = f"{metadata['name']}.{self._clock:x}"
        source = {"component": component}
        if component == "kubelet":
            source["host"] = self._node_name
        raw = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._store.next_version(),
                "creationTimestamp": at,
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
            "reportingInstance": self._node_name if component == "kubelet" else "",
            "firstTimestamp": at,
            "lastTimestamp": at,
            "count": 1,
        }
        key: Key = (EVENT, namespace, name)
        self._store.objects[key] = raw
        self._store.remember(key)
        self._kept.append(key)
        self._new.append(self._store.objects[key].raw)
        while len(self._kept) > EVENTS_KEPT:
            old = self._kept.popleft()
            obj = self._store.live_object(old)
            if obj is not None:
                obj.delete()
                self._store.forget(old, obj.last.raw)

    def drain(self) -> list[Raw]:
        """The events recorded since the last drain, oldest first."""
        new, self._new = self._new, []
        return new
