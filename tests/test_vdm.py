"""companion.vdm: the chain in log-SNR and its mappings, the schedules (monotone, their
derivatives and inverses, the learned one for any weights), VDM's discrete loss against
chapter 8's KL terms, the closed forms on Gaussian data against quadrature and Monte Carlo
(doubling T never loosens the bound, the continuous limit depends only on the ends, I-MMSE),
the variance trick, Kingma and Gao's weightings each against a Monte Carlo of its own loss,
their identity, and clear errors for bad input."""

import math

import pytest
import torch

from companion import edm, vdm
from companion.diffusion import Diffusion, linear_betas
from companion.models.unet import UNet, preset
from companion.run.checks import ArgumentError
from companion.toy import GaussianMixture

pytestmark = pytest.mark.usefixtures("float64_one_thread")

MU = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
STD = torch.tensor([0.05, 0.5, 1.3], dtype=torch.float64)  # a sharp dimension: high SNR matters
MODEL_STD = 1.4 * STD                    # a mis-specified (linear) model: not the optimum


def gaussian_data(n: int, g: torch.Generator) -> torch.Tensor:
    return MU + STD * torch.randn(n, len(MU), generator=g)


def within(mc: torch.Tensor, exact, k: float = 4.0) -> tuple[bool, str]:
    """The mean of per-example values mc within k standard errors of exact."""
    mean, se = mc.mean().item(), mc.std().item() / math.sqrt(len(mc))
    exact = float(exact)
    return abs(mean - exact) < k * se, f"{mean:.5g} +- {se:.2g} vs {exact:.5g}"


def schedules():
    return [vdm.LinearSchedule(), vdm.CosineSchedule(-9.0, 7.0), vdm.LinearBetaSchedule(),
            vdm.ChainSchedule(Diffusion(linear_betas(50, 2e-3, 0.4)).alphas_bar),
            vdm.LearnedSchedule(hidden=16, generator=torch.Generator().manual_seed(3)),
            vdm.FunctionSchedule(lambda t: -4 + 6 * t + torch.sin(3 * t))]


# --- the chain in log-SNR and its mappings ----------------------------------------------------
def test_variance_preserving_scales_and_snr():
    g = torch.linspace(-20, 20, 81)
    alpha, sigma = vdm.alpha_sigma(g)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones(81))
    assert torch.allclose((alpha / sigma) ** 2, vdm.snr(g), rtol=1e-12)
    assert torch.allclose(vdm.snr(g).log(), -g)
    table = vdm.noise_levels(g)
    assert torch.allclose(table["log_snr"], -g) and torch.allclose(table["alpha"], alpha)
    x, noise = torch.randn(81, 2), torch.randn(81, 2)
    assert torch.allclose(vdm.diffuse(x, g, noise), alpha[:, None] * x + sigma[:, None] * noise)


def test_alpha_bar_and_edm_sigma_round_trip_through_gamma():
    ab = Diffusion(linear_betas(1000)).alphas_bar                      # chapter 9's chain
    g = vdm.gamma_from_alpha_bar(ab)
    assert torch.allclose(vdm.alpha_bar_from_gamma(g), ab, rtol=1e-12, atol=0)
    assert bool((g[1:] > g[:-1]).all())                                 # more noise later
    sig = edm.rho_grid(40)[:-1]                                         # chapter 17's levels
    assert torch.allclose(vdm.sigma_from_gamma(vdm.gamma_from_sigma(sig)), sig, rtol=1e-12)
    # one level, two clothes: the chain's point scaled by 1 / sqrt(alpha_bar) is EDM's
    sigma_ve = ((1 - ab) / ab).sqrt()
    assert torch.allclose(vdm.gamma_from_sigma(sigma_ve), g, atol=1e-10)
    assert torch.allclose(vdm.noise_levels(g)["sigma_edm"], sigma_ve, rtol=1e-10)


# --- schedules ---------------------------------------------------------------------------------
@pytest.mark.parametrize("k", range(6))
def test_schedules_increase_and_their_derivative_and_inverse_agree(k):
    s = schedules()[k].check()
    t = torch.linspace(0, 1, 401)
    g = s(t)
    assert bool((g[1:] > g[:-1]).all()) and bool((s.derivative(t) > 0).all())
    assert torch.allclose(s.inverse(g), t, atol=1e-9)
    lo, hi = s.ends()
    assert torch.allclose(torch.stack([lo, hi]), g[[0, -1]])
    # the derivative against central differences (away from the chain's kinks)
    tt = torch.linspace(0.013, 0.987, 37)
    h = 1e-6
    fd = (s(tt + h) - s(tt - h)) / (2 * h)
    assert torch.allclose(s.derivative(tt), fd, rtol=1e-6, atol=1e-6)


