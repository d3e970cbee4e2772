"""The studio in a real browser (Debian's Chromium, driven by Playwright) against the real
app, worker, PostgreSQL and Redis: a newcomer's whole story, a dropped connection, hostile
text, an expired and a revoked session, accessibility, and screenshots of every screen."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import Api, wait_for_email
from tests.support.browser import (
    Browser,
    chromium_or_skip,
    run_axe,
    serving_studio,
    studio_link,
    verified_account,
)
from tests.support.tcp_proxy import TcpProxy
from tests.support.workers import running_worker

pytestmark = pytest.mark.slow
PASSWORD = "correct horse battery"
FAST_RENDER = {"local_ai_delay_ms": 300, "video_poll_interval_seconds": 0.3}
# Every value a <progress> element of a content card takes, in order, per content id.
RECORD_PROGRESS = """
window.__progress = {};
new MutationObserver((records) => {
  for (const r of records) {
    if (r.target.tagName !== 'PROGRESS') continue;
    const key = r.target.closest('[data-key]').dataset.key;
    (window.__progress[key] ||= []).push(r.target.value);
  }
}).observe(document.body, {subtree: true, attributes: true, attributeFilter: ['value']});
"""


@pytest.fixture(autouse=True)
def _chromium() -> None:
    chromium_or_skip()


def expect(target: Any) -> Any:
    from playwright.async_api import expect as playwright_expect

    playwright_expect.set_options(timeout=15_000)  # a bound, not a pause: the machine is shared
    return playwright_expect(target)


async def api_for(server: Any) -> Api:
    return Api(str(server.make_url("")).rstrip("/"))


async def sign_in(page: Any, email: str, password: str = PASSWORD) -> None:
    await page.goto("/sign-in")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/dashboard$"))
    await expect(page.get_by_test_id("connection")).to_have_text("Live")


async def go(page: Any, screen: str) -> None:
    """Through the header's navigation, as a person does (no page load)."""
    await page.get_by_role("navigation", name="Studio").get_by_role("link", name=screen, exact=True).click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(screen if screen != "Plans" else "Plans and credits")


async def assert_clean(page: Any, watch: Any) -> None:
    assert watch.errors == [], watch.errors
    assert await watch.csp_violations(page) == []
    assert watch.login_tokens and watch.tokens_in_urls() == []


async def content_ids_shown(page: Any, region: str) -> list[str]:
    return await page.get_by_test_id(region).locator("article[data-key]").evaluate_all(
        "(cards) => cards.map((c) => c.dataset.key)")


