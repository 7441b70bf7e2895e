"""companion.inpainting: masks, replacement and RePaint, denoising, the VAE as a prior."""

import math

import pytest
import torch

from companion.diffusion import Diffusion, linear_betas
from companion.inpainting import (
    MASKS,
    check_mask,
    denoise,
    inpaint,
    make_mask,
    matching_step,
    network_calls,
    region_rmse,
    repaint_schedule,
    sigma_range,
    spread,
    vae_map,
    vae_pseudo_gibbs,
)
from companion.models.vae import VAE

T = 40


def _diffusion():
    return Diffusion(linear_betas(T, 1e-4 * 1000 / T, 0.02 * 1000 / T))


def _some_model(x, t):
    """A fixed, input-dependent stand-in for eps_theta (not a good one)."""
    return torch.tanh(0.7 * x + 0.01 * t.float().view(-1, 1, 1, 1))


def _oracle(diffusion, c):
    """The optimal eps for data that are one image c: (x_t - sqrt(abar_t) c) / sqrt(1 - abar_t)."""
    abar = diffusion.alphas_bar_

    def eps(x, t):
        a = abar[t].float().view(-1, 1, 1, 1)
        return (x - a.sqrt() * c) / (1 - a).sqrt()

    return eps


def _images(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g) * 2 - 1


# --- masks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MASKS))
def test_masks_are_zero_one_with_the_right_share_known(name):
    m = make_mask(name, 64, generator=torch.Generator().manual_seed(0))
    assert m.shape == (64, 1, 28, 28) and set(m.unique().tolist()) <= {0.0, 1.0}
    share = {"left": 0.5, "bottom": 0.5, "centre": 0.75, "keep50": 0.5, "keep20": 0.2}[name]
    assert abs(m.mean().item() - share) < 0.01


def test_half_masks_hide_the_half_they_name():
    assert make_mask("left")[0, 0, :, :14].sum() == 0 and make_mask("left")[0, 0, :, 14:].all()
    assert make_mask("bottom")[0, 0, 14:].sum() == 0 and make_mask("bottom")[0, 0, :14].all()


def test_bad_masks_are_refused_with_a_reason():
    x = _images(2)
    with pytest.raises(ValueError, match="shape"):
        check_mask(torch.ones(2, 1, 27, 27), x)
    with pytest.raises(ValueError, match="only 0"):
        check_mask(torch.full((2, 1, 28, 28), 0.5), x)
    with pytest.raises(TypeError, match="tensor"):
        check_mask([[1, 0]], x)
    with pytest.raises(ValueError, match="unknown mask"):
        make_mask("right")
    d = _diffusion()
    with pytest.raises(ValueError, match="shape"):
        inpaint(d, _some_model, x, torch.ones(3, 1, 28, 28), quiet=True)
    with pytest.raises(ValueError, match="only 0"):
        inpaint(d, _some_model, x, torch.rand(2, 1, 28, 28), quiet=True)
    # one mask for the whole batch, in any of the accepted shapes and dtypes
    for m in (torch.ones(1, 28, 28), torch.ones(1, 1, 28, 28, dtype=torch.bool),
              torch.ones(2, 1, 28, 28, dtype=torch.long)):
        assert check_mask(m, x).dtype == torch.bool


# --- the schedule ----------------------------------------------------------------------------
def test_schedule_without_resampling_is_the_plain_chain():
    assert repaint_schedule(5) == [5, 4, 3, 2, 1, 0]
    assert network_calls(repaint_schedule(5)) == 5


def test_repaint_schedule_jumps_back_and_counts_calls():
    assert repaint_schedule(4, jump=2, resamples=2) == [4, 3, 2, 1, 2, 3, 2, 1, 0]
    for n, j, u in ((20, 5, 3), (50, 10, 10), (25, 4, 2)):
        states = repaint_schedule(n, j, u)
        assert states[0] == n and states[-1] == 0 and min(states) == 0
        assert all(abs(b - a) == 1 for a, b in zip(states[:-1], states[1:], strict=True))
        assert network_calls(states) == n + (u - 1) * j * len(range(0, n - j, j))
    with pytest.raises(ValueError, match="jump"):
        repaint_schedule(5, jump=5, resamples=2)
    with pytest.raises(ValueError, match="resamples"):
        repaint_schedule(5, resamples=0)


