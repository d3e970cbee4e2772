"""The studio (the reference web client) at / and its pages, its static files, and /docs;
every response here carries the studio's Content-Security-Policy."""

from __future__ import annotations

import functools
import html
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from server import keys
from server.config import Settings
from server.errors import NotFound
from server.routing import Routes

routes = Routes(tags=("studio",))
STATIC = Path(__file__).parent / "static"
SWAGGER_UI = "/studio/vendor/swagger-ui-dist-5.35.0"
# Client-side routes: each answers the same page, whose script shows the screen.
PAGES = ("sign-up", "check-email", "verify-email", "sign-in", "forgot-password", "reset-password",
         "dashboard", "plans", "avatars", "generate", "gallery", "activity")
STRIPE_JS = "https://js.stripe.com"
HTML_PAGE = {"type": "string"}
TEXT_HTML = {"media_type": "text/html"}


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else None


def _media_origins(settings: Settings) -> list[str]:
    """Where images and videos come from: this app's signed files, or the S3 bucket."""
    origins = ["'self'"]
    if settings.aws_s3_bucket:
        bucket = settings.aws_s3_bucket
        if settings.aws_endpoint_url:
            origins.append(_origin(settings.aws_endpoint_url) or "")
        else:  # presigned URLs use either addressing style
            origins += [f"https://{bucket}.s3.amazonaws.com", f"https://{bucket}.s3.{settings.aws_region}.amazonaws.com",
                        f"https://s3.{settings.aws_region}.amazonaws.com"]
    else:
        origins.append(_origin(settings.base_url) or "")
    return list(dict.fromkeys(o for o in origins if o))


def uses_stripe_elements(settings: Settings) -> bool:
    return bool(settings.stripe_secret_key and settings.stripe_publishable_key)


def content_security_policy(settings: Settings, *, trusted_types: bool = True) -> str:
    """The studio's CSP: scripts and styles from this origin only, never inline; Stripe's origins
    only when Stripe is configured. `trusted_types` also makes every HTML sink refuse strings."""
    stripe = uses_stripe_elements(settings)
    media = " ".join(_media_origins(settings))
    directives = [
        "default-src 'none'",
        "script-src 'self'" + (f" {STRIPE_JS}" if stripe else ""),
        "style-src 'self'",
        f"img-src {media} data:",
        f"media-src {media}",
        "font-src 'self'",
        "connect-src 'self'" + (" https://api.stripe.com" if stripe else ""),
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "manifest-src 'self'",
    ]
    if stripe:
        directives.append(f"frame-src {STRIPE_JS} https://hooks.stripe.com")
    elif trusted_types:
        # Stripe.js writes HTML sinks itself, so the browser-enforced "no HTML from strings"
        # rule is on only where the studio's own scripts are the only ones running.
        directives += ["require-trusted-types-for 'script'", "trusted-types 'none'"]
    return "; ".join(directives)


@functools.cache
def _shell(stripe_publishable_key: str) -> bytes:
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    meta = f'<meta name="stripe-publishable-key" content="{html.escape(stripe_publishable_key)}">'
    return page.replace('<meta name="stripe-publishable-key" content="">', meta).encode()


def _page(request: web.Request) -> web.Response:
    settings = request.app[keys.settings]
    key = settings.stripe_publishable_key if uses_stripe_elements(settings) else ""
    return web.Response(body=_shell(key or ""), content_type="text/html", charset="utf-8", headers={
        "Content-Security-Policy": content_security_policy(settings),
        "Cache-Control": "no-cache",
    })


@routes.get("/", auth=False, rate_limit=None, response=HTML_PAGE, extra=TEXT_HTML)
async def studio_home(request: web.Request) -> web.Response:
    """The studio: the reference web client of this API."""
    return _page(request)


@routes.get("/{page:" + "|".join(PAGES) + "}", auth=False, rate_limit=None, response=HTML_PAGE,
            extra=TEXT_HTML)
async def studio_page(request: web.Request) -> web.Response:
    """A screen of the studio (the same page; its script shows the screen)."""
    return _page(request)


@routes.get("/studio/{path:.+}", auth=False, rate_limit=None, errors=(404,),
            response={"type": "string", "format": "binary"},
            extra={"media_type": "application/octet-stream"})
async def studio_file(request: web.Request) -> web.StreamResponse:
    """A script, style sheet, image or vendored library of the studio."""
    root = STATIC.resolve()
    try:
        file = (root / request.match_info["path"]).resolve()
        found = file.is_relative_to(root) and file.is_file()
    except (OSError, ValueError):  # a NUL byte, a name too long for the file system
        found = False
    if not found or file.name.startswith(".") or file.suffix in (".map", ".md", ".html"):
        raise NotFound("No such studio file")
    vendored = file.is_relative_to(root / "vendor")
    return web.FileResponse(file, headers={
        "Content-Security-Policy": content_security_policy(request.app[keys.settings]),
        # Vendored files sit under their pinned version: they never change at a given path.
        "Cache-Control": "public, max-age=31536000, immutable" if vendored else "no-cache",
    })


DOCS_HTML = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Lustify API</title>
<link rel="icon" href="/studio/img/icon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{SWAGGER_UI}/swagger-ui.css">
<link rel="stylesheet" href="/studio/css/docs.css">
<script src="{SWAGGER_UI}/swagger-ui-bundle.js" defer></script>
<script src="/studio/js/docs.js" defer></script>
</head><body>
<main id="swagger-ui" data-openapi-url="/openapi.json" aria-label="Lustify API reference"></main>
</body></html>
"""


def docs_page(settings: Settings) -> web.Response:
    """Swagger UI from this app's packaged copy, under the studio's CSP."""
    # Swagger UI renders Markdown descriptions through innerHTML: no Trusted Types here.
    return web.Response(text=DOCS_HTML, content_type="text/html", headers={
        "Content-Security-Policy": content_security_policy(settings, trusted_types=False),
        "Cache-Control": "no-cache",
    })
