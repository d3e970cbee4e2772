"""billing: operations recorded around provider calls; Stripe events can be parked and retried

Revision ID: 0008
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "billing_operations",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("params", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
        sa.Column("request_key", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'done', 'failed')", name=op.f("ck_billing_operations_status")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_billing_operations_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_operations")),
    )
    op.create_index("uq_billing_operations_pending_user", "billing_operations", ["user_id"], unique=True,
                    postgresql_where=sa.text("status = 'pending'"))
    op.add_column("stripe_events", sa.Column("status", sa.String(length=16), server_default="processed",
                                             nullable=False))
    op.add_column("stripe_events", sa.Column("attempts", sa.Integer(), server_default="1", nullable=False))
    op.add_column("stripe_events", sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("stripe_events", sa.Column("customer_id", sa.String(length=255), nullable=True))
    op.add_column("stripe_events", sa.Column("api_version", sa.String(length=64), nullable=True))
    op.create_check_constraint("status", "stripe_events", "status IN ('processed', 'parked', 'dropped')")
    op.create_index("ix_stripe_events_parked", "stripe_events", ["retry_at"],
                    postgresql_where=sa.text("status = 'parked'"))
    op.create_index("ix_stripe_events_parked_customer", "stripe_events", ["customer_id"],
                    postgresql_where=sa.text("status = 'parked'"))


def downgrade() -> None:
    op.drop_index("ix_stripe_events_parked_customer", table_name="stripe_events")
    op.drop_index("ix_stripe_events_parked", table_name="stripe_events")
    op.drop_constraint(op.f("ck_stripe_events_status"), "stripe_events", type_="check")
    for column in ("api_version", "customer_id", "retry_at", "attempts", "status"):
        op.drop_column("stripe_events", column)
    op.drop_index("uq_billing_operations_pending_user", table_name="billing_operations")
    op.drop_table("billing_operations")
