"""Subcommands that wrap the analysis, evaluation, study and report subpackages (imported lazily)."""

from __future__ import annotations
