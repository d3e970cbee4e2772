"""Screening as callers use it: the rules, then the classifier; refusals logged without the text."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from functools import partial
from typing import Any

from server.adapters.ai.base import ProviderError
from server.config import Settings
from server.errors import ContentPolicyViolation, ScreeningUnavailable
from server.moderation.classifier import Classifier, ClassifierUnavailable, make_classifier
from server.moderation.policy import ContentPolicy, Context, flatten, load_policy

log = logging.getLogger("server.moderation")
UserId = uuid.UUID | str | None
# Profile parts that become prompts must read as adults on their own; the backstory may
# mention a childhood, so it is judged as a prompt would be.
PROFILE_STRICT = ("identity", "physical_traits", "style", "personality")
# The rules cost ~5 ms per KB: longer texts are judged on one thread of their own, so a burst
# of maximum-size avatars queues there instead of holding the event loop (~110 ms each).
INLINE_CHARS = 2_000
# Words this request (this task's context) already screened: the service's own screening, run
# again inside the transaction, then costs nothing and calls nobody.
_passed_here: ContextVar[frozenset[bytes]] = ContextVar("screened_in_this_request", default=frozenset())
ALLOWED_FOR_SECONDS = 120.0  # a request screened before its transaction is not sent twice
ALLOWED_KEPT = 10_000


def _refuse(policy: ContentPolicy, *, category: str, field: str, rule: str, layer: str, user_id: UserId,
            fields: Mapping[str, Any]) -> ContentPolicyViolation:
    digest = hashlib.sha256(flatten(dict(fields)).encode()).hexdigest()[:16]
    # The text stays out of the log; its digest lets a reviewer match a report to it.
    log.warning("content policy refusal: %s (%s, %s) in %s, text sha256 %s", category, rule, layer, field, digest,
                extra={"user_id": str(user_id) if user_id else None, "event": "content_policy_refusal",
                       "category": category, "layer": layer})
    message = policy.messages.get(category, "This violates the content policy")
    return ContentPolicyViolation(message, details=[{"field": field, "message": message, "category": category}])


def screen(*, user_id: UserId, context: Context, fields: Mapping[str, Any],
           policy: ContentPolicy | None = None) -> None:
    """The rules layer alone: raise ContentPolicyViolation (422) if any field breaks the policy."""
    policy = policy or load_policy()
    found = policy.check_fields(fields, context=context)
    if found is not None:
        raise _refuse(policy, category=found.category, field=found.field, rule=found.rule, layer="rules",
                      user_id=user_id, fields=fields)


class Moderator:
    """Both layers, built once per process; every text bound for a model goes through it."""

    def __init__(self, *, classifier: Classifier, policy: ContentPolicy | None = None) -> None:
        self.classifier = classifier
        self.policy = policy or load_policy()
        self._allowed: dict[bytes, float] = {}  # digest of (context, texts) -> until when
        self._rules_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="content-rules")

    def _remembered(self, digest: bytes) -> bool:
        until = self._allowed.get(digest)
        return until is not None and until > time.monotonic()

    def _remember(self, digest: bytes) -> None:
        if len(self._allowed) >= ALLOWED_KEPT:
            now = time.monotonic()
            self._allowed = {d: until for d, until in self._allowed.items() if until > now}
            if len(self._allowed) >= ALLOWED_KEPT:  # the oldest half goes (insertion order)
                self._allowed = dict(list(self._allowed.items())[ALLOWED_KEPT // 2:])
        self._allowed[digest] = time.monotonic() + ALLOWED_FOR_SECONDS

    async def aclose(self) -> None:
        await self.classifier.aclose()
        self._rules_thread.shutdown(wait=False, cancel_futures=True)

    async def screen(self, *, user_id: UserId, context: Context, fields: Mapping[str, Any]) -> None:
        """Rules, then the classifier: 422 on a refusal, 503 if the classifier cannot answer."""
        passed = _passed_here.get()
        flat = {name: flatten(value) for name, value in fields.items()}  # the digest and the classifier read these
        digest = hashlib.sha256(repr((context, sorted(flat.items()))).encode()).digest()
        if digest in passed:  # this request screened these very words before its transaction
            return
        rules = partial(screen, user_id=user_id, context=context, fields=fields, policy=self.policy)
        if len(flatten(dict(fields))) > INLINE_CHARS:
            await asyncio.get_running_loop().run_in_executor(self._rules_thread, rules)
        else:
            rules()
        await self._classify(user_id=user_id, context=context, fields=fields, flat=flat)
        _passed_here.set(passed | {digest})

    async def _classify(self, *, user_id: UserId, context: Context, fields: Mapping[str, Any],
                        flat: Mapping[str, str] | None = None) -> None:
        flat = flat if flat is not None else {name: flatten(value) for name, value in fields.items()}
        texts = {name: text for name, text in flat.items() if text.strip()}
        if not texts:
            return
        digest = hashlib.sha256(repr((context, sorted(texts.items()))).encode()).digest()
        if self._remembered(digest):
            return
        try:
            verdict = await self.classifier.classify(context=context, fields=texts)
        except ClassifierUnavailable as exc:
            log.warning("content classifier unavailable: %s", exc,
                        extra={"user_id": str(user_id) if user_id else None, "event": "content_classifier_unavailable"})
            raise ScreeningUnavailable() from None
        if not verdict.allowed:
            raise _refuse(self.policy, category=verdict.category or "unspecified", field=",".join(texts),
                          rule="classifier", layer="classifier", user_id=user_id, fields=fields)
        self._remember(digest)

    async def screen_enhanced_prompt(self, prompt: str, *, user_id: UserId) -> None:
        """The model's rewrite of a prompt, before it is sent to the image/video model."""
        fields = {"enhanced_prompt": prompt}
        await self._screen_output("enhanced prompt", user_id=user_id, rules=[("prompt", fields)],
                                  classify=("prompt", fields))

    async def screen_profile(self, profile: Mapping[str, Any], *, user_id: UserId) -> None:
        """A generated avatar profile, before it is saved and put into prompts."""
        strict = {k: profile.get(k) for k in PROFILE_STRICT if profile.get(k)}
        everything = {k: v for k, v in profile.items() if k not in ("provider", "model", "palette")}
        await self._screen_output("avatar profile", user_id=user_id,
                                  rules=[("avatar", strict), ("prompt", everything)],
                                  classify=("avatar", everything))

    async def _screen_output(self, what: str, *, user_id: UserId, rules: list[tuple[Context, Mapping[str, Any]]],
                             classify: tuple[Context, Mapping[str, Any]]) -> None:
        # A ProviderError, so the job that made the output fails and refunds (refused) or
        # retries (unscreened) like any provider failure.
        try:
            for context, fields in rules:
                screen(user_id=user_id, context=context, fields=fields, policy=self.policy)
            await self._classify(user_id=user_id, context=classify[0], fields=classify[1])
        except ContentPolicyViolation as exc:
            category = exc.details[0].get("category") if exc.details else "unspecified"
            raise ProviderError(f"The model's {what} was refused by the content policy ({category})",
                                transient=False) from None
        except ScreeningUnavailable:
            raise ProviderError(f"The model's {what} could not be screened (the content check is unavailable)",
                                transient=True) from None


def make_moderator(settings: Settings) -> Moderator:
    return Moderator(classifier=make_classifier(settings))
