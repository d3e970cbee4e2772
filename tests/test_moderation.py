"""The content policy: obvious, obfuscated and allowed texts, and the rules file as data.

Deliberate choices (see server/moderation_rules.json):
- A stated age under 18 or words that make the character a minor refuse an avatar outright;
  in a generation prompt they refuse only together with sexual wording ("a 16 year old
  reading in a library" is allowed, "a 16yo in lingerie" is not).
- Swimwear and underwear count as sexual wording next to minors: "kids in swimsuits" is
  refused. Clothing alone, for adults, is fine.
- "teen" with sexual wording is refused even if the text also claims 18+.
- Sleeping/unconscious/forced with sexual wording is refused as non-consent.
- Real people are refused by name (a list in the data file), sexual or not.
- Known innocent phrases ("teenage mutant ninja turtles", "minor key") are cut before matching.
"""

from __future__ import annotations

import json

import pytest

from server.errors import ContentPolicyViolation
from server.moderation import load_policy, screen

REFUSED_PROMPTS = [
    ("nude child on a bed", "minors"),
    ("loli hentai", "minors"),
    ("sexy 15 year old", "minors"),
    ("a fifteen-year-old in lingerie", "minors"),
    ("naked schoolgirl", "minors"),
    ("kids in swimsuits, sexy", "minors"),
    ("rape scene in an alley", "non_consent"),
    ("she is unconscious and naked", "non_consent"),
    ("sex against her will", "non_consent"),
    ("Taylor Swift at the beach", "real_people"),
    ("donald trump portrait", "real_people"),
    ("deepfake of my coworker", "real_people"),
]
OBFUSCATED_PROMPTS = [
    ("L O L I", "minors"),
    ("l.o.l.i", "minors"),
    ("l0l1 art", "minors"),
    ("1oli", "minors"),
    ("SeXy T33N", "minors"),
    ("n-a-k-e-d   k_i_d", "minors"),
    ("nuuude chiiild", "minors"),
    ("r@pe", "non_consent"),
    ("R A P E", "non_consent"),
    ("n0n-c0n", "non_consent"),
    ("t4yl0r  $wift", "real_people"),
    ("T.A.Y.L.O.R S.W.I.F.T", "real_people"),
    ("Ѕеху tееn", "minors"),  # Cyrillic look-alikes
    ("ｓｅｘｙ ｔｅｅｎ", "minors"),  # full-width letters
    ("Beyoncé", "real_people"),
]
ALLOWED_PROMPTS = [
    "a 25 year old woman at the beach",
    "teenage mutant ninja turtles poster",
    "a woman in a red bikini on a yacht",
    "sexy vampire queen in a gothic castle, 30 years old",
    "my avatar reading to kids at the library",
    "a 16 year old learning to drive",  # minors without sexual wording are fine in prompts
    "grapes and wine in Essex",
    "a therapist's office, warm light",
    "jazz trio playing in a minor key, sensual mood",
    "twenty-one year old bartender, seductive smile",
    "sleeping cat on a windowsill",
    "boudoir photo of a 35 year old woman",
]


@pytest.mark.parametrize(("text", "category"), REFUSED_PROMPTS + OBFUSCATED_PROMPTS)
def test_refused_prompts(text: str, category: str) -> None:
    found = load_policy().check(text, context="prompt")
    assert found is not None and found.category == category, (text, found)


@pytest.mark.parametrize("text", ALLOWED_PROMPTS)
def test_allowed_prompts(text: str) -> None:
    assert load_policy().check(text, context="prompt") is None


@pytest.mark.parametrize(("text", "refused"), [
    ("a 16 year old girl", True),
    ("looks seventeen years old", True),
    ("high school student who loves art", True),
    ("aged 17", True),
    ("21 year old art student", False),
    ("teenage mutant ninja turtles fan", False),
    ("a 40 yo chef who loves spicy food", False),
    ("college senior, 22", False),
])
def test_avatars_must_read_as_adults(text: str, refused: bool) -> None:
    assert (load_policy().check(text, context="avatar") is not None) is refused


def test_fields_are_judged_together() -> None:
    policy = load_policy()
    fields = {"description": "a schoolgirl", "style": "lingerie"}
    assert policy.check("a schoolgirl", context="prompt") is None
    found = policy.check_fields(fields, context="prompt")
    assert found is not None and found.category == "minors"


def test_screen_raises_422_and_logs_the_user(caplog) -> None:
    with pytest.raises(ContentPolicyViolation) as caught:
        screen(user_id="u-1", context="prompt", fields={"prompt": "n@ked l0li"})
    assert caught.value.status == 422 and caught.value.code == "content_policy_violation"
    assert caught.value.details[0]["field"] == "prompt" and caught.value.details[0]["category"] == "minors"
    record = caplog.records[-1]
    assert record.user_id == "u-1" and "l0li" not in caplog.text  # the text itself is not logged
    screen(user_id="u-1", context="prompt", fields={"prompt": "a sunset", "style": None})


def test_rules_are_data(tmp_path) -> None:
    rules = {"min_age": 21, "messages": {"brand": "No competitor brands"},
             "rules": [{"id": "brand.names", "category": "brand", "terms": ["acme corp"]}]}
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    custom = load_policy(path)
    assert custom.check("an ACME-CORP billboard", context="prompt").category == "brand"
    assert custom.check("a 19 year old", context="avatar") is None  # no age rule in this file
    assert load_policy().check("an acme corp billboard", context="prompt") is None


def test_no_pattern_stacks_quantifiers_on_one_letter() -> None:
    """b+i+l+l+ backtracks quadratically on "bilPPPP..."; each run of a letter gets one quantifier."""
    import re

    from server.moderation import _stretchable, load_policy

    assert _stretchable("bill") == "b+i+l{2,}"
    assert _stretchable("ass") == "a+s{2,}"
    policy = load_policy()
    patterns = [rule.pattern.pattern for rule in policy.rules if rule.pattern is not None]
    assert patterns
    for pattern in patterns:
        assert not re.search(r"([a-z])(?:\+|\{\d+,\})\1(?:\+|\{)", pattern), pattern
