"""A cluster autoscaler for the simulated cluster: one node group that adds GPU nodes for pods
left Pending for lack of resources, with the events the real one writes on those pods
(`TriggeredScaleUp`: `pod triggered scale-up: [{gpu-pool 1->2 (max: 4)}]`; `NotTriggerScaleUp`:
`pod didn't trigger scale-up: 1 max node group size reached`), each once per pod and verdict.

A node it adds registers `join_s` later, Ready, and advertises its GPUs `gpus_after_s` after
that (the device plugin starts after the kubelet: kubernetes/autoscaler#2232); only then can
the scheduler place a GPU pod on it. Nodes are never removed."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from kubefake import kubelet
from kubefake.events import EventRecorder
from kubefake.scheduler import GPU, Scheduler, allocatable
from kubefake.store import NODE, Key, Raw, Store

COMPONENT = "cluster-autoscaler"


@dataclass(frozen=True)
class NodeGroup:
    """The node group the autoscaler may grow: `max_nodes` nodes of its own at most."""

    name: str = "gpu-pool"
    max_nodes: int = 4
    gpus_per_node: int = 1
    join_s: float = 1.0
    gpus_after_s: float = 0.0


@dataclass
class _Coming:
    name: str
    ip: str
    joins_at: float
    gpus_at: float
    joined: bool = False


class Autoscaler:
    def __init__(
        self, store: Store, events: EventRecorder, scheduler: Scheduler, group: NodeGroup
    ) -> None:
        self._store = store
        self._events = events
        self._scheduler = scheduler
        self.group = group
        self._coming: list[_Coming] = []  # nodes asked for, until they advertise their GPUs
        self.nodes_added = 0
        self._verdicts: dict[str, str] = {}  # pod uid -> the event it was given

    def step(self, at: float) -> list[tuple[str, Raw]]:
        """One tick at loop time `at`: the pods left Pending get a verdict (one scale-up for all
        the pods that its nodes will hold), then nodes join or advertise their GPUs. The nodes
        changed, for the watch bus."""
        for uid in [u for u in self._verdicts if u not in self._scheduler.unschedulable]:
            del self._verdicts[uid]  # scheduled, or deleted
        room = self.group.gpus_per_node
        per_node = allocatable(room)
        # what the nodes on their way can still hold, given to the pods in the order they came
        free = [room for _ in self._coming]
        first_new = len(free)
        helped: list[tuple[Raw, str]] = []  # the pods this step's new nodes are for
        before = self.nodes_added
        for uid, (raw, wanted) in self._scheduler.unschedulable.items():
            if any(wanted[name] > per_node[name] for name in wanted) or not wanted[GPU]:
                self._verdict(raw, uid, "NotTriggerScaleUp", self._too_big(wanted, per_node))
                continue
            need = int(wanted[GPU])
            spot = next((i for i, left in enumerate(free) if left >= need), None)
            if spot is None and self.nodes_added < self.group.max_nodes:
                self._ask_for_node(at)
                free.append(room)
                spot = len(free) - 1
            if spot is None:
                self._verdict(
                    raw,
                    uid,
                    "NotTriggerScaleUp",
                    "pod didn't trigger scale-up: 1 max node group size reached",
                )
                continue
            free[spot] -= need
            if spot >= first_new:
                helped.append((raw, uid))
        message = (
            f"pod triggered scale-up: [{{{self.group.name} {before}->{self.nodes_added} "
            f"(max: {self.group.max_nodes})}}]"
        )
        for raw, uid in helped:
            self._verdict(raw, uid, "TriggeredScaleUp", message)
        return self._grow(at)

    def _too_big(self, wanted: dict[str, Decimal], per_node: dict[str, Decimal]) -> str:
        lacking = [name for name in wanted if wanted[name] > per_node[name]] or [GPU]
        return "pod didn't trigger scale-up: " + ", ".join(f"1 Insufficient {n}" for n in lacking)

    def _verdict(self, raw: Raw, uid: str, reason: str, message: str) -> None:
        if self._verdicts.get(uid) == reason:
            return
        self._verdicts[uid] = reason
        self._events.record(raw, reason, message, component=COMPONENT)

    def _ask_for_node(self, at: float) -> None:
        self.nodes_added += 1
        number = self.nodes_added
        self._coming.append(
            _Coming(
                f"{self.group.name}-{number}",
                f"10.0.1.{number % 250 + 1}",
                at + self.group.join_s,
                at + self.group.join_s + self.group.gpus_after_s,
            )
        )

    def _grow(self, at: float) -> list[tuple[str, Raw]]:
        changed: list[tuple[str, Raw]] = []
        for coming in list(self._coming):
            key: Key = (NODE, None, coming.name)
            if not coming.joined and at >= coming.joins_at:
                coming.joined = True  # registered and Ready, its GPUs not advertised yet
                self._scheduler.add_node(coming.name, coming.ip, 0)
                labels = {"vdi.test/node-group": self.group.name}
                raw = kubelet.node(
                    0, self._store.next_version(), name=coming.name, ip=coming.ip, labels=labels
                )
                self._store.objects[key] = raw
                self._store.remember(key)
                changed.append(("ADDED", self._store.objects[key].raw))
            if coming.joined and at >= coming.gpus_at:
                self._coming.remove(coming)
                gpus = str(self.group.gpus_per_node)
                self._scheduler.set_gpus(coming.name, self.group.gpus_per_node)
                obj = self._store.live_object(key)
                if obj is not None:
                    obj.patch(
                        {
                            "metadata": {"resourceVersion": self._store.next_version()},
                            "status": {
                                "capacity": {GPU: gpus},
                                "allocatable": {GPU: gpus},
                            },
                        }
                    )
                    changed.append(("MODIFIED", obj.raw))
        return changed
