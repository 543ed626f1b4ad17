"""The one simulated node and its kubelet: the Node object as a kubelet registers it, and the
pods bound to it pulled (the node's image store, pull time, pull errors), started with an
address, crash-looping, and deleted once their grace period (or the runtime behind them) is
done."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from kubefake.events import EventRecorder
from kubefake.resources import K8S_VERSION
from kubefake.scheduler import NODE_CPU, NODE_MEMORY, Scheduler
from kubefake.store import Key, Raw, Store, condition, now

NODE_NAME = "fake-gpu-node-1"
NODE_IP = "10.0.0.10"
NODE_LABELS = {
    "kubernetes.io/hostname": NODE_NAME,
    "kubernetes.io/os": "linux",
    "kubernetes.io/arch": "amd64",
    "nvidia.com/gpu.present": "true",
}


def node(
    gpu_capacity: int,
    resource_version: str,
    *,
    name: str = NODE_NAME,
    ip: str = NODE_IP,
    labels: dict[str, str] | None = None,
) -> Raw:
    """A node, as its kubelet registers it: its labels (which node selectors are matched
    against), its GPU capacity, Ready."""
    capacity = {
        "cpu": NODE_CPU,
        "memory": NODE_MEMORY,
        "pods": "110",
        "ephemeral-storage": "1Ti",
        "nvidia.com/gpu": str(gpu_capacity),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": str(uuid.uuid4()),
            "resourceVersion": resource_version,
            "creationTimestamp": now(),
            "labels": {**NODE_LABELS, **(labels or {}), "kubernetes.io/hostname": name},
        },
        "spec": {"podCIDR": "10.42.0.0/16", "podCIDRs": ["10.42.0.0/16"]},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [
                {
                    **condition("Ready", "True", "KubeletReady"),
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": now(),
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
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


def fits_node(node_selector: dict[str, str]) -> bool:
    """Whether a node selector matches the node's labels."""
    return all(NODE_LABELS.get(k) == v for k, v in node_selector.items())


def just_started(raw: Raw) -> bool:
    statuses = raw["status"].get("containerStatuses") or []
    return bool(statuses and statuses[0].get("ready"))


def secrets(raw: Raw) -> list[str]:
    """The Secrets a pod's environment refers to."""
    names = []
    for container in raw["spec"].get("containers", []):
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] not in names:
                names.append(ref["name"])
    return names


def container_status(
    image: str, *, running: bool = False, waiting: dict[str, str] | None = None, restarts: int = 0
) -> Raw:
    state: Raw = {"running": {"startedAt": now()}} if running else {"waiting": waiting or {}}
    return {
        "name": "desktop",
        "image": image,
        "imageID": "",
        "ready": running,
        "started": running,
        "restartCount": restarts,
        "state": state,
    }


