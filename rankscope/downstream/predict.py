"""Does perplexity + geometry predict downstream accuracy better than perplexity alone? (finding F7)

Input is one row per final model (run, method, seed, ppl, metric columns, y = average downstream accuracy),
either given directly (:func:`predict`) or assembled from the long-format diagnostics and downstream tables
(:func:`predict_from_tables`). The numerical core lives in :mod:`rankscope.downstream.predict_cv`.

Outputs: CV R², MAE and Spearman for the log-PPL baseline and the ridge extension under leave-one-out,
leave-one-method-out and, when the table pools several model sizes (a ``scale`` column), leave-one-size-out CV,
bootstrap CIs (a multi-bootstrap over init seeds and items when the table has them, else over models; items are
drawn from the per-item rows when those exist) with a
paired CI of the difference, the chosen features and their standardised weights, how many models it has per
size and per feature, plain warnings, and ``prediction.json`` / ``prediction_features.csv`` /
``prediction.png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rankscope.downstream import predict_cv as cv
from rankscope.downstream.item_rows import acc_matrices, item_average
from rankscope.errors import UserError

HEADLINE = ("rand_sharpness", "rand_variance", "pca_top1_sharpness", "pca_topk_sharpness", "pca_topk_variance",
            "ckpt_barrier", "imib", "w_erank", "w_stable_rank", "w_spectral_gap", "w_n_sv_gt_0p1", "dw_rel_fro",
            "dw_erank", "dw_stable_rank", "act_cka", "act_cos")
PPL_METRICS = ("ppl", "val_ppl", "eval_ppl", "perplexity")
LOSS_METRICS = ("val_loss", "eval_loss", "loss")
ID_COLUMNS = ("run", "method", "seed", "init_seed", "data_seed", "scale", "ppl", "y", "y_se")
SCHEMES = ("loo", "lomo", "loso")  # leave one model / method / size out
MIN_GROUPS = {"loo": 3, "lomo": 3, "loso": 2}  # two sizes already ask "does a fit at one size carry to the other?"
MIN_MODELS = 4  # fewer rows leave nothing to cross-validate: a study with fewer models skips its predict stage
# What the predictor can predict: name -> (downstream-table metric, scope, description). All are read at each
# run's final step; the predictors always start from log in-domain perplexity.
TARGETS = {
    "avg_acc": ("avg_acc", "model", "average zero-shot accuracy on the offline tasks"),
    "shift_nll": ("heldout_nll", "text", "log perplexity (NLL per token) on a shifted held-out text"),
    "ft_acc": ("ft_acc", "finetune", "task accuracy after the fine-tuning probe"),
    "forgetting": ("ft_forgetting", "finetune", "forgetting: in-domain NLL after − before the fine-tuning probe"),
}


@dataclass
class PredictionResult:
    n: int
    features: list[str]
    schemes: dict[str, dict[str, Any]]
    weights: dict[str, float]
    alpha: float
    warnings: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    bootstrap_iters: int = 0
    seed: int = 0
    bootstrap: str = ""  # what the bootstrap resamples (models or init seeds; with or without item noise)
    target: str = "avg_acc"  # a TARGETS key (shift_nll:<text> names the text)
    n_by_size: dict[str, int] = field(default_factory=dict)  # models per model size (scale), when the table has it
    models_per_feature: float = math.nan  # n / (1 + metrics): below ~5 a ridge fit is exploratory
    table: pd.DataFrame | None = field(default=None, repr=False)

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("table")
        for scheme in d["schemes"].values():
            for key in ("pred_baseline", "pred_extended"):
                scheme.pop(key, None)
        return json.dumps(_clean(d), indent=2)

    def gain(self, scheme: str = "loo", metric: str = "r2") -> tuple[float, float, float]:
        """(extended - baseline, CI low, CI high) of one score."""
        s = self.schemes[scheme]
        lo, hi = s["ci"]["diff"][metric]
        return s["diff"][metric], lo, hi

    def write(self, out_dir: str | Path, stem: str | None = None) -> dict[str, Path]:
        """``<stem>.json``, ``<stem>_features.csv``, ``<stem>.png``; stem: prediction[_<target>]."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or target_stem(self.target)
        paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}_features.csv", "png": out / f"{stem}.png"}
        paths["json"].write_text(self.to_json() + "\n", encoding="utf-8")
        table = self.table.copy() if self.table is not None else pd.DataFrame()
        for name, s in self.schemes.items():
            if len(table) == len(s["pred_baseline"]):
                table[f"pred_baseline_{name}"] = s["pred_baseline"]
                table[f"pred_extended_{name}"] = s["pred_extended"]
        table.to_csv(paths["csv"], index=False)
        plot_predictions(self, paths["png"])
        return paths


