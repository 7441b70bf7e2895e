"""companion.edm: the preconditioning's unit variances, the four predictions of one denoiser,
the rho grid, each solver's order on Gaussian data with the exact denoiser, chapter 9's
network as a denoiser through Euler = its own DDIM sampler, the training distribution and
weighting, and clear errors for bad input."""

import math

import pytest
import torch

from companion import edm
from companion import flow as F
from companion.diffusion import Diffusion, linear_betas, predict_eps
from companion.models.unet import UNet, preset
from companion.run.checks import ArgumentError
from companion.sde import Counted
from companion.toy import GaussianMixture

pytestmark = pytest.mark.usefixtures("float64_one_thread")

MEAN = torch.tensor([0.3, -0.2, 0.1, 0.0])
STD = torch.tensor([0.5, 0.2, 1.0, 0.05])  # one sharp dimension: the small-sigma end matters


def gaussian_start(n: int, sigma_max: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return MEAN + (STD**2 + sigma_max**2).sqrt() * torch.randn(n, len(MEAN), generator=g)


# --- preconditioning -------------------------------------------------------------------------
SIGMAS = [0.002, 0.02, 0.2, 0.5, 2.0, 20.0, 80.0]


def test_edm_preconditioning_gives_unit_variance_input_and_target_at_every_sigma():
    g = torch.Generator().manual_seed(1)
    y = edm.SIGMA_DATA * torch.randn(20_000, 4, generator=g)
    ins, targets = edm.precondition_variances(y, SIGMAS, "edm", generator=g)
    assert torch.allclose(ins, torch.ones(len(SIGMAS)), atol=0.04), ins
    assert torch.allclose(targets, torch.ones(len(SIGMAS)), atol=0.04), targets
    # eps-prediction: its target is the noise (unit variance), but its input is the data's
    # variance at small sigma and |c_out| = sigma multiplies its error at large sigma
    ins, targets = edm.precondition_variances(y, SIGMAS, "eps", generator=g)
    assert torch.allclose(targets, torch.ones(len(SIGMAS)), atol=0.04)
    assert abs(ins[0] - edm.SIGMA_DATA**2) < 0.01 and abs(ins[-1] - 1) < 0.04
    assert edm.preconditioning(80.0, "eps")[1] == -80.0
    # x0-prediction: the target is the data itself, variance sigma_data^2 at every sigma
    _, targets = edm.precondition_variances(y, SIGMAS, "x0", generator=g)
    assert torch.allclose(targets, torch.full((len(SIGMAS),), 0.25), atol=0.01)


def test_v_prediction_is_edm_with_sigma_data_1_and_c_out_flipped():
    s = torch.tensor(SIGMAS)
    v, e = edm.preconditioning(s, "v"), edm.preconditioning(s, "edm", sigma_data=1.0)
    for a, b, sign in zip(v, e, (1, -1, 1, 1), strict=True):
        assert torch.allclose(a, sign * b)
    c_skip, c_out, c_in, c_noise = edm.preconditioning(0.5)
    assert (c_skip.item(), c_noise.item()) == (0.5, math.log(0.5) / 4)
    assert math.isclose(c_out.item(), 0.25 / math.sqrt(0.5)) and math.isclose(
        c_in.item(), 1 / math.sqrt(0.5))
    assert torch.allclose(edm.loss_weight(s), 1 / edm.preconditioning(s)[1] ** 2)


def test_the_exact_gaussian_denoiser_has_weighted_loss_1_at_every_sigma():
    """lambda(sigma) E|D* - y|^2 = (sigma^2 + sd^2) / (sigma sd)^2 * sd^2 sigma^2 /
    (sd^2 + sigma^2) = 1: the effective target's unit variance, none of it explained."""
    g = torch.Generator().manual_seed(2)
    sd = edm.SIGMA_DATA
    y = sd * torch.randn(8000, 4, generator=g)
    den = edm.gaussian_denoiser(torch.zeros(4), sd)
    for sigma in SIGMAS:
        loss = edm.denoising_loss(den, y, sigma, generator=g)
        assert loss.shape == (8000,) and abs(loss.mean().item() - 1) < 0.04, sigma


def test_the_denoiser_wraps_a_network_and_trains_through_edm_loss():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    seen = {}

    class F_(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, c_noise):
            seen["c_noise"] = c_noise
            return self.net(x) * (1 + c_noise[:, None])

    D = edm.Denoiser(F_())
    x, s = torch.randn(5, 4), torch.tensor([0.01, 0.1, 1.0, 10.0, 80.0])
    c_skip, c_out, c_in, c_noise = edm.preconditioning(s)
    want = c_skip[:, None] * x + c_out[:, None] * net(c_in[:, None] * x) * (1 + c_noise[:, None])
    assert torch.allclose(D(x, s), want)
    assert torch.allclose(seen["c_noise"], s.log() / 4)
    assert D(x, 0.3).shape == x.shape and seen["c_noise"].shape == (5,)
    loss = edm.edm_loss(D, 0.5 * torch.randn(64, 4), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.dim() == 0 and net[0].weight.grad.abs().sum() > 0


def test_step_conditioned_maps_the_sigma_range_onto_the_unet_steps():
    unet = UNet(preset("tiny", T=1000))
    F_ = edm.StepConditioned(unet)
    c = torch.tensor([math.log(s) / 4 for s in (1e-4, 0.002, 1.0, 80.0, 500.0)])
    steps = F_.steps(c)
    assert steps.tolist()[:2] == [1, 1] and steps.tolist()[-2:] == [1000, 1000]
    assert 1 < steps[2] < 1000
    with torch.no_grad():
        out = edm.Denoiser(F_)(torch.zeros(2, 1, 28, 28), torch.tensor([0.1, 10.0]))
    assert out.shape == (2, 1, 28, 28)


# --- four faces of one denoiser ----------------------------------------------------------------
def test_the_four_predictions_invert_and_agree_with_the_vp_and_flow_views():
    g = torch.Generator().manual_seed(3)
    y, n = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    sigma = 0.7
    x = y + sigma * n
    p = edm.predictions(x, y, sigma)
    assert torch.allclose(p["eps"], n)
    for kind, pred in p.items():
        assert torch.allclose(edm.denoiser_from(kind, x, pred, sigma), y), kind
    # the VP view: x_t = alpha y + s n, v = alpha n - s y (Salimans and Ho)
    alpha = 1 / math.sqrt(1 + sigma**2)
    s, x_t = sigma * alpha, x * alpha
    assert torch.allclose(p["v"], alpha * n - s * y)
    assert torch.allclose(predict_eps(x_t, y, alpha**2), n)
    # chapter 13's linear path: x_tau = x / (1 + sigma), tau = sigma / (1 + sigma)
    tau = sigma / (1 + sigma)
    assert torch.allclose(p["flow"], F.velocity_from_eps(n, x / (1 + sigma), tau))
    sig = torch.tensor([0.1, 0.5, 1.0, 2.0, 5.0, 50.0])  # one level per point
    p = edm.predictions(x, y, sig)
    assert torch.allclose(edm.denoiser_from("v", x, p["v"], sig), y)


# --- grids ------------------------------------------------------------------------------------
def test_the_rho_grid_runs_from_sigma_max_to_sigma_min_then_zero():
    for n in (1, 2, 18, 50):
        s = edm.rho_grid(n)
        assert len(s) == n + 1 and s[0] == 80.0 and s[-1] == 0.0
        assert (s[1:] < s[:-1]).all()
        if n > 1:
            assert s[-2] == 0.002
    s = edm.rho_grid(10, 0.5, 3.0, rho=1.0)  # rho = 1: uniform in sigma
    assert torch.allclose(s[1:-1] - s[:-2], torch.full((9,), -0.25 / 0.9))
    far = edm.rho_grid(12, rho=1e5)  # rho -> infinity: uniform in ln sigma
    assert torch.allclose(far, edm.log_sigma_grid(12), rtol=1e-3)
    # rho = 7 sits between the two: its steps shrink in sigma towards sigma_min (unlike a
    # uniform grid in sigma) and grow in ln sigma (unlike a uniform grid in ln sigma)
    s = edm.rho_grid(18)[:-1]
    assert (s.diff().neg().diff() < 0).all() and (s.log().diff().neg().diff() > 0).all()


# --- the solvers' orders on Gaussian data ------------------------------------------------------
def order(solver, ns=(32, 64, 128)):
    """The least-squares slope of -log error against log steps, and the errors (the max over
    64 points of |x - exact|, the grid from 80 to 0.002 without the step to 0)."""
    x = gaussian_start(64, 80.0)
    den = edm.gaussian_denoiser(MEAN, STD)
    errs = []
    for n in ns:
        grid = edm.rho_grid(n)[:-1]
        exact = edm.gaussian_flow(MEAN, STD, x, 80.0, grid[-1].item())
        errs.append((solver(den, x, grid) - exact).abs().max().item())
    lx, ly = torch.tensor(ns).log(), torch.tensor(errs).log()
    slope = -((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum()
    return slope.item(), errs


@pytest.mark.parametrize("solver,expected", [(edm.euler, 1.0), (edm.heun, 2.0),
                                             (edm.dpm_solver_pp_2m, 2.0)])
def test_each_solver_has_its_order_on_gaussian_data(solver, expected):
    slope, errs = order(solver)
    assert abs(slope - expected) < 0.15, (slope, errs)
    assert errs[-1] < (0.1 if expected == 1 else 0.005)


def test_evaluations_per_solver_and_the_last_step_to_zero():
    den = Counted(edm.gaussian_denoiser(MEAN, STD))
    x, grid = gaussian_start(8, 80.0), edm.rho_grid(18)
    edm.heun(den, x, grid)
    assert den.calls == 35  # EDM's 2n - 1
    for solver, calls in ((edm.euler, 18), (edm.dpm_solver_pp_2m, 18)):
        den.calls = 0
        out = solver(den, x, grid)
        assert den.calls == calls
    # the step to sigma = 0 returns the denoised point, for each solver
    for solver in (edm.euler, edm.heun, edm.dpm_solver_pp_2m):
        before = solver(den, x, grid[:-1])
        assert torch.allclose(solver(den, x, grid), den(before, grid[-2].item()))
    assert (out - edm.gaussian_flow(MEAN, STD, x, 80.0, 0.0)).abs().max() < 0.1
    # DPM-Solver++'s first step is DDIM's: x' = (b / a) x + (1 - b / a) D
    a, b = grid[0].item(), grid[1].item()
    one = edm.dpm_solver_pp_2m(den, x, grid[:2])
    assert torch.allclose(one, b / a * x + (1 - b / a) * den(x, a))


def test_churn_keeps_the_gaussian_marginal_and_zero_churn_is_deterministic():
    # (at 32 steps churn 40 widens the sharp dimension by about 8%, against 3% without it:
    # discretization error of the larger steps from the raised levels, gone by 128 steps)
    x, grid = gaussian_start(4000, 80.0, seed=5), edm.rho_grid(128)
    den = edm.gaussian_denoiser(MEAN, STD)
    assert torch.equal(edm.heun(den, x, grid), edm.heun(den, x, grid, S_churn=0.0))
    g = torch.Generator().manual_seed(6)
    out = edm.heun(den, x, grid, S_churn=40.0, S_tmin=0.01, S_tmax=50.0, S_noise=1.0,
                   generator=g)
    assert not torch.allclose(out, edm.heun(den, x, grid))
    se = STD / math.sqrt(4000)
    assert ((out.mean(0) - MEAN).abs() < 4 * se).all(), out.mean(0)
    assert ((out.std(0) / STD - 1).abs() < 0.04).all(), out.std(0)


def test_the_mixture_denoiser_is_tweedie_and_heun_converges_on_it():
    gm = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.5], [1.0, -0.5]]),
                         torch.tensor([0.2, 0.4]))
    den = edm.mixture_denoiser(gm)
    x, sigma = torch.randn(50, 2, generator=torch.Generator().manual_seed(7)), 0.6

    def log_q(x):  # the noisy data's density, sum_k w_k N(mu_k, (s_k^2 + sigma^2) I)
        var = gm.stds**2 + sigma**2
        sq = (x[:, None, :] - gm.means).pow(2).sum(-1)
        return torch.logsumexp(gm.weights.log() - 0.5 * sq / var - var.log(), -1)

    xr = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(log_q(xr).sum(), xr)
    assert torch.allclose(den(x, sigma), x + sigma**2 * grad)  # Tweedie's formula
    one = GaussianMixture(torch.ones(1), torch.tensor([[0.2, -0.1]]), torch.tensor([0.3]))
    assert torch.allclose(edm.mixture_denoiser(one)(x, sigma),
                          edm.gaussian_denoiser(torch.tensor([0.2, -0.1]), 0.3)(x, sigma))
    start = 80.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(8))
    ref = edm.heun(den, start, edm.rho_grid(512)[:-1])
    errs = [(edm.heun(den, start, edm.rho_grid(n)[:-1]) - ref).abs().max().item()
            for n in (32, 64)]
    assert 3.0 < errs[0] / errs[1] < 5.5, errs  # second order: about 4


