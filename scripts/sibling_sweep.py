"""Batch-size / steps / learning-rate sweep judged by the sibling spread (docs/study.md "Demo budget").

Why: a method difference means something only when it is large next to what two data-order siblings of one
method differ by. For each variant of a study preset (micro-batch, steps at the same token budget, a factor on
every method's rate) this trains the preset's main runs and its data-order siblings with exactly the run
configs the study would write, `parallel` at a time with one thread each, then prints per variant the final
validation perplexity of every run, the sibling spread (SD over the siblings of each sibling method) and each
method's distance from the reference method's sibling mean in units of that spread. Re-running skips finished
runs (each is a plain `rankscope train --config ... --resume`).

    python scripts/sibling_sweep.py --preset demo --variants mb4x120,mb4x120@1.5 --out study_out/sib_sweep \
        --reuse mb2x240=study_out/demo

A variant ``mbBxS[@F]``: micro-batch B, S updates, every rate × F (default 1); checkpoints keep the preset's
count, ReLoRA's reset period keeps its share of the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
from pathlib import Path

from lr_sweep import run_all

from rankscope.study.config_file import load_study_config, study_from_dict
from rankscope.training.logging import read_metrics

VARIANT = re.compile(r"^mb(\d+)x(\d+)(?:@([0-9.]+))?$")


def parse_variant(text: str) -> tuple[int, int, float]:
    m = VARIANT.match(text)
    if not m:
        raise SystemExit(f"variant {text!r}: expected mbBxS or mbBxS@F, e.g. mb4x120@1.5")
    return int(m[1]), int(m[2]), float(m[3] or 1.0)


def variant_configs(preset: str, variant: str, out: Path) -> list[tuple[str, float, Path]]:
    """The preset's main runs and siblings at this variant, as run-config files under ``out/variant``."""
    mb, steps, factor = parse_variant(variant)
    base = load_study_config(preset)
    d = dataclasses.asdict(base)
    scale = steps / base.steps
    relora = dict(d["method_options"].get("relora", {}))
    for key in ("reset_every", "rewarm"):
        if key in relora:
            relora[key] = max(1, round(relora[key] * scale))
    d.update(micro_batch_size=mb, steps=steps, guides={})
    d["method_options"] = {**d["method_options"], **({"relora": relora} if relora else {})}
    study = study_from_dict({k: v for k, v in d.items() if v is not None}, source=f"variant {variant}")
    folder = out / variant
    configs = []
    for cfg in study.to_run_configs(folder):
        run = dataclasses.asdict(cfg)
        run["train"]["lr"] = float(f"{cfg.method_config().lr * factor:.3g}")
        path = folder / "configs" / f"{cfg.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run, indent=1))
        configs.append((cfg.name, run["train"]["lr"], path))
    return configs


def final_ppl(run_dir: Path) -> float:
    evals = [r for r in read_metrics(run_dir) if r.get("kind") == "eval"]
    return evals[-1]["val_ppl"] if evals else float("nan")


def summary(variant: str, folder: Path, reference: str) -> tuple[str, dict[str, float]]:
    """One markdown row: the sibling spread of the reference and each method's gap in units of it."""
    ppl = {p.name: final_ppl(p) for p in sorted((folder / "runs").iterdir()) if p.is_dir()}
    sibs = [v for k, v in ppl.items() if k == f"{reference}_s0" or k.startswith(f"{reference}_s0_d")]
    sd = statistics.stdev(sibs) if len(sibs) >= 2 else float("nan")
    mean = statistics.fmean(sibs) if sibs else float("nan")
    gaps = {k.removesuffix("_s0"): (v - mean) / sd for k, v in ppl.items()
            if k.endswith("_s0") and not k.startswith(f"{reference}_s0")}
    runs = ", ".join(f"{k} {v:.0f}" for k, v in ppl.items())
    gap_text = ", ".join(f"{k} {g:+.1f}" for k, g in gaps.items())
    median = statistics.median(abs(g) for g in gaps.values()) if gaps else float("nan")
    row = (f"| {variant} | {', '.join(f'{v:.0f}' for v in sibs)} | {sd:.1f} | {gap_text} | {median:.1f} | "
           f"{runs} |")
    return row, {"sibling_sd": sd, "median_abs_gap": median}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--variants", default="mb2x240,mb4x120")
    ap.add_argument("--reference", default="full_rank")
    ap.add_argument("--out", default="study_out/sibling_sweep")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--reuse", action="append", default=[], metavar="VARIANT=STUDY_DIR",
                    help="a variant already trained by a study (its runs/ folder), e.g. mb2x240=study_out/demo")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    variants = [v for v in args.variants.split(",") if v]
    folders = {v: out / v for v in variants}
    for item in args.reuse:
        name, _, folder = item.partition("=")
        parse_variant(name)
        folders[name] = Path(folder).resolve()
    for v in variants:
        configs = variant_configs(args.preset, v, out)
        print(f"variant {v}: {len(configs)} runs", file=sys.stderr, flush=True)
        run_all(configs, args.parallel)
    lines = [f"| variant | {args.reference} siblings (final val ppl) | sibling SD | method − sibling mean, "
             "in sibling SDs | median abs | every run |", "|---|---|---|---|---|---|"]
    lines += [summary(v, folder, args.reference)[0] for v, folder in folders.items()]
    text = "\n".join(lines)
    (out / "sweep.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
