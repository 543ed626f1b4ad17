"""Wire models of the token API."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Scope(StrEnum):
    admin = "admin"
    sessions_read = "sessions:read"
    sessions_write = "sessions:write"
    sessions_connect = "sessions:connect"
    templates_write = "templates:write"


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, examples=["portal-prod"])
    scopes: list[Scope] = Field(min_length=1, examples=[["sessions:read", "sessions:write"]])


class TokenInfo(BaseModel):
    model_config = ConfigDict(
        from_attributes=True, json_schema_serialization_defaults_required=True
    )

    id: uuid.UUID
    name: str
    scopes: list[Scope]
    created_at: datetime
    revoked_at: datetime | None = None


class TokenCreated(TokenInfo):
    token: str = Field(description="The bearer token. Shown only in this response: store it now.")


class TokenList(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    items: list[TokenInfo]
