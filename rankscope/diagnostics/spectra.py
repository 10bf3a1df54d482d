"""Spectra of weight matrices and of their updates (diagnostics.md §2.3, ``w_alpha`` of §2.6).

Every metric comes from ONE ``torch.linalg.svdvals`` vector per matrix (no U, V), looped matrix by matrix:
stacking matrices by shape was measured slower (diagnostics.md §4), and a loop keeps one matrix's
workspace alive at a time. The metric set therefore costs about one SVD (performance.md T4).

Which matrices (the ``space`` column of the rows):
* default, methods with a dense form: merged ``dense_weight()`` matrices (``dense``);
* default, CoLA: the linear products B·A (``linear_product``; rank ≤ r and NOT the layer's map, since SiLU
  sits between the factors) plus the factors A, B themselves (``factor``);
* faithful mode or ``space="native"`` (alias ``"factor"``): the stored tensors as the release does
  (ReLoRA: base W, A, B; SLTrain/CoLA: A, B), all tagged ``native``, ≤ 4M elements.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator

import torch

from rankscope.diagnostics.registry import diagnostic
from rankscope.diagnostics.table import Row

SPECTRAL_KEYS = (
    "rank", "rank_ratio", "erank", "erank_ratio", "stable_rank", "spectral_gap", "sv2_sv1",
    "n_sv_gt_0p1", "frac_sv_gt_0p1", "fro", "sv_max",
)
ALPHA_KEYS = ("alpha", "alpha_weighted", "alpha_xmin", "alpha_n_tail", "alpha_ks")
_NOT_SUMMARISED = {"alpha_xmin", "alpha_n_tail", "alpha_ks"}  # fit diagnostics: per matrix only
_NO_GAP = "a zero matrix or a single singular value has no s2/s1"
_NO_FIT = "fewer than n_min nonzero eigenvalues for the power-law fit"
# Why a value can be NaN: written into the row's note, so a NaN in the table is never unexplained.
_UNDEFINED = {"spectral_gap": _NO_GAP, "sv2_sv1": _NO_GAP, "alpha": _NO_FIT, "alpha_weighted": _NO_FIT,
              "alpha_xmin": _NO_FIT, "alpha_ks": _NO_FIT, "rel_fro": "the earlier matrix is zero"}
WW_EVALS_THRESH = 1e-5  # weightwatcher drops eigenvalues below this before fitting (ww_compat only)
RELEASE_MAX_ELEMENTS = 4_000_000  # the release skips larger matrices (faithful mode)
_LAYER = re.compile(r"layers\.(\d+)\.")


# ------------------------------------------------------------------------------------------ kernels
def spectral_metrics(s: torch.Tensor, shape: tuple[int, int], tol_mode: str = "default",
                     eps: float | None = None) -> dict[str, float]:
    """All rank/shape metrics from the singular values ``s`` (descending, as ``svdvals`` returns).

    ``tol_mode="default"``: rank tolerance max(m, n)·eps·s₁ with eps of the dtype the SVD ran in (LAPACK's
    own notion of a numerical zero), or the caller's ``eps`` (the storage dtype's when coarser: an fp64 SVD
    of fp32 weights must not count their fp32 rounding as rank). ``"faithful"``: 1e-12 absolute, the release's quirk, which counts fp32
    round-off (~1e-7·s₁) as rank. Arithmetic after the SVD is fp64 and the result leaves with one ``tolist``.
    """
    if tol_mode not in ("default", "faithful"):
        raise ValueError(f"tol_mode must be 'default' or 'faithful', got {tol_mode!r}")
    m, n = shape
    p = min(m, n)
    if eps is None:
        eps = torch.finfo(s.dtype).eps if s.is_floating_point() else torch.finfo(torch.float64).eps
    s = s.detach().double()
    if p == 0 or s.numel() == 0 or float(s[0]) == 0.0:  # empty or all-zero matrix: nothing to normalise by
        nan = math.nan
        return {"rank": 0.0, "rank_ratio": 0.0, "erank": 0.0, "erank_ratio": 0.0, "stable_rank": 0.0, "spectral_gap": nan,
                    "sv2_sv1": nan, "n_sv_gt_0p1": 0.0, "frac_sv_gt_0p1": 0.0, "fro": 0.0, "sv_max": 0.0}
    s1 = s[0]
    tol = s.new_tensor(1e-12) if tol_mode == "faithful" else max(m, n) * eps * s1
    q = s / s.sum()
    entropy = -(q * torch.log(q.clamp_min(1e-300))).sum()  # 0·log 0 = 0 through the clamp
    sq = s.square().sum()
    s2 = s[1] if s.numel() > 1 else s.new_tensor(math.nan)
    vals = torch.stack([
        (s > tol).sum().double(), torch.exp(entropy), sq / s1.square(), (s1 - s2) / s1, s2 / s1,
        (s > 0.1).sum().double(), sq.sqrt(), s1,
    ]).tolist()
    rank, erank, stable, gap, ratio21, n01, fro, smax = vals
    return {"rank": rank, "rank_ratio": rank / p, "erank": erank, "erank_ratio": erank / p, "stable_rank": stable,
                "spectral_gap": gap, "sv2_sv1": ratio21, "n_sv_gt_0p1": n01, "frac_sv_gt_0p1": n01 / p, "fro": fro, "sv_max": smax}


def power_law_alpha(s: torch.Tensor, n_min: int = 10, ww_compat: bool = False,
                    max_block: int = 1 << 22) -> dict[str, float]:
    """WeightWatcher-style power-law exponent of the eigenvalues λ = s² (Clauset et al. MLE + KS scan).

    For each candidate xmin = λ_i with a tail of n_i ≥ ``n_min`` values: α_i = 1 + n_i / Σ_{j≥i} ln(λ_j/λ_i),
    D_i = max_{j≥i} |1 − (λ_j/λ_i)^{1−α_i} − (j−i)/n_i| (weightwatcher's empirical-CDF convention, α ≤ 1 →
    D = 1); keep the first minimiser of D. Vectorised over candidates in blocks of ``max_block`` entries, so
    it costs O(p²) flops but no Python loop. ``alpha_weighted`` = α·log₁₀ λ_max as weightwatcher.

    ``ww_compat``: weightwatcher 0.7.7's scan instead: drop λ ≤ 1e-5, every value but the largest is a
    candidate (tails down to 2). Its small-sample path (< 20 eigenvalues) is not reproduced. Default drops
    only numerically-zero eigenvalues (s ≤ p·eps·s₁), so rank-deficient matrices are not fitted on noise.
    """
    nan = {"alpha": math.nan, "alpha_weighted": math.nan, "alpha_xmin": math.nan, "alpha_n_tail": 0.0,
               "alpha_ks": math.nan}
    if s.numel() == 0:
        return nan
    eps = torch.finfo(s.dtype).eps
    s = s.detach().double()
    lam = s.square().flip(0)  # ascending
    if ww_compat:
        lam = lam[lam > WW_EVALS_THRESH]
    else:
        lam = lam[s.flip(0) > s.numel() * eps * s[0]]
    n_all = lam.numel()
    n_cand = n_all - 1 if ww_compat else n_all - max(n_min, 2) + 1
    if n_cand < 1:
        return nan
    log_l = lam.log()
    suffix = log_l.flip(0).cumsum(0).flip(0)  # Σ_{j≥i} ln λ_j
    idx = torch.arange(n_cand, dtype=torch.float64)
    n_tail = n_all - idx
    alpha = 1.0 + n_tail / (suffix[:n_cand] - n_tail * log_l[:n_cand])
    ks = torch.ones(n_cand, dtype=torch.float64)
    cols = torch.arange(n_all, dtype=torch.float64)
    step = max(1, max_block // n_all)
    for a in range(0, n_cand, step):
        b = min(n_cand, a + step)
        diff = log_l[None, :] - log_l[a:b, None]  # ln(λ_j/λ_i)
        fit = 1.0 - torch.exp((1.0 - alpha[a:b, None]) * diff)
        emp = (cols[None, :] - idx[a:b, None]) / n_tail[a:b, None]
        dev = torch.where(cols[None, :] >= idx[a:b, None], (fit - emp).abs(), torch.zeros((), dtype=fit.dtype))
        ks[a:b] = torch.where(alpha[a:b] > 1.0, dev.amax(1), ks[a:b])
    best = int(torch.argmin(ks))
    a_best = float(alpha[best])
    return {"alpha": a_best, "alpha_weighted": a_best * math.log10(float(lam[-1])), "alpha_xmin": float(lam[best]),
                "alpha_n_tail": float(n_tail[best]), "alpha_ks": float(ks[best])}


#: Blocked QR first (TSQR) for matrices at least this many times taller than wide, in blocks of
#: TSQR_BLOCK·n rows. Measured on 1 thread (docs/benchmarks.md): 32000×256 159 → 129 ms, 32000×512 601 →
#: 443 ms, same accuracy as svdvals (both Householder); on 2 threads gesdd's own QR parallelises better
#: (83 vs 94 ms), so the blocked path is taken only when torch runs single-threaded (analysis workers).
#: With only two blocks it does not pay (8192×256: 34 vs 37 ms), hence the aspect floor of 48.
TSQR_MIN_ASPECT = 48
TSQR_BLOCK = 16


def singular_values(a: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.svdvals`` of a matrix (descending), computed on its cheapest equivalent.

    The SVD runs on the tall orientation (Aᵀ when m < n, a free view): same singular values, but MKL's
    gesdd is ~2.4x slower on a wide matrix than on its transpose (down_proj 256×688: 17.6 vs 6.9 ms).
    A very tall A (embeddings, lm_head: 32000×d) on one CPU thread is first reduced to the stacked R
    factors of cache-sized row blocks, which have A's singular values: A = blockdiag(Q_i)·[R_1; ...; R_k].
    """
    if a.shape[-2] < a.shape[-1]:
        a = a.mT
    m, n = a.shape
    if a.device.type == "cpu" and torch.get_num_threads() == 1 and m >= TSQR_MIN_ASPECT * n:
        block = TSQR_BLOCK * n
        k = m // block
        r = torch.linalg.qr(a[: k * block].reshape(k, block, n), mode="r").R
        a = torch.cat([r.reshape(k * n, n), a[k * block:]])
    return torch.linalg.svdvals(a)


