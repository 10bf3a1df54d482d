"""The two classical pieces the probes need, on numpy/scipy alone (scikit-learn is a test-only oracle).

* :func:`standardize` — per-feature mean 0 / variance 1 from the train rows (population std; a constant
  feature is left unscaled), like ``StandardScaler``.
* :class:`LogisticRegression` — L2-penalised logistic regression with an unpenalised intercept, minimising
  ``C·Σ_i loss_i + ½‖W‖²`` exactly as scikit-learn's ``lbfgs`` solver does: the binary logistic loss for
  two classes, the multinomial (softmax) loss for more. The objective is strictly convex, so its minimiser
  is unique and any converged solver returns the same model; we solve it with scipy's L-BFGS-B to a
  tighter tolerance than scikit-learn's default.
* :class:`CountVectorizer` — a bag-of-words matrix with scikit-learn's default tokens (lower-cased words of
  two or more word characters), ``min_df`` as a document count and an optional binary flag.

Tests compare all three against scikit-learn (tests/test_linear.py).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy import optimize, sparse
from scipy.special import expit, logsumexp

TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``train`` and each of ``others`` scaled with the train rows' mean and population std."""
    train = np.asarray(train, dtype=np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0)] = 1.0  # constant feature
    return [(np.asarray(x, dtype=np.float64) - mean) / std for x in (train, *others)]


class LogisticRegression:
    """``fit(X, y)`` then ``predict(X)`` / ``decision_function(X)``; X dense or scipy-sparse."""

    def __init__(self, c: float = 1.0, max_iter: int = 5000, tol: float = 1e-10):
        self.c, self.max_iter, self.tol = float(c), int(max_iter), float(tol)

    def fit(self, x, y) -> LogisticRegression:
        x = x.tocsr().astype(np.float64) if sparse.issparse(x) else np.asarray(x, dtype=np.float64)
        self.classes_, yi = np.unique(np.asarray(y), return_inverse=True)
        k = len(self.classes_)
        if k < 2:
            raise ValueError(f"logistic regression needs at least 2 classes, got {list(self.classes_)}")
        n, d = x.shape
        rows = 1 if k == 2 else k
        onehot = np.eye(k)[yi]
        sign = np.where(yi == 1, 1.0, -1.0)
        # The objective divided by C·n (same minimiser): mean loss + ‖W‖² / (2·C·n), well scaled for L-BFGS.
        reg = 1.0 / (self.c * n)

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w = theta[: rows * d].reshape(rows, d)
            b = theta[rows * d :]
            z = np.asarray(x @ w.T) + b                                   # [n, rows]
            if k == 2:
                margin = sign * z[:, 0]
                loss = np.logaddexp(0.0, -margin).mean()
                dz = (-sign * expit(-margin))[:, None] / n
            else:
                lse = logsumexp(z, axis=1)
                loss = (lse - (z * onehot).sum(1)).mean()
                dz = (np.exp(z - lse[:, None]) - onehot) / n
            grad_w = np.asarray(x.T @ dz).T + reg * w
            value = loss + 0.5 * reg * float((w * w).sum())
            return value, np.concatenate([grad_w.ravel(), dz.sum(0)])

        res = optimize.minimize(objective, np.zeros(rows * (d + 1)), jac=True, method="L-BFGS-B",
                                options={"maxiter": self.max_iter, "gtol": self.tol, "ftol": 1e-15})
        self.coef_ = res.x[: rows * d].reshape(rows, d)
        self.intercept_ = res.x[rows * d :]
        self.converged_ = bool(res.success)
        return self

    def decision_function(self, x) -> np.ndarray:
        z = np.asarray(x @ self.coef_.T) + self.intercept_
        return z[:, 0] if len(self.classes_) == 2 else z

    def predict(self, x) -> np.ndarray:
        z = self.decision_function(x)
        idx = (z > 0).astype(int) if z.ndim == 1 else z.argmax(axis=1)
        return self.classes_[idx]


class CountVectorizer:
    """Bag-of-words counts over a vocabulary fitted on the training texts (sorted, as scikit-learn's)."""

    def __init__(self, min_df: int = 1, binary: bool = False, lowercase: bool = True):
        self.min_df, self.binary, self.lowercase = int(min_df), bool(binary), bool(lowercase)

    def _tokens(self, text: str) -> list[str]:
        return TOKEN.findall(text.lower() if self.lowercase else text)

    def fit(self, texts: Sequence[str]) -> CountVectorizer:
        df = Counter(tok for text in texts for tok in set(self._tokens(text)))
        self.vocabulary_ = {t: i for i, t in enumerate(sorted(t for t, c in df.items() if c >= self.min_df))}
        return self

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        rows, cols, vals = [], [], []
        for r, text in enumerate(texts):
            counts = Counter(t for t in self._tokens(text) if t in self.vocabulary_)
            for tok, c in counts.items():
                rows.append(r)
                cols.append(self.vocabulary_[tok])
                vals.append(1 if self.binary else c)
        shape = (len(texts), len(self.vocabulary_))
        return sparse.csr_matrix((np.asarray(vals, dtype=np.float64), (rows, cols)), shape=shape)

    def fit_transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        return self.fit(texts).transform(texts)
