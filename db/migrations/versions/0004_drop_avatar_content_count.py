"""avatars: drop content_count; the count is read live from generated_content

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("avatars", "content_count")


def downgrade() -> None:
    op.add_column("avatars", sa.Column("content_count", sa.Integer(), server_default="0", nullable=False))