def test_the_log_snr_density_of_a_schedule_integrates_to_one():
    for s in schedules()[:4]:
        lo, hi = (v.item() for v in s.ends())
        lam = torch.linspace(-hi, -lo, 200_001)
        assert abs(torch.trapezoid(s.log_snr_density(lam), lam).item() - 1) < 1e-4
        assert s.log_snr_density(torch.tensor([-hi - 1, -lo + 1])).abs().max() == 0


def test_linear_beta_schedule_sits_on_chapter_9s_chain():
    """Step i of the T = 1000 chain at t = (i - 1) / (T - 1): the continuous gamma agrees with
    the chain's to the discretization (about 0.1), and ChainSchedule exactly."""
    ab = Diffusion(linear_betas(1000)).alphas_bar
    t = torch.arange(1000) / 999
    g_chain = vdm.gamma_from_alpha_bar(ab)
    assert (vdm.LinearBetaSchedule()(t) - g_chain).abs().max() < 0.1
    assert torch.allclose(vdm.ChainSchedule(ab)(t), g_chain, atol=1e-12)


def test_the_learned_schedule_is_monotone_for_any_weights_with_its_ends_as_parameters():
    t = torch.linspace(0, 1, 2001)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        s = vdm.LearnedSchedule(-7.0 - seed, 4.0 + seed, hidden=64, generator=g)
        with torch.no_grad():
            for p in s.interior_parameters():  # large raw values of both signs
                p.copy_(5 * torch.randn(p.shape, generator=g) - 2)
            s.gamma_min.fill_(-3.0 * seed)
            s.span.fill_(-4.0 + seed)          # a negative raw span: the ends keep their order
        gam = s(t).detach()
        assert bool((gam[1:] > gam[:-1]).all()), seed
        assert bool((s.derivative(t) > 0).all())
        assert torch.allclose(gam[[0, -1]], torch.stack([s.gamma_min, s.gamma_max]).detach(),
                              atol=1e-12)
        # closed-form gamma' against autograd and central differences
        tt = torch.linspace(0.01, 0.99, 25).requires_grad_(True)
        (auto,) = torch.autograd.grad(s(tt).sum(), tt)
        assert torch.allclose(s.derivative(tt), auto, rtol=1e-10)
        fd = (s(tt.detach() + 1e-6) - s(tt.detach() - 1e-6)) / 2e-6
        assert torch.allclose(s.derivative(tt), fd, rtol=1e-5, atol=1e-6)
    s = vdm.LearnedSchedule(hidden=8)
    assert {id(p) for p in s.parameters()} == {
        id(p) for p in s.end_parameters() + s.interior_parameters()}


# --- the discrete loss is chapter 8's bound ----------------------------------------------------
def test_discrete_loss_term_is_t_times_the_chains_kl_with_posterior_variance():
    T = 20
    chain = Diffusion(linear_betas(T, 0.04, 0.8))
    s = vdm.ChainSchedule(chain.alphas_bar)
    model = vdm.gaussian_eps_model(MU, MODEL_STD)
    g = torch.Generator().manual_seed(0)
    x = gaussian_data(64, g)
    noise = torch.randn(x.shape, generator=g)
    i = torch.randint(1, T, (64,), generator=g)                 # VDM's steps 1..T-1

    def ho_model(x_t, t):  # the chain's step t sits at t_vdm = (t - 1) / (T - 1)
        return model(x_t, s.gammas[t - 1])

    ours = vdm.discrete_diffusion_loss(model, s, x, T - 1, i=i, noise=noise)
    kl = chain.term_at(ho_model, x, i + 1, variance="posterior", decoder="gaussian",
                       noise=noise)
    assert torch.allclose(ours / (T - 1), kl, rtol=1e-9, atol=1e-12)


