"""The report's "noise floor" section: how far apart two runs of one method are, next to how far apart methods are.

One sentence says how many seeds and siblings the study has and what verdicts that allows; a table puts each
headline metric's sibling spread (data-order siblings: same method, same init seed) beside the between-method
differences (paired by seed, against full-rank); the CKA ceiling per layer sits beside each method's CKA; and a
figure draws every cross-method barrier against the sibling barriers. Negative random-direction sharpness (the loss
falls on both sides: no minimum along those directions) is flagged wherever sharpness appears.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rankscope.report.htmlkit import esc, table
from rankscope.report.nulls import (
    REFERENCE_METRICS,
    SIBLING,
    barriers,
    deciding_metric,
    paired,
    per_run,
    run_seeds,
    sibling_spread,
)
from rankscope.report.plots_common import Figure, fig_to_uri, method_color, ordered, panels
from rankscope.report.seedstats import ALPHA, min_sign_flip_p
from rankscope.report.stats import FULL
from rankscope.report.verdict_rules import MIN_SEEDS

SHARPNESS = ("rand_sharpness", "pca_top1_sharpness", "pca_topk_sharpness")
NEGATIVE_FLAG = "not at a minimum along these directions"


def study_design(diag: pd.DataFrame) -> dict[str, int]:
    """Init seeds, paired seeds (most shared by two methods) and sibling runs of the study's diagnostics table."""
    seeds = run_seeds(diag) if not diag.empty else {}
    by_method: dict[str, set] = {}
    for method, init, data in seeds.values():
        by_method.setdefault(method, set()).add((init, data))
    inits = {k[0] for v in by_method.values() for k in v}
    # the reference seed pair of each init seed is the one most methods share; other data seeds are siblings
    counts: dict[tuple, int] = {}
    for v in by_method.values():
        for k in v:
            counts[k] = counts.get(k, 0) + 1
    methods = len(by_method)
    shared = {k for k, c in counts.items() if c >= 2} if methods >= 2 else set(counts)
    siblings = sum(len(v - shared) for v in by_method.values())
    return {"init_seeds": len(inits), "paired_seeds": len(shared), "siblings": siblings, "methods": methods}


def design_sentence(diag: pd.DataFrame) -> str:
    d = study_design(diag)
    if d["methods"] == 0:
        return "This study has no diagnostics rows yet, so its seeds and siblings are unknown and no finding is decided."
    base = (f"This study has {d['init_seeds']} init seed(s), {d['paired_seeds']} paired seed(s) per method pair and "
            f"{d['siblings']} data-order sibling run(s): ")
    if d["siblings"] == 0:
        return base + ("no within-method null, so no finding can be decided ('no null: run siblings'); add "
                       "data-order siblings of at least full-rank to the study.")
    if d["paired_seeds"] < MIN_SEEDS:
        p = min_sign_flip_p(d["paired_seeds"])
        return base + (f"every finding is measured against a null, but with fewer than {MIN_SEEDS} paired seeds no "
                       f"test can reach p < {ALPHA:g} (minimum attainable p = {p:.2g}), so the strongest words are "
                       "'exceeds the noise floor (exploratory)' and 'within the noise floor'.")
    pairs = d["methods"] * (d["methods"] - 1) // 2
    holm = min_sign_flip_p(d["paired_seeds"], n_tests=max(1, pairs))
    extra = "" if holm < ALPHA else (f" (the barrier test across {pairs} pairs needs more seeds: its smallest "
                                     f"Holm-adjusted p is {holm:.2g})")
    return base + f"enough for confirmatory verdicts (distinct, sharper/flatter, more/less similar){extra}."


