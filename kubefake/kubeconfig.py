"""A kubeconfig for the fake API, for the real client, `vdi-control serve` and kubectl."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml


def write_kubeconfig(
    path: Path,
    server: str,
    namespace: str | None = None,
    token: str | None = None,
    ca_pem: bytes | None = None,
) -> Path:
    """A kubeconfig that points the real client (or `vdi-control serve`, or kubectl) at a fake
    API; owner-only when it carries a token."""
    context: dict[str, str] = {"cluster": "fake", "user": "fake"}
    if namespace:
        context["namespace"] = namespace
    if token is not None:
        path.unlink(missing_ok=True)
        path.touch(mode=0o600)
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "fake",
                        "cluster": {"server": server}
                        | (
                            {"certificate-authority-data": base64.b64encode(ca_pem).decode()}
                            if ca_pem
                            else {}
                        ),
                    }
                ],
                "users": [{"name": "fake", "user": {"token": token} if token else {}}],
                "contexts": [{"name": "fake", "context": context}],
                "current-context": "fake",
            }
        )
    )
    return path
