"""Word-bigram floor for the downstream tasks (data.md §3, "Bigram" column).

An interpolated absolute-discounting bigram model trained on the *train* split. Any transformer that has
learned something should beat it, so each task records this model's accuracy next to chance: a trained
model below it has not learned what the task measures. Scoring follows the same multiple-choice rule as the
neural scorer (sum of log-probs of the choice's words given the context; ``acc_norm`` divides by the choice's
length in characters), so the numbers are comparable.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)*|[^\sA-Za-z0-9]")
BOUNDARY = "<s>"


def words(text: str) -> list[str]:
    """Lowercased word and punctuation tokens: the unit the bigram model counts."""
    return [w.lower() for w in _WORD.findall(text)]


class BigramLM:
    """P(w | v) = max(c(v,w) - D, 0)/c(v) + D·N1+(v·)/c(v) · P_uni(w); P_uni is add-one smoothed.

    ``D = 0.75`` is the usual absolute-discounting constant; unseen words get the add-one unigram mass of one
    unknown type, so every continuation has a finite score.
    """

    def __init__(self, discount: float = 0.75) -> None:
        self.discount = discount
        self.unigram: Counter[str] = Counter()
        self.bigram: dict[str, Counter[str]] = defaultdict(Counter)
        self.total = 0

    def fit(self, texts: Iterable[str]) -> BigramLM:
        for text in texts:
            for line in text.splitlines():
                toks = [BOUNDARY, *words(line)]
                if len(toks) < 2:
                    continue
                self.unigram.update(toks[1:])
                for v, w in zip(toks, toks[1:]):
                    self.bigram[v][w] += 1
        self.total = sum(self.unigram.values())
        self._ctx_count = {v: sum(c.values()) for v, c in self.bigram.items()}
        return self

    def p_unigram(self, w: str) -> float:
        vocab = len(self.unigram) + 1  # + one unknown type
        return (self.unigram.get(w, 0) + 1) / (self.total + vocab)

    def logprob(self, w: str, v: str) -> float:
        following = self.bigram.get(v)
        if not following:
            return math.log(self.p_unigram(w))
        n_ctx = self._ctx_count[v]
        seen = max(following.get(w, 0) - self.discount, 0.0) / n_ctx
        backoff = self.discount * len(following) / n_ctx
        return math.log(seen + backoff * self.p_unigram(w))

    def score(self, context: str, continuation: str) -> float:
        """Summed log-prob of the continuation's words given the last word of the context."""
        ctx = words(context)
        prev = ctx[-1] if ctx else BOUNDARY
        total = 0.0
        for w in words(continuation):
            total += self.logprob(w, prev)
            prev = w
        return total


def choice_accuracy(lm: BigramLM, items: Sequence[dict]) -> dict[str, float]:
    """acc and acc_norm of the bigram model on multiple-choice items (context, choices, label)."""
    hits = hits_norm = 0
    for item in items:
        scores = [lm.score(item["context"], c) for c in item["choices"]]
        norm = [s / max(len(c), 1) for s, c in zip(scores, item["choices"])]
        hits += int(max(range(len(scores)), key=scores.__getitem__) == item["label"])
        hits_norm += int(max(range(len(norm)), key=norm.__getitem__) == item["label"])
    n = max(len(items), 1)
    return {"acc": hits / n, "acc_norm": hits_norm / n}
