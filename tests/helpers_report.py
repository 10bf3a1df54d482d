"""A synthetic study folder that follows the study-folder contract, for testing the report.

Training, analysis and evaluation take minutes even at the tiny preset; the report only needs their
files. This writes random but plausible values (losses that fall, perplexities near exp(loss),
barriers ≥ 0, CKA in (0, 1]) so the whole report can be rendered and checked in well under a second
of data generation. Test data: it lives under tests/ (rankscope itself never imports it).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rankscope.report.load import TABLE_COLUMNS

ALL_METHODS = ("full_rank", "galore", "fira", "cola", "sltrain", "relora")
TASKS = ("genre", "bigram_order", "cloze", "sentence_order")
ALPHAS = np.round(np.linspace(-0.003, 0.003, 9), 6)
N_LAYERS = 4
TOKENS_PER_STEP = 2048


def table_row(**fields: Any) -> dict:
    """One diagnostics-table record: every column of ``TABLE_COLUMNS`` present, unset ones None."""
    rec = dict.fromkeys(TABLE_COLUMNS)
    rec.update(fields)
    return rec


def _row(run: str, method: str, seed: int, step: int, metric: str, value: float, **kw: Any) -> dict:
    defaults = dict(scope="model", name="", space="native" if method == "cola" else "dense", mode="default",
                    scale="tiny", n_tokens=65536, settings_hash="synthetic0000", settings="{}", note="", null="",
                    data_seed=DATA_SEEDS.get(run, seed))
    return table_row(**{**defaults, "run": run, "method": method, "seed": seed, "init_seed": seed, "step": step,
                        "metric": metric, "value": value, **kw})


DATA_SEEDS: dict[str, int] = {}  # run -> data seed of the study being written (siblings differ from their seed)


def sibling_name(method: str, seed: int, data_seed: int) -> str:
    """Run name of a data-order sibling, as the study names it (``full_rank_s0_d1``)."""
    return f"{method}_s{seed}_d{data_seed}"


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _write_run(
    root: Path, run: str, method: str, seed: int, steps: int, ckpts: list[int], rng: np.random.Generator
) -> None:
    folder = root / "runs" / run
    data = {"source": "embedded"}
    train = {"steps": steps, "seed": seed, "lr": 1e-3}
    cfg = dict(name=run, model="tiny", method=method, method_options={}, data=data, train=train)
    _write_json(folder / "config.json", cfg)
    meta = dict(method=method, seed=seed, init_seed=seed, data_seed=DATA_SEEDS.get(run, seed), package_version="0.1.0",
                init_fingerprint="sha1:0", world_size=1)
    _write_json(folder / "meta.json", meta)
    params = 6_500_000 if method != "cola" else 4_200_000
    trainable = params if method != "relora" else 2_100_000
    state = int(2 * trainable * (0.35 if method in ("galore", "fira") else 1.0))
    summary = dict(
        params=params,
        trainable=trainable,
        state_elements=state,
        state_bytes=4 * state,
        theory_state_elements=state,
    )
    _write_json(folder / "memory.json", {"summary": summary, "rows": []})
    offset = {"full_rank": 0.0, "galore": 0.08, "fira": 0.05}.get(method, 0.15)
    lines = []
    for step in range(10, steps + 1, 10):
        loss = 4.0 + 6.0 * math.exp(-step / (steps / 4)) + offset + rng.normal(0, 0.05)
        lines.append(
            dict(
                kind="train",
                step=step,
                loss=loss,
                lr=1e-3,
                tokens=step * TOKENS_PER_STEP,
                tok_per_s=9000.0,
                elapsed=step * 0.2,
            )
        )
    for step in ckpts:
        val = 4.1 + 6.0 * math.exp(-step / (steps / 4)) + offset + rng.normal(0, 0.02)
        lines.append(
            dict(kind="eval", step=step, val_loss=val, val_ppl=math.exp(val), tokens=step * TOKENS_PER_STEP)
        )
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def _run_rows(run: str, method: str, seed: int, ckpts: list[int], rng: np.random.Generator) -> list[dict]:
    """Landscape, consecutive-barrier, spectra and activation rows shaped like the real producers'."""
    rows: list[dict] = []
    sharp = {"full_rank": 0.9}.get(method, 0.5)
    for i, step in enumerate(ckpts):
        t = (i + 1) / len(ckpts)

        def r(metric: str, value: float, at: int = step, **kw: Any) -> None:
            rows.append(_row(run, method, seed, at, metric, value, **kw))

        r("rand_sharpness", sharp * (0.5 + t) + rng.normal(0, 0.02), stderr=0.02)
        r("rand_variance", 0.01 * (1 + t) + abs(rng.normal(0, 1e-3)), stderr=1e-3)
        r("rand_center_gap", abs(rng.normal(0, 1e-3)))
        r("pca_top1_sharpness", (1.4 - sharp) * t + rng.normal(0, 0.02), stderr=0.02)
        r("pca_topk_sharpness", 0.3 * t + rng.normal(0, 0.01), stderr=0.01)
        r("pca_topk_variance", 0.002 * t, stderr=2e-4)
        for metric, curv in (("rand_curve", sharp), ("pca_top1_curve", 1.4 - sharp), ("pca_topk_curve", 0.3)):
            for a in ALPHAS:
                loss = 4.2 + curv * t * (a / ALPHAS.max()) ** 2 + rng.normal(0, 0.003)
                r(metric, loss, scope="curve", name=f"{a:.6g}")
        if i > 0:  # consecutive pairs: step = earlier checkpoint, step_b = later (as the analyzer writes)
            b = abs(rng.normal(0.02, 0.01)) / t
            pair = dict(at=ckpts[i - 1], step_b=step)
            r("ckpt_barrier", b, stderr=0.005, **pair)
            r("ckpt_barrier_rel", b / 4.5, **pair)
            r("ckpt_barrier_lin", b * 0.8, **pair)
            for a in np.linspace(0, 1, 5):  # an interpolation path, not a landscape: must stay out of it
                r("ckpt_curve", 4.2 + b * 4 * a * (1 - a), scope="curve", name=f"{a:.6g}", **pair)
            r("dw_rel_fro", 0.2 / (i + 1) + abs(rng.normal(0, 0.005)), **pair)
            r("dw_erank", 20.0 / (i + 1) + 5, **pair)
            r("dw_stable_rank", 3.0 / (i + 1) + 1, **pair)
        drop = 0.3 if method in ("cola", "sltrain", "relora") else 0.1
        for metric, base in (("w_erank", 60.0), ("w_stable_rank", 8.0)):
            r(metric, base * (1 - drop * t) + rng.normal(0, 0.3), space=_space(method, "linear_product"))
            if method == "cola":  # CoLA's factor rows: a different space that must not be averaged in
                r(metric, 1000.0, space="factor")
        r("w_spectral_gap", 0.2 + 0.3 * t)
        r("w_n_sv_gt_0p1", 40 + 10 * t)
        sibling = run in SIBLINGS  # a full-rank data-order sibling: its CKA to the reference is the ceiling
        gap = 0.02 if sibling else {"full_rank": 0.0, "galore": 0.05}.get(method, 0.15)
        layers = range(N_LAYERS + 2)  # 0 = embedding output, 1..L blocks, L+1 = final-norm output
        exact = method == "full_rank" and not sibling
        cka = [1.0 if exact else 1 - gap * (k + 1) / N_LAYERS * (0.5 + t) for k in layers]
        null = "sibling" if sibling else ""
        for layer, c in zip(layers, cka, strict=True):
            c = float(np.clip(c + (0 if exact else rng.normal(0, 0.005)), 0, 1))
            r("act_cka", c, scope="layer", name=str(layer), stderr=0.003, null=null)
            r("act_cos", c * 0.98, scope="layer", name=str(layer), null=null)
            r("act_rel_l2", (1 - c) * 1.5, scope="layer", name=str(layer), null=null)
        r("act_cka", float(np.mean(cka)) + (rng.normal(0, 0.003) if sibling else 0.0), stderr=0.002, null=null)
        r("act_rel_l2", float(1 - np.mean(cka)) * 1.5, stderr=0.003, null=null)
    return rows


