"""Cross-validated predictors of downstream accuracy (diagnostics.md §7): the numerical core.

* Baseline: OLS of y on log-PPL.
* Extended: ridge on log-PPL + metrics, standardised inside each training fold (so the held-out row never
  informs the scaling), penalty chosen by an inner leave-one-out on the training fold. The inner LOO uses
  the exact closed form for ridge with an unpenalised intercept, residual_i / (1 - H_ii), on an SVD of the
  centred design, so a penalty grid costs one SVD per fold.
* CV schemes: leave-one-out and leave-one-group-out (groups = methods, or model sizes); a bootstrap (over models, or over
  init seeds and, jointly, the test items: the same resampled items re-score every model when per-item rows
  exist, else item-level noise on the targets when their errors are known) reruns the whole
  pipeline, including the penalty search, on each resample. Duplicated cases are held out together, so a
  case never predicts its own copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

ALPHAS = np.logspace(-3, 3, 19)


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = train.mean(0), train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return (train - mu) / sd, (test - mu) / sd


def ols_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    a = np.column_stack([np.ones(len(x_train)), x_train])
    coef, *_ = np.linalg.lstsq(a, y_train, rcond=None)
    return np.column_stack([np.ones(len(x_test)), x_test]) @ coef


def ridge_loo_alpha(xs: np.ndarray, y: np.ndarray, alphas: np.ndarray = ALPHAS) -> float:
    """Penalty (per row, so it is comparable across fold sizes) minimising the exact inner LOO error."""
    m = len(y)
    xc, yc = xs - xs.mean(0), y - y.mean()
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    uty = u.T @ yc
    shrink = s[None, :] ** 2 / (s[None, :] ** 2 + alphas[:, None] * m)  # [alphas, rank]
    fitted = u @ (shrink * uty[None, :]).T  # [m, alphas]
    h = 1.0 / m + (u**2) @ shrink.T
    err = np.mean(((yc[:, None] - fitted) / np.clip(1.0 - h, 1e-9, None)) ** 2, axis=0)
    return float(alphas[int(np.argmin(err))])


def ridge_fit(xs: np.ndarray, y: np.ndarray, alpha: float) -> tuple[float, np.ndarray]:
    """(intercept, coefficients) of ridge on already-standardised features; penalty = alpha · n."""
    xc = xs - xs.mean(0)
    coef = np.linalg.solve(xc.T @ xc + alpha * len(y) * np.eye(xs.shape[1]), xc.T @ (y - y.mean()))
    return float(y.mean() - xs.mean(0) @ coef), coef


def ridge_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    xs_train, xs_test = _standardise(x_train, x_test)
    alpha = ridge_loo_alpha(xs_train, y_train)
    b0, coef = ridge_fit(xs_train, y_train, alpha)
    return b0 + xs_test @ coef


Fitter = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def cv_predictions(x: np.ndarray, y: np.ndarray, groups: np.ndarray, fit: Fitter) -> np.ndarray:
    """Out-of-fold predictions, one fold per distinct group value."""
    pred = np.empty(len(y))
    for g in np.unique(groups):
        test = groups == g
        if test.all():
            raise ValueError("cross-validation needs at least two groups")
        pred[test] = fit(x[~test], y[~test], x[test])
    return pred


def scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """CV R² (1 - SSE/SST, may be negative), MAE and Spearman rho of out-of-fold predictions."""
    sst = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - pred) ** 2)) / sst if sst > 0 else float("nan")
    rho = float(stats.spearmanr(y, pred).statistic) if np.ptp(pred) > 0 and np.ptp(y) > 0 else float("nan")
    return {"r2": r2, "mae": float(np.mean(np.abs(y - pred))), "spearman": rho}


def evaluate_scheme(x_base: np.ndarray, x_ext: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict:
    """Baseline and extended scores (and their difference) for one CV scheme; also the predictions."""
    p_base = cv_predictions(x_base, y, groups, ols_fit_predict)
    p_ext = cv_predictions(x_ext, y, groups, ridge_fit_predict)
    base, ext = scores(y, p_base), scores(y, p_ext)
    return {"baseline": base, "extended": ext, "diff": {k: ext[k] - base[k] for k in base},
            "pred_baseline": p_base, "pred_extended": p_ext}


def bootstrap_scheme(x_base: np.ndarray, x_ext: np.ndarray, y: np.ndarray, groups: np.ndarray, *,
                     iters: int, seed: int, clusters: np.ndarray | None = None,
                     y_se: np.ndarray | None = None, min_groups: int = 3,
                     item_acc: Sequence[np.ndarray] | None = None) -> dict[str, dict[str, tuple[float, float]]]:
    """Percentile 95 % CIs of baseline, extended and paired difference scores under a bootstrap.

    Multi-bootstrap (seeds and items): with ``clusters`` (the init seed of each model) holding ≥ 2 values, whole
    seeds are resampled (every model of a drawn seed comes along, so models sharing a start are never treated
    as independent); otherwise models are resampled. With ``y_se`` (each target's item-level standard error,
    from the evaluator's interval) every resampled target moves by its own item noise. With ``item_acc`` (per
    task, ``[n_models, n_t]`` 0/1 correctness on the items every model answered, whose task average is ``y``)
    each resample also draws, per task, n_t items with replacement and re-scores *every* model on those same items
    (MultiBERTs' joint draw; ``y_se`` is then not used). Nothing given: the plain case bootstrap, draw for draw as
    before. A resample with fewer than ``min_groups`` distinct CV groups (or no spread in y) is skipped.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    ids = np.unique(clusters) if clusters is not None else np.array([])
    members = [np.flatnonzero(clusters == c) for c in ids] if len(ids) >= 2 else []
    draws: dict[str, dict[str, list[float]]] = {p: {} for p in ("baseline", "extended", "diff")}
    for _ in range(iters):
        idx = (np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))]) if members
               else rng.integers(0, n, n))
        g = groups[idx]
        if item_acc is not None:
            y_items = np.mean([m[:, rng.integers(0, m.shape[1], m.shape[1])].mean(axis=1) for m in item_acc], axis=0)
            yb = y_items[idx]
        else:
            yb = y[idx] if y_se is None else y[idx] + y_se[idx] * rng.standard_normal(len(idx))
        if len(np.unique(g)) < min_groups or np.ptp(yb) == 0:
            continue  # degenerate resample: no spread to predict or too few folds
        res = evaluate_scheme(x_base[idx], x_ext[idx], yb, g)
        for part in draws:
            for k, v in res[part].items():
                draws[part].setdefault(k, []).append(v)
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for part, metrics in draws.items():
        out[part] = {}
        for k, v in metrics.items():
            arr = np.asarray(v, dtype=float)
            arr = arr[np.isfinite(arr)]
            out[part][k] = tuple(np.percentile(arr, [2.5, 97.5]).tolist()) if len(arr) else (np.nan, np.nan)
    out["n_valid"] = {"resamples": len(draws["baseline"].get("r2", []))}
    return out


def standardised_weights(x_ext: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Ridge coefficients on features standardised over all rows (penalty by LOO), for interpretation."""
    xs, _ = _standardise(x_ext, x_ext)
    alpha = ridge_loo_alpha(xs, y)
    return ridge_fit(xs, y, alpha)[1], alpha