def target_stem(target: str) -> str:
    """File stem of a target's outputs: ``prediction`` for zero-shot accuracy, else ``prediction_<target>``."""
    if target == "avg_acc":
        return "prediction"
    return "prediction_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in target)


def target_values(downstream_df: pd.DataFrame, target: str = "avg_acc") -> pd.Series:
    """y per run at its final step: a TARGETS key; ``shift_nll:<text>`` picks the held-out text by name."""
    kind, _, text = target.partition(":")
    if kind not in TARGETS:
        raise UserError(f"unknown prediction target {target!r}; choose one of: {', '.join(TARGETS)} "
                        "(shift_nll:<text label> to pick a held-out text)")
    metric, scope, _ = TARGETS[kind]
    if kind == "avg_acc":  # one task set, as the report and F6 use (downstream/average.py)
        from rankscope.downstream.average import primary_task_set

        downstream_df = primary_task_set(downstream_df)
    down = downstream_df[downstream_df["metric"] == metric]
    if kind == "shift_nll":
        names = sorted(set(down["name"].astype(str)) - {"val"})
        if text:
            down = down[down["name"].astype(str) == text]
        elif len(names) == 1:
            down = down[down["name"].astype(str) == names[0]]
        else:
            raise UserError(f"target shift_nll: name the shifted text as shift_nll:<label>; the table has "
                            f"{names or 'no held-out text (run `rankscope ppl --text ...`)'}")
    if down.empty:
        return pd.Series(dtype=float, name="y")
    down = down[down["step"] == down.groupby("run")["step"].transform("max")]
    return down.groupby("run")["value"].mean().rename("y")


def target_se(downstream_df: pd.DataFrame, target: str = "avg_acc") -> pd.Series:
    """Item-level standard error of the target per run, from the evaluator's 95 % interval (empty if none)."""
    kind, _, text = target.partition(":")
    if kind not in TARGETS or not {"ci_low", "ci_high"} <= set(downstream_df.columns):
        return pd.Series(dtype=float, name="y_se")
    down = downstream_df[downstream_df["metric"] == TARGETS[kind][0]]
    if text:
        down = down[down["name"].astype(str) == text]
    elif kind == "shift_nll":
        down = down[down["name"].astype(str) != "val"]
    if down.empty:
        return pd.Series(dtype=float, name="y_se")
    down = down[down["step"] == down.groupby("run")["step"].transform("max")]
    half = (pd.to_numeric(down["ci_high"], errors="coerce") - pd.to_numeric(down["ci_low"], errors="coerce")) / 2
    return (half / 1.959963984540054).groupby(down["run"]).mean().dropna().rename("y_se")


