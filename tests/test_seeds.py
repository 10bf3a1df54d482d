"""init_seed / data_seed (evidence.md §1): one start shared across methods and data orders, data order and
method randomness from the data seed, ``seed`` as the shorthand, and old configs on their old trajectory."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from helpers_fs import assert_clean_failure, run_cli, snapshot
from helpers_seeds import FIXTURE, LEGACY_RUNS, LEGACY_STEPS, legacy_config, weight_summary

from rankscope.config import RunConfig, TrainConfig
from rankscope.data.batches import train_batches
from rankscope.data.tokenizer import load_tokenizer
from rankscope.errors import UserError
from rankscope.training.loop import build_model, train


def _with_seeds(cfg: RunConfig, **seeds) -> RunConfig:
    return replace(cfg, train=replace(cfg.train, **seeds))


def _assert_summary_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:  # fp32 sums recomputed in float64: equal runs agree far below this tolerance
        assert got[name] == pytest.approx(want[name], rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize("method,seed", LEGACY_RUNS)
def test_seed_alone_trains_the_trajectory_recorded_before_the_split(tmp_path, method, seed, one_thread):
    """The fixture was written by the code before init_seed/data_seed existed (tests/helpers_seeds.py)."""
    want = json.loads(FIXTURE.read_text())[f"{method}_{seed}"]
    cfg = legacy_config(tmp_path, method, seed)
    train(cfg, progress=False)
    _assert_summary_equal(weight_summary(cfg.run_dir, LEGACY_STEPS), want)
    both = _with_seeds(legacy_config(tmp_path, method, seed, name="both"), seed=0, init_seed=seed, data_seed=seed)
    assert both.fingerprint() == cfg.fingerprint()  # `seed` alone equals setting both
    train(both, progress=False)
    _assert_summary_equal(weight_summary(both.run_dir, LEGACY_STEPS), want)
    meta = json.loads((cfg.run_dir / "meta.json").read_text())
    assert (meta["seed"], meta["init_seed"], meta["data_seed"]) == (seed, seed, seed)


def test_old_format_run_folder_resumes_bit_exactly(tmp_path, one_thread):
    """A config.json without init_seed/data_seed (as old folders have) resumes onto the recorded path."""
    method, seed = "sltrain", 3
    cfg = legacy_config(tmp_path, method, seed)
    train(cfg, progress=False, stop_after=2)
    path = cfg.run_dir / "config.json"
    old = json.loads(path.read_text())
    del old["train"]["init_seed"], old["train"]["data_seed"]
    path.write_text(json.dumps(old))
    assert RunConfig.from_dict(old).fingerprint() == cfg.fingerprint()
    train(cfg, resume=True, progress=False)
    _assert_summary_equal(weight_summary(cfg.run_dir, LEGACY_STEPS), json.loads(FIXTURE.read_text())[f"{method}_{seed}"])


def test_same_init_seed_shares_the_start_across_methods_and_data_seeds(make_smoke_config):
    prints, base_weights = set(), []
    for method in ("full_rank", "sltrain", "cola", "relora"):
        for data_seed in (0, 1, 5):
            cfg = _with_seeds(make_smoke_config(method=method), init_seed=2, data_seed=data_seed)
            model, fingerprint = build_model(cfg, cfg.build_method())
            prints.add(fingerprint)
            if method == "full_rank":
                base_weights.append(model.state_dict())
    assert len(prints) == 1
    for sd in base_weights[1:]:  # the whole base model, not only the fingerprint's sample
        for k, v in sd.items():
            assert torch.equal(v, base_weights[0][k]), k
    other = _with_seeds(make_smoke_config(), init_seed=3, data_seed=0)
    assert build_model(other, other.build_method())[1] not in prints


def test_data_seed_changes_batch_order_and_method_draws(make_smoke_config):
    tok = load_tokenizer("embedded")

    def first_batch(**seeds):
        cfg = _with_seeds(make_smoke_config(), **seeds)
        return train_batches(cfg, tok).get(0, 0)[0]

    assert torch.equal(first_batch(init_seed=0, data_seed=1), first_batch(init_seed=7, data_seed=1))
    assert not torch.equal(first_batch(init_seed=0, data_seed=0), first_batch(init_seed=0, data_seed=1))
    assert torch.equal(first_batch(seed=4), first_batch(init_seed=9, data_seed=4))

    def support(data_seed):  # SLTrain's sparse support, drawn in the method's transform
        cfg = _with_seeds(make_smoke_config(method="sltrain"), init_seed=0, data_seed=data_seed)
        sd = build_model(cfg, cfg.build_method())[0].state_dict()
        return torch.cat([v.flatten() for k, v in sorted(sd.items()) if k.endswith("sparse_index")])

    supports = [support(d) for d in (0, 1, 2)]
    assert torch.equal(supports[1], support(1))  # reproducible
    assert not torch.equal(supports[0], supports[1]) and not torch.equal(supports[1], supports[2])

    def relora_seed(data_seed):
        cfg = _with_seeds(make_smoke_config(method="relora"), init_seed=0, data_seed=data_seed)
        method = cfg.build_method()
        build_model(cfg, method)
        return method.seed

    assert len({relora_seed(d) for d in (0, 1, 2)}) == 3
    for method, key in (("golore", "random_seed"), ("apollo", "projection_seed")):
        values = {getattr(_with_seeds(make_smoke_config(method=method), init_seed=0, data_seed=d).method_config(),
                          key) for d in (0, 1, 2)}
        assert len(values) == 3, method
        assert getattr(_with_seeds(make_smoke_config(method=method), seed=5).method_config(), key) == 0


def test_seed_fingerprint_is_canonical(make_smoke_config):
    cfg = make_smoke_config()
    a = _with_seeds(cfg, seed=3).fingerprint()
    assert a == _with_seeds(cfg, seed=0, init_seed=3, data_seed=3).fingerprint()
    assert a == _with_seeds(cfg, seed=3, data_seed=3).fingerprint()
    assert a != _with_seeds(cfg, seed=3, data_seed=4).fingerprint()
    assert _with_seeds(cfg, init_seed=1, data_seed=2).fingerprint() == _with_seeds(cfg, seed=9, init_seed=1,
                                                                                    data_seed=2).fingerprint()


def test_bad_seeds_are_user_errors():
    with pytest.raises(UserError, match=r"train.data_seed=-2 is not valid: give an integer >= -1, or -1 for the"):
        TrainConfig(data_seed=-2)
    with pytest.raises(UserError, match="train.seed=-1 is not valid: give an integer >= 0"):
        TrainConfig(seed=-1)


def test_bad_seed_flag_through_the_console_script(tmp_path):
    before = snapshot(tmp_path)
    proc = run_cli("train", "--model", "smoke", "--steps", "2", "--init-seed", "-3", "--out-dir", tmp_path / "r",
                   "--name", "x")
    assert_clean_failure(proc)
    assert "train.init_seed" in proc.stderr
    assert snapshot(tmp_path) == before
