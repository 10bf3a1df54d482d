"""Brown genre probe (data.md §3 task 6, 2-way): informative (genres a–j) vs imaginative (k–r).

A representation probe rather than a zero-shot task: a linear classifier reads mean-pooled final hidden
states of the frozen model. Chunks are cut by *words* (``CHUNK_WORDS``, about 210 tokens under the embedded
8192 BPE) rather than by tokens, so the shipped items do not depend on one tokenizer; the scorer truncates to
the model's context anyway. The probe's train/test parts are split *by file* (stratified, seeded), so no
file contributes chunks to both sides.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

INFORMATIVE = ("news", "editorial", "reviews", "religion", "hobbies", "lore", "belles_lettres", "government",
               "learned")
IMAGINATIVE = ("fiction", "mystery", "science_fiction", "adventure", "romance", "humor")
LABELS = ("informative", "imaginative")
CHUNK_WORDS = 180
MIN_ITEMS = 200  # below this, chunks of train files are added and the task is marked as seen in pre-training
TRAIN_FRACTION = 0.6


def genre_label(genre: str) -> int:
    if genre in INFORMATIVE:
        return 0
    if genre in IMAGINATIVE:
        return 1
    raise ValueError(f"unknown Brown genre {genre!r}")


def chunks(text: str, size: int = CHUNK_WORDS) -> list[str]:
    """Consecutive ``size``-word chunks; a last chunk shorter than half is dropped."""
    ws = text.split()
    out = [" ".join(ws[i : i + size]) for i in range(0, len(ws), size)]
    return [c for c in out if len(c.split()) >= size // 2]


def genre_items(brown_docs: Sequence[dict], seed: int = 0, min_items: int = MIN_ITEMS,
                train_docs: Sequence[dict] = ()) -> tuple[list[dict], bool]:
    """Probe items {text, label, part, doc, genre} and whether train-split text had to be used."""
    docs = [d for d in brown_docs if d["split"] != "train"]
    seen = False
    if sum(len(chunks(d["text"])) for d in docs) < min_items and train_docs:
        docs = docs + [d for d in train_docs if d["split"] == "train"]
        seen = True
    rng = random.Random(seed)
    part_of: dict[str, str] = {}
    for label in (0, 1):
        ids = sorted(d["doc"] for d in docs if genre_label(d["meta"]["genre"]) == label)
        rng.shuffle(ids)
        n_train = round(TRAIN_FRACTION * len(ids))
        part_of.update({doc: "train" if k < n_train else "test" for k, doc in enumerate(ids)})
    items = []
    for d in sorted(docs, key=lambda d: d["doc"]):
        label = genre_label(d["meta"]["genre"])
        for text in chunks(d["text"]):
            items.append({"text": text, "label": label, "part": part_of[d["doc"]], "doc": d["doc"],
                          "genre": d["meta"]["genre"]})
    return items, seen


def majority_rate(items: Sequence[dict]) -> float:
    """Accuracy of always answering the most common label of the *test* part (the probe's chance level)."""
    test = [it["label"] for it in items if it["part"] == "test"]
    return max(test.count(0), test.count(1)) / max(len(test), 1)


def bow_baseline(items: Sequence[dict]) -> float:
    """Test accuracy of a bag-of-words logistic regression: what lexical cues alone give, no pre-training."""
    from rankscope.downstream.linear import CountVectorizer, LogisticRegression

    train = [it for it in items if it["part"] == "train"]
    test = [it for it in items if it["part"] == "test"]
    vec = CountVectorizer(min_df=2, binary=True)
    x_train = vec.fit_transform([it["text"] for it in train])
    clf = LogisticRegression(c=1.0).fit(x_train, [it["label"] for it in train])
    pred = clf.predict(vec.transform([it["text"] for it in test]))
    return float(np.mean(pred == np.array([it["label"] for it in test])))
