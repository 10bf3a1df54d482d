"""APOLLO / APOLLO-Mini optimizer benchmark: rankscope vs apollo-torch 1.0.3, side by side in one run.

Same protocol as bench_galore.py (whose helpers it reuses): the 60m preset's 56 target matrices (rank 128
for APOLLO, 1 for Mini) in a projected group and the extras in a plain group of the same optimizer, gradients
from two backward passes of a 60m LlamaLM on random tokens, every optimizer sharing one parameter/gradient
set (separate states), interleaved repeats (order alternated; ordinary and redraw steps interleaved within
each repeat), warm-up, min over clean samples and median.

* ordinary ``opt.step`` and redraw ``opt.step`` (a new P for all 56 targets) for the package and for
  rankscope's default (torch Adam form, P regenerated from its seed every step), ``cache_projection`` (P kept
  between redraws, as the package does) and ``faithful_release`` (folded form, the package's arithmetic);
* optimizer memory: the state tensors (step counters apart) plus, for the package and the cached variant, the
  projection matrices held between steps, against ``theory_counts`` × 4 B.

The package is a test-only dependency (CC-BY-NC); it is imported here only to be timed. Run::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_apollo.py            # 1 thread, ~2 min
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from bench_galore import environment, realistic_model, summarize, timed

from rankscope.methods.registry import get_method
from rankscope.models.presets import model_config

RESULTS = Path(__file__).parent / "results" / "apollo.json"
NEVER = 10**9  # update_proj_gap that never triggers again after the first step


def build_optimizers(preset: str, model: Any, targets: list, extras: list) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import apollo_torch
    opts: dict[str, Any] = {}
    for name in ("apollo", "apollo_mini"):
        method = get_method(name)
        c = method.Config.for_preset(preset, update_proj_gap=NEVER)
        groups = [{"params": extras}, {"params": targets, "rank": c.rank, "update_proj_gap": NEVER,
                                       "scale": c.scale, "proj": "random", "proj_type": "std",
                                       "scale_type": c.scale_type}]
        opts[f"{name}_pkg"] = apollo_torch.APOLLOAdamW(groups, lr=c.lr, scale_front=c.scale_front)
        variants = {"ours": {}, "ours_cached": {"cache_projection": True}}
        for label, kw in variants.items():
            cfg = method.Config.for_preset(preset, update_proj_gap=NEVER, **kw)
            opts[f"{name}_{label}"] = method(cfg, None).build_optimizer(model)
        cfg = method.Config.for_preset(preset, faithful_release=True, update_proj_gap=NEVER)
        opts[f"{name}_ours_faithful"] = method(cfg, None).build_optimizer(model)
    return opts


def set_gap(opt: Any, gap: int) -> None:
    for group in opt.param_groups:
        if "rank" in group:
            group["update_proj_gap"] = gap
            for p in group["params"]:
                projector = opt.state[p].get("projector")
                if projector is not None and not isinstance(projector, torch.Tensor):
                    projector.update_proj_gap = gap  # the package copies the gap into a Python object


def bench_steps(opts: dict[str, Any], repeats: int, warmup: int) -> dict[str, Any]:
    """Ordinary and redraw steps interleaved *within* each repeat (the host drifts between phases)."""
    for opt in opts.values():  # first step: state init + first draw, not timed
        opt.step()
    kinds = (("ordinary", NEVER), ("redraw", 1))
    samples: dict[str, dict[str, list]] = {kind: {name: [] for name in opts} for kind, _ in kinds}
    for rep in range(warmup + repeats):
        order = list(opts) if rep % 2 == 0 else list(reversed(opts))  # alternate A/B order per repeat
        for kind, gap in kinds if rep % 2 == 0 else kinds[::-1]:
            for name in order:
                set_gap(opts[name], gap)
                sample = timed(opts[name].step)
                if rep >= warmup:
                    samples[kind][name].append(sample)
    out = {kind: {name: summarize(s) for name, s in per.items()} for kind, per in samples.items()}
    for kind in out:
        print(kind, {n: round(v["min"], 4) for n, v in out[kind].items()}, flush=True)
    return out


def held_bytes(opt: Any) -> dict[str, int]:
    """Bytes of optimizer memory by category: moments, projections held between steps, other, counters."""
    cats = {"moments": 0, "projections": 0, "other": 0, "step_counters": 0}
    for st in opt.state.values():
        for key, v in st.items():
            if key == "projector" and not isinstance(v, torch.Tensor):
                v, key = v.ortho_matrix, "projections"  # the package's Python projector object
            if not isinstance(v, torch.Tensor):
                continue  # the package's int step and seed
            cat = {"exp_avg": "moments", "exp_avg_sq": "moments", "projections": "projections",
                   "step": "step_counters"}.get(key, "other")
            cats[cat] += v.numel() * v.element_size()
    for _, p in getattr(opt, "_projections", {}).values():  # rankscope's cache (empty unless cached)
        cats["projections"] += p.numel() * p.element_size()
    cats["total_without_counters"] = cats["moments"] + cats["projections"] + cats["other"]
    return cats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="60m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"command": " ".join(sys.argv), "preset": args.preset,
                              "env": environment(args.threads)}
    model, targets, extras = realistic_model(args.preset, args.batch, passes=2)
    result["workload"] = {"targets": len(targets), "target_params": sum(p.numel() for p in targets),
                          "extra_params": sum(p.numel() for p in extras), "batch": args.batch}
    opts = build_optimizers(args.preset, model, targets, extras)
    result["steps"] = bench_steps(opts, args.repeats, args.warmup)
    cfg_model = model_config(args.preset)
    ratios, memory = {}, {}
    for name, opt in opts.items():
        method_name = "apollo_mini" if name.startswith("apollo_mini") else "apollo"
        method = get_method(method_name)
        kw = {"cache_projection": True} if name.endswith("_cached") else {}
        counts = method.theory_counts(cfg_model, method.Config.for_preset(args.preset, **kw))
        memory[name] = {**held_bytes(opt), "theory_state": 4 * counts["state"],
                        "theory_projection_cache": 4 * counts["projection_cache"]}
        if not name.endswith("_pkg"):
            for kind in ("ordinary", "redraw"):
                for stat in ("min", "median"):
                    mine = result["steps"][kind][name][stat]
                    ref = result["steps"][kind][f"{method_name}_pkg"][stat]
                    ratios[f"{kind}/{name}/{stat} (ours/pkg time)"] = mine / ref
    result["memory_bytes"], result["ratios"] = memory, ratios
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({"ratios": ratios, "memory": {k: v["total_without_counters"] for k, v in memory.items()}},
                     indent=1))


if __name__ == "__main__":
    main()
