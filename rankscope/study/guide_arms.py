"""The guide study (docs/guides.md "The guide study"): the study config section ``guides:`` and the arms it adds.

    guides:
      methods: [galore, cola]          # methods of the study that get guided arms
      guides: [sam, align]             # registered guides (`rankscope guides`)
      options: {sam: {rho: 0.05}}      # per guide, like --set guide.KEY=VALUE
      controls: {full_rank: true, cost_matched: true}

For every seed, method and guide: the guided arm ``<method>_s<seed>_<guide>`` (the unguided run's config with the
guide, so the same init and data seed: a paired comparison). Controls: full-rank with the guide
(``full_rank_s<seed>_<guide>``; not for align, whose reference would be the run itself), and the cost-matched
unguided control ``<method>_s<seed>_cm_<guide>``: the unguided run given the guide's extra FLOPs as more tokens
per update (same steps, so its checkpoints pair with full-rank's at equal steps). Guides that read a full-rank
reference (align; spectral's α target) get the study's own ``full_rank_s<seed>`` unless the options name one;
their training waits for it (:func:`needs_reference`). Every arm is a main run: parity, eval, ood and fine-tuning
apply to it as to any run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rankscope.errors import UserError

REFERENCE_METHOD = "full_rank"
REFERENCE_GUIDES = ("align", "spectral")  # guides with a `reference` option the study fills in


@dataclass(frozen=True)
class GuideControls:
    full_rank: bool = True  # full-rank with each guide (how far the guide moves full-rank itself)
    cost_matched: bool = True  # the unguided run given the guide's extra FLOPs as more tokens per update


@dataclass(frozen=True)
class GuideStudySettings:
    """The study config's ``guides:`` section; empty = no guided arms."""

    methods: tuple[str, ...] = ()
    guides: tuple[str, ...] = ()
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    controls: GuideControls = field(default_factory=GuideControls)

    def __post_init__(self) -> None:
        for key in ("methods", "guides"):
            if isinstance(getattr(self, key), str):
                object.__setattr__(self, key, (getattr(self, key),))
        if isinstance(self.controls, dict):
            known = {f.name for f in fields(GuideControls)}
            bad = sorted(set(self.controls) - known)
            if bad:
                raise UserError(f"guides.controls: unknown field {bad[0]!r}; valid fields: {', '.join(sorted(known))}")
            object.__setattr__(self, "controls", GuideControls(**self.controls))
        if bool(self.methods) != bool(self.guides):
            raise UserError("guides: give both methods and guides (or neither): e.g. "
                            "{methods: [galore, cola], guides: [sam, align]}")
        from rankscope.guides.options import coerce_guide_options
        from rankscope.guides.registry import available

        unknown = [g for g in self.guides if g not in available()]
        if unknown:
            raise UserError(f"guides.guides: unknown guide(s) {unknown}; available: {', '.join(available())} "
                            "(`rankscope guides` lists them)")
        outside = sorted(set(self.options) - set(self.guides))
        if outside:
            raise UserError(f"guides.options: options for {outside}, which guides.guides does not list "
                            f"({', '.join(self.guides)}); add the guide or drop its options")
        for g, opts in self.options.items():
            if not isinstance(opts, dict):
                raise UserError(f"guides.options.{g} must be a mapping of option: value, got {opts!r}")
            try:
                coerce_guide_options(g, dict(opts))
            except UserError as exc:
                raise UserError(f"guides.options.{g}: {exc}") from None


def check_guide_study(cfg) -> None:
    """Study-level checks of ``cfg.guides`` (UserError naming the field): methods the study trains, a full-rank
    reference for align, guides the method can take."""
    gs = cfg.guides
    if not gs.methods:
        return
    outside = [m for m in gs.methods if m not in cfg.methods]
    if outside:
        raise UserError(f"study: guides.methods names {outside}, which the study does not train (methods: "
                        f"{', '.join(cfg.methods)}); add them to methods or drop them from guides.methods")
    for g in gs.guides:
        given = gs.options.get(g, {}).get("reference")
        if g == "align" and not given and REFERENCE_METHOD not in cfg.methods:
            raise UserError("study: guides.guides lists align, which needs a full-rank reference run, but the study "
                            f"trains no {REFERENCE_METHOD} (methods: {', '.join(cfg.methods)}); add full_rank to "
                            "methods (its run of each seed becomes the reference) or set "
                            "guides.options.align.reference to a full-rank run folder of this model and init seed")
    from rankscope.config import RunConfig

    for m in gs.methods:
        for g in gs.guides:
            opts = {k: v for k, v in gs.options.get(g, {}).items() if k != "reference"}
            d = {"name": "check", "model": cfg.model, "vocab_size": cfg.vocab_size, "method": m,
                 "method_options": dict(cfg.method_options.get(m, {})), "guide": g, "guide_options": opts,
                 "train": {"steps": cfg.steps}}
            run = RunConfig.from_dict(d, source=f"study {cfg.name}: guides")
            _check_method(run, g, m)


def _check_method(run, guide: str, method: str) -> None:
    from rankscope.guides.options import build_guide

    try:
        build_guide(run).check(run.build_method())
    except UserError as exc:
        if "needs a full-rank reference run" in str(exc):  # align without a reference: checked above
            return
        raise UserError(f"study: guides: method {method!r} with guide {guide!r}: {exc}. Drop {method} from "
                        f"guides.methods or {guide} from guides.guides") from None


