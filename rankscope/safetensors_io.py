"""Write safetensors files with the permissions of every other file rankscope writes (0666 minus the umask).

safetensors (>= 0.5) writes through a private temporary file, mode 0600, that it renames into place, so
weights came out readable by their owner only while the JSON beside them was 0644: a shared run folder or
an exported model then failed for everyone else. ``save`` sets the usual mode after writing.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from safetensors.torch import save_file


@functools.cache
def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 without the process umask (read once)."""
    try:  # Linux reports the umask without changing it (os.umask would, briefly, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def save(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, then the mode other new files get (e.g. 0644)."""
    save_file(tensors, str(path), metadata)
    os.chmod(path, file_mode())
