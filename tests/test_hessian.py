"""Hessian power iteration, FD vs exact HVPs, Hutchinson trace (diagnostics.md §6 test 2)."""

from __future__ import annotations

import copy

import pytest
import torch

from rankscope.diagnostics.context import AnalysisContext, EvalBatch
from rankscope.diagnostics.hessian import (
    exact_hvp,
    fd_hvp,
    hessian,
    hutchinson_trace,
    loss_terms,
    model_loss_terms,
    power_iteration,
    start_vector,
)
from rankscope.models.llama import LlamaLM
from rankscope.models.presets import model_config

EIGS = [5.0, 2.0, 1.0, 0.5, 0.25, 0.1, -0.05, 0.0]


pytestmark = pytest.mark.usefixtures("one_thread")


def quadratic_problem():
    """L = gᵀθ + ½θᵀHθ with H = Q diag(5, 2, 1, 0.5, …)Qᵀ; θ split over two tensors (2-D and 1-D)."""
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(len(EIGS), len(EIGS), generator=g, dtype=torch.float64))
    hess = q @ torch.diag(torch.tensor(EIGS, dtype=torch.float64)) @ q.T
    grad = torch.randn(len(EIGS), generator=g, dtype=torch.float64)
    theta = {"w": torch.randn(2, 3, generator=g, dtype=torch.float64),
             "b": torch.randn(2, generator=g, dtype=torch.float64)}

    def loss(params, batch):
        x = torch.cat([params["w"].reshape(-1), params["b"]])
        return grad @ x + 0.5 * x @ hess @ x

    return theta, loss, hess


def test_power_iteration_finds_top_eigenvalue_exact_and_fd():
    theta, loss, _ = quadratic_problem()
    terms = loss_terms(loss)
    v0 = start_vector(theta, seed=0)
    exact = power_iteration(exact_hvp(terms, theta), v0, tol=1e-12, max_iter=200)
    assert exact.converged and exact.eigenvalue == pytest.approx(5.0, abs=1e-6)
    fd = power_iteration(fd_hvp(terms, theta, eps=5e-3), v0, tol=1e-12, max_iter=200)
    assert fd.eigenvalue == pytest.approx(5.0, abs=1e-4)
    short = power_iteration(exact_hvp(terms, theta), v0, tol=1e-3, max_iter=2)
    assert short.iterations == 2 and len(short.history) == 2


def test_hutchinson_trace_matches_sum_of_eigenvalues():
    theta, loss, _ = quadratic_problem()
    tr, se = hutchinson_trace(exact_hvp(loss_terms(loss), theta), theta, n_samples=400, seed=1)
    assert abs(tr - sum(EIGS)) < 4 * se + 1e-9


def smoke_setup():
    torch.manual_seed(0)
    model = LlamaLM(model_config("smoke")).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 8192, (2, 33), generator=g)
    batch = EvalBatch(ids[:, :-1].contiguous(), ids[:, 1:].contiguous(), micro_batch=1)
    return model, batch


def test_fd_hvp_matches_exact_hvp_on_a_llama_under_math_sdpa():
    model, batch = smoke_setup()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    theta = {n: p.detach().float() for n, p in model.named_parameters()}
    terms = model_loss_terms(model, batch)
    v = start_vector(theta, seed=3)
    norm = sum(float((t * t).sum()) for t in v.values()) ** 0.5
    v = {n: t / norm for n, t in v.items()}
    exact = exact_hvp(terms, theta)(v)
    fd = fd_hvp(terms, theta, eps=5e-3)(v)
    num = sum(float(((fd[n] - exact[n]) ** 2).sum()) for n in v) ** 0.5
    den = sum(float((exact[n] ** 2).sum()) for n in v) ** 0.5
    assert den > 0 and num / den <= 5e-3
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_hessian_group_reports_iterations():
    model, batch = smoke_setup()

    class Run:
        name, method, scale, seed, steps = "full", "full_rank", "smoke", 0, [10]

        def analysis_model(self, step):
            return copy.deepcopy(model), "dense"

    rows = hessian(AnalysisContext(run=Run(), step=10, batch=batch), max_iter=3, trace_samples=2)
    by = {r.metric: r for r in rows}
    assert "iterations=" in by["hess_top_eig"].note and by["hess_top_eig"].space == "dense"
    assert by["hess_trace"].stderr is not None
