"""The OpenAPI v3 documents of the kinds the fake serves, as `/openapi/v3` lists them: one per
group version, the official schemas (kubernetes-validate's copy of the Kubernetes OpenAPI
definitions, with their `x-kubernetes-*` patch strategies) and Traefik's CRD schemas. kubectl
reads them to learn that the server validates fields itself (the PATCH operation's
`fieldValidation` parameter) and how to compute an apply's strategic merge patch."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Any

from kubefake import resources
from kubefake.resources import K8S_VERSION, Kind

_REF = re.compile(r'"#/\$defs/([^"]+)"')


@functools.cache
def _definitions() -> dict[str, Any]:
    from kubernetes_validate import utils

    wanted = utils.major_minor(K8S_VERSION)
    version = [v for v in utils.all_versions() if utils.major_minor(v) <= wanted][-1]
    text = utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local/_definitions.json", K8S_VERSION
    )
    document = text if isinstance(text, dict) else json.loads(text)
    return dict(document["$defs"])


def _key(kind: Kind) -> str:
    return f"api/{kind.version}" if not kind.group else f"apis/{kind.group}/{kind.version}"


def _definition_name(kind: Kind) -> str | None:
    for name, schema in _definitions().items():
        for gvk in schema.get("x-kubernetes-group-version-kind") or []:
            if (gvk.get("group"), gvk.get("version"), gvk.get("kind")) == (
                kind.group,
                kind.version,
                kind.kind,
            ):
                return name
    return None


def _closure(names: list[str]) -> dict[str, Any]:
    """The definitions `names` refer to, transitively, with refs rewritten for OpenAPI v3."""
    definitions, found, todo = _definitions(), {}, list(names)
    while todo:
        name = todo.pop()
        if name in found or name not in definitions:
            continue
        text = json.dumps(definitions[name])
        todo.extend(_REF.findall(text))
        found[name] = json.loads(_REF.sub(r'"#/components/schemas/\1"', text))
    return found


def _crd_schema(kind: Kind) -> dict[str, Any]:
    open_schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    schema = dict(resources.crd_schema(kind.plural) or open_schema)
    schema["x-kubernetes-group-version-kind"] = [
        {"group": kind.group, "version": kind.version, "kind": kind.kind}
    ]
    return schema


def _operations(kind: Kind, schema_ref: str) -> dict[str, Any]:
    gvk = {"group": kind.group, "version": kind.version, "kind": kind.kind}
    prefix = f"/{_key(kind)}" + ("/namespaces/{namespace}" if kind.namespaced else "")
    body = {"content": {"application/json": {"schema": {"$ref": schema_ref}}}}
    ok = {"200": {"description": "OK", "content": {"application/json": {"schema": {}}}}}
    query = [
        {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
        for name in ("dryRun", "fieldManager", "fieldValidation")
    ]

    def operation(verb: str, action: str, **extra: Any) -> dict[str, Any]:
        return {
            "operationId": f"{verb}{kind.kind}",
            "responses": ok,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            **extra,
        }

    return {
        f"{prefix}/{kind.plural}": {
            "get": operation("list", "list"),
            "post": operation("create", "post", requestBody=body, parameters=query),
        },
        f"{prefix}/{kind.plural}/{{name}}": {
            "get": operation("read", "get"),
            "delete": operation("delete", "delete"),
            "patch": operation(
                "patch",
                "patch",
                parameters=query,
                requestBody={
                    "content": {
                        media: {"schema": {"type": "object"}}
                        for media in (
                            "application/json-patch+json",
                            "application/merge-patch+json",
                            "application/strategic-merge-patch+json",
                            "application/apply-patch+yaml",
                        )
                    }
                },
            ),
        },
    }


@functools.cache
def _documents() -> dict[str, bytes]:
    keys: dict[str, list[Kind]] = {}
    for kind in resources.KINDS:
        keys.setdefault(_key(kind), []).append(kind)
    documents = {}
    for key, kinds in keys.items():
        paths: dict[str, Any] = {}
        schemas: dict[str, Any] = {}
        for kind in kinds:
            name = _definition_name(kind) if kind.schema == "core" else None
            if name is not None:
                schemas.update(_closure([name]))
            else:
                name = f"{'.'.join(reversed(kind.group.split('.')))}.{kind.version}.{kind.kind}"
                schemas[name] = _crd_schema(kind)
            paths.update(_operations(kind, f"#/components/schemas/{name}"))
        document = {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": f"v{K8S_VERSION}.0"},
            "paths": paths,
            "components": {"schemas": schemas},
        }
        documents[key] = json.dumps(document).encode()
    return documents


def root() -> dict[str, Any]:
    """`/openapi/v3`: where each group version's document is, with its hash."""
    return {
        "paths": {
            key: {
                "serverRelativeURL": f"/openapi/v3/{key}?hash="
                + hashlib.sha512(body).hexdigest().upper()
            }
            for key, body in _documents().items()
        }
    }


def group_version(key: str) -> bytes | None:
    """`/openapi/v3/<key>` (`api/v1`, `apis/apps/v1`): the document, or None."""
    return _documents().get(key)
