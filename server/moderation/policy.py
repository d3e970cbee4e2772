"""The rules layer: the terms, detectors and proximity rules of rules.json, matched in linear
time (docs/moderation.md, "Linear time")."""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

import orjson

from server.moderation.text import fold, plain, squeeze, term_key, unmask
from server.moderation.text import tokens as split_tokens

Context = Literal["avatar", "prompt"]
CATEGORIES = ("minors", "non_consent", "real_people", "bestiality", "incest")
RULES_FILE = Path(__file__).with_name("rules.json")
MAX_SPLIT = 40  # longest word tried as two words run together (each try is O(length))

_WORD = re.compile(r"[^\W_]+")
_LETTERS = re.compile(r"[^\W\d_]+")
_MASKED = re.compile(r"[^\W_]*(?:[*#][^\W_]*)+")
_TENS = re.compile(r"(?<!\d)([2-9]0)(?:\s*-\s*|\s+)(?:(?:and|y|e|et)\s+)?([1-9])(?!\d)")
_TEENS_FR = re.compile(r"(?<!\d)10(?:\s*-\s*|\s+)([7-9])(?!\d)")  # dix-sept, dix-huit, dix-neuf
_APOSTROPHES = str.maketrans("", "", "'’`´")
_DIGIT = re.compile(r"\d")
_LOOKALIKE_DIGITS = re.compile(r"(?<![^\W_])(?=[oli]*\d)(?=\d*[oli])[\doli]{2,3}(?![^\W_])")
_AS_DIGITS = str.maketrans("oli", "011")

_N = r"(\d{1,3})"
_END = (r"(?=\s*(?:$|[.,;:!?)\]]|and\b|y\b|e\b|et\b|und\b|и\b|years?\b|yrs?\b|yo\b|anos\b|ans\b|jahre\b|лет\b|года?\b"
        r"|today\b|now\b|tonight\b|hoy\b|hoje\b|heute\b|сегодня\b))")
# Someone named, then a bare number and nothing more: "girl, 16", "girl (16)", "boy 15." In
# sexual wording only, and not a numbered label ("guy 1, guy 2", "woman 1 and woman 2").
_PERSON = (r"(girls?|boys?|teens?|woman|women|man|men|lady|ladies|guy|student|she|he|chick|babe|kid|child"
           r"|nina|nino|chica|chico|menina|menino|fille|garcon|madchen|junge|девушка|девочка|мальчик)")
_PERSON_AGE = re.compile(
    rf"(?<![^\W_]){_PERSON}\s*[,:=(\[-]?\s*{_N}\s*[)\]]?"
    r"(?=\s*(?:$|[.,;:!?)\]]|today\b|now\b|tonight\b|hoy\b|hoje\b|heute\b|сегодня\b))")
