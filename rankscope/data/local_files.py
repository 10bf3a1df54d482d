"""Documents from local ``.txt``, ``.jsonl``/``.json`` and ``.parquet`` files, with one clear error per bad file.

Every problem a user can have with a file (missing, unreadable, not UTF-8, not JSON Lines, a record that is
not an object, a missing or non-text column, a broken Parquet file, an empty or blank file) is a
:class:`UserError` naming the file (and the line or row), the problem and the fix, never a traceback from
the decoder. ``check_file`` reads only the first document, so a run can validate its data before it writes
anything; the full read (tokenization) raises the same errors for problems further down a file.

Formats: ``.txt`` is one document per blank-line-separated block; ``.jsonl``/``.json`` one JSON object per
line with the text under ``text_column``; ``.parquet`` a string column ``text_column``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from rankscope.errors import UserError

LOCAL_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_UTF8_FIX = ("rankscope reads text files as UTF-8: convert the file (e.g. `iconv -f latin1 -t utf-8 IN > OUT`) "
             "or remove the bad bytes")
_JSONL_FIX = 'write one JSON object per line, e.g. {"text": "..."} (JSON Lines)'


def iter_file(path: str | Path, column: str = "text") -> Iterator[str]:
    """The documents of one local file, in file order; raises UserError for any problem with the file."""
    path = Path(path)
    kind = _kind(path)
    reader = {"text": _iter_text, "json": _iter_jsonl, "parquet": _iter_parquet}[kind]
    count = 0
    try:
        for doc in reader(path, column):
            count += bool(doc.strip())
            yield doc
    except PermissionError:
        raise UserError(f"data file {path} is not readable (permission denied); fix its permissions") from None
    except IsADirectoryError:
        raise UserError(f"data file {path} is a directory; pass the files inside it") from None
    if count == 0:
        what = "is empty" if path.stat().st_size == 0 else "holds no text (only blank lines or empty records)"
        raise UserError(f"data file {path} {what}; pass a file with at least one document, or leave it out")


def check_file(path: str | Path, column: str = "text") -> None:
    """Cheap up-front check: the file exists, has a known format and its first document can be read."""
    for doc in iter_file(path, column):
        if doc.strip():
            return


def _kind(path: Path) -> str:
    if not path.exists():
        raise UserError(f"data file {path} does not exist")  # callers that know the option add it
    if path.is_dir():
        raise UserError(f"data file {path} is a directory; pass the files inside it")
    kind = LOCAL_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"data file {path}: unsupported suffix {path.suffix!r}; use one of "
                        f"{', '.join(sorted(LOCAL_SUFFIXES))} (rename the file if it is one of these formats)")
    return kind


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) with a UserError naming the line of the first byte that is not UTF-8."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                f"{exc.start + 1}); {_UTF8_FIX}") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark is not text
            if "\x00" in line:
                raise UserError(f"{path}:{lineno}: holds NUL bytes, so it is binary, not text; pass a "
                                f".txt/.jsonl file with UTF-8 text (or a .parquet file under that suffix)")
            yield lineno, line


def _iter_text(path: Path, column: str) -> Iterator[str]:
    # One document per blank-line-separated block: keeps paragraphs together, as a corpus file usually is.
    block: list[str] = []
    for _, line in _lines(path):
        line = line.rstrip("\r\n")
        if line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def _iter_jsonl(path: Path, column: str) -> Iterator[str]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = " (a JSON array or pretty-printed JSON is not JSON Lines)" if line.strip() in "[{" else ""
            raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg}){hint}; {_JSONL_FIX}") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got a JSON {_json_type(record)}; "
                            f"{_JSONL_FIX}")
        if column not in record:
            raise UserError(f"{path}:{lineno}: no text column {column!r}; the record has {sorted(record)}. "
                            f"Pass --text-column NAME.")
        text = record[column]
        if not isinstance(text, str):
            raise UserError(f"{path}:{lineno}: the text column {column!r} holds a JSON {_json_type(text)}, "
                            f"not a string; fix the record or pass --text-column NAME of a text field")
        yield text


def _json_type(value: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _iter_parquet(path: Path, column: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path} is not a readable Parquet file ({exc}); re-write it completely (e.g. "
                        f"pandas.DataFrame.to_parquet) or pass the text as .jsonl/.txt") from None
    schema = pf.schema_arrow
    if column not in schema.names:
        raise UserError(f"{path}: no text column {column!r}; columns are {schema.names}. Pass --text-column NAME.")
    typ = schema.field(column).type
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        raise UserError(f"{path}: the text column {column!r} has type {typ}, not string; pass --text-column "
                        f"NAME of a string column")
    row = 0
    try:
        for batch in pf.iter_batches(columns=[column]):
            for text in batch.column(0).to_pylist():
                row += 1
                if text is None:
                    raise UserError(f"{path}: row {row} has no text (null in column {column!r}); drop or fill "
                                    f"the null rows")
                yield text
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: Parquet data after row {row} cannot be read ({exc}); the file is damaged, "
                        f"re-write it") from None