# --- closed forms on Gaussian data -------------------------------------------------------------
def test_mmse_and_the_continuous_loss_against_quadrature_and_monte_carlo():
    v = torch.logspace(-4, 7, 400_001)
    mmse = vdm.gaussian_mmse(v, STD)
    quad = 0.5 * torch.trapezoid(mmse, v)
    assert torch.allclose(quad, vdm.gaussian_continuous_loss(v[-1], v[0], STD), rtol=1e-6)
    # the optimal denoiser's error is the mmse (Monte Carlo at three levels)
    g = torch.Generator().manual_seed(1)
    model = vdm.gaussian_eps_model(MU, STD)
    for gamma in (-6.0, 0.0, 4.0):
        x = gaussian_data(100_000, g)
        noise = torch.randn(x.shape, generator=g)
        gam = torch.full((len(x),), gamma)
        alpha, sigma = vdm.alpha_sigma(gam[:, None])
        z = vdm.diffuse(x, gam, noise)
        x_hat = (z - sigma * model(z, gam)) / alpha
        ok, msg = within(((x - x_hat) ** 2).sum(1), vdm.gaussian_mmse(math.exp(-gamma), STD))
        assert ok, msg
        # and the eps-error of a mis-specified model is its closed form
        err = ((vdm.gaussian_eps_model(MU, MODEL_STD)(z, gam) - noise) ** 2).sum(1)
        ok, msg = within(err, vdm.gaussian_eps_mse(gamma, STD, MODEL_STD))
        assert ok, msg


def test_i_mmse_the_derivative_of_mutual_information_is_half_the_mmse():
    """Guo, Shamai and Verdu (2005): d I(snr) / d snr = mmse(snr) / 2."""
    v = torch.logspace(-3, 5, 41)
    h = 1e-6 * v
    dI = (vdm.gaussian_mutual_information(v + h, STD)
          - vdm.gaussian_mutual_information(v - h, STD)) / (2 * h)
    assert torch.allclose(dI, vdm.gaussian_mmse(v, STD) / 2, rtol=1e-6)
    # the continuous loss is the information gained between the ends
    assert torch.allclose(vdm.gaussian_continuous_loss(1e4, 0.1, STD),
                          vdm.gaussian_mutual_information(1e4, STD)
                          - vdm.gaussian_mutual_information(0.1, STD))


def test_doubling_T_never_loosens_the_bound_and_reaches_the_continuous_limit():
    for s in schedules():
        lo, hi = s.ends()
        limit = vdm.gaussian_continuous_loss(torch.exp(-lo.detach()), torch.exp(-hi.detach()),
                                             STD).item()
        Ts = [2**k for k in range(17)]
        losses = [vdm.gaussian_discrete_loss(s, T, STD).item() for T in Ts]
        assert all(b <= a * (1 + 1e-12) for a, b in zip(losses, losses[1:], strict=False)), losses
        assert all(v >= limit * (1 - 1e-12) for v in losses)
        gaps = [v - limit for v in losses]
        assert gaps[-1] < 2e-3 * limit, (type(s).__name__, gaps[-1], limit)
        assert gaps[-1] < 0.6 * gaps[-2]          # still shrinking about as 1/T


def test_continuous_loss_depends_on_the_schedule_only_through_its_ends():
    """Exact: linear, cosine and a learned schedule with the same ends (the discrete loss
    at large T tends to one value); other ends give another. Measured: a Monte Carlo of
    the continuous loss with the optimal denoiser under two schedules."""
    ends = (-10.0, 6.0)
    exact = vdm.gaussian_continuous_loss(math.exp(10.0), math.exp(-6.0), STD).item()
    same = [vdm.LinearSchedule(*ends), vdm.CosineSchedule(*ends),
            vdm.LearnedSchedule(*ends, hidden=16, generator=torch.Generator().manual_seed(0))]
    for s in same:
        assert abs(vdm.gaussian_discrete_loss(s, 2**16, STD).item() - exact) < 2e-3 * exact
    other = vdm.gaussian_continuous_loss(math.exp(8.0), math.exp(-6.0), STD).item()
    assert abs(other - exact) > 0.1
    g = torch.Generator().manual_seed(2)
    model = vdm.gaussian_eps_model(MU, STD)
    means = []
    for s in same[:2]:
        mc = vdm.continuous_diffusion_loss(model, s, gaussian_data(200_000, g), generator=g)
        ok, msg = within(mc, exact)
        assert ok, (type(s).__name__, msg)
        means.append(mc.mean().item())
    mc = vdm.continuous_diffusion_loss(model, vdm.LinearSchedule(-8.0, 6.0),
                                       gaussian_data(200_000, g), generator=g)
    assert within(mc, other)[0] and not within(mc, exact, 10)[0]


def test_continuous_loss_on_the_mixture_measured_under_two_schedules():
    gm = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], torch.tensor([0.1, 0.3]))
    model = vdm.mixture_eps_model(gm)
    g = torch.Generator().manual_seed(3)
    x = gm.sample(60_000, generator=g)[1]
    a = vdm.continuous_diffusion_loss(model, vdm.LinearSchedule(-9.0, 6.0), x, generator=g)
    b = vdm.continuous_diffusion_loss(model, vdm.CosineSchedule(-9.0, 6.0), x, generator=g)
    se = math.hypot(a.std().item(), b.std().item()) / math.sqrt(len(x))
    assert abs(a.mean().item() - b.mean().item()) < 4 * se
    assert a.var() != b.var()