_AGE = re.compile("|".join([
    # 15 years old, 15-year-old, 15yo, 15 y/o, 15 yrs old, 15 years of age, 15 years young
    rf"(?<![\d.,]){_N}\s*-?\s*(?:years?|yrs?|yr)\s*-?\s*(?:old|of\s+age|young)",
    rf"(?<![\d.,]){_N}\s*(?:yo|y\s*/\s*o|y\s*\.\s*o)(?![^\W_])",
    rf"(?<![\d.,]){_N}\s*-?\s*(?:yrs?|yr){_END}",
    rf"(?<![\d.,]){_N}\s*(?:months?|mos?|weeks?)\s*-?\s*old",
    # aged 15, age 15, age: 15, age of 15, edad de 15, idade 15, alter 15, возраст 15
    rf"(?<![^\W_])(?:aged?|age\s+of|edad(?:\s+de)?|idade(?:\s+de)?|alter(?:\s+von)?|возраст\w*)\s*[:=]?\s*{_N}(?!\s*(?:%|cm|mm|kg|\d))",
    # she is 15, she's 15, im 15, tiene 15, tem 15, ist 15, ей 15 (a sentence or an age unit follows)
    rf"(?<![^\W_])(?:(?:she|he|i|who|girl|boy)\s+(?:just\s+|only\s+)?(?:is|was|am|turned|turns)|shes|hes|im|tiene|tenia|tem|tinha|ist|war|ей|ему|мне)\s+(?:only\s+|just\s+|barely\s+|erst\s+|solo\s+|so\s+|всего\s+)?{_N}{_END}",
    # looks 15, looks like a 15, parece de 15, sieht aus wie 15, выглядит на 15
    rf"(?<![^\W_])(?:looks?|looking|appears?|seems?|parece|aparenta|sieht\s+aus\s+wie|wirkt\s+wie|выглядит\s+на)\s+(?:like\s+)?(?:about\s+|around\s+|maybe\s+|only\s+|barely\s+|de\s+|ter\s+)?(?:an?\s+)?{_N}{_END}",
    # 15 años, 15 anos, 15 ans (durations like "hace 15 años" are told apart below)
    rf"(?<![\d.,]){_N}\s*(?:anos|ano|ans|an|anitos)(?![^\W_])",
    # 15 Jahre alt, 15-jährige, mit 15 Jahren
    rf"(?<![\d.,]){_N}\s*-?\s*(?:jahre\s+alt|jahrig\w*|jahriges?)",
    rf"(?<![^\W_])mit\s+{_N}\s+jahren",
    # 15 лет, 15-летняя (not "5 лет назад": years ago)
    rf"(?<![\d.,]){_N}\s*-?\s*(?:лет|года|год)(?!\s*(?:назад|спустя|тому))(?![^\W_])",
    rf"(?<![\d.,]){_N}\s*-?\s*летн\w*",
]))
_BORN = re.compile(
    r"(?<![^\W_])(?:born|birth|dob|d\s*o\s*b|nacid[ao]|nacio|nascid[ao]|nasceu|nee?|geboren|geb|родил\w*|рождени\w*)(?![^\W_])"
    r"\s*(?:in|on|en|em|le|am|im|в|:|-)?\s*(?:[^\W\d_]+\s+|\d{1,2}\s*[./-]?\s*){0,3}?((?:19|20)\d\d)(?!\d)"
    r"(?:\s*[./-]\s*(\d{1,2})\s*[./-]\s*(\d{1,2}))?"
)
_GRADE = re.compile("|".join([
    r"(?<!\d)(\d{1,2})\s*(?:st|nd|rd|th)?\s*-?\s*grade(?:rs?)?(?!\s*-?\s*teachers?)(?![^\W_])",
    r"(?<![^\W_])grade\s*(\d{1,2})(?!\d)",
    r"(?<!\d)(\d{1,2})\s*(?:-?\s*(?:й|го|ый|ой|ом))?\s*класс\w*",
    r"(?<!\d)(\d{1,2})\s*\.?\s*klasse(?![^\W_])",
    r"(?<![^\W_])klasse\s*(\d{1,2})(?!\d)",
    r"(?<!\d)(\d)\s*(?:º|°|o)\s*(?:de\s+)?(?:primaria|secundaria|eso|grado)(?![^\W_])",
]))
_DURATION_BEFORE = frozenset({
    "for", "since", "after", "over", "within", "hace", "durante", "desde", "por", "tras", "ha", "há", "faz",
    "depois", "apos", "depuis", "pendant", "apres", "dans", "il", "seit", "vor", "nach", "fur", "через",
    "течение", "за", "уже",
})
_DURATION_AFTER = frozenset({"ago", "later", "earlier", "atras", "despues", "antes", "depois", "plus", "tard",
                             "spater", "lang", "назад", "спустя"})
_FR_GRADES = re.compile(r"(?<![^\W_])en\s+(?:cm1|cm2|ce1|ce2|cp|6e|5e|4e|3e|sixieme|cinquieme|quatrieme|troisieme)(?![^\W_])")


@dataclass(frozen=True)
class Violation:
    category: str
    rule: str
    field: str
    message: str


@dataclass(frozen=True)
class _Entry:
    group: str  # a rule id, or "lex:<name>" for a lexicon
    key: str  # the term in matching form; pair rules count distinct ones
    runs: tuple[int, ...] | None  # least run of each letter (teen: t e{2} n), None when all are 1


