"""Masked diffusion (companion.masked): the forward process, its posterior, the bound on an
exact toy, the samplers, the U-Net with a mask state, and clear errors for bad input."""

import math

import pytest
import torch

from companion import masked as mk
from companion.models.unet import MaskedUNet, UNet, preset
from companion.toy import BinaryTable

PROTOTYPES = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 1, 0, 0, 1, 0],
                           [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 1, 0, 1, 0, 1, 0, 0],
                           [0, 1, 0, 1, 1, 1, 0, 1, 0]], dtype=torch.float64)


@pytest.fixture(scope="module")
def toy():
    return BinaryTable.from_prototypes(PROTOTYPES, [3, 2, 2, 1, 2], flip=0.1)


@pytest.fixture(scope="module")
def table(toy):
    return mk.masked_ce_table(toy.denoiser, toy.states)


def independent_denoiser(toy):
    """Each pixel's marginal, whatever is revealed: a denoiser that ignores correlations."""
    p1 = toy.probs @ toy.states
    logit = torch.log(p1) - torch.log1p(-p1)
    return lambda z: logit.expand(z.shape).clone()


# --- schedules and the forward process -------------------------------------------------------
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_ends_and_weight_is_minus_log_derivative(name):
    s = mk.Schedule(name)
    assert float(s.alpha(0.0)) == 1.0 and float(s.alpha(1.0)) == 0.0
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    dalpha = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    assert torch.allclose(s.weight(t), -dalpha / (1 - s.alpha(t)), rtol=1e-6)


def test_marginal_matches_sampling():
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([[0.0, 1.0, 1.0, 0.0]]).expand(40_000, 4)
    z = mk.forward_sample(x0, 0.3, "cosine", generator=g)
    q = mk.marginal(x0[:1], 0.3, "cosine")[0]                       # (4, 3)
    freq = torch.stack([(z == v).double().mean(0) for v in mk.STATES], dim=-1)
    assert torch.allclose(freq, q.double(), atol=0.01)
    assert torch.allclose(q.sum(-1), torch.ones(4))


def test_posterior_matches_sampling_and_keeps_revealed_pixels():
    g = torch.Generator().manual_seed(1)
    x0 = torch.tensor([[1.0, 0.0, 1.0]]).expand(60_000, 3).contiguous()
    s, t = 0.3, 0.7
    z_s = mk.forward_sample(x0, s, generator=g)
    z_t = mk.forward_step(z_s, s, t, generator=g)
    # z_t's marginal is q(z_t | x_0): the composition of the two kernels
    assert abs((z_t == mk.MASK).double().mean().item() - t) < 0.01
    post = mk.posterior(z_t, x0, s, t)                                # (N, 3, 3)
    masked = z_t == mk.MASK
    assert torch.equal(z_s[~masked], z_t[~masked])                    # carry-over
    revealed_again = (z_s[masked] != mk.MASK).double().mean().item()
    r = float(mk.reveal_probability(s, t))
    assert abs(revealed_again - r) < 0.01
    assert math.isclose(r, (0.7 - 0.3) / 0.7)
    assert torch.allclose(post[masked][:, 2], torch.full((int(masked.sum()),), 1 - r))
    assert torch.allclose(post.sum(-1), torch.ones_like(z_t))


# --- the exact toy ---------------------------------------------------------------------------
def test_the_table_takes_weights_of_any_float_dtype(toy):
    for weights in (torch.tensor([3, 2, 2, 1, 2]), torch.tensor([3.0, 2, 2, 1, 2])):
        other = BinaryTable.from_prototypes(PROTOTYPES, weights, flip=0.1)
        assert torch.allclose(other.probs, toy.probs, rtol=1e-6, atol=0)


def test_exact_denoiser_is_the_conditional(toy):
    z = torch.full((1, 9), mk.MASK, dtype=torch.float64)
    z[0, :3] = torch.tensor([1.0, 1.0, 0.0])
    logit = toy.denoiser(z)[0, 5]
    keep = (toy.states[:, :3] == torch.tensor([1.0, 1.0, 0.0])).all(1)
    p = toy.probs[keep & (toy.states[:, 5] == 1)].sum() / toy.probs[keep].sum()
    assert math.isclose(torch.sigmoid(logit).item(), p.item(), rel_tol=1e-12)


def test_elbo_with_exact_denoiser_is_the_exact_nll(toy, table):
    nll = -toy.log_prob(toy.states)
    assert torch.allclose(mk.exact_negative_elbo(table), nll, atol=1e-10, rtol=0)
    for name in ("linear", "cosine"):  # the integral over t, numerically, any schedule
        quad = mk.quadrature_negative_elbo(table, name, nodes=64)
        assert torch.allclose(quad, nll, atol=1e-9, rtol=0)


