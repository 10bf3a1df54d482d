"""Issue 12 item 10: two identical runs give byte-identical downstream tables (no wall-clock values)."""

from __future__ import annotations

import json

import pandas as pd
from conftest import smoke_config


def test_identical_runs_give_identical_downstream_and_heldout_tables(tmp_path):
    from rankscope.diagnostics.table import read_table
    from rankscope.downstream.evaluate import evaluate_runs
    from rankscope.downstream.ppl import ppl_runs
    from rankscope.training.loop import train

    runs = []
    for study in ("a", "b"):  # two "studies": same config, different folders
        cfg = smoke_config(tmp_path / study, name="run", steps=2)
        train(cfg, progress=False)
        runs.append(cfg.run_dir)
    frames = [evaluate_runs([r], tasks=["cloze", "genre"], max_items=12, bootstrap_iters=20) for r in runs]
    a, b = (read_table(r / "results" / "downstream.parquet") for r in runs)
    assert len(a) >= 3
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(frames[0], frames[1])
    for settings in a["settings"]:
        assert not {"seconds", "time", "timestamp", "date"} & set(json.loads(settings))

    held = [ppl_runs([r], ["val"], max_docs=4, bootstrap_iters=20) for r in runs]
    pd.testing.assert_frame_equal(held[0], held[1])
    assert held[0]["settings_hash"].nunique() >= 1 and "seconds" not in held[0]["settings"].iloc[0]
