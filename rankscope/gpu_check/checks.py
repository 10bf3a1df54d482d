"""The individual GPU checks; each returns plain dicts that go into the gpu-check JSON.

Every training check goes through the real loop (``rankscope.training.loop.train``) on the 60m preset in
bf16 autocast with fp32 master weights; the throughput/memory rows run the methods' own optimizers on
random tokens without data loading, so they time the GPU and nothing else.

Resume tolerance in bf16: the check runs with deterministic algorithms (``CUBLAS_WORKSPACE_CONFIG`` set,
``torch.use_deterministic_algorithms(True, warn_only=True)``), where 15 + resume + 15 updates are expected
to be bit-identical to 30. Kernels without a deterministic variant only warn, so the pass criterion is a
bf16 tolerance: every logged loss within ``LOSS_RTOL`` relative and every final weight tensor within
``WEIGHT_RTOL`` relative Frobenius distance; the JSON records whether it was bit-exact as well.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rankscope.config import DataConfig, RunConfig, TrainConfig

LOSS_RTOL = 1e-2  # bf16 has 8 mantissa bits (2^-8 = 3.9e-3); 15 updates of drift stay within ~1e-2
WEIGHT_RTOL = 1e-3  # ‖a − b‖ / ‖a‖ per tensor (fp32 master weights move ~lr per update)
ANALYZE_RTOL = 1e-3  # spectra and loss curves of one checkpoint, GPU vs CPU (both fp32)
ANALYZE_METRICS = ("w_erank", "w_stable_rank", "w_fro", "w_sv_max", "rand_curve")
SEQ = 256
TRAIN_MICRO_BATCH = 16


def device_info() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "count": torch.cuda.device_count(), "memory_gib": props.total_memory / 2**30,
            "capability": f"{props.major}.{props.minor}", "torch": torch.__version__, "cuda": torch.version.cuda,
            "bf16": torch.cuda.is_bf16_supported()}


def run_config(method: str, out_dir: Path, name: str, steps: int = 30, model: str = "60m",
               seq_len: int = SEQ, **train_kw: Any) -> RunConfig:
    """60m, bf16 autocast on CUDA, the method's paper hyperparameters (lr -1 = the preset's).

    ``model``, ``seq_len`` and ``train_kw`` exist so the CPU tests can run the same checks on the smoke preset.
    """
    train = dict(steps=steps, warmup_steps=max(steps // 10, 1), micro_batch_size=TRAIN_MICRO_BATCH,
                 eval_every=0, eval_tokens=4096, save_every=0, log_every=1, precision="bf16-autocast",
                 device="cuda", seed=0)
    train.update(train_kw)
    return RunConfig(name=name, out_dir=str(out_dir), model=model, method=method, data=DataConfig(seq_len=seq_len),
                     train=TrainConfig(**train))


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def _tok_s(run_dir: Path, skip: int = 3) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [r["tok_per_s"] for r in rows if r["kind"] == "train"][skip:]
    return sorted(vals)[len(vals) // 2] if vals else float("nan")


def compare_checkpoints(a_dir: Path, b_dir: Path, rtol: float) -> tuple[bool, bool, float]:
    """(bit_exact, within rtol, max relative Frobenius distance) over the model tensors of two checkpoints."""
    from safetensors.torch import load_file

    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    if a.keys() != b.keys():
        return False, False, float("inf")
    exact, worst = True, 0.0
    for k in a:
        exact &= torch.equal(a[k], b[k])
        x, y = a[k].double(), b[k].double()
        worst = max(worst, float((x - y).norm() / x.norm().clamp_min(1e-30)))
    return exact, worst <= rtol, worst


def train_and_resume(method: str, out_dir: Path, steps: int = 30, **cfg_kw: Any) -> list[dict[str, Any]]:
    """30 updates straight (finite, decreasing loss) and 15 + resume + 15 compared with them."""
    from rankscope.training import checkpoint as ckpt
    from rankscope.training.loop import train

    straight = run_config(method, out_dir, f"{method}_straight", steps, **cfg_kw)
    train(straight, progress=False)
    losses = _losses(straight.run_dir)
    k = max(len(losses) // 6, 1)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    finite = all(math.isfinite(x) for x in losses)
    checks = [{"check": "train_60m_bf16", "method": method, "ok": finite and last < first,
               "detail": f"{len(losses)} updates, loss {first:.3f} -> {last:.3f} (mean of first/last {k})",
               "losses": losses, "tokens_per_s": _tok_s(straight.run_dir)}]
    split = run_config(method, out_dir, f"{method}_split", steps, save_steps=(steps // 2,), **cfg_kw)
    train(split, progress=False, stop_after=steps // 2)
    train(split, resume=True, progress=False)
    resumed = _losses(split.run_dir)
    loss_diff = max((abs(a - b) / max(abs(a), 1e-12) for a, b in zip(losses, resumed)), default=float("inf"))
    exact, close, wdiff = compare_checkpoints(ckpt.step_dir(straight.run_dir, steps),
                                              ckpt.step_dir(split.run_dir, steps), WEIGHT_RTOL)
    same_len = len(resumed) == len(losses)
    checks.append({"check": "resume_60m_bf16", "method": method,
                   "ok": same_len and close and loss_diff <= LOSS_RTOL,
                   "detail": f"{'bit-exact' if exact and loss_diff == 0 else 'not bit-exact'}; max loss rel diff "
                             f"{loss_diff:.2e} (tol {LOSS_RTOL:g}), max weight rel diff {wdiff:.2e} (tol {WEIGHT_RTOL:g})",
                   "bit_exact": bool(exact and loss_diff == 0)})
    return checks


def fused_adamw() -> dict[str, Any]:
    """The full-rank optimizer built on a CUDA model is torch's fused AdamW."""
    from rankscope.methods.base import make_adamw

    cfg = run_config("full_rank", Path("."), "x").method_config()
    p = torch.nn.Parameter(torch.zeros(4, 4, device="cuda"))
    opt = make_adamw([{"params": [p], "lr": 1e-3, "base_lr": 1e-3}], cfg)
    fused = bool(opt.defaults.get("fused"))
    return {"check": "fused_adamw", "ok": fused, "detail": f"defaults fused={opt.defaults.get('fused')}"}


