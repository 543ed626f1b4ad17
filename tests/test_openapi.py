"""The OpenAPI document is a contract clients are generated from: check it, generate a client
with openapi-python-client (no warnings), and drive the real server with that client."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from app.cli import main as cli_main
from harness.servers import serve
from tests.conftest import TEST_BOOTSTRAP_TOKEN
from tests.tools import TOOL_PATH

PUBLIC = {"/healthz", "/readyz", "/metrics"}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return json.loads(
        subprocess.run(
            [sys.executable, "-c", "from app.cli import main; main(['openapi'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def test_every_operation_has_a_unique_readable_operation_id(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids)) == 29
    assert all(i.replace("_", "").isalpha() and i.islower() for i in ids)
    assert {
        "create_session",
        "list_sessions",
        "report_session_health",
        "get_session_connection",
        "renew_session_turn_credentials",
        "create_session_share",
        "list_session_shares",
        "revoke_session_share",
        "disconnect_session_viewer",
        "get_session_access",
        "list_audit_records",
        "record_desktop_audit_event",
        "start_session_recording",
        "stop_session_recording",
    } <= set(ids)


def test_errors_are_documented_as_problems_and_auth_as_bearer(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, method, op in operations(document):
        if path in PUBLIC:
            assert "security" not in op
            continue
        assert op["security"] == [{"HTTPBearer": []}], (method, path)
        assert {"401", "403"} <= set(op["responses"]), (method, path)
        for code, response in op["responses"].items():
            if int(code) >= 400:
                assert list(response["content"]) == ["application/problem+json"], (
                    method,
                    path,
                    code,
                )
        if op.get("parameters") or op.get("requestBody"):
            assert "422" in op["responses"], (method, path)
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_the_api_page_lists_every_problem_type(document: dict[str, Any]) -> None:
    """docs/api.md carries the table `vdi-control problems` prints, and that table is the
    document's ProblemType enum, each type with a meaning: a type added, renamed or re-described
    without regenerating the page fails here."""
    import app.main  # noqa: F401  (defines every problem type)
    from app.openapi import problem_types, problems_reference

    page = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    table = problems_reference()
    assert table in page, "regenerate the table in docs/api.md: vdi-control problems"
    enum = document["components"]["schemas"]["ProblemType"]["enum"]
    assert [urn for urn, _error in problem_types()] == enum
    for urn, error in problem_types():
        assert f"| `{urn}` |" in table
        assert (error.__doc__ or "").strip(), f"{urn} has no meaning (its class's docstring)"
        schema = document["components"]["schemas"][f"{error.__name__}Problem"]
        assert " ".join(error.__doc__.split()) in schema["description"]


def test_cli_prints_the_same_document(
    capsys: pytest.CaptureFixture[str], document: dict[str, Any]
) -> None:
    cli_main(["openapi"])
    assert json.loads(capsys.readouterr().out) == document


@pytest.fixture(scope="module")
def generated_client(document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("client")
    (where / "openapi.json").write_text(json.dumps(document))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            "openapi.json",
            "--output-path",
            "out",
        ],
        cwd=where,
        # Its post-generation hook runs `ruff` from PATH: this environment's, not the caller's.
        env={**os.environ, "PATH": TOOL_PATH},
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower(), output
    return where / "out"


async def test_a_generated_client_drives_the_service(app: FastAPI, generated_client: Path) -> None:
    sys.path.insert(0, str(generated_client))
    try:
        client_module = importlib.import_module("vdi_control_client")
        create_session = importlib.import_module("vdi_control_client.api.sessions.create_session")
        put_template = importlib.import_module("vdi_control_client.api.templates.put_template")
        get_session = importlib.import_module("vdi_control_client.api.sessions.get_session")
        models = importlib.import_module("vdi_control_client.models")
        async with serve(app) as url:
            client = client_module.AuthenticatedClient(base_url=url, token=TEST_BOOTSTRAP_TOKEN)
            spec = models.TemplateSpec(image="registry.test/vdi:1", gpu=0)
            template = await put_template.asyncio(name="cpu", client=client, body=spec)
            assert template.name == "cpu"
            assert template.gpu == 0
            created = await create_session.asyncio_detailed(
                client=client, body=models.SessionCreate(user="alice", template="cpu")
            )
            assert created.status_code == 202
            session = created.parsed
            assert session.phase == models.Phase.PENDING
            fetched = await get_session.asyncio(session_id=session.id, client=client)
            assert fetched.id == session.id
            refused = await create_session.asyncio(
                client=client, body=models.SessionCreate(user="alice", template="cpu")
            )
            # the 409's own schema: the user's live sessions, typed
            assert isinstance(refused, models.UserSessionLimitProblem)
            assert refused.status == 409
            assert refused.live_session_ids == [session.id]
            await client.get_async_httpx_client().aclose()
    finally:
        sys.path.remove(str(generated_client))
        for name in [m for m in sys.modules if m.startswith("vdi_control_client")]:
            del sys.modules[name]
