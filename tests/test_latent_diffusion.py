"""companion.latent_diffusion and companion.models.latent_denoiser (chapter 11)."""

import math

import pytest
import torch
from torch import distributions as D

from companion import latent_diffusion as ld
from companion.diffusion import Diffusion, linear_betas
from companion.models.latent_denoiser import NO_LABEL, LatentDenoiser, check_weight, flops_per_code
from companion.models.vae import VAE, to_8bit_range

DIM, T = 8, 20


def _vae(seed=0):
    torch.manual_seed(seed)
    return VAE(DIM, arch="conv", likelihood="discretized", channels=(4, 8)).eval()


def _denoiser(vae=None, **kw):
    torch.manual_seed(1)
    model = LatentDenoiser(dim=DIM, width=16, depth=2, T=T, **kw)
    torch.nn.init.normal_(model.out.weight, std=0.1)  # not the zero start: outputs vary
    if vae is not None:
        model.codec_id.fill_(ld.codec_fingerprint(vae))
    return model.eval()


def _diffusion():
    return Diffusion(linear_betas(T, 1e-3, 0.2))


def test_denoiser_shapes_and_labels():
    z, t = torch.randn(5, DIM), torch.randint(1, T + 1, (5,))
    assert _denoiser()(z, t).shape == (5, DIM)
    cond = _denoiser(num_classes=10)
    y = torch.tensor([0, 3, 9, NO_LABEL, 5])
    out = cond(z, t, y)
    assert out.shape == (5, DIM)
    # no labels at all is the "no label" embedding for every code
    none = torch.full((5,), NO_LABEL)
    assert torch.allclose(cond(z, t), cond(z, t, none))
    # the label changes the prediction
    assert not torch.allclose(cond(z, t, torch.zeros(5, dtype=torch.long)),
                              cond(z, t, torch.full((5,), 7)))


def test_denoiser_refuses_bad_input():
    model, cond = _denoiser(), _denoiser(num_classes=10)
    t = torch.ones(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"flat codes \(B, 8\)"):
        model(torch.randn(4, 4, 7, 7), t)
    with pytest.raises(ValueError, match=r"flat codes \(B, 8\)"):
        model(torch.randn(4, 16), t)
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        cond(torch.randn(4, DIM), t, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        cond(torch.randn(4, DIM), t, torch.tensor([0, 1, 2, -2]))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(4, DIM), t, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="int64 tensor"):
        model(torch.randn(4, DIM), t.float())
    with pytest.raises(ValueError, match="num_classes"):
        LatentDenoiser(dim=DIM, num_classes=1)
    with pytest.raises(ValueError, match="dim must be a positive int"):
        LatentDenoiser(dim=0)


def test_guidance_weight_must_be_a_number():
    assert check_weight(3) == 3.0 and check_weight(0.5) == 0.5
    for bad in ("3", None, True, [1.0]):
        with pytest.raises(TypeError, match="must be a number"):
            check_weight(bad)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite and >= 0"):
            check_weight(bad)
    cond = _denoiser(num_classes=10)
    with pytest.raises(TypeError, match="must be a number"):
        ld.guided_eps(cond, torch.arange(4), "strong")


def test_guided_eps_is_the_extrapolation():
    cond = _denoiser(num_classes=10)
    z, t, y = torch.randn(6, DIM), torch.randint(1, T + 1, (6,)), torch.arange(6)
    c, u = cond(z, t, y), cond(z, t)
    with torch.no_grad():
        assert torch.allclose(ld.guided_eps(cond, y, 0.0)(z, t), c, atol=1e-6)
        assert torch.allclose(ld.guided_eps(cond, y, 2.5)(z, t), 3.5 * c - 2.5 * u,
                              atol=1e-5)
    with pytest.raises(ValueError, match="digits 0..9"):
        ld.guided_eps(cond, torch.tensor([0, 11]), 1.0)
    with pytest.raises(ValueError, match="class-conditional"):
        ld.guided_eps(_denoiser(), y, 1.0)


def test_drop_labels_rate():
    y = torch.zeros(20_000, dtype=torch.long)
    dropped = ld.drop_labels(y, 0.15, torch.Generator().manual_seed(0))
    rate = (dropped == NO_LABEL).float().mean().item()
    assert abs(rate - 0.15) < 0.01
    assert ((dropped == 0) | (dropped == NO_LABEL)).all()
    with pytest.raises(ValueError, match="drop probability"):
        ld.drop_labels(y, 1.0)