@dataclass(frozen=True)
class _Rule:
    id: str
    category: str
    when: str  # always | sexual | explicit
    contexts: frozenset[str]
    detector: str | None = None
    near: tuple[str, str] | None = None
    window: int = 0
    pair: str | None = None


@dataclass
class Hits:
    """What a text matched: group -> (view, word position) list, and the distinct terms."""

    places: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    terms: dict[str, set[str]] = field(default_factory=dict)

    def add(self, entry: _Entry, view: int, position: int) -> None:
        self.places.setdefault(entry.group, []).append((view, position))
        self.terms.setdefault(entry.group, set()).add(entry.key)


def _runs(text: str) -> tuple[int, ...]:
    return tuple(len(m.group()) for m in re.finditer(r"(.)\1*", text))


class _Index:
    """Terms, stems and fragments of every rule and lexicon, keyed by their squeezed form."""

    def __init__(self) -> None:
        self.words: dict[str, list[_Entry]] = {}
        self.starts: set[str] = set()
        self.max_words = 1
        self.stems: dict[str, list[_Entry]] = {}
        self.stem_lengths: list[int] = []
        self.fragments: dict[str, list[_Entry]] = {}
        self.fragment_pattern: re.Pattern[str] | None = None
        self.heads: set[str] = set()  # first three letters of every single-word key
        self.stem_heads: set[str] = set()
        self.any_heads: set[str] = set()  # ... of every key, phrase and stem: a word outside them matches nothing
        self.by_length: dict[int, list[tuple[str, _Entry]]] = {}  # single words as written, for masked letters
        self.trie: dict[str, Any] = {}  # single-word keys letter by letter ("" ends a key), for spelled-out runs

    def add_term(self, term: str, group: str) -> None:
        folded = " ".join(split_tokens(fold(plain(term))))
        if not folded:
            return
        key = " ".join(squeeze(word) for word in folded.split())
        runs = _runs(folded)
        entry = _Entry(group, key, runs if any(r > 1 for r in runs) else None)
        self._put(key, entry)
        if " " not in folded:
            self.by_length.setdefault(len(folded), []).append((folded, entry))
        words = key.split()
        if len(words) > 1:
            self.starts.add(words[0])
            self.max_words = max(self.max_words, len(words))
            joined = folded.replace(" ", "")
            if len(joined) >= 6:  # "taylorswift", "schoolgirl": multi-word terms written as one
                runs = _runs(joined)
                self._put(squeeze(joined), _Entry(group, key, runs if any(r > 1 for r in runs) else None))

    def _put(self, key: str, entry: _Entry) -> None:
        self.words.setdefault(key, []).append(entry)
        if " " not in key and len(key) >= 3:
            node = self.trie
            for letter in key:
                node = node.setdefault(letter, {})
            node.setdefault("", []).append(entry)

    def add_stem(self, stem: str, group: str) -> None:
        key = term_key(stem).replace(" ", "")
        if len(key) >= 3:
            self.stems.setdefault(key, []).append(_Entry(group, key, None))

    def add_fragment(self, fragment: str, group: str) -> None:
        key = term_key(fragment).replace(" ", "")
        # Han and kana words are written without spaces and run two or three signs long.
        if len(key) >= 4 or (len(key) >= 2 and all(ch >= "\u2e80" for ch in key)):
            self.fragments.setdefault(key, []).append(_Entry(group, key, None))

    def seal(self) -> None:
        self.stem_lengths = sorted({len(k) for k in self.stems})
        self.stem_heads = {k[:3] for k in self.stems}
        self.heads = {k[:3] for k in self.words if " " not in k}
        self.any_heads = {k[:3] for k in self.words} | self.stem_heads
        if self.fragments:
            alternatives = sorted(self.fragments, key=len, reverse=True)
            self.fragment_pattern = re.compile("|".join(map(re.escape, alternatives)))


