"""moto's S3 server on a free loopback port, behind a gate that checks presigned URLs.

moto serves S3 faithfully but does not verify query-string (presigned) signatures or
their expiry, which is exactly what our presigned links rely on. The gate recomputes
the SigV4 query signature with botocore's signer and refuses a tampered or expired URL
with S3's 403 answers, then forwards everything to moto unchanged.
"""

from __future__ import annotations

import socket
import time
import uuid
from calendar import timegm
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import aiohttp
import boto3
from aiohttp import web
from aiohttp.test_utils import TestServer
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from server.config import Settings

ACCESS_KEY, SECRET_KEY = "testing-access-key", "testing-secret-key"
HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def moto_s3() -> Iterator[str]:
    """The endpoint URL of a running moto server (stopped on exit)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _s3_error(code: str, message: str) -> web.Response:
    xml = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return web.Response(status=403, text=xml, content_type="application/xml")


def presigned_refusal(url: str, secret: str) -> web.Response | None:
    """S3's 403 for a presigned URL whose signature does not match or that has expired."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    query = dict(params)
    unsigned = [(k, v) for k, v in params if k != "X-Amz-Signature"]
    try:
        access_key, _, region, service, _ = query["X-Amz-Credential"].split("/")
        request = AWSRequest(method="GET", headers={"host": parts.netloc},
                             url=f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(unsigned, quote_via=quote)}")
        request.context["timestamp"] = query["X-Amz-Date"]
        auth = S3SigV4QueryAuth(Credentials(access_key, secret), service, region,
                                expires=int(query["X-Amz-Expires"]))
        expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
        signed_at = timegm(time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    except (KeyError, ValueError):
        return _s3_error("AuthorizationQueryParametersError", "Query-string authentication is malformed")
    if expected != query["X-Amz-Signature"]:
        return _s3_error("SignatureDoesNotMatch", "The request signature we calculated does not match")
    if time.time() > signed_at + int(query["X-Amz-Expires"]):
        return _s3_error("AccessDenied", "Request has expired")
    return None


class PresignGate:
    def __init__(self, moto_endpoint: str) -> None:
        self.moto = moto_endpoint
        self.server: TestServer | None = None
        self.http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def start(self) -> PresignGate:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        self.http = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.server is not None:
            await self.server.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if "X-Amz-Signature" in request.query:
            refusal = presigned_refusal(str(request.url), SECRET_KEY)
            if refusal is not None:
                return refusal
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with self.http.request(request.method, self.moto + request.path_qs, headers=headers,
                                     data=await request.read(), allow_redirects=False) as resp:
            body = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}
            return web.Response(status=resp.status, body=body, headers=out)


def s3_settings(settings: Settings, endpoint: str) -> Settings:
    """Settings pointing at a fresh private bucket behind `endpoint`."""
    bucket = f"lustify-test-{uuid.uuid4().hex[:12]}"
    return settings.model_copy(update={
        "aws_s3_bucket": bucket, "aws_endpoint_url": endpoint, "aws_region": "us-east-1",
        "aws_access_key_id": SecretStr(ACCESS_KEY), "aws_secret_access_key": SecretStr(SECRET_KEY),
    })


def create_bucket(moto_endpoint: str, bucket: str) -> None:
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                 aws_secret_access_key=SECRET_KEY).create_bucket(Bucket=bucket)
