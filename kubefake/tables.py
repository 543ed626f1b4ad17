"""Server-side printing: the `meta.k8s.io/v1` Table a real API server answers when kubectl asks
for `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`, with the columns the API server's
own printers give each kind (`kubectl get pods -o wide` shows READY, STATUS, RESTARTS, IP,
NODE). Ages are written as the server writes them (`5s`, `3m12s`, `2d`)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

TABLE_ACCEPT = "as=Table"
Raw = dict[str, Any]
Column = tuple[str, str, int, Callable[[Raw], Any]]  # name, type, priority, cell


def wants_table(accept: str) -> bool:
    """Whether an Accept header asks for a Table first (kubectl's does; a client that lists
    `application/json` first gets objects)."""
    first = accept.replace(" ", "").split(",")[0]
    return TABLE_ACCEPT in first and "g=meta.k8s.io" in first


def age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.datetime.now(datetime.UTC)) - then).total_seconds())
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def _name(raw: Raw) -> str:
    return str(raw["metadata"]["name"])


def _age(raw: Raw) -> str:
    return age(raw["metadata"].get("creationTimestamp"))


def _pod_ready(raw: Raw) -> str:
    statuses = (raw.get("status") or {}).get("containerStatuses") or []
    total = len((raw.get("spec") or {}).get("containers") or [])
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


def _pod_status(raw: Raw) -> str:
    """What kubectl calls the pod's status: Terminating, a waiting reason, or the phase."""
    if raw["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = raw.get("status") or {}
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            return str(waiting["reason"])
    return str(status.get("phase") or "Pending")


def _pod_restarts(raw: Raw) -> int:
    statuses = (raw.get("status") or {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount") or 0) for s in statuses)


def _service_ports(raw: Raw) -> str:
    ports = (raw.get("spec") or {}).get("ports") or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _node_status(raw: Raw) -> str:
    conditions = (raw.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return "Ready" if ready else "NotReady"


def _slice_endpoints(raw: Raw) -> str:
    addresses = [a for e in raw.get("endpoints") or [] for a in e.get("addresses") or []]
    return ",".join(addresses) if addresses else "<unset>"


def _event_object(raw: Raw) -> str:
    involved = raw.get("involvedObject") or {}
    return f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}"


NAME: Column = ("Name", "string", 0, _name)
AGE: Column = ("Age", "string", 0, _age)
COLUMNS: dict[str, list[Column]] = {
    "pods": [
        NAME,
        ("Ready", "string", 0, _pod_ready),
        ("Status", "string", 0, _pod_status),
        ("Restarts", "string", 0, lambda r: str(_pod_restarts(r))),
        AGE,
        ("IP", "string", 1, lambda r: (r.get("status") or {}).get("podIP") or "<none>"),
        ("Node", "string", 1, lambda r: (r.get("spec") or {}).get("nodeName") or "<none>"),
        ("Nominated Node", "string", 1, lambda r: "<none>"),
        ("Readiness Gates", "string", 1, lambda r: "<none>"),
    ],
    "services": [
        NAME,
        ("Type", "string", 0, lambda r: (r.get("spec") or {}).get("type", "ClusterIP")),
        ("Cluster-IP", "string", 0, lambda r: (r.get("spec") or {}).get("clusterIP", "<none>")),
        ("External-IP", "string", 0, lambda r: "<none>"),
        ("Port(s)", "string", 0, _service_ports),
        AGE,
        ("Selector", "string", 1, lambda r: _labels((r.get("spec") or {}).get("selector"))),
    ],
    "nodes": [
        NAME,
        ("Status", "string", 0, _node_status),
        ("Roles", "string", 0, lambda r: "<none>"),
        AGE,
        (
            "Version",
            "string",
            0,
            lambda r: ((r.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", ""),
        ),
    ],
    "events": [
        ("Last Seen", "string", 0, lambda r: age(r.get("lastTimestamp"))),
        ("Type", "string", 0, lambda r: r.get("type", "")),
        ("Reason", "string", 0, lambda r: r.get("reason", "")),
        ("Object", "string", 0, _event_object),
        ("Message", "string", 0, lambda r: r.get("message", "")),
    ],
    "secrets": [
        NAME,
        ("Type", "string", 0, lambda r: r.get("type", "Opaque")),
        ("Data", "integer", 0, lambda r: len(r.get("data") or {})),
        AGE,
    ],
    "configmaps": [NAME, ("Data", "integer", 0, lambda r: len(r.get("data") or {})), AGE],
    "persistentvolumeclaims": [
        NAME,
        ("Status", "string", 0, lambda r: (r.get("status") or {}).get("phase", "Pending")),
        (
            "Capacity",
            "string",
            0,
            lambda r: (
                ((r.get("spec") or {}).get("resources") or {})
                .get("requests", {})
                .get("storage", "")
            ),
        ),
        AGE,
    ],
    "endpointslices": [
        NAME,
        ("AddressType", "string", 0, lambda r: r.get("addressType", "")),
        (
            "Ports",
            "string",
            0,
            lambda r: ",".join(str(p.get("port")) for p in r.get("ports") or []) or "<unset>",
        ),
        ("Endpoints", "string", 0, _slice_endpoints),
        AGE,
    ],
}


def _labels(selector: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in (selector or {}).items()) or "<none>"


def _metadata_object(raw: Raw, include: str) -> Raw | None:
    if include == "None":
        return None
    if include == "Object":
        return raw
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": raw["metadata"],
    }


def table(
    plural: str,
    items: list[Raw],
    metadata: Raw,
    *,
    include_object: str = "Metadata",
    with_columns: bool = True,
) -> Raw:
    """A Table of `items`; `include_object` is the request's includeObject (None, Object,
    Metadata: the default)."""
    columns = COLUMNS.get(plural, [NAME, AGE])
    rows = []
    for raw in items:
        row: Raw = {"cells": [cell(raw) for _, _, _, cell in columns]}
        obj = _metadata_object(raw, include_object)
        if obj is not None:
            row["object"] = obj
        rows.append(row)
    result: Raw = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata}
    if with_columns:
        result["columnDefinitions"] = [
            {
                "name": name,
                "type": kind,
                "format": "name" if name == "Name" else "",
                "description": "",
                "priority": priority,
            }
            for name, kind, priority, _ in columns
        ]
    else:
        result["columnDefinitions"] = None
    result["rows"] = rows
    return result