async def test_a_newcomer_signs_up_verifies_subscribes_creates_and_generates_live(settings) -> None:
    async with contextlib.AsyncExitStack() as stack:
        server, st = await stack.enter_async_context(serving_studio(settings, **FAST_RENDER))
        worker = running_worker(st)
        await worker.__aenter__()
        worker_running = True

        async def stop_worker() -> None:
            nonlocal worker_running
            if worker_running:
                worker_running = False
                await worker.__aexit__(None, None, None)

        stack.push_async_callback(stop_worker)
        api = await api_for(server)
        stack.push_async_callback(api.close)
        browser = await stack.enter_async_context(Browser())
        page, watch = await browser.page(st.public_url)
        outbox = st.data_dir / "outbox"
        email = f"newcomer-{uuid.uuid4().hex[:8]}@example.com"

        await page.goto("/")
        await expect(page).to_have_url(re.compile(r"/sign-in$"))
        await page.get_by_role("link", name="Create an account").click()
        await page.get_by_label("Email").fill(email)
        await page.get_by_label("Display name (optional)").fill("Ada")
        await page.get_by_label("Date of birth").fill("1990-04-01")
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Create account").click()
        await expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
        await expect(page.get_by_text(email)).to_be_visible()

        link = studio_link(await wait_for_email(outbox, email), "verify-email")
        assert link.startswith(f"{st.public_url}/verify-email#token=")
        await page.goto(link)
        await expect(page.get_by_text("Your email address is verified")).to_be_visible()
        assert "token" not in page.url  # taken out of the address bar and the history
        await page.get_by_role("main").get_by_role("link", name="Sign in").click()
        await page.get_by_label("Email").fill(email)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page).to_have_url(re.compile(r"/dashboard$"))
        await page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page
        balance = page.get_by_test_id("balance")
        await expect(balance).to_have_text("25")
        await expect(page.get_by_test_id("connection")).to_have_text("Live")

        await go(page, "Plans")
        await page.get_by_role("button", name="Subscribe to Pro").click()
        await expect(page.get_by_test_id("plan")).to_have_text("Pro plan")
        await expect(balance).to_have_text("525")  # the plan's credits, pushed over the socket

        await go(page, "Avatars")
        await page.get_by_label("Name", exact=True).fill("Nova")
        await page.get_by_label("Age", exact=True).fill("29")
        await page.get_by_label("Appearance", exact=True).fill("hair: copper\neyes: grey")
        await expect(page.get_by_test_id("avatar-cost")).to_have_text("Cost: 10 credits. Balance after: 515 credits.")
        await page.get_by_role("button", name="Create avatar").click()
        card = page.locator("article.avatar-card", has_text="Nova")
        await expect(card.get_by_test_id("avatar-status")).to_have_text("Ready")
        portrait = card.get_by_role("img", name="Portrait of Nova")
        await expect(portrait).to_be_visible()
        assert await portrait.evaluate("(img) => img.decode().then(() => img.naturalWidth)") > 0
        await expect(balance).to_have_text("515")
        await card.get_by_role("button", name="Edit", exact=True).click()
        await page.get_by_role("form", name="Edit Nova").get_by_label("Style", exact=True).fill("film noir")
        await page.get_by_role("button", name="Save").click()
        await expect(card.get_by_role("heading", name="Nova")).to_be_visible()

        await go(page, "Generate")
        await page.evaluate(RECORD_PROGRESS)
        await page.get_by_label("Prompt", exact=True).fill("a violin on a chair by the window")
        await page.get_by_label("Avatar", exact=True).select_option(label="Nova")
        await page.get_by_label("Quality", exact=True).select_option("premium")
        await expect(page.get_by_test_id("generate-cost")).to_have_text("Cost: 10 credits · Balance after: 505 credits")
        await page.get_by_role("button", name="Generate").click()
        await expect(page.get_by_label("Prompt", exact=True)).to_have_value("")
        await page.get_by_label("Prompt", exact=True).fill("waves rolling onto a beach at dusk")
        await page.get_by_label("Video", exact=True).check()
        await page.get_by_label("Quality", exact=True).select_option("standard")
        await page.get_by_label("Duration (seconds)").fill("2")
        await expect(page.get_by_test_id("generate-cost")).to_have_text("Cost: 15 credits · Balance after: 490 credits")
        await page.get_by_role("button", name="Generate").click()

        results = page.get_by_test_id("results")
        image_card = results.locator("article", has_text="a violin on a chair")
        video_card = results.locator("article", has_text="waves rolling")
        await expect(image_card.get_by_test_id("content-status")).to_have_text("Done", timeout=30_000)
        await expect(video_card.get_by_test_id("content-status")).to_have_text("Done", timeout=30_000)
        image = image_card.get_by_role("img")
        assert await image.evaluate("(img) => img.decode().then(() => img.naturalWidth)") > 0
        video = video_card.locator("video")
        await expect(video).to_have_attribute("controls", "")
        await video.evaluate("""(v) => v.readyState >= 1 ? null : new Promise((ok, fail) => {
            v.addEventListener('loadedmetadata', ok, {once: true}); v.addEventListener('error', fail, {once: true});
            v.load(); })""")
        assert await video.evaluate("(v) => v.duration") > 0 and await video.evaluate("(v) => v.videoWidth") > 0
        progress = await page.evaluate("window.__progress")
        for content_id, values in progress.items():  # every bar only moved forward, live
            assert values == sorted(values), (content_id, values)
        assert any(0 < v < 100 for values in progress.values() for v in values), progress
        assert len(progress) == 2
        await expect(balance).to_have_text("490")

        await stop_worker()  # nothing runs now: the next one stays queued
        await page.get_by_label("Image", exact=True).check()
        await page.get_by_label("Prompt", exact=True).fill("a lighthouse in fog")
        await page.get_by_role("button", name="Generate").click()
        running = page.get_by_test_id("running").locator("article", has_text="a lighthouse in fog")
        await expect(running.get_by_test_id("content-status")).to_have_text("Queued")
        await expect(running.get_by_test_id("progress")).to_be_visible()
        await expect(balance).to_have_text("485")
        await running.get_by_role("button", name="Cancel").click()
        canceled = results.locator("article", has_text="a lighthouse in fog")
        await expect(canceled.get_by_test_id("content-status")).to_have_text("Canceled")
        await expect(canceled.get_by_role("button", name=re.compile("^Retry"))).to_be_visible()
        await expect(balance).to_have_text("490")  # refunded
        await canceled.get_by_role("button", name=re.compile("^Retry")).click()  # charged again, queued again
        retried = page.get_by_test_id("running").locator("article", has_text="a lighthouse in fog")
        await expect(retried.get_by_test_id("content-status")).to_have_text("Queued")
        await expect(balance).to_have_text("485")
        await retried.get_by_role("button", name="Cancel").click()
        await expect(canceled.get_by_test_id("content-status")).to_have_text("Canceled")
        await expect(balance).to_have_text("490")
        await canceled.get_by_role("button", name="Delete", exact=True).click()
        await expect(canceled).to_have_count(0)

        await go(page, "Gallery")
        gallery = page.get_by_test_id("gallery").locator("article")
        await expect(gallery).to_have_count(2)
        await page.get_by_label("Type", exact=True).select_option("video")
        await expect(gallery).to_have_count(1)
        await expect(gallery.locator("video")).to_have_count(1)
        await page.get_by_label("Type", exact=True).select_option("image")
        await expect(gallery).to_have_count(1)
        await expect(gallery.get_by_role("heading")).to_have_text("a violin on a chair by the window")

        # What the studio shows is what the ledger says.
        login = await api.post("/api/auth/login", json={"email": email, "password": PASSWORD})
        token = login.body["access_token"]
        ledger = (await api.get("/api/credits/transactions?limit=100", token=token)).body["items"]
        credits = (await api.get("/api/credits", token=token)).body
        assert credits["balance"] == 490 == sum(t["amount"] for t in ledger)
        activity = (await api.get("/api/dashboard/activity?limit=100", token=token)).body["items"]
        await go(page, "Activity")
        ledger_rows = page.get_by_test_id("ledger").locator("tr[data-key]")
        await expect(ledger_rows).to_have_count(len(ledger))
        shown = await ledger_rows.evaluate_all("(rows) => rows.map((r) => [r.dataset.key, "
                                               "r.cells[1].textContent, r.cells[2].textContent])")
        assert shown == [[t["id"], f"{t['amount']:+d}", str(t["balance_after"])] for t in ledger]
        feed = page.get_by_test_id("activity-feed").locator("li[data-key]")
        await expect(feed.first).to_be_visible()
        feed_ids = await feed.evaluate_all("(items) => items.map((i) => i.dataset.key)")
        api_ids = [a["id"] for a in activity]
        assert len(feed_ids) == len(set(feed_ids)), "an activity item is shown twice"
        assert set(feed_ids) <= set(api_ids) and api_ids[:20] == [i for i in feed_ids if i in api_ids[:20]]
        assert {"content.completed", "credits.spent", "subscription.activated"} <= {
            a["type"] for a in activity if a["id"] in feed_ids}

        assert await page.evaluate("window.__sameDocument") is True  # all of it without a reload
        await assert_clean(page, watch)


