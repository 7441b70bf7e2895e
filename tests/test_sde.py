"""companion.sde against closed forms: the VP SDE's marginal, the chain it discretizes, the
probability-flow ODE and the reverse SDE on Gaussian data, the likelihood integral on a
mixture, Hutchinson's estimator on linear fields, and DDIM as a solver of the ODE."""

import math

import pytest
import torch

from companion import diffusion as dm
from companion import sde as S
from companion import toy

pytestmark = pytest.mark.usefixtures("float64_one_thread")


VP = S.VPSDE()
M, SD = 0.7, 0.4  # Gaussian data N(M, SD^2) per dimension: every density is known


def gauss_var(t, sde=VP):
    a = sde.alpha_bar(t)
    return a * SD**2 + 1 - a


def gauss_score(x, t, sde=VP):
    """grad log q_t for data N(M, SD^2 I)."""
    return -(x - math.sqrt(sde.alpha_bar(t)) * M) / gauss_var(t, sde)


def gauss_eps(x, t, sde=VP):
    return -sde.sigma(t) * gauss_score(x, t, sde)


# --- the SDE and the chain -------------------------------------------------------------------
@pytest.mark.parametrize("T", [100, 500, 1000])
def test_discrete_betas_are_chapter9s_schedule(T):
    ch9 = dm.linear_betas(T, 1e-4 * 1000 / T, 0.02 * 1000 / T)
    assert torch.allclose(VP.discrete_betas(T), ch9, rtol=1e-12, atol=0)


def test_alpha_bar_is_the_integral_of_beta_and_time_of_inverts_it():
    t = 0.63
    s = torch.linspace(0, t, 20001)
    integral = torch.trapezoid(torch.tensor([VP.beta(v) for v in s.tolist()]), s).item()
    assert VP.log_alpha_bar(t) == pytest.approx(-integral, rel=1e-8)
    for t in (0.0, 1e-4, 0.3, 1.0):
        assert VP.time_of(VP.alpha_bar(t)) == pytest.approx(t, abs=1e-12)


def test_chain_approaches_the_sde_as_T_grows():
    """alpha_bar of the chain at step i against alpha_bar(t) at t = (i - 1/2) / T: O(1/T)."""
    gaps = []
    for T in (100, 1000):
        ab = torch.cumprod(1 - VP.discrete_betas(T), 0)
        t = (torch.arange(1, T + 1) - 0.5) / T
        cont = torch.tensor([VP.alpha_bar(v) for v in t.tolist()])
        gaps.append((ab.log() - cont.log()).abs().max().item())
    assert gaps[1] < gaps[0] / 5


@pytest.mark.slow  # over 0.7 s: make test, not check-fast
def test_euler_maruyama_matches_the_forward_marginal():
    n, x0 = 40_000, torch.tensor([[0.8]])
    g = torch.Generator().manual_seed(0)
    ts = torch.linspace(0, 0.5, 501).tolist()
    x = S.euler_maruyama(VP.drift, VP.diffusion, x0.expand(n, 1).clone(), ts, generator=g)
    mean, std = VP.marginal(x0, 0.5)
    assert abs(x.mean().item() - mean.item()) < 5 * std / math.sqrt(n)
    assert abs(x.var().item() - std**2) < 5 * std**2 * math.sqrt(2 / n)


def test_probability_flow_ode_is_the_gaussian_transport_map():
    """For Gaussian data the ODE maps x_0 to sqrt(a) M + sqrt(v_t) (x_0 - M) / SD exactly."""
    x0 = torch.linspace(-1, 2, 7)[:, None]
    t = 0.8
    x = S.heun(VP.ode_drift(gauss_score), x0, torch.linspace(0, t, 2001).tolist())
    exact = math.sqrt(VP.alpha_bar(t)) * M + math.sqrt(gauss_var(t)) * (x0 - M) / SD
    assert torch.allclose(x, exact, atol=1e-5)
    back = S.heun(VP.ode_drift(gauss_score), exact, torch.linspace(t, 0, 2001).tolist())
    assert torch.allclose(back, x0, atol=1e-5)


@pytest.mark.slow
def test_reverse_sde_samples_the_data():
    n = 40_000
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, generator=g) * math.sqrt(gauss_var(1.0))
    x = S.euler_maruyama(VP.reverse_drift(gauss_score), VP.diffusion, x,
                         torch.linspace(1, 0, 1001).tolist(), generator=g)
    assert abs(x.mean().item() - M) < 5 * SD / math.sqrt(n) + 0.01
    assert abs(x.std().item() - SD) < 0.01


