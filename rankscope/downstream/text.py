"""Sentence splitting and the train-overlap guard used by the task builders.

Why a guard: tasks must measure generalisation, so no task sentence may occur in a train document. Document
-level splitting already keeps held-out text apart, but short formulaic sentences ("I do not know.") and
quotations repeat across documents. We index every word 5-gram of the train split and drop a candidate
sentence when *all* of its 5-grams occur in train: a sentence contained in a train document necessarily has
that property, so the check never lets one through (it may drop a few harmless sentences too).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

NGRAM = 5
_TOKEN = re.compile(r"\w+|[^\w\s]")
# Abbreviations after which a period does not end a sentence (SOTU and Austen are plain text).
_ABBREV = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "messrs", "gen", "col", "capt", "lt", "gov", "sen", "rep",
    "hon", "rev", "prof", "no", "vol", "co", "inc", "ltd", "u.s", "u.s.a", "i.e", "e.g", "vs", "etc", "mt",
}
_SPLIT = re.compile(r'(?<=[.!?])(["\')\]]*)\s+(?=["\'(\[]?[A-Z0-9])')


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences at ``. ! ?`` followed by a capital, skipping abbreviations."""
    out: list[str] = []
    start = 0
    for match in _SPLIT.finditer(paragraph):
        end = match.start(1) + len(match.group(1))
        head = paragraph[start:end]
        last = head.rstrip("\"')]").rsplit(None, 1)[-1] if head.strip() else ""
        stem = last.rstrip(".!?").lower()
        if head.rstrip("\"')]").endswith(".") and (stem in _ABBREV or (len(stem) == 1 and stem.isalpha())):
            continue  # "Mr. Darcy", "J. Smith": not a boundary
        out.append(head.strip())
        start = match.end()
    tail = paragraph[start:].strip()
    if tail:
        out.append(tail)
    return [s for s in out if s]


def paragraphs(text: str) -> list[str]:
    """Documents store one paragraph per line (data.md §1.4)."""
    return [p.strip() for p in text.split("\n") if p.strip()]


def norm_tokens(text: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(text)]


def _ngrams(tokens: list[str], n: int = NGRAM) -> Iterable[int]:
    return (hash(tuple(tokens[i : i + n])) for i in range(len(tokens) - n + 1))


class TrainIndex:
    """Hashed word 5-grams of the train split, for the containment guard."""

    def __init__(self, train_texts: Iterable[str]) -> None:
        grams: set[int] = set()
        for text in train_texts:
            for para in paragraphs(text):
                grams.update(_ngrams(norm_tokens(para)))
        self.grams = grams

    def seen(self, sentence: str) -> bool:
        """True when the sentence may occur in train (all its 5-grams do, or it is too short to tell)."""
        toks = norm_tokens(sentence)
        if len(toks) < NGRAM:
            return True
        return all(g in self.grams for g in _ngrams(toks))


def n_words(text: str) -> int:
    return len(text.split())
