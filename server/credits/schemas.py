"""Credits response bodies (API.md objects: credits, transaction)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from server.schemas import Output, Page, PageQuery

TransactionType = Literal["grant", "purchase", "spend", "refund", "bonus", "adjustment"]


class CreditsOut(Output):
    balance: int
    lifetime_granted: int
    lifetime_spent: int


class TransactionOut(Output):
    id: uuid.UUID
    amount: int
    balance_after: int
    type: TransactionType
    reason: str | None
    reference_id: str | None
    created_at: datetime


class TransactionPage(Page[TransactionOut]):
    pass


class TransactionQuery(PageQuery):
    type: TransactionType | None = None


class CostsOut(Output):
    base: dict[str, int]
    quality_multipliers: dict[str, float]
    examples: dict[str, dict[str, int]]
    formula: str