# --- chapter 9's network as a denoiser ----------------------------------------------------------
def stand_in(T: int):
    """A deterministic eps network of (x, t), nonlinear in both."""
    def eps_model(x, t):
        assert t.dtype == torch.long and t.shape == (len(x),)
        w = 1 + t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) / T
        return torch.tanh(w * x) + 0.1 * torch.sin(3 * w)
    return eps_model


@pytest.mark.parametrize("n_steps", [1, 7, 50])
def test_an_eps_network_through_euler_equals_its_ddim_sampler(n_steps):
    diffusion = Diffusion(linear_betas(50, 2e-3, 0.4))
    model = stand_in(50)
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(9))
    ddim = diffusion.sample_ddim(model, x_T.shape, n_steps=n_steps, x_T=x_T, quiet=True)
    den = edm.VPDenoiser(model, diffusion.alphas_bar)
    grid = den.grid(n_steps)
    assert torch.equal(grid, edm.chain_grid(diffusion.alphas_bar, n_steps))
    assert len(grid) == n_steps + 1 and grid[0] == den.sigma_max and grid[-1] == 0
    out = edm.euler(den, x_T * math.sqrt(1 + grid[0].item() ** 2), grid)
    assert torch.allclose(out, ddim, rtol=1e-10, atol=1e-10)
    # one step from sigma_T to 0 is the network's x0 at T, for DPM-Solver++ as for DDIM
    x = x_T * math.sqrt(1 + grid[0].item() ** 2)
    assert torch.allclose(edm.dpm_solver_pp_2m(den, x, grid[[0, -1]]), den(x, grid[0].item()))


