"""Held-out texts for perplexity: local files, a hub dataset, the embedded corpus, or a run's own splits.

A text is named by one string, so the CLI, the study config and the API share one vocabulary:

=========================  =====================================================================
``path/to/file.txt``       a local .txt (blank-line-separated documents), .jsonl/.json or .parquet
``hf:NAME[:CONFIG]``       a hub dataset (online; ``split`` and ``column`` pick the rest)
``embedded:SPLIT[:SRC,..]`` documents of the embedded corpus (``all`` = every split)
``val``                    the run's own validation data (its DataConfig: in-domain)
``shift``                  the source a leave-one-source-out run never saw (data.holdout_source)
=========================  =====================================================================

Files and hub datasets go through :func:`rankscope.data.sources.iter_texts`, the reader training uses, so a
bad file fails with the same message. Documents are sampled in a seeded order and taken whole until a
UTF-8 byte budget is reached: the budget does not depend on the tokenizer, so runs with different
tokenizers are scored on the same documents and their bits per byte compare. Documents longer than
``chunk_bytes`` (default 2000, about 500 tokens) are first cut at paragraph breaks (a longer paragraph at a
sentence end) into pieces of about that size, each scored from a fresh start: the embedded corpus has long
documents (chapters, addresses), and a bootstrap over a handful of them would say little. C4 documents are
mostly shorter and stay whole.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rankscope.config import DataConfig
from rankscope.errors import UserError

DEFAULT_MAX_BYTES = 400_000  # about 100k tokens of English under the embedded BPE
DEFAULT_CHUNK_BYTES = 2_000  # longer documents are cut, so the bootstrap has many units (docs/downstream.md)


@dataclass(frozen=True)
class HeldoutText:
    """One held-out text: ``spec`` (see the module docstring), hub ``split``/``column``, display ``label``."""

    spec: str
    split: str = "validation"  # hub split (hf: specs only)
    column: str = "text"  # text column of .jsonl/.parquet files and hub datasets
    label: str = ""  # name in tables and the report (default: derived from spec)

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if self.spec.startswith("hf:"):
            return f"{self.spec[3:].replace(':', '/')}/{self.split}"
        if self.spec.startswith("embedded:") or self.spec in ("val", "shift"):
            return self.spec
        return Path(self.spec).stem

    def documents(self, data: DataConfig | None = None) -> list[str]:
        """Every document of the text, in source order (``val``/``shift`` need the run's DataConfig)."""
        spec = self.spec
        if spec in ("val", "shift"):
            if data is None:
                raise UserError(f"held-out text {spec!r} is relative to a run: score it with run folders")
            if spec == "val":
                from rankscope.data.sources import iter_texts

                return list(iter_texts(data, "validation"))
            if data.source != "embedded" or not data.holdout_source:
                raise UserError("held-out text 'shift' needs a leave-one-source-out run (data.source=embedded "
                                "and data.holdout_source set to sotu, brown or austen)")
            from rankscope.data.corpus import shift_documents

            return [d["text"] for d in shift_documents(data.holdout_source)]
        if spec.startswith("embedded:"):
            return _embedded(spec)
        if spec.startswith("hf:"):
            return _read(self.hub_config(), spec)
        cfg = DataConfig(source="files", train_files=(spec,), val_files=(spec,), text_column=self.column)
        return _read(cfg, spec)

    def hub_config(self) -> DataConfig:
        """The DataConfig that streams an ``hf:NAME[:CONFIG]`` text through the training reader."""
        parts = self.spec[3:].split(":")
        if not parts[0] or len(parts) > 2:
            raise UserError(f"held-out text {self.spec!r}: write hf:NAME or hf:NAME:CONFIG (e.g. hf:allenai/c4:en)")
        return DataConfig(source="hf", dataset=parts[0], dataset_config=parts[1] if len(parts) > 1 else "",
                          text_column=self.column, val_split=self.split, streaming=True)

    def sample(self, data: DataConfig | None = None, max_bytes: int = DEFAULT_MAX_BYTES, max_docs: int = 0,
               seed: int = 0, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[str]:
        """Documents (or pieces, see the module docstring) in a seeded order, taken whole until ``max_bytes``
        UTF-8 bytes (0: no limit)."""
        hub_run = self.spec == "val" and data is not None and data.source == "hf"
        if self.spec.startswith("hf:") or hub_run:  # a stream: take from its head instead of reading it all
            docs = _head(self, data if hub_run else self.hub_config(), max_bytes, max_docs)
            return [p for d in docs for p in split_long(d, chunk_bytes)]
        docs = [p for d in self.documents(data) if d.strip() for p in split_long(d, chunk_bytes)]
        if not docs:
            raise UserError(f"held-out text {self.spec!r} has no non-empty documents")
        order = list(range(len(docs)))
        random.Random(seed).shuffle(order)
        return _take((docs[i] for i in order), max_bytes, max_docs)


def split_long(text: str, chunk_bytes: int) -> list[str]:
    """``text`` cut into pieces of about ``chunk_bytes`` (0: whole): at line breaks, and a line longer than
    that at its last sentence end (else space) before the limit. Some documents have no line break at all
    (the embedded State of the Union addresses, 29-78 kB each): uncut, one of them filled a text's whole byte
    budget and counted as a single unit in the bootstrap. A piece drops the line break that ended it, so for
    text cut only at line breaks ``"\n".join(pieces) == text``."""
    if not chunk_bytes or len(text.encode("utf-8")) <= chunk_bytes:
        return [text]
    pieces, current, size = [], [], 0
    for segment in _segments(text, chunk_bytes):
        n = len(segment.encode("utf-8"))
        if size >= chunk_bytes // 2 and size + n > chunk_bytes:  # a half-full piece is not overfilled
            pieces.append("".join(current))
            current, size = [], 0
        current.append(segment)
        size += n
        if size >= chunk_bytes:
            pieces.append("".join(current))
            current, size = [], 0
    if current:
        pieces.append("".join(current))
    return [p.removesuffix("\n") for p in pieces if p.strip()]


def _segments(text: str, limit: int) -> list[str]:
    """Lines with their line breaks, a line over ``limit`` bytes cut into parts that end at a sentence end or a
    space (a hard cut only in a run of ``limit`` characters without a space); the parts concatenate to ``text``."""
    out = []
    for line in re.split(r"(?<=\n)", text):
        while len(line.encode("utf-8")) > limit:
            window = line[:limit]
            cut = window.rfind(". ") + 2
            if cut < limit // 2:
                cut = window.rfind(" ") + 1
            if cut < limit // 2:
                cut = limit
            out.append(line[:cut])
            line = line[cut:]
        if line:
            out.append(line)
    return out


def _take(docs, max_bytes: int, max_docs: int) -> list[str]:
    out, total = [], 0
    for text in docs:
        if not text.strip():
            continue
        out.append(text)
        total += len(text.encode("utf-8"))
        if (max_bytes and total >= max_bytes) or (max_docs and len(out) >= max_docs):
            break
    return out


def _head(text: HeldoutText, cfg: DataConfig, max_bytes: int, max_docs: int) -> list[str]:
    from rankscope.data.sources import iter_texts

    try:
        docs = _take(iter_texts(cfg, "validation"), max_bytes, max_docs)
    except UserError as exc:
        raise UserError(f"held-out text {text.spec!r}: {exc}") from None
    if not docs:
        raise UserError(f"held-out text {text.spec!r} (split {text.split!r}) has no non-empty documents")
    return docs


def _read(cfg: DataConfig, spec: str) -> list[str]:
    from rankscope.data.sources import iter_texts

    try:
        return list(iter_texts(cfg, "validation"))
    except UserError as exc:
        raise UserError(f"held-out text {spec!r}: {exc}") from None


def _embedded(spec: str) -> list[str]:
    from rankscope.data.corpus import load_documents

    parts = spec.split(":")
    split = parts[1] if len(parts) > 1 and parts[1] else "validation"
    sources = tuple(s for s in parts[2].split(",") if s) if len(parts) > 2 else None
    try:
        docs = load_documents(None if split == "all" else split, sources=sources or None)
    except ValueError as exc:
        raise UserError(f"held-out text {spec!r}: {exc} (write embedded:SPLIT or embedded:SPLIT:SOURCE,...)") from None
    return [d["text"] for d in docs]


def parse_texts(specs: Sequence[str | dict | HeldoutText], split: str = "validation",
                column: str = "text") -> list[HeldoutText]:
    """HeldoutText objects from strings (with the given split/column) or mappings of its fields."""
    out = []
    for s in specs:
        if isinstance(s, HeldoutText):
            out.append(s)
        elif isinstance(s, str):
            out.append(HeldoutText(s, split=split, column=column))
        elif isinstance(s, dict):
            unknown = sorted(set(s) - {"spec", "split", "column", "label"})
            if unknown or "spec" not in s:
                raise UserError(f"held-out text {s!r}: give 'spec' and optionally split, column, label "
                                f"(unknown: {unknown})")
            out.append(HeldoutText(**{"split": split, "column": column, **s}))
        else:
            raise UserError(f"held-out text {s!r}: expected a string or a mapping with 'spec'")
    names = [t.name for t in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"held-out texts {dup} appear twice; give them distinct labels")
    return out