def test_a_worse_denoiser_gives_a_looser_bound(toy):
    bound = mk.exact_negative_elbo(mk.masked_ce_table(independent_denoiser(toy), toy.states))
    gap = float(toy.probs @ bound) - toy.entropy()
    p1 = toy.probs @ toy.states
    marginals = float(-(p1 * p1.log() + (1 - p1) * (1 - p1).log()).sum())
    # it pays the marginal entropies whatever the order: sum_i H(x_i) - H(x) too much
    assert math.isclose(gap, marginals - toy.entropy(), rel_tol=1e-9)
    assert gap > 0.5


def test_finite_step_bounds_tighten_to_the_nll(toy, table):
    H = toy.entropy()
    gaps = [float(toy.probs @ mk.exact_step_bound(table, K)) - H for K in (1, 2, 4, 8, 64)]
    assert all(a > b > 0 for a, b in zip(gaps[:-1], gaps[1:], strict=True))
    assert gaps[-1] < 0.02
    p1 = toy.probs @ toy.states  # one step: every pixel from its marginal
    marginals = float(-(p1 * p1.log() + (1 - p1) * (1 - p1).log()).sum())
    assert math.isclose(gaps[0], marginals - H, rel_tol=1e-9)


def test_monte_carlo_bounds_agree_with_the_closed_forms(toy, table):
    g = torch.Generator().manual_seed(2)
    x = toy.states[[5, 7, 56, 186]].repeat(500, 1)
    exact = mk.exact_negative_elbo(table[[5, 7, 56, 186]]).repeat(500)
    for name in ("linear", "cosine"):
        est = mk.negative_elbo(toy.denoiser, x, name, n_t=4, generator=g)
        d = (est - exact).view(500, 4)
        z = d.mean(0) / (d.std(0) / math.sqrt(500))
        assert (z.abs() < 4).all(), z
    est = mk.step_bound(toy.denoiser, x, 4, generator=g)
    d = (est - mk.exact_step_bound(table[[5, 7, 56, 186]], 4).repeat(500)).view(500, 4)
    assert (d.mean(0).abs() < 4 * d.std(0) / math.sqrt(500)).all()


def test_training_loss_is_an_unbiased_estimate_of_the_bound(toy):
    g = torch.Generator().manual_seed(3)
    x = toy.sample(256, g)
    losses = torch.tensor([float(mk.loss(toy.denoiser, x, generator=g)) for _ in range(100)])
    target = float(-toy.log_prob(x).mean())
    assert abs(losses.mean().item() - target) < 4 * losses.std().item() / math.sqrt(100)


# --- sampling --------------------------------------------------------------------------------
def test_reveal_counts():
    assert mk.reveal_counts(784, 784) == [1] * 784
    assert mk.reveal_counts(784, 1) == [784]
    for name in ("linear", "cosine"):
        c = mk.reveal_counts(784, 10, name)
        assert sum(c) == 784 and len(c) == 10 and min(c) >= 0


@pytest.mark.slow
def test_one_pixel_a_step_samples_the_distribution_and_one_step_does_not(toy):
    g = torch.Generator().manual_seed(4)
    n = 20_000
    tv = {}
    for K in (1, 9):
        x = mk.sample(toy.denoiser, (n, 9), K, generator=g)
        freq = torch.bincount(toy.index(x), minlength=512).double() / n
        tv[K] = 0.5 * (freq - toy.probs).abs().sum().item()
    assert tv[9] < 0.06 < 0.3 < tv[1]


def test_confidence_order_reveals_everything_with_binary_values(toy):
    g = torch.Generator().manual_seed(5)
    for order in mk.ORDERS:
        x = mk.sample(toy.denoiser, (64, 9), 3, order=order, generator=g)
        assert ((x == 0) | (x == 1)).all()


# --- the U-Net with a mask state -------------------------------------------------------------
def test_masked_unet_takes_states_and_returns_one_logit_per_pixel():
    torch.manual_seed(0)
    net = MaskedUNet(preset("tiny"))
    assert net.config.in_channels == 2 and net.config.T == 784
    z = mk.forward_sample(torch.bernoulli(torch.full((3, 1, 28, 28), 0.3)), 0.5)
    out = net(z)
    assert out.shape == (3, 1, 28, 28)
    loss = mk.loss(net, torch.bernoulli(torch.full((4, 1, 28, 28), 0.3)))
    assert math.isfinite(loss.item())
    # the stem sees two channels; every other weight is the plain U-Net's
    plain = UNet(preset("tiny"))
    diff = {k for k, v in net.state_dict().items() if v.shape != plain.state_dict()[k].shape}
    assert diff == {"stem.weight"}


@pytest.mark.slow
def test_existing_unets_are_unchanged():
    torch.manual_seed(0)
    net = UNet(preset("tiny", T=100))
    assert net.stem.weight.shape == (8, 1, 3, 3)
    assert preset("cpu") == preset("cpu", in_channels=1)
    torch.manual_seed(1)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 50])
    torch.manual_seed(0)
    again = UNet(preset("tiny", T=100))
    again.load_state_dict(net.state_dict())
    assert torch.equal(net(x, t), again(x, t))


