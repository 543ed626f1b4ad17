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


Fields = Callable[[Mapping[str, object]], bool]
# The fields the API server can select on, per resource (others: 400, as it answers); every
# resource has metadata.name and metadata.namespace.
FIELD_LABELS = {
    "events": frozenset(
        {
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        }
    ),
    "pods": frozenset({"spec.nodeName", "spec.restartPolicy", "status.phase", "status.podIP"}),
}


def _field(obj: Mapping[str, object], path: str) -> str:
    value: object = obj
    if path == "source":  # an event's source is its component
        path = "source.component"
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return "" if value is None else str(value)


def _field_test(key: str, value: str, negate: bool) -> Fields:
    if negate:
        return lambda obj: _field(obj, key) != value
    return lambda obj: _field(obj, key) == value


def parse_fields(selector: str | None, plural: str) -> Fields:
    """A predicate on an object for a `fieldSelector` (`a.b=c`, `a.b==c`, `a.b!=c`, joined by
    commas); ValueError for what the API server refuses: a field it cannot select on."""
    allowed = FIELD_LABELS.get(plural, frozenset()) | {"metadata.name", "metadata.namespace"}
    tests: list[Fields] = []
    for raw in (selector or "").split(","):
        term = raw.strip()
        if not term:
            continue
        negate = "!=" in term
        key, _, value = term.replace("!=", "=").replace("==", "=").partition("=")
        key, value = key.strip(), value.strip()
        if not _ or not key:
            raise ValueError(f"invalid field selector: {term!r}")
        if key not in allowed:
            raise ValueError(f'field label not supported: "{key}"')
        tests.append(_field_test(key, value, negate))
    return lambda obj: all(test(obj) for test in tests)
