"""Tests of companion.toy against independent computations (torch.distributions, sampling)."""

import math

import pytest
import torch
from torch import distributions as D

from companion.toy import LinearGaussian

F64 = torch.float64


def make_lg(D_=5, K=2, sigma=0.7, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D_, K, generator=g, dtype=F64)
    b = torch.randn(D_, generator=g, dtype=F64)
    return LinearGaussian(W, b, sigma)


def test_lg_log_marginal_matches_torch_mvn():
    m = make_lg()
    _, x = m.sample(16, generator=torch.Generator().manual_seed(1))
    ref = D.MultivariateNormal(m.b, covariance_matrix=m.W @ m.W.T + m.sigma**2 * torch.eye(5,
                                                                                           dtype=F64))
    assert torch.allclose(m.log_marginal(x), ref.log_prob(x), atol=1e-10, rtol=0)


def test_lg_log_marginal_is_integral_of_joint_by_quadrature():
    # K = 1: integrate p(x, z) over z on a fine grid, independently of the closed form.
    m = make_lg(D_=3, K=1, sigma=0.5)
    _, x = m.sample(4, generator=torch.Generator().manual_seed(2))
    z = torch.linspace(-12, 12, 20001, dtype=F64)
    lj = m.log_joint(x.unsqueeze(0).expand(len(z), -1, -1).reshape(-1, 3),
                     z.repeat_interleave(4).unsqueeze(-1)).reshape(len(z), 4)
    quad = torch.logsumexp(lj, 0) + math.log(z[1] - z[0])
    assert torch.allclose(quad, m.log_marginal(x), atol=1e-8, rtol=0)


def test_lg_posterior_is_bayes_rule():
    # log p(z|x) from the closed-form posterior equals log p(x,z) - log p(x) at any z.
    m = make_lg()
    _, x = m.sample(8, generator=torch.Generator().manual_seed(3))
    z = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    mean, cov = m.posterior(x)
    post = D.MultivariateNormal(mean, covariance_matrix=cov)
    assert mean.shape == (8, 2) and cov.shape == (2, 2)
    assert torch.allclose(post.log_prob(z), m.log_joint(x, z) - m.log_marginal(x),
                          atol=1e-10, rtol=0)


def test_lg_posterior_matches_sampled_conditional_moments():
    # Regress z on x over many joint samples: the least-squares slope and residual
    # covariance are the posterior's mean map and covariance.
    m = make_lg(D_=3, K=2, sigma=0.8)
    z, x = m.sample(200_000, generator=torch.Generator().manual_seed(5))
    X = torch.cat([x - m.b, torch.ones(len(x), 1, dtype=F64)], 1)
    coef = torch.linalg.lstsq(X, z).solution
    resid = z - X @ coef
    mean, cov = m.posterior(x[:10])
    assert torch.allclose(X[:10] @ coef, mean, atol=0.02)
    assert torch.allclose(resid.T @ resid / len(z), cov, atol=0.01)


def test_lg_sample_moments():
    m = make_lg(D_=3, K=2, sigma=0.5)
    z, x = m.sample(200_000, generator=torch.Generator().manual_seed(6))
    assert z.shape == (200_000, 2) and x.shape == (200_000, 3)
    assert torch.allclose(x.mean(0), m.b, atol=0.02)
    assert torch.allclose(torch.cov(x.T), m.marginal_cov(), atol=0.05)


def test_lg_log_joint_matches_torch():
    m = make_lg()
    z, x = m.sample(6, generator=torch.Generator().manual_seed(7))
    ref = (D.Normal(0.0, 1.0).log_prob(z).sum(-1)
           + D.Normal(z @ m.W.T + m.b, m.sigma).log_prob(x).sum(-1))
    assert torch.allclose(m.log_joint(x, z), ref, atol=1e-12, rtol=0)


def test_lg_elbo_closed_form_matches_monte_carlo_and_is_tight_at_posterior():
    m = make_lg()
    _, x = m.sample(3, generator=torch.Generator().manual_seed(8))
    qm = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(9))
    A = torch.tensor([[0.6, 0.0], [0.3, 0.4]], dtype=F64)
    qS = A @ A.T
    q = D.MultivariateNormal(qm, covariance_matrix=qS)
    eps = torch.randn(100_000, 3, 2, dtype=F64, generator=torch.Generator().manual_seed(10))
    zs = qm + eps @ A.T  # (S, 3, 2), z ~ q
    w = m.log_joint(x, zs) - q.log_prob(zs)
    se = w.std(0) / math.sqrt(len(w))
    assert ((m.elbo_gaussian(x, qm, qS) - w.mean(0)).abs() < 4 * se).all()
    mean, cov = m.posterior(x)
    assert torch.allclose(m.elbo_gaussian(x, mean, cov), m.log_marginal(x), atol=1e-10, rtol=0)
    # the gap is KL(q || p(z|x)) for any q
    gap = m.log_marginal(x) - m.elbo_gaussian(x, qm, qS)
    kl = D.kl_divergence(q, m.posterior_dist(x))
    assert torch.allclose(gap, kl, atol=1e-10, rtol=0)


def test_lg_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="sigma"):
        LinearGaussian(torch.ones(3, 2), torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="b must have shape"):
        LinearGaussian(torch.ones(3, 2), torch.zeros(2), 1.0)
    m = make_lg()
    with pytest.raises(ValueError, match="x must have shape"):
        m.log_marginal(torch.zeros(4, 3, dtype=F64))