# --- bad input -------------------------------------------------------------------------------
def test_grey_pixels_are_refused_with_a_hint():
    with pytest.raises(ValueError, match="binarize"):
        mk.forward_sample(torch.full((2, 1, 28, 28), 0.5), 0.3)
    with pytest.raises(ValueError, match="binarize"):
        mk.loss(lambda z: z, torch.rand(2, 4))
    with pytest.raises(ValueError, match="MASK"):
        MaskedUNet(preset("tiny"))(torch.full((1, 1, 28, 28), 0.5))


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan")])
def test_times_outside_the_unit_interval_are_refused(t):
    x = torch.ones(2, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mk.forward_sample(x, t)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mk.Schedule("cosine").alpha(torch.tensor([0.5, t]))


def test_zero_steps_and_bad_orders_are_refused(toy):
    with pytest.raises(ValueError, match="K"):
        mk.sample(toy.denoiser, (2, 9), 0)
    with pytest.raises(ValueError, match="K"):
        mk.step_bound(toy.denoiser, toy.states[:2], 0)
    with pytest.raises(ValueError, match="at most one step per pixel"):
        mk.sample(toy.denoiser, (2, 9), 10)
    with pytest.raises(ValueError, match="order"):
        mk.sample(toy.denoiser, (2, 9), 3, order="left to right")
    with pytest.raises(ValueError, match="schedule"):
        mk.Schedule("square")


def test_a_model_of_the_wrong_shape_is_refused():
    x = torch.bernoulli(torch.full((3, 1, 28, 28), 0.5))
    with pytest.raises(ValueError, match="one per pixel"):
        mk.negative_elbo(lambda z: torch.zeros(len(z), 10), x)
    with pytest.raises(ValueError, match="one per pixel"):
        mk.loss(lambda z: torch.zeros(len(z), 784), x)
    with pytest.raises(ValueError, match="one per pixel"):
        mk.sample(lambda z: torch.zeros(len(z), 1, 14, 14), (2, 1, 28, 28), 2)
    with pytest.raises(ValueError, match=r"\(B, 2, 28, 28\)"):
        UNet(preset("tiny", in_channels=2))(torch.zeros(1, 1, 28, 28), torch.ones(1).long())


# --- the sampler's exact law on the toy ----------------------------------------------------------
@pytest.mark.parametrize("order", mk.ORDERS)
def test_sampler_law_is_the_samplers_distribution(toy, order):
    """sampler_law is a distribution, and 50,000 draws of `sample` with the exact
    denoiser fall into the 512 images as it says: every image expected 20 times or more
    within 4.5 standard errors (the largest of some hundred), the rarer ones' total within
    4.5 standard errors, and no draw where the law puts nothing."""
    N = 50_000
    q = mk.sampler_law(toy.denoiser, 9, 3, order=order)
    assert abs(q.sum().item() - 1) < 1e-12 and (q >= 0).all()
    x = mk.sample(toy.denoiser, (N, 9), 3, order=order,
                  generator=torch.Generator().manual_seed(1))
    f = torch.bincount(toy.index(x.double()), minlength=512).double() / N
    common = N * q >= 20
    z = (f - q)[common] / (q * (1 - q) / N)[common].sqrt()
    assert z.abs().max() < 4.5, (order, z.abs().max())
    rare, seen = q[~common].sum(), f[~common].sum()
    assert abs(seen - rare) < 4.5 * (rare * (1 - rare) / N).sqrt() + 1 / N
    assert not ((f > 0) & (q == 0)).any()


def test_sampler_law_of_one_pixel_a_step_in_random_order_is_the_data(toy):
    """With the exact conditionals and one pixel a step in random order the sampler is an
    autoregressive model in a random order: its law is the data's; with one step, every
    pixel from its own marginal: the product of the marginals."""
    assert torch.allclose(mk.sampler_law(toy.denoiser, 9, 9), toy.probs, rtol=0, atol=1e-7)
    p1 = (toy.probs @ toy.states).float().double()  # the denoiser's float32 marginals
    product = (toy.states * p1 + (1 - toy.states) * (1 - p1)).prod(1)
    assert torch.allclose(mk.sampler_law(toy.denoiser, 9, 1), product, rtol=1e-6, atol=0)


def test_sampler_law_refuses_what_it_cannot_enumerate(toy):
    with pytest.raises(ValueError, match="at most 12"):
        mk.sampler_law(toy.denoiser, 13, 3)
    with pytest.raises(ValueError, match="K <= 9"):
        mk.sampler_law(toy.denoiser, 9, 10)
    with pytest.raises(ValueError, match="order must be one of"):
        mk.sampler_law(toy.denoiser, 9, 3, order="left to right")
