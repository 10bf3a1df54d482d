"""Render one self-contained ``report.html`` from a study folder.

The report is a separate step (style.md §2.10): it reads the study folder that train/analyze/eval/predict
wrote and imports nothing from training. Output is one HTML file with inline CSS and base64 PNG figures,
so it opens offline and can be mailed or archived as is. Anything absent is listed, never fatal.

    python -c "from rankscope.report.render import render_report; print(render_report('out/study'))"
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rankscope.diagnostics.registry import display_name
from rankscope.report.downstream_table import downstream_table as _downstream_table
from rankscope.report.findings import evaluate_findings
from rankscope.report.findings_downstream import check_targets, prediction_schemes
from rankscope.report.glossary import glossary_html
from rankscope.report.guide_section import guide_parts, without_arms
from rankscope.report.htmlkit import bullet_list, esc, figure, fmt, fmt_interval, page, table, verdict_badge
from rankscope.report.load import StudyData, load_study
from rankscope.report.noise_floor import design_sentence, noise_floor_html
from rankscope.report.parity_section import apply_baseline_verdicts, parity_html
from rankscope.report.plots import build_figures
from rankscope.report.plots_common import Figure, ordered
from rankscope.report.robustness import apply_probe_check, finetune_panels, load_robustness, shift_panels
from rankscope.report.stats import Finding

# The 16 headline metrics (docs/metrics.md); the "missing data" list names the ones with no rows.
HEADLINE = tuple(
    "rand_sharpness rand_variance pca_top1_sharpness pca_topk_sharpness pca_topk_variance ckpt_barrier "
    "imib w_erank w_stable_rank w_spectral_gap w_n_sv_gt_0p1 dw_rel_fro dw_erank dw_stable_rank act_cka "
    "act_cos".split()
)
SECTIONS = (
    ("training", "Training"),
    ("landscape", "Loss landscape"),
    ("interpolation", "Interpolation barriers"),
    ("spectra", "Spectra"),
    ("activations", "Activation similarity"),
    ("downstream", "Downstream"),
    ("prediction", "Predicting downstream accuracy"),
    ("shift", "Distribution shift"),
    ("finetune", "Fine-tuning pressure"),
)
SCALE_NOTE = (
    "These are findings of the paper (arXiv 2605.13652: LLaMA 60M–350M trained on C4), restated as "
    "checks and evaluated on this study's own runs at {scale} scale. They are not laws: at small or "
    "CPU-demo scale several may not hold, and a verdict here describes these runs only. "
    "'Inconclusive' means the 95% interval crosses the decision line or the data is missing."
)


def data_label(data_cfg: Mapping[str, Any]) -> str:
    """Say plainly where the text came from; the embedded corpus is not C4 and must not look like it."""
    source = str(data_cfg.get("source", "unknown"))
    if source == "embedded":
        return "embedded corpus, not C4"
    if source == "hf":
        name = " ".join(str(data_cfg.get(k, "")) for k in ("dataset", "dataset_config")).strip()
        return f"Hugging Face dataset {name or '(unnamed)'}"
    if source == "files":
        return f"local files ({len(data_cfg.get('train_files') or [])} training files)"
    return str(data_cfg.get("label", source))


def _summary(data: StudyData) -> str:
    s = data.study
    first_cfg = data.runs[0].config if data.runs else {}
    data_cfg = s.get("data") or first_cfg.get("data") or {}
    versions = sorted(
        {str(r.meta.get("package_version")) for r in data.runs if r.meta.get("package_version")}
    )
    rows = [
        ("Study preset", s.get("preset", "–")),
        ("Model", s.get("model", first_cfg.get("model", "–"))),
        ("Data", data_label(data_cfg)),
        ("Methods", ", ".join(map(str, s.get("methods") or ordered({r.method for r in data.runs})))),
        (
            "Seeds",
            ", ".join(map(str, s.get("seeds") or sorted({r.seed for r in data.runs if r.seed is not None}))),
        ),
        ("Training steps", s.get("steps", "–")),
        ("Checkpoint steps", ", ".join(map(str, s.get("checkpoint_steps") or [])) or "–"),
        ("Runs", len(data.runs)),
        ("rankscope version", ", ".join(versions) or "–"),
        ("Study folder", str(data.root)),
    ]
    return table(["field", "value"], rows, cls="summary")


def _seed_cell(r: Any) -> Any:
    """The init seed; "init / data N" for a data-order sibling (a data seed other than the init seed)."""
    if r.seed is None:
        return "–"
    data = r.meta.get("data_seed")
    return r.seed if data is None or data == r.seed else f"{r.seed} / data {data}"


def _runs_table(data: StudyData) -> str:
    if not data.runs:
        return '<p class="missing">No runs found.</p>'
    rows = []
    for r in sorted(
        data.runs, key=lambda r: (ordered({x.method for x in data.runs}).index(r.method), r.seed or 0)
    ):
        mem = r.memory.get("summary") or {}
        state = mem.get("state_bytes")
        rows.append(
            (
                r.name,
                r.method,
                _seed_cell(r),
                mem.get("params"),
                mem.get("trainable"),
                None if state is None else float(state) / 2**20,
                r.tokens,
                r.final_val_ppl,
            )
        )
    return table(
        [
            "run",
            "method",
            "seed (init / data)",
            "parameters",
            "trainable",
            "optimizer state (MiB)",
            "tokens",
            "trainer val ppl (sampled)",
        ],
        rows,
    ) + f'<p class="note">{esc(PPL_NOTE.format(tokens=_eval_tokens(data)))}</p>'


# Item 10 of issue 25: one model, two validation perplexities; say which is which and why they differ.
PPL_NOTE = (
    "'trainer val ppl (sampled)' is the training loop's estimate on a seeded sample of {tokens} validation "
    "tokens cut into packed fixed-length chunks; the shift section's 'in-domain ppl (whole val text)' scores the "
    "whole validation text with every document read from its start. They differ because they score different "
    "tokens with different context (a packed chunk starts mid-document with no context), so compare models "
    "within one column, never across the two."
)


def _eval_tokens(data: StudyData) -> str:
    values = sorted({int(v) for r in data.runs if isinstance(v := (r.config.get("train") or {}).get("eval_tokens"), int)})
    return " / ".join(f"{v:,}" for v in values) or "eval_tokens"


def _findings_summary(findings: list[Finding]) -> str:
    rows = "".join(
        f"<tr><td>{esc(f.id)}</td><td>{esc(f.statement)}</td><td>{verdict_badge(f.verdict)}</td></tr>"
        for f in findings
    )
    head = "<thead><tr><th>#</th><th>finding</th><th>verdict</th></tr></thead>"
    return f"<table>{head}<tbody>{rows}</tbody></table>"


def _finding_html(f: Finding) -> str:
    ev = [(e.label, e.value, fmt_interval(e.lo, e.hi), "–" if e.n is None else e.n,
           "–" if e.n_null is None else e.n_null, e.null_units or "–", e.verdict or "context", e.detail)
          for e in f.evidence]
    head = ["quantity", "effect", "95% interval", "n (paired seeds)", "n_null", "in units of the null", "verdict",
            "detail"]
    evidence = table(head, ev) if ev else ""
    return (
        f'<div class="finding" data-finding="{esc(f.id)}"><h3>{esc(f.id)}. {esc(f.statement)} '
        f"{verdict_badge(f.verdict)}</h3><p><b>Check:</b> {esc(f.check)}</p>"
        f"<p><b>Why:</b> {esc(f.reason or '–')}</p>{evidence}{bullet_list(f.notes, 'note')}</div>"
    )


def _score(score: tuple[float, float, float] | None) -> str:
    if score is None:
        return "–"
    ci = fmt_interval(score[1], score[2])
    return fmt(score[0]) + ("" if ci == "–" else f" {ci}")


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        return [row for k, v in value.items() for row in _flatten(f"{prefix}.{k}" if prefix else str(k), v)]
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(x, (int, float)) for x in value)
    ):
        return [(prefix, fmt_interval(float(value[0]), float(value[1])))]
    if isinstance(value, (list, tuple)):
        return [(prefix, ", ".join(map(str, value)) or "–")]
    return [(prefix, value if isinstance(value, (int, float, str)) or value is None else str(value))]


def _prediction_html(pred: Mapping[str, Any]) -> str:
    """Baseline vs extended scores per CV scheme, then everything else in prediction.json, flattened."""
    if not pred:
        return ""
    rows = [
        (scheme, key, *(_score(parts[p].get(key)) for p in ("baseline", "extended", "difference")))
        for scheme, parts in prediction_schemes(pred).items()
        for key in sorted(set(parts["baseline"]) | set(parts["extended"]) | set(parts["difference"]))
        if not key.endswith("_ci")
    ]
    head = [
        "CV scheme",
        "score",
        "log-PPL only [95% CI]",
        "log-PPL + metrics [95% CI]",
        "difference [95% CI]",
    ]
    html = table(head, rows) if rows else ""
    skip = {"schemes", "baseline", "extended", "difference", "diff", "warnings", "messages"}
    rest = [row for k, v in pred.items() if k not in skip for row in _flatten(str(k), v)]
    html += table(["key", "value"], rest) if rest else ""
    for key in ("warnings", "messages"):
        if pred.get(key):
            html += f"<p><b>{esc(key)}:</b></p>" + bullet_list(map(str, pred[key]))
    return html


def _timings_html(data: StudyData) -> str:
    rows = [
        (stage, float(sec), str(_dt.timedelta(seconds=round(float(sec)))))
        for stage, sec in data.timings.items()
        if isinstance(sec, (int, float))
    ]
    jobs = data.status.get("jobs") or []
    states: dict[str, int] = {}
    for j in jobs:
        states[str(j.get("state"))] = states.get(str(j.get("state")), 0) + 1
    job_line = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    html = table(["stage", "seconds", "h:mm:ss"], rows) if rows else '<p class="missing">No timings.json.</p>'
    return html + (f"<p>Jobs: {esc(job_line)}.</p>" if job_line else "")


def _missing(data: StudyData, figures: list[Figure], findings: list[Finding]) -> list[str]:
    items = list(data.missing)
    items += [f"figure {f.name}: {f.missing}" for f in figures if f.missing]
    items += [f"finding {f.id}: {f.reason}" for f in findings if f.reason.startswith("missing")]
    present = set(data.diagnostics["metric"].dropna().astype(str)) if len(data.diagnostics) else set()
    absent = [display_name(m) for m in HEADLINE if m not in present]
    if absent:
        items.append("headline metrics (docs/metrics.md) with no rows: " + ", ".join(absent))
    return items


def _shown_metrics(data: StudyData, robust) -> set[str]:
    """Metric ids that appear in this report's tables (for the glossary)."""
    shown = {"val_ppl", *HEADLINE}
    for frame in (data.diagnostics, data.downstream, getattr(robust, "heldout", None), getattr(robust, "finetune", None)):
        if frame is not None and len(frame) and "metric" in frame:
            shown |= set(frame["metric"].dropna().astype(str))
    return shown