def test_the_unet_through_euler_equals_its_ddim_sampler():
    torch.manual_seed(0)
    unet = UNet(preset("tiny", T=40)).eval()
    torch.nn.init.normal_(unet.head[-1].weight, std=0.05)  # the zero head predicts eps = 0
    diffusion = Diffusion(linear_betas(40, 2.5e-3, 0.5))
    x_T = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        ddim = diffusion.sample_ddim(unet, x_T.shape, n_steps=4, x_T=x_T, quiet=True)
        den = edm.VPDenoiser(unet, diffusion.alphas_bar)
        grid = den.grid(4)
        out = edm.euler(den, x_T * math.sqrt(1 + grid[0].item() ** 2), grid)
    assert ddim.abs().max() > 0.1 and torch.allclose(out, ddim, rtol=1e-9, atol=1e-9)


def test_the_vp_denoiser_interpolates_between_the_chain_levels():
    diffusion = Diffusion(linear_betas(50, 2e-3, 0.4))
    model = stand_in(50)
    den = edm.VPDenoiser(model, diffusion.alphas_bar)
    s = den.sigmas
    assert den.step(s[0].item()) == 1.0 and den.step(s[-1].item()) == 50.0
    assert den.step(s[9].item()) == 10.0
    mid = math.sqrt(s[9].item() * s[10].item())  # halfway in ln sigma
    assert abs(den.step(mid) - 10.5) < 1e-12
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(11))
    t = torch.full((2,), 10, dtype=torch.long)
    e = 0.5 * (model(x / math.sqrt(1 + mid**2), t) + model(x / math.sqrt(1 + mid**2), t + 1))
    assert torch.allclose(den(x, mid), x - mid * e)
    with pytest.raises(ArgumentError, match="levels span"):
        den(x, 0.5 * s[0].item())


