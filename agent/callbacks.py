"""Health reports to the control plane: retried with backoff while it is unreachable, never
raising into the desktop; a 401/403 means this token is not (or no longer) valid: stop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

log = structlog.get_logger("vdi.agent.callbacks")

MAX_BACKOFF_S = 30.0
# Answers after which retrying is pointless: the agent stops calling back.
FINAL_ANSWERS = {
    401: "the control plane refused the agent token",
    403: "the control plane refused the agent token",
    404: "the session is gone",
    409: "the session has ended",
}


def _not_started(response: httpx.Response) -> bool:
    if response.status_code != 409:
        return False
    try:
        return str(response.json().get("type", "")).endswith(":session-not-started")
    except ValueError:
        return False


DEFAULT_INTERVAL_S = 15.0  # until the control plane says otherwise
INTERVAL_HEADER = "VDI-Report-Interval"
INTERVAL_BOUNDS_S = (5.0, 300.0)


def _interval(response: httpx.Response, current: float) -> float:
    """The interval the control plane asks for, within sane bounds; else the current one."""
    try:
        asked = float(response.headers.get(INTERVAL_HEADER, ""))
    except ValueError:
        return current
    return min(max(asked, INTERVAL_BOUNDS_S[0]), INTERVAL_BOUNDS_S[1])


@dataclass
class Reporter:
    callback_url: str
    session_id: str
    token: str
    timeout_s: float = 10.0
    stopped: bool = False
    session_phase: str | None = None
    sent: int = 0
    # Seconds between reports when nothing changes, as the control plane last said.
    interval_s: float = DEFAULT_INTERVAL_S

    @property
    def url(self) -> str:
        return f"{self.callback_url.rstrip('/')}/v1/sessions/{self.session_id}/health"

    async def send(
        self, report: dict[str, Any], *, attempts: int = 8, first_delay_s: float = 0.5
    ) -> bool:
        """Deliver one report; True when the control plane took it."""
        if self.stopped:
            return False
        delay = first_delay_s
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(timeout=self.timeout_s) as http:
            for attempt in range(1, attempts + 1):
                try:
                    response = await http.post(self.url, json=report, headers=headers)
                except httpx.HTTPError as error:
                    log.warning(
                        "control plane unreachable; retrying",
                        attempt=attempt,
                        error=type(error).__name__,
                    )
                else:
                    final = FINAL_ANSWERS.get(response.status_code)
                    if _not_started(response):
                        final = None  # the pod is ahead of the session's phase: retry
                    if final is not None:
                        log.error(f"{final}; health callbacks stop", status=response.status_code)
                        self.stopped = True
                        return False
                    if response.is_success:
                        self.sent += 1
                        self.session_phase = response.json().get("phase")
                        self.interval_s = _interval(response, self.interval_s)
                        return True
                    log.warning(
                        "control plane answered an error; retrying", status=response.status_code
                    )
                await asyncio.sleep(delay)
                delay = min(MAX_BACKOFF_S, delay * 2)
        return False
