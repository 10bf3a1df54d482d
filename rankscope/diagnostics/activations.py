"""Token-level activation similarity to the full-rank run at the same step (diagnostics.md §2.4).

Rows are non-pad token positions, features are hidden units. Nothing n×n is ever built: linear CKA in
feature space needs only running sums n, Σx, Σy, XᵀX, YᵀY, XᵀY (fp64), so memory is O(d²) whatever the
token budget, and the debiased (unbiased-HSIC) variant adds O(d) sums (diagnostics.md §4 formulas). The
reference and the target run in lockstep, micro-batch by micro-batch, through ``hidden_states(upto=...)``,
which stops after the last needed layer, so the lm_head (the most expensive matmul at vocab 32000) is
never computed.

Layers: 0 = embedding output, 1..L = block outputs, L+1 = final-norm output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rankscope.diagnostics.registry import diagnostic
from rankscope.diagnostics.table import Row

ACT_METRICS = ("act_l2", "act_rel_l2", "act_cos", "act_cka", "act_cka_debiased")


class SimilarityAccumulator:
    """Streaming similarity of two models' layer activations from running sums.

    ``update(xs, ys)`` takes per-layer token matrices ([n, d] each, same n). With ``cross=False`` layer i of
    X is compared with layer i of Y (per-token L2/cosine too); with ``cross=True`` CKA is formed for every
    (i, j) pair from one concatenated GEMM, as torch-cka's layer×layer matrix.

    Precision: the sums live in ``dtype`` (fp64 by default), but each micro-batch's products are formed in
    the activations' own precision (fp32; half types are promoted to fp32) after subtracting a fixed shift,
    the first micro-batch's per-layer mean. Centring XᵀX − ΣxΣxᵀ/n cancels badly when activations carry a
    large mean; after the shift the remaining mean is small, so fp32 products summed in fp64 keep fp64-level
    accuracy at half the GEMM cost. Linear CKA and the unbiased HSIC are both invariant to a common shift of
    all rows, so the results are unchanged; per-token L2 and cosine use the unshifted rows.
    """

    def __init__(self, cross: bool = False, dtype: torch.dtype = torch.float64) -> None:
        self.cross, self.dtype, self.n = cross, dtype, 0
        self._s: dict[str, list] | None = None
        self._shift_x: list[torch.Tensor] = []
        self._shift_y: list[torch.Tensor] = []

    def _init(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> None:
        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=self.dtype, device=xs[0].device)

        lx, ly = len(xs), len(ys)
        if not self.cross and lx != ly:
            raise ValueError(f"cross=False needs as many X layers as Y layers, got {lx} and {ly}")
        npair = lx * ly if self.cross else lx
        self._s = {
            "sx": [z(x.shape[1]) for x in xs], "sy": [z(y.shape[1]) for y in ys],
            "xx": [z(x.shape[1], x.shape[1]) for x in xs], "yy": [z(y.shape[1], y.shape[1]) for y in ys],
            "a": [z(()) for _ in xs], "b": [z(()) for _ in ys],  # Σ‖x‖², Σ‖y‖²
            "aa": [z(()) for _ in xs], "bb": [z(()) for _ in ys],  # Σ‖x‖⁴, Σ‖y‖⁴
            "xa": [z(x.shape[1]) for x in xs], "yb": [z(y.shape[1]) for y in ys],  # Σx‖x‖², Σy‖y‖²
            "xy": [None] * npair, "ab": [z(()) for _ in range(npair)],  # XᵀY, Σ‖x‖²‖y‖²
            "xb": [None] * npair, "ya": [None] * npair,  # Σx‖y‖², Σy‖x‖²
            "l2": [z(()) for _ in xs], "nx": [z(()) for _ in xs], "cos": [z(()) for _ in xs],
        }
        self.lx, self.ly = lx, ly
        self._shift_x = [x.mean(0) for x in xs]
        self._shift_y = [y.mean(0) for y in ys]

    def _pairs(self) -> list[tuple[int, int]]:
        if self.cross:
            return [(i, j) for i in range(self.lx) for j in range(self.ly)]
        return [(i, i) for i in range(self.lx)]

    @staticmethod
    def _as_rows(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, t.shape[-1])
        return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t

    def _token_distances(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> None:
        """Per-token L2 and cosine of matched layers, on the unshifted rows, in the sums' precision (O(n·d))."""
        if self.lx != self.ly:
            return
        s = self._s
        for i in range(self.lx):
            if xs[i].shape[1] != ys[i].shape[1]:
                continue
            x, y = xs[i].to(self.dtype), ys[i].to(self.dtype)
            nx, ny = x.norm(dim=1), y.norm(dim=1)
            s["l2"][i] += (x - y).norm(dim=1).sum()
            s["nx"][i] += nx.sum()
            s["cos"][i] += ((x * y).sum(1) / (nx * ny).clamp_min(1e-12)).sum()

    @torch.no_grad()
    def update(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> None:
        """Add tokens: ``xs[i]`` is [n, d_i] for X's layer i; masked rows must already be removed."""
        xs = [self._as_rows(x) for x in xs]
        ys = [self._as_rows(y) for y in ys]
        if xs[0].shape[0] == 0:
            return
        if self._s is None:
            self._init(xs, ys)
        s, acc = self._s, self.dtype
        self._token_distances(xs, ys)
        xs = [x - m for x, m in zip(xs, self._shift_x)]
        ys = [y - m for y, m in zip(ys, self._shift_y)]
        a = [x.square().sum(1) for x in xs]
        b = [y.square().sum(1) for y in ys]
        a64, b64 = [v.to(acc) for v in a], [v.to(acc) for v in b]
        for rows, norms, norms64, (k_sum, k_gram, k_sq, k_sq2, k_wsum) in (
                (xs, a, a64, ("sx", "xx", "a", "aa", "xa")), (ys, b, b64, ("sy", "yy", "b", "bb", "yb"))):
            for i, r in enumerate(rows):
                s[k_sum][i] += r.sum(0).to(acc)
                s[k_gram][i] += (r.T @ r).to(acc)
                s[k_sq][i] += norms64[i].sum()
                s[k_sq2][i] += norms64[i].square().sum()
                s[k_wsum][i] += (r.T @ norms[i]).to(acc)
        if self.cross:  # one GEMM for every (i, j) block, then views
            big = (torch.cat(xs, 1).T @ torch.cat(ys, 1)).to(acc)
            ox = [0] + torch.tensor([x.shape[1] for x in xs]).cumsum(0).tolist()
            oy = [0] + torch.tensor([y.shape[1] for y in ys]).cumsum(0).tolist()
            blocks = [big[ox[i]:ox[i + 1], oy[j]:oy[j + 1]] for i, j in self._pairs()]
        else:
            blocks = [(xs[i].T @ ys[i]).to(acc) for i, _ in self._pairs()]
        for k, (i, j) in enumerate(self._pairs()):
            s["ab"][k] += (a64[i] * b64[j]).sum()
            for key, val in (("xy", blocks[k]), ("xb", (xs[i].T @ b[j]).to(acc)), ("ya", (ys[j].T @ a[i]).to(acc))):
                if s[key][k] is None:
                    s[key][k] = val.clone()
                else:
                    s[key][k].add_(val)
        self.n += xs[0].shape[0]

    # ---------------------------------------------------------------------------------------- results
    def _hsic_unbiased(self, t_xy, ab, sx, sy, sxy_proj, xb, ya, a, b) -> torch.Tensor:
        """HSIC₁ with K̃ = XXᵀ − diag, L̃ = YYᵀ − diag, from sums only (Song et al. 2012)."""
        n = self.n
        tr = t_xy - ab  # tr(K̃L̃) = ‖XᵀY‖² − Σ‖x‖²‖y‖²
        k1, l1 = sx.square().sum() - a, sy.square().sum() - b  # 1ᵀK̃1, 1ᵀL̃1
        kl1 = sxy_proj - sx @ xb - sy @ ya + ab  # 1ᵀK̃L̃1
        return (tr + k1 * l1 / ((n - 1) * (n - 2)) - 2.0 * kl1 / (n - 2)) / (n * (n - 3))

    def _self(self, which: str, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, n = self._s, self.n
        sv, g = (s["sx"][i], s["xx"][i]) if which == "x" else (s["sy"][i], s["yy"][i])
        a, aa, va = (s["a"][i], s["aa"][i], s["xa"][i]) if which == "x" else (s["b"][i], s["bb"][i], s["yb"][i])
        centred = g - torch.outer(sv, sv) / n
        biased = centred.square().sum()  # ‖X̃ᵀX̃‖²_F
        unbiased = self._hsic_unbiased(g.square().sum(), aa, sv, sv, sv @ g @ sv, va, va, a, a)
        return biased, unbiased

    def results(self) -> dict[str, list[float]]:
        """``act_*`` per pair (matched layers or the flattened Lx×Ly grid, row-major)."""
        if self._s is None or self.n < 4:
            raise ValueError(f"need at least 4 tokens for (debiased) CKA, got {self.n}")
        s, n = self._s, self.n
        selfx = [self._self("x", i) for i in range(self.lx)]
        selfy = [self._self("y", j) for j in range(self.ly)]
        out: dict[str, list[float]] = {m: [] for m in ACT_METRICS}
        for k, (i, j) in enumerate(self._pairs()):
            sx, sy, xy = s["sx"][i], s["sy"][j], s["xy"][k]
            c = xy - torch.outer(sx, sy) / n
            cka = c.square().sum() / (selfx[i][0].sqrt() * selfy[j][0].sqrt())
            hxy = self._hsic_unbiased(xy.square().sum(), s["ab"][k], sx, sy, sx @ xy @ sy, s["xb"][k],
                                      s["ya"][k], s["a"][i], s["b"][j])
            deb = hxy / (selfx[i][1] * selfy[j][1]).sqrt()
            out["act_cka"].append(float(cka))
            out["act_cka_debiased"].append(float(deb))
            matched = not self.cross or self.lx == self.ly
            if matched and i == j and s["xx"][i].shape == s["yy"][j].shape:
                out["act_l2"].append(float(s["l2"][i]) / n)
                out["act_rel_l2"].append(float(s["l2"][i] / s["nx"][i]) if float(s["nx"][i]) > 0 else math.nan)
                out["act_cos"].append(float(s["cos"][i]) / n)
            else:
                for m in ("act_l2", "act_rel_l2", "act_cos"):
                    out[m].append(math.nan)
        return out


def token_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions that count: labels are next-token aligned with inputs, and −100 marks an ignored target."""
    return labels != -100


def _rows(hidden: list[torch.Tensor], layers: Sequence[int], keep: torch.Tensor | None) -> list[torch.Tensor]:
    """[B, T, d] activations of ``layers`` as [tokens, d], pads dropped when ``keep`` is given."""
    flat = [hidden[i].reshape(-1, hidden[i].shape[-1]) for i in layers]
    return [f[keep] for f in flat] if keep is not None else flat


@torch.inference_mode()
def similarity_by_layer(reference, model, batch, layers: Sequence[int], device: str = "cpu",
                        mask_pads: bool = True, dtype: torch.dtype = torch.float64,
                        same_model: bool = False) -> dict[str, list[float]]:
    """Run ``reference`` (X) and ``model`` (Y) in lockstep over ``batch`` and compare ``layers``.

    ``same_model``: Y is X (the full-rank run against itself), so one forward serves both.
    """
    upto = max(layers) + 1
    acc = SimilarityAccumulator(cross=False, dtype=dtype)
    for ids, labels in batch.chunks():
        ids = ids.to(device)
        keep = token_mask(labels.to(device)).reshape(-1) if mask_pads else None
        hx = reference.hidden_states(ids, upto=upto)
        hy = hx if same_model else model.hidden_states(ids, upto=upto)
        acc.update(_rows(hx, layers, keep), _rows(hy, layers, keep))
    return acc.results()


def _layers(setting, n_layers: int) -> list[int]:
    total = n_layers + 2
    if setting == "all":
        return list(range(total))
    layers = sorted({int(i) for i in setting})
    if not layers or layers[0] < 0 or layers[-1] >= total:
        raise ValueError(f"layers must be 'all' or ids in 0..{total - 1} (0 = embedding, {total - 1} = final "
                         f"norm), got {setting!r}")
    return layers


@diagnostic("activations", kind="reference", metrics=ACT_METRICS, axis="activations", layers="all",
            mask_pads=None, dtype="float64")
def activations(ctx, layers="all", mask_pads: bool | None = None, dtype: str = "float64") -> list[Row]:
    """``act_*`` per layer plus the unweighted mean over layers (``scope="model"``).

    Pads are masked by default and included in faithful mode (the release's behaviour).
    """
    if ctx.reference is None:
        raise ValueError("activations needs the full-rank reference run (ctx.reference)")
    mask = (ctx.mode != "faithful") if mask_pads is None else bool(mask_pads)
    ref_model, ref_space = ctx.reference.analysis_model(ctx.paired_step)
    same = ctx.reference.path == ctx.run.path and ctx.paired_step == ctx.step
    model, space = (ref_model, ref_space) if same else ctx.run.analysis_model(ctx.step)
    ref_model.to(ctx.device)
    model.to(ctx.device)
    ids = _layers(layers, model.config.n_layers)
    res = similarity_by_layer(ref_model, model, ctx.batch, ids, ctx.device, mask, getattr(torch, dtype), same)
    n_tokens = int(token_mask(ctx.batch.labels).sum()) if mask else int(ctx.batch.labels.numel())
    rows = []
    undefined = "undefined: layers of different width, or a zero reference activation"
    for metric, values in res.items():
        for layer, v in zip(ids, values):
            rows.append(ctx.row(metric, v, scope="layer", name=str(layer), space=space, n_tokens=n_tokens,
                                note="" if math.isfinite(v) else undefined))
        finite = [v for v in values if math.isfinite(v)]
        note = "" if len(finite) == len(values) else (
            f"mean over {len(finite)} of {len(values)} layers (undefined for the rest)" if finite else undefined)
        rows.append(ctx.row(metric, sum(finite) / len(finite) if finite else math.nan, scope="model",
                            space=space, n_tokens=n_tokens, note=note))
    return rows
