"""The races a generation's life can meet, each reproduced: lock order, takeovers, hand-backs,
a heartbeat that loses its row. Real PostgreSQL, real Redis, the real services."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from arq.jobs import Job, JobStatus
from sqlalchemy import select, text, update

from db.models import GeneratedContent as C
from db.session import transaction
from jobs.sweep import sweep_generations
from server import keys
from server.content import lifecycle, service
from server.content.runner import GenerationRun
from server.content.schemas import GenerateImageIn
from server.credits import ledger
from server.credits.audit import find_drift
from tests.support.api import Api, verified_user
from tests.support.workers import running_worker


async def _current_user(res, user_id: uuid.UUID):
    from server.auth.current_user import load_user

    async with res.reader.acquire() as reader:
        return await load_user(reader, user_id=user_id, token_version=0)


async def _generate(res, user) -> uuid.UUID:
    async with transaction(res.sessionmaker) as session:
        content = await service.create_generation(session, user=user, request=GenerateImageIn(prompt="x"),
                                                  queue=res.queue, storage=res.storage,
                                                  moderator=res.moderator)
    return uuid.UUID(str(content["id"]))


async def test_failing_and_generating_for_one_user_never_deadlock(app_server, api: Api, settings) -> None:
    """fail (content -> refund) against generate (charge -> content) for one user, 200 rounds,
    with plain transactions (no retry): one lock order means no deadlock to retry. Each
    round fails the last round's generation, so the plan's cap on active ones is never hit."""
    res = app_server.app[keys.resources]
    api_user = await _verified(api, settings)
    user = await _current_user(res, uuid.UUID(api_user.id))
    async with transaction(res.sessionmaker) as session:
        await ledger.grant(session, user_id=user.id, amount=5 * 400, key=f"lots:{user.id}")
    errors: list[BaseException] = []
    victim = await _generate(res, user)
    for _ in range(200):

        async def fail_it(victim=victim) -> None:
            async with transaction(res.sessionmaker) as session:
                await lifecycle.fail(session, content_id=victim, error="provider said no")

        outcomes = await asyncio.gather(fail_it(), _generate(res, user), return_exceptions=True)
        errors += [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if isinstance(outcomes[1], uuid.UUID):
            victim = outcomes[1]
    assert errors == []
    async with transaction(res.sessionmaker) as session:
        assert await find_drift(session) == []


async def _verified(api: Api, settings):
    async with running_worker(settings):
        return await verified_user(api, settings.data_dir / "outbox")


async def _row(res, content_id: uuid.UUID):
    async with res.sessionmaker() as session:
        return (await session.execute(select(C.status, C.job_id, C.attempts, C.stage, C.deadline_at)
                                      .where(C.id == content_id))).one()


async def test_a_takeover_is_compare_and_set_on_what_the_sweep_read(app_server, api: Api, settings) -> None:
    res = app_server.app[keys.resources]
    user = await _current_user(res, uuid.UUID((await _verified(api, settings)).id))
    content_id = await _generate(res, user)
    async with transaction(res.sessionmaker) as session:
        attempt = await lifecycle.claim(session, content_id=content_id, job_id=str(content_id),
                                        lease_seconds=60, max_attempts=3)
        # The lease looks expired to the sweep...
        await session.execute(update(C).where(C.id == content_id).values(deadline_at=text("now() - interval '1 s'")))
    seen = await _row(res, content_id)
    # ...but the run renews it before the sweep acts: the takeover must not happen.
    async with transaction(res.sessionmaker) as session:
        assert await lifecycle.renew(session, attempt=attempt, lease_seconds=60)
    async with transaction(res.sessionmaker) as session:
        assert not await lifecycle.take_over(session, content_id=content_id, seen_job_id=seen.job_id,
                                             seen_status="processing", seen_attempts=seen.attempts,
                                             new_job_id="sweep-new")
    assert (await _row(res, content_id)).job_id == str(content_id)
    # Another run (a second sweep) that took it first also wins alone.
    async with transaction(res.sessionmaker) as session:
        await session.execute(update(C).where(C.id == content_id).values(deadline_at=text("now() - interval '1 s'")))
    seen = await _row(res, content_id)
    results = []
    for new in ("first", "second"):
        async with transaction(res.sessionmaker) as session:
            results.append(await lifecycle.take_over(session, content_id=content_id, seen_job_id=seen.job_id,
                                                     seen_status="processing", seen_attempts=seen.attempts,
                                                     new_job_id=new))
    assert results == [True, False] and (await _row(res, content_id)).job_id == "first"
    # And the old run, whose row it no longer is, can neither step nor complete.
    async with transaction(res.sessionmaker) as session:
        with pytest.raises(lifecycle.Superseded):
            await lifecycle.step(session, attempt=attempt, stage="x", progress=50, lease_seconds=60)


async def test_a_handed_back_retry_keeps_its_backoff_and_the_sweep_leaves_it(app_server, api: Api, settings) -> None:
    res = app_server.app[keys.resources]
    user = await _current_user(res, uuid.UUID((await _verified(api, settings)).id))
    content_id = await _generate(res, user)
    job_id = str(content_id)
    async with transaction(res.sessionmaker) as session:
        attempt = await lifecycle.claim(session, content_id=content_id, job_id=job_id, lease_seconds=60,
                                        max_attempts=3)
    async with transaction(res.sessionmaker) as session:
        assert await lifecycle.hand_back(session, attempt=attempt, stage="retrying", counts=True)
    row = await _row(res, content_id)
    assert row.status == "queued" and row.attempts == 1 and row.deadline_at is None
    # arq holds the job (in the real flow: deferred by the backoff); the sweep leaves the row.
    status = await Job(job_id, res.queue, _queue_name=settings.key("queue")).status()
    assert status in (JobStatus.queued, JobStatus.deferred)
    sweep_settings = settings.model_copy(update={"queued_grace_seconds": 0})
    res_view = type("R", (), {})()
    res_view.__dict__.update(res.__dict__)
    res_view.settings = sweep_settings
    await sweep_generations({"res": res_view})
    assert (await _row(res, content_id)).job_id == job_id  # not requeued under a new job


async def test_a_run_whose_row_is_taken_over_stops_before_paying_again(
        app_server, api: Api, settings) -> None:
    """The heartbeat notices the takeover and stops the run mid-provider call."""
    slow = settings.model_copy(update={"local_ai_delay_ms": 3000, "generation_lease_seconds": 1})
    res = app_server.app[keys.resources]
    user = await _current_user(res, uuid.UUID((await _verified(api, settings)).id))
    content_id = await _generate(res, user)
    res_view = type("R", (), {})()
    res_view.__dict__.update(res.__dict__)
    res_view.settings = slow
    from server.adapters.ai import make_ai

    res_view.ai = make_ai(slow)
    calls: list[str] = []
    real_generate = res_view.ai.generate_image

    async def counting_generate(**kw):
        calls.append("generate_image")
        return await real_generate(**kw)

    res_view.ai.generate_image = counting_generate
    run = GenerationRun(res_view, content_id, job_id=str(content_id), timeout=60)
    task = asyncio.create_task(run.run())
    for _ in range(200):  # until the run is inside the (3 s) provider call
        if calls:
            break
        await asyncio.sleep(0.02)
    async with transaction(res.sessionmaker) as session:
        await session.execute(update(C).where(C.id == content_id).values(job_id="someone-else"))
    result = await asyncio.wait_for(task, 5)  # well before the provider would have answered
    assert result.outcome == "discarded" and calls == ["generate_image"]
    row = await _row(res, content_id)
    assert row.job_id == "someone-else" and row.status == "processing"  # untouched by the old run


async def test_a_job_whose_database_is_away_hands_back_without_failing(own_stack, api: Api) -> None:
    """PostgreSQL down for longer than the job waits: the content is untouched, not failed."""
    from server.resources import open_resources

    settings, pg, _ = own_stack
    impatient = settings.model_copy(update={"generation_db_patience_seconds": 0.5})
    async with open_resources(impatient) as res:
        async with transaction(res.sessionmaker) as session:
            user_id = (await session.execute(text(
                "INSERT INTO users (email, password_hash, date_of_birth, email_verified, email_verified_at) "
                "VALUES ('a@example.com', 'x', '1990-01-01', true, now()) RETURNING id"))).scalar_one()
            await session.execute(text("INSERT INTO user_credits (user_id) VALUES (:u)"), {"u": user_id})
            await ledger.grant(session, user_id=user_id, amount=50, key=f"g:{user_id}")
        user = await _current_user(res, user_id)
        content_id = await _generate(res, user)
        await asyncio.to_thread(pg.stop)
        try:
            result = await GenerationRun(res, content_id, job_id=str(content_id), timeout=60).run()
        finally:
            await asyncio.to_thread(pg.start)
        assert result.outcome == "handed_back"
        await res.engine.dispose()
        row = await _row(res, content_id)
        assert row.status == "queued" and row.attempts == 0
        async with transaction(res.sessionmaker) as session:
            assert await find_drift(session) == []
            refunds = (await session.execute(text(
                "SELECT count(*) FROM credit_transactions WHERE type = 'refund'"))).scalar_one()
        assert refunds == 0