def _headline_row(diag: pd.DataFrame, metric: str) -> list | None:
    use, _ = deciding_metric(diag, metric)
    vals = per_run(diag, use)
    if vals.empty:
        return None
    spread, df = sibling_spread(vals)
    diffs = {}
    ceiling = vals.loc[vals["null"] == SIBLING, "value"]
    for m in ordered(set(vals["method"]) - {FULL}):
        if use in REFERENCE_METRICS:  # measured against full-rank: compare with a full-rank sibling (the ceiling)
            mine = vals.loc[(vals["method"] == m) & (vals["null"] != SIBLING), "value"]
            if len(mine) and len(ceiling):
                diffs[m] = float(mine.mean() - ceiling.mean())
            continue
        d, _ = paired(vals, m, FULL)
        if len(d):
            diffs[m] = float(np.mean(d))
    largest = max(diffs.values(), key=abs) if diffs else math.nan
    beyond = [m for m, v in diffs.items() if math.isfinite(spread) and abs(v) > spread]
    negative = sorted(set(vals.loc[vals["value"] < 0, "run"])) if metric in SHARPNESS else []
    ratio = abs(largest) / spread if math.isfinite(spread) and spread > 0 and math.isfinite(largest) else math.nan
    return [use, spread if math.isfinite(spread) else "no siblings", df,
            "; ".join(f"{m} {v:+.3g}" for m, v in diffs.items()) or "–", ratio,
            ", ".join(beyond) or ("none" if math.isfinite(spread) else "–"),
            (NEGATIVE_FLAG + ": " + ", ".join(negative)) if negative else ""]


def ppl_values(runs: list) -> pd.DataFrame:
    """Final validation perplexity per run folder (siblings included), with its seeds from meta.json."""
    recs = []
    for r in runs or []:
        ppl = r.final_val_ppl
        if not math.isfinite(ppl):
            continue
        init = r.meta.get("init_seed", r.seed)
        data = r.meta.get("data_seed", init)
        recs.append((r.name, r.method, init, data, "", ppl))
    return pd.DataFrame(recs, columns=["run", "method", "init_seed", "data_seed", "null", "value"])


def _ppl_row(runs: list) -> list | None:
    vals = ppl_values(runs)
    if vals.empty:
        return None
    spread, df = sibling_spread(vals)
    diffs = {m: float(np.mean(d)) for m in ordered(set(vals["method"]) - {FULL})
             if len(d := paired(vals, m, FULL)[0])}
    largest = max(diffs.values(), key=abs) if diffs else math.nan
    ratio = abs(largest) / spread if math.isfinite(spread) and spread > 0 and math.isfinite(largest) else math.nan
    beyond = [m for m, v in diffs.items() if math.isfinite(spread) and abs(v) > spread]
    return ["final validation perplexity (metrics.jsonl)", spread if math.isfinite(spread) else "no siblings", df,
            "; ".join(f"{m} {v:+.4g}" for m, v in diffs.items()) or "–", ratio,
            ", ".join(beyond) or ("none" if math.isfinite(spread) else "–"), ""]


def headline_table(diag: pd.DataFrame, headline: tuple[str, ...], runs: list | None = None) -> str:
    rows = [r for r in (_ppl_row(runs or []),) if r is not None]
    rows += [r for m in headline if m != "imib" and (r := _headline_row(diag, m)) is not None]
    if not rows:
        return '<p class="missing">No per-run headline metrics in the diagnostics table.</p>'
    return table(["metric (deciding estimator)", "sibling spread (SD)", "n_null (df)",
                  "method − full-rank (mean over paired seeds; for CKA-type metrics: − the ceiling)", "largest difference / spread",
                  "methods beyond the spread", "flag"], rows)


