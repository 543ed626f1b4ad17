"""The scheduler of the one simulated node: a pod is bound when its PersistentVolumeClaims
exist and the node has the GPUs it requests; otherwise it stays Pending, Unschedulable, with
the message kube-scheduler writes."""

from __future__ import annotations

from typing import Any

from kubefake.events import EventRecorder
from kubefake.store import Raw, Store, condition

UNSCHEDULABLE_GPU = (
    "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are "
    "available: 1 No preemption victims found for incoming pod."
)


def gpus(raw: Raw) -> int:
    """The GPUs a pod requests (`nvidia.com/gpu`, summed over its containers)."""
    total = 0
    for container in raw["spec"].get("containers", []):
        total += int(container.get("resources", {}).get("requests", {}).get("nvidia.com/gpu", 0))
    return total


def claims(raw: Raw) -> list[str]:
    """The PersistentVolumeClaims a pod mounts."""
    return [
        v["persistentVolumeClaim"]["claimName"]
        for v in raw["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    ]


def same_conditions(status: Raw, wanted: list[Raw]) -> bool:
    def strip(items: list[Raw]) -> list[Raw]:
        return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in items]

    return strip(status.get("conditions") or []) == strip(wanted)


class Scheduler:
    def __init__(
        self, store: Store, events: EventRecorder, *, node_name: str, gpu_capacity: int
    ) -> None:
        self._store = store
        self._events = events
        self._node_name = node_name
        self.gpu_capacity = gpu_capacity
        self.gpus_used = 0

    def schedule(self, obj: Any) -> Raw | None:
        """Bind an unbound pod (kmock's object) to the node, or say why it cannot be: the
        status to patch, or None when it has not changed."""
        raw = obj.raw
        status, metadata = raw.get("status", {}), raw["metadata"]
        namespace = metadata["namespace"]
        missing = [
            c for c in claims(raw) if not self._store.exists("persistentvolumeclaims", namespace, c)
        ]
        if missing:
            message = f'persistentvolumeclaim "{missing[0]}" not found'
        elif self.gpus_used + gpus(raw) > self.gpu_capacity:
            message = UNSCHEDULABLE_GPU
        else:
            self.gpus_used += gpus(raw)
            obj.patch({"spec": {"nodeName": self._node_name}})
            self._events.record(
                raw,
                "Scheduled",
                f"Successfully assigned {namespace}/{metadata['name']} to {self._node_name}",
                component="default-scheduler",
            )
            return {"conditions": [condition("PodScheduled", "True")]}
        wanted = [condition("PodScheduled", "False", "Unschedulable", message)]
        if same_conditions(status, wanted):
            return None
        self._events.record(
            raw, "FailedScheduling", message, warning=True, component="default-scheduler"
        )
        return {"phase": "Pending", "conditions": wanted}

    def release(self, raw: Raw) -> None:
        """A deleted pod gives its GPUs back to the node."""
        if (raw.get("spec") or {}).get("nodeName"):
            self.gpus_used -= gpus(raw)
