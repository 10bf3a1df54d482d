"""Build the offline downstream tasks from held-out text of the embedded corpus (data.md §3).

Maintainers run this when the corpus or a builder changes; it is deterministic (fixed seeds) and offline:

    .venv/bin/python scripts/build_tasks.py          # ~1 min on 2 cores

Writes rankscope/downstream/assets/{agreement,cloze,nextsent,genre}.jsonl and tasks_manifest.json (chance
level, word-bigram floor trained on the train split, item counts, provenance).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rankscope.data.corpus import load_brown_heldout_tagged, load_documents  # noqa: E402
from rankscope.downstream import genre as g  # noqa: E402
from rankscope.downstream import task_build as tb  # noqa: E402
from rankscope.downstream.bigram import BigramLM, choice_accuracy, words  # noqa: E402
from rankscope.downstream.text import TrainIndex  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "rankscope" / "downstream" / "assets"
SEED = 1234
CAPS = {"cloze": 1000, "nextsent": 800}
BUILD_VERSION = "2"


def pos_lexicon(tagged: list[dict]) -> dict[str, str]:
    """Most frequent base Brown tag of each lowercase word in the held-out tagged files."""
    counts: dict[str, Counter] = {}
    for doc in tagged:
        for para in doc["paragraphs"]:
            for word, tag in (t for sent in para for t in sent):
                counts.setdefault(word.lower(), Counter())[tb.base_tag(tag)] += 1
    return {w: c.most_common(1)[0][0] for w, c in counts.items()}


def write_jsonl(path: Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items), encoding="utf-8")


def mc_entry(name: str, items: list[dict], kind: str, bigram: BigramLM, description: str, **extra) -> dict:
    n_choices = len(items[0]["choices"])
    base = choice_accuracy(bigram, items)
    return {"file": f"{name}.jsonl", "kind": kind, "n_items": len(items), "n_choices": n_choices,
            "chance": 1.0 / n_choices, "metrics": ["acc"] if kind == "minimal_pair" else ["acc", "acc_norm"],
            "target_delimiter": "" if kind == "minimal_pair" else " ",
            "baseline": {"kind": "word bigram, interpolated absolute discounting (D=0.75), train split", **base},
            "splits": ["validation", "test"], "text_seen_in_pretraining": False, "seed": SEED,
            "description": description, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args()
    t0 = time.perf_counter()
    train = load_documents("train")
    heldout = load_documents("validation") + load_documents("test")
    tagged = load_brown_heldout_tagged()
    index = TrainIndex(d["text"] for d in train)
    bigram = BigramLM().fit(d["text"] for d in train)
    freq = Counter(w for d in train for w in words(d["text"]) if w.isalpha())
    t1 = time.perf_counter()

    agreement = tb.agreement_items(tagged, index, seed=SEED)
    sentences = tb.heldout_sentences(heldout, tagged)
    cloze = tb.cloze_items(sentences, index, freq, pos_lexicon(tagged), cap=CAPS["cloze"], seed=SEED)
    nextsent = tb.nextsent_items(sentences, index, cap=CAPS["nextsent"], seed=SEED)
    genre, seen = g.genre_items([d for d in heldout if d["source"] == "brown"], seed=SEED,
                                train_docs=[d for d in train if d["source"] == "brown"])
    t2 = time.perf_counter()

    hard = [it for it in agreement if it["hard"]]
    tasks = {
        "agreement": mc_entry(
            "agreement", agreement, "minimal_pair", bigram,
            "Subject-verb agreement minimal pairs from held-out Brown sentences (is/are, was/were, has/have); "
            "balanced per verb pair; correct if P(good) > P(bad).",
            hard_subset={"n_items": len(hard), "baseline": choice_accuracy(bigram, hard),
                         "rule": "subject-verb distance >= 3 or nearest noun of the other number"}),
        "cloze": mc_entry("cloze", cloze, "multiple_choice", bigram,
                          "4-way last-word cloze; distractors of the same POS and similar train frequency.",
                          caps=CAPS["cloze"]),
        "nextsent": mc_entry("nextsent", nextsent, "multiple_choice", bigram,
                             "4-way next sentence; context = 2 previous sentences of a held-out paragraph; "
                             "distractors = random held-out sentences (5-40 words) of other documents of the same "
                             "source, length-matched "
                             "(characters within 5 %).",
                             caps=CAPS["nextsent"]),
        "genre": {"file": "genre.jsonl", "kind": "probe", "n_items": len(genre),
                  "n_train": sum(it["part"] == "train" for it in genre),
                  "n_test": sum(it["part"] == "test" for it in genre), "n_classes": 2,
                  "labels": list(g.LABELS), "chance": g.majority_rate(genre), "metrics": ["acc"],
                  "baseline": {"kind": "bag-of-words logistic regression (no pre-training)",
                               "acc": g.bow_baseline(genre)},
                  "splits": ["validation", "test"] + (["train"] if seen else []),
                  "text_seen_in_pretraining": seen, "seed": SEED, "chunk_words": g.CHUNK_WORDS,
                  "description": "Brown informative vs imaginative; linear probe on mean-pooled final hidden "
                                 "states; probe train/test split by file (stratified)."},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, items in (("agreement", agreement), ("cloze", cloze), ("nextsent", nextsent), ("genre", genre)):
        write_jsonl(args.out / f"{name}.jsonl", items)
    man = {"build_version": BUILD_VERSION, "seed": SEED, "corpus": "embedded (SOTU + Brown + Austen)",
           "tasks": tasks}
    (args.out / "tasks_manifest.json").write_text(json.dumps(man, indent=2) + "\n", encoding="utf-8")
    t3 = time.perf_counter()
    print(f"index+bigram {t1 - t0:.1f}s, build {t2 - t1:.1f}s, baselines+write {t3 - t2:.1f}s")
    for name, t in tasks.items():
        size = (args.out / t["file"]).stat().st_size
        print(f"{name:>10}: {t['n_items']:5d} items  chance {t['chance']:.3f}  baseline "
              f"{ {k: round(v, 3) for k, v in t['baseline'].items() if k != 'kind'} }  {size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
