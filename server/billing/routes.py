"""HTTP routes of /api/subscriptions, including the Stripe webhook."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from server import keys
from server.auth.current_user import CurrentUser
from server.billing import queries, service, webhooks
from server.billing.schemas import (
    CreatedOut,
    CurrentOut,
    PackChoiceIn,
    PackList,
    PaymentIntentOut,
    PlanChoiceIn,
    PlanList,
    SubscriptionPage,
    WebhookOut,
)
from server.json_io import read_body
from server.routing import RAW_MAX_BODY, Routes
from server.schemas import PageQuery

routes = Routes(tags=("subscriptions",))


@routes.get("/api/subscriptions/plans", response=PlanList, auth=False)
async def list_plans(session: AsyncSession) -> dict:
    """The plans on offer (public)."""
    return {"items": await queries.list_plans(session)}


@routes.get("/api/subscriptions/packs", response=PackList, auth=False)
async def list_packs(request: web.Request) -> dict:
    """The one-off credit packs on sale (public)."""
    settings = request.app[keys.resources].settings
    return {"items": [service.pack_out(p) for p in service.credit_packs(settings)]}


@routes.get("/api/subscriptions", response=CurrentOut)
async def get_subscription(session: AsyncSession, user: CurrentUser) -> dict:
    """The caller's live subscription (or null) and the plan in force."""
    return await service.current(session, user_id=user.id)


# Billing writes take no `session`: the service keeps provider calls out of transactions.
@routes.post("/api/subscriptions", body=PlanChoiceIn, response=CreatedOut, status=201,
             errors=(403, 409, 503), idempotent=True)
async def subscribe(request: web.Request, user: CurrentUser, body: PlanChoiceIn,
                    idempotency_key: str | None = None) -> dict:
    """Subscribe to a paid plan; confirm the first payment with client_secret when given."""
    return await service.subscribe(request.app[keys.resources], user=user, plan_id=body.plan_id,
                                   idempotency_key=idempotency_key)


@routes.get("/api/subscriptions/history", query=PageQuery, response=SubscriptionPage)
async def history(session: AsyncSession, user: CurrentUser, query: PageQuery) -> dict:
    """Every subscription the caller has had, newest first."""
    return await queries.subscription_history(session, user_id=user.id, page=query.page,
                                              limit=query.limit)


@routes.post("/api/subscriptions/payment-intent", body=PackChoiceIn, response=PaymentIntentOut,
             status=201, errors=(403, 409, 503), idempotent=True)
async def payment_intent(request: web.Request, user: CurrentUser, body: PackChoiceIn,
                         idempotency_key: str | None = None) -> dict:
    """Buy a credit pack; credits are added when the payment succeeds."""
    return await service.buy_pack(request.app[keys.resources], user=user, pack_id=body.pack_id,
                                  idempotency_key=idempotency_key)


@routes.put("/api/subscriptions/{id}", body=PlanChoiceIn, response=CurrentOut,
            errors=(403, 404, 409, 503), idempotent=True)
async def change_plan(request: web.Request, user: CurrentUser, body: PlanChoiceIn,
                      idempotency_key: str | None = None) -> dict:
    """Switch to another paid plan (prorated)."""
    return await service.change_plan(request.app[keys.resources], user=user,
                                     subscription_id=request.match_info["id"], plan_id=body.plan_id,
                                     idempotency_key=idempotency_key)


@routes.post("/api/subscriptions/{id}/cancel", response=CurrentOut, errors=(404, 409, 503), idempotent=True)
async def cancel(request: web.Request, user: CurrentUser, idempotency_key: str | None = None) -> dict:
    """Cancel at the end of the paid period."""
    return await service.cancel(request.app[keys.resources], user_id=user.id,
                                subscription_id=request.match_info["id"],
                                idempotency_key=idempotency_key)


@routes.post("/api/subscriptions/{id}/reactivate", response=CurrentOut, errors=(404, 409, 503),
              idempotent=True)
async def reactivate(request: web.Request, user: CurrentUser,
                     idempotency_key: str | None = None) -> dict:
    """Keep a subscription that was set to cancel at period end."""
    return await service.reactivate(request.app[keys.resources], user_id=user.id,
                                    subscription_id=request.match_info["id"],
                                    idempotency_key=idempotency_key)


@routes.post("/api/subscriptions/webhook", response=WebhookOut, auth=False, rate_limit=None,
             raw_body=True)
async def stripe_webhook(request: web.Request, session: AsyncSession) -> dict:
    """Stripe events (Stripe-Signature required); each event id is applied once."""
    payload = await read_body(request, limit=RAW_MAX_BODY)
    return await webhooks.receive(session, payload=payload,
                                  signature=request.headers.get("Stripe-Signature"),
                                  settings=request.app[keys.resources].settings,
                                  metrics=request.app[keys.metrics])
