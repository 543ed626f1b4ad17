"""Session templates: what kind of desktop a session gets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, Integer, String, Text, false, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models._types import TZDateTime, utcnow


class Template(Base):
    __tablename__ = "templates"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    image: Mapped[str] = mapped_column(Text)
    gpu: Mapped[int] = mapped_column(Integer)
    cpu: Mapped[str | None] = mapped_column(String(32))
    memory: Mapped[str | None] = mapped_column(String(32))
    shm_size: Mapped[str] = mapped_column(String(32))
    home_size: Mapped[str] = mapped_column(String(32))
    storage_class: Mapped[str | None] = mapped_column(String(253))
    bitrate_kbps: Mapped[int] = mapped_column(Integer)
    framerate: Mapped[int] = mapped_column(Integer)
    gop_size: Mapped[int] = mapped_column(Integer)
    encoder_fallback: Mapped[bool] = mapped_column(Boolean)
    start_timeout_s: Mapped[int] = mapped_column(Integer)
    fail_without_scale_up: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    idle_timeout_s: Mapped[int] = mapped_column(Integer)
    # what keeps a session from its idle deadline (migration 0011): keepalive, viewers, both
    idle: Mapped[str] = mapped_column(String(16), default="keepalive", server_default="keepalive")
    max_lifetime_s: Mapped[int] = mapped_column(Integer)
    node_selector: Mapped[dict[str, str]] = mapped_column(JSONB)
    tolerations: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    streamer: Mapped[str] = mapped_column(String(32), default="auto", server_default="auto")
    transport: Mapped[str] = mapped_column(String(16), default="webrtc", server_default="webrtc")
    persistent_home: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    warm_pool: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    warm_max_age_s: Mapped[int] = mapped_column(Integer, default=3600, server_default="3600")
    prepull: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # the desktop's policy (migration 0009)
    clipboard: Mapped[str] = mapped_column(String(8), default="both", server_default="both")
    file_transfer: Mapped[str] = mapped_column(String(8), default="both", server_default="both")
    file_transfer_limit_mbps: Mapped[float] = mapped_column(Float, default=0, server_default="0")
    audio: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    microphone: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    printing: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    gamepads: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # who may watch (migration 0011): off, view (view-only shares), collab (and collaborators)
    sharing: Mapped[str] = mapped_column(String(8), default="off", server_default="off")
    recording: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