def _clean(obj: Any) -> Any:
    """JSON-safe: numpy scalars/arrays to Python, NaN to null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_clean(v) for v in list(obj)]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def predict(table: pd.DataFrame, features: Sequence[str] | None = None, *, bootstrap_iters: int = 1000,
            seed: int = 0, schemes: Sequence[str] = SCHEMES, target: str = "avg_acc",
            item_acc: Sequence[np.ndarray] | None = None) -> PredictionResult:
    """Fit and cross-validate both predictors on a per-model table (columns: method, ppl, y, metrics...).

    ``item_acc``: per task, ``[rows, n_t]`` per-item correctness aligned with the table's rows (its task average
    must be ``y``); the bootstrap then resamples the items themselves, the same for every model.

    With a ``scale`` column holding several model sizes the models of every size are pooled (as the paper's
    predictor does) and ``loso`` holds out one size at a time: does a fit on the other sizes carry over? With one
    size ``loso`` is skipped with a message."""
    for col in ("method", "ppl", "y"):
        if col not in table.columns:
            raise UserError(f"prediction table needs a {col!r} column; it has {list(table.columns)}")
    table = table.reset_index(drop=True)
    messages: list[str] = []
    from rankscope.diagnostics.registry import canonical_metric  # "imbh" is "imib" (one quantity)

    feats = _default_features(table, messages) if features is None else [canonical_metric(f) for f in features]
    missing = [f for f in feats if f not in table.columns]
    if missing:
        raise UserError(f"feature(s) {missing} are not columns of the prediction table; available: "
                        f"{[c for c in table.columns if c not in ID_COLUMNS]}")
    n, p = len(table), len(feats)
    if n < MIN_MODELS:
        raise UserError(f"prediction needs at least {MIN_MODELS} models (rows), got {n}")
    y = table["y"].to_numpy(float)
    log_ppl = np.log(table["ppl"].to_numpy(float))[:, None]
    x_ext = np.column_stack([log_ppl, table[feats].to_numpy(float)]) if p else log_ppl
    warnings = _warnings(n, p, table)
    sizes = table["scale"].astype(str) if "scale" in table.columns else pd.Series(["" for _ in range(n)])
    groups = {"loo": np.arange(n), "lomo": pd.factorize(table["method"])[0], "loso": pd.factorize(sizes)[0]}
    seed_col = next((c for c in ("init_seed", "seed") if c in table.columns and table[c].notna().all()), None)
    clusters = table[seed_col].to_numpy() if seed_col else None  # multi-bootstrap: seeds ...
    y_se = (table["y_se"].fillna(0.0).to_numpy(float) if "y_se" in table.columns  # ... and items
            and table["y_se"].fillna(0.0).gt(0).any() else None)
    if item_acc is not None:
        item_acc = [np.asarray(m, dtype=float) for m in item_acc]
        if any(m.shape[0] != n for m in item_acc) or not np.allclose(np.mean([m.mean(1) for m in item_acc], 0), y):
            raise ValueError("item_acc must have one row per table row and average to y")
    results: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(schemes):
        if name not in groups:
            raise UserError(f"unknown CV scheme {name!r}; use one of {', '.join(SCHEMES)}")
        if len(np.unique(groups[name])) < MIN_GROUPS[name]:
            what = "one model size only" if name == "loso" else f"fewer than {MIN_GROUPS[name]} groups"
            messages.append(f"{name}: skipped, {what}")
            continue
        res = cv.evaluate_scheme(log_ppl, x_ext, y, groups[name])
        res["ci"] = cv.bootstrap_scheme(log_ppl, x_ext, y, groups[name], iters=bootstrap_iters, seed=seed + k,
                                        clusters=clusters, y_se=y_se, min_groups=MIN_GROUPS[name],
                                        item_acc=item_acc)
        results[name] = res
    weights, alpha = cv.standardised_weights(x_ext, y)
    unit = (f"init seeds ({len(np.unique(clusters))}, every model of a drawn seed together)"
            if clusters is not None and len(np.unique(clusters)) >= 2 else "models (cases)")
    if item_acc is not None:
        items = sum(m.shape[1] for m in item_acc)
        boot = (f"resamples {unit} and, jointly, the test items from per-item rows ({items} items over "
                f"{len(item_acc)} task(s), the same items re-scoring every model)")
    else:
        boot = f"resamples {unit}" + (", each target moved by its item-level error (no per-item rows)"
                                      if y_se is not None else "")
    names = ["log_ppl", *feats]
    return PredictionResult(n=n, features=feats, schemes=results, weights=dict(zip(names, weights.tolist())),
                            alpha=alpha, warnings=warnings, messages=messages, bootstrap_iters=bootstrap_iters,
                            seed=seed, bootstrap=boot, target=target, table=table,
                            n_by_size={str(k): int(v) for k, v in sizes.value_counts().sort_index().items() if k},
                            models_per_feature=n / (p + 1))


def _default_features(table: pd.DataFrame, messages: list[str]) -> list[str]:
    """Headline metrics present in the table (else every numeric non-id column), minus unusable ones."""
    numeric = [c for c in table.columns if c not in ID_COLUMNS and pd.api.types.is_numeric_dtype(table[c])]
    chosen = [c for c in HEADLINE if c in numeric] or numeric
    out = []
    for c in chosen:
        col = table[c]
        if col.isna().any():
            lacking = sorted(table.loc[col.isna(), "method"].astype(str).unique())
            messages.append(f"feature {c!r} dropped from the default set: undefined for {', '.join(lacking)}")
        elif col.nunique() < 2:
            messages.append(f"feature {c!r} dropped from the default set: constant across models")
        else:
            out.append(c)
    return out


def _warnings(n: int, p: int, table: pd.DataFrame) -> list[str]:
    out = []
    if n < 5 * (p + 2):
        out.append(f"only {n} models for {p + 1} features (log-PPL + {p} metrics): results are exploratory; "
                   f"about {5 * (p + 2)} models would be needed for a stable fit, so read the intervals, not "
                   f"the point estimates")
    if table["method"].nunique() < 3:
        out.append("fewer than 3 methods: leave-one-method-out CV is not possible")
    if any(c in table.columns for c in ("act_cka", "act_cos", "act_rel_l2")):
        out.append("activation metrics are measured against the full-rank model, so for full-rank itself they "
                   "are degenerate (CKA = 1) and act as an 'is full-rank' flag")
    return out


def final_values(frame: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Wide table run x metric of model-scope values at each run's final step in ``frame``."""
    f = frame[frame["scope"].fillna("model") == "model"] if "scope" in frame.columns else frame
    if metrics is not None:
        f = f[f["metric"].isin(metrics)]
    if f.empty:
        return pd.DataFrame(index=pd.Index([], name="run"))
    last = f.groupby("run")["step"].transform("max")
    f = f[f["step"] == last]
    return f.pivot_table(index="run", columns="metric", values="value", aggfunc="mean")


