"""One "average accuracy" everywhere (issue 25, item 3) and the floors printed beside each accuracy (item 12)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from rankscope.diagnostics.table import rows_to_frame
from rankscope.downstream.average import average_accuracy, averaged_tasks, definition, primary_task_set
from rankscope.downstream.evaluate import answer_rates, evaluate_model, scores_to_rows


def test_hard_subsets_are_reported_not_averaged():
    assert averaged_tasks(["agreement", "agreement_hard", "cloze", "x_hard"]) == ["agreement", "cloze", "x_hard"]
    text = definition(["cloze", "agreement_hard", "agreement"])
    assert "2 task(s): agreement, cloze" in text and "agreement_hard: a subset" in text


def test_answer_rates_chance_and_majority():
    probe = [{"text": "t", "label": lab, "part": part}
             for lab, part in [(0, "train"), (1, "train"), (0, "test"), (0, "test"), (0, "test"), (1, "test")]]
    assert answer_rates(probe) == (0.5, 0.75)  # majority counted on the test part only
    yes_no = [{"context": "c", "choices": ["no", "yes"], "label": lab} for lab in (1, 1, 1, 0, 1)]
    assert answer_rates(yes_no) == (0.5, 0.8)
    varying = [{"context": "c", "choices": ["a", "b", "c"], "label": 0}, {"context": "c", "choices": ["d", "e"], "label": 1}]
    chance, majority = answer_rates(varying)
    assert chance == pytest.approx((1 / 3 + 1 / 2) / 2) and majority is None


@pytest.fixture(scope="module")
def three_models_frame() -> pd.DataFrame:
    """Real evaluator rows of three random smoke models (different item subsamples), as three methods."""
    from rankscope.data.tokenizer import load_tokenizer
    from rankscope.models import LlamaLM, model_config

    tok = load_tokenizer("embedded")
    frames = []
    for i, method in enumerate(("full_rank", "galore", "cola")):
        torch.manual_seed(i)
        model = LlamaLM(model_config("smoke")).eval()
        with torch.inference_mode():
            scores = evaluate_model(model, tok, max_items=40, seed=i, bootstrap_iters=50)
        frames.append(rows_to_frame(scores_to_rows(scores, f"run_{method}", method, 10)))
    return pd.concat(frames, ignore_index=True)


def test_eval_report_f6_p1_and_predictor_give_the_same_average(three_models_frame):
    from rankscope.downstream.predict import target_values
    from rankscope.report.downstream_table import downstream_table
    from rankscope.report.findings_downstream import check_f6
    from rankscope.report.htmlkit import fmt
    from rankscope.report.load import normalise_table

    down = normalise_table(three_models_frame)
    assert "agreement_hard" in set(down["name"])  # the subset that used to be averaged in the report
    from_eval = down[down["metric"] == "avg_acc"].set_index("run")["value"]
    from_tasks = average_accuracy(down)
    pd.testing.assert_series_equal(from_eval.sort_index(), from_tasks.sort_index(), check_names=False)
    naive = down[(down["metric"] == "acc") & (down["scope"] == "task")].groupby("run")["value"].mean()
    assert not np.allclose(naive.sort_index(), from_tasks.sort_index())  # the old 5-task mean differs

    pd.testing.assert_series_equal(target_values(down).sort_index(), from_tasks.sort_index(), check_names=False)
    no_avg_rows = down[down["metric"] != "avg_acc"]
    pd.testing.assert_series_equal(average_accuracy(primary_task_set(no_avg_rows)).sort_index(),
                                   from_tasks.sort_index(), check_names=False)

    runs = pd.DataFrame({"run": from_tasks.index, "method": [r.removeprefix("run_") for r in from_tasks.index],
                         "val_ppl": [100.0, 120.0, 110.0]})
    f6 = check_f6(down, runs)
    means = [ev for ev in f6.evidence if ev.label.endswith("tasks")]
    assert len(means) == 3
    for ev in means:
        method = ev.label.split(":")[0]
        assert ev.value == pytest.approx(from_tasks[f"run_{method}"]), ev.label
        assert "over 4 tasks" in ev.label

    html = downstream_table(down)
    avg_row = re.search(r"<tr><td><b>average accuracy</b>(.*?)</tr>", html).group(1)
    assert "agreement, cloze, genre, nextsent" in avg_row and "agreement_hard: a subset" in avg_row
    for run, value in from_tasks.items():
        assert f"<td>{fmt(value)}</td>" in avg_row, run
    assert html.count("average accuracy") == 1  # one average per model per task set

    from rankscope.report.parity_section import differ_at_parity

    p1 = differ_at_parity(down)
    a, b = p1.evidence[0].label.removeprefix("avg_acc ").removesuffix(" (largest pair)").split(" − ")
    assert p1.evidence[0].value == pytest.approx(from_tasks[f"run_{a}"] - from_tasks[f"run_{b}"])


def test_report_prints_chance_and_majority_beside_each_task(three_models_frame):
    from rankscope.report.downstream_table import downstream_table

    html = downstream_table(three_models_frame)
    genre = re.search(r"<tr><td>genre</td>(.*?)</tr>", html).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", genre)
    assert cells[1] == "0.5"  # chance: two classes
    assert 0.5 < float(cells[2]) < 1  # majority class of the scored probe items
    cloze = re.findall(r"<td[^>]*>(.*?)</td>", re.search(r"<tr><td>cloze</td>(.*?)</tr>", html).group(1))
    assert cloze[1] == "0.25" and cloze[2] == "–"
