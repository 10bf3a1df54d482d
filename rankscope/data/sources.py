"""Where documents come from: the embedded corpus, a Hugging Face dataset, or local files.

Each source yields plain text documents for a split. Hub access is optional; offline, a hub dataset fails
fast with a message that says how to use the embedded corpus or local files instead.
"""

from __future__ import annotations

from collections.abc import Iterator

from rankscope.config import DataConfig
from rankscope.data.local_files import LOCAL_SUFFIXES, check_file, iter_file
from rankscope.errors import UserError

__all__ = ["LOCAL_SUFFIXES", "check_sources", "iter_texts"]


def check_sources(data: DataConfig) -> None:
    """Validate the data settings cheaply before a run writes anything: split names, and that every local
    file exists, has a known format and yields a first document (a UserError names the file and the fix)."""
    if data.source == "embedded":
        for split in (data.train_split, data.val_split):
            _check_embedded_split(split)
    elif data.source == "files":
        for flag, files in (("--train-files", data.train_files), ("--val-files", data.val_files)):
            if not files:
                raise UserError(f"data.source=files needs {flag} PATH (.txt, .jsonl or .parquet)")
            for path in files:
                try:
                    check_file(path, data.text_column)
                except UserError as exc:  # name the option the file came from
                    raise UserError(f"{exc} ({flag})") from None


def iter_texts(data: DataConfig, split: str, shuffle_seed: int = 42) -> Iterator[str]:
    """Documents of ``split`` ("train" uses data.train_split, anything else data.val_split) in a fixed order.

    ``shuffle_seed`` seeds the shuffle buffer of a streamed hub training split (a sibling's data seed).
    """
    which = data.train_split if split == "train" else data.val_split
    if data.source == "embedded":
        from rankscope.data.corpus import training_sources

        sources = training_sources(data.holdout_source)  # None: all three; else the two not left out
        yield from (d["text"] for d in _embedded_split(which) if sources is None or d["source"] in sources)
    elif data.source == "files":
        files = data.train_files if split == "train" else data.val_files
        if not files:
            raise UserError(f"data.source=files needs {'--train-files' if split == 'train' else '--val-files'} "
                            f"PATH (.txt, .jsonl or .parquet)")
        for path in files:
            _check_exists(data, "train_files" if split == "train" else "val_files", path)
            yield from iter_file(path, data.text_column)
    else:
        yield from _iter_hub(data, which, shuffle_seed)


def _check_exists(data: DataConfig, field: str, path: str) -> None:
    """A missing file of a run read from its config.json is reported against that file, not against flags."""
    from pathlib import Path

    if not data.origin or Path(path).exists():
        return
    from rankscope.data.paths import as_typed

    typed = as_typed(data, field, path)
    how = (f" (typed as {typed!r}, relative to the folder the run was started from)" if typed else "")
    raise UserError(f"data file {path} does not exist: {data.origin} names it in data.{field}{how}. Put the file "
                    f"back, or edit that entry of {data.origin} to the file's current absolute path.")


def _check_embedded_split(split: str) -> None:
    from rankscope.data.corpus_build import SPLITS

    if split not in SPLITS:
        raise UserError(f"the embedded corpus has no split {split!r}; its splits are {', '.join(SPLITS)} "
                        f"(--train-split / --val-split)")


def _embedded_split(split: str) -> list[dict]:
    from rankscope.data.corpus import load_documents

    _check_embedded_split(split)
    return load_documents(split)


def _iter_hub(data: DataConfig, split: str, shuffle_seed: int = 42) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise UserError("data.source=hf needs the `datasets` package: pip install 'rankscope[hf]'") from None
    try:
        ds = datasets.load_dataset(
            data.dataset, data.dataset_config or None, split=split, streaming=data.streaming
        )
    except (ConnectionError, OSError) as exc:
        raise UserError(
            f"could not load hub dataset {data.dataset!r} (config {data.dataset_config!r}, split {split!r}): {exc}. "
            "If you are offline, train on the embedded corpus (the default: --source embedded) or on local "
            "files (--source files --train-files PATH)."
        ) from None
    except ValueError as exc:
        raise UserError(f"hub dataset {data.dataset!r}: {exc}") from None
    columns = getattr(ds, "column_names", None)
    if columns is not None and data.text_column not in columns:
        raise UserError(
            f"hub dataset {data.dataset!r} has no text column {data.text_column!r}; columns are {columns}. "
            "Pass --text-column NAME."
        )
    if data.streaming and split == data.train_split:
        ds = ds.shuffle(seed=shuffle_seed, buffer_size=data.shuffle_buffer)
    for i, record in enumerate(ds):
        text = record.get(data.text_column) if isinstance(record, dict) else None
        if not isinstance(text, str):  # streamed datasets may not list their columns up front
            what = "has no" if not isinstance(record, dict) or data.text_column not in record else "has a non-string"
            raise UserError(f"hub dataset {data.dataset!r} record {i} {what} text column {data.text_column!r}"
                            f"{'; its fields are ' + str(sorted(record)) if isinstance(record, dict) else ''}. "
                            f"Pass --text-column NAME of a string field.")
        yield text
