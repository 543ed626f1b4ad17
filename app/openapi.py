"""The OpenAPI document, shaped for the clients generated from it.

FastAPI's document is reworked in one pass, so that a generated client needs no cast:
- request and response schemas are separate: a request schema keeps no `default` (openapi-
  typescript makes a property with one required, openapi-ts/openapi-typescript#1903), its
  default is in its description; a response schema lists every member the server always sends
  as required (`json_schema_serialization_defaults_required` on the models), nullable where it
  can be null. A model used both ways is `X` in requests and `XOut` in answers.
- every error is a problem (RFC 9457) of a type in the `ProblemType` list, with a schema of its
  own (`<Name>Problem`, its `type` and `status` constants, the members it carries); each status
  of an operation lists the types it can answer with, discriminated by `type`, among them those
  every operation can give: 401/403 where a token is needed, 422 where there is input, 413 and
  415 where there is a body, 503 where the database is used, 500.
- the headers are documented: `X-Request-Id` on every answer, `Retry-After` on the problems
  that carry it, `Location` and `Idempotent-Replayed` on a create.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import models_json_schema

from app.errors import (
    PROBLEM_JSON,
    PROBLEMS,
    PROBLEMS_KEY,
    AppError,
    DatabaseBusy,
    DatabaseUnavailable,
    Forbidden,
    InternalError,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedEncoding,
    ValidationFailed,
    problem_type,
)

SCHEMAS = "#/components/schemas/"
HEADERS = "#/components/headers/"

RESPONSE_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-Id": {
        "description": "This request's id (the caller's `X-Request-ID`, or one generated): in "
        "the logs, and in a problem's `request_id`; quote it when reporting a problem",
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 1},
    },
    "WWW-Authenticate": {
        "description": '`Bearer realm="vdi-control"`',
        "schema": {"type": "string"},
    },
    "Allow": {"description": "The methods the path has", "schema": {"type": "string"}},
    "Location": {
        "description": "The new session: `/v1/sessions/{id}`",
        "schema": {"type": "string"},
    },
}


def header_ref(name: str) -> dict[str, str]:
    return {"$ref": HEADERS + name}


class _ProblemBase(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    title: str = Field(description="A short summary of the problem type")
    detail: str = Field(description="What went wrong here, and how to fix it")
    instance: str | None = Field(description="The request path (null when not known)")
    request_id: str | None = Field(description="Quote it when reporting a problem")


def schema_name(error: type[AppError]) -> str:
    return f"{error.__name__}Problem"


def problem_model(error: type[AppError]) -> type[BaseModel]:
    """The schema of one problem type: RFC 9457's members, `type` (and `status`, unless the type
    is not tied to one) as constants, and its own members."""
    status: Any = (
        (Literal[error.status], Field(description="The HTTP status"))
        if (error.fixed_status)
        else (int, Field(description="The HTTP status"))
    )
    return create_model(  # type: ignore[call-overload, no-any-return]
        schema_name(error),
        __base__=_ProblemBase,
        __doc__=f"{error.title} (`{problem_type(error.slug)}`, {error.status}): " + _meaning(error),
        type=(Literal[problem_type(error.slug)], Field(description="The problem type")),
        status=status,
        **error.extensions,
    )


def _meaning(error: type[AppError]) -> str:
    return " ".join((error.__doc__ or "").split())


def problems_reference() -> str:
    """The problem types as a Markdown table (docs/api.md carries it, so it cannot drift)."""
    rows = [
        "| `type` | status | members beyond RFC 9457 | headers | meaning |",
        "|---|---|---|---|---|",
    ]
    for urn, error in problem_types():
        status = str(error.status) if error.fixed_status else "the HTTP status"
        members = ", ".join(f"`{name}`" for name in error.extensions) or "-"
        headers = ", ".join(f"`{name}`" for name in error.sends_headers) or "-"
        meaning = _meaning(error).replace("|", "\\|")
        rows.append(f"| `{urn}` | {status} | {members} | {headers} | {meaning} |")
    return "\n".join(rows) + "\n"


def problem_types() -> list[tuple[str, type[AppError]]]:
    """Every problem type the API sends, ordered by status then name."""
    return sorted(
        ((problem_type(slug), error) for slug, error in PROBLEMS.items()),
        key=lambda item: (item[1].status, item[0]),
    )


def _problem_schemas() -> dict[str, Any]:
    models = [problem_model(error) for _urn, error in problem_types()]
    _, top = models_json_schema(
        [(model, "serialization") for model in models],
        ref_template=SCHEMAS + "{model}",
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    schemas["ProblemType"] = {
        "title": "ProblemType",
        "type": "string",
        "enum": [urn for urn, _error in problem_types()],
        "description": "Every problem type the API sends (docs/api.md lists what each means). "
        "New types may be added in a later version (an additive change): handle an unknown "
        "one by its status.",
    }
    schemas["Problem"] = {
        "title": "Problem",
        "type": "object",
        "description": "Any problem (RFC 9457): the members every type has. Each type has its "
        "own schema too (`<Name>Problem`), which operations refer to.",
        "properties": {
            "type": {"$ref": SCHEMAS + "ProblemType"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "request_id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "errors": {
                "type": "array",
                "items": {"$ref": SCHEMAS + "FieldError"},
                "description": "On `validation-failed`: each bad field",
            },
            "live_session_ids": {
                "type": "array",
                "items": {"type": "string", "format": "uuid"},
                "description": "On `user-session-limit`: the user's live sessions",
            },
        },
        "required": ["type", "title", "status", "detail", "instance", "request_id"],
    }
    return schemas


def _problem_response(slugs: set[str], description: str | None) -> dict[str, Any]:
    errors = sorted((PROBLEMS[slug] for slug in slugs), key=lambda e: e.slug)
    refs = {problem_type(e.slug): {"$ref": SCHEMAS + schema_name(e)} for e in errors}
    schema: dict[str, Any]
    if len(refs) == 1:
        schema = next(iter(refs.values()))
    else:
        schema = {
            "oneOf": list(refs.values()),
            "discriminator": {
                "propertyName": "type",
                "mapping": {urn: ref["$ref"] for urn, ref in refs.items()},
            },
        }
    headers = {"X-Request-Id": header_ref("X-Request-Id")}
    for error in errors:
        for name in error.sends_headers:
            headers[name] = header_ref(name)
    return {
        "description": description or "; ".join(dict.fromkeys(e.title for e in errors)),
        "headers": headers,
        "content": {PROBLEM_JSON: {"schema": schema}},
    }


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for operation in methods.values():
            yield path, operation


def _describe_problems(document: dict[str, Any]) -> None:
    for path, operation in _operations(document):
        responses: dict[str, Any] = operation["responses"]
        wanted: dict[str, set[str]] = {}
        descriptions: dict[str, str] = {}
        for code, response in list(responses.items()):
            if PROBLEMS_KEY in response:
                wanted.setdefault(code, set()).update(response.pop(PROBLEMS_KEY))
            if code.isdigit() and int(code) >= 400:
                del responses[code]  # rebuilt below (FastAPI's own 422 included)
                if PROBLEMS_KEY not in response and code != "422":
                    descriptions[code] = response.get("description", "")
        common: list[type[AppError]] = [InternalError]
        if "security" in operation:
            common += [Unauthorized, Forbidden]
        if path.startswith("/v1/"):
            common += [DatabaseUnavailable, DatabaseBusy]
        if operation.get("parameters") or "requestBody" in operation:
            common.append(ValidationFailed)
        if "requestBody" in operation:
            common += [PayloadTooLarge, UnsupportedEncoding]
        for error in common:
            wanted.setdefault(str(error.status), set()).add(error.slug)
        for code in sorted(wanted):
            responses[code] = _problem_response(wanted[code], descriptions.get(code))
        for code, response in responses.items():
            if int(code) < 400:
                response.setdefault("headers", {})
                response["headers"] = {
                    "X-Request-Id": header_ref("X-Request-Id"),
                    **response["headers"],
                }


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(SCHEMAS):
            yield ref.removeprefix(SCHEMAS)
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _closure(schemas: dict[str, Any], roots: Iterator[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in schemas:
            continue
        seen.add(name)
        todo.extend(_refs(schemas[name]))
    return seen


def _rename_split_models(document: dict[str, Any]) -> None:
    """FastAPI names a model whose request and response schemas differ `X-Input` and
    `X-Output`: here `X` and `XOut`."""
    schemas = document["components"]["schemas"]
    names = {}
    for name in list(schemas):
        if name.endswith("-Input"):
            names[name] = name.removesuffix("-Input")
        elif name.endswith("-Output"):
            names[name] = name.removesuffix("-Output") + "Out"
    if not names:
        return
    text = json.dumps(document)
    for old, new in names.items():
        text = text.replace(f'"{SCHEMAS}{old}"', f'"{SCHEMAS}{new}"')
    renamed = json.loads(text)
    document.clear()
    document.update(renamed)
    schemas = document["components"]["schemas"]
    for old, new in names.items():
        assert new not in schemas, f"{old} would be renamed {new}, which exists"
        schemas[new] = schemas.pop(old)
        schemas[new]["title"] = new


def _request_schemas_without_defaults(document: dict[str, Any]) -> None:
    """A request schema's defaults move to its descriptions (see the module's docstring)."""
    schemas = document["components"]["schemas"]
    requests = _closure(
        schemas,
        (
            ref
            for _path, operation in _operations(document)
            for ref in _refs([operation.get("requestBody", {}), operation.get("parameters", [])])
        ),
    )
    responses = _closure(
        schemas,
        (
            ref
            for _path, operation in _operations(document)
            for ref in _refs(operation["responses"])
        ),
    )
    shared = {name for name in requests & responses if "properties" in schemas[name]}
    assert not shared, f"object schemas used in requests and responses alike: {sorted(shared)}"
    for name in requests:
        for field in schemas[name].get("properties", {}).values():
            if "default" not in field:
                continue
            default = field.pop("default")
            said = f"Default: `{json.dumps(default)}`."
            described = field.get("description", "").rstrip(".")
            field["description"] = f"{described}. {said}" if described else said


def document_of(app: FastAPI, extra_schemas: list[type[BaseModel]]) -> dict[str, Any]:
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schemas = document["components"]["schemas"]
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    _rename_split_models(document)
    schemas = document["components"]["schemas"]
    for name, schema in _problem_schemas().items():
        schemas.setdefault(name, schema)
    if extra_schemas:
        _, top = models_json_schema(
            [(model, "serialization") for model in extra_schemas], ref_template=SCHEMAS + "{model}"
        )
        for name, schema in top.get("$defs", {}).items():
            schemas.setdefault(name, schema)
    document["components"]["headers"] = RESPONSE_HEADERS
    _describe_problems(document)
    _request_schemas_without_defaults(document)
    return document


def install(app: FastAPI, extra_schemas: list[type[BaseModel]] | None = None) -> None:
    """Serve the shaped document at /openapi.json (built once)."""

    def openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            app.openapi_schema = document_of(app, extra_schemas or [])
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