def _space(method: str, cola_space: str) -> str:
    return cola_space if method == "cola" else "dense"


SIBLINGS: set[str] = set()


def _imib_rows(runs: dict[str, tuple[str, int]], ckpts: list[int], rng: np.random.Generator) -> list[dict]:
    """One row per unordered paired (same init and data seed) pair of methods; ``name`` is the other *run*, as
    interpolation.py writes it. Sibling pairs (one method, same start) get small barriers and null "sibling"."""
    rows = []
    for (ra, (ma, sa)), (rb, (mb, sb)) in itertools.combinations(runs.items(), 2):
        if ma == mb and sa == sb and (ra in SIBLINGS) != (rb in SIBLINGS):
            ref, sib = (ra, rb) if rb in SIBLINGS else (rb, ra)
            for metric, scale in (("imib", 1.0), ("imib_rel", 0.2), ("imib_lin", 0.7)):
                v = abs(0.04 + rng.normal(0, 0.005))
                rows.append(_row(ref, ma, sa, ckpts[-1], metric, v * scale, stderr=0.01, scope="pair", name=sib,
                                 null="sibling"))
            continue
        if sa != sb or ma == mb or DATA_SEEDS.get(ra, sa) != DATA_SEEDS.get(rb, sb):
            continue
        for i, step in enumerate(ckpts):
            excluded = "cola" in (ma, mb)
            value = math.nan if excluded else 0.05 + 0.4 * (i + 1) / len(ckpts) + rng.normal(0, 0.02)
            kw = dict(scope="pair", name=rb, note="excluded: no dense form" if excluded else "")
            for metric, scale in (("imib", 1.0), ("imib_rel", 0.2), ("imib_lin", 0.7)):
                se = math.nan if excluded else 0.01
                rows.append(_row(ra, ma, sa, step, metric, value * scale, stderr=se, **kw))
    return rows