async def test_a_dropped_connection_resumes_from_the_last_event_without_duplicates(settings) -> None:
    proxy = await TcpProxy().start()
    try:
        async with serving_studio(settings, public_port=proxy.port, local_ai_delay_ms=1500,
                                  video_poll_interval_seconds=0.3) as (server, st), \
                running_worker(st), Browser() as browser:
            proxy.upstream_port = server.port
            api = await api_for(server)
            try:
                email, _, login = await verified_account(api, st.data_dir / "outbox")
                token = login["access_token"]
                page, watch = await browser.page(st.public_url)
                await sign_in(page, email)
                await go(page, "Generate")
                await page.evaluate(RECORD_PROGRESS)
                await page.get_by_label("Prompt", exact=True).fill("a slow pan over mountains")
                await page.get_by_label("Video", exact=True).check()
                await page.get_by_label("Duration (seconds)").fill("1")
                await page.get_by_role("button", name="Generate").click()
                running = page.get_by_test_id("running").locator("article")
                await expect(running.get_by_test_id("content-status")).to_have_text("Generating")
                content_id = await running.get_attribute("data-key")
                await expect(page.get_by_test_id("balance")).to_have_text("10")

                before = await page.evaluate("window.lustifyStudio.live()")
                assert before["lastEventId"] is not None
                proxy.cut()  # mid-generation: the transport is gone, and stays gone for a while
                await expect(page.get_by_test_id("connection")).to_have_text("Reconnecting…")
                await go(page, "Gallery")  # a request while offline: an error state with a way out
                problem = page.get_by_role("main").get_by_role("alert")
                await expect(problem).to_contain_text("could not be reached")
                final = await wait_for_status(api, token, content_id, "completed")
                # More durable events while away: an image made elsewhere, charged and finished.
                other = await api.post("/api/content/generate/image", token=token,
                                       json={"prompt": "made in another tab"})
                assert other.status == 202, other
                await wait_for_status(api, token, other.body["id"], "completed")
                proxy.restore()

                await expect(page.get_by_test_id("connection")).to_have_text("Live", timeout=30_000)
                await problem.get_by_role("button", name="Try again").click()
                await expect(page.get_by_test_id("gallery").locator("article")).to_have_count(2)
                await go(page, "Generate")
                results = page.get_by_test_id("results")
                await expect(results.locator(f'article[data-key="{content_id}"]')
                             .get_by_test_id("content-status")).to_have_text("Done")
                await expect(results.locator(f'article[data-key="{other.body["id"]}"]')
                             .get_by_test_id("content-status")).to_have_text("Done")
                await expect(page.get_by_test_id("balance")).to_have_text("5")
                ids = await content_ids_shown(page, "results") + await content_ids_shown(page, "running")
                assert sorted(ids) == sorted([content_id, other.body["id"]])
                assert final["url"]
                after = await page.evaluate("window.lustifyStudio.live()")
                # It resumed from the last event it had (the server replayed what it missed).
                assert after["connects"] >= 2 and after["resumedFrom"] == before["lastEventId"]
                assert after["applied"] >= before["applied"] + 4, (before, after)

                await go(page, "Activity")
                ledger = (await api.get("/api/credits/transactions", token=token)).body["items"]
                await expect(page.get_by_test_id("ledger").locator("tr[data-key]")).to_have_count(len(ledger))
                feed_ids = await page.get_by_test_id("activity-feed").locator("li[data-key]").evaluate_all(
                    "(items) => items.map((i) => i.dataset.key)")
                activity = (await api.get("/api/dashboard/activity?limit=100", token=token)).body["items"]
                assert len(feed_ids) == len(set(feed_ids)) and sorted(feed_ids) == sorted(a["id"] for a in activity)
                assert watch.errors == [] and await watch.csp_violations(page) == []
            finally:
                await api.close()
    finally:
        await proxy.close()