def analyze_gpu_vs_cpu(run_dir: Path, out_dir: Path, devices: tuple[str, str] = ("cuda", "cpu"),
                       n_tokens: int = 2048) -> dict[str, Any]:
    """``analyze`` of one checkpoint on CUDA and on CPU: the tables' rows and values must agree."""
    from rankscope.diagnostics.analyze import analyze

    kw = dict(metrics=["w_erank", "rand_sharpness"], n_tokens=n_tokens, progress=False, use_cache=False,
              settings={"landscape_random": {"n_directions": 2, "n_points": 5}})
    tables = [analyze([run_dir], out=out_dir / f"analyze_{i}_{dev}", device=dev, **kw)
              for i, dev in enumerate(devices)]
    key = ["run", "step", "metric", "scope", "name"]
    g, c = (t[t["metric"].isin(ANALYZE_METRICS)].set_index(key)["value"] for t in tables)
    same_rows = set(tables[0].set_index(key).index) == set(tables[1].set_index(key).index)
    joined = g.to_frame("gpu").join(c.to_frame("cpu"), how="inner")
    rel = ((joined["gpu"] - joined["cpu"]).abs() / joined["cpu"].abs().clip(lower=1e-12)).max()
    ok = same_rows and len(joined) > 0 and bool(rel <= ANALYZE_RTOL)
    return {"check": "analyze_gpu_vs_cpu", "ok": ok,
            "detail": f"{len(tables[0])} rows each, same rows: {same_rows}; {len(joined)} compared values "
                      f"({', '.join(ANALYZE_METRICS)}), max rel diff {rel:.2e} (tol {ANALYZE_RTOL:g})"}


def ddp_nccl(out_dir: Path, n_gpus: int, steps: int = 20) -> dict[str, Any]:
    """torchrun over every visible GPU (NCCL) vs one process with the same global batch (accumulation)."""
    from rankscope.training import checkpoint as ckpt
    from rankscope.training.loop import train

    if n_gpus < 2:
        return {"check": "ddp_nccl", "ok": True, "skipped": True, "detail": "1 GPU visible: DDP needs >= 2"}
    single = run_config("full_rank", out_dir, "ddp_single", steps, grad_accum=n_gpus)
    train(single, progress=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_gpus}",
           "-m", "rankscope", "train", "--model", "60m", "--method", "full_rank", "--steps", str(steps),
           "--warmup-steps", str(max(steps // 10, 1)), "--micro-batch-size", str(TRAIN_MICRO_BATCH),
           "--seq-len", str(SEQ), "--eval-every", "0", "--eval-tokens", "4096", "--log-every", "1",
           "--precision", "bf16-autocast", "--device", "cuda", "--name", "ddp_multi", "--out-dir", str(out_dir),
           "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"check": "ddp_nccl", "ok": False, "detail": f"torchrun exit {proc.returncode}: {proc.stderr[-800:]}"}
    multi = out_dir / "ddp_multi"
    _, close, wdiff = compare_checkpoints(ckpt.step_dir(single.run_dir, steps), ckpt.step_dir(multi, steps),
                                          WEIGHT_RTOL)
    return {"check": "ddp_nccl", "ok": close, "tokens_per_s": _tok_s(multi), "seconds": wall,
            "detail": f"{n_gpus} ranks vs 1 process with accumulation {n_gpus}: max weight rel diff {wdiff:.2e} "
                      f"(tol {WEIGHT_RTOL:g}); {_tok_s(multi):,.0f} tok/s"}