def matrix_metrics(w: torch.Tensor, dtype: torch.dtype = torch.float32, tol_mode: str = "default",
                   alpha: bool = True, n_min: int = 10, ww_compat: bool = False) -> dict[str, float]:
    """Singular values of one matrix (in ``dtype``, :func:`singular_values`) and every metric derived from it."""
    eps = max(torch.finfo(dtype).eps, torch.finfo(w.dtype).eps) if w.is_floating_point() else None
    s = singular_values(w.detach().to(dtype))
    out = spectral_metrics(s, tuple(w.shape), tol_mode, eps)
    if alpha:
        out.update(power_law_alpha(s, n_min=n_min, ww_compat=ww_compat))
    return out


# -------------------------------------------------------------------------------- matrix selection
def _is_target(name: str, t: torch.Tensor, include_embeddings: bool, release_limit: bool) -> bool:
    if t.ndim != 2 or not t.is_floating_point():
        return False
    if release_limit and t.numel() > RELEASE_MAX_ELEMENTS:
        return False
    if "attn" in name or "mlp" in name:
        return True
    return include_embeddings and ("embed_tokens" in name or name.startswith("lm_head"))


def _strip(name: str) -> str:
    return name.removesuffix(".weight")


def matrices(ctx, step: int, space: str = "auto",
             include_embeddings: bool = False) -> list[tuple[str, str, torch.Tensor]]:
    """(row name, space, tensor) of the analysed matrices of ``ctx.run`` at ``step``, in module order."""
    native = ctx.mode == "faithful" or space in ("native", "factor")
    if space not in ("auto", "native", "factor"):
        raise ValueError(f"space must be 'auto' or 'native' (alias 'factor'), got {space!r}")
    if native:
        from rankscope.methods.dense import native_tensors

        state = native_tensors(ctx.run.native_model(step))
        return [(_strip(k), "native", v) for k, v in state.items()
                if _is_target(k, v, include_embeddings, ctx.mode == "faithful")]
    dense = ctx.run.dense_state(step)
    if dense is not None:
        return [(_strip(k), "dense", v) for k, v in dense.items() if _is_target(k, v, include_embeddings, False)]
    from rankscope.methods.dense import linearised_state, native_tensors

    model = ctx.run.native_model(step)
    out = [(_strip(k), "linear_product", v) for k, v in linearised_state(model).items()]
    for k, v in native_tensors(model).items():
        if _is_target(k, v, include_embeddings, False):
            out.append((_strip(k), "dense" if k.endswith(".weight") else "factor", v))
    return out


