"""Generated images and videos, each a small state machine driven by the worker."""

import uuid
from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, created_at, updated_at, uuid_pk


class GeneratedContent(Base):
    __tablename__ = "generated_content"

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    avatar_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("avatars.id", ondelete="SET NULL")
    )
    type: Mapped[str] = mapped_column(String(8), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="queued")
    progress: Mapped[int] = mapped_column(SmallInteger, nullable=False, server_default="0")
    stage: Mapped[str | None] = mapped_column(String(32))
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    enhanced_prompt: Mapped[str | None] = mapped_column(Text)
    quality: Mapped[str] = mapped_column(String(16), nullable=False, server_default="standard")
    params: Mapped[dict] = mapped_column(JSONB, nullable=False, server_default="{}")
    credits_cost: Mapped[int] = mapped_column(Integer, nullable=False)
    # Ledger key of the current charge; a retry charges again under a new key.
    charge_key: Mapped[str | None] = mapped_column(String(255))
    job_id: Mapped[str | None] = mapped_column(String(255))  # the arq job currently responsible
    storage_key: Mapped[str | None] = mapped_column(String(512))
    thumbnail_key: Mapped[str | None] = mapped_column(String(512))
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))  # e.g. content_moderated, provider_error
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    provider_request_id: Mapped[str | None] = mapped_column(String(255))
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = created_at()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = updated_at()

    __table_args__ = (
        CheckConstraint("type IN ('image', 'video')", name="type"),
        CheckConstraint(
            "status IN ('queued', 'processing', 'completed', 'failed', 'canceled')", name="status"
        ),
        CheckConstraint("quality IN ('standard', 'hd', 'premium')", name="quality"),
        CheckConstraint("progress BETWEEN 0 AND 100", name="progress_range"),
        CheckConstraint("credits_cost >= 0", name="cost_not_negative"),
        Index("ix_generated_content_user_id_created_at", "user_id", "created_at"),
        Index("ix_generated_content_user_id_type_status", "user_id", "type", "status"),
        Index("ix_generated_content_avatar_id", "avatar_id"),
        Index(
            "ix_generated_content_user_unfinished", "user_id",
            postgresql_where="status IN ('queued', 'processing')",
        ),
        # The sweep only looks at unfinished rows; keep that index tiny.
        Index(
            "ix_generated_content_unfinished", "status", "updated_at",
            postgresql_where="status IN ('queued', 'processing')",
        ),
    )
