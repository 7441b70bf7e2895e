"""Tests of companion.affine_vae: closed forms against sampling and against LinearGaussian."""

import math

import pytest
import torch
from torch import distributions as D

from companion.affine_vae import AffineVAE, best_expected_elbo, optimum, pinned_gap, train

F64 = torch.float64
MU = torch.tensor([1.0, -2.0], dtype=F64)
SIGMA = 1.5


def data(n, seed):
    return MU + SIGMA * torch.randn(n, 2, dtype=F64, generator=torch.Generator().manual_seed(seed))


def test_elbo_matches_linear_gaussian_and_identity():
    m = AffineVAE(2, generator=torch.Generator().manual_seed(0))
    x = data(8, 1)
    mean, t = m.encode(x)
    lg = m.decoder()
    with torch.no_grad():
        ref = lg.elbo_gaussian(x, mean, t**2 * torch.eye(2, dtype=F64))
        assert torch.allclose(m.elbo(x), ref, atol=1e-12, rtol=0)
        # log p_theta(x) = ELBO + KL(q || p_theta(z|x)), exactly
        q = D.MultivariateNormal(mean, covariance_matrix=t**2 * torch.eye(2, dtype=F64))
        gap = D.kl_divergence(q, lg.posterior_dist(x))
        assert torch.allclose(m.elbo(x) + gap, lg.log_marginal(x), atol=1e-12, rtol=0)


def test_elbo_mc_is_unbiased_for_exact_elbo():
    m = AffineVAE(2, generator=torch.Generator().manual_seed(2))
    x = data(4, 3)
    with torch.no_grad():
        eps = torch.randn(50_000, 4, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
        m_, t = m.encode(x)
        r = x - m.decode_mean(m_ + t * eps)
        per = -0.5 * (r.pow(2).sum(-1) / m.s**2 + 2 * (math.log(2 * math.pi) + 2 * m.log_s))
        se = per.std(0) / math.sqrt(len(per))
        assert ((m.reconstruction_mc(x, eps) - m.reconstruction(x)).abs() < 4 * se).all()


def test_expected_elbo_matches_average_over_data():
    m = AffineVAE(2, generator=torch.Generator().manual_seed(5))
    x = data(100_000, 6)
    with torch.no_grad():
        e = m.elbo(x)
        se = e.std() / math.sqrt(len(e))
        assert abs(m.expected_elbo(MU, SIGMA) - e.mean()) < 4 * se


@pytest.mark.parametrize("s", [0.5 * SIGMA, 1.5 * SIGMA])
def test_optimum_is_a_stationary_point_with_the_stated_value(s):
    opt = optimum(MU, SIGMA, s)
    m = AffineVAE(2, init=opt)
    val = m.expected_elbo(MU, SIGMA)
    assert abs(val.item() - best_expected_elbo(2, SIGMA, s)) < 1e-12
    val.backward()
    for name in ("a", "b", "c", "v", "log_t"):
        assert getattr(m, name).grad.abs().max() < 1e-10, name
    # and a maximum: nudging any parameter lowers it
    g = torch.Generator().manual_seed(7)
    for _ in range(5):
        nudged = {k: v + 0.01 * torch.randn(v.shape, dtype=F64, generator=g)
                  for k, v in opt.items() if k != "s"}
        nudged["t"] = nudged["t"].abs()
        lower = AffineVAE(2, init={**nudged, "s": s}).expected_elbo(MU, SIGMA)
        assert lower < val


def test_learned_s_optimum_is_tight():
    # every point with c^2 + s^2 = sigma^2 (and the matching encoder) reaches E log p(x)
    for s in (0.3, 0.9, 1.2):
        m = AffineVAE(2, init=optimum(MU, SIGMA, s))
        assert abs(m.expected_elbo(MU, SIGMA).item() - best_expected_elbo(2, SIGMA)) < 1e-12


def test_pinned_gap_formula():
    x = data(5, 8)
    p = D.Independent(D.Normal(MU, SIGMA), 1)
    for t, s in ((1.0, SIGMA), (0.3, 0.2), (2.0, 0.5)):
        m = AffineVAE.pinned(MU, SIGMA, t, s)
        with torch.no_grad():
            gap = p.log_prob(x) - m.elbo(x)
        assert torch.allclose(gap, pinned_gap(2, SIGMA, t, s).expand(5), atol=1e-12, rtol=0)
    assert abs(pinned_gap(2, SIGMA, 1.0, SIGMA).item() - 1.0) < 1e-12  # d / 2 at (1, sigma)


@pytest.mark.slow  # the first Adam step imports much of torch (~2 s)
def test_train_moves_towards_the_optimum():
    g = torch.Generator().manual_seed(9)
    m = AffineVAE(2, init={"s": 0.5 * SIGMA}, learn=("a", "b", "t", "c", "v"), generator=g)
    res = train(m, MU, SIGMA, steps=200, batch_size=64, lr=0.05, generator=g)
    best = best_expected_elbo(2, SIGMA, 0.5 * SIGMA)
    assert best - res.elbo[-1] < 0.1 * (best - res.elbo[0])
    assert m.log_s.requires_grad is False and m.a.requires_grad


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown parameter"):
        AffineVAE(2, learn=("a", "q"))
    with pytest.raises(ValueError, match="must be > 0"):
        AffineVAE(2, init={"t": -1.0})
    with pytest.raises(ValueError, match="x must have shape"):
        AffineVAE(2).elbo(torch.zeros(3, 5, dtype=F64))
    with pytest.raises(ValueError, match="nothing to learn"):
        train(AffineVAE(2, learn=()), MU, SIGMA, steps=1)
