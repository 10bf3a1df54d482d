"""The user docs stay true: every emitted metric is defined, every reference points inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def emitted_metric_ids() -> set[str]:
    """Every metric id a table can hold: the diagnostics registry plus eval, ppl, finetune and the trainer."""
    from rankscope.diagnostics.registry import all_diagnostics
    from rankscope.downstream.finetune import METRICS as FINETUNE
    from rankscope.downstream.ppl import METRICS as HELDOUT

    ids = {m for d in all_diagnostics().values() for m in d.metrics}
    ids |= set(FINETUNE) | set(HELDOUT) | {"shift_gap_nll"}  # shift_gap_nll: ppl.shift_gap_rows
    ids |= {"acc", "acc_norm", "avg_acc"}  # downstream/evaluate.py
    ids |= {"val_loss", "val_ppl"}  # the trainer's metrics.jsonl, shown in the report's Runs table
    return ids


def documented_metric_ids() -> list[str]:
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    return re.findall(r"^### `([a-z0-9_]+)`\s*$", text, flags=re.M)


def test_every_emitted_metric_has_exactly_one_heading_in_docs_metrics():
    documented = documented_metric_ids()
    assert len(documented) == len(set(documented)), "a metric has two headings in docs/metrics.md"
    emitted = emitted_metric_ids()
    assert not emitted - set(documented), f"metrics with no heading in docs/metrics.md: {sorted(emitted - set(documented))}"
    assert not set(documented) - emitted, f"docs/metrics.md defines metrics nothing emits: {sorted(set(documented) - emitted)}"


def test_report_glossary_covers_the_same_metrics():
    from rankscope.report.glossary import GLOSSARY

    assert set(GLOSSARY) == set(documented_metric_ids())


def test_headline_set_is_the_same_in_docs_analyze_report_and_predictor():
    from rankscope.diagnostics.analyze import HEADLINE_METRICS
    from rankscope.downstream.predict import HEADLINE as PREDICT_HEADLINE
    from rankscope.report.render import HEADLINE as REPORT_HEADLINE

    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    section = text.split("## The 16 headline metrics", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"\| (\d+) \| \[`([a-z0-9_]+)`\]", section)
    doc_headline = [m for _, m in sorted(listed, key=lambda p: int(p[0]))]
    assert len(doc_headline) == 16
    assert set(doc_headline) == set(HEADLINE_METRICS) == set(PREDICT_HEADLINE) == set(REPORT_HEADLINE)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (but - and _), spaces to dashes."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)} | set(re.findall(r'id="([^"]+)"', text))


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A file named in prose or code: a path with a folder of the repository, or any *.md name.
FILE_REF = re.compile(r"(?<![\w/.-])((?:docs|rankscope|tests|scripts|benchmarks)/[\w./-]*\w|[\w-]+\.md)(?![\w/])")
# Files that commands create in the user's folders (named in the docs as outputs, not repository files).
OUTPUTS = ("benchmarks/results/",)


def _resolves(doc: Path, ref: str) -> bool:
    if any(ref.startswith(p) for p in OUTPUTS):
        return True
    return any((base / ref).exists() for base in (doc.parent, ROOT))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_and_file_reference_resolves(doc: Path):
    text = doc.read_text(encoding="utf-8")
    problems = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s)://, mailto: ...
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path) if path else doc
        if not dest.exists():
            problems.append(f"link {target}: {dest} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"link {target}: no heading with anchor #{anchor} in {dest.name}")
    for ref in set(FILE_REF.findall(text)):
        if not _resolves(doc, ref.rstrip(".")):
            problems.append(f"file reference {ref} resolves neither from {doc.parent} nor from the repository root")
    for m in re.finditer(r"([\w-]+\.md)\s*§", text):
        problems.append(f"section reference '{m.group(0)}' into another document: link a heading instead")
    assert not problems, f"{doc.name}:\n" + "\n".join(problems)
