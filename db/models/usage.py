"""Usage rollups kept by triggers (per user per 15 minutes, per avatar per hour), so
analytics never scan raw rows."""

import uuid
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, Integer
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base


class UsageBucket(Base):
    """Usage of one user in one 15-minute bucket."""

    __tablename__ = "usage_buckets"

    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    # Fifteen minutes because every time zone offset is a multiple of it: any user's day
    # is an exact set of buckets.
    bucket: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    images: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    videos: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    credits_spent: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    credits_refunded: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class AvatarUsageHour(Base):
    """Generations started with each avatar per hour (for top avatars over a timeframe)."""

    __tablename__ = "avatar_usage_hours"

    avatar_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("avatars.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    uses: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")

    __table_args__ = (Index("ix_avatar_usage_hours_user_id_hour", "user_id", "hour"),)