# ----------------------------------------------------------------------------------------- summaries
def _layer_and_type(name: str) -> tuple[str | None, str]:
    m = _LAYER.search(name)
    if m is None:
        return None, name
    rest = name[m.end():]
    return m.group(1), rest.split(".", 1)[1] if rest.startswith(("self_attn.", "mlp.")) else rest


def summary_rows(ctx, prefix: str, per_matrix: list[tuple[str, str, dict[str, float]]],
                 **row_kw) -> list[Row]:
    """Per-matrix rows plus unweighted means per layer, per type and over the model, per space."""
    rows: list[Row] = []
    groups: dict[tuple[str, str, str], list[dict[str, float]]] = defaultdict(list)
    for name, space, vals in per_matrix:
        for key, v in vals.items():
            note = "" if math.isfinite(v) else f"undefined: {_UNDEFINED.get(key, 'not finite for this matrix')}"
            rows.append(ctx.row(prefix + key, v, scope="matrix", name=name, space=space, note=note, **row_kw))
        layer, kind = _layer_and_type(name)
        if layer is not None:
            groups[(space, "layer", layer)].append(vals)
        groups[(space, "type", kind)].append(vals)
        groups[(space, "model", "")].append(vals)
    for (space, scope, name), items in groups.items():
        for key in items[0]:
            if key in _NOT_SUMMARISED:
                continue
            finite = [d[key] for d in items if math.isfinite(d[key])]
            value = sum(finite) / len(finite) if finite else math.nan
            note = "" if len(finite) == len(items) else (
                f"mean over {len(finite)} of {len(items)} matrices (undefined for the rest)" if finite
                else f"undefined for all {len(items)} matrices: {_UNDEFINED.get(key, 'not finite')}")
            rows.append(ctx.row(prefix + key, value, scope=scope, name=name, space=space, note=note, **row_kw))
    return rows


