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
