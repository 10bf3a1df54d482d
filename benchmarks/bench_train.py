"""Training throughput and MFU: rankscope's trainer vs a bare PyTorch loop, side by side (performance.md T1).

One run measures, on 2 threads (performance.md §8 protocol):

1. the fp32 GEMM ceiling on model-sized shapes (``torch.mm`` with a preallocated output, best of ``--calls``
   after 3 warm-up calls, performance.md §1), once at the start and again after every repeat; MFU uses the
   highest clean value seen in the run (the conservative choice: a ceiling caught in a slow phase would
   inflate MFU);
2. for each preset (``60m``, ``tiny``): the **trainer** — ``rankscope.training.loop.train`` itself, method
   ``full_rank`` (fused AdamW), fp32, micro-batch 8 × 256, ``log_every=1``; the step time is the trainer's own
   ``tok_per_s`` from ``metrics.jsonl`` (window = one update; the log write itself is outside it) — against
   the **bare loop**: the same ``LlamaLM`` (same seed, so the same weights), ``torch.optim.AdamW(fused=True)``
   with the same hyperparameters, one fixed batch of random token ids, and per step
   ``model(x)`` → fp32 cross-entropy → ``backward`` → ``step`` → ``zero_grad(set_to_none=True)``;
3. warm-up ``--warmup`` steps, then ``--steps`` timed steps, per implementation and repeat; ``--repeats``
   repeats with the order alternating (trainer, bare / bare, trainer / ...);
4. the allocator: by default the whole process runs with the trainer's glibc setting (``rankscope/allocator.py``,
   freed pages kept for the next step); ``--malloc system`` runs both loops on glibc's defaults;
5. contention per step: other processes' share of the machine's CPU (``/proc/stat`` minus own CPU time);
   steps above 5 % are flagged and left out of the minimum (if every step is flagged the minimum over all
   steps is reported and marked so).

MFU = tokens/s × F ÷ ceiling with F = 6·N_mm + 12·L·T·d (N_mm = block linears + lm_head; embeddings not
counted), ``rankscope.models.llama.flops_per_token``. Run::

    .venv/bin/python benchmarks/bench_train.py                       # ~5 min idle, writes results/train.json
    .venv/bin/python benchmarks/bench_train.py --presets smoke --steps 2 --repeats 1 --out /tmp/t.json  # smoke
    .venv/bin/python benchmarks/bench_train.py --profile 60m         # op / Python profile of both loops
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import (  # noqa: E402
    CLEAN_LIMIT,
    ContentionSampler,
    Interval,
    gemm_ceiling,
    summarize,
    system_info,
    write_json,
)

from rankscope.allocator import retain_freed_memory  # noqa: E402
from rankscope.config import DataConfig, RunConfig, TrainConfig  # noqa: E402
from rankscope.models.llama import LlamaLM, flops_per_token, target_shapes  # noqa: E402
from rankscope.models.presets import model_config  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "train.json"
LONG_RUN = 10_000  # cfg.train.steps: far past stop_after, so no end-of-run eval or checkpoint is triggered


def matmul_params(cfg) -> int:
    """N_mm: every linear in the blocks plus the lm_head (performance.md §2)."""
    return sum(m * n for _, m, n in target_shapes(cfg)) + cfg.vocab_size * cfg.d_model


def ceiling_shapes(preset: str, tokens: int) -> dict[str, tuple[int, int, int]]:
    c = model_config(preset)
    return {f"{preset} attn {tokens}x{c.d_model}@{c.d_model}x{c.d_model}": (tokens, c.d_model, c.d_model),
            f"{preset} mlp up {tokens}x{c.d_model}@{c.d_model}x{c.d_ff}": (tokens, c.d_model, c.d_ff),
            f"{preset} mlp down {tokens}x{c.d_ff}@{c.d_ff}x{c.d_model}": (tokens, c.d_ff, c.d_model),
            f"{preset} lm_head {tokens}x{c.d_model}@{c.d_model}x{c.vocab_size}": (tokens, c.d_model, c.vocab_size)}


# --- the two implementations --------------------------------------------------------------------------------
RETAIN = True  # set from --malloc in main(): the trainer's allocator setting (both loops share the process)


def run_cfg(preset: str, batch: int, seq: int, out_dir: str, name: str) -> RunConfig:
    return RunConfig(
        name=name, out_dir=out_dir, model=preset, method="full_rank", data=DataConfig(seq_len=seq),
        train=TrainConfig(steps=LONG_RUN, micro_batch_size=batch, log_every=1, eval_every=0, eval_tokens=seq,
                          save_every=0, precision="fp32", device="cpu", seed=0,
                          retain_cpu_memory=RETAIN),
    )


def trainer_run(preset: str, batch: int, seq: int, warmup: int, steps: int, sampler: ContentionSampler) -> dict:
    """``train()`` for warmup+steps updates; step times from its own tok_per_s, contention from the sampler."""
    from rankscope.training.logging import read_metrics
    from rankscope.training.loop import train

    tmp = tempfile.mkdtemp(prefix="rankscope_bench_train_")
    try:
        cfg = run_cfg(preset, batch, seq, tmp, "run")
        t_call = time.time()
        train(cfg, progress=False, stop_after=warmup + steps)
        t_end = time.time()
        recs = [r for r in read_metrics(cfg.run_dir) if r["kind"] == "train"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tokens = batch * seq
    out = []
    for i, r in enumerate(recs):
        t0 = recs[i - 1]["time"] if i else None
        out.append({"step": r["step"], "wall": tokens / r["tok_per_s"], "loss": r["loss"],
                    # between consecutive log records: the update plus one log write (ms resolution)
                    "record_interval": (r["time"] - t0) if t0 is not None else None,
                    "contention": sampler.share(t0, r["time"]) if t0 is not None else None})
    return {"steps": out, "call_seconds": t_end - t_call}


def bare_run(preset: str, batch: int, seq: int, warmup: int, steps: int) -> dict:
    cfg = model_config(preset)
    torch.manual_seed(0)  # the trainer's seed: identical initial weights
    model = LlamaLM(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=g)
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    out = []
    for i in range(warmup + steps):
        with Interval() as iv:
            logits = model(x)
            loss = F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), y.reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        out.append({"step": i + 1, "wall": iv.wall, "loss": float(loss.detach()), "contention": iv.contention})
    return {"steps": out}


# --- profiling (only with --profile) ------------------------------------------------------------------------
def profile(preset: str, batch: int, seq: int, warmup: int, steps: int, out_path: Path) -> None:
    """torch.profiler op tables and a cProfile of the Python side, for the same timed steps of both loops.

    The trainer is profiled from the end of its warm-up to the end of the last timed step by starting and
    stopping the profilers in its metrics writer (``loop.MetricsLog`` is swapped for a subclass only here).
    """
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    import rankscope.training.loop as loop

    report = io.StringIO()
    for impl in ("bare", "trainer"):
        prof = tprofile(activities=[ProfilerActivity.CPU])
        pyprof = cProfile.Profile()
        t = {}
        if impl == "trainer":
            base = loop.MetricsLog

            class Hooked(base):  # type: ignore[misc, valid-type]
                # bound now (this iteration's profilers), not looked up when write() runs
                _prof, _pyprof, _t = prof, pyprof, t

                def write(self, kind, step, **values):
                    if kind == "train" and step == warmup + steps:
                        self._pyprof.disable()
                        self._prof.stop()
                        self._t["end"] = time.perf_counter()
                    super().write(kind, step, **values)
                    if kind == "train" and step == warmup:
                        self._t["start"] = time.perf_counter()
                        self._prof.start()
                        self._pyprof.enable()

            loop.MetricsLog = Hooked
            tmp = tempfile.mkdtemp(prefix="rankscope_bench_prof_")
            try:
                loop.train(run_cfg(preset, batch, seq, tmp, "run"), progress=False, stop_after=warmup + steps)
            finally:
                loop.MetricsLog = base
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            cfg = model_config(preset)
            torch.manual_seed(0)
            model = LlamaLM(cfg)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
            ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
            x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
            for i in range(warmup + steps):
                if i == warmup:
                    t["start"] = time.perf_counter()
                    prof.start()
                    pyprof.enable()
                loss = F.cross_entropy(model(x).reshape(-1, cfg.vocab_size), y.reshape(-1))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            pyprof.disable()
            prof.stop()
            t["end"] = time.perf_counter()
        report.write(f"\n===== {impl}: {steps} steps, {t['end'] - t['start']:.3f} s wall =====\n")
        report.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        s = io.StringIO()
        pstats.Stats(pyprof, stream=s).sort_stats("cumulative").print_stats(40)
        report.write(s.getvalue())
        gc.collect()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(report.getvalue())
    print(f"profile written to {out_path}")


# --- aggregation --------------------------------------------------------------------------------------------
def aggregate(preset: str, runs: dict[str, list[dict]], warmup: int, tokens: int, flops_tok: float,
              ceiling: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    per_repeat_median: dict[str, list[float]] = {}
    for impl, reps in runs.items():
        timed = [s for rep in reps for s in rep["steps"] if s["step"] > warmup]
        walls = [s["wall"] for s in timed]
        cont = [s["contention"] for s in timed]
        st = summarize(walls, cont)
        per_repeat_median[impl] = [statistics.median(s["wall"] for s in rep["steps"] if s["step"] > warmup)
                                   for rep in reps]
        best_tok, med_tok = tokens / st["min"], tokens / st["median"]
        out[impl] = {
            "step_s": st, "tok_per_s_best": best_tok, "tok_per_s_median": med_tok,
            "mfu_best": best_tok * flops_tok / ceiling, "mfu_median": med_tok * flops_tok / ceiling,
            "per_repeat_median_step_s": per_repeat_median[impl],
            "steps": [[round(s["wall"], 4), round(s["contention"], 4)] for s in timed],
            "first_loss": reps[0]["steps"][0]["loss"],
        }
        if impl == "trainer":
            ri = [s["record_interval"] for s in timed if s["record_interval"] is not None]
            out[impl]["record_interval_median_s"] = statistics.median(ri) if ri else None
    tr, ba = out["trainer"]["step_s"], out["bare"]["step_s"]
    paired = [a / b for a, b in zip(per_repeat_median["trainer"], per_repeat_median["bare"])]
    out["overhead"] = {
        "ratio_min": tr["min"] / ba["min"], "ratio_median": tr["median"] / ba["median"],
        "paired_repeat_ratios": paired, "paired_ratio_min": min(paired), "paired_ratio_median": statistics.median(paired),
        "both_mins_clean": tr["min_is_clean"] and ba["min_is_clean"],
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["60m", "tiny"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=20, help="GEMM calls per shape for the ceiling")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--profile", metavar="PRESET", help="only profile both loops on PRESET, write a text report")
    ap.add_argument("--malloc", choices=("retain", "system"), default="retain",
                    help="retain: the trainer's default glibc setting (rankscope/allocator.py), applied to the whole "
                         "process so both loops get it; system: glibc defaults for both")
    args = ap.parse_args()
    global RETAIN
    RETAIN = args.malloc == "retain"
    if RETAIN and not retain_freed_memory():
        print("note: not glibc, --malloc retain has no effect")
    torch.set_num_threads(args.threads)
    tokens = args.batch * args.seq

    if args.profile:
        profile(args.profile, args.batch, args.seq, args.warmup, args.steps,
                args.out.with_name(f"train_profile_{args.profile}.txt"))
        return

    info = system_info()
    info["malloc"] = ("glibc mallopt: no mmap, no trim (rankscope/allocator.py)" if RETAIN else "glibc defaults")
    print(json.dumps(info, indent=1))
    shapes: dict[str, tuple[int, int, int]] = {}
    for p in args.presets:
        shapes.update(ceiling_shapes(p, tokens))
    ceiling_primary = "60m" if "60m" in args.presets else args.presets[0]
    ceilings = []

    def measure_ceiling(label: str) -> None:
        res = gemm_ceiling(shapes, calls=args.calls)
        ceilings.append({"when": label, "shapes": res})
        best = max(v["gflops_best"] for k, v in res.items() if k.startswith(ceiling_primary + " "))
        print(f"[ceiling {label}] " + ", ".join(f"{k}: {v['gflops_best']:.1f} GF/s (cont {v['contention']:.0%})"
                                                 for k, v in res.items()) + f" -> best {best:.1f}", flush=True)

    runs: dict[str, dict[str, list]] = {p: {"trainer": [], "bare": []} for p in args.presets}
    t_start = time.time()
    with ContentionSampler() as sampler:
        measure_ceiling("start")
        for r in range(args.repeats):
            for p in args.presets:
                order = ("trainer", "bare") if r % 2 == 0 else ("bare", "trainer")
                for impl in order:
                    gc.collect()
                    if impl == "trainer":
                        res = trainer_run(p, args.batch, args.seq, args.warmup, args.steps, sampler)
                    else:
                        res = bare_run(p, args.batch, args.seq, args.warmup, args.steps)
                    runs[p][impl].append(res)
                    timed = [s for s in res["steps"] if s["step"] > args.warmup]
                    print(f"[repeat {r} {p} {impl}] step s: " +
                          " ".join(f"{s['wall']:.3f}({s['contention']:.0%})" for s in timed), flush=True)
            measure_ceiling(f"after repeat {r}")

    # Ceiling: the highest best-of-N among the primary preset's shapes over clean blocks (all blocks if none).
    blocks = [(v["gflops_best"], v["contention"], c["when"], k) for c in ceilings for k, v in c["shapes"].items()
              if k.startswith(ceiling_primary + " ")]
    clean = [b for b in blocks if b[1] <= CLEAN_LIMIT]
    best = max(clean or blocks)
    ceiling = {"gflops": best[0], "shape": best[3], "when": best[2], "contention": best[1],
               "from_clean_block": bool(clean),
               "start_gflops": max(v["gflops_best"] for k, v in ceilings[0]["shapes"].items()
                                   if k.startswith(ceiling_primary + " ")),
               "all": ceilings}

    results: dict[str, Any] = {}
    for p in args.presets:
        cfg = model_config(p)
        n_mm = matmul_params(cfg)
        f_tok = flops_per_token(cfg, n_mm, args.seq)
        results[p] = {"n_mm": n_mm, "flops_per_token": f_tok,
                      "token_limit_at_ceiling": best[0] * 1e9 / f_tok,
                      **aggregate(p, runs[p], args.warmup, tokens, f_tok, best[0] * 1e9)}
    out = {
        "benchmark": "bench_train", "targets": {"mfu_best_60m": 0.75, "mfu_best_tiny": 0.50, "overhead_max": 1.05},
        "command": " ".join([".venv/bin/python"] + sys.argv),
        "settings": {"presets": args.presets, "batch": args.batch, "seq": args.seq, "warmup": args.warmup,
                     "steps": args.steps, "repeats": args.repeats, "threads": args.threads, "calls": args.calls,
                     "method": "full_rank (fused AdamW)", "precision": "fp32", "clean_limit": CLEAN_LIMIT,
                     "malloc": args.malloc},
        "system": {**info, "loadavg_end": list(__import__("os").getloadavg()), "wall_seconds": time.time() - t_start},
        "gemm_ceiling": ceiling,
        "results": results,
    }
    write_json(args.out, out)
    print(f"\nceiling {best[0]:.1f} GFLOP/s ({best[3]}, {best[2]}, contention {best[1]:.0%})")
    for p in args.presets:
        r = results[p]
        for impl in ("trainer", "bare"):
            x = r[impl]
            print(f"{p:>5} {impl:>7}: step min {x['step_s']['min']:.3f} s (clean {x['step_s']['n_clean']}/"
                  f"{x['step_s']['n']}) median {x['step_s']['median']:.3f} s | tok/s {x['tok_per_s_best']:.0f} / "
                  f"{x['tok_per_s_median']:.0f} | MFU {x['mfu_best']:.3f} / {x['mfu_median']:.3f} | contention "
                  f"median {x['step_s']['contention_median']:.0%} max {x['step_s']['contention_max']:.0%}")
        o = r["overhead"]
        print(f"{p:>5} overhead trainer/bare: min {o['ratio_min']:.3f}, median {o['ratio_median']:.3f}, "
              f"paired per repeat {[round(v, 3) for v in o['paired_repeat_ratios']]}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
