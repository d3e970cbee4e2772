"""The studio as the server delivers it: pages under a strict CSP, static files, pinned
vendored libraries, /docs without a CDN, and emailed links that open studio pages."""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
from pydantic import SecretStr

from server.auth import emails
from server.studio.routes import PAGES, STATIC, content_security_policy
from tests.conftest import start_app
from tests.support.api import Api

VENDOR = STATIC / "vendor"
TEST_VENDOR = Path(__file__).parent / "support" / "vendor"


def directives(csp: str) -> dict[str, list[str]]:
    parsed = {}
    for part in csp.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside <script> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data.strip()


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


def assert_no_inline_code(html: str) -> Tags:
    tags = parse(html)
    assert tags.script_text == ""
    for tag, attrs in tags.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        assert "style" not in attrs, (tag, attrs)
        if tag == "script":
            assert attrs.get("src", "").startswith("/"), attrs  # this origin only
    return tags


async def test_every_studio_page_is_the_same_shell_under_a_strict_csp(api: Api) -> None:
    for path in ["/", *(f"/{page}" for page in PAGES)]:
        reply = await api.get(path)
        assert reply.status == 200, path
        assert reply.headers["Content-Type"].startswith("text/html")
        assert reply.headers["Cache-Control"] == "no-cache"
        csp = directives(reply.headers["Content-Security-Policy"])
        assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
        assert csp["default-src"] == ["'none'"] and csp["connect-src"] == ["'self'"]
        assert csp["frame-ancestors"] == ["'none'"] and csp["object-src"] == ["'none'"]
        assert csp["require-trusted-types-for"] == ["'script'"] and csp["trusted-types"] == ["'none'"]
        assert "unsafe" not in reply.headers["Content-Security-Policy"]
        tags = assert_no_inline_code(reply.body)
        assert ("script", {"type": "module", "src": "/studio/js/main.js"}) in tags.tags
    missing = await api.get("/no-such-page")
    assert missing.status == 404 and missing.body["error"] == "not_found"


def test_the_studio_scripts_never_turn_strings_into_html_or_code() -> None:
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
                       r"localStorage|setAttribute\(['\"]on|javascript:")
    scripts = sorted((STATIC / "js").rglob("*.js"))
    assert len(scripts) >= 10
    for script in scripts:
        found = sinks.findall(script.read_text())
        assert not found, (script.name, found)