async def wait_for_status(api: Api, token: str, content_id: str, status: str, timeout: float = 30) -> dict:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        reply = await api.get(f"/api/content/{content_id}", token=token)
        if reply.status == 200 and reply.body["status"] == status:
            return reply.body
        assert loop.time() < deadline, reply
        await asyncio.sleep(0.1)


async def test_markup_in_names_and_prompts_is_shown_as_text_and_never_runs(settings) -> None:
    display = '<img src=x onerror="window.__xss=1">Mallory'
    name = '<img src=x onerror="window.__xss=2">Eve'
    description = "<script>window.__xss=3</script><i>quiet</i>"
    prompt = '<svg onload="window.__xss=4"></svg><b>bold</b> & "quotes"'
    async with serving_studio(settings, **FAST_RENDER) as (server, st), running_worker(st), Browser() as browser:
        api = await api_for(server)
        try:
            email, _, _ = await verified_account(api, st.data_dir / "outbox", display_name=display)
            page, watch = await browser.page(st.public_url)
            await sign_in(page, email)
            await expect(page.get_by_text(f"Welcome back, {display}.")).to_be_visible()

            await go(page, "Avatars")
            await page.get_by_label("Name", exact=True).fill(name)
            await page.get_by_label("Age", exact=True).fill("31")
            await page.get_by_label("Description", exact=True).fill(description)
            await page.get_by_role("button", name="Create avatar").click()
            card = page.locator("article.avatar-card")
            await expect(card.get_by_test_id("avatar-status")).to_have_text("Ready")
            await expect(card.get_by_role("heading", name=name)).to_be_visible()
            await expect(card.get_by_text(description)).to_be_visible()

            await go(page, "Generate")
            await page.get_by_label("Prompt", exact=True).fill(prompt)
            await page.get_by_label("Avatar", exact=True).select_option(label=name)
            await page.get_by_role("button", name="Generate").click()
            done = page.get_by_test_id("results").locator("article")
            await expect(done.get_by_test_id("content-status")).to_have_text("Done")
            await expect(done.get_by_role("heading", name=prompt)).to_be_visible()
            await expect(done.get_by_text(name)).to_be_visible()
            for screen in ("Gallery", "Activity", "Dashboard"):
                await go(page, screen)
                await expect(page.get_by_role("main").get_by_text(name).filter(visible=True).first).to_be_visible()

            await go(page, "Avatars")
            await card.get_by_role("button", name="Delete", exact=True).click()
            await card.get_by_role("button", name=f"Delete {name}").click()
            await expect(card).to_have_count(0)
            assert await page.evaluate("window.__xss") is None
            assert await page.locator('img[src="x"], svg[onload], main b, main i, main script').count() == 0
            # The CSP makes HTML sinks refuse strings (Trusted Types) and inline scripts never run.
            refused = await page.evaluate("""() => {
                try { document.getElementById('main').innerHTML = '<b>x</b>'; return 'allowed'; }
                catch (e) { return e.name; } }""")
            assert refused == "TypeError"
            script_url = await page.evaluate("""() => { const s = document.createElement('script');
                try { s.src = 'data:text/javascript,window.__inline=1'; return 'allowed'; } catch (e) { return e.name; } }""")
            assert script_url == "TypeError"
            assert watch.errors == []
            assert watch.login_tokens and watch.tokens_in_urls() == []
            # Where the session lives: the refresh token in this tab's sessionStorage only.
            storage = await page.evaluate("[Object.keys(localStorage), Object.keys(sessionStorage), document.cookie]")
            assert storage == [[], ["lustify.refresh_token"], ""]
        finally:
            await api.close()


