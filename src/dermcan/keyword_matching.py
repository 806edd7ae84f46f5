"""Matching caption text to a diagnosis class by keywords in several languages.

The keyword table is ``{class: {language: [keyword, ...]}}`` (params ``crawl.keywords``).
Text and keywords are compared after NFKC normalisation and case folding, so letter case,
full-width Latin letters and typographic apostrophes do not matter. When several keywords
occur in one text, the longest one wins, then the one that starts first, then the class that
comes first in :data:`dermcan.classes.CLASSES`.

A keyword that starts or ends with a Latin letter or digit must match at a word boundary on
that side ("mole" does not match "molecule"). At the end, one inflection suffix from
:data:`INFLECTION_SUFFIXES` is allowed, so "melanomas" and "Melanome" match. Keywords in other
scripts match anywhere, because Korean and Japanese attach particles to a noun without a space.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dermcan.classes import CLASSES, check_class_name

# Plural and case endings of English, Spanish and German nouns that may follow a Latin keyword.
# NOTE: German compounds ("Rückenmelanom") and irregular plurals ("Nävi") still do not match.
INFLECTION_SUFFIXES: tuple[str, ...] = ("es", "en", "s", "e", "n")

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


def normalize_text(text: str) -> str:
    """Return ``text`` NFKC-normalised, case-folded, with single spaces and plain apostrophes."""
    normalized = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    return " ".join(normalized.split())


def _is_latin_word_character(character: str) -> bool:
    if character.isdigit():
        return True
    if not character.isalpha():
        return False
    return unicodedata.name(character, "").startswith("LATIN")


@dataclass(frozen=True)
class KeywordMatch:
    """The keyword that decided a text's label."""

    label: str
    keyword: str  # as written in the keyword table
    language: str
    start: int  # character offset in the normalised text


@dataclass(frozen=True)
class _Entry:
    normalized: str
    keyword: str
    label: str
    language: str
    class_index: int
    bounded_start: bool
    bounded_end: bool


class KeywordMatcher:
    """Finds the longest keyword of any class in a text."""

    def __init__(self, keywords: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        if not keywords:
            raise ValueError("the keyword table is empty: set crawl.keywords in params.yaml")
        entries: dict[str, _Entry] = {}
        for label, by_language in keywords.items():
            check_class_name(label)
            if not isinstance(by_language, Mapping):
                raise ValueError(
                    f"crawl.keywords.{label} must map language codes to keyword lists, "
                    f"got {type(by_language).__name__}"
                )
            for language, words in by_language.items():
                if isinstance(words, str) or not isinstance(words, Sequence):
                    raise ValueError(f"crawl.keywords.{label}.{language} must be a list of strings")
                for keyword in words:
                    entry = self._make_entry(str(keyword), label, str(language))
                    previous = entries.get(entry.normalized)
                    if previous is not None and previous.label != label:
                        raise ValueError(
                            f"keyword {keyword!r} is listed for both {previous.label} and {label}"
                        )
                    entries.setdefault(entry.normalized, entry)
        # Longest first, so match() can stop looking once shorter keywords cannot win.
        self._entries = sorted(
            entries.values(), key=lambda e: (-len(e.normalized), e.class_index, e.normalized)
        )

    @staticmethod
    def _make_entry(keyword: str, label: str, language: str) -> _Entry:
        normalized = normalize_text(keyword)
        if not normalized:
            raise ValueError(f"crawl.keywords.{label}.{language} contains an empty keyword")
        return _Entry(
            normalized=normalized,
            keyword=keyword,
            label=label,
            language=language,
            class_index=CLASSES.index(label),
            bounded_start=_is_latin_word_character(normalized[0]),
            bounded_end=_is_latin_word_character(normalized[-1]),
        )

    def match(self, text: str) -> KeywordMatch | None:
        """Return the winning keyword in ``text``, or None when no keyword occurs."""
        normalized = normalize_text(text)
        if not normalized:
            return None
        best: tuple[int, int, int] | None = None  # (-length, start, class index): smaller wins
        best_entry: _Entry | None = None
        for entry in self._entries:
            if best is not None and len(entry.normalized) < -best[0]:
                break
            start = self._find(normalized, entry)
            if start < 0:
                continue
            rank = (-len(entry.normalized), start, entry.class_index)
            if best is None or rank < best:
                best, best_entry = rank, entry
        if best is None or best_entry is None:
            return None
        return KeywordMatch(
            label=best_entry.label,
            keyword=best_entry.keyword,
            language=best_entry.language,
            start=best[1],
        )

    @staticmethod
    def _find(text: str, entry: _Entry) -> int:
        start = text.find(entry.normalized)
        while start >= 0:
            if _boundaries_ok(text, start, entry):
                return start
            start = text.find(entry.normalized, start + 1)
        return -1


def _boundaries_ok(text: str, start: int, entry: _Entry) -> bool:
    if entry.bounded_start and start > 0 and _is_latin_word_character(text[start - 1]):
        return False
    if not entry.bounded_end:
        return True
    end = start + len(entry.normalized)
    if end == len(text) or not _is_latin_word_character(text[end]):
        return True
    for suffix in INFLECTION_SUFFIXES:
        after = end + len(suffix)
        if text.startswith(suffix, end) and (
            after == len(text) or not _is_latin_word_character(text[after])
        ):
            return True
    return False
