"""Tests of companion.toy against independent computations (torch.distributions, sampling)."""

import math

import pytest
import torch
from torch import distributions as D

from companion.em import e_step, m_step, variational_em
from companion.kl import kl_discrete
from companion.toy import GaussianMixture, LinearGaussian

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
    z, x = m.sample(100_000, generator=torch.Generator().manual_seed(5))
    X = torch.cat([x - m.b, torch.ones(len(x), 1, dtype=F64)], 1)
    coef = torch.linalg.lstsq(X, z).solution
    resid = z - X @ coef
    mean, cov = m.posterior(x[:10])
    assert torch.allclose(X[:10] @ coef, mean, atol=0.02)
    assert torch.allclose(resid.T @ resid / len(z), cov, atol=0.01)


def test_lg_sample_moments():
    m = make_lg(D_=3, K=2, sigma=0.5)
    z, x = m.sample(50_000, generator=torch.Generator().manual_seed(6))
    assert z.shape == (50_000, 2) and x.shape == (50_000, 3)
    C = m.marginal_cov()
    se_mean = (C.diagonal() / len(x)).sqrt()
    se_cov = ((torch.outer(C.diagonal(), C.diagonal()) + C**2) / len(x)).sqrt()
    assert ((x.mean(0) - m.b).abs() < 4 * se_mean).all()
    assert ((torch.cov(x.T) - C).abs() < 4 * se_cov).all()


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
    eps = torch.randn(20_000, 3, 2, dtype=F64, generator=torch.Generator().manual_seed(10))
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


def make_gm(seed=0):
    return GaussianMixture(torch.tensor([0.2, 0.5, 0.3], dtype=F64),
                           torch.tensor([[-2.0, 0.0], [1.0, 1.0], [0.5, -1.5]], dtype=F64),
                           torch.tensor([0.5, 0.8, 0.6], dtype=F64))


def test_gm_log_marginal_matches_torch_mixture():
    m = make_gm()
    _, x = m.sample(32, generator=torch.Generator().manual_seed(0))
    comp = D.Independent(D.Normal(m.means, m.stds[:, None].expand(-1, 2)), 1)
    ref = D.MixtureSameFamily(D.Categorical(probs=m.weights), comp)
    assert torch.allclose(m.log_marginal(x), ref.log_prob(x), atol=1e-12, rtol=0)


def test_gm_posterior_is_bayes_rule_and_map_is_argmax():
    m = make_gm()
    _, x = m.sample(16, generator=torch.Generator().manual_seed(1))
    dens = torch.stack([D.MultivariateNormal(m.means[k], m.stds[k] ** 2 * torch.eye(2,
                        dtype=F64)).log_prob(x).exp() for k in range(3)], -1) * m.weights
    ref = dens / dens.sum(-1, keepdim=True)
    assert torch.allclose(m.posterior(x), ref, atol=1e-12, rtol=0)
    assert torch.equal(m.map_encode(x), ref.argmax(-1))
    # the prior matters: x = 0.6 is closer to the light component's mean, yet the MAP code is
    # the heavy one, since 0.9 N(0.6; 0, 1) > 0.1 N(0.6; 1, 1)
    skewed = GaussianMixture([0.9, 0.1], [[0.0], [1.0]], 1.0)
    assert skewed.map_encode(torch.tensor([[0.6]], dtype=F64)).item() == 0


def test_gm_sample_frequencies_and_means():
    m = make_gm()
    z, x = m.sample(100_000, generator=torch.Generator().manual_seed(2))
    freq = torch.bincount(z, minlength=3).to(F64) / len(z)
    assert torch.allclose(freq, m.weights, atol=0.01)
    for k in range(3):
        assert torch.allclose(x[z == k].mean(0), m.means[k], atol=0.02)
        assert abs((x[z == k] - m.means[k]).std().item() - m.stds[k].item()) < 0.02


def test_gm_elbo_identities_for_arbitrary_q():
    m = make_gm()
    _, x = m.sample(10, generator=torch.Generator().manual_seed(3))
    q = torch.softmax(torch.randn(10, 3, dtype=F64, generator=torch.Generator().manual_seed(4)),
                      -1)
    q[0] = torch.tensor([1.0, 0.0, 0.0], dtype=F64)  # a q with zeros: 0 log 0 = 0
    elbo = m.elbo(x, q)
    gap = kl_discrete(q, m.posterior(x))
    assert torch.allclose(elbo + gap, m.log_marginal(x), atol=1e-12, rtol=0)
    assert torch.allclose(elbo, m.reconstruction(x, q) - kl_discrete(q, m.weights.expand(10, 3)),
                          atol=1e-12, rtol=0)
    assert (elbo <= m.log_marginal(x) + 1e-12).all()
    assert torch.allclose(m.elbo(x, m.posterior(x)), m.log_marginal(x), atol=1e-12, rtol=0)


def test_m_step_maximizes_elbo_for_fixed_q():
    m = make_gm()
    _, x = m.sample(300, generator=torch.Generator().manual_seed(5))
    q = e_step(m, x)
    best = m_step(x, q)
    top = best.elbo(x, q).sum()
    g = torch.Generator().manual_seed(6)
    for _ in range(5):  # any perturbation of the M-step solution lowers the ELBO
        other = GaussianMixture(torch.softmax(best.weights.log() + 0.05 * torch.randn(
            3, dtype=F64, generator=g), 0), best.means + 0.05 * torch.randn(3, 2, dtype=F64,
            generator=g), best.stds * (1 + 0.05 * torch.randn(3, dtype=F64, generator=g)))
        assert other.elbo(x, q).sum() < top


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_variational_em_is_monotone_and_sandwiched():
    m = make_gm()
    _, x = m.sample(300, generator=torch.Generator().manual_seed(7))
    init = GaussianMixture([1 / 3] * 3, [[-1.0, 1.0], [0.0, 0.0], [1.0, -1.0]], [2.0] * 3)
    h = variational_em(x, init, 15)
    ll, el = torch.tensor(h.loglik), torch.tensor(h.elbo_after_m)
    assert len(ll) == 16 and len(el) == 15 and len(h.models) == 16
    assert (ll[:-1] <= el + 1e-9).all() and (el <= ll[1:] + 1e-9).all()
    assert ll[-1] > ll[0] + 100


def test_gm_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture([0.5, 0.6], [[0.0], [1.0]], 1.0)
    m = make_gm()
    with pytest.raises(ValueError, match="q must hold"):
        m.elbo(torch.zeros(4, 2, dtype=F64), torch.full((4, 2), 0.5, dtype=F64))


def test_lg_gradients_flow_to_tensor_sigma_and_W():
    W = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(11))
    b = torch.zeros(3, dtype=F64)
    x = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(12))
    s1 = torch.tensor(0.7, dtype=F64, requires_grad=True)
    W1 = W.clone().requires_grad_(True)
    gs, gW = torch.autograd.grad(LinearGaussian(W1, b, s1).log_marginal(x).sum(), (s1, W1))
    s2 = torch.tensor(0.7, dtype=F64, requires_grad=True)
    W2 = W.clone().requires_grad_(True)
    ref = D.MultivariateNormal(b, covariance_matrix=W2 @ W2.T + s2**2 * torch.eye(3, dtype=F64))
    rs, rW = torch.autograd.grad(ref.log_prob(x).sum(), (s2, W2))
    assert torch.allclose(gs, rs, atol=1e-10) and torch.allclose(gW, rW, atol=1e-10)