async def test_the_token_is_rotated_before_it_expires_and_a_revoked_session_returns_to_sign_in(settings) -> None:
    import asyncio

    ttl = 6
    async with serving_studio(settings, access_token_ttl_seconds=ttl, **FAST_RENDER) as (server, st), \
            running_worker(st), Browser() as browser:
        api = await api_for(server)
        try:
            outbox = st.data_dir / "outbox"
            email, _, _ = await verified_account(api, outbox)
            page, watch = await browser.page(st.public_url)
            loop = asyncio.get_running_loop()
            refreshes: list[float] = []
            refreshed = asyncio.Event()

            def on_request(request: Any) -> None:
                if request.url.endswith("/api/auth/refresh"):
                    refreshes.append(loop.time())
                    refreshed.set()

            page.on("request", on_request)
            await sign_in(page, email)
            signed_in_at = loop.time()
            first_refresh = watch.login_tokens[1]

            await asyncio.wait_for(refreshed.wait(), 20)
            assert refreshes[0] < signed_in_at + ttl  # before the access token expired
            while (await page.evaluate("window.lustifyStudio.live()"))["connects"] < 2:
                assert loop.time() < signed_in_at + 20
                await asyncio.sleep(0.1)  # the socket connected again with the new token
            await expect(page.get_by_test_id("connection")).to_have_text("Live")
            stored = await page.evaluate("sessionStorage.getItem('lustify.refresh_token')")
            assert stored != first_refresh and stored in watch.login_tokens  # rotated
            await asyncio.sleep(max(0.0, signed_in_at + ttl + 1 - loop.time()))  # the first access token is dead
            await go(page, "Generate")
            await page.get_by_label("Prompt", exact=True).fill("after the first token expired")
            await page.get_by_role("button", name="Generate").click()
            await expect(page.get_by_test_id("results").locator("article").get_by_test_id("content-status")).to_have_text(
                "Done", timeout=30_000)

            # Elsewhere, the password is reset from the emailed link: this session ends at once.
            other, _ = await browser.page(st.public_url)
            await other.goto("/forgot-password")
            await other.get_by_label("Email", exact=True).fill(email)
            await other.get_by_role("button", name="Send the reset link").click()
            await expect(other.get_by_text("a link to reset its password is on its way")).to_be_visible()
            link = studio_link(await wait_for_email(outbox, email, count=2), "reset-password")
            await other.goto(link)
            assert "token" not in other.url
            await other.get_by_label("New password", exact=True).fill("a brand new secret")
            await other.get_by_label("Repeat the new password").fill("a brand new secret")
            await other.get_by_role("button", name="Change password").click()
            await expect(other.get_by_text("Your password is changed")).to_be_visible()

            await expect(page).to_have_url(re.compile(r"/sign-in$"))
            await expect(page.get_by_text("Your session ended")).to_be_visible()
            assert await page.evaluate("sessionStorage.getItem('lustify.refresh_token')") is None
            await sign_in(page, email, "a brand new secret")
            assert watch.errors == [] and await watch.csp_violations(page) == []
        finally:
            await api.close()