def needs_reference(run) -> str:
    """The name of the study run this run's guide reads as its reference ("" when none): it trains after it."""
    ref = (run.guide_options or {}).get("reference", "") if run.guide in REFERENCE_GUIDES else ""
    return Path(ref).name if ref else ""


def _extra(guided, base) -> float:
    """The guide's extra FLOPs as a fraction of the unguided run's (window included)."""
    from rankscope.guides.cost import run_estimate

    t = base.train
    tokens = t.micro_batch_size * t.grad_accum * base.data.seq_len
    plain = run_estimate(base).run_flops(tokens, t.steps)
    return run_estimate(guided).run_flops(tokens, t.steps) / plain - 1.0


def _matched_batch(mbs: int, accum: int, extra: float) -> tuple[int, int]:
    """(micro_batch_size, grad_accum) with about (1 + extra) × the sequences per update: more micro-batches or
    larger ones, whichever lands nearest (ties: more micro-batches, which need no more memory); at least one
    more sequence (e.g. 2 × 1 at +50 % -> 3 × 1, 2 × 8 at +50 % -> 2 × 12)."""
    want = mbs * accum * (1 + extra)
    cands = {(mbs, a) for a in (math.floor(accum * (1 + extra)), math.ceil(accum * (1 + extra)))}
    cands |= {(b, accum) for b in (math.floor(mbs * (1 + extra)), math.ceil(mbs * (1 + extra)))}
    cands = {c for c in cands if c[0] * c[1] > mbs * accum}
    return min(cands, key=lambda c: (abs(c[0] * c[1] - want), c[0]))


def guide_arms(cfg, runs: list) -> list[tuple[Any, dict[str, Any]]]:
    """(RunConfig, arm record for study.json) of every arm, built from the study's unguided main runs."""
    from rankscope.config import RunConfig

    gs = cfg.guides
    if not gs.methods:
        return []
    by_name = {r.name: r for r in runs}
    out: list[tuple[Any, dict[str, Any]]] = []
    for seed in cfg.seeds:
        fr = by_name.get(cfg.run_name(REFERENCE_METHOD, seed))
        for g in gs.guides:
            opts = dict(gs.options.get(g, {}))
            if g in REFERENCE_GUIDES and not opts.get("reference") and fr is not None:
                opts["reference"] = str(fr.run_dir)
            methods = list(dict.fromkeys(gs.methods))
            if gs.controls.full_rank and g != "align" and REFERENCE_METHOD in cfg.methods:
                methods = list(dict.fromkeys([*methods, REFERENCE_METHOD]))
            methods = [m for m in methods if not (g == "align" and m == REFERENCE_METHOD)]
            for m in methods:
                base = by_name[cfg.run_name(m, seed)]
                d = base.to_dict()
                guided = RunConfig.from_dict({**d, "name": f"{base.name}_{g}", "guide": g, "guide_options": opts},
                                             source=f"study {cfg.name}: guides arm {base.name}_{g}")
                extra = _extra(guided, base)
                out.append((guided, {"run": guided.name, "method": m, "guide": g, "role": "guided",
                                     "base": base.name, "extra_flops": extra}))
                if not gs.controls.cost_matched or m == REFERENCE_METHOD or extra <= 0:
                    continue
                mbs, accum = _matched_batch(base.train.micro_batch_size, base.train.grad_accum, extra)
                given = mbs * accum / (base.train.micro_batch_size * base.train.grad_accum) - 1.0
                if given > 2 * extra:  # one more sequence per update would over-pay the control several times
                    out[-1][1]["no_cost_matched"] = (f"+{extra:.0%} FLOPs is below the smallest batch step "
                                                     f"(+{given:.0%} tokens per update)")
                    continue
                train = {**d["train"], "micro_batch_size": mbs, "grad_accum": accum}
                cm = RunConfig.from_dict({**d, "name": f"{base.name}_cm_{g}", "train": train},
                                         source=f"study {cfg.name}: guides arm {base.name}_cm_{g}")
                out.append((cm, {"run": cm.name, "method": m, "guide": g, "role": "cost_matched",
                                 "base": base.name, "extra_flops": given, "matches": extra}))
    return out


def describe_arms(records: list[dict[str, Any]]) -> list[str]:
    """Dry-run lines: one per arm with its role and extra FLOPs."""
    if not records:
        return []
    lines = [f"guide study: {len(records)} arm(s) next to the unguided runs (paired seeds)"]
    for r in records:
        what = ("guided" if r["role"] == "guided" else
                f"cost-matched control: +{r['extra_flops']:.0%} tokens per update for the guide's "
                f"+{r.get('matches', math.nan):.0%} FLOPs")
        extra = f", +{r['extra_flops']:.0%} FLOPs" if r["role"] == "guided" else ""
        if r.get("no_cost_matched"):
            extra += f"; no cost-matched control: {r['no_cost_matched']}"
        lines.append(f"  {r['run']}: {r['method']} {what} by {r['guide']} (pairs with {r['base']}{extra})")
    return lines