def ceiling_table(diag: pd.DataFrame) -> str:
    use, _ = deciding_metric(diag, "act_cka")
    rows = diag[(diag["metric"] == use) & (diag["scope"] == "layer") & diag["value"].notna()]
    if rows.empty:
        return ""
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    ceiling = rows[rows["null"] == SIBLING].groupby("name")["value"].mean()
    ordinary = rows[(rows["null"] != SIBLING) & (rows["method"] != FULL)]
    methods = ordered(ordinary["method"].unique())
    per = ordinary.groupby(["name", "method"])["value"].mean()
    layers = sorted(set(rows["name"]), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    body = [[layer, ceiling.get(layer, math.nan), *(per.get((layer, m), math.nan) for m in methods)]
            for layer in layers]
    note = ("" if not ceiling.empty else
            '<p class="missing">No CKA ceiling rows (a full-rank sibling against the reference): run siblings.</p>')
    return (f"<p>CKA ceiling per layer ({esc(use)}): what a second full-rank run from the same start reaches against "
            "the reference; a method at the ceiling is as similar to full-rank as full-rank is to itself.</p>"
            + table(["layer", "ceiling (full-rank sibling)", *methods], body) + note)


def barrier_table(diag: pd.DataFrame) -> str:
    use, _ = deciding_metric(diag, "imib")
    b = barriers(diag, use)
    if not b.cross:
        return ""
    sv = b.siblings["value"].to_numpy(float)
    null = f"{sv.mean():.4g} (range {sv.min():.4g}–{sv.max():.4g}, n = {len(sv)})" if len(sv) else "no siblings"
    body = [[pair, float(g["value"].mean()), len(g), float(g["value"].mean() / sv.mean()) if len(sv) else "–"]
            for pair, g in sorted(b.cross.items())]
    return (f"<p>Barriers ({esc(use)}): sibling barrier {esc(null)}.</p>"
            + table(["pair", "cross barrier (mean over paired seeds)", "n", "× sibling barrier"], body))


def noise_floor_html(diag: pd.DataFrame, headline: tuple[str, ...], runs: list | None = None) -> str:
    return ("<p>Each headline metric's sibling spread (the standard deviation between runs of one method from one "
            "start, pooled over starts) next to the differences between methods. A difference inside the spread is "
            "what a change of data order alone produces.</p>"
            + headline_table(diag, headline, runs) + barrier_table(diag) + ceiling_table(diag))


def barrier_null_figure(diag: pd.DataFrame) -> Figure:
    fig_ = Figure("barrier-null", "Cross-method barriers against the sibling barriers",
                  "Each dot is one barrier at the final step: between the paired runs of two methods (per seed), or "
                  "between two runs of one method from one start (siblings, grey). Shaded: the siblings' range; "
                  "dashed: 2 × the mean sibling barrier (the 'distinct' threshold).")
    use, _ = deciding_metric(diag, "imib")
    b = barriers(diag, use)
    if not b.cross and b.siblings.empty:
        fig_.missing = "no pair-scope imib rows"
        return fig_
    if b.siblings.empty:
        fig_.missing = "no sibling barriers (null == 'sibling' rows): run data-order siblings"
        return fig_
    pairs = sorted(b.cross)
    fig, (ax,) = panels(1, width=max(5.0, 0.8 * (len(pairs) + 1) + 2), height=3.4)
    sv = b.siblings["value"].to_numpy(float)
    rng = np.random.default_rng(0)
    ax.scatter(rng.uniform(-0.15, 0.15, len(sv)), sv, color="grey", label="siblings", zorder=3)
    ax.axhspan(sv.min(), sv.max(), color="grey", alpha=0.15, lw=0)
    ax.axhline(2 * sv.mean(), color="black", ls="--", lw=1)
    for k, pair in enumerate(pairs, start=1):
        v = b.cross[pair]["value"].to_numpy(float)
        first = pair.split(" ↔ ")[1] if pair.startswith(FULL) else pair.split(" ↔ ")[0]
        ax.scatter(k + rng.uniform(-0.15, 0.15, len(v)), v, color=method_color(first), zorder=3)
    ax.set_xticks(range(len(pairs) + 1), ["siblings", *pairs], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(use)
    ax.grid(axis="y", alpha=0.3)
    fig_.uri = fig_to_uri(fig)
    return fig_