def predict_from_tables(diagnostics_df: pd.DataFrame, downstream_df: pd.DataFrame, runs_meta: pd.DataFrame | Sequence[dict],
                        features: Sequence[str] | None = None, target: str = "avg_acc",
                        items: pd.DataFrame | None = None, **kwargs: Any) -> PredictionResult:
    """Assemble the per-run table (final step per run) from long-format tables and run :func:`predict`.

    ``runs_meta`` has one row per run with ``run`` and ``method`` (``seed``, ``scale`` and ``ppl`` optional;
    without ``ppl`` it is read from a ``ppl``-like or ``val_loss``-like metric of the diagnostics table).
    ``y`` is the downstream ``avg_acc`` at each run's final step (else the mean ``acc`` of its tasks), or
    another of :data:`TARGETS` (shifted-text NLL, fine-tuned accuracy, forgetting) read from the same table.
    ``items``: the per-item rows next to the downstream table (downstream/item_rows.py); for ``avg_acc`` the
    bootstrap then resamples the items themselves (older results without them: each target's item SE).
    """
    meta = pd.DataFrame(list(runs_meta)) if not isinstance(runs_meta, pd.DataFrame) else runs_meta.copy()
    if not {"run", "method"} <= set(meta.columns):
        raise UserError(f"runs_meta needs 'run' and 'method' columns; it has {list(meta.columns)}")
    diag = final_values(diagnostics_df)
    if "ppl" not in meta.columns:
        ppl_col = next((c for c in PPL_METRICS if c in diag.columns), None)
        loss_col = next((c for c in LOSS_METRICS if c in diag.columns), None)
        if ppl_col is None and loss_col is None:
            raise UserError("no perplexity: give runs_meta a 'ppl' column or put a 'ppl'/'val_loss' metric in "
                            "the diagnostics table")
        ppl = diag[ppl_col] if ppl_col else np.exp(diag[loss_col])
        meta = meta.merge(ppl.rename("ppl"), left_on="run", right_index=True, how="left")
    avg = target_values(downstream_df, target)
    if avg.empty and target == "avg_acc":  # no avg_acc rows: the same average from the per-task rows
        from rankscope.downstream.average import average_accuracy, primary_task_set

        avg = average_accuracy(primary_task_set(downstream_df))
    meta = meta.merge(avg.rename("y"), left_on="run", right_index=True, how="left")
    se = target_se(downstream_df, target)
    if not se.empty and "y_se" not in meta.columns:
        meta = meta.merge(se.rename("y_se"), left_on="run", right_index=True, how="left")
    drop_cols = set(PPL_METRICS) | set(LOSS_METRICS)
    metric_cols = diag[[c for c in diag.columns if c not in drop_cols]]
    table = meta.merge(metric_cols, left_on="run", right_index=True, how="left")
    lacking = table[table[["ppl", "y"]].isna().any(axis=1)]["run"].tolist()
    if lacking:
        how = {"avg_acc": "rankscope eval", "shift_nll": "rankscope ppl --text ..."}.get(
            target.partition(":")[0], "the fine-tuning probe (rankscope finetune)")
        raise UserError(f"run(s) {lacking} have no perplexity or no downstream value of target {target!r}; run "
                        f"`{how}` "
                        "and the validation step for them, or leave them out of runs_meta")
    mats = acc_matrices(items, list(table["run"])) if target == "avg_acc" else None
    if mats is not None and not np.allclose(item_average(mats), table["y"].to_numpy(float), atol=1e-9):
        mats = None  # the rows do not reproduce the table's average (other items or steps): item SE fallback
    return predict(table, features, target=target, item_acc=list(mats.values()) if mats else None, **kwargs)


def plot_predictions(result: PredictionResult, path: str | Path) -> Path:
    """Predicted (leave-one-out) vs measured accuracy for both predictors, one marker per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scheme = "loo" if "loo" in result.schemes else next(iter(result.schemes), None)
    fig, ax = plt.subplots(figsize=(5, 5))
    if scheme is not None and result.table is not None:
        y = result.table["y"].to_numpy(float)
        s = result.schemes[scheme]
        for key, label, marker in (("baseline", "log-PPL (OLS)", "o"), ("extended", "log-PPL + metrics (ridge)", "^")):
            r2 = s[key]["r2"]
            ax.scatter(y, s[f"pred_{key}"], marker=marker, label=f"{label}, CV R² = {r2:.2f}", alpha=0.8)
        lo, hi = float(np.min(y)), float(np.max(y))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--")
        ax.set_title(f"{result.target}, {scheme.upper()} predictions (n = {result.n})")
    what = TARGETS.get(result.target.partition(":")[0], ("", "", result.target))[2]
    ax.set_xlabel(f"measured: {what}", fontsize=8)
    ax.set_ylabel("predicted")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