def test_reverse_drift_and_ode_drift_formulas():
    x, t = torch.randn(5, 2), 0.4
    s = gauss_score(x, t)
    assert torch.allclose(VP.reverse_drift(gauss_score)(x, t),
                          -0.5 * VP.beta(t) * x - VP.beta(t) * s)
    assert torch.allclose(VP.ode_drift(gauss_score)(x, t),
                          -0.5 * VP.beta(t) * x - 0.5 * VP.beta(t) * s)
    assert torch.allclose(VP.score_from_eps(gauss_eps)(x, t), s)


# --- DDIM as a solver of the ODE -------------------------------------------------------------
def test_ddim_on_the_sde_clock_is_the_chains_ddim():
    T, n = 200, 20
    diff = dm.Diffusion(VP.discrete_betas(T))
    clock = S.ChainClock(diff.alphas_bar)
    vp = clock.sde

    def eps_chain(x, t):
        a = diff.alphas_bar_[t].reshape(-1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * M) / (a * SD**2 + 1 - a)

    x_T = torch.randn(6, 1, generator=torch.Generator().manual_seed(2))
    ref = diff.sample_ddim(eps_chain, x_T.shape, n_steps=n, x_T=x_T, quiet=True)
    steps = dm.spaced_timesteps(T, n)[::-1]
    ts = [clock.time(s) for s in steps]
    assert ts[0] == pytest.approx(1.0)
    x = S.ddim(lambda x, t: gauss_eps(x, t, vp), vp, x_T, ts)
    a = vp.alpha_bar(ts[-1])  # the chain's last step returns its guess of x_0
    x0 = (x - math.sqrt(1 - a) * gauss_eps(x, ts[-1], vp)) / math.sqrt(a)
    assert torch.allclose(x0, ref, atol=1e-9)


def test_ddim_and_euler_converge_to_the_ode_solution():
    x_T = torch.randn(50, 1, generator=torch.Generator().manual_seed(3))
    t_end = 0.01
    exact = math.sqrt(VP.alpha_bar(t_end)) * M + math.sqrt(gauss_var(t_end)) / math.sqrt(
        gauss_var(1.0)) * (x_T - math.sqrt(VP.alpha_bar(1.0)) * M)
    errors = {}
    for n in (10, 40):
        ts = torch.linspace(1, t_end, n + 1).tolist()
        errors["ddim", n] = (S.ddim(gauss_eps, VP, x_T, ts) - exact).abs().max().item()
        errors["euler", n] = (S.euler(VP.ode_drift(gauss_score), x_T, ts)
                              - exact).abs().max().item()
    for kind in ("ddim", "euler"):  # first order: 4x the steps, about a quarter the error
        assert errors[kind, 40] < errors[kind, 10] / 2.5


# --- the likelihood integral -----------------------------------------------------------------
def test_ode_likelihood_matches_the_mixtures_closed_form():
    angles = torch.arange(3) * 2 * math.pi / 3
    mix = toy.GaussianMixture([0.5, 0.3, 0.2], torch.stack([angles.cos(), angles.sin()], 1),
                              0.2)
    _, x0 = mix.sample(12, generator=torch.Generator().manual_seed(4))
    field = VP.ode_drift(lambda x, t: toy.diffused_score(mix, x, VP.alpha_bar(t)))
    res = S.ode_log_likelihood(field, x0, rtol=1e-8, atol=1e-8, prior_log_p=lambda x:
                               toy.diffused_log_density(mix, x, VP.alpha_bar(1.0)))
    assert (res.log_p - mix.log_marginal(x0)).abs().max() < 1e-5
    assert res.nfe > 10


# correlated Gaussian data N(M, SIGMA): the field's Jacobian is not diagonal, so a Rademacher
# probe does not give the trace exactly (for isotropic data every probe would)
_L = torch.randn(6, 6, generator=torch.Generator().manual_seed(11), dtype=torch.float64) / 5
SIGMA = _L @ _L.T + 0.3 * torch.eye(6, dtype=torch.float64)  # eigenvalues 0.30 to 0.63


def corr_cov(t):
    a = VP.alpha_bar(t)
    return a * SIGMA + (1 - a) * torch.eye(6, dtype=torch.float64)


def corr_score(x, t):
    """grad log q_t for data N(M, SIGMA): -(Sigma_t)^-1 (x - sqrt(alpha_bar) M)."""
    return -torch.linalg.solve(corr_cov(t), (x - math.sqrt(VP.alpha_bar(t)) * M).T).T


