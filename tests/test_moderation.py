"""The rules layer: what a disguised text reads as, each category and its refusal, and its cost.

Deliberate choices (docs/moderation.md has all of them):
- Minor words or ages refuse an avatar outright; in a generation prompt they refuse only with
  sexual wording ("a 16 year old learning to drive" is fine, "a 16yo in lingerie" is not).
- Swimwear and underwear count as sexual wording next to minors.
- "teen" and "barely legal" with sexual wording are refused even when 18+ is claimed;
  "18-year-old adult" is not.
- Incapacitation (asleep, drunk, drugged) refuses with explicit wording; coercion with any
  sexual wording; rape and its synonyms always.
- Step-family in a sexual context is refused as incest; "mom" or "MILF" alone is not.
- Real people are refused by name, sexual or not.
"""

from __future__ import annotations

import json
import time
import unicodedata
from datetime import date

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from server.errors import ContentPolicyViolation
from server.moderation import load_policy, screen
from server.moderation.text import fold, plain, skeleton_table, tables

# The issue's exact examples: each was accepted and charged while its plain spelling was refused.
ISSUE_EXAMPLES = [
    ("a nude ӏоӏі", "minors"),  # Cyrillic palochka, o, Ukrainian i
    ("a nude lօli", "minors"),  # Armenian oh
    ("a nude ʟᴏʟɪ", "minors"),  # small capitals
    ("a nude ᏞᎾᏞᎥ", "minors"),  # Cherokee
    ("a nude ꓡꓳꓡꓲ", "minors"),  # Lisu
    ("a nude сhiӏd", "minors"),  # Cyrillic es, palochka
    ("rɑpe scene, explicit sex", "non_consent"),  # Latin alpha
    ("naked кiԁ", "minors"),  # Cyrillic ka, Komi de
]


@pytest.mark.parametrize(("text", "category"), ISSUE_EXAMPLES)
def test_the_issue_examples_are_refused_with_their_category(text: str, category: str) -> None:
    plain_spelling = unicodedata.normalize("NFKD", text)
    found = load_policy().check(text, context="prompt")
    assert found is not None and found.category == category, (text, plain_spelling, found)


@pytest.mark.parametrize(("text", "reads"), [
    ("ꓡꓳꓡꓲ", "ioii"), ("ʟᴏʟɪ", "ioii"), ("ᏞᎾᏞᎥ", "ioii"), ("lօli", "ioii"), ("l0l1", "ioii"), ("|oli", "ioii"),
    ("сhiӏd", "chiid"), ("кiԁ", "kid"), ("rɑpe", "rape"), ("ｓｅｘｙ", "sexy"), ("𝓷𝓾𝓭𝓮", "nude"), ("ⓝⓤⓓⓔ", "nude"),
    ("n\u200bu\u200dd\u00ade", "nude"), ("c\u0336h\u0336i\u0336l\u0336d\u0336", "chiid"), ("r@pe", "rape"),
    ("$ex", "sex"), ("Mädchen", "rnadchen"), ("l🙂li", "ioii"),
])
def test_disguises_fold_to_one_reading(text: str, reads: str) -> None:
    assert fold(plain(text)) == reads


def test_the_skeleton_is_unicode_data_not_a_hand_table() -> None:
    table = skeleton_table()
    assert len(table) > 6000  # confusables.txt has ~6,300 single-character sources
    assert table[ord("1")] == "l" and table[ord("ɑ")] == "a" and table[ord("ԁ")] == "d" and table[ord("ꓡ")] == "L"
    assert not {chr(c) for c in table} & set(table.values())  # idempotent: a prototype is never mapped
    assert tables().residual[ord("ʟ")] == "i"  # small capitals (left as prototypes by UTS #39) read as letters


def test_sexy_punctuation_keeps_its_reading() -> None:
    assert fold(plain("sexy! nude+")) == "sexy! nude+"  # a symbol is leetspeak only before a letter
    assert load_policy().check("16:9 photo, 35mm, 4k, nude adult woman", context="prompt") is None


