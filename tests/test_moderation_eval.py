"""The labelled evaluation set (tests/data/moderation_eval.jsonl) against the rules layer.

Each case: text, expect (a category or "allowed"), kind (plain / obfuscated / multilingual /
allowed / hard_allowed), lang, context (prompt or avatar) and, for the cases written after
the rules were frozen, set = "holdout". Precision and recall per category are printed by
bench/moderation.py and recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.moderation import CATEGORIES, load_policy
from tests.test_moderation import ISSUE_EXAMPLES

EVAL_SET = Path(__file__).parent / "data" / "moderation_eval.jsonl"


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return [json.loads(line) for line in EVAL_SET.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_set_is_big_and_varied(cases) -> None:
    assert len(cases) >= 300
    assert {c["expect"] for c in cases} == {"allowed", *CATEGORIES}
    assert {c["kind"] for c in cases} >= {"plain", "obfuscated", "multilingual", "allowed", "hard_allowed"}
    assert {c["lang"] for c in cases} >= {"en", "es", "pt", "fr", "de", "ru"}
    assert {c["context"] for c in cases} == {"prompt", "avatar"}
    texts = {c["text"] for c in cases}
    assert {text for text, _ in ISSUE_EXAMPLES} <= texts
    assert {"sexy schoolteacher in glasses grading papers", "18-year-old adult model in a bikini",
            "barely legal teen nude"} <= texts
    for category in CATEGORIES:  # every category is tested disguised and in another language
        kinds = {c["kind"] for c in cases if c["expect"] == category}
        assert {"plain", "obfuscated", "multilingual"} <= kinds, category


def test_no_disallowed_case_is_accepted_and_few_allowed_are_refused(cases) -> None:
    policy = load_policy()
    accepted, refused, allowed = [], [], 0
    for case in cases:
        found = policy.check(case["text"], context=case["context"])
        if case["expect"] == "allowed":
            allowed += 1
            if found is not None:
                refused.append((case["text"], found.category, found.rule))
        elif found is None:
            accepted.append((case["text"], case["expect"]))
    assert accepted == []
    assert len(refused) <= 0.02 * allowed, refused
