"""Kubernetes label selectors (the `labelSelector` query parameter)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

_SET = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def parse(selector: str | None) -> Callable[[Mapping[str, str]], bool]:
    """A predicate on labels; raises ValueError on a selector Kubernetes would refuse."""
    tests: list[Callable[[Mapping[str, str]], bool]] = []
    for raw in _split(selector or ""):
        term = raw.strip()
        if match := _SET.match(term):
            key, op, values = match[1], match[2], {v.strip() for v in match[3].split(",")}
            if op == "in":
                tests.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                tests.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif term.startswith("!"):
            tests.append(lambda labels, k=term[1:].strip(): k not in labels)
        elif re.fullmatch(r"[A-Za-z0-9./_-]+", term):
            tests.append(lambda labels, k=term: k in labels)
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    return lambda labels: all(test(labels) for test in tests)