# --- the samplers ----------------------------------------------------------------------------
@pytest.mark.parametrize("n_steps", [None, 7])
@pytest.mark.parametrize("resamples", [1, 3])
def test_all_ones_mask_returns_the_known_image(n_steps, resamples):
    x = _images()
    out = inpaint(_diffusion(), _some_model, x, torch.ones_like(x), n_steps=n_steps,
                  jump=2, resamples=resamples, generator=torch.Generator().manual_seed(1),
                  quiet=True)
    assert torch.equal(out, x)


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
@pytest.mark.parametrize("n_steps", [None, 7])
def test_all_zeros_mask_is_the_unconditional_sampler(n_steps):
    d = _diffusion()
    x = _images()
    out = inpaint(d, _some_model, x, torch.zeros_like(x), n_steps=n_steps,
                  generator=torch.Generator().manual_seed(3), quiet=True)
    ref = d.sample(_some_model, x.shape, n_steps=n_steps,
                   generator=torch.Generator().manual_seed(3), quiet=True)
    assert torch.equal(out, ref)
    other = d.sample(_some_model, x.shape, n_steps=n_steps,
                     generator=torch.Generator().manual_seed(4), quiet=True)
    assert not torch.allclose(out, other)


@pytest.mark.parametrize("mask", ["left", "centre", "keep20"])
@pytest.mark.parametrize("resamples", [1, 3])
def test_an_oracle_prior_fills_in_the_one_image_it_knows(mask, resamples):
    """Data that are a single image c: the optimal model must complete any mask with c."""
    d = _diffusion()
    c = _images(1, seed=5)
    y = c.expand(4, -1, -1, -1).clone()
    m = make_mask(mask, 4, generator=torch.Generator().manual_seed(0))
    y_seen = torch.where(m.bool(), y, torch.zeros_like(y))  # nothing of the hole leaks in
    out = inpaint(d, _oracle(d, c), y_seen, m, n_steps=20, jump=3, resamples=resamples,
                  generator=torch.Generator().manual_seed(2), quiet=True)
    assert torch.equal(out[m.bool()], y_seen[m.bool()])
    assert region_rmse(out, y, 1 - m).max() < 0.02


@pytest.mark.slow
def test_every_state_repaint_visits_has_the_forward_marginal_under_an_oracle():
    """Data that are one image c, the optimal eps and sigma_k^2 = beta_tilde_k: a reverse
    step then draws from q(x_{k-1} | x_k, x_0 = c), the known pixels from q(x_k | x_0 = c),
    a jump back from q(x_{k+1} | x_k) with the respaced chain's alpha_bar ratio. So every
    state the sampler visits, first passes and revisits after a jump, known and missing
    pixels alike, is distributed as q(x_k | x_0 = c) = N(sqrt(abar_k) c, (1 - abar_k) I)."""
    d = _diffusion()
    c = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4)
    n = 4000
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2] = 1  # the left half known
    seen = []
    inpaint(d, _oracle(d, c), c.expand(n, -1, -1, -1).clone(), m, n_steps=10, jump=3,
            resamples=3, variance="posterior", generator=torch.Generator().manual_seed(0),
            callback=lambda k, t, x, x0: seen.append((k, t, x.clone())), quiet=True)
    ks = [k for k, _, _ in seen]
    assert len(ks) == network_calls(repaint_schedule(10, 3, 3))
    assert max(ks.count(k) for k in set(ks)) == 3  # states revisited after the jumps
    for k, t, x in seen[1:]:  # seen[0] is x_T ~ N(0, I), not q(x_T | c)
        a = float(d.alphas_bar[t - 1])
        z = (x - math.sqrt(a) * c) / math.sqrt(1 - a)  # N(0, 1) per pixel if exact
        assert z.mean(0).abs().max() < 5 / math.sqrt(n), (k, t)
        assert (z.var(0) - 1).abs().max() < 5 * math.sqrt(2 / n), (k, t)


def test_replacement_keeps_known_pixels_with_a_real_network_shape():
    d = _diffusion()
    x = _images(4)
    m = make_mask("bottom", 4)
    out = inpaint(d, _some_model, x, m, n_steps=10, generator=torch.Generator().manual_seed(0),
                  quiet=True)
    assert region_rmse(out, x, m).max() == 0
    assert region_rmse(out, x, 1 - m).min() > 0.1  # a poor model does not guess the rest


