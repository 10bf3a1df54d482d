"""Linear-interpolation barriers: consecutive checkpoints of a run, and two methods at one step (§2.2, §3).

Path θ(α) = lerp(θA, θB, α), α ∈ {0, 0.1, …, 1} by default (``n_points=11``; the study used 21), written
into fp32 parameters by the perturbation engine, on the first ``n_sequences=32`` sequences of the shared
evaluation batch (evidence.md §3: ≥ 11 points, ≥ 32 sequences shared by every pair and sibling pair; the
CPU demo lowers both, docs/study.md); the standard error across sequences is reported with each barrier.
* Cross-fitted B_F (``*_xfit``, the value that decides): the max over α is biased upwards by evaluation
  noise, so the argmax α is picked on one half of the sequences (even positions) and the barrier read at
  that α on the other half (odd positions), and the other way round; the two are averaged. The plain B_F
  is kept beside it (the paper's number).
* Frankle form B_F = max_{0<α<1} L(θ(α)) − ½(L_A + L_B) (interior max, as IMIB).
* Entezari form B_E = max_{α∈[0,1]} [L(θ(α)) − ((1−α)L_A + αL_B)].
Both signed, never clamped. With unequal endpoint losses B_F counts about half the gap as barrier even
without a bump (linear 3→4: B_F = 0.45, B_E = 0), so B_F, relative B_F and B_E are reported together.

Standard errors come from the eval sequences: the barrier of each sequence's curve, std/√n_seq (free: the
per-sequence sums fall out of the same forward passes). Curves are ``*_curve`` rows (name = α, value = loss);
L_A, L_B are the α = 0 and α = 1 curve points, and the argmax α is in the row's ``note``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankscope.diagnostics.context import AnalysisContext, RunHandle
from rankscope.diagnostics.perturb import chunk_mean, lerp_line, limit_tokens, live_params, model_loss_fn
from rankscope.diagnostics.registry import diagnostic
from rankscope.diagnostics.table import Row


@dataclass(frozen=True)
class Barrier:
    frankle: float  # B_F
    frankle_rel: float  # B_F ÷ ½(L_A + L_B) (NaN when that is 0)
    entezari: float  # B_E
    argmax_alpha: float  # α of the interior max (B_F)
    argmax_alpha_lin: float  # α of the B_E max
    loss_a: float
    loss_b: float


def barrier(alphas: np.ndarray, losses: np.ndarray) -> Barrier:
    """Barriers of a curve sampled at ``alphas`` (first point α = 0, last α = 1, increasing)."""
    alphas = np.asarray(alphas, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if alphas[0] != 0.0 or alphas[-1] != 1.0 or np.any(np.diff(alphas) <= 0):
        raise ValueError("interpolation grid must increase from exactly 0 to exactly 1")
    if len(alphas) < 3:
        raise ValueError("a barrier needs at least one interior point")
    la, lb = float(losses[0]), float(losses[-1])
    interior = losses[1:-1]
    i = int(np.argmax(interior))
    frankle = float(interior[i] - 0.5 * (la + lb))
    excess = losses - ((1.0 - alphas) * la + alphas * lb)
    j = int(np.argmax(excess))
    mid = 0.5 * (la + lb)
    rel = frankle / mid if mid != 0.0 else float("nan")
    return Barrier(frankle, rel, float(excess[j]), float(alphas[i + 1]),
                   float(alphas[j]), la, lb)


def interpolation_grid(n_points: int = 21) -> np.ndarray:
    """k/(n−1), k = 0..n−1: exactly 0 and 1 at the ends."""
    if n_points < 3:
        raise ValueError(f"n_points must be ≥ 3, got {n_points}")
    return np.arange(n_points, dtype=np.float64) / (n_points - 1)


def barrier_stderr(alphas: np.ndarray, seq_sums: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """Std/√n of (B_F, B_F rel, B_E) across eval sequences; ``seq_sums`` is [n_alphas, n_seq, 2]."""
    seq_sums = seq_sums[:, seq_sums[0, :, 1] > 0]  # sequences with counted tokens
    n = seq_sums.shape[1]
    if n < 2:
        return None, None, None
    per = [barrier(alphas, seq_sums[:, c, 0] / seq_sums[:, c, 1]) for c in range(n)]
    se = lambda xs: float(np.std(xs, ddof=1) / np.sqrt(n))  # noqa: E731
    return se([b.frankle for b in per]), se([b.frankle_rel for b in per]), se([b.entezari for b in per])


def crossfit_barrier(alphas: np.ndarray, seq_sums: np.ndarray) -> float:
    """Cross-fitted B_F from per-sequence (Σ NLL, tokens) sums [n_alphas, n_seq, 2] (NaN below 2 sequences).

    Halves are the even and odd sequence positions; each half picks the interior argmax α, the other half
    gives the barrier there; the result is the mean of the two. On a flat curve with evaluation noise it
    is unbiased (the half that measures never saw the noise that chose α), where the plain max is not.
    """
    seq_sums = seq_sums[:, seq_sums[0, :, 1] > 0]
    if seq_sums.shape[1] < 2:
        return float("nan")
    halves = [seq_sums[:, 0::2], seq_sums[:, 1::2]]
    curves = [h[:, :, 0].sum(1) / h[:, :, 1].sum(1) for h in halves]
    values = []
    for pick, measure in ((curves[0], curves[1]), (curves[1], curves[0])):
        i = 1 + int(np.argmax(pick[1:-1]))
        values.append(float(measure[i] - 0.5 * (measure[0] + measure[-1])))
    return float(np.mean(values))


def limit_sequences(batch, n_sequences: int | None):
    """The first ``n_sequences`` sequences of ``batch`` (None or more than it has: all of them)."""
    from rankscope.diagnostics.context import EvalBatch

    if n_sequences is None or n_sequences >= batch.input_ids.shape[0]:
        return batch
    return EvalBatch(batch.input_ids[:n_sequences], batch.labels[:n_sequences], batch.micro_batch)


def interpolate(model: torch.nn.Module, theta_b: dict[str, torch.Tensor], alphas: np.ndarray, batch,
                device: str = "cpu", ends: tuple[tuple[dict, Any], tuple[dict, Any]] | None = None,
                ) -> tuple[Barrier, tuple, np.ndarray]:
    """Barrier, its standard errors and the mean curve from ``model`` (θA, restored) to ``theta_b``.

    ``ends`` = ((memo, key) for θA, (memo, key) for θB): per-sequence end-point losses are read from and
    written to those memos, so a checkpoint that ends several lines (every IMIB pair it is in, two
    consecutive-checkpoint lines) is evaluated once per analyze call.
    """
    known = {}
    if ends is not None:
        for index, (memo, key) in zip((0, len(alphas) - 1), ends):
            if key in memo:
                known[index] = memo[key]
    sums = lerp_line(live_params(model), theta_b, alphas, batch, model_loss_fn(model, device, per_sequence=True),
                     known=known)
    if ends is not None:
        for index, (memo, key) in zip((0, len(alphas) - 1), ends):
            memo[key] = sums[index]
    curve = chunk_mean(sums)
    return barrier(alphas, curve), (*barrier_stderr(alphas, sums), crossfit_barrier(alphas, sums)), curve


def _end(run: RunHandle, step: int, space: str, batch, device: str) -> tuple[dict, tuple]:
    """(memo, key) of one checkpoint's per-sequence losses on ``batch``.

    The batch is identified by its content (a hash of ids and labels), not its storage address, which a
    later batch could reuse once this one is freed.
    """
    digest = hashlib.sha1(batch.input_ids.cpu().numpy().tobytes())
    digest.update(batch.labels.cpu().numpy().tobytes())
    key = ("seq_loss", step, space, tuple(batch.input_ids.shape), digest.hexdigest(), batch.micro_batch, str(device))
    return run.memo, key


def _rows(ctx: AnalysisContext, names: tuple[str, str, str, str], b: Barrier, se: tuple,
          alphas: np.ndarray, curve: np.ndarray, n_seq: int = 0, **kw) -> list[Row]:
    note = f"argmax_alpha={b.argmax_alpha:.3g}; argmax_alpha_lin={b.argmax_alpha_lin:.3g}; " \
           f"L_A={b.loss_a:.6g}; L_B={b.loss_b:.6g}"
    m_f, m_rel, m_lin, m_curve = names
    xfit = se[3]
    xfit_note = (f"cross-fitted over 2 halves of {n_seq} sequences (decides; {m_f} is the plain max)"
                 if np.isfinite(xfit) else f"undefined: cross-fitting needs >= 2 sequences, got {n_seq}")
    # Curve rows: name = α as text; for pairs "<other run>|<α>" so curves of different pairs stay apart.
    prefix = f"{kw['name']}|" if kw.get("scope") == "pair" else ""
    curve_kw = {k: x for k, x in kw.items() if k not in ("scope", "name")}
    return [
        ctx.row(m_f, b.frankle, stderr=se[0], note=note, **kw),
        ctx.row(m_rel, b.frankle_rel, stderr=se[1], note=note, **kw),
        ctx.row(m_lin, b.entezari, stderr=se[2], note=note, **kw),
        ctx.row(f"{m_f}_xfit", xfit, note=xfit_note, **kw),
        *[ctx.row(m_curve, float(v), scope="curve", name=f"{prefix}{a:.6g}", **curve_kw)
          for a, v in zip(alphas, curve)],
    ]


@diagnostic(
    "ckpt_interpolation", kind="consecutive", axis="interpolation",
    metrics=("ckpt_barrier", "ckpt_barrier_rel", "ckpt_barrier_lin", "ckpt_barrier_xfit", "ckpt_curve"),
    n_points=11, max_tokens=None, n_sequences=32,
)
def ckpt_interpolation(ctx: AnalysisContext, n_points: int = 11, max_tokens: int | None = None,
                       n_sequences: int | None = 32) -> list[Row]:
    """Barrier between consecutive checkpoints (ctx.step → ctx.step_b) of one run.

    Default: merged dense weights (ReLoRA's native factors jump at merges); CoLA in native factors.
    Faithful mode: native tensors for every method.
    """
    from rankscope.methods.dense import native_tensors

    alphas, batch = interpolation_grid(n_points), limit_sequences(limit_tokens(ctx.batch, max_tokens), n_sequences)
    if ctx.mode == "faithful" or not ctx.run.has_dense_form:
        model, space = ctx.run.native_model(ctx.step), "native"
        theta_b = {k: v.float() for k, v in native_tensors(ctx.run.native_model(ctx.step_b)).items()}
    else:
        model, space = ctx.run.dense_model(ctx.step), "dense"
        theta_b = ctx.run.dense_state(ctx.step_b)
    ends = (_end(ctx.run, ctx.step, space, batch, ctx.device), _end(ctx.run, ctx.step_b, space, batch, ctx.device))
    b, se, curve = interpolate(model, theta_b, alphas, batch, ctx.device, ends)
    settings = dict(n_points=n_points, max_tokens=max_tokens, n_sequences=n_sequences)
    return _rows(ctx, ("ckpt_barrier", "ckpt_barrier_rel", "ckpt_barrier_lin", "ckpt_curve"),
                 b, se, alphas, curve, n_seq=int(batch.input_ids.shape[0]), space=space, settings=settings,
                 n_tokens=batch.n_tokens)


def init_fingerprint(run: RunHandle) -> str | None:
    """``init_fingerprint`` from the run's meta.json, if the trainer recorded one."""
    meta = Path(run.path) / "meta.json"
    try:
        return json.loads(meta.read_text()).get("init_fingerprint")
    except (OSError, ValueError):
        return None


def shared_init(a: RunHandle, b: RunHandle) -> bool | str:
    """True/False when both runs carry an init fingerprint, else "unknown"."""
    fa, fb = init_fingerprint(a), init_fingerprint(b)
    return "unknown" if fa is None or fb is None else fa == fb


@diagnostic(
    "imib", kind="pairwise", axis="interpolation",
    metrics=("imib", "imib_rel", "imib_lin", "imib_xfit", "imib_curve"),
    n_points=11, max_tokens=None, n_sequences=32,
)
def imib(ctx: AnalysisContext, n_points: int = 11, max_tokens: int | None = None,
         n_sequences: int | None = 32) -> list[Row]:
    """Inter-method interpolation barrier: both runs materialised to plain dense LLaMA at ``ctx.step`` (the
    other run at ``ctx.paired_step``: a different step when models are paired at parity).

    No permutation alignment: it relies on a shared initialisation, recorded as ``settings.shared_init``.
    A run without a dense form (CoLA) yields NaN rows noted "excluded: no dense form".
    """
    other = ctx.other
    settings = dict(n_points=n_points, max_tokens=max_tokens, n_sequences=n_sequences,
                    shared_init=shared_init(ctx.run, other))
    kw = dict(scope="pair", name=other.name, space="dense", settings=settings)
    if not (ctx.run.has_dense_form and other.has_dense_form):
        return [ctx.row(m, float("nan"), note="excluded: no dense form", **kw)
                for m in ("imib", "imib_rel", "imib_lin", "imib_xfit")]
    alphas, batch = interpolation_grid(n_points), limit_sequences(limit_tokens(ctx.batch, max_tokens), n_sequences)
    model = ctx.run.dense_model(ctx.step)
    ends = (_end(ctx.run, ctx.step, "dense", batch, ctx.device),
            _end(other, ctx.paired_step, "dense", batch, ctx.device))
    b, se, curve = interpolate(model, other.dense_state(ctx.paired_step), alphas, batch, ctx.device, ends)
    return _rows(ctx, ("imib", "imib_rel", "imib_lin", "imib_curve"), b, se, alphas, curve,
                 n_seq=int(batch.input_ids.shape[0]), n_tokens=batch.n_tokens, **kw)
