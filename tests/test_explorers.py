"""Tests of what the explorers compute (the widgets only wire sliders to these)."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from companion.explorers import elbo_terms, pinned_samples, plot_q_against_posterior  # noqa: E402
from companion.toy import LinearGaussian  # noqa: E402

F64 = torch.float64


def model():
    return LinearGaussian(torch.tensor([[1.5], [-0.5]], dtype=F64),
                          torch.tensor([0.2, 0.1], dtype=F64), 0.6)


def test_elbo_terms_satisfy_both_identities():
    m = model()
    x = torch.tensor([1.0, -0.4], dtype=F64)
    t = elbo_terms(m, x, 0.3, 0.8)
    assert abs(t["elbo"] + t["gap"] - t["log_px"]) < 1e-12
    assert abs(t["reconstruction"] - t["kl_prior"] - t["elbo"]) < 1e-12
    pm, pc = m.posterior(x)
    tight = elbo_terms(m, x, pm[0, 0].item(), pc[0, 0].sqrt().item())
    assert abs(tight["gap"]) < 1e-12 and abs(tight["elbo"] - tight["log_px"]) < 1e-12
    with pytest.raises(ValueError, match="std must be > 0"):
        elbo_terms(m, x, 0.0, -1.0)


def test_plot_returns_the_same_terms():
    m = model()
    x = torch.tensor([1.0, -0.4], dtype=F64)
    _, terms = plot_q_against_posterior(m, x, 0.3, 0.8)
    assert terms == elbo_terms(m, x, 0.3, 0.8)


def test_pinned_samples_have_variance_sigma2_plus_s2():
    xs = pinned_samples(1.0, 1.5, 1.5, 200_000, torch.Generator().manual_seed(0))
    assert abs(xs.var().item() - 2 * 1.5**2) < 0.05


def test_latent_page_carries_the_decoder(tmp_path):
    """Chapter 6's web explorer: the decoder saved in half precision decodes as the VAE does
    (to half-precision rounding), and the sliders are latent_explorer's (-2.5..2.5 by 0.05)."""
    from companion.models.vae import VAE
    from companion.page_explorers import (
        latent_decoder,
        latent_mean_image,
        page_state,
        save_latent_decoder,
    )

    vae = VAE(latent_dim=2, hidden=(64,))
    save_latent_decoder(vae, tmp_path / "dec.npz")
    z = torch.randn(5, 2)
    with torch.no_grad():
        want = vae.mean_image(z)[:, 0]
    got = latent_mean_image(latent_decoder(tmp_path / "dec.npz"), z)
    assert (got - want).abs().max() < 5e-3
    state = page_state("latent", stored=str(tmp_path / "dec.npz"), span=2.5)
    values = state["controls"][0]["values"]
    assert len(values) == 101 and values[0] == -2.5 and values[-1] == 2.5
    with pytest.raises(ValueError, match="arch='mlp'"):
        save_latent_decoder(VAE(latent_dim=2, arch="conv"), tmp_path / "x.npz")


def test_a_chapter_stores_its_decoder_only_in_a_storing_run(tmp_path, monkeypatch):
    """store_latent_decoder writes under $BOOK_EXPLORERS, which tools/run_notebooks.py sets
    when it stores a chapter's outputs; nbval, Colab and dry runs write nothing."""
    from companion.models.vae import VAE
    from companion.page_explorers import STORE_VAR, latent_decoder, store_latent_decoder

    vae = VAE(latent_dim=2, hidden=(16,))
    monkeypatch.delenv(STORE_VAR, raising=False)
    assert store_latent_decoder(vae, "dec.npz") is None
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv(STORE_VAR, str(tmp_path / "explorers"))
    path = store_latent_decoder(vae, "dec.npz")
    assert path == tmp_path / "explorers" / "dec.npz"
    assert [W.shape for W, _ in latent_decoder(path)] == [(16, 2), (784, 16)]
