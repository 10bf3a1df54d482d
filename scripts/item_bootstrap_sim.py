"""Which item bootstrap for P1? Simulated studies comparing three ways to carry item noise (docs/downstream.md).

Why: the P1 verdict needs an interval for a difference of average accuracy between two methods over a few paired
seeds, each model scored on the same items. This script measures, over simulated studies, how often the verdict
rule (report/verdict_rules.bootstrap_verdicts) declares "differ" with:

* ``rows``: seedstats.paired_item_bootstrap (seeds + shared item effects, answer noise counted once; the one used),
* ``plain joint``: MultiBERTs' plain joint draw (the mean of the drawn seed x item cells),
* ``independent SE``: each model's evaluator standard error, independent per model (the fallback),
* ``seeds only``: no item noise at all.

Model: answer of a run to item i ~ Bernoulli(sigmoid(ability + difficulty_i (+ the second method's own offset_i))),
ability = method mean (second method: - delta) + init-seed effect + run noise; 5 paired seeds, 2 tasks x 100 items.

    python scripts/item_bootstrap_sim.py --delta 0 0.5 --tau 0 --studies 200
"""

from __future__ import annotations

import argparse

import numpy as np

from rankscope.downstream.scoring import mean_stderr
from rankscope.report.seedstats import pooled_sd
from rankscope.report.verdict_rules import bootstrap_verdicts


def study(rng: np.random.Generator, delta: float, tau: float, difficulty: float, seeds: int = 5,
          tasks: tuple[int, ...] = (100, 100)) -> dict[str, list[np.ndarray]]:
    """Per-item answers [seeds, n_t] of method A, method B and a data-order sibling of A."""
    diff = [rng.normal(0, difficulty, n) for n in tasks]
    own = [rng.normal(0, tau, n) for n in tasks]
    start = rng.normal(0, 0.3, seeds)

    def run(mu: float, offsets: list[np.ndarray]) -> list[np.ndarray]:
        ability = mu + start + rng.normal(0, 0.1, seeds)
        return [(rng.random((seeds, len(d))) < 1 / (1 + np.exp(-(ability[:, None] + d + o)))).astype(float)
                for d, o in zip(diff, offsets, strict=True)]

    zero = [np.zeros(n) for n in tasks]
    return {"a": run(0.0, zero), "b": run(-delta, own), "sibling": run(0.0, zero)}


def plain_joint(per_item: list[np.ndarray], n_boot: int, seed: int) -> np.ndarray:
    """MultiBERTs' plain joint draw: the mean of the drawn seed x item cells, averaged over tasks."""
    rng = np.random.default_rng(seed)
    s = per_item[0].shape[0]
    counts = rng.multinomial(s, np.full(s, 1 / s), size=n_boot).astype(float)
    total = 0.0
    for t in per_item:
        n = t.shape[1]
        items = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(float)
        total = total + np.einsum("bs,sn,bn->b", counts, t, items) / (s * n)
    return total / len(per_item)


def rates(delta: float, tau: float, difficulty: float, studies: int, seed: int) -> dict[str, float]:
    import rankscope.report.verdict_rules as vr

    rng = np.random.default_rng(seed)
    hits = {"rows": 0, "plain joint": 0, "independent SE": 0, "seeds only": 0}
    avg = lambda m: np.mean([x.mean(axis=1) for x in m], axis=0)  # noqa: E731
    original = vr.multi_bootstrap
    for _ in range(studies):
        s = study(rng, delta, tau, difficulty)
        a, b, sib = avg(s["a"]), avg(s["b"]), avg(s["sibling"])
        spread, df = pooled_sd([np.array([x, y]) for x, y in zip(a, sib, strict=True)])
        se = np.hypot(*(np.sqrt(sum(np.array([mean_stderr(r) for r in m]) ** 2 for m in s[k])) / 2 for k in "ab"))
        rows = [x - y for x, y in zip(s["a"], s["b"], strict=True)]
        for key in hits:
            kw = {"per_item": [rows]} if key in ("rows", "plain joint") else {}
            if key == "plain joint":
                vr.multi_bootstrap = lambda d, se=None, n_boot=1000, seed=0, per_item=None: plain_joint(
                    per_item, n_boot, seed)
            try:
                row = bootstrap_verdicts([a - b], [None if key == "seeds only" else se], spread, df,
                                         ("differ", "differ"), n_boot=1000, **kw)[0]
            finally:
                vr.multi_bootstrap = original
            hits[key] += row.word == "differ"
    return {k: v / studies for k, v in hits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delta", type=float, nargs="+", default=[0.0, 0.5], help="gap between methods (logits)")
    ap.add_argument("--tau", type=float, default=0.0, help="SD of the second method's own item offsets (logits)")
    ap.add_argument("--difficulty", type=float, default=1.5, help="SD of item difficulty (logits)")
    ap.add_argument("--studies", type=int, default=200)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    for delta in args.delta:
        r = rates(delta, args.tau, args.difficulty, args.studies, args.seed)
        print(f"delta {delta} tau {args.tau}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))


if __name__ == "__main__":
    main()
