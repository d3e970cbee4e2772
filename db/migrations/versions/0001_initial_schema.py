"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 07:19:32.959499
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('stripe_events',
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('type', sa.String(length=128), nullable=False),
    sa.Column('stripe_created_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('result', sa.Text(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stripe_events'))
    )
    op.create_table('subscription_plans',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('price_cents', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), server_default='usd', nullable=False),
    sa.Column('interval', sa.String(length=16), server_default='month', nullable=False),
    sa.Column('credits_per_period', sa.Integer(), nullable=False),
    sa.Column('avatar_limit', sa.Integer(), nullable=False),
    sa.Column('features', postgresql.JSONB(astext_type=sa.Text()), server_default='[]', nullable=False),
    sa.Column('stripe_price_id', sa.String(length=255), nullable=True),
    sa.Column('sort_order', sa.Integer(), server_default='0', nullable=False),
    sa.Column('is_active', sa.Boolean(), server_default='true', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('price_cents >= 0 AND credits_per_period >= 0 AND avatar_limit >= 0', name=op.f('ck_subscription_plans_non_negative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subscription_plans'))
    )
    op.create_table('users',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('password_hash', sa.Text(), nullable=False),
    sa.Column('display_name', sa.String(length=100), nullable=True),
    sa.Column('date_of_birth', sa.Date(), nullable=False),
    sa.Column('email_verified', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('email_verified_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('token_version', sa.Integer(), server_default='0', nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=True),
    sa.Column('stripe_customer_id', sa.String(length=255), nullable=True),
    sa.Column('is_active', sa.Boolean(), server_default='true', nullable=False),
    sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('email = lower(email)', name=op.f('ck_users_email_lowercase')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email')),
    sa.UniqueConstraint('stripe_customer_id', name=op.f('uq_users_stripe_customer_id'))
    )
    op.create_table('activity_events',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('user_id', sa.UUID(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('data', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_activity_events_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_activity_events'))
    )
    op.create_index('ix_activity_events_user_id_created_at', 'activity_events', ['user_id', 'created_at'], unique=False)
    op.create_table('auth_tokens',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('user_id', sa.UUID(), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("purpose IN ('verify_email', 'reset_password')", name=op.f('ck_auth_tokens_purpose')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_auth_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auth_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_auth_tokens_token_hash'))
    )
    op.create_index('ix_auth_tokens_user_id_purpose', 'auth_tokens', ['user_id', 'purpose'], unique=False)
    op.create_table('avatars',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('user_id', sa.UUID(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('age', sa.Integer(), nullable=False),
    sa.Column('appearance', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('personality', sa.Text(), nullable=True),
    sa.Column('style', sa.Text(), nullable=True),
    sa.Column('profile', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='creating', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('thumbnail_key', sa.String(length=512), nullable=True),
    sa.Column('content_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('creating', 'ready', 'failed')", name=op.f('ck_avatars_status')),
    sa.CheckConstraint('age >= 18', name=op.f('ck_avatars_adult')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_avatars_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_avatars'))
    )
    op.create_index('ix_avatars_user_id_created_at', 'avatars', ['user_id', 'created_at'], unique=False)
    op.create_table('credit_transactions',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('user_id', sa.UUID(), nullable=False),
    sa.Column('amount', sa.Integer(), nullable=False),
    sa.Column('balance_after', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('reference_id', sa.String(length=255), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=False),
    sa.Column('refund_of', sa.UUID(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("(type = 'spend') = (amount < 0) OR type = 'adjustment'", name=op.f('ck_credit_transactions_sign_matches_type')),
    sa.CheckConstraint("type IN ('grant', 'purchase', 'spend', 'refund', 'bonus', 'adjustment')", name=op.f('ck_credit_transactions_type')),
    sa.CheckConstraint('amount <> 0', name=op.f('ck_credit_transactions_amount_not_zero')),
    sa.CheckConstraint('balance_after >= 0', name=op.f('ck_credit_transactions_balance_after_not_negative')),
    sa.ForeignKeyConstraint(['refund_of'], ['credit_transactions.id'], name=op.f('fk_credit_transactions_refund_of_credit_transactions'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_credit_transactions_user_id_users'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credit_transactions')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_credit_transactions_idempotency_key')),
    sa.UniqueConstraint('refund_of', name=op.f('uq_credit_transactions_refund_of'))
    )
    op.create_index('ix_credit_transactions_spend_by_day', 'credit_transactions', ['user_id', 'created_at'], unique=False, postgresql_where="type = 'spend'", postgresql_include=['amount'])
    op.create_index('ix_credit_transactions_user_id_created_at', 'credit_transactions', ['user_id', 'created_at'], unique=False)
    op.create_table('refresh_tokens',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('user_id', sa.UUID(), nullable=False),
    sa.Column('family_id', sa.UUID(), nullable=False),
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('rotated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('user_agent', sa.String(length=255), nullable=True),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_refresh_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refresh_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_refresh_tokens_token_hash'))
    )
    op.create_index('ix_refresh_tokens_family_id', 'refresh_tokens', ['family_id'], unique=False)
    op.create_index('ix_refresh_tokens_user_id', 'refresh_tokens', ['user_id'], unique=False)
    op.create_table('user_credits',
    sa.Column('user_id', sa.UUID(), nullable=False),
    sa.Column('balance', sa.Integer(), server_default='0', nullable=False),
    sa.Column('lifetime_granted', sa.Integer(), server_default='0', nullable=False),
    sa.Column('lifetime_spent', sa.Integer(), server_default='0', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('balance >= 0', name=op.f('ck_user_credits_balance_not_negative')),
    sa.CheckConstraint('lifetime_granted >= 0 AND lifetime_spent >= 0', name=op.f('ck_user_credits_lifetime_not_negative')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_credits_user_id_users'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_user_credits'))
    )
    op.create_table('user_subscriptions',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('user_id', sa.UUID(), nullable=False),
    sa.Column('plan_id', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('stripe_subscription_id', sa.String(length=255), nullable=True),
    sa.Column('stripe_customer_id', sa.String(length=255), nullable=True),
    sa.Column('cancel_at_period_end', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('current_period_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('current_period_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('canceled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_event_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['plan_id'], ['subscription_plans.id'], name=op.f('fk_user_subscriptions_plan_id_subscription_plans'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_subscriptions_user_id_users'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_user_subscriptions')),
    sa.UniqueConstraint('stripe_subscription_id', name=op.f('uq_user_subscriptions_stripe_subscription_id'))
    )
    op.create_index('ix_user_subscriptions_user_id_created_at', 'user_subscriptions', ['user_id', 'created_at'], unique=False)
    op.create_index('uq_user_subscriptions_live_user', 'user_subscriptions', ['user_id'], unique=True, postgresql_where=sa.text("status IN ('incomplete', 'trialing', 'active', 'past_due')"))
    op.create_table('generated_content',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('user_id', sa.UUID(), nullable=False),
    sa.Column('avatar_id', sa.UUID(), nullable=True),
    sa.Column('type', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='queued', nullable=False),
    sa.Column('progress', sa.SmallInteger(), server_default='0', nullable=False),
    sa.Column('stage', sa.String(length=32), nullable=True),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('enhanced_prompt', sa.Text(), nullable=True),
    sa.Column('quality', sa.String(length=16), server_default='standard', nullable=False),
    sa.Column('params', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('credits_cost', sa.Integer(), nullable=False),
    sa.Column('storage_key', sa.String(length=512), nullable=True),
    sa.Column('thumbnail_key', sa.String(length=512), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('provider_request_id', sa.String(length=255), nullable=True),
    sa.Column('deadline_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("quality IN ('standard', 'hd', 'premium')", name=op.f('ck_generated_content_quality')),
    sa.CheckConstraint("status IN ('queued', 'processing', 'completed', 'failed', 'canceled')", name=op.f('ck_generated_content_status')),
    sa.CheckConstraint("type IN ('image', 'video')", name=op.f('ck_generated_content_type')),
    sa.CheckConstraint('credits_cost >= 0', name=op.f('ck_generated_content_cost_not_negative')),
    sa.CheckConstraint('progress BETWEEN 0 AND 100', name=op.f('ck_generated_content_progress_range')),
    sa.ForeignKeyConstraint(['avatar_id'], ['avatars.id'], name=op.f('fk_generated_content_avatar_id_avatars'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_generated_content_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_generated_content'))
    )
    op.create_index('ix_generated_content_avatar_id', 'generated_content', ['avatar_id'], unique=False)
    op.create_index('ix_generated_content_unfinished', 'generated_content', ['status', 'updated_at'], unique=False, postgresql_where="status IN ('queued', 'processing')")
    op.create_index('ix_generated_content_user_id_created_at', 'generated_content', ['user_id', 'created_at'], unique=False)
    op.create_index('ix_generated_content_user_id_type_status', 'generated_content', ['user_id', 'type', 'status'], unique=False)


    # The ledger is append-only: the database itself refuses to rewrite history.
    op.execute("""
        CREATE FUNCTION credit_transactions_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'credit_transactions is append-only (% refused)', TG_OP
                USING ERRCODE = 'restrict_violation';
        END $$;
    """)
    op.execute("""
        CREATE TRIGGER credit_transactions_no_update_delete
        BEFORE UPDATE OR DELETE ON credit_transactions
        FOR EACH ROW EXECUTE FUNCTION credit_transactions_append_only()
    """)
    op.execute("""
        CREATE TRIGGER credit_transactions_no_truncate
        BEFORE TRUNCATE ON credit_transactions
        FOR EACH STATEMENT EXECUTE FUNCTION credit_transactions_append_only()
    """)

def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS credit_transactions_no_truncate ON credit_transactions")
    op.execute("DROP TRIGGER IF EXISTS credit_transactions_no_update_delete ON credit_transactions")
    op.execute("DROP FUNCTION IF EXISTS credit_transactions_append_only()")
    op.drop_index('ix_generated_content_user_id_type_status', table_name='generated_content')
    op.drop_index('ix_generated_content_user_id_created_at', table_name='generated_content')
    op.drop_index('ix_generated_content_unfinished', table_name='generated_content', postgresql_where="status IN ('queued', 'processing')")
    op.drop_index('ix_generated_content_avatar_id', table_name='generated_content')
    op.drop_table('generated_content')
    op.drop_index('uq_user_subscriptions_live_user', table_name='user_subscriptions', postgresql_where=sa.text("status IN ('incomplete', 'trialing', 'active', 'past_due')"))
    op.drop_index('ix_user_subscriptions_user_id_created_at', table_name='user_subscriptions')
    op.drop_table('user_subscriptions')
    op.drop_table('user_credits')
    op.drop_index('ix_refresh_tokens_user_id', table_name='refresh_tokens')
    op.drop_index('ix_refresh_tokens_family_id', table_name='refresh_tokens')
    op.drop_table('refresh_tokens')
    op.drop_index('ix_credit_transactions_user_id_created_at', table_name='credit_transactions')
    op.drop_index('ix_credit_transactions_spend_by_day', table_name='credit_transactions', postgresql_where="type = 'spend'", postgresql_include=['amount'])
    op.drop_table('credit_transactions')
    op.drop_index('ix_avatars_user_id_created_at', table_name='avatars')
    op.drop_table('avatars')
    op.drop_index('ix_auth_tokens_user_id_purpose', table_name='auth_tokens')
    op.drop_table('auth_tokens')
    op.drop_index('ix_activity_events_user_id_created_at', table_name='activity_events')
    op.drop_table('activity_events')
    op.drop_table('users')
    op.drop_table('subscription_plans')
    op.drop_table('stripe_events')
