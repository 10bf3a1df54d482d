"""Cost to target: FLOPs per method family, wall-clock from the train log, intervals across seeds."""

import math

import pytest

from rankscope.config import DataConfig, RunConfig
from rankscope.study.parity_cost import cost_row, seed_interval, training_seconds


def _cfg(method):
    return RunConfig(model="tiny", method=method, data=DataConfig(seq_len=256))


def test_flops_factorised_fewer_projected_more(tmp_path):
    rows = {m: cost_row(_cfg(m), tmp_path, 1e6, 2048, []) for m in ("full_rank", "cola", "galore")}
    assert rows["cola"]["flops_per_token"] < rows["full_rank"]["flops_per_token"]
    assert rows["galore"]["flops_per_token"] == rows["full_rank"]["flops_per_token"]
    assert rows["galore"]["flops_to_target"] > rows["full_rank"]["flops_to_target"]  # projection + refresh
    full = rows["full_rank"]
    assert full["flops_to_target"] == pytest.approx(1e6 * full["flops_per_token"])
    assert full["steps_to_target"] == pytest.approx(1e6 / 2048)
    missed = cost_row(_cfg("full_rank"), tmp_path, None, 2048, [])
    assert missed["flops_to_target"] is None and missed["seconds_to_target"] is None


def test_training_seconds_from_throughput():
    recs = [{"kind": "train", "step": 10, "tokens": 1000, "tok_per_s": 100.0},
            {"kind": "eval", "step": 10, "tokens": 1000},
            {"kind": "train", "step": 20, "tokens": 2000, "tok_per_s": 50.0}]
    assert training_seconds(recs) == pytest.approx(10 + 20)
    assert training_seconds(recs, until_tokens=1500) == pytest.approx(10 + 10)
    assert training_seconds([]) is None


def test_seed_interval_is_a_t_interval():
    got = seed_interval([1.0, 2.0, 3.0, None])
    assert got["mean"] == 2.0 and got["n"] == 3
    assert got["hi"] - got["mean"] == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert seed_interval([5.0]) == {"mean": 5.0, "lo": 5.0, "hi": 5.0, "n": 1}
    assert seed_interval([None])["mean"] is None


def test_train_log_has_measured_peak_and_cost_row_reads_it(make_smoke_config, one_thread):
    from rankscope.study.parity_cost import memory_bytes, peak_mib
    from rankscope.training.logging import read_metrics
    from rankscope.training.loop import train

    cfg = make_smoke_config("peak", steps=2)
    train(cfg, progress=False)
    records = read_metrics(cfg.run_dir)
    assert all(r["peak_mib"] > 10 for r in records if r["kind"] == "train")  # the process holds torch
    row = cost_row(cfg, cfg.run_dir, 128.0, 128, records)
    assert row["peak_mib"] == peak_mib(records) and row["memory_bytes"] == memory_bytes(cfg.run_dir) > 0
    assert row["seconds_to_target"] > 0
