"""The API server's refusals, as kmock renders them: a Status with a reason and a code."""

from __future__ import annotations

import kmock

from kubefake.resources import Kind


def bad_request(message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=400, reason="BadRequest", message=message, details={})


def unauthorized() -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=401, reason="Unauthorized", message="Unauthorized", details={}
    )


def invalid(kind: str, name: str, problems: list[tuple[str, str]]) -> kmock.KubernetesError:
    """422 Invalid as the API server writes it: the message, and one cause per field."""
    detail = "; ".join(f"{field}: {message}" if field else message for field, message in problems)
    return kmock.KubernetesError(
        status=422,
        reason="Invalid",
        message=f'{kind} "{name}" is invalid: {detail}',
        details={
            "name": name,
            "group": "",
            "kind": kind,
            "causes": [
                {"reason": "FieldValueInvalid", "message": message, "field": field}
                for field, message in problems
            ],
        },
    )


def no_such_resource() -> kmock.KubernetesError:
    """404 for a path the server does not serve (a kind, a group version)."""
    return kmock.KubernetesError(
        status=404,
        reason="NotFound",
        message="the server could not find the requested resource",
        details={},
    )


def not_found(kind: Kind, name: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=404,
        reason="NotFound",
        message=f'{kind.plural}{"." + kind.group if kind.group else ""} "{name}" not found',
        details={"name": name, "group": kind.group, "kind": kind.plural},
    )


def already_exists(kind: Kind, name: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=409,
        reason="AlreadyExists",
        message=f'{kind.plural} "{name}" already exists',
        details={"name": name, "kind": kind.plural},
    )