def _dtype(name: str) -> torch.dtype:
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {name!r}")
    return getattr(torch, name)


# ----------------------------------------------------------------------------------------- diagnostics
W_METRICS = tuple("w_" + k for k in SPECTRAL_KEYS + ALPHA_KEYS)
DW_METRICS = tuple("dw_" + k for k in SPECTRAL_KEYS + ALPHA_KEYS) + ("dw_rel_fro", "dw_fro_total",
                                                                     "dw_rel_fro_total")


@diagnostic("spectra", kind="checkpoint", metrics=W_METRICS, axis="spectra", dtype="float32", space="auto",
            include_embeddings=False, alpha=True, n_min=10, ww_compat=False)
def spectra(ctx, dtype: str = "float32", space: str = "auto", include_embeddings: bool = False,
            alpha: bool = True, n_min: int = 10, ww_compat: bool = False) -> list[Row]:
    """``w_*`` of every analysed matrix of one checkpoint, with per-layer/type/model means."""
    tol_mode = "faithful" if ctx.mode == "faithful" else "default"
    per_matrix = [
        (name, sp, matrix_metrics(w, _dtype(dtype), tol_mode, alpha, n_min, ww_compat))
        for name, sp, w in matrices(ctx, ctx.step, space, include_embeddings)
    ]
    return summary_rows(ctx, "w_", per_matrix, n_tokens=None)


@diagnostic("update_spectra", kind="consecutive", metrics=DW_METRICS, axis="spectra", dtype="float32",
            space="auto", include_embeddings=False, alpha=True, n_min=10, ww_compat=False)
def update_spectra(ctx, dtype: str = "float32", space: str = "auto", include_embeddings: bool = False,
                   alpha: bool = True, n_min: int = 10, ww_compat: bool = False) -> list[Row]:
    """``dw_*`` on ΔW = W(step_b) − W(step), one matrix at a time (only one ΔW is alive at once).

    ReLoRA's ΔW is taken on merged weights in the default space, so merges do not show up as jumps.
    """
    if ctx.step_b is None:
        raise ValueError("update_spectra needs ctx.step_b (a consecutive-kind diagnostic)")
    tol_mode = "faithful" if ctx.mode == "faithful" else "default"
    before = matrices(ctx, ctx.step, space, include_embeddings)
    after = {(n, sp): w for n, sp, w in matrices(ctx, ctx.step_b, space, include_embeddings)}
    per_matrix, sum_d2, sum_w2 = [], defaultdict(float), defaultdict(float)
    for name, sp, w0 in before:
        w1 = after.pop((name, sp), None)
        if w1 is None or w1.shape != w0.shape:
            raise ValueError(f"matrix {name} ({sp}) differs between steps {ctx.step} and {ctx.step_b}")
        delta = w1.to(_dtype(dtype)) - w0.to(_dtype(dtype))
        vals = matrix_metrics(delta, _dtype(dtype), tol_mode, alpha, n_min, ww_compat)
        del delta
        w_fro = float(torch.linalg.vector_norm(w0))  # storage dtype: an fp64 norm is ~20x slower on CPU
        vals["rel_fro"] = vals["fro"] / w_fro if w_fro > 0 else math.nan
        sum_d2[sp] += vals["fro"] ** 2
        sum_w2[sp] += w_fro**2
        per_matrix.append((name, sp, vals))
    rows = summary_rows(ctx, "dw_", per_matrix, n_tokens=None)
    for sp in sum_d2:
        total = math.sqrt(sum_d2[sp])
        rows.append(ctx.row("dw_fro_total", total, scope="model", space=sp, n_tokens=None))
        rel = total / math.sqrt(sum_w2[sp]) if sum_w2[sp] > 0 else math.nan
        rows.append(ctx.row("dw_rel_fro_total", rel, scope="model", space=sp, n_tokens=None))
    return rows


def iter_matrix_metrics(named: Iterable[tuple[str, torch.Tensor]], **kw) -> Iterator[tuple[str, dict[str, float]]]:
    """``matrix_metrics`` over (name, matrix) pairs: the loop the benchmark times against bare svdvals."""
    for name, w in named:
        yield name, matrix_metrics(w, **kw)
