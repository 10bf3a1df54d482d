"""The embedded offline corpus: SOTU + Brown + Austen, shipped inside the package (data.md §1).

Runs need no network: the cleaned documents live in ``assets/corpus.jsonl.xz`` and are read
with the standard library. ``scripts/build_corpus.py`` rebuilds the file; users never run it.

    >>> from rankscope.data.corpus import load_documents
    >>> train = load_documents("train")                      # list of {text, source, doc, split, meta}
    >>> brown_val = load_documents("validation", sources=("brown",))
"""

from __future__ import annotations

import functools
import hashlib
import json
import lzma
from importlib import resources
from pathlib import Path

from rankscope.data.corpus_build import SOURCES, SPLITS

_PACKAGE = "rankscope.data"  # assets/ is a plain folder, not a package
CORPUS_FILE = "corpus.jsonl.xz"
MANIFEST_FILE = "corpus_manifest.json"
BROWN_TAGGED_FILE = "brown_heldout_tagged.jsonl.xz"


def _asset(name: str) -> Path:
    """Filesystem path of a packaged asset (the package is installed unzipped)."""
    return Path(str(resources.files(_PACKAGE) / "assets" / name))


def corpus_path() -> Path:
    return _asset(CORPUS_FILE)


@functools.cache
def manifest() -> dict:
    """Pinned sources, cleaning-rules version, sha256 and per-split counts of the shipped file."""
    return json.loads(_asset(MANIFEST_FILE).read_text(encoding="utf-8"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_manifest() -> None:
    """Fail loudly if the shipped corpus is not the file the manifest describes."""
    expected, actual = manifest()["sha256"], _sha256(corpus_path())
    if actual != expected:
        raise RuntimeError(
            f"embedded corpus {corpus_path()} has sha256 {actual}, but {MANIFEST_FILE} expects "
            f"{expected}; reinstall rankscope or rebuild both with scripts/build_corpus.py"
        )


@functools.cache
def _all_documents() -> tuple[dict, ...]:
    with lzma.open(corpus_path(), "rt", encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh)


def _check(kind: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}")


def load_documents(split: str | None = None, sources: tuple[str, ...] | None = None) -> list[dict]:
    """Documents of one split (None = all) from the given sources (None = all), in file order.

    Records are shared with an in-process cache: copy one before mutating it.
    """
    if split is not None:
        _check("split", split, SPLITS)
    if isinstance(sources, str):  # a bare "brown" would otherwise be read as letters
        sources = (sources,)
    for source in sources or ():
        _check("source", source, SOURCES)
    return [
        doc
        for doc in _all_documents()
        if (split is None or doc["split"] == split) and (sources is None or doc["source"] in sources)
    ]


@functools.cache
def _brown_tagged() -> tuple[dict, ...]:
    with lzma.open(_asset(BROWN_TAGGED_FILE), "rt", encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh)


def training_sources(holdout_source: str = "") -> tuple[str, ...] | None:
    """Sources a run trains and validates on: all (None), or all but the left-out one (leave-one-source-out)."""
    if not holdout_source:
        return None
    _check("source", holdout_source, SOURCES)
    return tuple(s for s in SOURCES if s != holdout_source)


def shift_documents(holdout_source: str) -> list[dict]:
    """Every document (all splits) of the left-out source: text a leave-one-source-out run never saw."""
    if not holdout_source:
        raise ValueError("no source is left out (set data.holdout_source to one of: " + ", ".join(SOURCES) + ")")
    return load_documents(None, sources=(holdout_source,))


def load_brown_heldout_tagged() -> list[dict]:
    """Validation+test Brown files as {doc, split, genre, paragraphs[sentences[[word, tag]]]}.

    Only held-out files are shipped tagged, so tasks built from them never see train text.
    """
    return list(_brown_tagged())
