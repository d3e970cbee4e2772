"""Content policy: refuse minors, non-consent and real people before anything is charged.

Rules live in moderation_rules.json (read once). Text is checked in two forms: plain
words, and a de-obfuscated form (look-alike letters, leetspeak, letters split by spaces
or punctuation joined back), so "L 0 L 1" and "l.o.l.i" read as "loli". Whole-word
matching keeps "grape" and "Essex" clear of "rape" and "sex".
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from server.errors import ContentPolicyViolation

log = logging.getLogger(__name__)

Context = Literal["avatar", "prompt"]
RULES_FILE = Path(__file__).with_name("moderation_rules.json")

_NON_WORD = re.compile(r"[^a-z0-9]+")
_INNER_PUNCT = re.compile(r"(?<=[a-z0-9@$!|+€£])[^a-z0-9\s@$!|+€£]+(?=[a-z0-9@$!|+€£])")
_SINGLES = re.compile(r"(?<!\S)(?:\S ){2,}\S(?!\S)")
_AGE = re.compile(
    r"(?<![a-z0-9])(\d{1,3})\s*(?:years?|yrs?|y\s*o|yo)(?:\s*old)?(?![a-z0-9])"
    r"|(?<![a-z0-9])(?:aged?|age of)\s*(\d{1,3})(?![a-z0-9])"
)


@dataclass(frozen=True)
class Violation:
    category: str
    rule: str
    field: str
    message: str


@dataclass(frozen=True)
class _Rule:
    id: str
    category: str
    always: bool
    contexts: frozenset[str]
    pattern: re.Pattern[str] | None
    detector: str | None


def _stretchable(word: str) -> str:
    """A word whose letters may be stretched: "bill" -> b+i+l{2,}.

    One quantifier per run of a letter: two adjacent quantifiers on the same letter
    (l+l+) backtrack quadratically on a long run of it.
    """
    return "".join(
        re.escape(ch) + ("+" if len(run) == 1 else f"{{{len(run)},}}")
        for ch, run in ((m.group(1), m.group(0)) for m in re.finditer(r"(.)\1*", word))
    )


def _term_pattern(terms: Iterable[str]) -> re.Pattern[str] | None:
    """One regex for a list of terms: whole words, letters may repeat, spaces optional, plurals."""
    alternatives = []
    for term in sorted({t.strip().lower() for t in terms if t.strip()}, key=len, reverse=True):
        words = [_stretchable(word) for word in term.split()]
        alternatives.append(r"\s*".join(words))
    if not alternatives:
        return None
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(alternatives) + r")(?:e?s)?(?![a-z0-9])")


class ContentPolicy:
    def __init__(self, rules: Mapping[str, Any]) -> None:
        self.min_age = int(rules.get("min_age", 18))
        self.messages: dict[str, str] = dict(rules.get("messages", {}))
        leet = dict(rules.get("leet", {}))
        self.leet = str.maketrans(leet)
        self.leet_alt = str.maketrans({**leet, **rules.get("leet_alternatives", {})})
        self.confusables = str.maketrans(dict(rules.get("confusables", {})))
        self.number_words: dict[str, int] = {k.lower(): int(v) for k, v in rules.get("number_words", {}).items()}
        self._allowed = _term_pattern(rules.get("allow_phrases", []))
        self._sexual = _term_pattern(rules.get("sexual_terms", []))
        self.rules = [
            _Rule(
                id=r["id"], category=r["category"], always=r.get("when", "always") == "always",
                contexts=frozenset(r.get("contexts", ["avatar", "prompt"])),
                pattern=_term_pattern(r.get("terms", [])), detector=r.get("detector"),
            )
            for r in rules.get("rules", [])
        ]

    def forms(self, text: str) -> tuple[str, ...]:
        """Plain words, then de-obfuscated readings of a text."""
        lowered = unicodedata.normalize("NFKC", text).lower().translate(self.confusables)
        lowered = "".join(ch for ch in unicodedata.normalize("NFKD", lowered) if not unicodedata.combining(ch))
        plain = _NON_WORD.sub(" ", lowered).strip()
        joined = _INNER_PUNCT.sub("", lowered)  # l.o.l.i -> loli, under-age -> underage
        # l o l i -> loli; before spaces collapse, so "n u d e  p i c s" stays two words
        joined = _SINGLES.sub(lambda m: m.group(0).replace(" ", ""), joined)
        joined = re.sub(r"[^a-z0-9@$!|+€£]+", " ", joined)
        joined = _SINGLES.sub(lambda m: m.group(0).replace(" ", ""), joined)
        readings = [plain]
        for table in (self.leet, self.leet_alt):
            # Only words with a letter are read as leetspeak, so "17" stays a number.
            tokens = [tok.translate(table) if re.search(r"[a-z]", tok) else tok for tok in joined.split()]
            reading = _NON_WORD.sub(" ", " ".join(tokens)).strip()
            if reading not in readings:
                readings.append(reading)
        if self._allowed is not None:
            readings = [self._allowed.sub(" ", r) for r in readings]
        return tuple(readings)

    def _numerals(self, plain: str) -> str:
        """Number words as digits: "twenty one year old" -> "21 year old"."""
        out: list[str | int] = []
        for token in plain.split():
            number = self.number_words.get(token)
            if number is None:
                out.append(token)
            elif out and isinstance(out[-1], int) and out[-1] >= 20 and out[-1] % 10 == 0 and number < 10:
                out[-1] += number
            else:
                out.append(number)
        return " ".join(map(str, out))

    def _stated_minor_age(self, plain: str) -> bool:
        for match in _AGE.finditer(self._numerals(plain)):
            age = int(match.group(1) or match.group(2))
            if age < self.min_age:
                return True
        return False

    def check(self, text: str, *, context: Context, field: str = "text") -> Violation | None:
        """The first rule this text breaks in this context, or None."""
        if not text or not text.strip():
            return None
        forms = self.forms(text)
        sexual = self._sexual is not None and any(self._sexual.search(f) for f in forms)
        for rule in self.rules:
            if context not in rule.contexts or (not rule.always and not sexual):
                continue
            hit = False
            if rule.pattern is not None:
                hit = any(rule.pattern.search(f) for f in forms)
            if not hit and rule.detector == "stated_age_under_min":
                hit = self._stated_minor_age(forms[0])
            if hit:
                message = self.messages.get(rule.category, "This violates the content policy")
                return Violation(rule.category, rule.id, field, message)
        return None

    def check_fields(self, fields: Mapping[str, Any], *, context: Context) -> Violation | None:
        """Each field alone, then all of them together (a minor in one field, nudity in another)."""
        texts = {name: _flatten(value) for name, value in fields.items()}
        for name, text in texts.items():
            found = self.check(text, context=context, field=name)
            if found is not None:
                return found
        together = " . ".join(t for t in texts.values() if t)
        if len(texts) > 1:
            return self.check(together, context=context, field=",".join(texts))
        return None


def _flatten(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return " . ".join(f"{k} {_flatten(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return " . ".join(_flatten(v) for v in value)
    return str(value)


@functools.cache
def load_policy(path: Path = RULES_FILE) -> ContentPolicy:
    return ContentPolicy(orjson.loads(path.read_bytes()))


def screen(
    *, user_id: uuid.UUID | str | None, context: Context, fields: Mapping[str, Any],
    policy: ContentPolicy | None = None,
) -> None:
    """Raise ContentPolicyViolation (422) if any field breaks the policy; log the refusal."""
    found = (policy or load_policy()).check_fields(fields, context=context)
    if found is None:
        return
    digest = hashlib.sha256(_flatten(dict(fields)).encode()).hexdigest()[:16]
    # The text itself stays out of the log; its digest lets a reviewer match reports.
    log.warning("content policy refusal: %s (%s) in %s, text sha256 %s", found.category, found.rule,
                found.field, digest, extra={"user_id": str(user_id) if user_id else None,
                                            "event": "content_policy_refusal"})
    raise ContentPolicyViolation(found.message, details=[
        {"field": found.field, "message": found.message, "category": found.category}
    ])
