"""Comparing two checkpoints tensor for tensor: the bit-exact resume tests of every method and preset."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def assert_checkpoints_identical(a_dir: Path, b_dir: Path, *, finite: bool = False) -> None:
    """Same safetensors files (model and optimizer at least), same keys, bit-identical tensors.

    ``finite``: also require every floating tensor to be finite (a diverged run can resume "exactly" too).
    """
    names = sorted(p.name for p in a_dir.glob("*.safetensors"))
    assert {"model.safetensors", "optimizer.safetensors"} <= set(names)
    assert names == sorted(p.name for p in b_dir.glob("*.safetensors"))
    for name in names:
        a, b = load_file(a_dir / name), load_file(b_dir / name)
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key}"
            if finite and a[key].is_floating_point():
                assert bool(torch.isfinite(a[key]).all()), f"{name}: {key}"
