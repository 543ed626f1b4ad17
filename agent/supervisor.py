"""A streamer under supervision: started in a process group of its own (so stopping it stops
everything it started), its output passed through with secrets masked and its last lines kept,
restarted with backoff when it crashes (each restart reported), never restarted when it exits
with a configuration error, and stopped whole whenever the agent stops."""

from __future__ import annotations

import asyncio
import collections
import ctypes
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import structlog

log = structlog.get_logger("vdi.agent.supervisor")

LOG_TAIL_LINES = 20
ERROR_LINES = 5
# A line that says why it failed, kept even when later chatter pushes it out of the tail
# (Selkies 2.x logs its "no password" error, then a dozen lines of shutting down).
ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL|FATAL|Traceback)\b|\b[A-Z]\w*Error:")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: a new session (its own process group), and SIGTERM when the
    agent dies, even by SIGKILL, so no streamer outlives it."""
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the process group is still stopped by stop()


@dataclass(frozen=True)
class Outcome:
    """Why supervision ended."""

    kind: str  # "stopped", "config_error", "gave_up"
    exit_code: int | None
    log_tail: tuple[str, ...]


class Supervisor:
    """Runs `command`; restarts it up to `max_restarts` times unless it exits with one of
    `config_error_codes`."""

    def __init__(
        self,
        command: list[str],
        env: Mapping[str, str],
        *,
        on_restart: Callable[[int, int | None], Awaitable[None]],
        max_restarts: int = 5,
        first_backoff_s: float = 1.0,
        config_error_codes: Iterable[int] = (),
        secrets: Iterable[str] = (),
    ) -> None:
        self.command = command
        self.env = dict(env)
        self.on_restart = on_restart
        self.max_restarts = max_restarts
        self.first_backoff_s = first_backoff_s
        self.config_error_codes = frozenset(config_error_codes)
        self.secrets = tuple(s for s in secrets if s)
        self.restarts = 0
        self.process: asyncio.subprocess.Process | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.errors: collections.deque[tuple[int, str]] = collections.deque(maxlen=ERROR_LINES)
        self.lines = 0
        self._stopping = False
        self._reconfiguring = False
        # Counts reconfigurations. New settings that come while a process is being started
        # (the child may already run before run() holds it) restart it as soon as it is held,
        # rather than waiting for its next restart.
        self._generation = 0

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    async def reconfigure(self, changes: Mapping[str, str]) -> None:
        """Restart the streamer with new settings (frame rate, bitrate): it takes them at
        start. The viewer reconnects by itself."""
        self.env.update(changes)
        self._generation += 1
        if self.process is not None and self.process.returncode is None:
            self._restart_for_settings()

    def _restart_for_settings(self) -> None:
        self._reconfiguring = True
        self._signal_group(signal.SIGTERM)

    async def _pass_output(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = self.mask(line.decode(errors="replace").rstrip())
            self.tail.append(text)
            self.lines += 1
            if ERROR_LINE.search(text):
                self.errors.append((self.lines, text))
            print(text, file=sys.stderr, flush=True)

    async def run(self) -> Outcome:
        """Until stopped, out of restarts, or configured wrong."""
        backoff = self.first_backoff_s
        code: int | None = None
        while not self._stopping:
            generation = self._generation
            self.process = await asyncio.create_subprocess_exec(
                *self.command,
                env=dict(self.env),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
            log.info("streamer started", pid=self.process.pid, command=self.command[0])
            if self._stopping:  # stop() came while it was being started: it found no process
                self._signal_group(signal.SIGTERM)
            elif self._generation != generation:  # so did new settings: apply them now
                self._restart_for_settings()
            assert self.process.stdout is not None
            output = asyncio.create_task(self._pass_output(self.process.stdout))
            code = await self.process.wait()
            self._signal_group(signal.SIGKILL)  # whatever it left behind in its group
            await output
            if self._stopping:
                break
            if self._reconfiguring:  # we stopped it to apply new settings: not a failure
                self._reconfiguring = False
                continue
            if code in self.config_error_codes:
                log.error("streamer configuration error; not restarting", exit_code=code)
                return Outcome("config_error", code, self.evidence())
            if self.restarts >= self.max_restarts:
                log.error("streamer keeps dying; giving up", exit_code=code, restarts=self.restarts)
                return Outcome("gave_up", code, self.evidence())
            self.restarts += 1
            log.warning("streamer exited; restarting", exit_code=code, restart=self.restarts)
            await self.on_restart(self.restarts, code)
            await asyncio.sleep(backoff)
            backoff = min(30.0, backoff * 2)
        return Outcome("stopped", code, self.evidence())

    def evidence(self) -> tuple[str, ...]:
        """The last lines, after the error lines that scrolled out of them."""
        first_in_tail = self.lines - len(self.tail) + 1
        scrolled = [text for number, text in self.errors if number < first_in_tail]
        return (*scrolled, *(["…"] if scrolled else []), *self.tail)

    def _signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signum)  # its pid is its group's id (setsid)
        except (ProcessLookupError, PermissionError):
            pass

    async def stop(self, timeout_s: float = 10) -> None:
        """Stop the streamer and everything in its process group."""
        self._stopping = True
        if self.process is None:
            return
        if self.process.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=timeout_s)
            except TimeoutError:
                pass
        self._signal_group(signal.SIGKILL)
        if self.process.returncode is None:
            await self.process.wait()
