"""Disconnect a user's sockets when their sessions are revoked, in every server process."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from db.session import after_commit


def revoke_sockets(session: AsyncSession, user_id: uuid.UUID) -> None:
    """After commit, every server process drops this user's sockets."""
    publisher = session.info["publisher"]
    after_commit(session, lambda: publisher.disconnect_user(user_id))
