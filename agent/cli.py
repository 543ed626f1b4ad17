"""vdi-agent: the command in each session pod.

vdi-agent run               checks, first report, Selkies under supervision, heartbeats
vdi-agent check [--json]    checks 1-2 and the encoder choice; prints the report, calls nothing
vdi-agent pipeline          the GStreamer pipeline it would run
vdi-agent report            send a health report (JSON on stdin) as the agent does
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine
from typing import Any

from agent.callbacks import Reporter


def cmd_run(_args: argparse.Namespace) -> None:
    from agent.runner import Agent, AgentEnv
    from agent.streamers import UnknownStreamer, detect

    agent_env = AgentEnv.from_environ()
    try:
        streamer = detect(agent_env.env)
    except UnknownStreamer as error:
        raise SystemExit(f"vdi-agent: {error}") from None
    raise SystemExit(asyncio.run(_until_signalled(Agent(agent_env, streamer).run())))


async def _until_signalled(work: Coroutine[Any, Any, int]) -> int:
    """Run `work`; SIGTERM (the pod is being deleted) or SIGINT cancels it, so its cleanup
    (stopping the streamer's whole process group) runs before the agent exits."""
    import signal

    task = asyncio.create_task(work)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return 128 + signal.SIGTERM


def cmd_check(args: argparse.Namespace) -> None:
    import os

    from agent.runner import AgentEnv, check_report
    from agent.streamers import UnknownStreamer, detect

    environ = {"VDI_SESSION_ID": "-", "VDI_CALLBACK_URL": "-", "VDI_AGENT_TOKEN": "-"}
    environ.update(os.environ)
    agent_env = AgentEnv.from_environ(environ)
    try:
        streamer = detect(agent_env.env)
    except UnknownStreamer:
        streamer = None  # the checks still run: the spec's line decides the encoder
    report, choice = check_report(agent_env, streamer)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for check in report["checks"]:
            print(f"{check['name']:8} {check['ok']!s:5} {check['code'] or ''} {check['detail']}")
        print(f"encoder  {choice.encoder or 'none'}{' (fallback)' if choice.fallback else ''}")
    raise SystemExit(0 if choice.encoder else 1)


def cmd_pipeline(_args: argparse.Namespace) -> None:
    import os

    from agent.runner import AgentEnv, check_report

    environ = {"VDI_SESSION_ID": "-", "VDI_CALLBACK_URL": "-", "VDI_AGENT_TOKEN": "-", **os.environ}
    report, _choice = check_report(AgentEnv.from_environ(environ))
    if "pipeline" not in report:
        print("vdi-agent: no usable encoder", file=sys.stderr)
        raise SystemExit(1)
    print(report["pipeline"])


def cmd_report(_args: argparse.Namespace) -> None:
    from agent.runner import AgentEnv

    try:
        report = json.load(sys.stdin)
    except json.JSONDecodeError as error:
        print(f"vdi-agent: the report on stdin is not JSON: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    agent = AgentEnv.from_environ()
    reporter = Reporter(agent.callback_url, agent.session_id, agent.token)
    delivered = asyncio.run(reporter.send(report, attempts=3))
    print(json.dumps({"delivered": delivered, "phase": reporter.session_phase}))
    raise SystemExit(0 if delivered else 1)


def configure_logging() -> None:
    """JSON lines on stderr: stdout is for what a command prints (check --json, pipeline)."""
    import logging

    import structlog

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    parser = argparse.ArgumentParser(
        prog="vdi-agent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run in the session pod").set_defaults(handler=cmd_run)
    check = commands.add_parser("check", help="run checks 1-2, print the report")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=cmd_check)
    commands.add_parser("pipeline", help="print the pipeline").set_defaults(handler=cmd_pipeline)
    commands.add_parser("report", help="send a report (JSON on stdin)").set_defaults(
        handler=cmd_report
    )
    args = parser.parse_args(argv)
    args.handler(args)
