"""WSD and cosine schedules: values at the named steps, and ReLoRA's jagged restarts on a WSD envelope."""

import math

import pytest

from rankscope.config import TrainConfig
from rankscope.errors import UserError
from rankscope.methods.base import Schedule, cosine_with_warmup
from rankscope.methods.registry import get_method
from rankscope.methods.relora import jagged_cosine
from rankscope.methods.schedules import lr_factor


@pytest.mark.parametrize("shape,mid", [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))])
def test_wsd_values_at_warmup_end_plateau_and_cooldown_end(shape, mid):
    s = Schedule(total_steps=100, warmup_steps=10, min_lr_ratio=0.1, kind="wsd", decay_steps=20, decay_shape=shape)
    assert lr_factor(0, s) == 0.0 and lr_factor(5, s) == pytest.approx(0.5)
    assert lr_factor(10, s) == 1.0  # warmup end
    assert all(lr_factor(t, s) == 1.0 for t in range(10, 81))  # plateau up to the decay start D = 80
    assert lr_factor(90, s) == pytest.approx(0.1 + 0.9 * mid)  # half-way through the decay
    assert lr_factor(100, s) == pytest.approx(0.1)  # cooldown end
    assert lr_factor(99, s) > 0.1 and lr_factor(81, s) < 1.0
    values = [lr_factor(t, s) for t in range(80, 101)]
    assert values == sorted(values, reverse=True)


def test_wsd_without_decay_is_constant_and_cosine_unchanged():
    s = Schedule(100, 10, 0.1, "wsd", 0)
    assert lr_factor(100, s) == 1.0 and lr_factor(57, s) == 1.0
    c = Schedule(100, 10, 0.1)
    assert all(lr_factor(t, c) == cosine_with_warmup(t, c) for t in range(101))


def test_train_config_decay_default_and_errors():
    assert TrainConfig(steps=100, schedule="wsd").decay == 20
    assert TrainConfig(steps=100).decay == 0
    with pytest.raises(UserError, match="decay_shape"):
        TrainConfig(schedule="wsd", decay_shape="exp")
    with pytest.raises(UserError, match="longer than the steps after warmup"):
        TrainConfig(steps=100, warmup_steps=10, schedule="wsd", decay_steps=95)


def test_cosine_run_keeps_its_fingerprint_fields():
    from rankscope.config import RunConfig

    d = RunConfig().trajectory_dict()["train"]
    assert "schedule" not in d
    assert "decay_shape" in RunConfig(train=TrainConfig(schedule="wsd")).trajectory_dict()["train"]


def test_relora_jagged_restarts_on_wsd_envelope():
    """Restarts continue in the stable phase (ramp to 1) and in the cooldown (ramp to the decayed envelope)."""
    s = Schedule(400, 20, 0.1, "wsd", 100, "linear")
    r, w = 100, 10
    assert jagged_cosine(150, s, r, w) == 1.0  # stable phase
    assert jagged_cosine(105, s, r, w) == pytest.approx(0.5)  # re-warm to the stable envelope
    env_310 = 0.1 + 0.9 * (1 - 10 / 100)  # envelope at the end of the re-warm after the merge at 300
    assert jagged_cosine(305, s, r, w) == pytest.approx(0.5 * env_310)
    assert jagged_cosine(350, s, r, w) == pytest.approx(0.1 + 0.9 * 0.5)
    assert jagged_cosine(399, s, r, w) == pytest.approx(0.1 + 0.9 * 0.01)  # the last update of the cooldown
    cls = get_method("relora")
    cls(cls.Config(reset_every=100, rewarm=10), Schedule(250, 25, 0.1, "wsd", 50))  # mid-cycle end is fine
