"""align: loss and gradient 0 when the model equals its reference, the nearest-earlier checkpoint rule, its
CKA equal to the diagnostics' act_cka, and every refusal of an unusable reference (nothing written)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers_fs import assert_clean_failure, run_cli
from helpers_guides import batch, with_guide

from rankscope.diagnostics.activations import SimilarityAccumulator
from rankscope.errors import UserError
from rankscope.guides.align import linear_cka, procrustes_similarity
from rankscope.guides.options import build_guide
from rankscope.training import checkpoint as ckpt
from rankscope.training.loop import train


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A full-rank smoke run with checkpoints at updates 2 and 4."""
    from conftest import smoke_config

    torch.set_num_threads(1)
    cfg = smoke_config(tmp_path_factory.mktemp("ref"), "fr", "full_rank", steps=4, save_every=2)
    train(cfg, progress=False)
    return cfg.run_dir


def alignment_only(model, guide, step, ids, labels):
    """The guide's term alone: forward (hooks capture), extra term, backward; returns (term, max |grad|)."""
    out = {}

    def micro_pass(extra=None):
        model(ids)
        out["term"] = extra(ids, labels)
        out["term"].backward()
        return out["term"].detach()

    for p in model.parameters():
        p.grad = None
    guide.accumulate(step, micro_pass)
    grad = max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None)
    return float(out["term"].detach()), grad


@pytest.mark.parametrize("similarity", ["cka", "procrustes"])
def test_align_loss_and_gradient_vanish_at_the_reference(make_smoke_config, one_thread, reference, similarity):
    cfg = with_guide(make_smoke_config(steps=6), "align", reference=str(reference), layers="1,2",
                     similarity=similarity, weight=1.0)
    guide = build_guide(cfg)
    guide.check(cfg.build_method())
    model, _ = ckpt.load_model(reference, 4)
    model = model.double().train()
    guide.setup(model, None, info=None)
    ids, labels = batch(cfg, rows=4, length=32)
    for step in (4, 5):  # the checkpoint at 4, and at 5 the nearest earlier one (4)
        term, grad = alignment_only(model, guide, step, ids, labels)
        assert abs(term) < 1e-12 and grad < 1e-9, (step, term, grad)
        assert guide.ref.step == 4
    term, grad = alignment_only(model, guide, 3, ids, labels)  # reference at 2: another model
    assert guide.ref.step == 2 and term > 1e-6 and grad > 1e-6
    term, _ = alignment_only(model, guide, 0, ids, labels)  # before any checkpoint: the shared init
    assert guide.ref.step == -1 and term > 1e-6


def test_linear_cka_is_the_diagnostics_cka():
    torch.manual_seed(0)
    x = torch.randn(300, 16, dtype=torch.float64) + 3.0
    y = x @ torch.randn(16, 12, dtype=torch.float64) + 0.5 * torch.randn(300, 12, dtype=torch.float64)
    acc = SimilarityAccumulator(cross=True)
    acc.update([x], [y])
    assert float(linear_cka(x, y)) == pytest.approx(acc.results()["act_cka"][0], rel=1e-10)
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    assert float(procrustes_similarity(x, x @ q)) == pytest.approx(1.0, abs=1e-12)
    assert float(procrustes_similarity(x, y[:, :12])) < 0.99


def _copy(reference, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(reference, dst)
    return dst


def _edit(path, **fields):
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("damage,needle", [
    ("method", "not full_rank"), ("model", "model 'tiny'"), ("init", "other initial weights"),
    ("no_checkpoints", "no complete checkpoint"), ("not_a_run", "not a rankscope run folder"),
])
def test_unusable_reference_is_refused(make_smoke_config, reference, tmp_path, damage, needle):
    ref = _copy(reference, tmp_path, damage)
    if damage == "method":
        _edit(ref / "config.json", method="galore")
    elif damage == "model":
        _edit(ref / "config.json", model="tiny")
    elif damage == "init":
        _edit(ref / "meta.json", init_fingerprint="0123456789abcdef")
    elif damage == "no_checkpoints":
        shutil.rmtree(ref / "checkpoints")
    else:
        (ref / "config.json").unlink()
    cfg = with_guide(make_smoke_config(), "align", reference=str(ref))
    with pytest.raises(UserError, match=needle):
        build_guide(cfg).check(cfg.build_method())


SMOKE = ("train", "--model", "smoke", "--steps", "3", "--micro-batch-size", "2", "--seq-len", "64",
         "--eval-every", "0", "--eval-tokens", "1024", "--quiet", "--guide", "align")


@pytest.mark.parametrize("extra,needle", [((), "needs a full-rank reference run"),
                                           (("--seed", "1"), "other initial weights")])
def test_align_refusal_through_the_cli(tmp_path, reference, extra, needle):
    proc = run_cli(*SMOKE, *extra, "--set", f"guide.reference={reference}" if extra else "guide.weight=1",
                   "--out-dir", tmp_path / "runs", "--name", "bad")
    assert_clean_failure(proc, 2)
    assert needle in proc.stderr and not (tmp_path / "runs").exists()