# --- training distribution and weighting ---------------------------------------------------
def test_training_levels_are_log_normal_and_chapter_9s_density_integrates_to_1():
    s = edm.sample_sigmas(20_000, generator=torch.Generator().manual_seed(12))
    assert abs(s.log().mean() + 1.2) < 0.03 and abs(s.log().std() - 1.2) < 0.03
    u = torch.linspace(-10, 8, 4001)
    assert abs(torch.trapezoid(edm.lognormal_density(u), u).item() - 1) < 1e-6
    sig, dens, w = edm.chain_weighting(Diffusion(linear_betas(1000)).alphas_bar)
    assert abs(torch.trapezoid(dens, sig.log()).item() - 1) < 0.01
    assert torch.allclose(w, sig**-2) and (sig[1:] > sig[:-1]).all()


# --- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("call,match", [
    (lambda: edm.rho_grid(10, sigma_min=80.0, sigma_max=0.002), "sigma_min < sigma_max"),
    (lambda: edm.rho_grid(10, sigma_min=1.0, sigma_max=1.0), "sigma_min < sigma_max"),
    (lambda: edm.rho_grid(10, sigma_min=0.0), "sigma_min"),
    (lambda: edm.rho_grid(10, rho=0.0), "rho"),
    (lambda: edm.rho_grid(10, rho=-7.0), "rho"),
    (lambda: edm.rho_grid(0), "n \\(the number of steps"),
    (lambda: edm.rho_grid(2.0), "whole number"),
    (lambda: edm.log_sigma_grid(0), "number of steps"),
    (lambda: edm.heun(edm.gaussian_denoiser(MEAN, STD), torch.zeros(2, 4),
                      torch.tensor([0.0, 1.0])), "decrease"),
    (lambda: edm.euler(edm.gaussian_denoiser(MEAN, STD), torch.zeros(2, 4), [1.0]),
     "at least 2"),
    (lambda: edm.euler(lambda x, s: x[:, :1], torch.zeros(2, 4), edm.rho_grid(3)),
     "returned shape \\(2, 1\\)"),
    (lambda: edm.heun(edm.gaussian_denoiser(MEAN, STD), torch.zeros(2, 4), edm.rho_grid(3),
                      S_churn=-1.0), "S_churn"),
    (lambda: edm.preconditioning(1.0, "score"), "kind"),
    (lambda: edm.preconditioning(0.0), "sigma"),
    (lambda: edm.denoiser_from("eps", torch.zeros(2, 3), torch.zeros(2, 1), 1.0),
     "same shape"),
    (lambda: edm.predictions(torch.zeros(2, 3), torch.zeros(2, 3), 0.0), "sigma > 0"),
    (lambda: edm.edm_loss(lambda x, s: x, torch.zeros(4, 3)), "sigma_data"),
])
def test_bad_input_gets_a_clear_error(call, match):
    with pytest.raises(ArgumentError, match=match):
        call()


