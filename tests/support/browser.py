"""Debian's Chromium driven by Playwright, and the studio served on a known port for it.

Playwright's own browser download is not possible here, so it launches /usr/bin/chromium
(`scripts/test` installs the package when missing). Every page records what must never
happen: uncaught errors, Content-Security-Policy violations, and tokens in URLs.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from server.config import Settings
from tests.support.api import Api

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
AXE = Path(__file__).parent / "vendor" / "axe-core-4.14.1" / "axe.min.js"
# Registered before any page script: the browser reports each CSP violation here.
WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""


def chromium_or_skip() -> None:
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed: `apt-get install chromium` (scripts/test does it when it "
                    "runs as root with apt); the studio's browser tests need it")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is missing: ./scripts/bootstrap test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def serving_studio(settings: Settings, *, public_port: int | None = None,
                         **overrides: Any) -> AsyncIterator[tuple[TestServer, Settings]]:
    """The app on a port chosen up front, so emailed links and file URLs point at it.

    `public_port`: the port the browser uses when it goes through a proxy.
    """
    from server.app import create_app

    port = free_port()
    origin = f"http://127.0.0.1:{public_port or port}"
    studio_settings = settings.model_copy(update={
        "port": port, "public_url": origin,
        **overrides,
    })
    server = TestServer(create_app(studio_settings), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield server, studio_settings
    finally:
        await server.close()


@dataclass
class Watch:
    """What a page did that it must not: uncaught errors, CSP violations; and its URLs."""

    errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    login_tokens: list[str] = field(default_factory=list)

    async def csp_violations(self, page: Any) -> list[str]:
        return await page.evaluate("window.__cspViolations || []")

    def tokens_in_urls(self) -> list[str]:
        return [url for url in self.urls for token in self.login_tokens if token and token in url]


class Browser:
    """One Chromium for a test; pages (each its own context: own storage) on the studio."""

    def __init__(self) -> None:
        self.playwright: Any = None
        self.browser: Any = None

    async def __aenter__(self) -> Browser:
        from playwright.async_api import async_playwright

        self.playwright = await async_playwright().start()
        self.browser = await self.playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.browser.close()
        await self.playwright.stop()

    async def page(self, base_url: str, *, width: int = 1280, height: int = 900) -> tuple[Any, Watch]:
        context = await self.browser.new_context(base_url=base_url, viewport={"width": width, "height": height})
        context.set_default_timeout(20_000)
        await context.add_init_script(WATCH_CSP)
        page = await context.new_page()
        watch = Watch()
        page.on("pageerror", lambda error: watch.errors.append(str(error)))
        page.on("console", lambda msg: watch.console_errors.append(msg.text) if msg.type == "error" else None)
        page.on("request", lambda request: watch.urls.append(request.url))
        page.on("websocket", lambda ws: watch.urls.append(ws.url))

        async def remember_tokens(response: Any) -> None:
            if response.url.endswith(("/api/auth/login", "/api/auth/refresh")) and response.ok:
                with contextlib.suppress(Exception):
                    body = await response.json()
                    watch.login_tokens += [body.get("access_token", ""), body.get("refresh_token", "")]

        page.on("response", remember_tokens)
        return page, watch


async def run_axe(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE.read_text())  # over DevTools: the page's CSP does not apply
    violations = await page.evaluate("""async () => {
        const result = await axe.run(document, {resultTypes: ['violations']});
        return result.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5)}));
    }""")
    return [v for v in violations if v["impact"] in ("serious", "critical")]


STUDIO_LINK = re.compile(r"(https?://\S+/(verify-email|reset-password)#token=[A-Za-z0-9_\-%]+)")


def studio_link(message: Any, kind: str) -> str:
    """The studio page link of an account email (verify-email or reset-password)."""
    text = message.get_payload(decode=True).decode()
    text = re.sub(r"=\r?\n", "", text)  # quoted-printable soft breaks, if any survived decoding
    for url, found in STUDIO_LINK.findall(text):
        if found == kind:
            return url
    raise AssertionError(f"no {kind} studio link in: {text}")


async def verified_account(api: Api, outbox: Path, *, password: str = "correct horse battery",
                           email: str | None = None, **extra: Any) -> tuple[str, str, dict[str, Any]]:
    """A registered, verified account through the API: (email, password, login reply)."""
    import uuid

    from tests.support.api import verify_token_from, wait_for_email

    email = email or f"studio-{uuid.uuid4().hex[:10]}@example.com"
    reply = await api.post("/api/auth/register", json={"email": email, "password": password,
                                                       "date_of_birth": "1990-01-01", **extra})
    assert reply.status in (201, 202), reply  # 202 {message} per API.md; 201 before that lands
    token = verify_token_from(await wait_for_email(outbox, email))
    assert (await api.get(f"/api/auth/verify-email/{token}")).status == 200
    login = await api.post("/api/auth/login", json={"email": email, "password": password})
    assert login.status == 200, login
    return email, password, login.body
