"""Tests of companion.metrics."""

import itertools

import pytest
import torch

from companion.metrics import auroc


def brute_force_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_known_cases():
    assert auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1])) == 1.0
    assert auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), torch.tensor([0, 0, 1, 1])) == 0.0
    assert auroc(torch.ones(6), torch.tensor([0, 1, 0, 1, 0, 1])) == 0.5
    # one positive above one of two negatives and below the other
    assert auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1, 0])) == 0.5


def test_auroc_matches_pairwise_count_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (60,), generator=g).float()  # many ties
    labels = torch.rand(60, generator=g) < 0.3
    expected = brute_force_auroc(scores.tolist(), labels.tolist())
    assert auroc(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_auroc_errors():
    with pytest.raises(ValueError, match="both classes"):
        auroc(torch.rand(5), torch.ones(5))
    with pytest.raises(ValueError, match="differ in size"):
        auroc(torch.rand(5), torch.ones(4))
    with pytest.raises(ValueError, match="0/1"):
        auroc(torch.rand(3), torch.tensor([0, 2, 1]))


# --- bounds on log p(x), active units, KL per dimension (chapter 6) ---------------------

from torch import distributions as D  # noqa: E402

from companion.metrics import (  # noqa: E402
    active_units,
    diag_normal,
    iw_log_likelihood,
    kl_per_dimension,
    refine_posterior,
    test_elbo,
    vae_iw_log_likelihood,
)
from companion.models.vae import VAE  # noqa: E402
from companion.toy import LinearGaussian  # noqa: E402

test_elbo.__test__ = False  # a metric, not a test


def linear_gaussian(seed=0, D_=5, K=2):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D_, K, generator=g, dtype=torch.float64)
    b = torch.randn(D_, generator=g, dtype=torch.float64)
    model = LinearGaussian(W, b, sigma=0.5)
    _, x = model.sample(4, generator=g)
    return model, x


def poor_q(model):
    """A Gaussian q that is not the posterior: shifted mean, wider diagonal covariance."""
    def q(x):
        mean, cov = model.posterior(x)
        std = (1.5 * torch.diagonal(cov)).sqrt().expand_as(mean)
        return D.Independent(D.Normal(mean + 0.15, std), 1)
    return q


@pytest.mark.parametrize("k", [1, 7])
def test_iw_with_exact_posterior_is_exact(k):
    model, x = linear_gaussian()
    torch.manual_seed(0)
    est = iw_log_likelihood(model.log_joint, model.posterior_dist, x, k=k)
    torch.testing.assert_close(est.log_px, model.log_marginal(x), rtol=0, atol=1e-9)
    torch.testing.assert_close(est.elbo, model.log_marginal(x), rtol=0, atol=1e-9)


def iw_gaps(ks, reps, seed=0):
    """Mean over `reps` runs and the 4 examples of log p(x) - IW_k, with its standard error,
    for a poor Gaussian q on the linear Gaussian model; also the gap of the exact ELBO."""
    model, x = linear_gaussian()
    log_px = model.log_marginal(x)
    q = poor_q(model)
    xr = x.repeat(reps, 1)  # repeat each x to average the estimator over independent draws
    torch.manual_seed(seed)
    gaps, errors = {}, {}
    for k in ks:
        est = iw_log_likelihood(model.log_joint, q, xr, k=k, batch_size=2000, max_rows=10**5)
        assert (est.log_px >= est.elbo).all()  # Jensen, sample by sample
        gap = (log_px - est.log_px.view(reps, -1)).mean(1)  # pooled over the 4 examples
        gaps[k], errors[k] = gap.mean().item(), gap.std().item() / reps**0.5
    mean, cov = model.posterior(x)
    var = 1.5 * torch.diagonal(cov)
    elbo = model.elbo_gaussian(x, mean + 0.15, torch.diag_embed(var.expand_as(mean)))
    return gaps, errors, (log_px - elbo).mean().item()


def check_iw_gaps(gaps, errors, elbo_gap, tight):
    assert elbo_gap > 0.5  # the poor q leaves a real gap
    assert abs(gaps[1] - elbo_gap) < 4 * errors[1]  # E[IW_1] is the ELBO (closed form here)
    ks = sorted(gaps)
    for small, big in zip(ks[:-1], ks[1:], strict=True):  # the bound tightens with k ...
        assert gaps[big] < gaps[small] - 3 * (errors[big] + errors[small])
    k_max = ks[-1]
    assert -4 * errors[k_max] < gaps[k_max] < tight  # ... towards log p(x), never above it


def test_iw_bound_is_above_elbo_and_grows_with_k():
    check_iw_gaps(*iw_gaps((1, 4, 64), reps=200), tight=0.03)


