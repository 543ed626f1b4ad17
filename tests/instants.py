"""What a portal computing "time to desktop" or replaying a session's log relies on: a session's
instants in order, its events in id order with non-decreasing time stamps, each event in the
phase the session had when it was stored."""

from __future__ import annotations

from datetime import datetime
from typing import Any

CHAIN = ("created_at", "provisioned_at", "scheduled_at", "running_at", "ended_at")


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def disorder(session: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    """Every way the session and its log are out of order (empty: in order)."""
    problems = []
    set_ = [(name, _at(session[name])) for name in CHAIN if session.get(name) is not None]
    for (before, early), (after, late) in zip(set_, set_[1:], strict=False):
        if late < early:
            problems.append(f"{session['id']}: {after} {late} is before {before} {early}")
    phase = None
    for previous, event in zip([None, *events], events, strict=False):
        if previous is not None:
            if event["id"] <= previous["id"]:
                problems.append(f"event {event['id']} listed after {previous['id']}")
            if _at(event["created_at"]) < _at(previous["created_at"]):
                problems.append(
                    f"event {event['id']} ({event['type']} {event['reason']}) at "
                    f"{event['created_at']}, before event {previous['id']} at "
                    f"{previous['created_at']}"
                )
        if event["type"] == "PhaseChanged":
            phase = event["data"]["to"]
        elif phase is not None and event["phase"] != phase:
            problems.append(
                f"event {event['id']} ({event['type']} {event['reason']}) says {event['phase']}, "
                f"stored while the session was {phase}"
            )
    return problems