class ContentPolicy:
    def __init__(self, rules: Mapping[str, Any]) -> None:
        self.min_age = int(rules.get("min_age", 18))
        self.messages: dict[str, str] = dict(rules.get("messages", {}))
        self.number_words = {plain(k): int(v) for k, v in rules.get("number_words", {}).items()}
        self.grade_words = {plain(k): int(v) for k, v in rules.get("grade_words", {}).items()}
        self._grade_words = (
            re.compile(r"(?<![^\W_])(" + "|".join(map(re.escape, self.grade_words))
                       + r")\s*-?\s*grade(?:rs?)?(?!\s*-?\s*teachers?)(?![^\W_])")
            if self.grade_words else None
        )
        self.index = _Index()
        self._allowed = _Index()
        for phrase in rules.get("allow_phrases", []):
            self._allowed.add_term(phrase, "allowed")
        self._allowed.seal()
        for name, items in rules.get("lexicons", {}).items():
            self._add_items(items, f"lex:{name}")
        self.rules: list[_Rule] = []
        for r in rules.get("rules", []):
            near = tuple(r["near"]) if r.get("near") else None
            rule = _Rule(
                id=r["id"], category=r["category"], when=r.get("when", "always"),
                contexts=frozenset(r.get("contexts", ["avatar", "prompt"])), detector=r.get("detector"),
                near=(f"lex:{near[0]}", f"lex:{near[1]}") if near else None, window=int(r.get("window", 0)),
                pair=f"lex:{r['pair']}" if r.get("pair") else None,
            )
            if rule.when not in ("always", "sexual", "explicit"):
                raise ValueError(f"rule {rule.id}: when must be always, sexual or explicit")
            self._add_items([*r.get("terms", []), {"stems": r.get("stems", []),
                                                    "fragments": r.get("fragments", [])}], rule.id)
            self.rules.append(rule)
        self.index.seal()

    def _add_items(self, items: Iterable[Any], group: str) -> None:
        for item in items:
            if isinstance(item, str):
                self.index.add_term(item, group)
            else:
                for stem in item.get("stems", []):
                    self.index.add_stem(stem, group)
                for fragment in item.get("fragments", []):
                    self.index.add_fragment(fragment, group)

    # -- matching --------------------------------------------------------------------------

    def hits(self, text: str) -> tuple[Hits, str]:
        """Everything the text matches, and its plain form (for the age detectors)."""
        found = Hits()
        plain_text = plain(text)
        folded = fold(plain_text)
        spans = [m.span() for m in _WORD.finditer(folded)]
        words = [folded[a:b] for a, b in spans]
        self._match(words, found, view=0)
        spelled = _spelled_out(folded, spans, words)
        if spelled is not None:
            merged, runs = spelled
            self._match(merged, found, view=1)
            for position, run in runs:
                self._inside(run, found, position)
        if "*" in folded or "#" in folded:
            self._masks(folded, [a for a, _ in spans], found)
        return found, plain_text

    def _masks(self, folded: str, starts: list[int], found: Hits) -> None:
        """Letters hidden behind a star ("r*pe", "n*k*d"): each star stands for one letter."""
        for m in _MASKED.finditer(folded):
            token = m.group()
            if not 3 <= len(token) <= 24 or sum(ch not in "*#" for ch in token) < 2:
                continue
            pattern = re.compile("".join(r"[^\W_]" if ch in "*#" else re.escape(ch) for ch in token))
            position = bisect.bisect_left(starts, m.start())
            for term, entry in self.index.by_length.get(len(token), ()):
                if pattern.fullmatch(term):
                    found.add(entry, 0, position)

    def _match(self, words: list[str], found: Hits, *, view: int) -> None:
        """Dictionary look-ups only, a bounded number per word: the cost follows the text's length."""
        index = self.index
        # Squeezing the whole text at once keeps the words apart: a blank never repeats a letter.
        text = squeeze(" ".join(words))
        squeezed = _WORD.findall(text)
        masked = self._masked(words, squeezed) if self._allowed.words else set()
        count = len(words)
        heads, any_heads = index.heads, index.any_heads
        # Most words of most texts start like no term at all: only the others are looked at.
        for i in [i for i, key in enumerate(squeezed) if key[:3] in any_heads and i not in masked]:
            word, key = words[i], squeezed[i]
            head = key[:3]
            if not self._lookup(key, word, found, view, i) and 6 <= len(word) <= MAX_SPLIT and head in heads:
                self._split(key, word, found, view, i)
            if key in index.starts:
                for n in range(2, min(index.max_words, count - i) + 1):
                    if i + n - 1 in masked:
                        break
                    self._lookup(" ".join(squeezed[i:i + n]), " ".join(words[i:i + n]), found, view, i)
            if head in index.stem_heads:
                for length in index.stem_lengths:
                    if length > len(key):
                        break
                    for entry in index.stems.get(key[:length], ()):
                        found.add(entry, view, i)
        # "lo li", "ra pe": a word split in two short pieces
        short = {i for i, key in enumerate(squeezed) if len(key) <= 2}
        for i in sorted({j for k in short for j in (k - 1, k) if 0 <= j < count - 1}):
            if i in masked or i + 1 in masked:
                continue
            joined = words[i] + words[i + 1]
            for entry in index.words.get(squeeze(joined), ()):
                # Short joins only for rule terms: "it's ex" must not read as "sex".
                if (len(joined) >= 4 or not entry.group.startswith("lex:")) and " " not in entry.key \
                        and _long_enough(entry, joined):
                    found.add(entry, view, i)
        if index.fragment_pattern is not None:
            starts = list(itertools.accumulate((len(k) + 1 for k in squeezed), initial=0))
            for m in index.fragment_pattern.finditer(text):
                position = bisect.bisect_right(starts, m.start()) - 1
                if position not in masked:
                    for entry in index.fragments[m.group()]:
                        found.add(entry, view, position)

    def _lookup(self, key: str, text: str, found: Hits, view: int, position: int) -> bool:
        """A word or phrase, else without a plural ending; True if it matched."""
        entries = self.index.words.get(key)
        if entries:
            hit = [e for e in entries if _long_enough(e, text)]
            for entry in hit:
                found.add(entry, view, position)
            return bool(hit)
        for ending in ("s", "es"):
            if key.endswith(ending) and len(key) - len(ending) >= 3:
                hit = [e for e in self.index.words.get(key[: -len(ending)], ()) if _long_enough(e, text[: -len(ending)])]
                for entry in hit:
                    found.add(entry, view, position)
                if hit:
                    return True
        return False

    def _split(self, key: str, word: str, found: Hits, view: int, position: int) -> None:
        """Two known words written as one ("#sexyteen", "nakedkid"); both halves must be terms."""
        words = self.index.words
        for cut in range(3, len(key) - 2):
            first = words.get(key[:cut])
            second = words.get(key[cut:]) if first else None
            if not second:
                continue
            # Back to the written word: where does the cut fall once stretched letters count?
            at = sum(_runs(word)[:cut])
            left, right = word[:at], word[at:]
            pieces = [e for e in first if " " not in e.key and _long_enough(e, left)]
            pieces += [e for e in second if " " not in e.key and _long_enough(e, right)]
            if len({e.key for e in pieces}) >= 2:
                for entry in pieces:
                    found.add(entry, view, position)

    def _inside(self, run: str, found: Hits, position: int) -> None:
        """Terms anywhere inside a spelled-out run ("n a k e d k i d" -> nakedkid)."""
        key = squeeze(run)
        lengths = _runs(run)
        trie = self.index.trie
        for start in range(len(key)):
            node = trie
            for end in range(start, len(key)):  # a walk ends at the first letter no term continues with
                node = node.get(key[end])
                if node is None:
                    break
                for entry in node.get("", ()):
                    if entry.runs is None or all(
                        have >= need for have, need in zip(lengths[start:end + 1], entry.runs, strict=True)
                    ):
                        found.add(entry, 1, position)

    def _masked(self, words: list[str], squeezed: list[str]) -> set[int]:
        """Positions inside an allowed phrase ("minor key", "teen titans")."""
        allowed = self._allowed
        masked: set[int] = set()
        for i, key in enumerate(squeezed):
            if key[:3] not in allowed.any_heads:
                continue
            if key in allowed.starts:
                for n in range(2, min(allowed.max_words, len(words) - i) + 1):
                    phrase = " ".join(squeezed[i:i + n])
                    if any(_long_enough(e, " ".join(words[i:i + n])) for e in allowed.words.get(phrase, ())):
                        masked.update(range(i, i + n))
            elif any(_long_enough(e, words[i]) for e in allowed.words.get(key, ())):
                masked.add(i)
        return masked

    # -- detectors ---------------------------------------------------------------------------

    def _numerals(self, plain_text: str) -> str:
        """Number words as digits: "twenty-one year old" -> "21 year old", "quince años" -> "15 anos"."""
        # One space between words: no pattern then backtracks over a long run of blanks.
        text = " ".join(plain_text.translate(_APOSTROPHES).split())
        if not self.number_words.keys().isdisjoint(_LETTERS.findall(text)):
            text = _LETTERS.sub(lambda m: str(self.number_words.get(m.group(), m.group())), text)
        text = _LOOKALIKE_DIGITS.sub(lambda m: m.group().translate(_AS_DIGITS), text)
        text = _TENS.sub(lambda m: str(int(m.group(1)) + int(m.group(2))), text)
        return _TEENS_FR.sub(lambda m: str(10 + int(m.group(1))), text)

    def minor_age_loosely(self, plain_text: str) -> bool:
        """A bare number after someone, read as their age (sexual wording only: "girl, 16")."""
        text = self._numerals(plain_text)
        for match in _PERSON_AGE.finditer(text):
            if int(match.group(2)) >= self.min_age:
                continue
            label = re.compile(rf"(?<![^\W_]){re.escape(match.group(1))}\s*[,:=(\[-]?\s*\d")
            if any(other.start() != match.start() for other in label.finditer(text)):
                continue  # "guy 1, guy 2": numbered, not aged
            return True
        return False

    def minor_age(self, plain_text: str, *, today: date | None = None) -> bool:
        """A stated age, or a birth date, that makes someone younger than min_age."""
        readings = {self._numerals(plain_text), self._numerals(unmask(plain_text))}
        spans = [m.span() for m in _WORD.finditer(plain_text)]
        spelled = _spelled_out(plain_text, spans, [plain_text[a:b] for a, b in spans])
        if spelled is not None:  # "1-2 y-e-a-r o-l-d"
            readings.add(self._numerals(" ".join(spelled[0])))
        # Every age and birth-year pattern holds a digit: most long texts skip the costly scans.
        readings = {text for text in readings if _DIGIT.search(text)}
        for text in readings:
            for match in _AGE.finditer(text):
                age = next(int(g) for g in match.groups() if g is not None)
                if age < self.min_age and not _duration(text, match):
                    return True
        today = today or date.today()
        for match in (m for text in readings for m in _BORN.finditer(text)):
            year, month, day = match.group(1), match.group(2), match.group(3)
            if month and day and 1 <= int(month) <= 12 and 1 <= int(day) <= 31:
                born = (int(year), int(month), int(day))
                age = today.year - born[0] - ((today.month, today.day) < born[1:])
            else:
                age = today.year - int(year) - 1  # the youngest anyone born that year can be
            if 0 <= age < self.min_age:
                return True
        return False

    def school_grade(self, plain_text: str) -> bool:
        """A school grade from first to twelfth (a teacher of one is not a pupil)."""
        text = " ".join(plain_text.translate(_APOSTROPHES).split())
        for match in _GRADE.finditer(text) if _DIGIT.search(text) else ():
            grade = next(int(g) for g in match.groups() if g is not None)
            if 0 < grade <= 12:
                return True
        if self._grade_words is not None and self._grade_words.search(text):
            return True
        return _FR_GRADES.search(text) is not None

    # -- judging -----------------------------------------------------------------------------

    def check(self, text: str, *, context: Context, field: str = "text") -> Violation | None:
        """The first rule this text breaks in this context, or None."""
        if not text or not text.strip():
            return None
        found, plain_text = self.hits(text)
        explicit = "lex:explicit" in found.places
        sexual = explicit or "lex:suggestive" in found.places
        for rule in self.rules:
            if context not in rule.contexts:
                continue
            if (rule.when == "sexual" and not sexual) or (rule.when == "explicit" and not explicit):
                continue
            if self._breaks(rule, found, plain_text):
                message = self.messages.get(rule.category, "This violates the content policy")
                return Violation(rule.category, rule.id, field, message)
        return None

    def _breaks(self, rule: _Rule, found: Hits, plain_text: str) -> bool:
        if rule.id in found.places:
            return True
        if rule.detector == "minor_age_loosely":
            return self.minor_age_loosely(plain_text)
        if rule.detector == "minor_age":
            return self.minor_age(plain_text)
        if rule.detector == "school_grade":
            return self.school_grade(plain_text)
        if rule.near is not None:
            first, second = (found.places.get(g, []) for g in rule.near)
            others = set(second)
            return any((v, j) in others for v, i in first
                       for j in range(i - rule.window, i + rule.window + 1) if j != i)
        if rule.pair is not None:
            return len(found.terms.get(rule.pair, ())) >= 2
        return False

    def check_fields(self, fields: Mapping[str, Any], *, context: Context) -> Violation | None:
        """Each field alone, then all of them together (a minor in one field, nudity in another)."""
        texts = {name: flatten(value) for name, value in fields.items()}
        for name, text in texts.items():
            found = self.check(text, context=context, field=name)
            if found is not None:
                return found
        filled = {name: text for name, text in texts.items() if text.strip()}
        if len(filled) > 1:
            return self.check(" . ".join(filled.values()), context=context, field=",".join(filled))
        return None


