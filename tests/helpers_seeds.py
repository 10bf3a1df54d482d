"""Weight summaries of short seeded smoke runs, and the fixture recorded before ``init_seed``/``data_seed``.

``tests/fixtures/seed_legacy.json`` was written by ``python tests/helpers_seeds.py`` with the code of main
at 706ac9b (one ``seed`` for weights, data order and method randomness). A run configured with ``seed``
alone must still train exactly that trajectory, so old run folders resume onto the path they were on.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "seed_legacy.json"
#: (method, seed): full-rank (weights + order), SLTrain (sparse supports), ReLoRA (method seed), SPAM (masks).
LEGACY_RUNS = (("full_rank", 3), ("sltrain", 3), ("relora", 2), ("spam", 1))
LEGACY_STEPS = 4


# The smoke-size rates the fixture was recorded with (the defaults of the time; docs/study.md "Learning rates at
# smoke" raised full-rank's, SLTrain's and ReLoRA's later): pinned so the recorded trajectory stays the reference.
LEGACY_LR = {"full_rank": 1e-3, "sltrain": 2e-3, "relora": 1e-3}


def legacy_options(method: str) -> dict:
    return {"relora": {"reset_every": 2, "rewarm": 1}, "spam": {"reset_every": 2, "warmup": 1}}.get(method, {})


def weight_summary(run_dir: Path, step: int) -> dict[str, list[float]]:
    """Per tensor: (sum, sum of squares, first value) in float64: robust to print, exact enough to compare."""
    from safetensors.torch import load_file

    from rankscope.training import checkpoint as ckpt

    weights = load_file(ckpt.step_dir(run_dir, step) / "model.safetensors")
    out = {}
    for name, t in sorted(weights.items()):
        t = t.double().flatten()
        out[name] = [float(t.sum()), float((t * t).sum()), float(t[0])]
    return out


def legacy_config(out_dir: Path, method: str, seed: int, name: str | None = None, **train_kw):
    """The smoke RunConfig of the fixture (seed given as the one ``seed`` of old configs)."""
    from conftest import smoke_config

    from rankscope.config import RunConfig

    if method in LEGACY_LR:
        train_kw.setdefault("lr", LEGACY_LR[method])
    cfg = smoke_config(out_dir, name or f"{method}_{seed}", method, LEGACY_STEPS, seed=seed, save_every=2,
                       **train_kw)
    return RunConfig.from_dict({**cfg.to_dict(), "method_options": legacy_options(method)})


def record() -> None:
    from rankscope.training.loop import train

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method, seed in LEGACY_RUNS:
            cfg = legacy_config(Path(tmp), method, seed)
            train(cfg, progress=False)
            out[f"{method}_{seed}"] = weight_summary(cfg.run_dir, LEGACY_STEPS)
    FIXTURE.write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    record()
