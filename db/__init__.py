"""Database layer: SQLAlchemy models, engine/session and alembic migrations."""