# --- denoising ---------------------------------------------------------------------------------
def test_matching_step_matches_the_noise_level():
    d = _diffusion()
    lo, hi = sigma_range(d)
    for sigma in (lo, 0.3, 1.0, hi):
        t = matching_step(d, sigma)
        abar = d.alphas_bar[t - 1].item()
        sig_t = math.sqrt((1 - abar) / abar)
        neighbours = [math.sqrt((1 - a) / a) for a in d.alphas_bar.tolist()]
        assert abs(math.log(sig_t / sigma)) <= min(
            abs(math.log(s / sigma)) for s in neighbours) + 1e-12


def test_sigma_outside_the_schedule_is_refused():
    d = _diffusion()
    lo, hi = sigma_range(d)
    x = _images(2)
    for bad in (lo / 2, hi * 2, -0.1, float("nan")):
        with pytest.raises(ValueError, match="sigma"):
            denoise(d, _some_model, x, bad, quiet=True)


@pytest.mark.parametrize("n_steps", [None, 5])
def test_an_oracle_prior_denoises_to_its_image(n_steps):
    d = _diffusion()
    c = _images(1, seed=7)
    g = torch.Generator().manual_seed(0)
    y = c + 0.5 * torch.randn(3, 1, 28, 28, generator=g)
    out = denoise(d, _oracle(d, c), y, 0.5, n_steps=n_steps, generator=g, quiet=True)
    assert (out - c).abs().max() < 0.02
    assert (y - c).pow(2).mean().sqrt() > 0.4  # the input was far from it


# --- the VAE as a prior ------------------------------------------------------------------------
def _vae():
    torch.manual_seed(0)
    return VAE(latent_dim=4, hidden=(32,))


def test_pseudo_gibbs_keeps_the_known_pixels_and_fills_the_rest():
    vae = _vae()
    x = torch.rand(5, 1, 28, 28)
    m = make_mask("left", 5)
    out = vae_pseudo_gibbs(vae, x, m, iterations=3, generator=torch.Generator().manual_seed(0))
    assert region_rmse(out, x, m).max() == 0
    with torch.no_grad():
        decoded = vae.mean_image(vae.encode(out)[0])
    assert ((out - decoded).abs() * (1 - m)).max() < 1  # the hole holds decoder means
    assert out[(1 - m).bool().expand_as(out)].min() >= 0


@pytest.mark.slow  # over a second: make test, not check-fast
def test_map_in_z_raises_the_objective_it_optimizes():
    from companion.inpainting import _masked_log_likelihood

    vae = _vae()
    x = torch.rand(4, 1, 28, 28)
    m = make_mask("bottom", 4)
    known = m.bool()

    def objective(z):
        return _masked_log_likelihood(vae, x, vae.decode(z), known) - 0.5 * (z**2).sum(1)

    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(4, 4, generator=g)
    _, z = vae_map(vae, x, m, steps=30, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (objective(z) > objective(z0)).all()
    assert all(p.requires_grad for p in vae.parameters())  # the model is left as it was


def test_map_needs_a_decoder_it_can_mask():
    vae = VAE(latent_dim=4, hidden=(32,), likelihood="discretized")
    with pytest.raises(ValueError, match="Bernoulli or Gaussian"):
        vae_map(vae, torch.rand(2, 1, 28, 28), make_mask("left", 2), steps=1)


# --- measurements ------------------------------------------------------------------------------
def test_region_error_and_spread():
    x = torch.zeros(2, 1, 28, 28)
    truth = torch.zeros_like(x)
    truth[..., :14] = 1.0
    m = make_mask("left", 2)  # 1 on the right half
    assert torch.equal(region_rmse(x, truth, m), torch.zeros(2))
    assert torch.allclose(region_rmse(x, truth, 1 - m), torch.ones(2))
    draws = torch.cat([torch.zeros(2, 1, 28, 28), torch.ones(2, 1, 28, 28)])
    assert torch.allclose(spread(draws, 2, 1 - m), torch.full((2,), math.sqrt(0.5)))
    assert torch.equal(spread(torch.cat([x, x]), 2, 1 - m), torch.zeros(2))
    with pytest.raises(ValueError, match="k >= 2"):
        spread(draws, 3, m)
