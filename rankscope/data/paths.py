"""Where a run's local data files are: what the user typed, and the absolute path the run config stores.

Two rules keep a run folder usable from anywhere and own data from being silently replaced:

* ``--train-files`` / ``--val-files`` imply ``--source files``; naming them with another explicit source is a
  user error (before, they were kept in config.json but the embedded corpus was trained on).
* Relative data paths are resolved against the working directory once, when the run config is made, and the
  absolute paths are what ``config.json`` stores under ``data.train_files`` / ``data.val_files``; what was typed
  is kept in ``data.typed_paths`` for display and for the run's fingerprint (so the fingerprint of a run folder
  written before this change, whose config.json holds the typed relative paths, is unchanged).
"""

from __future__ import annotations

import os
from typing import Any

from rankscope.errors import UserError

FILE_FIELDS = ("train_files", "val_files")


def imply_files_source(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` (a config's raw ``data`` mapping) with ``source: files`` when it lists local files.

    ``where`` says where an explicit source came from (``--source`` or a config file), for the error.
    """
    given = [name for name in FILE_FIELDS if data.get(name)]
    if not given:
        return data
    source = data.get("source")
    if source is None:
        return {**data, "source": "files"}
    if source != "files":
        flags = " and ".join(f"--{name.replace('_', '-')}" for name in given)
        raise UserError(f"{flags} (data.{given[0]}) name local files, which are read only with data.source=files, "
                        f"but data.source={source!r} was given ({where}). Drop that source (the files imply "
                        f"--source files), or drop the files to train on the {source} data.")
    return data


def absolute(path: str) -> str:
    """``path`` made absolute against the working directory (symlinks kept, ``..`` folded)."""
    return os.path.abspath(os.path.expanduser(path))


def resolve_paths(data: Any) -> None:
    """Make a DataConfig's relative local paths absolute, in place, keeping what was typed in ``typed_paths``.

    Files are always resolved; the tokenizer only when it names an existing path (otherwise it is ``embedded``
    or a hub name). Absolute paths are left as they are, so resolving twice changes nothing. A run folder
    written before paths were stored absolute is resolved against the working directory when it is read,
    which is where its relative paths always pointed.
    """
    typed = dict(data.typed_paths or {})
    for name in FILE_FIELDS:
        values = tuple(getattr(data, name))
        if any(not os.path.isabs(v) for v in values):
            typed[name] = values
            object.__setattr__(data, name, tuple(absolute(v) for v in values))
    tok = data.tokenizer
    if tok != "embedded" and not os.path.isabs(tok) and os.path.exists(tok):
        typed["tokenizer"] = tok
        object.__setattr__(data, "tokenizer", absolute(tok))
    object.__setattr__(data, "typed_paths", typed)


def as_typed(data: Any, name: str, path: str) -> str:
    """How the user wrote ``path`` (an entry of ``data.<name>``), or "" when it was typed as it is stored."""
    values = getattr(data, name)
    typed = (data.typed_paths or {}).get(name)
    if isinstance(values, tuple) and typed and len(typed) == len(values) and path in values:
        written = typed[values.index(path)]
        return "" if written == path else written
    return typed if isinstance(typed, str) and typed != path else ""
