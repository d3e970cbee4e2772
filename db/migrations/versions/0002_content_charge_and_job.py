"""content: the ledger key of the current charge (retries charge anew) and the arq job id

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("generated_content", sa.Column("charge_key", sa.String(length=255), nullable=True))
    op.add_column("generated_content", sa.Column("job_id", sa.String(length=255), nullable=True))


def downgrade() -> None:
    op.drop_column("generated_content", "job_id")
    op.drop_column("generated_content", "charge_key")
