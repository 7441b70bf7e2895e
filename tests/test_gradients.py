"""Tests of companion.gradients: both estimators are unbiased; the quadrature is exact."""

import math

import pytest
import torch

from companion.gradients import (
    gauss_hermite_expectation,
    gaussian_entropy,
    pathwise_grads,
    score_function_grads,
)

F64 = torch.float64


def f_quad(z):  # E_q[f] = sum (mu^2 + std^2) * w + ...: an analytic gradient to compare with
    return (torch.tensor([1.0, 3.0], dtype=F64) * z.pow(2)).sum(-1) + z[..., 0]


def analytic(mu, log_std):
    w = torch.tensor([1.0, 3.0], dtype=F64)
    std = log_std.exp()
    g_mu = 2 * w * mu + torch.tensor([1.0, 0.0], dtype=F64)
    g_ls = 2 * w * std**2
    return g_mu, g_ls


@pytest.mark.parametrize("estimator", ["score", "path"])
def test_estimators_are_unbiased(estimator):
    mu = torch.tensor([0.5, -1.0], dtype=F64)
    log_std = torch.tensor([-0.3, 0.2], dtype=F64)
    eps = torch.randn(200_000, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    fn = score_function_grads if estimator == "score" else pathwise_grads
    for got, want in zip(fn(f_quad, mu, log_std, eps), analytic(mu, log_std), strict=True):
        se = got.std(0) / math.sqrt(len(got))
        assert ((got.mean(0) - want).abs() < 4 * se + 1e-12).all()


def test_pathwise_has_lower_variance_here_and_baseline_helps_score():
    mu = torch.tensor([0.5, -1.0], dtype=F64)
    log_std = torch.tensor([-0.3, 0.2], dtype=F64)
    eps = torch.randn(20_000, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    s_mu, _ = score_function_grads(f_quad, mu, log_std, eps)
    b_mu, _ = score_function_grads(f_quad, mu, log_std, eps, baseline=f_quad(mu[None]).item())
    p_mu, _ = pathwise_grads(f_quad, mu, log_std, eps)
    assert (p_mu.var(0) < s_mu.var(0)).all() and (b_mu.var(0) < s_mu.var(0)).all()


def test_entropy_gradient_is_one_per_log_std():
    log_std = torch.tensor([-0.5, 0.1, 0.7], dtype=F64, requires_grad=True)
    gaussian_entropy(log_std).backward()
    assert torch.allclose(log_std.grad, torch.ones(3, dtype=F64))
    ref = torch.distributions.Normal(0.0, log_std.detach().exp()).entropy().sum()
    assert abs(gaussian_entropy(log_std.detach()) - ref) < 1e-12


def test_gauss_hermite_is_exact_for_quadratics():
    mean = torch.tensor([[0.3, -1.0], [2.0, 0.5]], dtype=F64)
    L = torch.tensor([[0.7, 0.0], [0.2, 0.4]], dtype=F64)
    cov = L @ L.T
    got = gauss_hermite_expectation(lambda z: (z[..., 0] * z[..., 1]) + z[..., 0] ** 2, mean, L)
    want = cov[0, 1] + mean[:, 0] * mean[:, 1] + cov[0, 0] + mean[:, 0] ** 2
    assert torch.allclose(got, want, atol=1e-13, rtol=0)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="eps must have shape"):
        pathwise_grads(f_quad, torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64),
                       torch.zeros(5, 3, dtype=F64))