def test_discrete_loss_monte_carlo_matches_its_closed_form():
    g = torch.Generator().manual_seed(4)
    model = vdm.gaussian_eps_model(MU, STD)
    for s, T in ((vdm.LinearSchedule(-8.0, 5.0), 3), (vdm.CosineSchedule(-8.0, 5.0), 16)):
        mc = vdm.discrete_diffusion_loss(model, s, gaussian_data(200_000, g), T, generator=g)
        ok, msg = within(mc, vdm.gaussian_discrete_loss(s, T, STD))
        assert ok, msg


def test_the_whole_bound_on_gaussian_data_and_its_tight_limit():
    model = vdm.gaussian_eps_model(MU, STD)
    g = torch.Generator().manual_seed(5)
    for s in (vdm.LinearSchedule(-8.0, 4.0), vdm.CosineSchedule(-1.0, 2.0)):
        bound = vdm.vdm_bound(model, s, gaussian_data(100_000, g), decoder="gaussian",
                              generator=g)
        exact = vdm.gaussian_bound(s, MU, STD)
        for name in ("diffusion", "prior", "reconstruction"):
            ok, msg = within(getattr(bound, name), getattr(exact, name))
            assert ok, (name, msg)
    assert bound.dims == 3 and torch.allclose(bound.bits_per_dim(),
                                              bound.total / (3 * math.log(2)))
    entropy = 0.5 * torch.log(2 * math.pi * math.e * STD**2).sum()
    gaps = [vdm.gaussian_bound(vdm.LinearSchedule(-w, w), MU, STD).total - entropy
            for w in (5.0, 10.0, 20.0, 30.0)]
    assert all(b < a for a, b in zip(gaps, gaps[1:], strict=False)) and 0 < gaps[-1] < 1e-6


def test_discretized_reconstruction_on_8_bit_images():
    """-log P(x's bin) with the mean z_0 / alpha_0 = x + e^(gamma_0 / 2) n: for interior levels
    its expectation is a 1-D integral over n, computed here by quadrature."""
    g = torch.Generator().manual_seed(6)
    x = torch.randint(1, 255, (16, 1, 28, 28), generator=g) / 127.5 - 1
    for gamma_0 in (-13.3, -9.0):
        nll = vdm.reconstruction_nll(vdm.LinearSchedule(gamma_0, 5.0), x, generator=g)
        assert nll.shape == (16,) and bool((nll >= 0).all())
        r = 1 / 255 / math.exp(gamma_0 / 2)            # the half-bin in decoder stds
        n = torch.linspace(0, 9, 36_001)                # symmetric in n: twice the half line
        hi, lo = torch.special.log_ndtr(r - n), torch.special.log_ndtr(-r - n)
        log_p = hi + torch.log(-torch.expm1(lo - hi))   # log(Phi(r - n) - Phi(-r - n))
        per_pixel = 2 * torch.trapezoid(torch.exp(-n**2 / 2) / math.sqrt(2 * math.pi) * -log_p,
                                        n)
        ok, msg = within(nll, 784 * per_pixel)
        assert ok, (gamma_0, msg)
    # chapter 9's chain as a continuous schedule starts noisier (gamma(0) = -9.1)
    b = vdm.vdm_bound(lambda z, gam: torch.zeros_like(z), vdm.LinearBetaSchedule(), x,
                      generator=g)
    assert b.reconstruction.shape == b.prior.shape == b.diffusion.shape == (16,)
    assert b.dims == 784 and bool((b.prior > 0).all())


