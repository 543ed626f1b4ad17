"""The scheduler of the simulated nodes: a pod is bound, in the order the pods came, to the first
node with room for what it requests (GPUs, CPU, memory) once its PersistentVolumeClaims exist;
otherwise it stays Pending, Unschedulable, with the message kube-scheduler writes (`0/2 nodes
are available: 2 Insufficient nvidia.com/gpu. preemption: ...`). Nodes can join later (the
cluster autoscaler's, `kubefake.autoscaler`), and a node's GPUs can be advertised after it is
Ready, as the NVIDIA device plugin does."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kubefake.events import EventRecorder
from kubefake.store import Raw, Store, condition

GPU = "nvidia.com/gpu"
# What the scheduler counts; other resources are never short.
SCHEDULED_RESOURCES = (GPU, "cpu", "memory")
# A node's allocatable CPU and memory (the GPUs are each node's own).
NODE_CPU, NODE_MEMORY = "64", "503Gi"


_SUFFIXES = {
    **{k: Decimal(1024) ** (i + 1) for i, k in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{k: Decimal(1000) ** (i + 1) for i, k in enumerate(("k", "M", "G", "T", "P", "E"))},
    "m": Decimal("0.001"),
    "": Decimal(1),
}


def parse_quantity(text: object) -> Decimal:
    """A Kubernetes quantity ("500m", "4Gi", "2", "1e3") as a number, as the API server reads
    it (the admission's schemas have checked its form)."""
    value = str(text).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if suffix and value.endswith(suffix):
            return Decimal(value[: -len(suffix)]) * _SUFFIXES[suffix]
    return Decimal(value)


def unschedulable_message(nodes: int, short: Counter[str]) -> str:
    """kube-scheduler's message: how many nodes lack each resource, sorted as it sorts them."""
    reasons = ", ".join(f"{count} Insufficient {name}" for name, count in sorted(short.items()))
    return (
        f"0/{nodes} nodes are available: {reasons}. preemption: 0/{nodes} nodes are available: "
        f"{nodes} No preemption victims found for incoming pod."
    )


UNSCHEDULABLE_GPU = unschedulable_message(1, Counter({GPU: 1}))


def requests(raw: Raw) -> dict[str, Decimal]:
    """What a pod requests of the resources scheduled (summed over its containers; a limit with
    no request is its request, as the API server defaults it)."""
    total = dict.fromkeys(SCHEDULED_RESOURCES, Decimal(0))
    for container in raw["spec"].get("containers", []):
        resources = container.get("resources") or {}
        asked = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name in SCHEDULED_RESOURCES:
            if name in asked:
                total[name] += parse_quantity(asked[name])
    return total


def gpus(raw: Raw) -> int:
    """The GPUs a pod requests (`nvidia.com/gpu`, summed over its containers)."""
    return int(requests(raw)[GPU])


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


@dataclass
class Room:
    """A node as the scheduler sees it: what it can hold, and what its pods hold."""

    name: str
    allocatable: dict[str, Decimal]
    ip: str = ""
    used: dict[str, Decimal] = field(
        default_factory=lambda: dict.fromkeys(SCHEDULED_RESOURCES, Decimal(0))
    )

    def short_of(self, wanted: dict[str, Decimal]) -> list[str]:
        return [
            name
            for name in SCHEDULED_RESOURCES
            if wanted[name] and self.used[name] + wanted[name] > self.allocatable[name]
        ]


def allocatable(gpu_count: int) -> dict[str, Decimal]:
    return {
        GPU: Decimal(gpu_count),
        "cpu": parse_quantity(NODE_CPU),
        "memory": parse_quantity(NODE_MEMORY),
    }


class Scheduler:
    def __init__(
        self,
        store: Store,
        events: EventRecorder,
        *,
        node_name: str,
        node_ip: str,
        gpu_capacity: int,
    ) -> None:
        self._store = store
        self._events = events
        self.nodes: dict[str, Room] = {
            node_name: Room(node_name, allocatable(gpu_capacity), node_ip)
        }
        # Pods left Pending for lack of a resource, in the order they came (uid -> (pod,
        # requests)): what the cluster autoscaler looks at.
        self.unschedulable: dict[str, tuple[Raw, dict[str, Decimal]]] = {}

    @property
    def gpu_capacity(self) -> int:
        return int(sum(room.allocatable[GPU] for room in self.nodes.values()))

    @property
    def gpus_used(self) -> int:
        return int(sum(room.used[GPU] for room in self.nodes.values()))

    def add_node(self, name: str, ip: str, gpu_count: int) -> None:
        self.nodes[name] = Room(name, allocatable(gpu_count), ip)

    def host_ip(self, raw: Raw) -> str:
        room = self.nodes.get((raw.get("spec") or {}).get("nodeName") or "")
        return room.ip if room is not None else ""

    def set_gpus(self, name: str, gpu_count: int) -> None:
        """The device plugin advertises the node's GPUs (some time after the node is Ready)."""
        self.nodes[name].allocatable[GPU] = Decimal(gpu_count)

    def schedule(self, obj: Any) -> Raw | None:
        """Bind an unbound pod (kmock's object) to a node, or say why it cannot be: the
        status to patch, or None when it has not changed."""
        raw = obj.raw
        status, metadata = raw.get("status", {}), raw["metadata"]
        namespace = metadata["namespace"]
        missing = [
            c for c in claims(raw) if not self._store.exists("persistentvolumeclaims", namespace, c)
        ]
        wanted = requests(raw)
        if missing:
            message = f'persistentvolumeclaim "{missing[0]}" not found'
        else:
            short: Counter[str] = Counter()
            for room in self.nodes.values():
                lacking = room.short_of(wanted)
                if not lacking:
                    return self._bind(obj, room, wanted)
                short.update(lacking)
            message = unschedulable_message(len(self.nodes), short)
            self.unschedulable[metadata["uid"]] = (raw, wanted)
        conditions = [condition("PodScheduled", "False", "Unschedulable", message)]
        if same_conditions(status, conditions):
            return None
        self._events.record(
            raw, "FailedScheduling", message, warning=True, component="default-scheduler"
        )
        return {"phase": "Pending", "conditions": conditions}

    def _bind(self, obj: Any, room: Room, wanted: dict[str, Decimal]) -> Raw:
        raw, metadata = obj.raw, obj.raw["metadata"]
        self.unschedulable.pop(metadata["uid"], None)
        for name in SCHEDULED_RESOURCES:
            room.used[name] += wanted[name]
        obj.patch({"spec": {"nodeName": room.name}})
        self._events.record(
            raw,
            "Scheduled",
            f"Successfully assigned {metadata['namespace']}/{metadata['name']} to {room.name}",
            component="default-scheduler",
        )
        return {"conditions": [condition("PodScheduled", "True")]}

    def release(self, raw: Raw) -> None:
        """A deleted pod gives what it held back to its node."""
        self.unschedulable.pop((raw.get("metadata") or {}).get("uid", ""), None)
        room = self.nodes.get((raw.get("spec") or {}).get("nodeName") or "")
        if room is not None:
            for name, amount in requests(raw).items():
                room.used[name] -= amount
