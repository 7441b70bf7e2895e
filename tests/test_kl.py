import math

import pytest
import torch
from torch import distributions as D

from companion import kl


@pytest.fixture(autouse=True)
def _float64():
    """These checks are exact to ~1e-12: float64 for this module's tests only (a module-level
    set_default_dtype would leak into every other test file of the run)."""
    torch.set_default_dtype(torch.float64)


def test_discrete_against_hand_computation():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    expected = 0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75)
    assert kl.kl_discrete(p, q).item() == pytest.approx(expected, abs=1e-12)


def test_discrete_zero_log_zero_and_support():
    p, q = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])
    assert kl.kl_discrete(p, q).item() == pytest.approx(math.log(2))
    assert kl.kl_discrete(q, p).item() == math.inf


def test_discrete_batched_and_validated():
    p = D.Dirichlet(torch.ones(5)).sample((100,))
    q = D.Dirichlet(torch.ones(5)).sample((100,))
    ref = D.kl_divergence(D.Categorical(probs=p), D.Categorical(probs=q))
    assert torch.allclose(kl.kl_discrete(p, q), ref, atol=1e-12)
    assert (kl.kl_discrete(p, q) > 0).all()
    with pytest.raises(ValueError, match="same shape"):
        kl.kl_discrete(torch.ones(2) / 2, torch.ones(3) / 3)
    with pytest.raises(ValueError, match="sum to 1"):
        kl.kl_discrete(torch.tensor([0.5, 0.6]), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="non-negative"):
        kl.kl_discrete(torch.tensor([1.5, -0.5]), torch.tensor([0.5, 0.5]))


def test_normal_closed_form_against_torch():
    mu1, mu2 = torch.randn(2, 50)
    v1, v2 = torch.rand(2, 50) + 0.1
    ref = D.kl_divergence(D.Normal(mu1, v1.sqrt()), D.Normal(mu2, v2.sqrt()))
    assert torch.allclose(kl.kl_normal(mu1, v1, mu2, v2), ref, atol=1e-12)
    assert kl.kl_normal(0.3, 2.0, 0.3, 2.0).item() == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="positive"):
        kl.kl_normal(0.0, -1.0, 0.0, 1.0)


def test_diag_standard_is_the_vae_kl():
    mu, logvar = torch.randn(3, 6), torch.randn(3, 6)
    ref = D.kl_divergence(D.Normal(mu, (0.5 * logvar).exp()), D.Normal(0.0, 1.0))
    assert torch.allclose(kl.kl_diag_standard(mu, logvar), ref, atol=1e-12)


def test_mvn_closed_form_against_torch():
    d = 4
    a, b = torch.randn(2, d, d)
    s1, s2 = a @ a.T + 0.3 * torch.eye(d), b @ b.T + 0.3 * torch.eye(d)
    m1, m2 = torch.randn(2, d)
    ref = D.kl_divergence(D.MultivariateNormal(m1, s1), D.MultivariateNormal(m2, s2))
    assert kl.kl_mvn(m1, s1, m2, s2).item() == pytest.approx(ref.item(), abs=1e-10)
    assert kl.kl_mvn(m1, s1, m1, s1).item() == pytest.approx(0.0, abs=1e-10)


def test_monte_carlo_is_within_its_standard_error():
    p, q = D.Normal(0.0, 1.0), D.Normal(1.0, 2.0)
    exact = kl.kl_normal(0.0, 1.0, 1.0, 4.0).item()
    est, se = kl.kl_monte_carlo(p, q, 100_000)
    assert abs(est - exact) < 4 * se and se < 0.01


def test_bernoulli_and_binomial():
    assert kl.bernoulli_kl(0.7, 0.5).item() == pytest.approx(
        0.7 * math.log(1.4) + 0.3 * math.log(0.6), abs=1e-12)
    ref = D.Binomial(30, probs=torch.tensor(0.3)).log_prob(torch.tensor(11.0))
    assert kl.binomial_log_prob_of_frequency(30, 11, 0.3).item() == pytest.approx(
        ref.item(), abs=1e-10)
    with pytest.raises(ValueError):
        kl.binomial_log_prob_of_frequency(5, 6, 0.5)


def test_quadrature_matches_closed_form():
    grid = torch.linspace(-15, 15, 6001)
    p, q = D.Normal(0.5, 1.0), D.Normal(-0.5, 1.5)
    exact = kl.kl_normal(0.5, 1.0, -0.5, 2.25).item()
    assert kl.kl_quadrature(p.log_prob, q.log_prob, grid).item() == pytest.approx(exact,
                                                                                  abs=1e-8)


@pytest.mark.slow
def test_moment_match_and_reverse_fit_on_two_bumps():
    target = kl.gaussian_mixture_1d([0.5, 0.5], [-2.5, 2.5], [0.7, 0.7])
    fwd = kl.moment_match(target)
    assert fwd.loc.item() == pytest.approx(0.0, abs=1e-12)
    assert fwd.scale.item() ** 2 == pytest.approx(0.49 + 6.25)
    rev = kl.fit_reverse_kl(target.log_prob, mu=1.0, log_sigma=math.log(0.5), steps=300)
    assert abs(rev.loc.item() - 2.5) < 0.3 and abs(rev.scale.item() - 0.7) < 0.15
