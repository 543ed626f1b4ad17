"""Logs a person reads on a terminal, JSON lines everywhere else."""

from __future__ import annotations

import io
import json
import logging
import re

import structlog

from app.observability import configure_logging


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_unless_a_terminal_reads_them() -> None:
    piped, terminal = io.StringIO(), Terminal()
    configure_logging("INFO", json=None, stream=piped)
    structlog.get_logger("vdi.test").info("session moved", phase="Running")
    line = json.loads(piped.getvalue().splitlines()[-1])
    assert (line["event"], line["phase"]) == ("session moved", "Running")
    configure_logging("INFO", json=None, stream=terminal)
    structlog.get_logger("vdi.test").info("session moved", phase="Running")
    text = re.sub(r"\x1b\[[0-9;]*m", "", terminal.getvalue())  # its colours aside
    assert "session moved" in text
    assert "phase=Running" in text
    assert not text.lstrip().startswith("{")
    configure_logging("INFO", json=True, stream=terminal)  # an explicit choice wins
    structlog.get_logger("vdi.test").info("again")
    assert json.loads(terminal.getvalue().splitlines()[-1])["event"] == "again"


def test_the_embedded_postgres_chatter_is_kept_to_warnings() -> None:
    stream = io.StringIO()
    configure_logging("INFO", json=True, stream=stream)
    chatty = logging.getLogger("embedded_postgres")
    chatty.info("Running command: pg_ctl ...\nwaiting for server to start....\n done")
    chatty.warning("the server could not be stopped")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["the server could not be stopped"]
