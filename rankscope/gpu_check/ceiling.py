"""The GEMM ceiling that MFU is measured against, on the machine at hand (performance.md §1-2).

Best-of-``calls`` ``torch.mm`` into a preallocated output per shape; the ceiling is the best shape. On CUDA
every call is bracketed by synchronisations, so the time is the kernel's, not the launch's.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_shapes(model_cfg, tokens: int, square: int = 8192) -> dict[str, tuple[int, int, int]]:
    """A large square GEMM plus the model's own shapes at ``tokens`` rows (attention, MLP up/down, lm_head)."""
    d, f, v = model_cfg.d_model, model_cfg.d_ff, model_cfg.vocab_size
    return {f"square {square}": (square, square, square), f"attn {tokens}x{d}@{d}x{d}": (tokens, d, d),
            f"mlp up {tokens}x{d}@{d}x{f}": (tokens, d, f), f"mlp down {tokens}x{f}@{f}x{d}": (tokens, f, d),
            f"lm_head {tokens}x{d}@{d}x{v}": (tokens, d, v)}


def measure_gemm_ceiling(shapes: dict[str, tuple[int, int, int]], device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.bfloat16, calls: int = 20, warmup: int = 3) -> dict[str, Any]:
    """``{"flops": best FLOP/s, "shape": its name, "dtype", "device", "shapes": {name: {...}}}``.

    FLOPs of one call = 2·M·K·N. Each shape's figure is the best of ``calls`` timed calls after ``warmup``.
    """
    device = torch.device(device)
    per_shape: dict[str, Any] = {}
    for name, (m, k, n) in shapes.items():
        gen = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(m, k, device=device, dtype=dtype, generator=gen)
        b = torch.randn(k, n, device=device, dtype=dtype, generator=gen)
        c = torch.empty(m, n, device=device, dtype=dtype)
        for _ in range(warmup):
            torch.mm(a, b, out=c)
        times = []
        for _ in range(calls):
            _sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            _sync(device)
            times.append(time.perf_counter() - t0)
        flop = 2.0 * m * k * n
        per_shape[name] = {"shape": [m, k, n], "flops_best": flop / min(times), "seconds_best": min(times),
                           "calls": calls}
        del a, b, c
    best = max(per_shape, key=lambda s: per_shape[s]["flops_best"])
    return {"flops": per_shape[best]["flops_best"], "shape": best, "dtype": str(dtype).replace("torch.", ""),
            "device": str(device), "shapes": per_shape}


def mfu(tokens_per_s: float, flops_per_token: float, ceiling_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the measured ceiling (not a vendor peak)."""
    return tokens_per_s * flops_per_token / ceiling_flops if ceiling_flops > 0 else float("nan")
