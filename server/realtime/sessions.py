"""Disconnect a user's sockets (or one session's) when revoked, in every server process."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from db.session import after_commit


def revoke_sockets(session: AsyncSession, user_id: uuid.UUID) -> None:
    """After commit, every server process drops this user's sockets."""
    publisher = session.info["publisher"]
    after_commit(session, lambda: publisher.disconnect_user(user_id))


def revoke_session_sockets(session: AsyncSession, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
    """After commit, every server process drops the sockets of this one signed-in session."""
    publisher = session.info["publisher"]
    after_commit(session, lambda: publisher.disconnect_session(user_id, session_id))
