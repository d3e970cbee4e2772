"""HTTP routes of /api/credits."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.current_user import CurrentUser
from server.credits import queries
from server.credits.costs import cost_table
from server.credits.schemas import CostsOut, CreditsOut, TransactionPage, TransactionQuery
from server.routing import Routes

routes = Routes(tags=("credits",))


@routes.get("/api/credits", response=CreditsOut)
async def get_credits(session: AsyncSession, user: CurrentUser) -> dict:
    """The caller's balance and lifetime totals."""
    return await queries.get_credits(session, user_id=user.id)


@routes.get("/api/credits/transactions", query=TransactionQuery, response=TransactionPage)
async def list_transactions(session: AsyncSession, user: CurrentUser, query: TransactionQuery) -> dict:
    """The caller's ledger, newest first (?page, ?limit, ?type)."""
    return await queries.list_transactions(session, user_id=user.id, page=query.page,
                                           limit=query.limit, type=query.type)


@routes.get("/api/credits/costs", response=CostsOut)
async def get_costs(user: CurrentUser) -> dict:
    """What each action costs in credits."""
    return cost_table()
