"""The runtime probes' own logistic regression, scaler and bag of words equal scikit-learn (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from rankscope.downstream import genre as G
from rankscope.downstream import tasks as T
from rankscope.downstream.linear import CountVectorizer, LogisticRegression, standardize
from rankscope.downstream.probe import probe_accuracy

sk_linear = pytest.importorskip("sklearn.linear_model")
sk_pre = pytest.importorskip("sklearn.preprocessing")
sk_text = pytest.importorskip("sklearn.feature_extraction.text")


def _blobs(k: int, n: int = 300, d: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, d))
    z[:, :3] += y[:, None] * np.array([1.0, -0.7, 0.4])  # weak signal: many points near the boundary
    return z * rng.uniform(0.1, 10, size=d) + rng.normal(size=d) * 5, y  # badly scaled, off-centre


def test_standardize_matches_standard_scaler():
    x, _ = _blobs(2)
    x[:, 4] = 3.0  # a constant feature is left unscaled (scikit-learn: scale 1)
    a, b = standardize(x[:200], x[200:])
    scaler = sk_pre.StandardScaler().fit(x[:200])
    np.testing.assert_allclose(a, scaler.transform(x[:200]), atol=1e-12)
    np.testing.assert_allclose(b, scaler.transform(x[200:]), atol=1e-12)


@pytest.mark.parametrize("k, c", [(2, 1.0), (2, 0.05), (3, 1.0), (5, 0.3)])
def test_logistic_regression_matches_sklearn(k, c):
    x, y = _blobs(k, seed=k)
    labels = np.array(["a", "b", "c", "d", "e"])[y]  # string labels: classes_ ordering must match too
    a, b = standardize(x[:200], x[200:])
    ours = LogisticRegression(c=c).fit(a, labels[:200])
    ref = sk_linear.LogisticRegression(C=c, tol=1e-12, max_iter=20000).fit(a, labels[:200])
    assert ours.converged_
    assert list(ours.classes_) == list(ref.classes_)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-6)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, atol=1e-6)
    np.testing.assert_allclose(ours.decision_function(b), ref.decision_function(b), atol=1e-5)
    assert (ours.predict(b) == ref.predict(b)).all()


def test_probe_accuracy_matches_the_sklearn_pipeline():
    x, y = _blobs(2, seed=7)
    is_train = np.arange(len(y)) % 3 != 0
    clf = sk_pre.StandardScaler(), sk_linear.LogisticRegression(C=1.0, max_iter=2000)
    ref = clf[1].fit(clf[0].fit_transform(x[is_train]), y[is_train]).predict(clf[0].transform(x[~is_train]))
    ours = probe_accuracy(x, y, is_train)
    assert 0.5 < ours.mean() < 1.0  # a non-trivial problem
    np.testing.assert_array_equal(ours, (ref == y[~is_train]).astype(float))


def test_count_vectorizer_matches_sklearn_on_the_genre_task():
    texts = [it["text"] for it in T.load_items("genre")][:150] + ["Don't stop: naïve café, x y 42 A1 __ a_b"]
    for kwargs in ({"min_df": 2, "binary": True}, {"min_df": 1, "binary": False}):
        ours = CountVectorizer(**kwargs).fit(texts[:100])
        ref = sk_text.CountVectorizer(lowercase=True, **kwargs).fit(texts[:100])
        assert ours.vocabulary_ == ref.vocabulary_
        diff = ours.transform(texts[100:]) - ref.transform(texts[100:])
        assert diff.nnz == 0 or abs(diff).max() == 0


def test_bow_baseline_reproduces_the_shipped_manifest():
    """The manifest's baseline was computed with scikit-learn when the tasks were built."""
    items = T.load_items("genre")
    assert G.bow_baseline(items) == pytest.approx(T.task_info("genre")["baseline"]["acc"], abs=1e-12)


def test_one_class_is_an_error():
    with pytest.raises(ValueError, match="at least 2 classes"):
        LogisticRegression().fit(np.zeros((3, 2)), [1, 1, 1])