def _downstream_rows(runs: dict[str, tuple[str, int]], ckpts: list[int], rng: np.random.Generator) -> list:
    rows = []
    for run, (method, seed) in runs.items():
        accs = []
        for task in TASKS:
            acc = float(np.clip(0.55 + rng.normal(0, 0.05), 0, 1))
            accs.append(acc)
            half = 1.96 * math.sqrt(acc * (1 - acc) / 400)
            rows.append(
                _row(
                    run,
                    method,
                    seed,
                    ckpts[-1],
                    "acc",
                    acc,
                    scope="task",
                    name=task,
                    ci_low=acc - half,
                    ci_high=acc + half,
                    stderr=half / 1.96,
                )
            )
        rows.append(_row(run, method, seed, ckpts[-1], "avg_acc", float(np.mean(accs)), name="average"))
    return rows


def _write_prediction(results: Path, n_runs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _write_json(
        results / "prediction.json",
        {
            "n_runs": n_runs,
            "features": ["log_ppl", "rand_sharpness", "act_cka"],
            "baseline": {"r2": 0.21, "mae": 0.031, "spearman": 0.4, "r2_ci": [-0.4, 0.6]},
            "extended": {"r2": 0.35, "mae": 0.027, "spearman": 0.55, "r2_ci": [-0.3, 0.7]},
            "difference": {"r2": 0.14, "r2_ci": [-0.2, 0.45]},
            "weights": {"log_ppl": -0.8, "rand_sharpness": 0.1, "act_cka": 0.3},
            "warnings": ["tiny n: exploratory only"],
        },
    )
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.plot([0.4, 0.7], [0.4, 0.7], "k--")
    ax.set_xlabel("measured")
    ax.set_ylabel("predicted")
    fig.savefig(results / "prediction.png", dpi=60)
    plt.close(fig)


def make_synthetic_study(
    directory: str | Path,
    methods: Sequence[str] = ALL_METHODS,
    steps: int = 200,
    seeds: Sequence[int] = (0,),
    n_checkpoints: int = 4,
    rng_seed: int = 0,
    siblings: int = 1,
) -> Path:
    """Write a complete synthetic study folder at ``directory`` and return its path.

    ``siblings``: data-order siblings of full-rank per seed (``full_rank_s0_d1``, ...): the within-method null."""
    root = Path(directory)
    rng = np.random.default_rng(rng_seed)
    ckpts = [int(round(steps * (i + 1) / n_checkpoints)) for i in range(n_checkpoints)]
    runs = {f"{m}_s{s}": (m, s) for m in methods for s in seeds}
    DATA_SEEDS.clear()
    SIBLINGS.clear()
    if "full_rank" in methods:
        for s in seeds:
            for d in range(max(seeds) + 1, max(seeds) + 1 + siblings):  # data seeds no main run uses
                name = sibling_name("full_rank", s, d)
                runs[name] = ("full_rank", s)
                DATA_SEEDS[name] = d
                SIBLINGS.add(name)
    _write_json(
        root / "study.json",
        {
            "preset": "cpu-demo",
            "model": "tiny",
            "methods": list(methods),
            "seeds": list(seeds),
            "steps": steps,
            "checkpoint_steps": ckpts,
            "data": {"source": "embedded", "label": "embedded corpus"},
        },
    )
    jobs = [
        {"id": f"{stage}:{run}", "stage": stage, "run": run, "state": "done", "seconds": 1.5, "error": None}
        for run in runs
        for stage in ("train", "analyze", "eval")
    ]
    _write_json(root / "status.json", {"jobs": jobs})
    diag: list[dict] = []
    for run, (method, seed) in runs.items():
        _write_run(root, run, method, seed, steps, ckpts, rng)
        diag += _run_rows(run, method, seed, ckpts, rng)
    diag += _imib_rows(runs, ckpts, rng)
    results = root / "results"
    results.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(diag, columns=TABLE_COLUMNS).to_parquet(results / "diagnostics.parquet", index=False)
    down = _downstream_rows(runs, ckpts, rng)
    pd.DataFrame(down, columns=TABLE_COLUMNS).to_parquet(results / "downstream.parquet", index=False)
    _write_prediction(results, len(runs))
    _write_json(results / "timings.json", {"train": 120.0, "analyze": 80.5, "eval": 12.25, "predict": 0.8})
    return root
