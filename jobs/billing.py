"""Billing sweep: subscriptions whose period ran out are renewed or ended where the billing
provider leaves that to us (local billing); Stripe does it itself and says so by webhook."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from arq import cron

from db.session import transaction
from server.billing import service

log = logging.getLogger(__name__)


async def roll_over_billing_periods(ctx: dict[str, Any]) -> int:
    res = ctx["res"]
    now = datetime.now(UTC)
    async with transaction(res.sessionmaker) as session:
        due = await service.due_subscriptions(session, now=now)
    rolled = 0
    for subscription_id, user_id in due:
        # One transaction each: one refusal does not hold back the others.
        try:
            async with transaction(res.sessionmaker) as session:
                rolled += await service.roll_over(session, subscription_id=subscription_id,
                                                  user_id=user_id, billing=res.billing, now=now)
        except Exception:
            log.exception("could not roll over subscription %s", subscription_id)
    if rolled:
        log.info("rolled over %d subscription period(s)", rolled)
    return rolled


BILLING_CRON = cron(roll_over_billing_periods, name="roll_over_billing_periods",
                    minute=set(range(0, 60, 5)), run_at_startup=True, unique=True)