def _duration(text: str, match: re.Match[str]) -> bool:
    """ "15 years ago", "hace 15 años", "depuis 15 ans": a span of time, not an age."""
    before = _LETTERS.findall(text[max(0, match.start() - 16):match.start()])[-3:]
    after = _LETTERS.findall(text[match.end():match.end() + 16])[:2]
    return bool(_DURATION_BEFORE.intersection(before) or _DURATION_AFTER.intersection(after))


def _long_enough(entry: _Entry, text: str) -> bool:
    """A stretched word keeps the doubled letters of its term: "teeen" is teen, "ten" is not."""
    if entry.runs is None:
        return True
    have = _runs(text)
    return len(have) == len(entry.runs) and all(h >= n for h, n in zip(have, entry.runs, strict=True))


def _spelled_out(folded: str, spans: list[tuple[int, int]], words: list[str]) -> tuple[list[str], list[tuple[int, str]]] | None:
    """Letters written one by one ("s e x", "l.o.l.i") joined into words; None when there are none.

    Returns the words with each closely spaced run joined (a double space or a line break
    ends a word), and every whole run of three or more letters for a search inside it.
    """
    single = [len(w) == 1 or w == "rn" for w in words]  # the skeleton reads a lone m as "rn"
    if not any(single[i] and single[i + 1] for i in range(len(words) - 1)):
        return None
    merged: list[str] = []
    runs: list[tuple[int, str]] = []
    run: list[int] = []

    def close() -> None:
        if not run:
            return
        letters = [words[k] for k in run]
        if len(run) >= 3:
            runs.append((len(merged), "".join(letters)))
        piece = [letters[0]]
        for k in range(1, len(run)):
            gap = folded[spans[run[k - 1]][1]:spans[run[k]][0]]
            if "  " in gap or "\n" in gap or len(gap) > 3:
                merged.append("".join(piece))
                piece = []
            piece.append(letters[k])
        merged.append("".join(piece))
        run.clear()

    for i, word in enumerate(words):
        if single[i]:
            run.append(i)
            continue
        close()
        merged.append(word)
    close()
    return merged, runs


def flatten(value: Any) -> str:
    """A field's text: nested traits read as "key value" pairs."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        # A yes/no trait reads as its name alone: "she is 12": true must not hide the age.
        return " . ".join(str(k) if isinstance(v, bool) else f"{k} {flatten(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return " . ".join(flatten(v) for v in value)
    return str(value)


@functools.cache
def load_policy(path: Path = RULES_FILE) -> ContentPolicy:
    return ContentPolicy(orjson.loads(path.read_bytes()))
