"""A hypothesis state machine over grant / spend / refund / Stripe webhook against the real
database: whatever the order and repetition, balances equal the model and the ledger."""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass

from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from pydantic import SecretStr
from sqlalchemy import text

from db.session import transaction
from server.billing import webhooks
from server.credits import ledger
from server.errors import Conflict, InsufficientCredits
from server.resources import open_resources
from tests.support.fake_stripe import sign

USERS = 3
STARTER_CREDITS = 100


@dataclass
class Movement:
    user: int
    type: str
    amount: int


def test_ledger_state_machine(settings) -> None:
    settings = settings.model_copy(update={"stripe_webhook_secret": SecretStr("whsec_properties")})
    loop = asyncio.new_event_loop()
    stack = AsyncExitStack()
    res = loop.run_until_complete(stack.enter_async_context(open_resources(settings)))

    def run(coro):
        return loop.run_until_complete(coro)

    async def in_tx(work):
        async with transaction(res.sessionmaker) as session:
            return await work(session)

    class LedgerMachine(RuleBasedStateMachine):
        @initialize()
        def accounts(self) -> None:
            self.prefix = uuid.uuid4().hex[:12]
            self.users: list[uuid.UUID] = []
            self.subscriptions: list[str] = []
            self.balance = [0] * USERS
            self.granted = [0] * USERS
            self.spent = [0] * USERS
            self.keys: dict[str, Movement] = {}
            self.refunded: set[str] = set()  # charge keys already refunded
            self.events: set[str] = set()

            async def create(session):
                for i in range(USERS):
                    user = (await session.execute(text(
                        "INSERT INTO users (email, password_hash, date_of_birth) "
                        "VALUES (:e, 'x', '1990-01-01') RETURNING id"),
                        {"e": f"prop-{self.prefix}-{i}@example.com"})).scalar_one()
                    sub = f"sub_{self.prefix}_{i}"
                    await session.execute(text(
                        "INSERT INTO user_subscriptions (user_id, plan_id, status, stripe_subscription_id) "
                        "VALUES (:u, 'starter', 'active', :s)"), {"u": user, "s": sub})
                    self.users.append(user)
                    self.subscriptions.append(sub)

            run(in_tx(create))

        def _existing(self, key: str, user: int, type: str) -> bool:
            """Model of a repeated key: True if it repeats a movement, Conflict if it misuses one."""
            seen = self.keys.get(key)
            if seen is None:
                return False
            if seen.user != user or seen.type != type:
                raise Conflict()
            return True

        def _expect(self, call, model):
            """Run the call and the model; both must succeed alike or fail with the same error."""
            try:
                expected = model()
                failure = None
            except (Conflict, InsufficientCredits) as exc:
                expected, failure = None, type(exc)
            try:
                result = run(in_tx(call))
            except (Conflict, InsufficientCredits) as exc:
                assert failure is type(exc), f"ledger raised {exc!r}, model expected {failure}"
                return None
            assert failure is None, f"model expected {failure}, ledger returned {result}"
            return result, expected

        @rule(user=st.integers(0, USERS - 1), amount=st.integers(1, 60), k=st.integers(0, 7))
        def grant(self, user: int, amount: int, k: int) -> None:
            key = f"{self.prefix}:{k}"

            def model() -> bool:
                if self._existing(key, user, "grant"):
                    return False
                self.keys[key] = Movement(user, "grant", amount)
                self.balance[user] += amount
                self.granted[user] += amount
                return True

            outcome = self._expect(lambda s: ledger.grant(
                s, user_id=self.users[user], amount=amount, key=key), model)
            if outcome:
                entry, created = outcome
                assert entry.created is created

        @rule(user=st.integers(0, USERS - 1), amount=st.integers(1, 60), k=st.integers(0, 7))
        def spend(self, user: int, amount: int, k: int) -> None:
            key = f"{self.prefix}:{k}"

            def model() -> bool:
                if self._existing(key, user, "spend"):
                    return False
                if self.balance[user] < amount:
                    raise InsufficientCredits(required=amount, balance=self.balance[user])
                self.keys[key] = Movement(user, "spend", -amount)
                self.balance[user] -= amount
                self.spent[user] += amount
                return True

            outcome = self._expect(lambda s: ledger.spend(
                s, user_id=self.users[user], amount=amount, key=key), model)
            if outcome:
                entry, created = outcome
                assert entry.created is created

        @rule(user=st.integers(0, USERS - 1), k=st.integers(0, 7), variant=st.integers(0, 1))
        def refund(self, user: int, k: int, variant: int) -> None:
            charge_key, key = f"{self.prefix}:{k}", f"{self.prefix}:refund:{k}:{variant}"

            def model() -> bool | None:
                charge = self.keys.get(charge_key)
                if charge is None or charge.type != "spend" or charge.user != user:
                    return False if self._existing(key, user, "refund") else None
                if self._existing(key, user, "refund") or charge_key in self.refunded:
                    return False
                self.keys[key] = Movement(user, "refund", -charge.amount)
                self.refunded.add(charge_key)
                self.balance[user] -= charge.amount
                self.spent[user] += charge.amount
                return True

            outcome = self._expect(lambda s: ledger.refund(
                s, user_id=self.users[user], charge_key=charge_key, key=key), model)
            if outcome:
                entry, created = outcome
                assert (entry is None) is (created is None)
                if entry is not None:
                    assert entry.created is created and entry.type == "refund"

        @rule(user=st.integers(0, USERS - 1), invoice=st.integers(0, 3), copy=st.integers(0, 1))
        def invoice_paid_webhook(self, user: int, invoice: int, copy: int) -> None:
            invoice_id = f"in_{self.prefix}_{user}_{invoice}"
            event = {
                "id": f"evt_{self.prefix}_{user}_{invoice}_{copy}", "object": "event",
                "type": ["invoice.paid", "invoice.payment_succeeded"][copy], "created": 1_900_000_000,
                "data": {"object": {
                    "id": invoice_id, "object": "invoice", "customer": None, "status": "paid",
                    "billing_reason": "subscription_cycle", "amount_paid": 999,
                    "parent": {"type": "subscription_details", "subscription_details": {
                        "subscription": self.subscriptions[user], "metadata": {}}},
                    "lines": {"data": [{"pricing": {"price_details": {"price": "price_starter"}},
                                        "parent": {"subscription_item_details": {"proration": False}}}]},
                }},
            }
            body = json.dumps(event).encode()
            reply = run(in_tx(lambda s: webhooks.receive(
                s, payload=body, signature=sign(body, "whsec_properties"), settings=settings)))
            key = f"invoice:{invoice_id}:grant"
            if event["id"] in self.events:
                assert reply["duplicate"] is True
                return
            self.events.add(event["id"])
            if key in self.keys:
                assert reply["result"] == "already granted"
            else:
                assert reply["result"] == f"granted {STARTER_CREDITS}"
                self.keys[key] = Movement(user, "grant", STARTER_CREDITS)
                self.balance[user] += STARTER_CREDITS
                self.granted[user] += STARTER_CREDITS

        @invariant()
        def ledger_matches_model(self) -> None:
            if not getattr(self, "users", None):
                return

            async def read(session):
                return (await session.execute(text("""
                    SELECT c.user_id, c.balance, c.lifetime_granted, c.lifetime_spent,
                           coalesce(sum(t.amount), 0) AS total, coalesce(min(t.balance_after), 0) AS low,
                           count(t.id) AS rows,
                           count(*) FILTER (WHERE r.id IS NOT NULL AND r.amount <> -t.amount) AS bad_refunds
                    FROM unnest(CAST(:users AS uuid[])) AS u(id)
                    LEFT JOIN user_credits c ON c.user_id = u.id
                    LEFT JOIN credit_transactions t ON t.user_id = u.id
                    LEFT JOIN credit_transactions r ON r.refund_of = t.id
                    GROUP BY c.user_id, c.balance, c.lifetime_granted, c.lifetime_spent
                """), {"users": self.users})).mappings().all()

            rows = {r["user_id"]: r for r in run(in_tx(read)) if r["user_id"] is not None}
            for i, user in enumerate(self.users):
                row = rows.get(user)
                if row is None:
                    assert self.balance[i] == 0
                    continue
                assert row["balance"] == row["total"] == self.balance[i] >= 0
                assert row["low"] >= 0 and row["bad_refunds"] == 0
                assert row["lifetime_granted"] == self.granted[i]
                assert row["lifetime_spent"] == self.spent[i]
                assert row["rows"] == sum(1 for m in self.keys.values() if m.user == i)

    try:
        run_state_machine_as_test(LedgerMachine, settings=hsettings(
            max_examples=20, stateful_step_count=30, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()
