"""Kubernetes label selectors (the `labelSelector` query parameter)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

Labels = Mapping[str, str]
Test = Callable[[Labels], bool]
_SET = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def _term(term: str) -> Test:
    if match := _SET.match(term):
        key, values, wanted = match[1], {v.strip() for v in match[3].split(",")}, match[2] == "in"
        return lambda labels: (labels.get(key) in values) == wanted
    if "!=" in term:
        key, value = (s.strip() for s in term.split("!=", 1))
        return lambda labels: labels.get(key) != value
    if "=" in term:
        key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
        return lambda labels: labels.get(key) == value
    if term.startswith("!"):
        absent = term[1:].strip()
        return lambda labels: absent not in labels
    if re.fullmatch(r"[A-Za-z0-9./_-]+", term):
        return lambda labels: term in labels
    raise ValueError(f"unable to parse requirement: {term!r}")


def parse(selector: str | None) -> Test:
    """A predicate on labels; raises ValueError on a selector Kubernetes would refuse."""
    tests = [_term(raw.strip()) for raw in _split(selector or "")]
    return lambda labels: all(test(labels) for test in tests)
