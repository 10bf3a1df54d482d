"""GaLore / Fira optimizer benchmark: rankscope vs galore-torch 1.0 / fira 1.0.2, side by side (T2, T3).

What it measures, on the 60m preset shapes with realistic gradients (two backward passes of a 60m LlamaLM
on random tokens), 2 threads, the performance.md §8 protocol (interleaved A/B, warm-up, ≥5 timed repeats,
min and median, contention per interval):

* ordinary ``opt.step`` and refresh ``opt.step`` (all 56 projectors recomputed) for the packages and for
  rankscope's default (torch Adam form, gram_eigh) and faithful (folded, svd) settings;
* projector time per backend over all 56 gradients, and retained energy vs an exact SVD;
* optimizer-state bytes vs the methods.md §2.7 formula.

All optimizers share one set of parameters and gradients (their states are separate), so memory stays at
one model plus six optimizer states. Run::

    .venv/bin/python benchmarks/bench_galore.py            # ~5 min on an idle 2-core machine
    .venv/bin/python benchmarks/bench_galore.py --preset smoke --repeats 2 --out /tmp/g.json   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rankscope.methods.registry import get_method
from rankscope.models.llama import LlamaLM
from rankscope.models.presets import model_config
from rankscope.optim import projectors as proj

RESULTS = Path(__file__).parent / "results" / "galore.json"
NEVER = 10**9  # update_proj_gap that never triggers again after the first step


# --- environment and contention (performance.md §8) ------------------------------------------------------
def _busy_seconds() -> float:
    """Machine-wide busy CPU seconds (all cores) from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, share of the machine's CPU used by *other* processes during the call)."""
    busy0, own0, t0 = _busy_seconds(), time.process_time(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    other = (_busy_seconds() - busy0) - (time.process_time() - own0)
    return wall, max(0.0, other) / (wall * (os.cpu_count() or 1))


def summarize(samples: list[tuple[float, float]], limit: float = 0.05) -> dict[str, Any]:
    clean = [w for w, c in samples if c <= limit]
    walls = [w for w, _ in samples]
    return {"min": min(clean or walls), "median": statistics.median(walls), "n": len(walls),
            "clean": len(clean), "contention_max": max(c for _, c in samples), "samples": walls}


def environment(threads: int) -> dict[str, Any]:
    cpu, flags = platform.processor(), ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = info.splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next(line for line in info.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    a = torch.randn(1024, 1024)
    a @ a
    t = min(timed(lambda: a @ a)[0] for _ in range(5))
    return {
        "torch": torch.__version__, "python": sys.version.split()[0], "threads": threads, "cpu": cpu,
        "amx": "amx_tile" in flags, "avx512f": "avx512f" in flags, "cpu_count": os.cpu_count(),
        "blas": "mkl" if "BLAS_INFO=mkl" in torch.__config__.show() else "other",
        "allocator": os.environ.get("LD_PRELOAD", "") or "glibc", "loadavg_start": os.getloadavg(),
        "gemm_gflops_1024": 2 * 1024**3 / t / 1e9,
    }


# --- workload -----------------------------------------------------------------------------------------
def realistic_model(preset: str, batch: int, passes: int) -> tuple[LlamaLM, list, list]:
    """A preset model with gradients from ``passes`` backward passes on random tokens."""
    torch.manual_seed(0)
    model = LlamaLM(model_config(preset))
    for _ in range(passes):
        ids = torch.randint(0, model.config.vocab_size, (batch, 257))
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
    galore = get_method("galore")
    groups = galore(galore.Config.for_preset(preset), None).param_groups(model)
    return model, groups[0]["params"], groups[1]["params"]


def build_optimizers(preset: str, model: LlamaLM, targets: list, extras: list) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import fira
        import galore_torch
    cfg = get_method("galore").Config.for_preset(preset)
    r, lr, alpha = cfg.rank, cfg.lr, cfg.scale
    def pkg_groups(key: str) -> list[dict]:
        return [{"params": extras},
                {"params": targets, "rank": r, "update_proj_gap": NEVER, key: alpha, "proj_type": "std"}]

    opts = {
        "galore_pkg": galore_torch.GaLoreAdamW(pkg_groups("scale"), lr=lr, no_deprecation_warning=True),
        "fira_pkg": fira.FiraAdamW(pkg_groups("alpha"), lr=lr, no_deprecation_warning=True),
    }
    for name in ("galore", "fira"):
        method = get_method(name)
        for label, faithful in (("ours", False), ("ours_faithful", True)):
            c = method.Config.for_preset(preset, faithful_release=faithful, update_proj_gap=NEVER)
            opts[f"{name}_{label}"] = method(c, None).build_optimizer(model)
    return opts


def set_gap(opt: Any, gap: int) -> None:
    """Make the next step a refresh (gap 1) or ordinary (gap NEVER) for either implementation."""
    for group in opt.param_groups:
        if "rank" in group:
            group["update_proj_gap"] = gap
            for p in group["params"]:
                projector = opt.state[p].get("projector")
                if projector is not None and not isinstance(projector, torch.Tensor):
                    projector.update_proj_gap = gap  # the packages copy the gap into a Python object


def bench_steps(opts: dict[str, Any], repeats: int, warmup: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for opt in opts.values():  # first step: state init + one SVD/eigh refresh, not timed
        opt.step()
    for kind, gap in (("ordinary", NEVER), ("refresh", 1)):
        samples: dict[str, list] = {name: [] for name in opts}
        for opt in opts.values():
            set_gap(opt, gap)
        for rep in range(warmup + repeats):
            order = list(opts) if rep % 2 == 0 else list(reversed(opts))  # interleave A/B/A/B, alternate
            for name in order:
                sample = timed(opts[name].step)
                if rep >= warmup:
                    samples[name].append(sample)
        out[kind] = {name: summarize(s) for name, s in samples.items()}
        print(kind, {n: round(v["min"], 3) for n, v in out[kind].items()}, flush=True)
    return out


def bench_projectors(grads: list[torch.Tensor], rank: int, repeats: int, warmup: int) -> dict[str, Any]:
    variants = {
        "svd_as_stored (package)": dict(backend="svd", canonical_signs=False),
        "svd_tall": dict(backend="svd_tall"),
        "gram_eigh": dict(backend="gram_eigh"),
        "gram_eigh_fp64": dict(backend="gram_eigh", dtype=torch.float64),
        "randomized": dict(backend="randomized"),
    }
    samples: dict[str, list] = {k: [] for k in variants}
    for rep in range(warmup + repeats):
        for name, kw in variants.items():
            sample = timed(lambda kw=kw: [proj.top_basis(g, rank, **kw) for g in grads])
            if rep >= warmup:
                samples[name].append(sample)
    out = {}
    sigmas = [torch.linalg.svdvals(g.double()) for g in grads]  # one exact fp64 SVD per matrix
    for name, kw in variants.items():
        energies = [proj.retained_energy(g, proj.top_basis(g, rank, **kw), sigma=s) for g, s in zip(grads, sigmas)]
        out[name] = {**summarize(samples[name]), "energy_mean": statistics.mean(energies),
                     "energy_min": min(energies)}
        print(name, round(out[name]["min"], 3), "energy min", round(out[name]["energy_min"], 6), flush=True)
    return out


def state_bytes(opt: Any) -> dict[str, int]:
    """Bytes of the optimizer-state tensors by category (step counters reported apart)."""
    cats = {"moments": 0, "projectors": 0, "other": 0, "step_counters": 0}
    for st in opt.state.values():
        for key, v in st.items():
            if key == "projector" and not isinstance(v, torch.Tensor):
                v, key = v.ortho_matrix, "projector"  # the packages' Python projector object
            if not isinstance(v, torch.Tensor):
                continue  # the packages' int step
            cat = {"exp_avg": "moments", "exp_avg_sq": "moments", "projector": "projectors",
                   "step": "step_counters"}.get(key, "other")
            cats[cat] += v.numel() * v.element_size()
    cats["total_without_counters"] = cats["moments"] + cats["projectors"] + cats["other"]
    return cats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="60m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"command": " ".join(sys.argv), "preset": args.preset,
                              "env": environment(args.threads)}
    model, targets, extras = realistic_model(args.preset, args.batch, passes=2)
    rank = get_method("galore").Config.for_preset(args.preset).rank
    result["workload"] = {"targets": len(targets), "target_params": sum(p.numel() for p in targets),
                          "extra_params": sum(p.numel() for p in extras), "rank": rank, "batch": args.batch}
    result["projectors"] = bench_projectors([p.grad for p in targets], rank, args.repeats, args.warmup)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))  # partial results survive an interrupted run
    opts = build_optimizers(args.preset, model, targets, extras)
    result["steps"] = bench_steps(opts, args.repeats, args.warmup)
    ratios: dict[str, float] = {}
    for kind in ("ordinary", "refresh"):
        for name in ("galore", "fira"):
            for label in ("ours", "ours_faithful"):
                for stat in ("min", "median"):
                    steps = result["steps"][kind]
                    mine, ref = steps[f"{name}_{label}"][stat], steps[f"{name}_pkg"][stat]
                    ratios[f"{kind}/{name}_{label}/{stat} (ours/pkg time)"] = mine / ref
    for gap in (50, 200):  # amortized optimizer step: (T-1) ordinary + 1 refresh
        for name in ("galore_pkg", "galore_ours", "fira_pkg", "fira_ours"):
            o, r = result["steps"]["ordinary"][name]["min"], result["steps"]["refresh"][name]["min"]
            result.setdefault("amortized_opt_step_min", {})[f"{name}@gap{gap}"] = ((gap - 1) * o + r) / gap
    result["ratios"] = ratios
    cfg_model = model_config(args.preset)
    result["state_bytes"] = {}
    for name, opt in opts.items():
        method = get_method(name.split("_")[0])
        theory = 4 * method.theory_counts(cfg_model, method.Config.for_preset(args.preset))["state"]
        measured = state_bytes(opt)
        result["state_bytes"][name] = {**measured, "theory": theory,
                                       "measured/theory": measured["total_without_counters"] / theory}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    state = {k: v["measured/theory"] for k, v in result["state_bytes"].items()}
    print(json.dumps({"ratios": ratios, "state": state}, indent=1))


if __name__ == "__main__":
    main()
