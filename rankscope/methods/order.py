"""The canonical order of the methods: runs, tables and figures list them this way, colours follow it.

Kept free of imports so the report (which must not import training code) and the study config share it.
Family order: the paper's six, then the optimizer-only projections, the full-rank controls, the
factorised-weight methods and the Adam variants. A registered method missing here is appended by name.
"""

from __future__ import annotations

METHOD_ORDER: tuple[str, ...] = (
    "full_rank", "galore", "fira", "cola", "sltrain", "relora",  # the paper's six
    "apollo", "apollo_mini", "golore",  # optimizer-only projections
    "muon",  # full-rank, non-Adam control
    "loro", "low_rank",  # factorised weights
    "spam", "stable_spam",  # Adam variants (full-rank weights)
)


def in_order(methods) -> list[str]:
    """``methods`` in the canonical order, unknown names appended alphabetically."""
    found = {str(m) for m in methods}
    return [m for m in METHOD_ORDER if m in found] + sorted(found - set(METHOD_ORDER))