GUEST_SCREENS = ["sign-up", "check-email", "verify-email", "sign-in", "forgot-password", "reset-password"]
STUDIO_SCREENS = ["Dashboard", "Generate", "Gallery", "Avatars", "Activity", "Plans"]


def screenshot_folder(request: pytest.FixtureRequest) -> Path:
    folder = Path(os.environ.get("STUDIO_SCREENSHOTS") or Path(__file__).parent.parent / "build" / "studio-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\nstudio screenshots: {folder}")
    return folder


async def settle(page: Any) -> None:
    """Until no loading state is left on the screen."""
    await expect(page.locator("main .loading")).to_have_count(0)
    await expect(page.locator("main [aria-busy='true']")).to_have_count(0)


async def test_every_screen_is_accessible_at_phone_and_desktop_widths_with_screenshots(settings, request) -> None:
    folder = screenshot_folder(request)
    async with serving_studio(settings, **FAST_RENDER) as (server, st), running_worker(st), Browser() as browser:
        api = await api_for(server)
        try:
            email, _, login = await verified_account(api, st.data_dir / "outbox", display_name="Ada")
            token = login["access_token"]
            assert (await api.post("/api/subscriptions", token=token, json={"plan_id": "pro"})).status == 201
            avatar = await api.post("/api/avatars", token=token, json={"name": "Nova", "age": 29,
                                                                       "appearance": {"hair": "copper"}})
            made = [await api.post("/api/content/generate/image", token=token, json={
                "prompt": "a violin on a chair", "avatar_id": avatar.body["id"], "quality": "hd"}),
                await api.post("/api/content/generate/video", token=token, json={
                    "prompt": "waves at dusk", "duration_seconds": 1})]
            for reply in made:
                await wait_for_status(api, token, reply.body["id"], "completed")
            problems: dict[str, list] = {}
            for width, height in ((1280, 900), (390, 844)):
                page, watch = await browser.page(st.public_url, width=width, height=height)
                shots = folder / str(width)
                shots.mkdir(exist_ok=True)
                for screen in GUEST_SCREENS:
                    await page.goto(f"/{screen}")
                    await expect(page.get_by_role("heading", level=1)).to_be_visible()
                    await check_screen(page, shots / f"{screen}.png", problems, f"{width}/{screen}")
                await sign_in(page, email)
                for screen in STUDIO_SCREENS:
                    await go(page, screen)
                    await settle(page)
                    await check_screen(page, shots / f"{screen.lower()}.png", problems, f"{width}/{screen}")
                    if screen == "Dashboard":
                        await page.get_by_text("30 days", exact=True).click()
                        await expect(page.get_by_test_id("analytics-summary")).to_contain_text("in the last 30 days")
                        assert await page.locator("svg.chart rect.bar").count() == 30
                await page.goto("/docs")
                await expect(page.locator(".opblock").first).to_be_visible()
                await page.screenshot(path=shots / "docs.png")
                assert watch.errors == [] and await watch.csp_violations(page) == []
                if width == 1280:
                    await keyboard_reaches_the_generate_form(page)
            assert problems == {}, problems
        finally:
            await api.close()


async def check_screen(page: Any, path: Path, problems: dict[str, list], name: str) -> None:
    violations = await run_axe(page)
    if violations:
        problems[name] = violations
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    if overflow > 0:
        problems[f"{name} overflow"] = [overflow]
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=path, full_page=True)
    assert await page.evaluate("window.__cspViolations") == []


