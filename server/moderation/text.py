"""What a text reads as once its disguises are removed: the normal form rules are matched on.
The steps, and why the skeleton comes from confusable-homoglyphs: docs/moderation.md."""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import orjson

# Leetspeak read as letters. Digits always are (ages are read from the plain form, which
# keeps them); symbols only when a letter or digit follows, so "sexy!" keeps its reading.
LEET_DIGITS = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g"}
LEET_SYMBOLS = {"@": "a", "$": "s", "!": "i", "|": "i", "+": "t", "€": "e", "£": "l"}
_LEET_SYMBOL = re.compile("[" + re.escape("".join(LEET_SYMBOLS)) + r"](?=[^\W_])")
_DIGITS = str.maketrans(LEET_DIGITS)
# Default_Ignorable_Code_Point characters that are letters or symbols rather than format
# (Cf) or combining (Mn) characters, e.g. the Hangul fillers used as "invisible letters".
EXTRA_IGNORABLE = (0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800)
_BIDI_MARKS = "\u200e\u200f"
_TOKEN = re.compile(r"[^\W_]+")
# A pictograph between two letters stands for a round letter: "l🙂li", "p⭕rn".
_PICTOGRAPH = re.compile(r"(?<=[^\W\d_])[\u2600-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff](?=[^\W\d_])")
_REPEATS = re.compile(r"(.)\1+")


@dataclass(frozen=True)
class Tables:
    drop: dict[int, None]  # zero-width, format and combining characters
    skeleton: dict[int, str]  # UTS #39 confusable -> prototype
    residual: dict[int, str]  # prototypes that still look like a Latin letter: small capitals, l
    ascii_skeleton: dict[int, str]  # its one-to-one part for ASCII text (m, " and % are replaced first)
    letters: dict[int, str]  # the skeleton without digits and the symbols digits look like
    small_capitals: dict[int, str]


def _confusables_file() -> Path:
    import confusable_homoglyphs

    return Path(confusable_homoglyphs.__file__).with_name("confusables.json")


def skeleton_table(path: Path | None = None) -> dict[int, str]:
    """Each confusable character and its UTS #39 prototype, from the package's copy of confusables.txt.

    The package stores each line `source -> prototype` in both directions, in file order.
    A prototype is never a source (the mapping is idempotent), so walking the keys in
    order, an unclassified key is a source and its only entry is its prototype.
    """
    data = orjson.loads((path or _confusables_file()).read_bytes())
    table: dict[int, str] = {}
    prototypes: set[str] = set()
    for key, entries in data.items():
        if key in prototypes:
            continue
        if len(entries) != 1:
            raise ValueError(f"confusables data: {key!r} is neither a source nor a prototype")
        prototype = entries[0]["c"]
        prototypes.add(prototype)
        source = key.strip(_BIDI_MARKS)  # right-to-left characters are stored between LRMs
        if len(source) == 1:
            table[ord(source)] = prototype.strip(_BIDI_MARKS)
    if {chr(cp) for cp in table} & prototypes:
        raise ValueError("confusables data: a prototype is also mapped; the file format changed")
    return table


@functools.cache
def tables() -> Tables:
    """Built once per process (a few hundred ms: one pass over the Unicode code points)."""
    drop: dict[int, None] = {cp: None for cp in EXTRA_IGNORABLE}
    residual: dict[int, str] = {ord("l"): "i", ord("ĸ"): "k"}  # l/I/1/| read alike; kra is a small-capital k
    for cp in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(cp))
        if category in ("Mn", "Me", "Cf"):
            drop[cp] = None
        elif category == "Ll":
            name = unicodedata.name(chr(cp), "")
            if name.startswith("LATIN LETTER SMALL CAPITAL ") and len(name) == 28:
                letter = name[-1].lower()
                residual[cp] = "i" if letter == "l" else letter
    skeleton = skeleton_table()
    letters = {cp: v for cp, v in skeleton.items() if not chr(cp).isdigit() and not any(c.isdigit() for c in v)}
    small_capitals = {cp: v for cp, v in residual.items() if cp != ord("l")}
    ascii_skeleton = {cp: v for cp, v in skeleton.items() if cp < 128 and len(v) == 1}
    if {chr(cp) for cp in skeleton if cp < 128} - {chr(cp) for cp in ascii_skeleton} != {"m", '"', "%"}:
        raise ValueError("confusables data: the ASCII characters mapped to several changed")
    return Tables(drop=drop, skeleton=skeleton, residual=residual, ascii_skeleton=ascii_skeleton,
                  letters=letters, small_capitals=small_capitals)


def plain(text: str) -> str:
    """Compatibility forms, case, zero-width and combining marks removed; digits kept (ages)."""
    t = tables()
    return unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text).casefold()).translate(t.drop)


def fold(plain_text: str) -> str:
    """A plain text's look-alike reading: UTS #39 skeleton, leetspeak, l/i merged."""
    t = tables()
    s = plain_text if plain_text.isascii() else _PICTOGRAPH.sub("o", plain_text)
    s = _LEET_SYMBOL.sub(lambda m: LEET_SYMBOLS[m.group()], s)
    if s.isascii():  # the same mapping; one-to-one tables keep str.translate on its fast path
        s = s.replace("m", "rn").replace('"', "''").replace("%", "º/₀").translate(t.ascii_skeleton)
    else:
        s = s.translate(t.skeleton)
    # Prototypes may be capitals or carry marks (Cherokee NA -> O with a stroke overlay).
    s = unicodedata.normalize("NFD", s.casefold()).translate(t.drop)
    return s.translate(t.residual).translate(_DIGITS)


def unmask(plain_text: str) -> str:
    """Look-alike letters read as letters, digits left as they are (for stated ages)."""
    t = tables()
    s = plain_text.translate(t.letters)
    return unicodedata.normalize("NFD", s.casefold()).translate(t.drop).translate(t.small_capitals)


def tokens(folded: str) -> list[str]:
    return _TOKEN.findall(folded)


def squeeze(token: str) -> str:
    """One of each run of a letter: "nuuude" -> "nude" (the matcher checks runs a term needs)."""
    return _REPEATS.sub(r"\1", token)


def term_key(term: str) -> str:
    """A term from the rules file in the form texts are matched in."""
    return " ".join(squeeze(tok) for tok in tokens(fold(plain(term))))
