"""Cron: forget Idempotency-Keys once they are past their retention (API.md: at least 24 h)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from arq import cron

from db.session import transaction
from server import idempotency

log = logging.getLogger(__name__)
BATCH = 5000


async def prune_idempotency_keys(ctx: dict[str, Any]) -> int:
    res = ctx["res"]
    older_than = timedelta(hours=res.settings.idempotency_retention_hours)
    pruned = 0
    while True:
        # Short transactions of a batch each: a large backlog never holds locks for long.
        async with transaction(res.sessionmaker) as session:
            deleted = await idempotency.prune(session, older_than=older_than, limit=BATCH)
        pruned += deleted
        if deleted < BATCH:
            break
    if pruned:
        log.info("forgot %d idempotency key(s) older than %s", pruned, older_than)
    return pruned


IDEMPOTENCY_CRON = cron(prune_idempotency_keys, name="prune_idempotency_keys", minute={17},
                        run_at_startup=False, unique=True)
