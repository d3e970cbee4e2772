"""usage rollups kept by triggers (per user per 15 minutes, per avatar per hour), for analytics

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BUCKET = "date_bin('15 minutes', {ts}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"


def upgrade() -> None:
    op.create_table(
        "usage_buckets",
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("images", sa.Integer(), server_default="0", nullable=False),
        sa.Column("videos", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("credits_spent", sa.Integer(), server_default="0", nullable=False),
        sa.Column("credits_refunded", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_usage_buckets_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "bucket", name=op.f("pk_usage_buckets")),
    )
    # Generations per avatar per hour, for "top avatars" over a timeframe.
    op.create_table(
        "avatar_usage_hours",
        sa.Column("avatar_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("uses", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["avatar_id"], ["avatars.id"], name=op.f("fk_avatar_usage_hours_avatar_id_avatars"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_avatar_usage_hours_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("avatar_id", "hour", name=op.f("pk_avatar_usage_hours")),
    )
    op.create_index("ix_avatar_usage_hours_user_id_hour", "avatar_usage_hours", ["user_id", "hour"])
    # Unfinished content per user, for the dashboard's "in progress" counter.
    op.create_index("ix_generated_content_user_unfinished", "generated_content", ["user_id"],
                    postgresql_where=sa.text("status IN ('queued', 'processing')"))
    for statement in (
        f"""
        CREATE FUNCTION usage_add(p_user uuid, p_at timestamptz, p_images int, p_videos int, p_failed int,
                                  p_spent int, p_refunded int) RETURNS void
        LANGUAGE sql AS $$
            INSERT INTO usage_buckets AS u (user_id, bucket, images, videos, failed, credits_spent, credits_refunded)
            VALUES (p_user, {BUCKET.format(ts="p_at")}, p_images, p_videos, p_failed, p_spent, p_refunded)
            ON CONFLICT (user_id, bucket) DO UPDATE SET
                images = u.images + EXCLUDED.images, videos = u.videos + EXCLUDED.videos,
                failed = u.failed + EXCLUDED.failed, credits_spent = u.credits_spent + EXCLUDED.credits_spent,
                credits_refunded = u.credits_refunded + EXCLUDED.credits_refunded
        $$;
        """,
        """
        CREATE FUNCTION usage_from_content() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP IN ('UPDATE', 'DELETE') THEN
                PERFORM usage_add(OLD.user_id, OLD.created_at,
                    -(OLD.type = 'image' AND OLD.status = 'completed')::int,
                    -(OLD.type = 'video' AND OLD.status = 'completed')::int,
                    -(OLD.status = 'failed')::int, 0, 0);
            END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                PERFORM usage_add(NEW.user_id, NEW.created_at,
                    (NEW.type = 'image' AND NEW.status = 'completed')::int,
                    (NEW.type = 'video' AND NEW.status = 'completed')::int,
                    (NEW.status = 'failed')::int, 0, 0);
            END IF;
            RETURN NULL;
        END $$;
        """,
        """
        CREATE TRIGGER usage_content_insert AFTER INSERT ON generated_content
            FOR EACH ROW WHEN (NEW.status IN ('completed', 'failed')) EXECUTE FUNCTION usage_from_content();
        """,
        """
        CREATE TRIGGER usage_content_update AFTER UPDATE OF status, type, created_at ON generated_content
            FOR EACH ROW WHEN ((OLD.status IN ('completed', 'failed') OR NEW.status IN ('completed', 'failed'))
                               AND (OLD.status IS DISTINCT FROM NEW.status OR OLD.type IS DISTINCT FROM NEW.type
                                    OR OLD.created_at IS DISTINCT FROM NEW.created_at))
            EXECUTE FUNCTION usage_from_content();
        """,
        """
        CREATE TRIGGER usage_content_delete AFTER DELETE ON generated_content
            FOR EACH ROW WHEN (OLD.status IN ('completed', 'failed')) EXECUTE FUNCTION usage_from_content();
        """,
        """
        CREATE FUNCTION usage_from_ledger() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM usage_add(NEW.user_id, NEW.created_at, 0, 0, 0,
                CASE WHEN NEW.type = 'spend' THEN -NEW.amount ELSE 0 END,
                CASE WHEN NEW.type = 'refund' THEN NEW.amount ELSE 0 END);
            RETURN NULL;
        END $$;
        """,
        """
        CREATE TRIGGER usage_ledger_insert AFTER INSERT ON credit_transactions
            FOR EACH ROW WHEN (NEW.type IN ('spend', 'refund')) EXECUTE FUNCTION usage_from_ledger();
        """,
        """
        CREATE FUNCTION avatar_usage_from_content() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            r generated_content%ROWTYPE := CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
        BEGIN
            INSERT INTO avatar_usage_hours AS a (avatar_id, hour, user_id, uses)
            VALUES (r.avatar_id, date_trunc('hour', r.created_at), r.user_id,
                    CASE WHEN TG_OP = 'DELETE' THEN -1 ELSE 1 END)
            ON CONFLICT (avatar_id, hour) DO UPDATE SET uses = a.uses + EXCLUDED.uses;
            RETURN NULL;
        END $$;
        """,
        """
        CREATE TRIGGER avatar_usage_insert AFTER INSERT ON generated_content
            FOR EACH ROW WHEN (NEW.avatar_id IS NOT NULL) EXECUTE FUNCTION avatar_usage_from_content();
        """,
        """
        CREATE TRIGGER avatar_usage_delete AFTER DELETE ON generated_content
            FOR EACH ROW WHEN (OLD.avatar_id IS NOT NULL) EXECUTE FUNCTION avatar_usage_from_content();
        """,
    ):
        op.execute(statement)  # asyncpg runs one command per execute
    # Existing history, so upgraded deployments see their past in analytics.
    op.execute(f"""
        INSERT INTO usage_buckets (user_id, bucket, images, videos, failed, credits_spent, credits_refunded)
        SELECT user_id, bucket, sum(images), sum(videos), sum(failed), sum(spent), sum(refunded) FROM (
            SELECT user_id, {BUCKET.format(ts="created_at")} AS bucket,
                   (type = 'image' AND status = 'completed')::int AS images,
                   (type = 'video' AND status = 'completed')::int AS videos,
                   (status = 'failed')::int AS failed, 0 AS spent, 0 AS refunded
            FROM generated_content
            UNION ALL
            SELECT user_id, {BUCKET.format(ts="created_at")}, 0, 0, 0,
                   CASE WHEN type = 'spend' THEN -amount ELSE 0 END,
                   CASE WHEN type = 'refund' THEN amount ELSE 0 END
            FROM credit_transactions WHERE type IN ('spend', 'refund')
        ) AS history GROUP BY user_id, bucket
    """)
    op.execute("""
        INSERT INTO avatar_usage_hours (avatar_id, hour, user_id, uses)
        SELECT avatar_id, date_trunc('hour', created_at), user_id, count(*)
        FROM generated_content WHERE avatar_id IS NOT NULL GROUP BY 1, 2, 3
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS avatar_usage_delete ON generated_content")
    op.execute("DROP TRIGGER IF EXISTS avatar_usage_insert ON generated_content")
    op.execute("DROP FUNCTION IF EXISTS avatar_usage_from_content()")
    op.drop_table("avatar_usage_hours")
    op.execute("DROP TRIGGER IF EXISTS usage_ledger_insert ON credit_transactions")
    op.execute("DROP TRIGGER IF EXISTS usage_content_delete ON generated_content")
    op.execute("DROP TRIGGER IF EXISTS usage_content_update ON generated_content")
    op.execute("DROP TRIGGER IF EXISTS usage_content_insert ON generated_content")
    op.execute("DROP FUNCTION IF EXISTS usage_from_ledger()")
    op.execute("DROP FUNCTION IF EXISTS usage_from_content()")
    op.execute("DROP FUNCTION IF EXISTS usage_add(uuid, timestamptz, int, int, int, int, int)")
    op.drop_index("ix_generated_content_user_unfinished", table_name="generated_content")
    op.drop_table("usage_buckets")
