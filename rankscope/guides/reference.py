"""The full-rank reference run a guide steers toward (align, spectral): checks, and its weights at a step.

A usable reference is a rankscope run folder of method ``full_rank``, of the same model (preset and every
ModelConfig field) and the same initialisation (meta.json's ``init_fingerprint`` equals this run's), with at
least one checkpoint. At update k the guide uses the reference's checkpoint at step k, or the nearest earlier
one; before the reference's first checkpoint it uses the shared initial weights (equal by the fingerprint
check), rebuilt from the init seed. Every refusal is a UserError naming the folder and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rankscope.errors import UserError
from rankscope.training import checkpoint as ckpt


def run_init_fingerprint(run_cfg) -> str:
    """This run's init fingerprint, computed as the loop does, without touching the global RNG."""
    from rankscope.models.llama import LlamaLM
    from rankscope.training.loop import init_fingerprint

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run_cfg.train.weights_seed)
        return init_fingerprint(LlamaLM(run_cfg.model_config()))


def check_reference(guide: str, path: str, run_cfg) -> Path:
    """The reference folder after every check (exists, full-rank, same model, same init, has checkpoints)."""
    fix = (f"pass --set guide.reference=RUN with a full-rank run of model {run_cfg.model!r} and init seed "
           f"{run_cfg.train.weights_seed} that saved checkpoints (e.g. `rankscope train --method full_rank "
           f"--model {run_cfg.model} --seed {run_cfg.train.weights_seed} --save-every N`)")
    if not path:
        raise UserError(f"guide {guide!r} needs a full-rank reference run: {fix}")
    ref = Path(path)
    if not (ref / "config.json").is_file() or not (ref / "meta.json").is_file():
        raise UserError(f"guide {guide!r}: reference {ref} is not a rankscope run folder (no config.json and "
                        f"meta.json); {fix}")
    other = ckpt.read_run_config(ref)
    if other.method != "full_rank":
        raise UserError(f"guide {guide!r}: reference {ref} was trained with method {other.method!r}, not "
                        f"full_rank; {fix}")
    if other.model_config() != run_cfg.model_config():
        raise UserError(f"guide {guide!r}: reference {ref} is model {other.model!r} "
                        f"({other.model_config().to_dict()}), this run is model {run_cfg.model!r} "
                        f"({run_cfg.model_config().to_dict()}); activations and spectra compare only within one "
                        f"model size: {fix}")
    try:
        theirs = json.loads((ref / "meta.json").read_text()).get("init_fingerprint")
    except (OSError, ValueError):
        theirs = None
    mine = run_init_fingerprint(run_cfg)
    if theirs != mine:
        raise UserError(f"guide {guide!r}: reference {ref} started from other initial weights (init fingerprint "
                        f"{theirs!r} in its meta.json, this run's is {mine!r}); a guide steers toward the full-rank "
                        f"run of the same init: {fix}")
    if not ckpt.list_checkpoints(ref):
        raise UserError(f"guide {guide!r}: reference {ref} has no complete checkpoint under {ref / 'checkpoints'}; "
                        f"{fix}")
    return ref


class ReferenceWeights:
    """The reference model at the nearest checkpoint ≤ a step, reloaded only when that checkpoint changes."""

    def __init__(self, folder: Path, run_cfg, device, dtype: torch.dtype) -> None:
        self.folder, self.run, self.device, self.dtype = folder, run_cfg, device, dtype
        self.step: int | None = None  # checkpoint in use; -1 = the shared initial weights
        self.model = None

    def at(self, step: int):
        have = [s for s in ckpt.list_checkpoints(self.folder) if s <= step]
        want = have[-1] if have else -1
        if want != self.step:
            self.model = self._load(want)
            self.step = want
        return self.model

    def _load(self, step: int):
        if step < 0:
            from rankscope.models.llama import LlamaLM

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.run.train.weights_seed)
                model = LlamaLM(self.run.model_config())
        else:
            model, _ = ckpt.load_model(self.folder, step)
        model = model.to(device=self.device, dtype=self.dtype).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model
