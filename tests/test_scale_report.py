"""``rankscope report A B C``: single-size study folders combined into one multi-size study and its report, and the
refusals (methods, data or seeds that disagree; a size given twice; no --out), each naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers_fs import assert_clean_failure, run_cli, snapshot
from helpers_report import make_synthetic_study

from rankscope.report.combine import combine_studies, out_problem, read_size_studies


def size_study(root: Path, size: str, rng_seed: int, **kw) -> Path:
    """A synthetic single-size study folder whose study.json names ``size`` as its model."""
    folder = make_synthetic_study(root / size, seeds=kw.pop("seeds", (0, 1)), rng_seed=rng_seed, **kw)
    study = json.loads((folder / "study.json").read_text())
    study["model"] = size
    study["predict"] = {"bootstrap_iters": 40}  # the pooled predictor takes the sizes' setting
    (folder / "study.json").write_text(json.dumps(study))
    return folder


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sizes")
    return size_study(root, "130m", 1), size_study(root, "60m", 2)


@pytest.fixture(scope="module")
def combined(two_sizes, tmp_path_factory) -> Path:
    """The combined folder, made through the console script (larger size first: the order given must not matter)."""
    big, small = two_sizes
    out = tmp_path_factory.mktemp("combined") / "both"
    before = snapshot(big), snapshot(small)
    proc = run_cli("report", str(big), str(small), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (snapshot(big), snapshot(small)) == before  # the inputs are read, never written
    return out


def test_combined_tables_stack_every_size_with_renamed_runs(two_sizes, combined) -> None:
    big, small = two_sizes
    study = json.loads((combined / "study.json").read_text())
    assert study["models"] == ["60m", "130m"]  # smallest first, whatever the order given
    for stem in ("diagnostics", "downstream"):
        both = pd.read_parquet(combined / "results" / f"{stem}.parquet")
        parts = {s: pd.read_parquet(f / "results" / f"{stem}.parquet") for s, f in (("60m", small), ("130m", big))}
        assert len(both) == sum(len(p) for p in parts.values())
        for size, part in parts.items():
            mine = both[both["scale"] == size].reset_index(drop=True)
            assert list(mine["run"]) == [f"{r}@{size}" for r in part["run"]]
            pd.testing.assert_series_equal(mine["value"], part["value"], check_names=False)
            pairs = mine[(mine["scope"] == "pair") & (mine["metric"] == "imib")]
            assert stem == "downstream" or len(pairs) and all(n.endswith(f"@{size}") for n in pairs["name"])
    pred = json.loads((combined / "results" / "prediction.json").read_text())
    assert "loso" in pred["schemes"] and pred["n_by_size"] == {"130m": 14, "60m": 14}
    from rankscope.report.render_scale import load_multi
    from rankscope.report.scale_section import runs_frame

    data, size_of, _ = load_multi(combined)
    runs = runs_frame(data.runs, size_of)
    assert len(runs) == 2 * 14 and set(runs["scale"]) == {"60m", "130m"}
    assert set(runs.loc[runs["sibling"], "run"]) == {f"full_rank_s{s}_d2@{z}" for s in (0, 1) for z in ("60m", "130m")}


def test_combined_report_has_the_scale_axis_and_folds_each_size(combined) -> None:
    html = (combined / "report.html").read_text()
    for fid in ("F1", "F3", "F6", "F7"):
        assert f'data-finding="{fid}-scale"' in html
    for fig in ("scale-metrics", "scale-ppl-downstream"):
        block = html.split(f'data-figure="{fig}"', 1)[1][:400]
        assert "data:image/png;base64," in block, block
    assert html.count("<details data-size-report=") == 2
    assert 'id="60m-noise-floor"' in html and 'id="130m-noise-floor"' in html  # nested anchors stay unique
    assert "(loso)" in html  # the pooled predictor's leave-one-size-out row
    f7 = html.split('data-finding="F7-scale"', 1)[1].split('<div class="finding"', 1)[0]
    assert "pooled predictor over 2 sizes" in f7 and "(per-size predictors: 60m:" in f7  # each size's own beside it


def test_combining_again_rewrites_the_same_tables(two_sizes, combined) -> None:
    first = {stem: pd.read_parquet(combined / "results" / f"{stem}.parquet") for stem in ("diagnostics", "downstream")}
    assert out_problem(combined, list(two_sizes)) is None  # an earlier combined folder may be rewritten
    combine_studies(list(two_sizes), combined)
    for stem, frame in first.items():
        pd.testing.assert_frame_equal(pd.read_parquet(combined / "results" / f"{stem}.parquet"), frame)


def _edit(folder: Path, **fields) -> None:
    study = json.loads((folder / "study.json").read_text())
    study.update(fields)
    (folder / "study.json").write_text(json.dumps(study))


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    methods = ("full_rank", "galore", "fira")
    return size_study(root, "60m", 3, methods=methods), size_study(root, "130m", 4, methods=methods)


@pytest.mark.parametrize("field, value, says", [
    ("methods", ["full_rank", "galore"], "disagree on 'methods'"),
    ("seeds", [0, 1, 2], "disagree on 'seeds'"),
    ("data", {"source": "embedded", "label": "other corpus"}, "disagree on 'data.label'"),
    ("siblings", {"methods": ["full_rank"], "data_seeds": [7]}, "disagree on 'siblings'"),
    ("model", "60m", "size 60m given twice"),
])
def test_combining_studies_that_disagree_is_refused_naming_the_field(small_pair, field, value, says) -> None:
    from rankscope.errors import UserError

    a, b = small_pair
    saved = (b / "study.json").read_text()
    _edit(b, **{field: value})
    try:
        with pytest.raises(UserError) as err:
            read_size_studies([a, b])
    finally:
        (b / "study.json").write_text(saved)
    assert says in str(err.value) and str(b) in str(err.value)


def test_disagreeing_studies_through_the_console_script_write_nothing(small_pair, tmp_path) -> None:
    a, b = small_pair
    saved = (b / "study.json").read_text()
    _edit(b, methods=["full_rank", "galore"])
    try:
        before = snapshot(a.parent)
        proc = run_cli("report", str(a), str(b), "--out", str(tmp_path / "combined"))
        after = snapshot(a.parent)
    finally:
        (b / "study.json").write_text(saved)
    assert_clean_failure(proc, 2)
    assert "disagree on 'methods'" in proc.stderr and str(b) in proc.stderr.replace("\n", "")
    assert after == before and not (tmp_path / "combined").exists()


def test_report_of_several_folders_needs_a_folder_out(two_sizes, tmp_path) -> None:
    big, small = two_sizes
    proc = run_cli("report", str(small), str(big))
    assert_clean_failure(proc, 2)
    assert "needs --out" in proc.stderr
    assert "names an HTML file" in out_problem(tmp_path / "r.html", [small, big])
    assert "one of the study folders" in out_problem(small, [small, big])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert "not a combined study" in out_problem(tmp_path / "busy", [small, big])


def test_read_size_studies_refuses_a_multi_size_folder(two_sizes, combined) -> None:
    from rankscope.errors import UserError

    with pytest.raises(UserError, match="already a multi-size study"):
        read_size_studies([combined, two_sizes[0]])


@pytest.mark.browser
def test_combined_report_in_a_browser(combined) -> None:
    """Every figure of the report across sizes (the folded size reports' too) decodes, with no console errors."""
    from rankscope.report.browser import INSTALL_HINT, check_page, find_chromium

    if find_chromium() is None:
        pytest.skip(f"headless Chromium not found; install: {INSTALL_HINT}")
    seen = check_page(combined / "report.html")
    assert seen.probe_ran and seen.console_errors == []
    assert seen.figures_total >= 2 + 2 * 8 and seen.figures_ok == seen.figures_total


def _item_rows(runs: list[str]) -> pd.DataFrame:
    from rankscope.downstream.item_rows import COLUMNS

    rows = [{"run": r, "method": r.split("_s")[0], "step": 1, "task_set": "embedded", "task": "cloze", "metric": "acc",
             "item": i, "correct": (i + k) % 2, "margin": 0.0} for k, r in enumerate(runs) for i in range(4)]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_combining_stacks_the_per_item_rows_with_renamed_runs_or_writes_none(two_sizes, tmp_path) -> None:
    """The pooled predictor resamples items only if the combined folder has every size's item rows."""
    import shutil

    from rankscope.downstream.item_rows import read_items, write_items

    copies = [Path(shutil.copytree(f, tmp_path / f.name)) for f in two_sizes]
    for folder in copies:
        runs = sorted(set(pd.read_parquet(folder / "results" / "downstream.parquet")["run"].astype(str)))
        write_items(_item_rows(runs), folder / "results" / "downstream.parquet")
    out = combine_studies(copies, tmp_path / "both")
    items = read_items(out / "results" / "downstream.parquet")
    assert items is not None
    for folder in copies:
        own = read_items(folder / "results" / "downstream.parquet")
        mine = items[items["run"].str.endswith(f"@{folder.name}")]
        assert list(mine["run"]) == [f"{r}@{folder.name}" for r in own["run"]]
        assert list(mine["correct"]) == list(own["correct"])
    (copies[0] / "results" / "downstream_items.parquet").unlink()  # one size without item rows: none combined
    combine_studies(copies, tmp_path / "both")
    assert read_items(tmp_path / "both" / "results" / "downstream.parquet") is None
