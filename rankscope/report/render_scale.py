"""The report of a multi-size study folder: findings across sizes, the scale figures, the pooled predictor, and
each size's own report folded under one section.

A multi-size folder is what :mod:`rankscope.report.combine` writes (``study.json`` with ``models`` and ``sizes``,
stacked tables in ``results/``); the per-size sections are the single-size report of each size's own folder, so
nothing a one-size report shows is lost, only folded.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any

from rankscope.report.htmlkit import bullet_list, esc, figure, table
from rankscope.report.load import StudyData, _read_json, _read_table, load_study
from rankscope.report.plots_common import Figure, png_to_uri


def is_multi_size(study_dir: str | Path) -> bool:
    try:
        study = json.loads((Path(study_dir) / "study.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(study, dict) and bool(study.get("models"))


def load_multi(study_dir: str | Path) -> tuple[StudyData, dict[str, str], dict[str, Path]]:
    """The combined tables and every size's runs (renamed ``<run>@<size>``); run -> size; size -> folder."""
    from rankscope.report.combine import run_label

    root = Path(study_dir)
    data = StudyData(root=root)
    data.study = _read_json(root / "study.json", data.missing, "study")
    folders = {str(s): Path(p) for s, p in (data.study.get("sizes") or {}).items()}
    size_of: dict[str, str] = {}
    for size in data.study.get("models") or []:
        folder = folders.get(str(size))
        if folder is None or not folder.is_dir():
            data.missing.append(f"size {size}: study folder {folder} not found")
            continue
        for r in load_study(folder).runs:
            r.name = run_label(r.name, str(size))
            size_of[r.name] = str(size)
            data.runs.append(r)
    results = root / "results"
    data.diagnostics = _read_table(results / "diagnostics.parquet", data.missing, "diagnostics")
    data.downstream = _read_table(results / "downstream.parquet", data.missing, "downstream")
    skipped = results / "prediction_skipped.txt"
    if skipped.is_file():
        data.missing.append(skipped.read_text().strip())
    else:
        data.prediction = _read_json(results / "prediction.json", data.missing, "pooled predictor")
    png = results / "prediction.png"
    data.prediction_png = png.read_bytes() if png.is_file() else None
    return data, size_of, folders


def _nested(size: str, parts: list[str]) -> str:
    """A size's report body with its ids prefixed, so anchors stay unique on one page."""
    body = "\n".join(parts[1:])  # without the size report's own <h1>
    return re.sub(r'\bid="([^"]+)"', lambda m: f'id="{size}-{m.group(1)}"', body)


def _summary(data: StudyData, folders: dict[str, Path]) -> str:
    s: dict[str, Any] = data.study
    rows = [("Model sizes", ", ".join(map(str, s.get("models") or []))),
            ("Methods", ", ".join(map(str, s.get("methods") or []))),
            ("Seeds", ", ".join(map(str, s.get("seeds") or []))),
            ("Runs (all sizes)", len(data.runs))]
    rows += [(f"{size}: study folder", str(path)) for size, path in folders.items()]
    for size, settings in (s.get("size_settings") or {}).items():
        rows.append((f"{size}: settings", ", ".join(f"{k} {v}" for k, v in settings.items() if v not in (None, ""))))
    return table(["field", "value"], rows, cls="summary")


def render_scale_report(study_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the multi-size report (default ``STUDY_DIR/report.html``) and return its path."""
    from rankscope.report.parity_section import load_baselines
    from rankscope.report.render import _finding_html, _prediction_html, report_parts, write_page
    from rankscope.report.scale_findings import evaluate_across_sizes
    from rankscope.report.scale_section import (
        finding_html,
        metric_vs_size,
        ppl_vs_downstream,
        runs_frame,
        summary_html,
    )

    data, size_of, folders = load_multi(study_dir)
    sizes = [str(s) for s in data.study.get("models") or [] if str(s) in folders]
    runs = runs_frame(data.runs, size_of)
    own = {s: _read_json(folders[s] / "results" / "prediction.json", [], "") for s in sizes}  # per-size predictors
    res = evaluate_across_sizes(data.diagnostics, data.downstream, data.prediction, runs,
                                predictions_by_size={s: p for s, p in own.items() if p},
                                run_infos_by_size={s: [r for r in data.runs if size_of.get(r.name) == s]
                                                   for s in sizes},
                                baselines_by_size={s: load_baselines(folders[s]) for s in sizes})
    title = f"rankscope report: {Path(study_dir).resolve().name} ({', '.join(sizes)})"
    parts = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="note">Generated {esc(_dt.datetime.now().isoformat(" ", "minutes"))} by rankscope report; '
        "self-contained (no network needed). A study over several model sizes: the findings are decided at every "
        "size on that size's own runs and siblings, then compared across sizes (docs/study.md, "
        "\"Several model sizes\").</p>",
        "<h2>Study</h2>", _summary(data, folders),
        '<h2 id="scale-findings">Findings across model sizes</h2>',
    ]
    if res is None:
        parts.append('<p class="missing">Fewer than two sizes have rows in the combined tables.</p>')
    else:
        parts += [summary_html(res), *(finding_html(f, res.sizes, _finding_html) for f in res.findings)]
    parts.append('<h2 id="scale-figures">Scale axis</h2>')
    figures = [metric_vs_size(data.diagnostics, data.downstream, runs, sizes),
               ppl_vs_downstream(data.downstream, runs, sizes)]
    parts += [figure(f) for f in figures]
    parts.append('<h2 id="scale-prediction">Predicting downstream accuracy, pooled over sizes</h2>')
    if data.prediction_png:
        parts.append(figure(Figure("prediction-pooled", "Pooled predictor", "Leave-one-out predictions over the "
                                   "models of every size.", uri=png_to_uri(data.prediction_png))))
    parts.append(_prediction_html(data.prediction) or '<p class="missing">No pooled prediction.</p>')
    for size in sizes:
        _, size_parts = report_parts(folders[size])
        parts.append(f'<h2 id="size-{esc(size)}">Size {esc(size)}</h2>'
                     f'<details data-size-report="{esc(size)}"><summary>The {esc(size)} study on its own: runs, '
                     f"noise floor, findings, figures and tables</summary>{_nested(size, size_parts)}</details>")
    missing = list(data.missing) + [f"figure {f.name}: {f.missing}" for f in figures if f.missing]
    parts += ["<h2>Missing data</h2>", bullet_list(missing, "missing") or "<p>Nothing missing.</p>"]
    return write_page(title, parts, Path(out) if out is not None else Path(study_dir) / "report.html")
