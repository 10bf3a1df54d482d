"""``rankscope study``: train every method × seed, analyse, evaluate, predict and report, in one command.

    rankscope study --preset smoke --out out/smoke      # seconds-scale, every stage
    rankscope study --out out/demo                      # the CPU demo (default preset)

Re-running the same command skips finished work and resumes interrupted runs (docs/study.md).
"""

from rankscope.study.config import PRESETS, StudyConfig
from rankscope.study.config_file import load_study_config


def run_study(*args, **kwargs):
    """Lazy wrapper so importing the package (e.g. for ``PRESETS``) does not import the runner."""
    from rankscope.study.runner import run_study as _run

    return _run(*args, **kwargs)


__all__ = ["PRESETS", "StudyConfig", "load_study_config", "run_study"]