async def keyboard_reaches_the_generate_form(page: Any) -> None:
    await page.goto("/generate")  # a fresh page load: the session comes back from this tab's storage
    await expect(page.get_by_test_id("connection")).to_have_text("Live")
    await page.evaluate("document.activeElement.blur()")
    reached: list[str] = []
    for _ in range(40):
        await page.keyboard.press("Tab")
        reached.append(await page.evaluate("""() => {
            const el = document.activeElement;
            const style = getComputedStyle(el);
            const name = el.labels && el.labels[0] ? el.labels[0].textContent.trim() : (el.textContent || '').trim();
            return `${el.tagName.toLowerCase()}:${name.slice(0, 30)}:${style.outlineStyle !== 'none' ? 'ring' : 'none'}`;
        }"""))
    for wanted in ("a:Generate:ring", "textarea:Prompt:ring", "input:Image:ring", "select:Avatar:ring",
                   "select:Quality:ring", "select:Aspect ratio:ring", "button:Generate:ring", "button:Sign out:ring"):
        assert wanted in reached, (wanted, reached)


# The live layer alone, in the browser, fed the integer ids API.md specifies (a gapless
# sequence per user), with a stand-in socket that answers `events.replay` from a history.
LIVE_LAYER = """async () => {
  const { Live } = await import('/studio/js/live.js');
  const applied = [];
  const replays = [];
  const history = new Map([[3, 'credits.updated'], [4, 'activity'], [5, 'activity']]);  // what the server has
  const live = new Live({ onEvent: (name, p) => applied.push(`${name}#${p.event_id}`), onState() {}, onSync() {} });
  live.socket = { connected: true, timeout: () => ({ emitWithAck: async (name, data) => {
    replays.push(`${name}>${data.last_event_id}`);
    const events = [...history].filter(([id]) => id > data.last_event_id)
      .map(([id, event]) => ({ event, data: { event_id: id } }));
    return { ok: true, data: { events } };
  } }) };
  const settle = (ms) => new Promise((ok) => setTimeout(ok, ms));
  live.receive('activity', { event_id: 1 });
  live.receive('credits.updated', { event_id: 2 });
  live.receive('credits.updated', { event_id: 2 });              // a duplicate
  live.receive('activity', { event_id: 5 });                     // 3 and 4 missed
  await settle(50);
  history.set(6, 'activity').set(7, 'credits.updated');
  live.receive('generation.progress', { event_id: 5, progress: 40 });  // ephemeral: never a duplicate
  live.receive('generation.progress', { event_id: 5, progress: 60 });
  live.receive('generation.progress', { event_id: 7, progress: 80 });  // names 6 and 7: on their way?
  live.receive('activity', { event_id: 6 });                     // 6 comes; 7 does not
  for (let i = 0; i < 100 && replays.length < 2; i += 1) await settle(50);  // the grace, then a replay
  const integers = { applied: applied.splice(0), replays: replays.splice(0), lastId: live.lastId,
                     duplicates: live.stats.duplicates };
  const streams = new Live({ onEvent: (name, p) => applied.push(`${name}#${p.event_id}`), onState() {}, onSync() {} });
  streams.socket = live.socket;
  for (const id of ['1732600000000-0', '1732600000000-1', '1732600000000-1', '1732600000500-0']) {
    streams.receive('activity', { event_id: id });
  }
  streams.receive('generation.progress', { event_id: '1732600000600-0', progress: 5 });
  await settle(50);
  return { integers, streams: { applied, replays, lastId: streams.lastId, duplicates: streams.stats.duplicates } };
}"""


async def test_the_live_layer_applies_each_event_once_and_replays_a_gap_in_the_sequence(settings) -> None:
    async with serving_studio(settings) as (_, st), Browser() as browser:
        page, watch = await browser.page(st.public_url)
        await page.goto("/sign-in")
        result = await page.evaluate(LIVE_LAYER)
    assert result["integers"] == {
        "applied": ["activity#1", "credits.updated#2", "credits.updated#3", "activity#4", "activity#5",
                    "generation.progress#5", "generation.progress#5", "generation.progress#7", "activity#6",
                    "credits.updated#7"],
        "replays": ["events.replay>2", "events.replay>6"],  # the held #5 came after #3 and #4
        "lastId": 7,  # kept as received: an integer, handed back as last_event_id
        "duplicates": 2,  # the resent #2, and the live #5 once the replay had applied it
    }
    assert result["streams"] == {  # today's Redis stream ids: no gap can be seen, duplicates still go
        "applied": ["activity#1732600000000-0", "activity#1732600000000-1", "activity#1732600000500-0",
                    "generation.progress#1732600000600-0"],
        "replays": [], "lastId": "1732600000600-0", "duplicates": 1,
    }
    assert watch.errors == []