async def test_static_files_are_served_with_types_and_caching_and_nothing_outside(api: Api) -> None:
    main = await api.get("/studio/js/main.js")
    assert main.status == 200 and "javascript" in main.headers["Content-Type"]
    assert main.headers["Cache-Control"] == "no-cache" and main.headers.get("ETag")
    again = await api.get("/studio/js/main.js", headers={"If-None-Match": main.headers["ETag"]})
    assert again.status == 304
    css = await api.get("/studio/css/studio.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    vendored = await api.get("/studio/vendor/socket.io-client-4.8.4/socket.io.esm.min.js")
    assert vendored.status == 200 and "immutable" in vendored.headers["Cache-Control"]
    for path in ["/studio/../server/config.py", "/studio/%2e%2e/routes.py", "/studio/..%2froutes.py",
                 "/studio/vendor/README.md", "/studio/index.html", "/studio/js/", "/studio/nope.js",
                 "/studio/vendor/socket.io-client-4.8.4/socket.io.esm.min.js.map", "/studio/a%00",
                 "/studio/" + "a" * 300 + ".js"]:
        async with api.http.get(api.base_url + path) as resp:  # sent as written, not normalised
            assert resp.status == 404, path
    assert (await api.post("/studio/js/main.js", json={})).status == 405


def pinned(readme: Path) -> dict[str, str]:
    rows = re.findall(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|$", readme.read_text(), re.M)
    return dict(rows)


def test_vendored_libraries_are_the_pinned_packages_unchanged() -> None:
    for folder in (VENDOR, TEST_VENDOR):
        files = pinned(folder / "README.md")
        assert files
        for name, digest in files.items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
        on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "README.md"}
        assert on_disk == set(files)  # nothing unlisted slipped in
    assert "Socket.IO v4.8.4" in (VENDOR / "socket.io-client-4.8.4" / "socket.io.esm.min.js").read_text()[:200]
    live = (STATIC / "js" / "live.js").read_text()
    assert "from '/studio/vendor/socket.io-client-4.8.4/socket.io.esm.min.js'" in live


async def test_docs_come_from_the_app_not_a_cdn(api: Api) -> None:
    reply = await api.get("/docs")
    assert reply.status == 200 and "/openapi.json" in reply.body
    assert "http" not in reply.body and "cdn" not in reply.body
    csp = directives(reply.headers["Content-Security-Policy"])
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert "unsafe" not in reply.headers["Content-Security-Policy"]
    tags = assert_no_inline_code(reply.body)
    assets = [attrs.get("src") or attrs.get("href") for tag, attrs in tags.tags if tag in ("script", "link")]
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert (await api.get(asset)).status == 200, asset


def test_the_csp_allows_stripe_and_storage_origins_only_when_configured(settings) -> None:
    plain = directives(content_security_policy(settings))
    assert not any("stripe" in v for values in plain.values() for v in values)
    assert plain["img-src"] == ["'self'", settings.base_url, "data:"]
    stripe = directives(content_security_policy(settings.model_copy(update={
        "stripe_secret_key": SecretStr("sk_test_x"), "stripe_publishable_key": "pk_test_x"})))
    assert stripe["script-src"] == ["'self'", "https://js.stripe.com"]
    assert stripe["frame-src"] == ["https://js.stripe.com", "https://hooks.stripe.com"]
    assert stripe["connect-src"] == ["'self'", "https://api.stripe.com"]
    assert "trusted-types" not in stripe  # Stripe.js writes HTML sinks itself
    s3 = directives(content_security_policy(settings.model_copy(update={
        "aws_s3_bucket": "media", "aws_region": "eu-west-1"})))
    assert "https://media.s3.eu-west-1.amazonaws.com" in s3["media-src"]
    minio = directives(content_security_policy(settings.model_copy(update={
        "aws_s3_bucket": "media", "aws_endpoint_url": "http://minio:9000/"})))
    assert minio["img-src"] == ["'self'", "http://minio:9000", "data:"]


async def test_with_stripe_the_page_carries_the_publishable_key_and_only_then(settings) -> None:
    server = await start_app(settings.model_copy(update={
        "stripe_secret_key": SecretStr("sk_test_x"), "stripe_publishable_key": 'pk_test_"1<'}))
    try:
        async with aiohttp.ClientSession() as http, http.get(server.make_url("/plans")) as resp:
            page = await resp.text()
            assert 'content="pk_test_&quot;1&lt;"' in page
            assert "https://js.stripe.com" in resp.headers["Content-Security-Policy"]
    finally:
        await server.close()


def test_emailed_links_open_the_studio_with_the_token_out_of_reach_of_servers(settings) -> None:
    verify = emails.verification(settings, to="a@example.com", token="tok en")
    assert f"{settings.base_url}/verify-email#token=tok%20en" in verify.text
    assert f"{settings.base_url}/api/auth/verify-email/tok%20en" in verify.text  # the API form too
    reset = emails.password_reset(settings, to="a@example.com", token="tok")
    assert f"{settings.base_url}/reset-password#token=tok" in reset.text
    elsewhere = settings.model_copy(update={"frontend_url": "https://studio.example.com/"})
    assert "https://studio.example.com/verify-email#token=" in emails.verification(
        elsewhere, to="a@example.com", token="t").text


async def test_the_studio_origin_may_open_a_socket_without_being_listed(app_server) -> None:
    origin = str(app_server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as http:
        async with http.get(app_server.make_url("/socket.io/?EIO=4&transport=polling"),
                            headers={"Origin": origin}) as resp:
            assert resp.status == 200
        # Another origin, not listed, is still refused.
        async with http.get(app_server.make_url("/socket.io/?EIO=4&transport=polling"),
                            headers={"Origin": "https://evil.example.com"}) as resp:
            assert resp.status == 400