def corr_prior(x):
    return torch.distributions.MultivariateNormal(
        torch.full((6,), math.sqrt(VP.alpha_bar(1.0)) * M, dtype=torch.float64),
        corr_cov(1.0)).log_prob(x)


def hutchinson_runs(x0, n_runs=30):
    g = torch.Generator().manual_seed(6)
    field = VP.ode_drift(corr_score)
    return torch.stack([S.ode_log_likelihood(field, x0, prior_log_p=corr_prior, probes=1,
                                             generator=g).log_p for _ in range(n_runs)])


def within_5_se(runs, exact):
    se = runs.std(0) / math.sqrt(len(runs))
    return bool(((runs.mean(0) - exact).abs() < 5 * se + 1e-4).all())


@pytest.mark.slow
def test_ode_likelihood_with_hutchinson_is_unbiased_on_gaussian_data(monkeypatch):
    x0 = (torch.randn(4, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
          @ torch.linalg.cholesky(SIGMA).T + M)
    exact = torch.distributions.MultivariateNormal(
        torch.full((6,), M, dtype=torch.float64), SIGMA).log_prob(x0)
    ex = S.ode_log_likelihood(VP.ode_drift(corr_score), x0, prior_log_p=corr_prior,
                              rtol=1e-7, atol=1e-7)
    assert torch.allclose(ex.log_p, exact, atol=1e-5)
    runs = hutchinson_runs(x0)
    assert (runs.std(0) > 0.05).all()  # the probes matter here: each run differs
    assert within_5_se(runs, exact)
    # the check can fail: probes that are all +1 (E[v] != 0, E[v v^T] the matrix of ones)
    # give the sum of the Jacobian's entries, not its trace. On isotropic data, whose
    # Jacobian is diagonal, they are exact, and there a test passes any such law.
    monkeypatch.setattr(S, "rademacher", lambda n, shape, dtype=torch.float32, device=None,
                        generator=None: torch.ones(n, *shape, dtype=dtype, device=device))
    assert not within_5_se(hutchinson_runs(x0), exact)


def test_a_score_from_eps_refuses_t_0_and_says_what_to_pass():
    """-eps / sigma(t) is 0/0 at t = 0: the likelihood from t0 = 0 and a grid ending at 0 fail
    with a message that names the fix, instead of NaN."""
    field = VP.ode_drift(VP.score_from_eps(gauss_eps))
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    with pytest.raises(ValueError, match="pass t0="):
        S.ode_log_likelihood(field, x)
    with pytest.raises(ValueError, match="sigma.0. = 0"):
        S.heun(field, x, [1.0, 0.5, 0.0])
    assert torch.isfinite(S.heun(field, x, [1.0, 0.5, 1e-3])).all()
    assert torch.isfinite(S.ode_log_likelihood(field, x, t0=1e-3).log_p).all()


def test_divergence_exact_is_the_trace_of_a_linear_field():
    A = torch.randn(3, 3, generator=torch.Generator().manual_seed(7))
    x = torch.randn(4, 3)
    f, div = S.divergence_exact(lambda x, t: x @ A.T, x, 0.5)
    assert torch.allclose(f, x @ A.T)
    assert torch.allclose(div, torch.full((4,), A.trace().item()))


@pytest.mark.slow
def test_hutchinson_is_unbiased_on_a_linear_field_with_rademachers_variance():
    D = 6
    A = torch.randn(D, D, generator=torch.Generator().manual_seed(8))
    x = torch.randn(1, D)
    probes = S.rademacher(20_000, x.shape, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(9))
    _, est = S.divergence_hutchinson(lambda x, t: x @ A.T, x, 0.5, probes)
    est = est[:, 0]
    sym = A + A.T
    var = (sym.triu(1) ** 2).sum().item()  # sum_{i<j} (A_ij + A_ji)^2
    assert abs(est.mean().item() - A.trace().item()) < 5 * math.sqrt(var / len(est))
    assert est.var().item() == pytest.approx(var, rel=0.05)
    gauss = torch.randn(20_000, 1, D, generator=torch.Generator().manual_seed(10))
    _, est_g = S.divergence_hutchinson(lambda x, t: x @ A.T, x, 0.5, gauss)
    assert est_g.var().item() == pytest.approx(var + 2 * (A.diag() ** 2).sum().item(), rel=0.05)


# --- a network of the chain's steps in continuous time ---------------------------------------
def test_interpolate_steps_is_linear_between_steps_and_calls_once_on_a_step():
    calls = []

    def model(x, t):
        calls.append(len(x))
        return x * t.to(x.dtype).reshape(-1, 1)

    x = torch.ones(3, 2)
    assert torch.allclose(S.interpolate_steps(model, x, 4.25), 4.25 * x)
    assert calls == [6]
    assert torch.allclose(S.interpolate_steps(model, x, 7.0), 7 * x)
    assert calls == [6, 3]


def test_chain_clock_matches_noise_levels():
    T = 500
    diff = dm.Diffusion(VP.discrete_betas(T))
    clock = S.ChainClock(diff.alphas_bar)
    assert clock.sde.beta_max == pytest.approx(20, abs=0.5)
    for s in (1, 2, 250, 500):
        t = clock.time(s)
        assert clock.sde.alpha_bar(t) == pytest.approx(diff.alphas_bar[s - 1].item(), rel=1e-10)
        assert clock.step(t) == pytest.approx(s, abs=1e-6)
    steps = [clock.step(t) for t in torch.linspace(clock.time(1), 1, 50).tolist()]
    assert all(b > a for a, b in zip(steps, steps[1:], strict=False))
    with pytest.raises(ValueError, match="less noisy than the chain's first step"):
        clock.eps(lambda x, t: x)(torch.ones(1, 1), 0.0)


# --- 8-bit data ------------------------------------------------------------------------------
def test_dequantize_stays_in_the_bin_and_uniform_density_gives_8_bits():
    x = (torch.randint(0, 256, (500, 4)) / 127.5 - 1)
    z = S.dequantize(x, torch.Generator().manual_seed(11))
    assert ((z - x).abs() <= S.BIN / 2).all() and (z != x).all()
    # the uniform density on the 256 bins [-1 - 1/255, 1 + 1/255]^D codes 8 bits per dimension
    width = 256 * S.BIN
    log_p = torch.full((3,), -4 * math.log(width))
    assert torch.allclose(S.bits_per_dim(log_p, 4), torch.full((3,), 8.0))


# --- bad input -------------------------------------------------------------------------------
def test_bad_input_gets_clear_errors():
    x = torch.randn(2, 2)
    field = VP.ode_drift(gauss_score)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        VP.beta(1.5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        S.euler(field, x, [1.0, -0.1])
    with pytest.raises(ValueError, match="shaped like x"):
        S.heun(lambda x, t: x[:, :1], x, [1.0, 0.5])
    with pytest.raises(ValueError, match="at least one probe"):
        S.ode_log_likelihood(field, x, probes=0)
    with pytest.raises(ValueError, match="positive tolerance"):
        S.ode_log_likelihood(field, x, rtol=0.0)
    with pytest.raises(ValueError, match="positive tolerance"):
        S.ode_log_likelihood(field, x, atol=-1e-5)
    with pytest.raises(ValueError, match="t0 < t1"):
        S.ode_log_likelihood(field, x, t0=0.5, t1=0.5)
    with pytest.raises(ValueError, match="probes"):
        S.divergence_hutchinson(field, x, 0.5, torch.ones(0, 2, 2))
    with pytest.raises(ValueError, match="pass probes=1"):
        S.ode_log_likelihood(field, torch.randn(2, 1, 2, 2))
    with pytest.raises(ValueError, match="trained at steps 1"):
        S.interpolate_steps(lambda x, t: x, x, 0.5)
    with pytest.raises(ValueError, match="strictly monotone"):
        S.euler(field, x, [0.2, 0.2, 0.1])
    with pytest.raises(ValueError, match="beta_min"):
        S.VPSDE(beta_min=0.0)
    with pytest.raises(TypeError, match="floating-point"):
        S.euler(field, torch.ones(2, 2, dtype=torch.long), [1.0, 0.5])


def test_the_smoke_run_solves_the_likelihood_integral_whole(monkeypatch):
    # no smoke cut inside the solver: a smoke run's network is cut where it is trained
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    whole = S.ode_log_likelihood(lambda x, t: -x, x, rtol=1e-3, atol=1e-3)
    monkeypatch.setenv("BOOK_SMOKE", "1")
    smoke = S.ode_log_likelihood(lambda x, t: -x, x, rtol=1e-3, atol=1e-3)
    assert smoke.nfe == whole.nfe and torch.equal(smoke.log_p, whole.log_p)
