"""A run's FLOPs with its guide's extra passes: the counter behind `study --dry-run` and the parity cost table.

The method's closed-form count (rankscope/methods/flops.py) plus, for the share f of updates inside the
guide's window, the guide's extra work (``Guide.cost``): sam a second forward+backward per token (+1× the
method's per-token count), rwp with mix < 1 a clean pass too (+1×), msam and rwp with mix = 1 nothing, align
the reference's forward up to the last aligned block plus the similarity's products, spectral one
singular-value pass per target matrix every K updates. Elementwise work (the draws, copies, decays) is not
counted, as Adam's is not (performance.md §2).
"""

from __future__ import annotations

from rankscope.methods.flops import FlopsEstimate, estimate


def method_estimate(cfg) -> FlopsEstimate:
    """FLOPs per token and per update of a RunConfig's method alone (no guide)."""
    return estimate(cfg.method, cfg.model_config(), cfg.method_config(), cfg.data.seq_len)


def guide_extra(cfg) -> tuple[float, float]:
    """(extra FLOPs per token, extra FLOPs per update) of a RunConfig's guide on an update it acts on; (0, 0)
    without a guide."""
    if not cfg.guide:
        return 0.0, 0.0
    from rankscope.guides.options import build_guide

    guide = build_guide(cfg)
    return type(guide).cost(guide.config, cfg.model_config(), cfg.data.seq_len, cfg.method, cfg.method_config())


def run_estimate(cfg) -> FlopsEstimate:
    """FLOPs per token and per update of a RunConfig, its guide's extra passes averaged over the run."""
    est = method_estimate(cfg)
    if not cfg.guide:
        return est
    from rankscope.guides.base import guide_fraction
    from rankscope.guides.options import build_guide

    share = guide_fraction(build_guide(cfg).window, cfg.train.steps)
    per_token, per_update = guide_extra(cfg)
    extra = f"guide {cfg.guide} on {share:.0%} of updates: +{share * per_token / est.per_token:.0%} FLOPs per token"
    note = f"{est.note}; {extra}" if est.note else extra
    return FlopsEstimate(est.per_token + share * per_token, est.per_update + share * per_update, est.matmul_params,
                         note)
