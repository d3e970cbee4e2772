"""The first response to each Idempotency-Key, per user, kept at least a day."""

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, SmallInteger, String
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, created_at


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # sha256 of operation + body
    status: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    response: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # the body exactly as first sent
    created_at: Mapped[datetime] = created_at()

    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)
