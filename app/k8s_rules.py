"""What the Kubernetes API server checks beyond its OpenAPI schema, for the fields a template
puts into objects: label keys and values (node selectors), tolerations, sizes. The template API
refuses these with a 422 at `PUT` instead of a session failing later, and the fake API server's
admission refuses them as the real one does. The rules and messages follow apimachinery's
`validation.IsQualifiedName`, `IsValidLabelValue` and core's `ValidateTolerations`."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUANTITY_NUMBER = re.compile(r"^[0-9]+(\.[0-9]+)?")
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def qualified_name_errors(value: str) -> list[str]:
    """Errors of a label or toleration key (`[prefix/]name`), as the API server words them."""
    parts = value.split("/")
    if len(parts) > 2:
        return [
            "a qualified name must consist of alphanumeric characters, '-', '_' or '.', "
            "with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    errors = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errors.append("prefix part must be non-empty")
        elif len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix):
            errors.append("prefix part must be a lowercase RFC 1123 subdomain (e.g. 'example.com')")
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    elif not _NAME_PART.match(name):
        errors.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
            "and end with an alphanumeric character"
        )
    return errors


def label_value_errors(value: str) -> list[str]:
    if len(value) > 63:
        return ["must be no more than 63 characters"]
    if not _LABEL_VALUE.match(value):
        return [
            "a valid label must be an empty string or consist of alphanumeric characters, '-', "
            "'_' or '.', and must start and end with an alphanumeric character"
        ]
    return []


def node_selector_errors(selector: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(field path, message) for each entry the API server would refuse."""
    for key, value in selector.items():
        for message in qualified_name_errors(str(key)):
            yield f"node_selector.{key}", f"key {key!r}: {message}"
        for message in label_value_errors(str(value)):
            yield f"node_selector.{key}", f"value {value!r}: {message}"


def toleration_errors(index: int, toleration: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """A toleration as core's ValidateTolerations sees it (camelCase or snake_case fields)."""
    where = f"tolerations.{index}"
    key = toleration.get("key") or ""
    operator = toleration.get("operator") or "Equal"
    value = toleration.get("value") or ""
    effect = toleration.get("effect") or ""
    seconds = toleration.get("tolerationSeconds", toleration.get("toleration_seconds"))
    if key:
        for message in qualified_name_errors(key):
            yield f"{where}.key", f"key {key!r}: {message}"
    elif operator != "Exists":
        yield f"{where}.operator", "operator must be Exists when `key` is empty (it tolerates all)"
    if operator == "Exists" and value:
        yield f"{where}.value", "value must be empty when `operator` is 'Exists'"
    elif operator == "Equal":
        for message in label_value_errors(value):
            yield f"{where}.value", f"value {value!r}: {message}"
    elif operator not in ("Exists", "Equal"):
        yield f"{where}.operator", f"operator {operator!r}: must be 'Exists' or 'Equal'"
    if effect and effect not in EFFECTS:
        yield f"{where}.effect", f"effect {effect!r}: must be one of {', '.join(EFFECTS)}"
    if seconds is not None and effect != "NoExecute":
        yield (
            f"{where}.toleration_seconds",
            "effect must be 'NoExecute' when `tolerationSeconds` is set",
        )


def quantity_is_positive(quantity: str) -> bool:
    match = _QUANTITY_NUMBER.match(quantity)
    return match is not None and float(match.group()) > 0