@pytest.mark.parametrize(("text", "category"), [
    # separators and spacing
    ("s.e.x with a k.i.d", "minors"), ("s e x y  t e e n", "minors"), ("n a k e d k i d", "minors"),
    ("lo li hentai", "minors"), ("naked ki-d", "minors"), ("#sexyteen #nude", "minors"), ("nakedkid", "minors"),
    ("sexy teeeeen", "minors"), ("T.A.Y.L.O.R S.W.I.F.T", "real_people"), ("S e l e n a  G o m e z", "real_people"),
    ("R A P E", "non_consent"), ("ra.pe scene", "non_consent"), ("r*pe scene", "non_consent"),
    ("n*ked k*d", "minors"), ("f*ck my st*pm*m", "incest"),
    # ages, grades and birth dates
    ("sexy 15 year old", "minors"), ("a fifteen-year-old in lingerie", "minors"), ("she's only 13, make her sexy", "minors"),
    ("s-e-x-y  1-2  y-e-a-r  o-l-d", "minors"), ("born in 2013, sexy photo", "minors"), ("7th grader in a thong", "minors"),
    ("a sixth grader, sexy pose", "minors"), ("dix-sept ans, nue", "minors"), ("15 años, desnuda", "minors"),
    ("девочка 12 лет в белье", "minors"), ("14-jährige nackt", "minors"),
    # the other categories
    ("having sex with a passed out drunk girl", "non_consent"), ("blackmailed into sex", "non_consent"),
    ("woman having sex with a dog", "bestiality"), ("zoophilie explicite", "bestiality"),
    ("sex with my sister", "incest"), ("mother and son sex", "incest"), ("sexy stepmom in lingerie", "incest"),
    ("секс с сестрой", "incest"), ("Taylor Swift at the beach", "real_people"), ("naked photo of my ex", "real_people"),
])
def test_refused(text: str, category: str) -> None:
    found = load_policy().check(text, context="prompt")
    assert found is not None and found.category == category, (text, found)


@pytest.mark.parametrize("text", [
    "sexy schoolteacher in glasses", "18-year-old adult model in a bikini", "a sexy 5th grade teacher, 34",
    "teenage mutant ninja turtles poster, sexy", "jazz in a minor key, sensual", "sexy elf, 300 years old",
    "she looks like an elf, nude, adult", "top ten sexy poses", "sleeping beauty costume, sexy",
    "a woman who worked 5 years as a model, sexy", "hace 15 años era modelo, ahora tiene 35, sexy en lencería",
    "dix-huit ans, nue", "sexy woman walking her dog", "hot milf nude", "my wife nude on the beach",
    "a therapist's office, warm light", "the rapeseed fields in bloom", "grapes and wine in Essex",
    "a 16 year old learning to drive", "his wife and her sister at the beach in bikinis", "dad bod man, shirtless",
    "twenty-one year old bartender, seductive smile", "sexy woman at a kinder surprise factory",
    "explicit sex between two consenting adults", "a 5* hotel, sexy woman in the lobby", "sexy kindergarten teacher", "consensual BDSM, she is tied with silk ropes, both adults",
])
def test_allowed(text: str) -> None:
    assert load_policy().check(text, context="prompt") is None


@pytest.mark.parametrize(("text", "refused"), [
    ("a 16 year old girl", True), ("looks seventeen years old", True), ("high school student who loves art", True),
    ("aged 17", True), ("born in 2011, loves drawing", True), ("appearance: petite . age 15", True),
    ("ученица 9 класса", True), ("ей 15 лет", True),
    ("21 year old art student", False), ("teenage mutant ninja turtles fan", False),
    ("a 40 yo chef who loves spicy food", False), ("college senior, 22", False), ("born in 1994, a lawyer", False),
])
def test_avatars_must_read_as_adults(text: str, refused: bool) -> None:
    assert (load_policy().check(text, context="avatar") is not None) is refused


