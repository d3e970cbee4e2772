"""auth tokens: an email change waits for a link opened at the new address (purpose change_email)

Revision ID: 0009
Revises: 0008
"""
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint(op.f("ck_auth_tokens_purpose"), "auth_tokens", type_="check")
    op.create_check_constraint(op.f("ck_auth_tokens_purpose"), "auth_tokens",
                               "purpose IN ('verify_email', 'reset_password', 'change_email')")


def downgrade() -> None:
    op.execute("DELETE FROM auth_tokens WHERE purpose = 'change_email'")
    op.drop_constraint(op.f("ck_auth_tokens_purpose"), "auth_tokens", type_="check")
    op.create_check_constraint(op.f("ck_auth_tokens_purpose"), "auth_tokens",
                               "purpose IN ('verify_email', 'reset_password')")
