"""The billing sweep, every minute: stale billing operations run again, parked Stripe
events retried, ended subscription periods rolled over."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from arq import cron

from db.session import transaction
from server.billing import service, webhooks

log = logging.getLogger(__name__)


async def retry_parked_events(res: Any, *, batch: int = 100) -> int:
    """Parked Stripe events that are due, tried again (expired ones dropped); how many were tried."""
    now = datetime.now(UTC)
    async with transaction(res.sessionmaker) as session:
        await webhooks.drop_expired(session, older_than=now - timedelta(days=res.settings.stripe_parked_event_days))
    async with transaction(res.sessionmaker) as session:
        tried = await webhooks.retry_parked(session, due_before=now, limit=batch)
    for event_id, result in tried:
        log.info("parked stripe event %s tried again: %s", event_id, result)
    return len(tried)


async def roll_over_billing_periods(ctx: dict[str, Any]) -> int:
    """Renew or end ended periods the provider leaves to us (local billing; Stripe sends webhooks)."""
    res = ctx["res"]
    now = datetime.now(UTC)
    async with transaction(res.sessionmaker) as session:
        due = await service.due_subscriptions(session, now=now)
    rolled = 0
    for subscription_id, user_id in due:
        try:  # one refusal does not hold back the others
            rolled += await service.roll_over(res, subscription_id=subscription_id, user_id=user_id, now=now)
        except Exception:
            log.exception("could not roll over subscription %s", subscription_id)
    if rolled:
        log.info("rolled over %d subscription period(s)", rolled)
    return rolled


async def billing_sweep(ctx: dict[str, Any]) -> dict[str, int]:
    """Stale operations run again (with the same provider keys), parked events, ended periods."""
    res = ctx["res"]
    outcome = {"operations": 0, "parked": 0, "rolled": 0}
    for name, step in (("operations", lambda: service.finish_stale_operations(res)),
                       ("parked", lambda: retry_parked_events(res)),
                       ("rolled", lambda: roll_over_billing_periods(ctx))):
        try:  # each part on its own: a failing one does not stop the others
            outcome[name] = await step()
        except Exception:
            log.exception("billing sweep: %s failed", name)
    return outcome


BILLING_CRON = cron(billing_sweep, name="billing_sweep",  # every minute
                    run_at_startup=True, unique=True)
