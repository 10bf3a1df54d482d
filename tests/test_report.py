"""The HTML report: renders from a synthetic study, degrades gracefully, and states F1–F7 correctly.

Findings are checked on hand-made tables whose answer is known (clearly holds, clearly reversed,
overlapping intervals, missing data), so a wrong sign or a missing "inconclusive" is caught.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_report import make_synthetic_study, table_row

from rankscope.report.findings import evaluate_findings
from rankscope.report.findings_downstream import check_f6, check_f7
from rankscope.report.load import TABLE_COLUMNS, normalise_table, pair_labels, prefer_rows
from rankscope.report.plots import FIGURE_NAMES, landscape_curve_ids
from rankscope.report.render import render_report
from rankscope.report.stats import FAILS, HOLDS, INCONCLUSIVE, kendall_tau
from rankscope.report.verdict_rules import NO_NULL

# ---------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    study = make_synthetic_study(tmp_path_factory.mktemp("study") / "demo", seeds=(0, 1))
    out = render_report(study)
    return study, out.read_text(encoding="utf-8")


def _figures(html: str) -> dict[str, str]:
    return dict(re.findall(r'<figure data-figure="([^"]+)"><img src="([^"]+)"', html))


def test_every_figure_present_and_decodes(full_report: tuple[Path, str]) -> None:
    _, html = full_report
    figs = _figures(html)
    assert sorted(figs) == sorted(FIGURE_NAMES)
    for name, uri in figs.items():
        assert uri.startswith("data:image/png;base64,"), name
        assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n", name
    assert html.count("<figcaption>") == len(FIGURE_NAMES)


def test_report_content_and_self_contained(full_report: tuple[Path, str]) -> None:
    study, html = full_report
    assert "embedded corpus, not C4" in html
    for run in (study / "runs").iterdir():
        assert f"<td>{run.name}</td>" in html
    for fid in ("F1", "F2", "F3", "F4", "F5", "F6", "F7"):
        assert f'data-finding="{fid}"' in html
    assert "not laws" in html and "tiny scale" in html
    assert "Nothing missing." in html
    assert not re.search(r'(src|href)="(https?:)?//', html), "report must not reference the network"
    assert "<script" not in html and "<link" not in html
    assert "optimizer state (MiB)" in html and "Timings" in html


def test_imib_pairs_named_by_method(full_report: tuple[Path, str]) -> None:
    _, html = full_report
    f3 = html[html.index('data-finding="F3"') : html.index('data-finding="F4"')]
    assert "imib full_rank ↔ galore" in f3 and "galore_s0" not in f3
    assert "cola ↔ galore: excluded: no dense form" in f3


def test_row_selection_helpers() -> None:
    diag = normalise_table(
        _rows(
            ("c", "cola", 10, "w_erank", 5.0, None),
            ("c", "cola", 10, "w_erank", 1000.0, None),
            ("g_s0", "galore", 10, "imib", 0.1, None, "pair", "f_s0"),
            ("f_s0", "fira", 10, "rand_curve", 4.0, None, "curve", "0"),
            ("f_s0", "fira", 10, "ckpt_curve", 4.0, None, "curve", "0.5"),
        )
    )
    diag.loc[0, "space"], diag.loc[1, "space"] = "linear_product", "factor"
    kept = prefer_rows(diag[diag["metric"] == "w_erank"])
    assert kept["value"].tolist() == [5.0]  # CoLA's factor rows are never averaged with its product rows
    assert pair_labels(diag[diag["metric"] == "imib"], diag) == ["fira ↔ galore"]
    assert landscape_curve_ids(diag) == ["rand_curve"]


def test_report_with_parts_missing(tmp_path: Path) -> None:
    study = make_synthetic_study(tmp_path / "s", methods=("full_rank", "galore", "cola"), seeds=(0,))
    results = study / "results"
    for name in ("downstream.parquet", "prediction.json", "prediction.png", "timings.json"):
        (results / name).unlink()
    (study / "runs" / "galore_s0" / "metrics.jsonl").unlink()
    diag = pd.read_parquet(results / "diagnostics.parquet")
    diag[~diag["metric"].str.startswith("act_")].to_parquet(results / "diagnostics.parquet")
    status = json.loads((study / "status.json").read_text())
    status["jobs"][0].update(state="failed", error="out of memory")
    (study / "status.json").write_text(json.dumps(status))

    html = render_report(study, tmp_path / "out" / "r.html").read_text()
    figs = _figures(html)
    assert {"downstream", "prediction", "activations"}.isdisjoint(figs)
    assert {"training-curves", "landscape-curves", "barrier-heatmap", "spectra"} <= set(figs)
    missing = html[html.index("Missing data") :]
    for text in (
        "downstream.parquet not found",
        "prediction.json not found",
        "timings.json not found",
        "run galore_s0: metrics.jsonl not found",
        "act_cka",
        "out of memory",
        "figure activations",
    ):
        assert text in missing, text


def test_empty_folder_still_renders(tmp_path: Path) -> None:
    html = render_report(tmp_path).read_text()
    assert "<figure" not in html
    assert "no run folders" in html and "study.json not found" in html
    assert html.count("inconclusive") >= 7


def test_missing_study_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        render_report(tmp_path / "typo")


def test_text_is_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    (tmp_path / "study.json").write_text(json.dumps({"preset": evil, "data": {"source": "files"}}))
    (tmp_path / "runs" / "a<b>").mkdir(parents=True)
    html = render_report(tmp_path).read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "a&lt;b&gt;" in html and "<b>" not in html.replace("<b>Check", "").replace("<b>Why", "")


# ---------------------------------------------------------------- findings on hand-made tables


def _rows(*specs: tuple) -> pd.DataFrame:
    """specs: (run, method, step, metric, value, stderr[, scope, name, note])."""
    recs = []
    for spec in specs:
        run, method, step, metric, value, stderr, *rest = spec
        scope, name, note = (list(rest) + ["model", "", ""][len(rest) :])[:3]
        rec = table_row(run=run, method=method, step=step, metric=metric, value=value, stderr=stderr,
                        scope=scope, name=name, note=note, mode="default")
        recs.append(rec)
    return pd.DataFrame(recs, columns=TABLE_COLUMNS)


def _finding(fid: str, diag: pd.DataFrame | None = None, down=None, pred=None, runs=None):
    return {f.id: f for f in evaluate_findings(diag, down, pred, runs or [])}[fid]


def _down(acc: dict[str, float], tasks: int = 6) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    specs, runs = [], []
    for i, (method, a) in enumerate(acc.items()):
        run = f"{method}_s0"
        runs.append(
            {"run": run, "method": method, "seed": 0, "val_ppl": 20.0 + 10 * i}
        )  # ppl order = dict order
        specs += [
            (run, method, 30, "acc", a + rng.normal(0, 0.002), None, "task", f"t{t}") for t in range(tasks)
        ]
    return _rows(*specs), pd.DataFrame(runs)


def test_f6_tau_is_context_and_no_siblings_give_no_verdict() -> None:
    """One run per method and no siblings: τ is shown (1 when the orders agree, < 1 when they reverse) but the
    verdict is "no null" (tests/test_finding_f6.py decides F6 against the sibling spreads)."""
    down, runs = _down({"full_rank": 0.8, "galore": 0.7, "fira": 0.6, "cola": 0.5})
    f = check_f6(down, runs)
    assert f.verdict == NO_NULL and f.evidence[0].value == pytest.approx(1.0)
    assert not f.evidence[0].verdict  # context, not a deciding row
    down, runs = _down({"full_rank": 0.5, "galore": 0.6, "fira": 0.7, "cola": 0.8})
    f = check_f6(down, runs)
    assert f.verdict == NO_NULL and f.evidence[0].hi < 1
    down, runs = _down({"full_rank": 0.8})
    assert check_f6(down, runs).verdict == INCONCLUSIVE
    down, runs = _down({"full_rank": 0.8, "galore": 0.7, "fira": 0.6}, tasks=3)
    hard = down[down["name"] == "t0"].assign(name="t0_hard")
    f = check_f6(pd.concat([down, hard]), runs)
    assert "over 3 tasks" in f.evidence[0].detail  # the _hard subset is not counted as a 4th task
    assert "missing" in check_f6(_rows(), runs).reason


@pytest.mark.parametrize(
    ("ci", "expected"),
    [([0.1, 0.3], HOLDS), ([-0.2, 0.4], INCONCLUSIVE), ([-0.5, -0.1], FAILS), (None, INCONCLUSIVE)],
)
def test_f7_prediction(ci: list[float] | None, expected: str) -> None:
    diff = {"r2": 0.2} if ci is None else {"r2": float(np.mean(ci)), "r2_ci": ci}
    pred = {
        "n_runs": 12,
        "baseline": {"r2": 0.1},
        "extended": {"r2": 0.3},
        "difference": diff,
        "warnings": ["x"],
    }
    f = check_f7(pred)
    assert f.verdict == expected
    assert any("predictor warning" in n for n in f.notes)


def test_f7_mae_fallback_and_missing() -> None:
    pred = {
        "baseline": {"mae": 0.05},
        "extended": {"mae": 0.03},
        "difference": {"mae": -0.02, "mae_ci": [-0.03, -0.01]},
    }
    assert check_f7(pred).verdict == HOLDS  # lower MAE is better
    assert "missing" in check_f7({}).reason


def _predict_py_layout(diff_ci: list[float]) -> dict:
    """prediction.json as rankscope/downstream/predict.py writes it (schemes.<loo|lomo> with a ci block)."""
    scheme = {
        "baseline": {"r2": 0.2, "mae": 0.03},
        "extended": {"r2": 0.4, "mae": 0.02},
        "diff": {"r2": 0.2, "mae": -0.01},
        "ci": {"baseline": {"r2": [0.0, 0.4]}, "extended": {"r2": [0.2, 0.6]}, "diff": {"r2": diff_ci}},
    }
    lomo = {**scheme, "ci": {"diff": {"r2": [-1.0, 1.0]}}}
    return {
        "n": 18,
        "features": ["rand_sharpness"],
        "schemes": {"loo": scheme, "lomo": lomo},
        "weights": {"rand_sharpness": 0.3},
        "alpha": 1.0,
        "warnings": ["tiny n"],
        "messages": [],
    }


def test_f7_reads_predict_py_layout(tmp_path: Path) -> None:
    f = check_f7(_predict_py_layout([0.05, 0.35]))
    assert f.verdict == HOLDS and "(loo)" in f.evidence[-2].label and "(lomo)" in f.evidence[-1].label
    assert check_f7(_predict_py_layout([-0.1, 0.35])).verdict == INCONCLUSIVE
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "prediction.json").write_text(json.dumps(_predict_py_layout([0.05, 0.35])))
    html = render_report(tmp_path).read_text()
    assert "0.4 [0.2, 0.6]" in html and "0.2 [0.05, 0.35]" in html  # extended and difference, with CIs


def test_all_missing_is_inconclusive_everywhere() -> None:
    findings = evaluate_findings(None, None, None, [])
    assert [f.id for f in findings] == [f"F{i}" for i in range(1, 8)]
    assert all(f.verdict == INCONCLUSIVE and f.reason for f in findings)


def test_kendall_tau_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, 9).astype(float), rng.normal(size=9)
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)
