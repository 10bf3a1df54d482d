"""Reading a study config file: a preset name or a YAML/JSON file, its ``base:`` layers merged, each section
built into its frozen dataclass (:mod:`rankscope.study.config`) with an error that names the file and the
field for any unknown key.

Kept apart from the dataclasses so that what a study *is* and how a file *becomes* one read separately.
"""

from __future__ import annotations

from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

from rankscope.config import DataConfig
from rankscope.errors import UserError
from rankscope.study.config import (
    PRESETS,
    AnalysisSettings,
    DownstreamSettings,
    LauncherConfig,
    OODSettings,
    PredictSettings,
    SiblingSettings,
    StudyConfig,
    build_section,
)
from rankscope.study.guide_arms import GuideStudySettings
from rankscope.study.parity import ParitySettings

_SECTIONS = {"data": DataConfig, "analysis": AnalysisSettings, "downstream": DownstreamSettings,
             "predict": PredictSettings, "parity": ParitySettings, "ood": OODSettings, "siblings": SiblingSettings,
             "guides": GuideStudySettings, "launcher": LauncherConfig}


def study_from_dict(d: dict[str, Any], source: str = "study config") -> StudyConfig:
    """Build a StudyConfig; errors name ``source`` and the offending field (e.g. ``analysis.n_tokns``)."""
    d = dict(d)
    from rankscope.config import TrainConfig

    train_fields = {f.name for f in fields(TrainConfig)}
    bad = sorted(set(d.get("train") or {}) - train_fields)
    if bad:
        raise UserError(f"{source}: train: unknown field {bad[0]!r}; valid fields: {', '.join(sorted(train_fields))}")
    if isinstance(d.get("data"), dict):  # local files imply source: files (rankscope.data.paths)
        from rankscope.data.paths import imply_files_source

        d["data"] = imply_files_source(d["data"], f"in {source}")
    for key, cls in _SECTIONS.items():
        if key in d:
            try:
                d[key] = build_section(cls, d[key] or {}, f"{source}: {key}")
            except UserError as exc:
                if key != "guides" or str(exc).startswith(source):
                    raise
                raise UserError(f"{source}: {exc}") from None
    try:
        return build_section(StudyConfig, d, source)
    except UserError as exc:  # study-level checks of the guides section name the file too
        if str(exc).startswith("study: guides"):
            raise UserError(f"{source}: {str(exc)[len('study: '):]}") from None
        raise


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise UserError(f"unknown study preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return Path(str(resources.files("rankscope") / "study_presets" / f"{name}.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    from rankscope.config import load_config_file

    return load_config_file(path)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of mappings (``over`` wins); lists are replaced, not concatenated."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    raw = _read_yaml(path)
    if isinstance(raw.get("data"), dict):  # files in this layer replace a base preset's embedded corpus
        from rankscope.data.paths import imply_files_source

        raw["data"] = imply_files_source(raw["data"], f"in {path}")
        if raw["data"].get("source") == "files":
            raw["data"].setdefault("holdout_source", "")  # the preset's left-out source is embedded-only
    base = raw.pop("base", None)
    if base is None:
        return raw
    base_path = preset_path(base) if base in PRESETS else (path.parent / base)
    if base_path.resolve() in seen:
        raise UserError(f"{path}: 'base: {base}' forms a cycle")
    merged = _merge(_resolve(base_path, (*seen, path.resolve())), raw)
    merged.setdefault("preset", base if base in PRESETS else "")
    return merged


def _relative_to(spec: Any, base: Path) -> Any:
    """A ``runs:`` entry with a relative path made relative to the config file's folder."""
    key = "path" if isinstance(spec, dict) else None
    value = spec.get("path") if key else spec
    if not isinstance(value, str) or Path(value).expanduser().is_absolute():
        return spec
    resolved = str(base / value)
    return {**spec, "path": resolved} if key else resolved


def load_study_config(preset_or_path: str | Path) -> StudyConfig:
    """A preset name (``demo``) or a YAML/JSON file (which may start from one with ``base: NAME``).

    A config with ``models: [...]`` (several sizes) gives a ``MultiSizeStudy`` instead (study/multiscale.py)."""
    text = str(preset_or_path)
    path = preset_path(text) if text in PRESETS else Path(text)
    if text not in PRESETS and not path.is_file():
        raise UserError(f"{text!r} is neither a study preset ({', '.join(PRESETS)}) nor an existing config file")
    d = _resolve(path)
    if "models" in d:  # several model sizes: one study per size, combined (study/multiscale.py)
        from rankscope.study.multiscale import multi_size_from_dict

        if text in PRESETS:
            d.setdefault("preset", text)
        return multi_size_from_dict(d, source=str(path))
    if isinstance(d.get("runs"), list):  # relative run paths start at the config file
        d["runs"] = [_relative_to(r, path.parent) for r in d["runs"]]
    if text in PRESETS:
        d.setdefault("preset", text)
    return study_from_dict(d, source=str(path))
