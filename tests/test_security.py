"""Tokens, agent tokens, encryption at rest and TURN credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from datetime import UTC, datetime

import pytest

from app import security


def test_api_tokens_are_random_and_only_their_hash_is_kept() -> None:
    first, second = security.new_api_token(), security.new_api_token()
    assert first != second
    assert first.startswith("vdi_")
    assert len(first) > 40
    assert security.hash_api_token(first) == hashlib.sha256(first.encode()).hexdigest()
    assert first not in security.hash_api_token(first)


def test_agent_token_is_valid_for_its_session_only() -> None:
    one, other = uuid.uuid4(), uuid.uuid4()
    token = security.agent_token("k" * 40, one)
    assert security.check_agent_token("k" * 40, one, token)
    assert not security.check_agent_token("k" * 40, other, token)
    assert not security.check_agent_token("x" * 40, one, token)
    assert not security.check_agent_token(
        "k" * 40, one, token[:-1] + ("0" if token[-1] != "0" else "1")
    )


def test_session_secrets_round_trip_and_a_new_key_cannot_read_them() -> None:
    secrets = security.SessionSecrets("p" * 32, "1:abc", "tp")
    sealed = security.SecretBox("k" * 40).seal(secrets)
    assert "p" * 32 not in sealed
    assert security.SecretBox("k" * 40).open(sealed) == secrets
    with pytest.raises(ValueError, match="current key"):
        security.SecretBox("z" * 40).open(sealed)


def test_session_passwords_are_long_and_unique() -> None:
    passwords = {security.new_session_password() for _ in range(200)}
    assert len(passwords) == 200
    assert min(len(p) for p in passwords) >= 16


def test_turn_credentials_follow_the_coturn_rest_api() -> None:
    # coturn use-auth-secret: username "<expiry>:<anything>",
    # password base64(HMAC-SHA1(secret, username))
    session_id = uuid.UUID("00000000-0000-0000-0000-000000000001")
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    username, password = security.turn_credentials("north", session_id, expires)
    assert username == f"1893456000:{session_id}"
    expected = base64.b64encode(
        hmac.new(b"north", username.encode(), hashlib.sha1).digest()
    ).decode()
    assert password == expected
