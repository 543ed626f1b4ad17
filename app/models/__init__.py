"""Every ORM table, imported here so Alembic's autogenerate sees the whole schema."""

from app.models.api_token import ApiToken
from app.models.audit_record import AuditRecord
from app.models.idempotency_key import IdempotencyKey
from app.models.session import VDISession
from app.models.session_event import SessionEvent
from app.models.session_share import SessionShare
from app.models.template import Template

__all__ = [
    "ApiToken",
    "AuditRecord",
    "IdempotencyKey",
    "SessionEvent",
    "SessionShare",
    "Template",
    "VDISession",
]
