"""durable events (a per-user gapless sequence and the user_events outbox); pending avatar regenerations; content error codes

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("user_credits", sa.Column("event_seq", sa.BigInteger(), server_default="0", nullable=False))
    op.create_table(
        "user_events",
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_user_events_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "seq", name=op.f("pk_user_events")),
    )
    op.add_column("avatars", sa.Column("regeneration_id", postgresql.UUID(as_uuid=True), nullable=True))
    op.add_column("generated_content", sa.Column("error_code", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("generated_content", "error_code")
    op.drop_column("avatars", "regeneration_id")
    op.drop_table("user_events")
    op.drop_column("user_credits", "event_seq")
