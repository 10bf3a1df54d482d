"""Learning-rate sweep per method on a study preset's own run settings (docs/study.md "Learning rates").

Why: a comparison at parity is only fair when no method is held back by its learning rate at the size the study
runs. This trains every method × learning rate with exactly the run config the study would write (schedule,
steps, batch, data, held-out source), `parallel` at a time with cores // parallel threads each, then prints the
validation perplexity at every evaluation step and which rate is best per method. Re-running skips finished
runs (each is a plain `rankscope train --config ... --resume`).

    python scripts/lr_sweep.py --preset demo --factors 0.5,1,2 --out study_out/lr_sweep
    python scripts/lr_sweep.py --preset demo --methods full_rank --lrs 1e-3,3e-3 --out study_out/lr_sweep
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from rankscope.data.ngram_baselines import study_baselines
from rankscope.study.config_file import load_study_config
from rankscope.study.launch import thread_env
from rankscope.training.logging import read_metrics


def sweep_configs(preset: str, methods: list[str] | None, lrs: list[float], out: Path,
                  relative: bool = False) -> list[tuple[str, float, Path]]:
    """One run config per method × lr, identical to the study's except the rate and the name.

    With ``relative`` the rates are factors of each method's default rate at the preset's model size.
    """
    study = load_study_config(preset)
    configs = []
    for cfg in study.to_run_configs(out):
        if cfg.train.seed != study.seeds[0] or cfg.train.data_seed not in (-1, cfg.train.seed):
            continue  # one run per method: the first seed, not its data-order siblings
        if methods and cfg.method not in methods:
            continue
        base = cfg.method_config().lr if relative else 1.0
        for lr in (float(f"{base * x:.3g}") for x in lrs):
            d = dataclasses.asdict(cfg)
            d["name"] = f"{cfg.method}_lr{lr:g}"
            d["train"]["lr"] = lr
            path = out / "configs" / f"{d['name']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(d, indent=1))
            configs.append((cfg.method, lr, path))
    return configs


def run_all(configs: list[tuple[str, float, Path]], parallel: int) -> None:
    """`parallel` trainings at a time; a failed run is reported and the sweep goes on."""
    env, pending, running = thread_env(parallel), list(configs), []
    while pending or running:
        while pending and len(running) < parallel:
            method, lr, path = pending.pop(0)
            cmd = [sys.executable, "-m", "rankscope", "train", "--config", str(path), "--resume", "--quiet"]
            running.append((method, lr, subprocess.Popen(cmd, env=env)))
        method, lr, proc = running.pop(0)
        if proc.wait() != 0:
            print(f"warning: {method} at lr {lr:g} failed (exit {proc.returncode})", file=sys.stderr)


def table(configs: list[tuple[str, float, Path]], out: Path, unigram: float) -> str:
    """Markdown: validation perplexity at each evaluation step; the best final rate per method in bold."""
    rows, best = [], {}
    for method, lr, _ in configs:
        evals = [r for r in read_metrics(out / "runs" / f"{method}_lr{lr:g}") if r.get("kind") == "eval"]
        curve = {r["step"]: r["val_ppl"] for r in evals}
        rows.append((method, lr, curve))
        if curve and (method not in best or curve[max(curve)] < best[method][1]):
            best[method] = (lr, curve[max(curve)])
    steps = sorted({s for _, _, c in rows for s in c})
    lines = [f"| method | lr | {' / '.join(map(str, steps))} | past unigram ({unigram:.1f}) |",
             "|---|---|---|---|"]
    for method, lr, curve in rows:
        ppl = " / ".join(f"{curve[s]:.0f}" if s in curve else "-" for s in steps)
        final = curve[max(curve)] if curve else float("inf")
        mark = "**" if best.get(method, (None,))[0] == lr else ""
        lines.append(f"| {method} | {mark}{lr:g}{mark} | {ppl} | {'yes' if final < unigram else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--methods", default="", help="comma list (default: the preset's methods)")
    ap.add_argument("--lrs", default="", help="comma list of peak learning rates")
    ap.add_argument("--factors", default="", help="comma list of factors of each method's default rate")
    ap.add_argument("--out", default="study_out/lr_sweep")
    ap.add_argument("--parallel", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out).resolve()
    methods = [m for m in args.methods.split(",") if m] or None
    if bool(args.lrs) == bool(args.factors):
        ap.error("give one of --lrs and --factors")
    grid = [float(x) for x in (args.lrs or args.factors).split(",")]
    configs = sweep_configs(args.preset, methods, grid, out, relative=bool(args.factors))
    run_all(configs, args.parallel)
    unigram = study_baselines(load_study_config(args.preset).to_run_configs(out)[0]).unigram_ppl
    text = table(configs, out, unigram)
    (out / "sweep.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
