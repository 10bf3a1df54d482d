"""Where documents come from: the embedded corpus, a Hugging Face dataset, or local files.

Each source yields plain text documents for a split. Hub access is optional; offline, a hub dataset fails
fast with a message that says how to use the embedded corpus or local files instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from rankscope.config import DataConfig
from rankscope.errors import UserError

LOCAL_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def iter_texts(data: DataConfig, split: str) -> Iterator[str]:
    """Documents of ``split`` ("train" uses data.train_split, anything else data.val_split) in a fixed order."""
    which = data.train_split if split == "train" else data.val_split
    if data.source == "embedded":
        from rankscope.data.corpus import load_documents, training_sources

        docs = load_documents(which, sources=training_sources(data.holdout_source))  # LOSO: the two kept
        yield from (d["text"] for d in docs)
    elif data.source == "files":
        files = data.train_files if split == "train" else data.val_files
        if not files:
            raise UserError(f"data.source=files has no {'--train-files' if split == 'train' else '--val-files'}")
        for path in files:
            yield from _iter_local_file(Path(path), data.text_column)
    else:
        yield from _iter_hub(data, which)


def _iter_local_file(path: Path, column: str) -> Iterator[str]:
    if not path.is_file():
        raise UserError(f"data file {path} does not exist (check --train-files / --val-files)")
    kind = LOCAL_SUFFIXES.get(path.suffix)
    if kind is None:
        raise UserError(f"data file {path}: unsupported suffix {path.suffix!r}; use one of {sorted(LOCAL_SUFFIXES)}")
    if kind == "text":
        # One document per blank-line-separated block: keeps paragraphs together, as a corpus file usually is.
        block: list[str] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                block.append(line)
            elif block:
                yield "\n".join(block)
                block = []
        if block:
            yield "\n".join(block)
    elif kind == "json":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if column not in record:
                    raise UserError(
                        f"{path}:{lineno}: no text column {column!r}; the record has {sorted(record)}. "
                        f"Pass --text-column NAME."
                    )
                yield str(record[column])
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if column not in table.column_names:
            raise UserError(
                f"{path}: no text column {column!r}; columns are {table.column_names}. Pass --text-column NAME."
            )
        yield from (str(t) for t in table.column(column).to_pylist())


def _iter_hub(data: DataConfig, split: str) -> Iterator[str]:
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
        ds = ds.shuffle(seed=42, buffer_size=data.shuffle_buffer)
    for record in ds:
        yield str(record[data.text_column])