class Kubelet:
    """The pods with something left to do (a running pod has none until it is deleted), one
    tick at a time under the API server's lock."""

    def __init__(
        self,
        store: Store,
        events: EventRecorder,
        scheduler: Scheduler,
        *,
        node_images: set[str],
        image_pull_s: float,
        keep_pulled_images: bool,
        failing_images: tuple[str, ...],
        crashing_images: tuple[str, ...],
        pod_ip: Callable[[Raw], str | None] | None,
    ) -> None:
        self._store = store
        self._events = events
        self._scheduler = scheduler
        # The node's image store: a pod whose image is there starts at once ("already present
        # on machine"); any other pulls it for `image_pull_s` first.
        self.node_images = node_images
        self._image_pull_s = image_pull_s
        self._keep_pulled_images = keep_pulled_images
        self._failing_images = failing_images
        self._crashing_images = crashing_images
        self._pod_ip = pod_ip
        self._work: dict[Key, None] = {}
        self._delete_after: dict[str, float] = {}  # pod uid -> loop time it may go
        self._pulls: dict[str, float] = {}  # pod uid -> pulled at (-1: done)
        self._ips_given = 0

    def add(self, key: Key) -> None:
        """A pod to look after (created, or now being deleted)."""
        self._work[key] = None

    def drop(self, key: Key, raw: Raw) -> None:
        """A pod gone from the store."""
        uid = (raw.get("metadata") or {}).get("uid", "")
        self._work.pop(key, None)
        self._delete_after.pop(uid, None)
        self._pulls.pop(uid, None)
        self._scheduler.release(raw)

    def terminating(self, key: Key, obj: Any, *, delete_at: float) -> None:
        """A pod asked to be deleted: marked with its deletionTimestamp, deleted by the first
        tick after `delete_at` (loop time; `math.inf`: after `may_delete`)."""
        uid = obj.raw["metadata"]["uid"]
        obj.patch(
            {
                "metadata": {
                    "deletionTimestamp": now(),
                    "resourceVersion": self._store.next_version(),
                }
            }
        )
        self._delete_after[uid] = delete_at
        self._work[key] = None
        if obj.raw["spec"].get("nodeName"):
            self._events.record(obj.raw, "Killing", "Stopping container desktop")

    def may_delete(self, uid: str) -> None:
        """The runtime has stopped the pod's processes: its next tick deletes it."""
        if uid in self._delete_after:
            self._delete_after[uid] = 0.0

    def container_exited(self, obj: Any, exit_code: int | None, message: str) -> None:
        """The runtime says the pod's container died: as a kubelet about to restart it, the
        pod says CrashLoopBackOff (with the exit code and why) and is not ready."""
        raw = obj.raw
        image = raw["spec"]["containers"][0]["image"]
        previous = (raw.get("status", {}).get("containerStatuses") or [{}])[0]
        restarts = int(previous.get("restartCount", 0)) + 1
        waiting = {"reason": "CrashLoopBackOff", "message": message}
        container = container_status(image, waiting=waiting, restarts=restarts)
        container["lastState"] = {
            "terminated": {
                "exitCode": -1 if exit_code is None else exit_code,
                "reason": "Error",
                "message": message,
                "finishedAt": now(),
            }
        }
        obj.patch(
            {
                "metadata": {"resourceVersion": self._store.next_version()},
                "status": {
                    "conditions": [
                        condition("PodScheduled", "True"),
                        condition("Ready", "False"),
                    ],
                    "containerStatuses": [container],
                },
            }
        )
        self._events.record(
            raw,
            "BackOff",
            f"Back-off restarting failed container desktop in pod {raw['metadata']['name']}",
            warning=True,
        )

    def step(self, at: float) -> list[tuple[str, Raw]]:
        """One tick at loop time `at`: schedule, pull, start, crash, finish terminating. The
        changes, for the watch bus."""
        changes: list[tuple[str, Raw]] = []
        for key in list(self._work):
            obj = self._store.live_object(key)
            if obj is None:
                self._work.pop(key, None)
                continue
            raw = obj.raw
            metadata = raw["metadata"]
            if metadata.get("deletionTimestamp"):
                if at >= self._delete_after.get(metadata["uid"], 0):
                    obj.delete()
                    self._store.forget(key, raw)
                    changes.append(("DELETED", raw))
                continue
            if raw["spec"].get("nodeName"):
                status = self._pod_status(raw, at)
            else:
                status = self._scheduler.schedule(obj)
            if status is None:
                if (raw.get("status") or {}).get("phase") == "Running":
                    self._work.pop(key, None)  # settled: running, or crashed for good
                continue
            obj.patch(
                {"status": status, "metadata": {"resourceVersion": self._store.next_version()}}
            )
            changes.append(("MODIFIED", obj.raw))
        return changes

    def _address(self, raw: Raw) -> str:
        """The pod's IP: the one `pod_ip` gives (an end-to-end test's network namespace's), or
        the next of the pod network's, 10.42.0.0/16."""
        if self._pod_ip is not None and (address := self._pod_ip(raw)):
            return address
        self._ips_given += 1
        number = self._ips_given
        return f"10.42.{number // 250 % 250}.{1 + number % 250}"

    def _pull(self, raw: Raw, image: str, at: float) -> bool:
        """The image pull of a scheduled pod (its events on the way): whether it is done."""
        uid = raw["metadata"]["uid"]
        pulled_at = self._pulls.get(uid)
        if pulled_at is None:
            if image in self.node_images:
                self._pulls[uid] = -1.0
                self._events.record(
                    raw, "Pulled", f'Container image "{image}" already present on machine'
                )
                return True
            self._pulls[uid] = pulled_at = at + self._image_pull_s
            self._events.record(raw, "Pulling", f'Pulling image "{image}"')
        if pulled_at < 0:
            return True
        if at < pulled_at:
            return False
        self._pulls[uid] = -1.0
        if self._keep_pulled_images:
            self.node_images.add(image)
        self._events.record(
            raw, "Pulled", f'Successfully pulled image "{image}" in {self._image_pull_s:.3f}s'
        )
        return True

    def _pod_status(self, raw: Raw, at: float) -> Raw | None:
        """The next status of a bound pod, or None when it does not change."""
        spec, status = raw["spec"], raw.get("status", {})
        namespace = raw["metadata"]["namespace"]
        image = spec["containers"][0]["image"]
        crashing = any(bad in image for bad in self._crashing_images)
        if status.get("phase") == "Running" and not crashing:
            return None
        scheduled = condition("PodScheduled", "True")
        current = (status.get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {})
        if any(bad in image for bad in self._failing_images):
            waiting = {
                "reason": "ErrImagePull",
                "message": f'failed to pull and unpack image "{image}": not found',
            }
            if current.get("reason") != waiting["reason"]:
                self._events.record(raw, "Pulling", f'Pulling image "{image}"')
                self._events.record(
                    raw,
                    "Failed",
                    f'Failed to pull image "{image}": {waiting["message"]}',
                    warning=True,
                )
        elif not self._pull(raw, image, at):
            waiting = {"reason": "ContainerCreating", "message": ""}
        elif missing := [
            s for s in secrets(raw) if not self._store.exists("secrets", namespace, s)
        ]:
            waiting = {
                "reason": "CreateContainerConfigError",
                "message": f'secret "{missing[0]}" not found',
            }
            if current.get("reason") != waiting["reason"]:
                self._events.record(raw, "Failed", f"Error: {waiting['message']}", warning=True)
        elif crashing:
            return self._crash(raw, image, status, scheduled)
        else:
            self._events.record(raw, "Created", "Created container: desktop")
            self._events.record(raw, "Started", "Started container desktop")
            return {
                "phase": "Running",
                "podIP": (address := self._address(raw)),
                "podIPs": [{"ip": address}],
                "hostIP": (host := self._scheduler.host_ip(raw) or NODE_IP),
                "hostIPs": [{"ip": host}],
                "startTime": now(),
                "conditions": [scheduled, condition("Ready", "True")],
                "containerStatuses": [container_status(image, running=True)],
            }
        if current.get("reason") == waiting["reason"]:
            return None
        return {
            "phase": "Pending",
            "conditions": [scheduled],
            "containerStatuses": [container_status(image, waiting=waiting)],
        }

    def _crash(self, raw: Raw, image: str, status: Raw, scheduled: Raw) -> Raw | None:
        """A crashing image: started, then backing off, three restarts, then left as it is."""
        restarts = int((status.get("containerStatuses") or [{}])[0].get("restartCount", 0)) + 1
        if restarts > 3:
            return None
        waiting = {
            "reason": "CrashLoopBackOff",
            "message": "back-off 10s restarting failed container=desktop",
        }
        if restarts == 1:
            self._events.record(raw, "Created", "Created container: desktop")
            self._events.record(raw, "Started", "Started container desktop")
        self._events.record(
            raw,
            "BackOff",
            f"Back-off restarting failed container desktop in pod {raw['metadata']['name']}",
            warning=True,
        )
        return {
            "phase": "Running",
            "conditions": [scheduled, condition("Ready", "False")],
            "containerStatuses": [container_status(image, waiting=waiting, restarts=restarts)],
        }
