"""Train the default byte-level BPE on the embedded corpus's train split (spec data.md §2).

Maintainers run this after rebuilding the corpus; the result is shipped so that token ids are
identical on every machine. Paste-ready:

    .venv/bin/python scripts/build_tokenizer.py            # ~10-20 s on 2 cores

Writes rankscope/data/assets/tokenizer.json and prints tokens per split.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

# One worker thread: BPE merges are tie-broken deterministically, but pinning the pool removes
# any doubt about run-to-run differences. Must be set before tokenizers is imported.
os.environ.setdefault("RAYON_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from rankscope.data.corpus import load_documents, verify_manifest  # noqa: E402
from rankscope.data.tokenizer import BOS_EOS_TOKEN, PAD_TOKEN, TextTokenizer  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "rankscope" / "data" / "assets" / "tokenizer.json"


def train(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE: lossless (decode(encode(s)) == s) and never emits an unknown token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS_EOS_TOKEN, PAD_TOKEN],  # ids 0 and 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter(texts), trainer=trainer, length=len(texts))
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    verify_manifest()
    texts = [d["text"] for d in load_documents("train")]  # train split only: val/test stay unseen
    t0 = time.perf_counter()
    tok = train(texts, args.vocab_size)
    t1 = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out), pretty=False)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"trained in {t1 - t0:.1f}s on {len(texts)} train documents -> {args.out} (sha256 {digest})")
    wrapped = TextTokenizer.from_file(args.out)
    for split in ("train", "validation", "test"):
        t2 = time.perf_counter()
        n = sum(len(ids) for ids in wrapped.encode_batch([d["text"] for d in load_documents(split)]))
        took = time.perf_counter() - t2
        print(f"{split:>10}: {n:,} tokens ({n // 256:,} sequences of 256), encoded in {took:.1f}s")
    print(f"vocab_size {wrapped.vocab_size}, fingerprint {wrapped.fingerprint()}")


if __name__ == "__main__":
    main()