@pytest.mark.slow
def test_iw_bound_converges_to_log_px():
    check_iw_gaps(*iw_gaps((1, 3, 9, 27, 1000), reps=500), tight=0.01)


def test_iw_draws_exactly_k_samples_in_chunks():
    model, x = linear_gaussian()
    rows = []

    def counting_joint(xx, z):
        rows.append(z.shape[0])
        return model.log_joint(xx, z)

    est = iw_log_likelihood(counting_joint, model.posterior_dist, x, k=7, max_rows=12)
    assert rows == [3, 3, 1] and est.k == 7  # 12 // 4 examples = 3 samples per chunk
    with pytest.raises(ValueError, match="batch shape"):
        iw_log_likelihood(model.log_joint,
                          lambda xx: D.Normal(torch.zeros(len(xx), 2), 1.0), x, k=2)
    with pytest.raises(ValueError, match="k must be"):
        iw_log_likelihood(model.log_joint, model.posterior_dist, x, k=0)


def small_vae_and_images(seed=0):
    torch.manual_seed(seed)
    model = VAE(latent_dim=3, hidden=(32,))
    g = torch.Generator().manual_seed(seed)
    grey = torch.rand(10, 1, 28, 28, generator=g) * 0.5
    return model, grey, torch.bernoulli(grey, generator=g)


def test_vae_iw_and_test_elbo():
    model, grey, x = small_vae_and_images()
    torch.manual_seed(0)
    est = vae_iw_log_likelihood(model, x, k=50, batch_size=4)
    assert est.log_px.shape == (10,) and (est.log_px >= est.elbo).all()
    # the same seed and the same encoder input give the same samples
    torch.manual_seed(1)
    a = vae_iw_log_likelihood(model, x, k=5, x_encoder=x)
    torch.manual_seed(1)
    b = vae_iw_log_likelihood(model, x, k=5)
    torch.testing.assert_close(a.log_px.float(), b.log_px.float())
    report = test_elbo(model, x, n_samples=500)
    assert report.elbo == pytest.approx(est.elbo.mean().item(), abs=1.0)
    assert report.elbo == pytest.approx(report.reconstruction - report.kl)
    other = test_elbo(model, x, x_encoder=grey)
    assert other.kl != report.kl  # the encoder saw other images
    with pytest.raises(ValueError, match="x_encoder"):
        test_elbo(model, x, x_encoder=grey[:3])


def test_active_units_and_kl_per_dimension():
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 0.5, 0.05, 0.0])  # variances 1, 0.25, 0.0025, 0
    mu = torch.randn(5000, 4, generator=g) * scale
    au = active_units(mu)
    assert au.count == 2 and au.active.tolist() == [True, True, False, False]
    torch.testing.assert_close(au.variance, scale**2, rtol=0.1, atol=1e-4)
    logvar = torch.zeros(5000, 4)
    expected = 0.5 * mu.pow(2).mean(0)  # logvar = 0: KL = mu^2 / 2
    torch.testing.assert_close(kl_per_dimension(mu, logvar), expected)
    with pytest.raises(ValueError, match="N >= 2"):
        active_units(torch.zeros(1, 4))


@pytest.mark.slow
def test_refine_posterior_raises_the_elbo_and_leaves_the_model_alone():
    model, _, x = small_vae_and_images()
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        q0 = model.encode(x)
    q1 = refine_posterior(model, x, steps=60, lr=5e-2)
    torch.manual_seed(0)
    with torch.no_grad():
        e0 = model.elbo_terms(x, n_samples=200, q=q0).elbo
        e1 = model.elbo_terms(x, n_samples=200, q=q1).elbo
    assert e1.mean() > e0.mean() + 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.requires_grad for p in model.parameters())
    assert diag_normal(*q1).batch_shape == (10,)


def test_alike_names_the_sets_within_twice_the_floor():
    from companion.metrics import alike

    said = alike({"DDPM": 115.0, "flow": 110.0, "EDM": 400.0}, floor=60.0)
    assert said == dict(alike="DDPM and flow", unlike="EDM", nearest="flow", ratio="1.8x",
                        bar="2x")
    assert alike({"a": 10.0}, 60.0)["unlike"] == "none"
    assert alike({"a": 200.0, "b": 300.0}, 60.0)["alike"] == "none"
    assert alike({"a": 120.0}, 60.0)["alike"] == "a"  # the bar itself is within
    many = {f"a long name for set {i}": 100.0 for i in range(6)}
    assert alike(many, 60.0)["alike"] == "6 of 6 sets"
    assert all(len(v) <= 60 for v in alike(many, 60.0).values())
    with pytest.raises(ValueError, match="floor"):
        alike({"a": 1.0}, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        alike({}, 60.0)
    with pytest.raises(ValueError, match="'a'"):
        alike({"a": float("nan")}, 60.0)
