"""``make gpu-check`` / ``python scripts/gpu_check.py [--out DIR] [--budget-s S] [--methods a,b]``.

Order (each section is skipped, and says so in the JSON, once the time budget is spent, so the check ends
in under 10 minutes unattended on one H100-class GPU): device and bf16 GEMM ceiling; fused AdamW; every
registered method trains 60m for 30 bf16 updates and resumes (15 + 15); ``analyze`` on one checkpoint on
GPU and CPU; DDP over all visible GPUs with NCCL; tokens/s, MFU and peak memory per method at
60m/130m/350m/1b. Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md``. Exit 0 when every check passed
(or without CUDA, after one line saying so), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch

NO_CUDA = "gpu-check: no CUDA device visible (torch {torch}, cuda build {cuda}); nothing to check, exit 0"


class Budget:
    """Wall-clock budget; sections that start after it is spent are recorded as skipped."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.t0 = seconds, time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> bool:
        return self.elapsed < self.seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_check", help="output folder (JSON, table, the check runs)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="skip sections that would start later")
    ap.add_argument("--methods", default="", help="comma-separated subset (default: every registered method)")
    ap.add_argument("--sizes", default="60m,130m,350m,1b", help="model sizes of the throughput/memory rows")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda))
        return 0
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (resume check)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return run(args)


def run(args: argparse.Namespace) -> int:
    from rankscope.gpu_check import checks
    from rankscope.gpu_check.ceiling import gemm_shapes, measure_gemm_ceiling
    from rankscope.gpu_check.output import write_outputs
    from rankscope.gpu_check.throughput import throughput_row
    from rankscope.methods.registry import available
    from rankscope.models.presets import model_config

    budget = Budget(args.budget_s)
    out = Path(args.out)
    methods = [m for m in args.methods.split(",") if m] or available()
    result: dict[str, Any] = {"device": checks.device_info(), "methods": methods, "checks": [], "throughput": []}
    print(f"gpu-check on {result['device']['name']} x {result['device']['count']} "
          f"({result['device']['memory_gib']:.0f} GiB), torch {torch.__version__}, methods: {', '.join(methods)}")
    result["ceiling"] = measure_gemm_ceiling(gemm_shapes(model_config("1b"), 16 * 256), "cuda", torch.bfloat16)
    ceiling = result["ceiling"]["flops"]
    print(f"bf16 GEMM ceiling {ceiling / 1e12:.1f} TFLOP/s ({result['ceiling']['shape']})")

    def record(item: dict[str, Any]) -> None:
        result["checks"].append(item)
        print(f"  [{'ok' if item['ok'] else 'FAIL'}] {item['check']} {item.get('method', '')}: {item['detail']}")
        write_outputs(out, {**result, "seconds": budget.elapsed, "ok": None})

    def guarded(name: str, fn, *a, method: str = "") -> Any:
        if not budget.left():
            record({"check": name, "method": method, "ok": True, "skipped": True, "detail": "skipped: time budget"})
            return None
        try:
            return fn(*a)
        except Exception as exc:  # noqa: BLE001 - a failing check is a result, the others still run
            record({"check": name, "method": method, "ok": False, "detail": f"{type(exc).__name__}: {exc}"[:600]})
            return None

    item = guarded("fused_adamw", checks.fused_adamw)
    if item:
        record(item)
    for method in methods:
        for c in guarded("train_resume_60m_bf16", checks.train_and_resume, method, out / "runs", method=method) or []:
            record(c)
    first_run = out / "runs" / f"{methods[0]}_straight"
    if (first_run / "config.json").is_file():
        item = guarded("analyze_gpu_vs_cpu", checks.analyze_gpu_vs_cpu, first_run, out)
        if item:
            record(item)
    item = guarded("ddp_nccl", checks.ddp_nccl, out / "runs", torch.cuda.device_count())
    if item:
        record(item)
    for size in [s for s in args.sizes.split(",") if s]:
        for method in methods:
            if not budget.left():
                row = {"method": method, "model": size, "status": "skipped: time budget"}
            else:
                try:
                    row = throughput_row(method, size, ceiling)
                except Exception as exc:  # noqa: BLE001
                    row = {"method": method, "model": size, "status": f"error: {type(exc).__name__}: {exc}"[:300]}
            result["throughput"].append(row)
            print(f"  {method:>12} {size:>5}: {row['status']}"
                  + (f", {row['tokens_per_s']:,.0f} tok/s, MFU {row['mfu']:.3f}, peak {row['peak_mib']:,.0f} MiB"
                     if row["status"] == "ok" else ""))
    bad_rows = [r for r in result["throughput"] if r["status"] == "ok" and not r["finite"]]
    for r in bad_rows:
        result["checks"].append({"check": "throughput_finite", "method": r["method"], "ok": False,
                                 "detail": f"non-finite loss at {r['model']}"})
    ok = all(c["ok"] for c in result["checks"]) and not any(r["status"].startswith("error") for r in result["throughput"])
    result.update(seconds=budget.elapsed, ok=ok)
    js, table = write_outputs(out, result)
    print(f"wrote {js} and {table} in {budget.elapsed:.0f} s; all checks passed: {ok}")
    return 0 if ok else 1
