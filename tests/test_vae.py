"""Tests of companion.models.vae."""

import math

import pytest
import torch
from torch import distributions as D

from companion.metrics import iw_log_likelihood
from companion.models.vae import VAE, ELBOLoss
from companion.train import fit


def images(n=6, seed=0, binary=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    return torch.bernoulli(x, generator=g) if binary else x


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_shapes(arch, likelihood):
    torch.manual_seed(0)
    model = VAE(latent_dim=5, arch=arch, likelihood=likelihood, hidden=(32, 16))
    x = images(4)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (4, 5)
    assert model.decode(torch.zeros(3, 4, 5)).shape == (3, 4, 1, 28, 28)
    t = model.elbo_terms(x, n_samples=3)
    assert t.reconstruction.shape == t.kl.shape == t.elbo.shape == (4,)
    assert t.kl_per_dim.shape == (4, 5)
    assert model.log_joint(x, torch.zeros(7, 4, 5)).shape == (7, 4)
    assert model.sample(3).shape == (3, 1, 28, 28)
    assert model.sample(3, mean=False).shape == (3, 1, 28, 28)


def test_kl_term_matches_torch_distributions():
    torch.manual_seed(0)
    model = VAE(latent_dim=4, hidden=(32,))
    x = images(5)
    t = model.elbo_terms(x)
    prior = D.Independent(D.Normal(torch.zeros(4), torch.ones(4)), 1)
    expected = D.kl_divergence(model.posterior(x), prior)
    torch.testing.assert_close(t.kl, expected)
    torch.testing.assert_close(t.kl_per_dim.sum(-1), t.kl)


def test_log_likelihoods_match_torch_distributions():
    torch.manual_seed(0)
    x = images(3)
    z = torch.randn(3, 4)
    bern = VAE(latent_dim=4, hidden=(32,))
    out = bern.decode(z)
    expected = D.Bernoulli(logits=out).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(bern.log_likelihood(x, out), expected)

    gauss = VAE(latent_dim=4, hidden=(32,), likelihood="gaussian", sigma=0.2)
    out = gauss.decode(z)
    expected = D.Normal(out, 0.2).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(gauss.log_likelihood(x, out), expected)
    expected_prior = D.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(VAE.log_prior(z), expected_prior)


def test_reconstruction_term_samples_from_q():
    torch.manual_seed(0)
    model = VAE(latent_dim=3, hidden=(32,))
    x = images(4)
    mu = torch.randn(4, 3)
    # a q with (almost) no variance: the sample is mu itself
    t = model.elbo_terms(x, q=(mu, torch.full((4, 3), -40.0)))
    torch.testing.assert_close(t.reconstruction, model.log_likelihood(x, model.decode(mu)))
    # with variance, the estimate differs and its gradient reaches logvar
    logvar = torch.zeros(4, 3, requires_grad=True)
    t = model.elbo_terms(x, q=(mu, logvar), n_samples=2)
    t.reconstruction.sum().backward()
    assert logvar.grad.abs().sum() > 0


def test_elbo_below_log_px_computed_by_quadrature():
    """A 1-D latent VAE: log p(x) by numerical integration over z bounds the ELBO."""
    torch.manual_seed(0)
    model = VAE(latent_dim=1, hidden=(16,)).double()
    x = images(3).double()
    z = torch.linspace(-9, 9, 2001, dtype=torch.float64)
    with torch.no_grad():
        log_joint = model.log_joint(x, z.view(-1, 1, 1).expand(-1, 3, 1))  # (Z, B)
        log_px = torch.logsumexp(log_joint, 0) + math.log(z[1] - z[0])
        elbo = model.elbo_terms(x, n_samples=1000).elbo
        iw = iw_log_likelihood(model.log_joint, model.posterior, x, k=1000).log_px
    assert (elbo < log_px).all()
    assert (iw <= log_px + 0.05).all() and (iw > elbo).all()


def test_sigma_fixed_or_learned():
    fixed = VAE(latent_dim=2, hidden=(8,), likelihood="gaussian", sigma=0.5)
    assert "log_sigma" not in dict(fixed.named_parameters())
    assert fixed.sigma.item() == pytest.approx(0.5)
    learned = VAE(latent_dim=2, hidden=(8,), likelihood="gaussian", sigma="learned",
                  sigma_init=0.3)
    assert "log_sigma" in dict(learned.named_parameters())
    assert learned.sigma.item() == pytest.approx(0.3)
    learned.elbo_terms(images(2, binary=False)).elbo.sum().backward()
    assert learned.log_sigma.grad is not None and learned.log_sigma.grad != 0
    with pytest.raises(TypeError, match="no sigma"):
        VAE(latent_dim=2, hidden=(8,)).sigma  # noqa: B018


def test_errors_are_clear():
    with pytest.raises(ValueError, match="arch"):
        VAE(arch="transformer")
    with pytest.raises(ValueError, match="likelihood"):
        VAE(likelihood="poisson")
    with pytest.raises(ValueError, match="sigma"):
        VAE(likelihood="gaussian", sigma=-1.0)
    with pytest.raises(ValueError, match="latent_dim"):
        VAE(latent_dim=0)
    model = VAE(latent_dim=3, hidden=(8,))
    with pytest.raises(ValueError, match="latent size 3"):
        model.decode(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="flat images"):
        model.encode(torch.zeros(2, 784))


def test_elbo_loss_warmup_and_metrics():
    loss_fn = ELBOLoss(beta=2.0, warmup_steps=10)
    assert [loss_fn.beta_at(s) for s in (0, 5, 10, 50)] == [0.0, 1.0, 2.0, 2.0]
    assert ELBOLoss(beta=0.5).beta_at(0) == 0.5
    torch.manual_seed(0)
    model = VAE(latent_dim=3, hidden=(16,))
    loss, metrics = loss_fn(model, images(4, binary=False), step=0)
    assert metrics["beta"] == 0.0
    assert loss_fn(model, images(4, binary=False))[1]["beta"] == 2.0  # no step: final beta
    # at beta = 0 the loss is the negative reconstruction term alone
    torch.testing.assert_close(loss, -metrics["reconstruction"])
    torch.testing.assert_close(metrics["elbo"], metrics["reconstruction"] - metrics["kl"])
    with pytest.raises(ValueError, match="beta"):
        ELBOLoss(beta=-1.0)


def test_elbo_loss_binarizes_bernoulli_batches():
    torch.manual_seed(0)
    model = VAE(latent_dim=3, hidden=(16,))
    seen = []
    original = model.elbo_terms

    def spy(x, **kw):
        seen.append(x)
        return original(x, **kw)

    model.elbo_terms = spy
    grey = images(4, binary=False)
    ELBOLoss()(model, grey)
    ELBOLoss(binarize=False)(model, grey)
    assert set(seen[0].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(seen[1], grey)


@pytest.mark.slow
def test_training_raises_the_elbo():
    torch.manual_seed(0)
    x = images(128, binary=False) * 0.3  # sparse, digit-like intensities
    model = VAE(latent_dim=4, hidden=(32,))
    result = fit(model, ELBOLoss(), x, steps=20, batch_size=32, lr=3e-3, quiet=True)
    elbo = result.history["elbo"]
    assert sum(elbo[-5:]) / 5 > sum(elbo[:5]) / 5 + 50


@pytest.mark.slow  # over 0.7 s: make test, not check-fast
def test_a_resumed_fit_continues_the_warmup_schedule(tmp_path):
    """Interrupted after 6 steps and resumed, beta_t goes on from 0.6, as in one run."""
    torch.manual_seed(0)
    x = images(64, binary=False)
    path = tmp_path / "vae.pt"
    fit(VAE(latent_dim=2, hidden=(8,)), ELBOLoss(warmup_steps=10), x, steps=6, batch_size=16,
        checkpoint=path, quiet=True)
    resumed = fit(VAE(latent_dim=2, hidden=(8,)), ELBOLoss(warmup_steps=10), x, steps=12,
                  batch_size=16, checkpoint=path, quiet=True)
    betas = resumed.history["beta"]
    assert betas == pytest.approx([s / 10 for s in range(6)] + [0.6, 0.7, 0.8, 0.9, 1.0, 1.0])


def test_vae_names_wrong_dtype_device_and_range():
    model = VAE(4)
    with pytest.raises(TypeError, match=r"x.to\(torch.float32\)"):
        model.encode(torch.rand(2, 1, 28, 28, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x / 255"):
        model.elbo_terms(torch.rand(2, 1, 28, 28) * 255)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="move one of them"):
            model.encode(torch.rand(2, 1, 28, 28, device="cuda"))


def test_elbo_terms_agree_with_the_five_lines_of_chapter_6():
    """VAE.elbo_terms against the learning step written out as in chapter 6, with the same
    random numbers: encode, KL in closed form, z = mu + sigma * eps, decode, log p(x|z)."""
    from companion.kl import kl_diag_standard

    torch.manual_seed(0)
    model = VAE(latent_dim=4, hidden=(32,))
    x = images(8)
    with torch.no_grad():
        torch.manual_seed(3)
        terms = model.elbo_terms(x)
        torch.manual_seed(3)
        mu, logvar = model.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(1, *mu.shape)[0]
        rec = model.log_likelihood(x, model.decode(z))
        kl = kl_diag_standard(mu, logvar).sum(-1)
    torch.testing.assert_close(terms.reconstruction, rec)
    torch.testing.assert_close(terms.kl, kl)
    torch.testing.assert_close(terms.elbo, rec - kl)


def test_conv_vae_channels_set_the_width():
    small, default = VAE(4, arch="conv", channels=(8, 16)), VAE(4, arch="conv")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(small) < n(default) / 2
    assert small.decode(torch.zeros(2, 4)).shape == (2, 1, 28, 28)
    convs = [m for m in small.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16]
