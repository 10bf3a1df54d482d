"""Runs trained elsewhere: one Hugging Face LLaMA folder, or a series of them (docs/external_runs.md).

A series is a folder whose sub-folders are checkpoints named ``model_<step>`` (the GaLore/ReLoRA/SLTrain/
CoLA releases), ``checkpoint-<step>`` (HF Trainer) or ``step-<step>``; or an explicit list in a
``rankscope_run.json`` (in the folder, or given itself as the run). Everything is checked when the run is
opened, before any command writes a file: config.json of every checkpoint (same shapes), weight files
(present, not truncated, no pickle unless allowed), layout, tokenizer (found, and no larger than the
model's vocabulary). Labels (name, method, seed, scale) come from the sidecar and ``--label`` flags, since
the folder does not know how it was trained.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rankscope.errors import UserError
from rankscope.json_io import read_json_object
from rankscope.models.hf_folder import (
    model_config_from_hf,
    read_config_json,
    read_weights,
    shape_fields,
    weight_files,
)
from rankscope.models.hf_layouts import DEFAULT_METHOD, build_model, detect_layout
from rankscope.models.llama import LlamaLM, ModelConfig
from rankscope.runs.base import Run

log = logging.getLogger(__name__)

SIDECAR = "rankscope_run.json"
STEP_NAMES = re.compile(r"^(?:model_|checkpoint-|step-|step_)(\d+)$")
LABEL_KEYS = ("name", "method", "seed", "scale")
SPEC_KEYS = (*LABEL_KEYS, "checkpoints", "tokenizer", "data", "step")
DEFAULT_SEQ_LEN = 256  # held-out sequences of external runs, as rankscope's own presets


@dataclass
class ExternalOptions:
    """What the command line adds to external runs: a tokenizer, labels per run, permission to unpickle."""

    tokenizer: str | None = None
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)  # run argument -> {method: ..., seed: ...}
    allow_pickle: bool = False

    def labels_for(self, path: Path) -> dict[str, Any]:
        want = Path(path).resolve()
        return next((v for k, v in self.labels.items() if Path(k).resolve() == want), {})


@dataclass
class ExternalRun(Run):
    kind: str = "external"

    @classmethod
    def open(cls, path: str | Path, options: ExternalOptions | None = None) -> ExternalRun:
        options = options or ExternalOptions()
        path = Path(path)
        spec, base = _read_spec(path)
        checkpoints = _find_checkpoints(path, spec, base)
        hf, mcfg, layout = _check_series(checkpoints, options.allow_pickle)
        labels = {**{k: spec[k] for k in LABEL_KEYS if k in spec}, **options.labels_for(path)}
        tokenizer = _find_tokenizer(options.tokenizer or _rel(spec.get("tokenizer"), base), checkpoints, base, path)
        _check_tokenizer(tokenizer, mcfg, path)
        data = _data_config(spec.get("data") or {}, tokenizer, mcfg, path)
        name = str(labels.get("name") or (path.stem if path.is_file() else path.resolve().name))
        run = cls(path, name, str(labels.get("method") or DEFAULT_METHOD[layout]),
                  str(labels.get("scale") or scale_label(mcfg)), _int_seed(labels.get("seed", 0), path),
                  sorted(checkpoints), data)
        run.extra.update(checkpoints=checkpoints, hf=hf, model_config=mcfg, layout=layout,
                         allow_pickle=options.allow_pickle)
        return run

    @property
    def layout(self) -> str:
        return self.extra["layout"]

    def model_config(self) -> ModelConfig:
        return self.extra["model_config"]

    @property
    def has_dense_form(self) -> bool:  # type: ignore[override]
        return self.layout != "cola"

    def checkpoint_dir(self, step: int) -> Path:
        return self.extra["checkpoints"][step]

    def _load(self, step: int, device: str | torch.device) -> LlamaLM:
        folder = self.checkpoint_dir(step)
        state = read_weights(folder, self.extra["allow_pickle"])
        return build_model(state, self.model_config(), self.layout, folder, read_config_json(folder)).to(device)


def scale_label(mcfg: ModelConfig) -> str:
    """The rankscope preset of that exact shape (so an exported run compares with its source), else d×L."""
    from dataclasses import replace

    from rankscope.models.presets import PRESETS

    for name, preset in PRESETS.items():
        if replace(preset, vocab_size=mcfg.vocab_size, max_seq_len=mcfg.max_seq_len, rope_base=mcfg.rope_base,
                   norm_eps=mcfg.norm_eps, init_std=mcfg.init_std) == mcfg:
            return name
    return f"d{mcfg.d_model}-L{mcfg.n_layers}"


def _rel(value: Any, base: Path) -> str | None:
    if not value:
        return None
    p = Path(str(value)).expanduser()
    return str(p if p.is_absolute() else base / p)


def _read_spec(path: Path) -> tuple[dict[str, Any], Path]:
    """The sidecar (or the spec file given as the run) and the folder its relative paths start from."""
    if not path.exists():
        raise UserError(f"{path} is not a rankscope run folder nor a checkpoint folder: it does not exist")
    spec_path = path if path.is_file() else path / SIDECAR
    if not spec_path.is_file():
        return {}, path
    spec = read_json_object(spec_path, "see docs/external_runs.md for its format",
                            "a JSON object (name, method, seed, checkpoints, ...)")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise UserError(f"{spec_path}: unknown field(s) {unknown}; valid fields: {', '.join(SPEC_KEYS)}")
    return spec, spec_path.parent


def _find_checkpoints(path: Path, spec: dict[str, Any], base: Path) -> dict[int, Path]:
    listed = spec.get("checkpoints")
    if listed is not None:
        if not isinstance(listed, dict) or not listed:
            raise UserError(f"{path}: 'checkpoints' must map step numbers to folders, e.g. "
                            f'{{"1000": "model_1000", "2000": "/data/run/model_2000"}}')
        out = {}
        for step, folder in listed.items():
            if not str(step).isdigit():
                raise UserError(f"{path}: checkpoint step {step!r} is not a non-negative integer")
            out[int(step)] = Path(_rel(folder, base))
        return out
    if path.is_file():
        raise UserError(f"{path}: a run given as a JSON file needs a 'checkpoints' mapping (step -> folder)")
    if (path / "config.json").is_file():  # one HF folder: its step from the sidecar, its name or the Trainer state
        return {_single_step(path, spec): path}
    candidates = sorted(p for p in path.iterdir() if p.is_dir() and (p / "config.json").is_file())
    out = {}
    for p in candidates:
        m = STEP_NAMES.match(p.name)
        if m:
            if int(m.group(1)) in out:
                raise UserError(f"{path}: {out[int(m.group(1))].name} and {p.name} are both step {m.group(1)}; "
                                f"keep one of them")
            out[int(m.group(1))] = p
    if not candidates:
        raise UserError(f"{path} is not a rankscope run folder (no config.json) nor a folder of Hugging Face "
                        f"checkpoints (no sub-folder with a config.json); pass a run folder, a checkpoint "
                        f"folder, or a series of model_<step>/, checkpoint-<step>/ or step-<step>/ folders")
    if not out:
        raise UserError(f"{path}: no checkpoint step could be parsed from its folder names "
                        f"({', '.join(p.name for p in candidates[:5])}); name them model_<step>, "
                        f"checkpoint-<step> or step-<step>, or list them in {path / SIDECAR} as "
                        f'{{"checkpoints": {{"<step>": "<folder>"}}}}')
    skipped = [p.name for p in candidates if not STEP_NAMES.match(p.name)]
    if skipped:
        log.warning("%s: sub-folder(s) %s have no step in their name and are not part of the series", path, skipped)
    return out


def _single_step(path: Path, spec: dict[str, Any]) -> int:
    if isinstance(spec.get("step"), int):
        return spec["step"]
    m = STEP_NAMES.match(path.resolve().name)
    if m:
        return int(m.group(1))
    try:
        return int(json.loads((path / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _check_series(checkpoints: dict[int, Path], allow_pickle: bool) -> tuple[dict, ModelConfig, str]:
    """config.json of every checkpoint, one shape and one layout for the series, weights present and whole."""
    first: tuple[int, dict, ModelConfig, str] | None = None
    for step in sorted(checkpoints):
        folder = checkpoints[step]
        if not folder.is_dir():
            raise UserError(f"checkpoint folder {folder} (step {step}) does not exist")
        hf = read_config_json(folder)
        mcfg = model_config_from_hf(hf, folder / "config.json")
        files = weight_files(folder, allow_pickle)
        layout = detect_layout(hf, folder, _tensor_names(files))
        if first is None:
            first = (step, hf, mcfg, layout)
            continue
        s0, _, m0, l0 = first
        diff = {k: (v, shape_fields(mcfg)[k]) for k, v in shape_fields(m0).items() if shape_fields(mcfg)[k] != v}
        if diff:
            shown = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items())
            raise UserError(f"checkpoints of one series must have one shape, but {checkpoints[s0]} (step {s0}) "
                            f"and {folder} (step {step}) differ: {shown}. Give each model its own run")
        if layout != l0:
            raise UserError(f"{checkpoints[s0]} is a {l0} checkpoint but {folder} is {layout}; a series holds "
                            f"the checkpoints of one run")
    assert first is not None
    return first[1], first[2], first[3]


def _tensor_names(files: list[Path]) -> set[str]:
    from safetensors import safe_open

    names: set[str] = set()
    for f in files:
        if f.suffix == ".safetensors":
            with safe_open(str(f), "pt") as fh:
                names.update(fh.keys())
    return names


def _find_tokenizer(given: str | None, checkpoints: dict[int, Path], base: Path, path: Path) -> Path:
    if given:
        p = Path(given).expanduser()
        p = p / "tokenizer.json" if p.is_dir() else p
        if not p.is_file():
            raise UserError(f"tokenizer {given} for run {path} does not exist (give a tokenizer.json file or a "
                            f"folder holding one)")
        return p
    places = [*(checkpoints[s] for s in sorted(checkpoints, reverse=True)), base]
    for folder in places:
        if (folder / "tokenizer.json").is_file():
            return folder / "tokenizer.json"
    other = [f for folder in places for f in ("tokenizer.model", "tokenizer_config.json") if (folder / f).is_file()]
    hint = (f" It has {other[0]} but no tokenizer.json: rankscope reads the fast tokenizer file, which "
            f"AutoTokenizer.from_pretrained(dir).save_pretrained(dir) writes.") if other else ""
    raise UserError(f"run {path} has no tokenizer: no tokenizer.json in its checkpoint folders or in {base}.{hint} "
                    f"Pass --tokenizer PATH/tokenizer.json (or set \"tokenizer\" in {SIDECAR})")


def _check_tokenizer(tokenizer: Path, mcfg: ModelConfig, path: Path) -> None:
    from rankscope.data.tokenizer import TextTokenizer

    tok = TextTokenizer.from_file(tokenizer)
    if tok.vocab_size > mcfg.vocab_size:
        raise UserError(f"tokenizer {tokenizer} has {tok.vocab_size} ids but the model of run {path} has "
                        f"vocab_size={mcfg.vocab_size}: this is not the tokenizer the model was trained with. "
                        f"Pass the right one with --tokenizer")


def _data_config(overrides: dict[str, Any], tokenizer: Path, mcfg: ModelConfig, path: Path):
    from rankscope.config import DataConfig, _build

    if not isinstance(overrides, dict):
        raise UserError(f"{path}: 'data' in {SIDECAR} must be an object of data settings (e.g. val_files)")
    values = {"seq_len": min(DEFAULT_SEQ_LEN, mcfg.max_seq_len), **overrides, "tokenizer": str(tokenizer)}
    if values.get("source") == "files" and not values.get("train_files"):
        values["train_files"] = values.get("val_files", ())  # analysis reads validation text only
    return _build(DataConfig, values, f"{path}: data")


def _int_seed(value: Any, path: Path) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"run {path}: seed label {value!r} is not an integer") from None


def parse_labels(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--label RUN:method=galore,seed=1`` -> {RUN: {"method": "galore", "seed": "1"}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        run, sep, pairs = item.rpartition(":")
        kv = [p.partition("=") for p in pairs.split(",") if p.strip()]
        if not sep or not run or not kv or any(not eq or k.strip() not in LABEL_KEYS for k, eq, _ in kv):
            raise UserError(f"--label {item!r}: expected RUN:KEY=VALUE[,KEY=VALUE] with keys {', '.join(LABEL_KEYS)}, "
                            f"e.g. --label ckpts/galore:method=galore,seed=1")
        out.setdefault(run, {}).update({k.strip(): v.strip() for k, _, v in kv})
    return out