def test_conditional_loss_trains_both_halves():
    cond = _denoiser(num_classes=10).train()
    z0, y = torch.randn(64, DIM), torch.randint(0, 10, (64,))
    loss = ld.conditional_loss(_diffusion(), cond, z0, y, 0.5,
                               torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    grad = cond.label_emb.weight.grad
    assert grad[10].abs().sum() > 0  # the "no label" row learns
    assert grad[:10].abs().sum() > 0


def test_a_decoder_from_another_checkpoint_is_refused():
    vae = _vae(0)
    den = _denoiser(vae)
    ld.check_pair(vae, den)  # the pair it was trained with
    with pytest.raises(ValueError, match="another autoencoder"):
        ld.check_pair(_vae(1), den)
    with pytest.raises(ValueError, match="another autoencoder"):
        ld.sample(_diffusion(), den, _vae(1), 1.0, 2)
    other = VAE(DIM + 1, arch="conv", likelihood="discretized", channels=(4, 8))
    with pytest.raises(ValueError, match="codes of 8 numbers"):
        ld.check_pair(other, den)


def test_latent_scale_gives_unit_variance():
    codes = 3.0 * torch.randn(4000, DIM) + 0.1
    s = ld.latent_scale(codes)
    assert abs((s * codes).std().item() - 1) < 1e-6
    with pytest.raises(ValueError, match="at least 2 flat codes"):
        ld.latent_scale(torch.randn(5))
    with pytest.raises(ValueError, match="constants"):
        ld.latent_scale(torch.ones(10, DIM))
    with pytest.raises(ValueError, match="positive finite"):
        ld.decode(_vae(), torch.randn(2, DIM), -1.0)


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_sample_shapes_and_errors():
    vae = _vae()
    den, cond = _denoiser(vae), _denoiser(vae, num_classes=10)
    gen = torch.Generator().manual_seed(0)
    x = ld.sample(_diffusion(), den, vae, 0.5, 3, generator=gen, quiet=True)
    assert x.shape == (3, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    x = ld.sample(_diffusion(), cond, vae, 0.5, 4, labels=[1, 2, 3, 4], w=2.0, quiet=True)
    assert x.shape == (4, 1, 28, 28)
    with pytest.raises(ValueError, match="needs labels"):
        ld.sample(_diffusion(), cond, vae, 0.5, 4, quiet=True)
    with pytest.raises(ValueError, match="one per sample"):
        ld.sample(_diffusion(), cond, vae, 0.5, 4, labels=[1, 2], quiet=True)
    with pytest.raises(ValueError, match="digits 0..9"):
        ld.sample(_diffusion(), cond, vae, 0.5, 2, labels=[1, 12], quiet=True)
    with pytest.raises(ValueError, match="T = 20"):
        ld.sample(Diffusion(linear_betas(30)), den, vae, 0.5, 2, quiet=True)
    with pytest.raises(ValueError, match=r"scaled codes \(B, 8\)"):
        ld.decode(vae, torch.randn(2, 4, 7, 7), 1.0)


def test_entropy_closed_form():
    mu, logvar = torch.randn(5, DIM), torch.randn(5, DIM)
    exact = D.Independent(D.Normal(mu, (0.5 * logvar).exp()), 1).entropy()
    assert torch.allclose(ld.gaussian_entropy(logvar), exact, atol=1e-5)


def test_latent_bound_adds_its_terms():
    vae = _vae()
    den = _denoiser(vae)
    diffusion, scale = _diffusion(), 0.7
    x = to_8bit_range(torch.rand(3, 1, 28, 28))
    b = ld.latent_bound(vae, den, diffusion, scale, x, generator=torch.Generator()
                        .manual_seed(5), quiet=True)
    # the same draws by hand: z, then the diffusion's density bound on s z
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=g)
        rec = -vae.log_likelihood(x, vae.decode(z))
        terms = diffusion.bound_terms(den, scale * z, decoder="gaussian", generator=g,
                                      quiet=True)
    assert torch.allclose(b.reconstruction, rec, rtol=1e-5)
    assert torch.allclose(b.cross_entropy, terms.total - DIM * math.log(scale), rtol=1e-5)
    assert torch.allclose(b.total, b.reconstruction - b.entropy + b.cross_entropy)
    assert torch.isclose(b.bits_per_dim(), b.total.mean() / (784 * math.log(2)))


def test_flops_per_code_counts_the_matrix_products():
    model = LatentDenoiser(dim=DIM, width=16, depth=2, T=T)
    # every Linear: 2 * in * out per code; LayerNorm and SiLU are not counted
    linear = sum(2 * m.in_features * m.out_features for m in model.modules()
                 if isinstance(m, torch.nn.Linear))
    assert flops_per_code(model) == linear


def test_latent_settings_per_profile():
    from companion import recipes
    from companion.run.profiles import PROFILES

    for p in PROFILES.values():
        s = recipes.latent_settings(p)
        assert s["T"] == recipes.ddpm_settings(p)["T"]  # the same chain as chapter 9
        assert 0.1 <= s["p_uncond"] <= 0.2
