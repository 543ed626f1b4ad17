"""Cryptography in one place: token hashes, agent tokens, encryption at rest, TURN credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

API_TOKEN_PREFIX = "vdi_"
SESSION_PASSWORD_BYTES = 24  # 32 URL-safe characters
SELKIES_BASIC_AUTH_USER = "user"


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_api_token(token: str) -> str:
    # Tokens are 256-bit random strings, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


def _derive(secret_key: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(
        secret_key.encode()
    )


def agent_token(secret_key: str, session_id: uuid.UUID) -> str:
    """The token a session's agent presents: valid for that one session and nothing else."""
    key = _derive(secret_key, b"vdi-control agent token v1")
    return hmac.new(key, f"session:{session_id}".encode(), hashlib.sha256).hexdigest()


def check_agent_token(secret_key: str, session_id: uuid.UUID, presented: str) -> bool:
    return hmac.compare_digest(agent_token(secret_key, session_id), presented)


def selkies_master_token(secret_key: str, session_id: uuid.UUID) -> str:
    """The master token of a session's Selkies (its secure mode): the agent's alone, to set the
    token table, list and disconnect viewers; a Secret key of the session like the password."""
    key = _derive(secret_key, b"vdi-control selkies master token v1")
    return hmac.new(key, f"session:{session_id}".encode(), hashlib.sha256).hexdigest()


def share_token(secret_key: str, share_id: uuid.UUID) -> str:
    """The token that opens a share's desktop with its role: derived, so none is stored; it
    stops working when the agent drops it from Selkies' table (revoked, expired)."""
    key = _derive(secret_key, b"vdi-control share token v1")
    digest = hmac.new(key, f"share:{share_id}".encode(), hashlib.sha256).digest()
    return "vdis_" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def desktop_audit_token(agent_token: str) -> str:
    """The bearer token the session's Selkies sends with its audit webhook: derived from the
    agent token (by the agent, which has it, and by the control plane), so the agent token
    itself is not Selkies' to send, and this one authorizes that webhook alone."""
    return hmac.new(
        agent_token.encode(), b"vdi-control desktop audit v1", hashlib.sha256
    ).hexdigest()


SIGNATURE_HEADER = "VDI-Signature"


def sign_delivery(secret: str, timestamp: int, body: bytes) -> str:
    """The audit webhook's signature header value: `t=<unix time>,v1=<hex HMAC-SHA256 of
    "<t>.<body>" under the webhook secret>`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify_delivery(
    secret: str, header: str, body: bytes, *, now: float, tolerance_s: float = 300
) -> bool:
    """What a receiver checks: a signature of this body under the secret, made recently (a
    replayed old delivery fails the time check)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign_delivery(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(frozen=True)
class SessionSecrets:
    password: str
    turn_username: str
    turn_password: str


class SecretBox:
    """Fernet under a key derived from VDI_SECRET_KEY, for the per-session secrets at rest."""

    def __init__(self, secret_key: str) -> None:
        self._fernet = Fernet(
            base64.urlsafe_b64encode(_derive(secret_key, b"vdi-control fernet v1"))
        )

    def seal(self, value: SessionSecrets) -> str:
        payload = json.dumps(
            {"p": value.password, "tu": value.turn_username, "tp": value.turn_password}
        )
        return self._fernet.encrypt(payload.encode()).decode()

    def open(self, token: str) -> SessionSecrets:
        try:
            payload = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            # A changed VDI_SECRET_KEY: say so, never show the ciphertext.
            raise ValueError("session secrets cannot be decrypted with the current key") from None
        return SessionSecrets(
            password=payload["p"], turn_username=payload["tu"], turn_password=payload["tp"]
        )


def new_session_password() -> str:
    return secrets.token_urlsafe(SESSION_PASSWORD_BYTES)


def turn_credentials(turn_secret: str, session_id: uuid.UUID, expires: datetime) -> tuple[str, str]:
    """coturn REST-API credentials (use-auth-secret): `<expiry>:<session>` and its HMAC-SHA1."""
    username = f"{int(expires.timestamp())}:{session_id}"
    digest = hmac.new(turn_secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def new_session_secrets(
    turn_secret: str, session_id: uuid.UUID, turn_expires: datetime
) -> SessionSecrets:
    turn_username, turn_password = turn_credentials(turn_secret, session_id, turn_expires)
    return SessionSecrets(
        password=new_session_password(), turn_username=turn_username, turn_password=turn_password
    )