def test_a_network_of_the_wrong_output_shape_is_refused():
    class TwoChannels(torch.nn.Module):  # two channels out for one in
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 1)

        def forward(self, x, c_noise):
            return self.conv(x)

    D = edm.Denoiser(TwoChannels())
    with pytest.raises(ArgumentError, match="F\\(c_in x, c_noise\\) returned shape"):
        D(torch.zeros(2, 1, 4, 4), 1.0)
    diffusion = Diffusion(linear_betas(10, 0.01, 0.3))
    den = edm.VPDenoiser(lambda x, t: x.mean(1, keepdim=True), diffusion.alphas_bar)
    with pytest.raises(ArgumentError, match="returned shape"):
        edm.euler(den, torch.zeros(2, 3), den.grid(2))
    with pytest.raises(ArgumentError, match="one noise level per point"):
        edm.Denoiser(torch.nn.Identity())(torch.zeros(3, 2), torch.ones(2))
    with pytest.raises(ArgumentError, match="sigma_min < sigma_max"):
        edm.StepConditioned(UNet(preset("tiny")), sigma_min=80.0, sigma_max=1.0)


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_the_recipe_trains_a_denoiser_in_the_smoke_run(monkeypatch, tmp_path):
    """recipes.edm in the smoke run (two optimizer steps of the ci recipe): a Denoiser around
    the EMA U-Net, sigma_data measured from the images, and the loss logged."""
    from companion import recipes
    from companion.run.profiles import get_profile

    monkeypatch.setenv("BOOK_SMOKE", "1")
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    torch.set_default_dtype(torch.float32)  # the U-Net trains in float32, as in the chapter
    x = (torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(13)) < 0.2).float()
    D, result = recipes.edm(x, get_profile("ci"), "cpu")
    assert isinstance(D, edm.Denoiser) and not D.training
    assert D.sigma_data == round((x * 2 - 1).std().item(), 2)
    with torch.no_grad():
        out = edm.heun(D, 80.0 * torch.randn(2, 1, 28, 28), edm.rho_grid(2))
    assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()


