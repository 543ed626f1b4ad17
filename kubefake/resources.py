"""The kinds the fake API serves, and its discovery documents, as a real API server writes them:
`/api/v1`'s groupVersion is `v1`, every resource has its verbs, singular name, short names and
categories, so kubectl finds `pods`, `po` and `all`, and client-go decodes every list by its
group/version (`IngressRouteList` in `traefik.io/v1alpha1`, not `v1`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CRD_DIR = Path(__file__).parent / "crds"
K8S_VERSION = "1.33"  # the Kubernetes version the fake answers as (schemas, /version)

# What the fake answers for every kind: a real server also has update (PUT) and
# deletecollection; kubectl and client-go use neither for these kinds.
VERBS = ("create", "delete", "get", "list", "patch", "watch")
TRAEFIK_GROUPS = ("traefik.io", "traefik.containo.us")
# Traefik's kinds: every one that its kubernetescrd provider lists and watches.
TRAEFIK_KINDS = (
    ("ingressroutes", "IngressRoute"),
    ("ingressroutetcps", "IngressRouteTCP"),
    ("ingressrouteudps", "IngressRouteUDP"),
    ("middlewares", "Middleware"),
    ("middlewaretcps", "MiddlewareTCP"),
    ("serverstransports", "ServersTransport"),
    ("serverstransporttcps", "ServersTransportTCP"),
    ("tlsoptions", "TLSOption"),
    ("tlsstores", "TLSStore"),
    ("traefikservices", "TraefikService"),
)


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    # Where its schema comes from: "core" (kubernetes-validate), "crd" (a CRD file of ours),
    # or "" (none: Traefik's kinds whose CRD we do not ship are stored as they come).
    schema: str = "core"
    singular: str = field(default="")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()


KINDS: tuple[Kind, ...] = (
    Kind(
        "", "v1", "pods", "Pod", short_names=("po",), categories=("all",), subresources=("status",)
    ),
    Kind("", "v1", "services", "Service", short_names=("svc",), categories=("all",)),
    Kind("", "v1", "secrets", "Secret"),
    Kind("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short_names=("pvc",)),
    Kind("", "v1", "events", "Event", short_names=("ev",)),
    Kind("", "v1", "nodes", "Node", namespaced=False, short_names=("no",)),
    Kind("apps", "v1", "daemonsets", "DaemonSet", short_names=("ds",), categories=("all",)),
    Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    *(
        Kind(group, "v1alpha1", plural, kind, schema="crd", categories=("traefik",))
        for group in TRAEFIK_GROUPS
        for plural, kind in TRAEFIK_KINDS
    ),
)
BY_PATH: dict[tuple[str, str, str], Kind] = {(k.group, k.version, k.plural): k for k in KINDS}


def find(group: str | None, version: str | None, plural: str | None) -> Kind | None:
    return BY_PATH.get((group or "", version or "", plural or ""))


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    """`/api/v1` or `/apis/<group>/<version>`: an APIResourceList, or None (404) for a group
    version the fake does not serve."""
    kinds = [k for k in KINDS if (k.group, k.version) == (group, version)]
    if not kinds:
        return None
    resources: list[dict[str, Any]] = []
    for kind in kinds:
        resources.append(
            {
                "name": kind.plural,
                "singularName": kind.singular_name,
                "namespaced": kind.namespaced,
                "kind": kind.kind,
                "verbs": list(VERBS),
                **({"shortNames": list(kind.short_names)} if kind.short_names else {}),
                **({"categories": list(kind.categories)} if kind.categories else {}),
            }
        )
        for sub in kind.subresources:
            resources.append(
                {
                    "name": f"{kind.plural}/{sub}",
                    "singularName": "",
                    "namespaced": kind.namespaced,
                    "kind": kind.kind,
                    "verbs": ["get", "patch"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": kinds[0].api_version,
        "resources": resources,
    }


def _group(name: str) -> dict[str, Any]:
    versions = sorted({k.version for k in KINDS if k.group == name})
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def group_list() -> dict[str, Any]:
    """`/apis`: every group but the core one, in KINDS' order (kubectl resolves a plural
    served by two groups, `ingressroutes`, to the first: traefik.io)."""
    names = list(dict.fromkeys(k.group for k in KINDS if k.group))
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group(n) for n in names]}


def group(name: str) -> dict[str, Any] | None:
    """`/apis/<group>`: an APIGroup, or None (404)."""
    if not any(k.group == name for k in KINDS if k.group):
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name)}


@functools.cache
def crd_schema(plural: str) -> dict[str, Any] | None:
    """The openAPIV3Schema of a Traefik CRD that we ship (crds/), or None."""
    path = CRD_DIR / f"traefik.io_{plural}.yaml"
    if not path.exists():
        return None
    crd = yaml.safe_load(path.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return dict(version["schema"]["openAPIV3Schema"])
