"""Schemathesis hooks for the suite's runs: each generated request gets an Idempotency-Key of its own."""

from __future__ import annotations

import uuid

import schemathesis


@schemathesis.hook
def map_headers(ctx, headers):  # type: ignore[no-untyped-def]
    # Generated keys repeat ("0", "a"): a repeat replays the first answer, as it should, and the
    # stateful phase then reads a resource deleted since as "created but not found". Replays
    # have their own tests (tests/test_idempotency.py).
    if headers and "Idempotency-Key" in headers:
        headers["Idempotency-Key"] = uuid.uuid4().hex
    return headers
