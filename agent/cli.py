"""vdi-agent: the command in each session pod.

For now it has one subcommand, `report`, which sends a health report (JSON on stdin) to the
control plane the way the agent does; the checks and stream supervision that produce those
reports are built in the agent issue.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import httpx

ENV_SESSION_ID = "VDI_SESSION_ID"
ENV_CALLBACK_URL = "VDI_CALLBACK_URL"
ENV_AGENT_TOKEN = "VDI_AGENT_TOKEN"


def _require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        print(f"vdi-agent: {name} is not set (the pod spec injects it)", file=sys.stderr)
        raise SystemExit(2)
    return value


def send_report(report: dict[str, object], *, timeout_s: float = 10.0) -> httpx.Response:
    session_id = _require_env(ENV_SESSION_ID)
    base = _require_env(ENV_CALLBACK_URL).rstrip("/")
    token = _require_env(ENV_AGENT_TOKEN)
    return httpx.post(
        f"{base}/v1/sessions/{session_id}/health",
        json=report,
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout_s,
    )


def cmd_report(_args: argparse.Namespace) -> None:
    try:
        report = json.load(sys.stdin)
    except json.JSONDecodeError as error:
        print(f"vdi-agent: the report on stdin is not JSON: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    response = send_report(report)
    print(response.text)
    raise SystemExit(0 if response.is_success else 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vdi-agent", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="send a health report (JSON on stdin)")
    report.set_defaults(handler=cmd_report)
    args = parser.parse_args(argv)
    args.handler(args)