def test_the_bounded_denoiser_equals_the_recipes_own(monkeypatch):
    from companion import recipes

    # float32 on every CPU: where bf16 is native (AMX), the rule would autocast the U-Net
    monkeypatch.setenv("BOOK_CPU_BF16", "0")
    torch.manual_seed(0)
    unet = UNet(preset("tiny", T=40)).float().eval()  # the samplers' network is float32
    torch.nn.init.normal_(unet.head[-1].weight, std=0.05)  # the zero head predicts 0
    D = edm.Denoiser(edm.StepConditioned(unet, 0.01, 20.0, T=40), "edm", 0.6)
    bounded = recipes.denoiser_function(D, "cpu")
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(13),
                    dtype=torch.float32)
    with torch.no_grad():
        for sigma in (0.01, 0.7, 20.0, torch.tensor([0.02, 1.0, 9.0], dtype=torch.float32)):
            assert torch.allclose(bounded(x, sigma), D(x, sigma), atol=1e-6)
    assert bounded.sigma_data == 0.6 and bounded.net.T == 40
    with pytest.raises(TypeError, match="StepConditioned"):
        recipes.denoiser_function(edm.Denoiser(unet), "cpu")


def _short_ci(monkeypatch, tmp_path, steps=8):
    """The ci recipe cut to `steps` updates, in a cache of its own."""
    from companion import recipes

    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    ci = recipes.ddpm_settings
    for family in (recipes.pixel, recipes.preconditioned):  # snapshots and edm read it there
        monkeypatch.setattr(family, "ddpm_settings", lambda p: {**ci(p), "steps": steps})
    torch.set_default_dtype(torch.float32)
    return (torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(13)) < 0.2).float()


@pytest.mark.slow  # trains the tiny U-Net twice for 8 steps
def test_snapshots_are_stages_of_one_run(monkeypatch, tmp_path):
    """recipes.snapshots keeps a run at a quarter and half of its updates; the staged run
    ends where one run straight through ends (the stages are not extra training)."""
    from companion import recipes
    from companion.run.profiles import get_profile

    x = _short_ci(monkeypatch, tmp_path / "staged")
    p = get_profile("ci")
    kept = recipes.snapshots(recipes.edm, recipes.edm_checkpoint, x, p, "cpu",
                             P_mean=-0.4, P_std=1.4)
    assert sorted(kept) == [2, 4, 8]
    assert [kept[k][1].steps for k in (2, 4, 8)] == [2, 4, 8]
    for cut in (2, 4, None):
        path = recipes.edm_checkpoint(p, cut, P_mean=-0.4, P_std=1.4)
        assert path.exists() and "-pm-0.4-ps1.4" in path.name
    assert recipes.edm_checkpoint(p).name == "ch17-edm-ci.pt"  # EDM's own: the old name
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path / "straight"))
    straight, _ = recipes.edm(x, p, "cpu", P_mean=-0.4, P_std=1.4)
    for a, b in zip(kept[8][0].parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # trains the tiny U-Net three times for 4 steps
def test_a_ddpm_seed_is_another_run_in_a_file_of_its_own(monkeypatch, tmp_path):
    """Chapter 9's recipe with seed 1: its own file, other weights; seed 0 is the book's
    run, named as before (its identity, tests/test_recipe_identities.py)."""
    from companion import recipes
    from companion.run import checks
    from companion.run.profiles import get_profile

    x = _short_ci(monkeypatch, tmp_path, steps=4)
    p = get_profile("ci")
    assert recipes.ddpm_checkpoint(p).name == "ch9-ddpm-ci.pt"
    assert recipes.ddpm_checkpoint(p, 2, seed=1).name == "ch9-ddpm-seed1-step2-ci.pt"
    with pytest.raises(checks.ArgumentError, match="seed"):
        recipes.ddpm(x, p, "cpu", seed=-1)
    zero, run0 = recipes.ddpm(x, p, "cpu")
    one, run1 = recipes.ddpm(x, p, "cpu", seed=1)
    assert recipes.ddpm_checkpoint(p, seed=1).exists() and run0.steps == run1.steps == 4
    assert any(not torch.equal(a, b) for a, b in
               zip(zero.parameters(), one.parameters(), strict=True))
    again, _ = recipes.ddpm(x, p, "cpu", seed=1)  # loaded: the same run
    for a, b in zip(one.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_snapshots_and_the_noise_distribution_refuse_bad_settings(monkeypatch, tmp_path):
    from companion import recipes
    from companion.run.profiles import get_profile

    x = _short_ci(monkeypatch, tmp_path)
    p = get_profile("ci")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        recipes.snapshots(recipes.edm, recipes.edm_checkpoint, x, p, "cpu", fractions=(1.5,))
    with pytest.raises(ValueError, match="P_std > 0"):
        recipes.edm(x, p, "cpu", P_std=0.0)
    with pytest.raises(ValueError, match="P_std > 0"):
        recipes.edm(x, p, "cpu", P_mean=float("nan"))