# --- the variance trick ------------------------------------------------------------------------
def test_the_variance_gradient_is_the_gradient_of_the_squared_loss_on_the_interior():
    s = vdm.LearnedSchedule(hidden=8, generator=torch.Generator().manual_seed(0))
    net = torch.nn.Linear(4, 3)

    def model(z, gam):  # a model with parameters that conditions on gamma
        return net(torch.cat([z, gam[:, None]], 1))

    g = torch.Generator().manual_seed(7)
    x, noise, t = gaussian_data(32, g), torch.randn(32, 3, generator=g), torch.rand(32,
                                                                                  generator=g)
    params = s.interior_parameters() + s.end_parameters() + list(net.parameters())
    loss = vdm.continuous_diffusion_loss(model, s, x, t=t, noise=noise)
    want_interior = torch.autograd.grad((loss**2).mean(), s.interior_parameters(),
                                        retain_graph=True)
    want_rest = torch.autograd.grad(loss.mean(), s.end_parameters() + list(net.parameters()))
    routed = vdm.continuous_diffusion_loss(model, s, x, t=t, noise=noise,
                                           variance_gradient=True)
    assert torch.allclose(routed, loss)
    got = torch.autograd.grad(routed.mean(), params)
    for a, b in zip(got, want_interior + want_rest, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.slow  # over 0.7 s: make test, not check-fast
def test_a_variance_trained_schedule_lowers_the_estimators_variance():
    """Gaussian data with a sharp dimension, the optimal denoiser: Adam on the learned
    schedule's interior only (the ends fixed at the linear schedule's) lowers the variance
    of the per-example continuous loss, and leaves its mean where it was."""
    std, mu = torch.tensor([0.02, 1.0]), torch.zeros(2)
    model = vdm.gaussian_eps_model(mu, std)
    learned = vdm.LearnedSchedule(hidden=32, generator=torch.Generator().manual_seed(0))
    params = learned.interior_parameters()
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    g = torch.Generator().manual_seed(8)
    for step in range(1, 301):  # Adam by hand (torch.optim's first step imports dynamo: 5 s)
        x = mu + std * torch.randn(256, 2, generator=g)
        loss = vdm.continuous_diffusion_loss(model, learned, x, generator=g,
                                             variance_gradient=True)
        grads = torch.autograd.grad(loss.mean(), params)
        with torch.no_grad():
            for p, gr, m_, v_ in zip(params, grads, m, v, strict=True):
                m_.mul_(0.9).add_(0.1 * gr)
                v_.mul_(0.999).add_(0.001 * gr**2)
                p -= 0.05 * (m_ / (1 - 0.9**step)) / ((v_ / (1 - 0.999**step)).sqrt() + 1e-8)
    ends = [v.item() for v in learned.ends()]
    assert ends == pytest.approx([vdm.GAMMA_MIN, vdm.GAMMA_MAX], abs=1e-12)

    def measured(s):
        e = torch.Generator().manual_seed(9)
        with torch.no_grad():
            return vdm.continuous_diffusion_loss(model, s, mu + std * torch.randn(
                100_000, 2, generator=e), generator=e)

    lin, new = measured(vdm.LinearSchedule()), measured(learned)
    exact = vdm.gaussian_continuous_loss(math.exp(13.3), math.exp(-5.0), std)
    assert within(lin, exact)[0] and within(new, exact)[0]
    assert new.var() < 0.85 * lin.var(), (new.var().item(), lin.var().item())


# --- Kingma and Gao's weightings, each against a Monte Carlo of its own loss -------------------
N_MC = 200_000
LAM = torch.linspace(-60, 60, 240_001)


def _eps_hat(z, gam):
    return vdm.gaussian_eps_model(MU, MODEL_STD)(z, gam)


def own_lsimple(g):
    """Chapter 9's L_simple on the VP SDE with linear beta (0.1, 20) from t_min = 1e-3, its
    alpha_bar written out here: E_t |eps - eps_hat|^2."""
    u = 1e-3 + (1 - 1e-3) * torch.rand(N_MC, generator=g)
    log_ab = -(0.1 * u + 9.95 * u**2)
    gam = torch.log(-torch.expm1(log_ab)) - log_ab
    x, eps = gaussian_data(N_MC, g), torch.randn(N_MC, 3, generator=g)
    z = log_ab.exp().sqrt()[:, None] * x + (-torch.expm1(log_ab)).sqrt()[:, None] * eps
    return ((_eps_hat(z, gam) - eps) ** 2).sum(1)


def own_edm(g):
    """EDM's loss in its own (VE) form: ln sigma ~ N(-1.2, 1.2^2), lambda(sigma) |D - y|^2."""
    sigma = (edm.P_MEAN + edm.P_STD * torch.randn(N_MC, generator=g)).exp()
    y, n = gaussian_data(N_MC, g), torch.randn(N_MC, 3, generator=g)
    x = y + sigma[:, None] * n
    z = x / (1 + sigma[:, None] ** 2).sqrt()                   # the VP point
    D = x - sigma[:, None] * _eps_hat(z, 2 * sigma.log())
    return edm.loss_weight(sigma) * ((D - y) ** 2).sum(1)


def own_v_cosine(g, a=0.0, b=math.pi / 2):
    """v-prediction, t uniform, alpha = cos u, sigma = sin u, u = a + (b - a) t."""
    u = a + (b - a) * torch.rand(N_MC, generator=g).clamp(1e-12, 1 - 1e-12)
    al, si = u.cos()[:, None], u.sin()[:, None]
    x, eps = gaussian_data(N_MC, g), torch.randn(N_MC, 3, generator=g)
    z = al * x + si * eps
    e = _eps_hat(z, 2 * u.tan().log())
    x_hat = (z - si * e) / al
    return (((al * e - si * x_hat) - (al * eps - si * x)) ** 2).sum(1)


def own_flow_matching(g):
    """Rectified flow: x_tau = (1 - tau) x + tau eps, target eps - x, v_hat from eps_hat."""
    tau = torch.rand(N_MC, generator=g).clamp(1e-12, 1 - 1e-12)[:, None]
    x, eps = gaussian_data(N_MC, g), torch.randn(N_MC, 3, generator=g)
    x_tau = (1 - tau) * x + tau * eps
    c = ((1 - tau) ** 2 + tau**2).sqrt()
    e = _eps_hat(x_tau / c, (2 * (tau / (1 - tau)).log()).reshape(-1))
    v_hat = (e - x_tau) / (1 - tau)
    return ((v_hat - (eps - x)) ** 2).sum(1)


LSIMPLE_RANGE = vdm.LinearBetaSchedule().ends()
COSINE = vdm.CosineSchedule(-9.0, 7.0)
CASES = {
    "lsimple": (own_lsimple, vdm.lsimple_weighting,
                vdm.LinearSchedule(*(v.item() for v in LSIMPLE_RANGE))),
    "edm": (own_edm, vdm.edm_weighting, vdm.LinearSchedule(-25.0, 25.0)),
    "v_cosine": (own_v_cosine, vdm.v_prediction_weighting, vdm.LinearSchedule(-40.0, 40.0)),
    "v_cosine_truncated": (lambda g: own_v_cosine(g, COSINE.a, COSINE.b),
                           lambda lam: vdm.v_prediction_weighting(lam, COSINE),
                           vdm.LinearSchedule(-9.0, 7.0)),
    "flow_matching": (own_flow_matching, vdm.flow_matching_weighting,
                      vdm.LinearSchedule(-40.0, 40.0)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_weighting_matches_a_monte_carlo_of_its_own_loss(name):
    """The objective in its own form (its parameterization, its sampling of noise levels)
    against (1/2) int w(lambda) E|eps_hat - eps|^2 d lambda with the mis-specified model's
    eps-error in closed form, and against the eps-form weighted_loss sampled under another
    schedule (importance sampling: another density of lambda, the same loss)."""
    own, weighting, proposal = CASES[name]
    g = torch.Generator().manual_seed(10)
    exact = vdm.gaussian_weighted_loss(weighting, LAM, STD, MODEL_STD)
    ok, msg = within(own(g), exact)
    assert ok, ("own form", msg)
    eps_form = vdm.weighted_loss(_eps_hat, proposal, gaussian_data(N_MC, g), weighting,
                                 generator=g)
    ok, msg = within(eps_form, exact)
    assert ok, ("eps form", msg)


def test_weightings_closed_forms_and_which_are_monotone():
    lam = torch.linspace(-7.0, 9.0, 1001)             # the support [-gamma_max, -gamma_min]
    generic = vdm.v_prediction_weighting(lam, COSINE)
    assert torch.allclose(generic, torch.exp(-lam / 2) / (COSINE.b - COSINE.a), rtol=1e-9)
    wide = torch.linspace(-30, 30, 6001)
    assert torch.allclose(vdm.flow_matching_weighting(wide),
                          math.pi / 2 * vdm.v_prediction_weighting(wide))
    ch9 = vdm.LinearBetaSchedule()
    lo, hi = (v.item() for v in ch9.ends())
    inside = torch.linspace(-hi, -lo, 4001)
    monotone = {"elbo": vdm.elbo_weighting, "sigmoid": vdm.sigmoid_weighting,
                "v": vdm.v_prediction_weighting, "flow": vdm.flow_matching_weighting}
    for name, w in monotone.items():
        assert vdm.is_monotone_weighting(w, wide), name
    assert not vdm.is_monotone_weighting(vdm.edm_weighting, wide)
    assert not vdm.is_monotone_weighting(vdm.lsimple_weighting, inside)
    # EDM's against Kingma and Gao's table: N(lambda; 2.4, 2.4^2) (e^-lambda + 0.5^2) / 0.5^2
    table = (torch.exp(-0.5 * ((wide - 2.4) / 2.4) ** 2) / (2.4 * math.sqrt(2 * math.pi))
             * (torch.exp(-wide) + 0.25) / 0.25)
    assert torch.allclose(vdm.edm_weighting(wide), 2 * table)


@pytest.mark.parametrize("weighting", [vdm.sigmoid_weighting, vdm.elbo_weighting,
                                       lambda lam: vdm.v_prediction_weighting(lam, COSINE)])
def test_kingma_gao_identity_on_gaussian_data(weighting):
    """(1/2) int w E|eps - eps_hat|^2 = int (-w') L(lambda) + w(lam_max) L(lam_max), L the
    optimal denoiser's loss above lambda in closed form (I-MMSE); the left side by
    quadrature and by a Monte Carlo of weighted_loss."""
    lo, hi = -7.0, 9.0
    lam = torch.linspace(lo, hi, 160_001)
    lhs = vdm.gaussian_weighted_loss(weighting, lam, STD)
    rhs = vdm.weighted_loss_as_elbos(weighting, lam, vdm.gaussian_partial_loss(lam, lo, STD))
    assert torch.allclose(lhs, rhs, rtol=1e-7)
    g = torch.Generator().manual_seed(11)
    mc = vdm.weighted_loss(vdm.gaussian_eps_model(MU, STD), vdm.LinearSchedule(-hi, -lo),
                           gaussian_data(N_MC, g), weighting, generator=g)
    ok, msg = within(mc, rhs)
    assert ok, msg


# --- chapter 9's U-Net -------------------------------------------------------------------------
class Steps(torch.nn.Module):
    """A stand-in for the U-Net: returns its integer step, checked in 1..T."""

    def __init__(self, T):
        super().__init__()
        self.config = type("C", (), {"T": T})()

    def forward(self, x, t):
        assert t.dtype == torch.long and int(t.min()) >= 1 and int(t.max()) <= self.config.T
        return t.to(x.dtype)[:, None].expand_as(x).clone()


def test_step_adapter_places_gamma_on_the_steps():
    z = torch.zeros(5, 2)
    lin = vdm.StepAdapter.linear(Steps(10), -10.0, 8.0)
    out = lin(z, torch.tensor([-10.0, 8.0, -20.0, 30.0, -1.0]))[:, 0]
    assert out.tolist() == [1.0, 10.0, 1.0, 10.0, 6.0]
    ab = Diffusion(linear_betas(30, 1e-3, 0.3)).alphas_bar
    chain = vdm.StepAdapter.chain(Steps(30), ab)
    gam = vdm.gamma_from_alpha_bar(ab)
    assert chain(torch.zeros(30, 1), gam)[:, 0].tolist() == list(range(1, 31))
    blend = vdm.StepAdapter.chain(Steps(30), ab, interpolate=True)
    mid = 0.25 * gam[3] + 0.75 * gam[4]
    assert blend(torch.zeros(1, 1), mid.reshape(1)).item() == pytest.approx(4.75)
    with pytest.raises(ArgumentError, match="built for T = 10 steps"):
        vdm.StepAdapter.chain(Steps(10), ab)


def test_chapter_9s_unet_trains_on_the_bound_with_a_learned_schedule():
    """The U-Net (integer steps) through StepAdapter, a learned schedule with the variance
    gradient, 8-bit digits: one backward pass reaches the network, the ends and the
    interior, and the bound is finite in bits per dimension."""
    unet = UNet(preset("tiny", T=64)).float()
    model = vdm.StepAdapter.linear(unet, -15.0, 10.0)
    sched = vdm.LearnedSchedule(hidden=16).float()
    g = torch.Generator().manual_seed(12)
    x = (torch.randint(0, 256, (4, 1, 28, 28), generator=g) / 127.5 - 1).float()
    bound = vdm.vdm_bound(model, sched, x, generator=g, variance_gradient=True)
    assert bound.total.shape == (4,) and bool(torch.isfinite(bound.bits_per_dim()).all())
    bound.total.mean().backward()
    for p in [*sched.end_parameters(), *sched.interior_parameters()]:
        assert p.grad is not None and bool(p.grad.abs().sum() > 0)
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in unet.parameters())
    assert vdm.vdm_bound(model, sched, x, T=10).diffusion.dtype == torch.float32


# --- refusals ------------------------------------------------------------------------------------
def _model(z, gam):
    return torch.zeros_like(z)


REFUSALS = [
    (lambda: vdm.LinearSchedule(5.0, -13.3), r"gamma_min < gamma_max.*swap them"),
    (lambda: vdm.CosineSchedule(1.0, 1.0), r"gamma_min < gamma_max"),
    (lambda: vdm.LearnedSchedule(2.0, -2.0), r"gamma_min < gamma_max"),
    (lambda: vdm.LinearSchedule()(1.5), r"t must lie in \[0, 1\].*i / T"),
    (lambda: vdm.LinearSchedule().derivative(torch.tensor([-0.1, 0.5])), r"t must lie in"),
    (lambda: vdm.FunctionSchedule(lambda t: 5 - 18 * t), r"not increasing.*gamma\(1 - t\)"),
    (lambda: vdm.FunctionSchedule(lambda t: torch.cos(6 * t)), r"not increasing"),
    (lambda: vdm.gaussian_discrete_loss(vdm.LinearSchedule(), 0, STD), r"T .*>= 1, got 0"),
    (lambda: vdm.discrete_diffusion_loss(_model, vdm.LinearSchedule(), MU[None], 0),
     r"T .*>= 1"),
    (lambda: vdm.discrete_diffusion_loss(_model, vdm.LinearSchedule(), MU[None], 2.0),
     r"T .*whole number"),
    (lambda: vdm.gaussian_continuous_loss(0.1, 1e4, STD), r"snr_0 = SNR\(0\) must exceed.*swap"),
    (lambda: vdm.continuous_diffusion_loss(_model, vdm.LinearSchedule(), MU[None],
                                           t=torch.tensor([1.2])), r"t must lie in \[0, 1\]"),
    (lambda: vdm.continuous_diffusion_loss(_model, lambda t: t, MU[None]),
     r"schedule must be a companion.vdm.Schedule.*FunctionSchedule"),
    (lambda: vdm.continuous_diffusion_loss(lambda z, g: z[:, :1], vdm.LinearSchedule(),
                                           MU[None]), r"eps_model\(z_t, gamma_t\) returned"),
    (lambda: vdm.continuous_diffusion_loss(_model, vdm.LinearSchedule(), MU[None],
                                           variance_gradient=True), r"needs a LearnedSchedule"),
    (lambda: vdm.gamma_from_alpha_bar(torch.tensor([1.0, 0.5])), r"alpha_bar_0 = 1"),
    (lambda: vdm.gamma_from_sigma(edm.rho_grid(4)), r"sigma must be > 0.*rho_grid\(n\)\[:-1\]"),
    (lambda: vdm.reconstruction_nll(vdm.LinearSchedule(), torch.rand(2, 1, 4, 4)),
     r"8-bit grid"),
    (lambda: vdm.weighted_loss_as_elbos(vdm.edm_weighting, torch.linspace(-5, 5, 101),
                                        torch.zeros(101)), r"non-increasing in lambda"),
    (lambda: vdm.is_monotone_weighting(vdm.elbo_weighting, torch.tensor([1.0, 0.0])),
     r"strictly increasing"),
    (lambda: vdm.ChainSchedule(torch.tensor([0.9, 0.95])), r"decreasing"),
    (lambda: vdm.LinearSchedule().inverse(6.0), r"gamma must lie in the schedule's range"),
    (lambda: vdm.gaussian_mmse(-1.0, STD), r"v \(the SNR\) must be a signal-to-noise ratio >= 0"),
    (lambda: vdm.vdm_bound(_model, vdm.LinearSchedule(), MU[None], T=4, decoder="gaussian",
                           stratified=True), r"continuous-time loss: leave T=None"),
    # issue 96: an empty image per example gave a bound of NaN per row
    (lambda: vdm.vdm_bound(_model, vdm.LinearSchedule(), torch.zeros(4, 0), decoder="gaussian"),
     r"^x holds no values in each of its 4 examples, shape \(4, 0\): an example needs"),
    (lambda: vdm.vdm_bound(_model, vdm.LinearSchedule(), torch.zeros(4, 1, 0, 0)),
     r"^x holds no values in each of its 4 examples, shape \(4, 1, 0, 0\)"),
]


@pytest.mark.parametrize("call,match", REFUSALS)
def test_bad_input_is_refused_with_the_fix(call, match):
    with pytest.raises(ArgumentError, match=match):
        call()


def test_per_example_shapes_and_stratified_times():
    x = gaussian_data(7, torch.Generator().manual_seed(0))
    for s in (vdm.LinearSchedule(), vdm.LearnedSchedule(hidden=4)):
        assert vdm.continuous_diffusion_loss(_model, s, x).shape == (7,)
        assert vdm.discrete_diffusion_loss(_model, s, x, 5).shape == (7,)
        assert vdm.prior_kl(s, x).shape == (7,)
        assert vdm.weighted_loss(_model, s, x, vdm.sigmoid_weighting).shape == (7,)
    t = vdm.stratified_times(8, generator=torch.Generator().manual_seed(1))
    assert sorted((t * 8).floor().long().tolist()) == list(range(8))