def render_report(study_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` for ``study_dir`` (default: inside it) and return its path.

    A multi-size study folder (``study.json`` with ``models``) gets the report across sizes (``render_scale``)."""
    if not Path(study_dir).is_dir():  # a typo must not produce an empty report in a fresh folder
        raise FileNotFoundError(f"study folder not found: {study_dir}")
    from rankscope.report.render_scale import is_multi_size, render_scale_report

    if is_multi_size(study_dir):
        return render_scale_report(study_dir, out)
    title, parts = report_parts(study_dir)
    return write_page(title, parts, Path(out) if out is not None else Path(study_dir) / "report.html")


def write_page(title: str, parts: list[str], target: Path) -> Path:
    """Write one self-contained HTML page atomically (temporary file, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(page(title, "\n".join(parts)), encoding="utf-8")
    tmp.replace(target)
    return target


def report_parts(study_dir: str | Path) -> tuple[str, list[str]]:
    """The title and HTML parts of one single-size study's report (also each size's folded part of a
    multi-size report)."""
    everything = load_study(study_dir)
    data = without_arms(everything)  # guided arms get their own section, not pooled with their method
    findings = evaluate_findings(data.diagnostics, data.downstream, data.prediction, data.runs)
    robust = load_robustness(study_dir)
    findings += check_targets(robust.targets)
    apply_probe_check(findings, robust)  # a probe that adapts no model gives no fine-tuning finding
    apply_baseline_verdicts(findings, data.runs, data.baselines)  # not past unigram: no verdict
    figures = build_figures(data)
    scale = str(data.study.get("model") or (data.runs[0].config.get("model") if data.runs else "") or "this")
    title = f"rankscope report: {Path(study_dir).resolve().name}"
    parts = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="note">Generated {esc(_dt.datetime.now().isoformat(" ", "minutes"))}'
        " by rankscope report; self-contained (no network needed).</p>",
        f'<p class="design"><strong>{esc(design_sentence(data.diagnostics))}</strong></p>',
        "<h2>Study</h2>",
        _summary(data),
        "<h2>Runs</h2>",
        _runs_table(everything),
        '<h2 id="noise-floor">Noise floor: runs of one method against runs of different methods</h2>',
        noise_floor_html(data.diagnostics, HEADLINE, data.runs),
        *(figure(fig) for section, fig in figures if section == "noise"),
        "<h2>Findings of the paper, checked on these runs (at equal steps)</h2>",
        f"<p>{esc(SCALE_NOTE.format(scale=scale))}</p>",
        _findings_summary(findings),
        *(_finding_html(f) for f in findings),
        parity_html(Path(study_dir), data.runs, data.diagnostics, data.baselines, scale, HEADLINE, _finding_html,
                    _downstream_table),
        *guide_parts(everything, robust),
    ]
    for key, heading in SECTIONS:
        parts.append(f'<h2 id="{esc(key)}">{esc(heading)}</h2>')
        parts += [figure(fig) for section, fig in figures if section == key]
        if key == "downstream":
            parts.append(_downstream_table(data.downstream))
        if key == "prediction":
            parts.append(_prediction_html(data.prediction))
        if key == "shift":
            parts.append(shift_panels(robust))
        if key == "finetune":
            parts.append(finetune_panels(robust))
    parts += [
        '<h2 id="glossary">Metric glossary</h2>',
        glossary_html(_shown_metrics(data, robust)),
        "<h2>Timings</h2>",
        _timings_html(data),
        "<h2>Missing data</h2>",
        bullet_list(_missing(data, [f for _, f in figures], findings), "missing")
        or "<p>Nothing missing.</p>",
    ]
    return title, parts
