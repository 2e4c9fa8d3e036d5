"""Text normalisation, word n-grams and an n-gram index: what dedup and decontamination compare.

Two problems that differ only in LaTeX markup, case, spacing or punctuation normalise to the
same word sequence: `Find $\\dfrac{1}{2}x$!` and `find \\(\\frac{1}{2} x\\).` both become
`find frac 1 2 x`. Lightly reworded copies keep most of their word n-grams, which is what
`NgramIndex` measures.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

# LaTeX that changes the look, not the content: spacing, sizing, \left/\right, text fonts.
_LATEX_NOISE = re.compile(
    r"\\(?:left|right|big|Big|bigg|Bigg|displaystyle|textstyle|quad|qquad|mathrm|text|textbf|textit|"
    r"mathbf|mathit|operatorname|mbox|hbox)\b|\\[,;:!> ]"
)
# Fraction spellings: \dfrac and \tfrac are \frac.
_FRAC = re.compile(r"\\[dt]frac\b")
# Thousands separators: 1,000 and 1{,}000 are 1000.
_THOUSANDS = re.compile(r"(?<=\d)(?:,|\{,\})(?=\d{3}\b)")
# The opening of a boxed answer, `\boxed{` or `\fbox{`.
BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# A word: letters or digits (underscore is LaTeX subscript syntax, not a letter).
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """The normalised word sequence of `text` (lowercase, LaTeX markup and punctuation gone)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _FRAC.sub(r"\\frac", text)
    text = _LATEX_NOISE.sub(" ", text)
    text = _THOUSANDS.sub("", text)
    return _WORD.findall(text)


def normalize(text: str) -> str:
    """`words(text)` joined by single spaces: equal strings mean the same problem for dedup."""
    return " ".join(words(text))


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """The distinct word n-grams of `tokens`; empty when there are fewer than n words."""
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces balanced; None if absent."""
    starts = [m.end() for m in BOXED.finditer(text)]
    if not starts:
        return None
    start = starts[-1]
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip()
    return None  # unbalanced braces: no answer can be read


def normalize_answer(answer: str) -> str:
    """An answer compared as text: no `$`, spaces or `\\left`, integer leading zeros dropped (AIME's 015)."""
    text = unicodedata.normalize("NFKC", str(answer)).strip().strip("$").strip()
    text = _FRAC.sub(r"\\frac", text)
    text = _LATEX_NOISE.sub("", text)
    text = re.sub(r"\s+", "", text).rstrip(".")
    if text.startswith("{") and text.endswith("}"):  # what \text{...} leaves
        text = text[1:-1]
    if re.fullmatch(r"-?0*\d+", text):
        text = str(int(text))
    return text


@dataclass(frozen=True)
class Overlap:
    """A document of the index that shares n-grams with a query."""

    doc: Hashable
    shared: int  # distinct n-grams in common
    score: float  # shared / min(n-grams of the query, n-grams of the document)


class NgramIndex:
    """Word n-gram sets of reference documents, queried for the documents a text overlaps.

    The score is the containment of the smaller n-gram set in the larger: 1.0 when a benchmark
    problem is copied whole into a longer training problem (or the reverse), and still high
    when a few words of the copy were changed.
    """

    def __init__(self, n: int = 8):
        if n < 1:
            raise ValueError(f"n-gram size must be >= 1, got {n}")
        self.n = n
        self._postings: dict[tuple[str, ...], list[Hashable]] = defaultdict(list)
        self._sizes: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._sizes)

    def add(self, doc: Hashable, text: str) -> None:
        """Index `text` under the id `doc` (a text shorter than n words adds nothing)."""
        grams = ngrams(words(text), self.n)
        if not grams:
            return
        self._sizes[doc] = len(grams)
        for gram in grams:
            self._postings[gram].append(doc)

    def query(self, text: str, threshold: float = 0.0) -> list[Overlap]:
        """Documents whose overlap score with `text` is >= threshold (and > 0), best first."""
        grams = ngrams(words(text), self.n)
        if not grams:
            return []
        shared: Counter[Hashable] = Counter()
        for gram in grams:
            shared.update(self._postings.get(gram, ()))
        hits = [
            Overlap(doc, count, count / min(len(grams), self._sizes[doc]))
            for doc, count in shared.items()
        ]
        return sorted((h for h in hits if h.score >= threshold), key=lambda h: (-h.score, -h.shared))

    def best(self, text: str) -> Overlap | None:
        """The most overlapping document, or None when nothing is shared."""
        return next(iter(self.query(text)), None)

