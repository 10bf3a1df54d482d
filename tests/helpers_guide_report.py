"""Synthetic guide studies for the report's guide section (rankscope/report/guide_closure.py, guide_cost.py):
tables with known distances to full-rank, the parity cost rows, and a whole study folder with guided arms."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from helpers_report import DATA_SEEDS, N_LAYERS, TABLE_COLUMNS, _row, _write_json, make_synthetic_study

# ---- guide studies (rankscope/report/guide_closure.py) ----

GUIDE_FLOOR = {"barrier": 0.04, "activations": 0.02, "alpha": 0.05, "stable_rank": 0.02}  # FR sibling distances
GUIDE_GAP = {"barrier": 0.40, "activations": 0.20, "alpha": 0.50, "stable_rank": 0.30}  # unguided distances


def _guide_run_rows(run: str, method: str, seed: int, d: dict[str, float], step: int, ref: str,
                    null: str = "", sharp: tuple[float, float] = (0.5, 0.9)) -> list[dict]:
    """Rows that put ``run`` at distances ``d`` (per measure) from its full-rank reference ``ref``."""
    rows = [_row(run, method, seed, step, "w_alpha", 3.0 + d["alpha"]),
            _row(run, method, seed, step, "w_stable_rank", 8.0 * math.exp(d["stable_rank"])),
            _row(run, method, seed, step, "rand_sharpness", sharp[0]),
            _row(run, method, seed, step, "pca_top1_sharpness", sharp[1])]
    if run != ref:
        rows.append(_row(run, method, seed, step, "imib", d["barrier"], scope="pair", name=ref, null=null))
        for layer in range(N_LAYERS + 2):
            rows.append(_row(run, method, seed, step, "act_cka", 1.0 - d["activations"], scope="layer",
                             name=str(layer), null=null))
    return rows


def guide_study_tables(seeds: Sequence[int] = (0, 1, 2), closes: dict[str, float] | None = None,
                       noise: float = 0.005, rng_seed: int = 0, guide: str = "sam", method: str = "galore",
                       siblings: bool = True, pure_noise: bool = False, extra_flops: float = 0.2,
                       cost_matched: dict[str, float] | None = None, acc_change: float = 0.0):
    """Synthetic tables of a guide study: (diagnostics, downstream, arms, ppl).

    Per seed: full_rank_s{s} (the reference), a sibling full_rank_s{s}_d9 at the floor distances, the unguided
    ``method`` run at GUIDE_GAP, its guided arm moved a fraction ``closes[measure]`` of the way to the floor, and
    optionally a cost-matched control moved ``cost_matched[measure]`` of the way. Every distance gets N(0, noise).
    ``pure_noise``: every run (unguided, guided, sibling) drawn around the floor, nothing to find."""
    from rankscope.report.guide_closure import Arm

    rng = np.random.default_rng(rng_seed)
    closes = closes or {}
    step = 100
    diag, down, arms, ppl = [], [], [], {}

    def jitter(base: dict[str, float]) -> dict[str, float]:
        return {k: abs(v + rng.normal(0, noise)) for k, v in base.items()}

    for s in seeds:
        ref, sib = f"full_rank_s{s}", f"full_rank_s{s}_d9"
        DATA_SEEDS.clear()
        diag += _guide_run_rows(ref, "full_rank", s, dict.fromkeys(GUIDE_FLOOR, 0.0), step, ref, sharp=(0.9, 0.4))
        if siblings:
            DATA_SEEDS[sib] = 9
            diag += _guide_run_rows(sib, "full_rank", s, jitter(GUIDE_FLOOR), step, ref, null="sibling",
                                    sharp=(0.9, 0.4))
            DATA_SEEDS.clear()
        gap = GUIDE_FLOOR if pure_noise else GUIDE_GAP
        base, arm = f"{method}_s{s}", f"{method}_s{s}_{guide}"
        moved = {k: gap[k] - (0 if pure_noise else closes.get(k, 0.0)) * (gap[k] - GUIDE_FLOOR[k]) for k in gap}
        diag += _guide_run_rows(base, method, s, jitter(gap), step, ref)
        diag += _guide_run_rows(arm, method, s, jitter(moved), step, ref)
        arms.append(Arm(arm, method, guide, "guided", base, extra_flops))
        runs = [base, arm]
        if cost_matched is not None:
            cm = f"{method}_s{s}_cm_{guide}"
            cm_d = {k: gap[k] - cost_matched.get(k, 0.0) * (gap[k] - GUIDE_FLOOR[k]) for k in gap}
            diag += _guide_run_rows(cm, method, s, jitter(cm_d), step, ref)
            arms.append(Arm(cm, method, guide, "cost_matched", base, 0.0))
            runs.append(cm)
        for run in runs:
            acc = 0.6 + (acc_change if run == arm else 0.0) + rng.normal(0, 0.005)
            down.append(_row(run, method, s, step, "avg_acc", acc, name="average"))
            ppl[run] = 50.0
    cols = TABLE_COLUMNS
    return (pd.DataFrame(diag, columns=cols), pd.DataFrame(down, columns=cols), arms, ppl)


BASE_FLOPS_TO_TARGET = 2.0e12  # seed s's unguided run reaches the parity target with (1 + s) times this


def guide_parity(arms, ratios: Sequence[float | None] | float | None, cm_ratio: float | None = None,
                 tokens_ratio: float = 1.0) -> dict:
    """results/parity.json's cost rows for a guide study: every base run reaches the target with
    BASE_FLOPS_TO_TARGET·(1 + seed index) FLOPs, each guided arm with ``ratios[i]`` times its base's (None: the
    arm never reaches it) and ``tokens_ratio`` times its tokens, a cost-matched control with ``cm_ratio`` times."""
    rows: dict[str, dict] = {}

    def row(run: str, method: str, flops: float | None, tokens: float | None) -> None:
        reached = flops is not None
        rows[run] = {"main_run": run, "method": method, "status": "within" if reached else "not_reached",
                     "reached": reached, "run": run if reached else None, "tokens_to_target": tokens,
                     "flops_to_target": flops, "peak_mib": 1000.0 if "+" not in method else 1100.0}

    guided = [a for a in arms if a.role == "guided"]
    ratios = [ratios] * len(guided) if not isinstance(ratios, Sequence) else list(ratios)
    for i, (a, r) in enumerate(zip(guided, ratios, strict=True)):
        flops, tokens = BASE_FLOPS_TO_TARGET * (1 + i), 1e6 * (1 + i)
        row(a.base, a.method, flops, tokens)
        row(a.run, f"{a.method}+{a.guide}", None if r is None else flops * r, None if r is None else tokens * tokens_ratio)
        for c in arms:
            if c.role == "cost_matched" and c.base == a.base:
                row(c.run, f"{a.method} cost-matched to {a.guide}", None if cm_ratio is None else flops * cm_ratio,
                    None if cm_ratio is None else tokens * cm_ratio)
    return {"target": {"ppl": 50.0, "how": "explicit"}, "settings": {"tolerance": 0.02}, "runs": list(rows.values())}


def make_guided_study(directory: str | Path, guide: str = "sam", closes: float = 0.6, seeds: Sequence[int] = (0, 1, 2),
                      methods: Sequence[str] = ("full_rank", "galore", "cola"),
                      parity_ratio: float | None = None, arm_reached: bool = True) -> Path:
    """A synthetic study folder with guided arms: every run of ``methods`` gets an arm ``<run>_<guide>`` whose
    distances to full-rank (IMIB, 1 − CKA, stable-rank ratio) are ``1 − closes`` of its base run's; study.json
    lists the arms (``guide_arms``), as the study writes them. With ``parity_ratio``, results/parity.json holds
    the cost to the parity target (:func:`guide_parity`; the arms' FLOPs are ``parity_ratio`` times their base's,
    or never reached when not ``arm_reached``), with the base runs as parity models."""
    import shutil

    root = make_synthetic_study(directory, methods=methods, seeds=seeds)
    results = root / "results"
    diag = pd.read_parquet(results / "diagnostics.parquet")
    down = pd.read_parquet(results / "downstream.parquet")
    bases = [f"{m}_s{s}" for m in methods for s in seeds]
    keep = 1.0 - closes
    new, arms = [], []
    for base in bases:
        arm = f"{base}_{guide}"
        rows = diag[diag["run"] == base].copy()
        rows["run"] = arm
        cka = rows["metric"].isin(["act_cka", "act_cos"])
        rows.loc[cka, "value"] = 1 - (1 - rows.loc[cka, "value"]) * keep
        pair = diag[(diag["name"] == base) & (diag["metric"].str.startswith("imib"))].copy()
        pair["name"] = arm
        pair["value"] = pair["value"] * keep
        new += [rows, pair]
        d = down[down["run"] == base].copy()
        d["run"] = arm
        down = pd.concat([down, d], ignore_index=True)
        shutil.copytree(root / "runs" / base, root / "runs" / arm)
        method = base.rsplit("_s", 1)[0]
        arms.append({"run": arm, "method": method, "guide": guide, "role": "guided", "base": base,
                     "extra_flops": 1.0 if guide == "sam" else 0.0})
    pd.concat([diag, *new], ignore_index=True).to_parquet(results / "diagnostics.parquet", index=False)
    down.to_parquet(results / "downstream.parquet", index=False)
    study = json.loads((root / "study.json").read_text())
    study["guide_arms"] = arms
    _write_json(root / "study.json", study)
    if parity_ratio is not None:
        from rankscope.report.guide_closure import arms_from_study

        parity = guide_parity(arms_from_study(study), parity_ratio if arm_reached else None)
        parity.update(protocol="wsd-branches", models=bases, curves={b: [{"tokens": 1e6, "ppl": 50.0}] for b in bases})
        _write_json(results / "parity.json", parity)
        (results / "parity").mkdir()
        for name in ("diagnostics.parquet", "downstream.parquet"):
            shutil.copy(results / name, results / "parity" / name)
    return root
