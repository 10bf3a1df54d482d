"""Report panels for "same perplexity, different robustness": distribution shift and fine-tuning pressure.

Reads what the study's ood and finetune stages wrote (``results/heldout.parquet``, ``results/finetune.parquet``,
``results/prediction_targets.json``); every part is optional and an absent one yields an explanatory note.
Numbers are means over seeds of each method's final checkpoint; intervals are the stages' bootstraps
(averaged over seeds when there are several, so with one seed they are that run's interval).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rankscope.report.htmlkit import esc, fmt, fmt_interval, table
from rankscope.report.plots_common import ordered
from rankscope.report.stats import kendall_tau

IN_DOMAIN = "val"


@dataclass
class RobustnessData:
    heldout: pd.DataFrame = field(default_factory=pd.DataFrame)
    finetune: pd.DataFrame = field(default_factory=pd.DataFrame)
    parity_heldout: pd.DataFrame = field(default_factory=pd.DataFrame)  # results/parity/: the parity models
    parity_finetune: pd.DataFrame = field(default_factory=pd.DataFrame)
    targets: dict[str, Any] = field(default_factory=dict)  # target -> prediction json, or why it is absent


def load_robustness(study_dir: str | Path) -> RobustnessData:
    results = Path(study_dir) / "results"
    data = RobustnessData()
    for folder, prefix in ((results, ""), (results / "parity", "parity_")):
        for name in ("heldout", "finetune"):
            path = folder / f"{name}.parquet"
            if path.is_file():
                try:
                    setattr(data, prefix + name, pd.read_parquet(path))
                except (OSError, ValueError):
                    pass
    record_path = results / "prediction_targets.json"
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = {}
        for target, entry in record.items():
            path = results / str(entry)
            if str(entry).endswith(".json") and path.is_file():
                data.targets[target] = json.loads(path.read_text())
            else:
                data.targets[target] = str(entry)
    return data


def _final(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame
    return frame[frame["step"] == frame.groupby("run")["step"].transform("max")]


def _cell(rows: pd.DataFrame) -> str:
    if rows.empty:
        return "–"
    ci = fmt_interval(rows["ci_low"].mean(), rows["ci_high"].mean())
    return f"{fmt(rows['value'].mean())} {ci if ci != '–' else ''}".strip()


def method_means(rows: pd.DataFrame, metric: str, name: str) -> dict[str, float]:
    sub = rows[(rows["metric"] == metric) & (rows["name"].astype(str) == name)]
    return sub.groupby("method")["value"].mean().to_dict()


def ranking_survives(in_domain: dict[str, float], shifted: dict[str, float]) -> tuple[float, list[str]]:
    """Kendall τ of the method orders by in-domain and by shifted perplexity, and the pairs that swap."""
    methods = [m for m in ordered(in_domain) if m in shifted]
    if len(methods) < 2:
        return math.nan, []
    a, b = np.array([in_domain[m] for m in methods]), np.array([shifted[m] for m in methods])
    swaps = [f"{m} vs {n}" for i, m in enumerate(methods) for j, n in enumerate(methods)
             if i < j and (a[i] - a[j]) * (b[i] - b[j]) < 0]
    return kendall_tau(a, b), swaps


def _disjoint(rows: pd.DataFrame, text: str, a: str, b: str) -> bool:
    """Whether the (seed-averaged) shifted-perplexity intervals of methods a and b do not overlap."""
    sub = rows[(rows["metric"] == "heldout_ppl") & (rows["name"].astype(str) == text)]
    ia, ib = (sub[sub["method"] == m][["ci_low", "ci_high"]].mean() for m in (a, b))
    return bool(ia["ci_high"] < ib["ci_low"] or ib["ci_high"] < ia["ci_low"])


def shift_html(heldout: pd.DataFrame) -> str:
    """In-domain vs shifted perplexity per method, the shift gap, and whether the ranking survives."""
    if heldout.empty:
        return ('<p class="note">No held-out-text results: add an <code>ood</code> section to the study config '
                "(texts, or data.holdout_source for leave-one-source-out).</p>")
    rows = _final(heldout)
    texts = [t for t in sorted(set(rows["name"].astype(str))) if t != IN_DOMAIN]
    methods = ordered(rows["method"].unique())
    headers = ["method", "in-domain ppl (whole val text)"]
    for t in texts:
        headers += [f"ppl: {t}", f"gap (nats/token): {t}"]
    body = []
    for m in methods:
        r = rows[rows["method"] == m]
        line = [m, _cell(r[(r["metric"] == "heldout_ppl") & (r["name"] == IN_DOMAIN)])]
        for t in texts:
            line += [_cell(r[(r["metric"] == "heldout_ppl") & (r["name"] == t)]),
                     _cell(r[(r["metric"] == "shift_gap_nll") & (r["name"] == t)])]
        body.append(line)
    parts = [table(headers, body)]
    notes = []
    ref = method_means(rows, "heldout_ppl", IN_DOMAIN)
    for t in texts:
        tau, swaps = ranking_survives(ref, method_means(rows, "heldout_ppl", t))
        if math.isnan(tau):
            continue
        clear = [p for p in swaps if _disjoint(rows, t, *p.split(" vs "))]
        verdict = "survives the shift" if not swaps else (
            f"changes under the shift (swapped: {', '.join(swaps)}; "
            + (f"shifted-ppl intervals disjoint for {', '.join(clear)})" if clear else
               "every swapped pair's shifted-ppl intervals overlap, so the swaps may be noise)"))
        notes.append(f"{t}: Kendall τ between the method orders by in-domain and by shifted perplexity = "
                     f"{fmt(tau, 3)}; the ranking {verdict}.")
    bpb = rows[rows["metric"] == "heldout_bpb"]
    if not bpb.empty:
        notes.append("Bits per byte (tokenizer-independent) are in results/heldout.parquet, metric heldout_bpb.")
    notes.append("Gap = NLL on the text − NLL on the run's own validation text, 95% interval from independent "
                 "bootstraps over documents (pieces of about 2 kB).")
    notes.append("'in-domain ppl (whole val text)' scores the run's whole validation text, every document from its "
                 "start; the Runs table's 'trainer val ppl (sampled)' is the training loop's estimate on a sample of "
                 "packed validation chunks. Different tokens and context make them differ: compare within a column.")
    parts.append("".join(f"<p>{esc(n)}</p>" for n in notes))
    return "".join(parts)


PROBE_IDLE = ("not applicable: the fine-tuning probe adapts no model (no model's fine-tuned accuracy beats its "
              "frozen probe with a gain interval above 0), so there is no fine-tuning finding")


def adapted_runs(ft: pd.DataFrame) -> list[str]:
    """Runs whose fine-tuning gain (fine-tuned − frozen-probe accuracy) has a 95 % interval above 0."""
    if ft.empty or "metric" not in ft:
        return []
    gain = _final(ft)
    gain = gain[gain["metric"] == "ft_gain"]
    return sorted(gain.loc[pd.to_numeric(gain["ci_low"], errors="coerce") > 0, "run"].astype(str).unique())


def apply_probe_check(findings: list, data: RobustnessData) -> None:
    """Fine-tuning findings (F7·ft_acc, F7·forgetting) say so instead of a verdict when the probe adapts no model."""
    for frame in (data.finetune,):
        if frame.empty or adapted_runs(frame):
            continue
        for f in findings:
            if f.id.startswith(("F7·ft_acc", "F7·forgetting")):
                f.notes.append(f"verdict before the probe check: {f.verdict}")
                f.verdict, f.reason = PROBE_IDLE, "the probe's gain interval is above 0 for no model"


def finetune_html(ft: pd.DataFrame) -> str:
    """Per method: frozen-probe accuracy, accuracy after the probe's fine-tuning, gain, forgetting."""
    if ft.empty:
        return ('<p class="note">No fine-tuning probe results: set <code>ood.finetune</code> in the study config '
                "(e.g. {} for the defaults).</p>")
    rows = _final(ft)
    metrics = (("ft_zero_shot_acc", "frozen probe acc"), ("ft_acc", "fine-tuned acc"), ("ft_gain", "gain"),
               ("ft_nll_before", "in-domain NLL before"), ("ft_nll_after", "after"), ("ft_forgetting", "forgetting"))
    settings = rows["settings"].iloc[0] if "settings" in rows.columns and len(rows) else "{}"
    try:
        s = json.loads(settings) if isinstance(settings, str) else dict(settings)
    except ValueError:
        s = {}
    floor = [s.get("chance"), s.get("majority")]  # the same test items for every model
    body = []
    for m in ordered(rows["method"].unique()):
        r = rows[rows["method"] == m]
        body.append([m, *floor, *(_cell(r[r["metric"] == key]) for key, _ in metrics)])
    proto = (f"Protocol: task {s.get('task', '?')}, {s.get('mode', '?')} fine-tuning, {s.get('steps', '?')} steps × "
             f"{s.get('batch_size', '?')} items, lr {s.get('lr', '?')}, seed {s.get('seed', '?')}, texts cut to "
             f"{s.get('max_tokens', '?')} tokens; {s.get('n_train', '?')} train / {s.get('n_test', '?')} test items. "
             "Gain = fine-tuned − frozen-probe accuracy (paired bootstrap over test items); forgetting = in-domain "
             "NLL after − before (nats/token, paired bootstrap over paragraphs).")
    proto += (" Chance = 1/number of classes; majority class = accuracy of always answering the test part's "
              "most common class: both accuracies are read against it.")
    adapted = adapted_runs(ft)
    verdict = (f"The probe adapts {len(adapted)} of {rows['run'].nunique()} model(s) (gain interval above 0: "
               f"{', '.join(adapted)})." if adapted else PROBE_IDLE[len("not applicable: "):].capitalize() + ".")
    return (table(["method", "chance", "majority class (test)", *(label for _, label in metrics)], body)
            + f"<p>{esc(proto)}</p>" + f'<p class="probe"><strong>{esc(verdict)}</strong></p>')


def shift_panels(data: RobustnessData) -> str:
    """The shift panel at equal steps, and at parity when the study has parity models."""
    out = "<h3>At equal steps (final checkpoints)</h3>" + shift_html(data.heldout)
    if not data.parity_heldout.empty:
        out += "<h3>At parity (each method's parity model)</h3>" + shift_html(data.parity_heldout)
    return out


def finetune_panels(data: RobustnessData) -> str:
    out = "<h3>At equal steps (final checkpoints)</h3>" + finetune_html(data.finetune)
    if not data.parity_finetune.empty:
        out += "<h3>At parity (each method's parity model)</h3>" + finetune_html(data.parity_finetune)
    return out
