"""Measured peak memory of this process, for the train log (``peak_mib``) and the parity cost table.

CUDA: the allocator's peak of allocated tensors on the device (what the methods differ in). CPU: the peak
resident set size of the process (``ru_maxrss``; kilobytes on Linux, bytes on macOS), which also counts the
interpreter, torch and the data, so it compares methods only within one study on one machine.
"""

from __future__ import annotations

import sys

import torch


def peak_mib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