def test_a_birth_date_counts_to_the_day() -> None:
    policy = load_policy()
    assert policy.minor_age("born 2008-06-01", today=date(2026, 5, 31))
    assert not policy.minor_age("born 2008-06-01", today=date(2026, 6, 1))
    assert policy.minor_age("born in 2008", today=date(2026, 12, 31))  # year only: the youngest it allows


def test_fields_are_judged_together() -> None:
    policy = load_policy()
    assert policy.check("a schoolgirl", context="prompt") is None
    found = policy.check_fields({"description": "a schoolgirl", "style": "lingerie"}, context="prompt")
    assert found is not None and found.category == "minors" and found.field == "description,style"


@pytest.mark.parametrize(("text", "category"), [
    ("n@ked l0li", "minors"), ("r@pe", "non_consent"), ("b3st1al1ty", "bestiality"), ("1ncest", "incest"),
    ("Beyoncé", "real_people"),
])
def test_screen_refuses_with_the_category_and_never_the_words(caplog, text: str, category: str) -> None:
    with pytest.raises(ContentPolicyViolation) as caught:
        screen(user_id="u-1", context="prompt", fields={"prompt": text})
    error = caught.value
    assert error.status == 422 and error.code == "content_policy_violation"
    assert error.details == [{"field": "prompt", "message": load_policy().messages[category], "category": category}]
    body = json.dumps(error.body(), ensure_ascii=False).lower()
    assert text.lower() not in body and text.lower() not in caplog.text.lower()
    record = caplog.records[-1]
    assert record.user_id == "u-1" and record.category == category


def test_every_category_has_its_own_message() -> None:
    policy = load_policy()
    categories = {rule.category for rule in policy.rules}
    assert categories == {"minors", "non_consent", "real_people", "bestiality", "incest"}
    assert len({policy.messages[c] for c in categories}) == len(categories)


def test_rules_are_data(tmp_path) -> None:
    rules = {"min_age": 21, "messages": {"brand": "No competitor brands"},
             "rules": [{"id": "brand.names", "category": "brand", "terms": ["acme corp"]}]}
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    custom = load_policy(path)
    assert custom.check("an ACME-CORP billboard", context="prompt").category == "brand"
    assert custom.check("a 4cm3 c0rp billboard", context="prompt").category == "brand"
    assert custom.check("a 19 year old", context="avatar") is None  # no age rule in this file
    assert load_policy().check("an acme corp billboard", context="prompt") is None


ADVERSARIAL = {
    "one stretched letter": lambda n: "bil" + "l" * n,
    "spelled out": lambda n: "s e x " * (n // 6),
    "dotted": lambda n: "l.o.l.i." * (n // 8),
    "digits and blanks": lambda n: ("1" + " " * 50) * (n // 51),
    "grades and blanks": lambda n: ("5" + " " * 30 + "th ") * (n // 34),
    "refused words": lambda n: "my mom fucks a dog, nude teen rape " * (n // 35),
    "disguised": lambda n: "ꓡꓳꓡꓲ 16 years old \u200b born " * (n // 28),
    "one long word": lambda n: "sexy" * (n // 4),
    "masked letters": lambda n: "r*p* s*x " * (n // 9),
    "one long masked word": lambda n: "r*" * (n // 2),
}


@pytest.mark.parametrize("shape", ADVERSARIAL)
def test_screening_time_grows_linearly(shape: str) -> None:
    """Four times the text costs about four times the time (a quadratic path would cost 16x)."""
    policy = load_policy()

    def cost(n: int) -> float:
        text = ADVERSARIAL[shape](n)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            policy.check(text, context="prompt")
            policy.check(text, context="avatar")
            best = min(best, time.perf_counter() - started)
        return best

    small, large = cost(5_000), cost(20_000)
    assert large < 8 * small + 0.02, (shape, small, large)


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60))
def test_ascii_text_folds_the_same_on_the_fast_path(text: str) -> None:
    """ASCII takes one-to-one tables; the full Unicode path must read it identically."""
    assert fold(text) + " 中" == fold(text + " 中")
