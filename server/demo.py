"""`lustify seed --demo`: a verified demo account with credits, made through the services."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select, update

from db.models import User
from db.session import transaction
from server.auth.schemas import RegisterIn
from server.auth.service import register
from server.credits import ledger
from server.resources import Resources

DEMO_EMAIL = "demo@lustify.local"
DEMO_PASSWORD = "lustify-demo-password"
DEMO_CREDITS = 500


async def seed_demo(res: Resources) -> str:
    """Create the demo user once (verified, 500 bonus credits); returns its email."""
    async with transaction(res.sessionmaker) as session:
        user_id = (await session.execute(select(User.id).where(User.email == DEMO_EMAIL))).scalar_one_or_none()
    if user_id is None:
        data = RegisterIn(email=DEMO_EMAIL, password=DEMO_PASSWORD, display_name="Demo Creator",
                          date_of_birth=date(1990, 1, 1))
        await register(res.sessionmaker, data=data, settings=res.settings, queue=res.queue)
    async with transaction(res.sessionmaker) as session:
        user_id = (await session.execute(select(User.id).where(User.email == DEMO_EMAIL))).scalar_one()
        await session.execute(update(User).where(User.id == user_id).values(email_verified=True))
        await ledger.grant(session, user_id=user_id, amount=DEMO_CREDITS, key=f"demo:{user_id}:credits",
                           reason="Demo credits", type="bonus")
    return DEMO_EMAIL
