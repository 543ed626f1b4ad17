"""Property-based fuzzing of the running service from its own OpenAPI document (schemathesis):
whatever a client sends, with a token of any scope or none, the service answers without a 5xx,
every response matches its documented schema and status codes, and every error is
application/problem+json."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st

from app.config import Settings
from app.main import create_app
from tests.reliability.service import Service, service

pytestmark = pytest.mark.e2e

SCOPES = ("admin", "sessions:read", "sessions:write", "sessions:connect", "templates:write")
EXAMPLES_PER_OPERATION = 200


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, dict[str, str]]]:
    with service(tmp_path_factory.mktemp("fuzz"), VDI_LOG_LEVEL="WARNING") as svc:
        tokens = {scope: svc.token(scope) for scope in SCOPES}
        tokens["revoked"] = svc.token("admin", revoked=True)
        # Something to find: a template and a session, so that reads and writes meet real rows.
        httpx.put(
            f"{svc.url}/v1/templates/fuzz",
            json={"image": "vdi/session:1", "gpu": 0},
            headers=svc.admin,
            timeout=30,
        ).raise_for_status()
        httpx.post(
            f"{svc.url}/v1/sessions",
            json={"user": "fuzzer", "template": "fuzz"},
            headers=svc.admin,
            timeout=30,
        ).raise_for_status()
        yield svc, tokens


def _operations() -> list[str]:
    """The operations, for the test ids (the test itself reads the running service's document)."""
    document = create_app(Settings(), "postgresql://unused@/unused").openapi()
    return [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch")
    ]


@pytest.fixture(scope="module")
def api_schema(running: tuple[Service, dict[str, str]]) -> Any:
    svc, _ = running
    return schemathesis.openapi.from_url(f"{svc.url}/openapi.json")


def errors_are_problem_json(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])
        content_type = content_type[0] if isinstance(content_type, list) else content_type
        assert content_type.startswith("application/problem+json"), (
            f"{response.status_code} answered with {content_type!r}"
        )
        body = response.json()
        assert {"type", "title", "status", "detail"} <= set(body), body
        assert body["status"] == response.status_code
    return None


@pytest.mark.parametrize("label", _operations())
def test_operation(label: str, api_schema: Any, running: tuple[Service, dict[str, str]]) -> None:
    _, tokens = running
    (operation,) = [
        result.ok() for result in api_schema.get_all_operations() if result.ok().label == label
    ]

    @hypothesis.given(
        case=operation.as_strategy(),
        who=st.sampled_from((*SCOPES, "revoked", "none", "garbage")),
    )
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        derandomize=True,
        database=None,
    )
    def fuzz(case: Any, who: str) -> None:
        headers = dict(case.headers or {})
        if who == "none":
            headers.pop("Authorization", None)
        elif who == "garbage":
            headers["Authorization"] = "Bearer vdi_not-a-token"
        else:
            headers["Authorization"] = f"Bearer {tokens[who]}"
        case.headers = headers
        # positive_data_acceptance is left out: the schema cannot say "no NUL", which the
        # service refuses with a 422 on purpose (app/textguard.py).
        case.call_and_validate(
            additional_checks=(errors_are_problem_json,),
            excluded_checks=(schemathesis.checks.positive_data_acceptance,),
        )

    fuzz()


def _cursor(created_at: str, session_id: str) -> str:
    raw = json.dumps([created_at, session_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_hostile_headers_and_parameters_get_4xx_never_5xx(
    running: tuple[Service, dict[str, str]],
) -> None:
    """What the schema cannot describe: event ids past bigint, Last-Event-ID bytes that are
    not ASCII digits ("²" passes str.isdigit), cursors holding dates no timezone conversion or
    Postgres can take, JSON nested thousands deep. Each is a 4xx problem naming the field."""
    svc, tokens = running
    sessions = httpx.get(f"{svc.url}/v1/sessions", headers=svc.admin, timeout=30).json()
    session_id = sessions["items"][0]["id"]
    events = f"{svc.url}/v1/sessions/{session_id}/events"
    read = {"Authorization": f"Bearer {tokens['sessions:read']}"}

    def problem(response: httpx.Response, field: str) -> None:
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
        assert response.headers["content-type"].startswith("application/problem+json")
        assert field in response.text

    @hypothesis.given(
        last_event_id=st.binary(min_size=1, max_size=30).filter(
            lambda b: all(0x20 <= c <= 0xFF and c != 0x7F for c in b) and b.strip() == b
        ),
        after=st.integers(min_value=2**63, max_value=2**80),
        year=st.integers(min_value=1, max_value=9999),
        offset_h=st.integers(min_value=-14, max_value=14),
    )
    @hypothesis.settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        derandomize=True,
        database=None,
    )
    def fuzz(last_event_id: bytes, after: int, year: int, offset_h: int) -> None:
        stream = {**read, "Accept": "text/event-stream"}
        if not (last_event_id.isdigit() and int(last_event_id) < 2**63):
            with httpx.stream(
                "GET", events, headers={**stream, "Last-Event-ID": last_event_id}, timeout=10
            ) as response:
                response.read()
            problem(response, "Last-Event-ID")
        for headers in (read, stream):
            with httpx.stream(
                "GET", events, params={"after": str(after)}, headers=headers, timeout=10
            ) as response:
                response.read()
            problem(response, "after")
        moment = f"{year:04d}-06-15T12:00:00{offset_h:+03d}:00"
        listed = httpx.get(
            f"{svc.url}/v1/sessions",
            params={"cursor": _cursor(moment, session_id)},
            headers=read,
            timeout=10,
        )
        assert listed.status_code in (200, 422), listed.text[:300]
        if listed.status_code == 422:
            problem(listed, "cursor")

    fuzz()
    for body in ("[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000):
        deep = httpx.post(
            f"{svc.url}/v1/sessions",
            content=body,
            headers={**svc.admin, "Content-Type": "application/json"},
            timeout=10,
        )
        assert deep.status_code in (413, 422), deep.text[:300]
        if deep.status_code == 422:
            problem(deep, "body")
