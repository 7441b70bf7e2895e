"""The continuous-time view of diffusion (Song et al. 2021): the home of its math.

Time convention, used everywhere in this module: **t runs over [0, 1]**, t = 0 the data,
t = 1 (nearly) N(0, I). The discrete chain of `companion.diffusion` counts steps 1..T; this
module maps between the two where a network trained on the chain is used in continuous time.

The variance-preserving (VP) SDE and its closed-form marginal:
    dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw,   beta(t) = beta_min + t (beta_max - beta_min),
    q(x_t | x_0) = N(sqrt(alpha_bar(t)) x_0, (1 - alpha_bar(t)) I),
    alpha_bar(t) = exp(-int_0^t beta) = exp(-beta_min t - (beta_max - beta_min) t^2 / 2).
Its Euler-Maruyama step of size 1/T, x_i = (1 - beta_i / 2) x_{i-1} + sqrt(beta_i) z with
beta_i = beta(t_i) / T, is DDPM's step x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z to
first order in beta_i; `discrete_betas(T)` is chapter 9's schedule for beta_min = 0.1,
beta_max = 20.
The reverse-time SDE (Anderson 1982) and the probability-flow ODE, for a score s(x, t):
    dx = [f(x, t) - g(t)^2 s(x, t)] dt + g(t) dw_bar     (run from t = 1 to 0),
    dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t),                 (the same marginals q_t, no noise)
with f = -1/2 beta x, g = sqrt(beta), and s = -eps / sqrt(1 - alpha_bar) for a noise
predictor. The instantaneous change of variables (Chen et al. 2018) for dx/dt = F(x, t):
    log p_0(x_0) = log p_1(x_1) + int_0^1 div F(x_t, t) dt,
with the divergence exact (small dimension) or by Hutchinson's estimator E_v[v^T (dF/dx) v],
v with zero mean and identity covariance (Rademacher here).

Score, eps and drift functions take (x, t) with x a batch (B, ...) and t a Python float.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .diffusion import predict_x0
from .run import checks, memory
from .run.progress import progress

Field = Callable[[torch.Tensor, float], torch.Tensor]
BIN = 2.0 / 255.0  # the width of one grey level of 8-bit images on [-1, 1]


# --- the VP SDE ------------------------------------------------------------------------------
class VPSDE:
    """The variance-preserving SDE with a linear beta(t) (see the module docstring).

    beta_min, beta_max: beta(0) and beta(1), 0 < beta_min <= beta_max; Song et al.'s 0.1
    and 20 give chapter 9's chains (`discrete_betas`).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min = checks.positive("beta_min", beta_min)
        self.beta_max = checks.real("beta_max (>= beta_min)", beta_max, low=self.beta_min)

    def beta(self, t: float) -> float:
        """beta(t) = beta_min + t (beta_max - beta_min)."""
        t = checks.unit_time("t", t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha_bar(self, t: float) -> float:
        """log alpha_bar(t) = -int_0^t beta(s) ds = -beta_min t - (beta_max - beta_min) t^2 / 2."""
        t = checks.unit_time("t", t)
        return -self.beta_min * t - 0.5 * (self.beta_max - self.beta_min) * t * t

    def alpha_bar(self, t: float) -> float:
        return math.exp(self.log_alpha_bar(t))

    def sigma(self, t: float) -> float:
        """The marginal's standard deviation sqrt(1 - alpha_bar(t))."""
        return math.sqrt(-math.expm1(self.log_alpha_bar(t)))

    def time_of(self, alpha_bar: float) -> float:
        """The t at which alpha_bar(t) = alpha_bar (the inverse of the quadratic above)."""
        a = checks.real("alpha_bar (in [alpha_bar(1), 1])", alpha_bar, low=self.alpha_bar(1.0),
                        high=1.0)
        c, k = -math.log(a), self.beta_max - self.beta_min
        if k == 0:
            return min(c / self.beta_min, 1.0)
        return min((-self.beta_min + math.sqrt(self.beta_min**2 + 2 * k * c)) / k, 1.0)

    def marginal(self, x0: torch.Tensor, t: float) -> tuple[torch.Tensor, float]:
        """q(x_t | x_0): (mean sqrt(alpha_bar) x_0, standard deviation).

        Book: :eq:`ch13-vp-marginal`.
        """
        checks.finite("x0", checks.batch("x0", x0, min_dims=2))
        return math.sqrt(self.alpha_bar(t)) * x0, self.sigma(t)

    def drift(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """f(x, t) = -1/2 beta(t) x.

        Book: :eq:`ch13-vp-sde`.
        """
        return -0.5 * self.beta(t) * x

    def diffusion(self, t: float) -> float:
        """g(t) = sqrt(beta(t)).

        Book: :eq:`ch13-vp-sde`.
        """
        return math.sqrt(self.beta(t))

    def discrete_betas(self, T: int) -> torch.Tensor:
        """beta_i = beta((i - 1) / (T - 1)) / T for i = 1..T, float64 (T,): Ho et al.'s linear
        schedule 1e-4..0.02 scaled by 1000 / T for the default beta_min, beta_max.

        Book: :eq:`ch13-em-step`.
        """
        T = checks.count("T", T, minimum=2)
        s = torch.linspace(0, 1, T, dtype=torch.float64)
        return (self.beta_min + s * (self.beta_max - self.beta_min)) / T

    def reverse_drift(self, score: Field) -> Field:
        """The reverse-time SDE's drift f - g^2 s (Anderson 1982), as a field (x, t).

        Book: :eq:`ch13-reverse-sde`.
        """
        def field(x, t):
            return self.drift(x, t) - self.beta(t) * score(x, t)
        return field

    def ode_drift(self, score: Field) -> Field:
        """The probability-flow ODE's velocity f - 1/2 g^2 s, as a field (x, t).

        Book: :eq:`ch13-pf-ode`.
        """
        def field(x, t):
            return self.drift(x, t) - 0.5 * self.beta(t) * score(x, t)
        return field

    def score_from_eps(self, eps: Field) -> Field:
        """s(x, t) = -eps(x, t) / sqrt(1 - alpha_bar(t)), for t in (0, 1].

        At t = 0, sigma(0) = 0 and the quotient is 0/0 (the score of the data itself, which a
        noise predictor does not define): the field refuses t = 0 and says what to pass.
        """
        def score(x, t):
            sigma = checks.score_noise(self.sigma(t))
            return -eps(x, t) / sigma
        return score


# --- a network trained on the chain's steps, used in continuous time -----------------------
def interpolate_steps(model, x: torch.Tensor, s: float) -> torch.Tensor:
    """model(x, step) at a real-valued step s >= 1, linear between the integer steps.

    model: (x (B, ...), t int64 (B,)) -> like x, trained at integer steps only (its values
    between them were never fitted). An integer s costs one call; otherwise floor and ceil
    go through the network as one batch of 2B.
    """
    s = checks.real("s (the network was trained at steps 1, 2, ...)", s, low=1 - 1e-9)
    lo = math.floor(s + 1e-9)
    w = s - lo
    B = len(x)
    if w < 1e-9:
        return _value(model, x, torch.full((B,), lo, dtype=torch.long, device=x.device),
                      "the model")
    t = torch.cat([torch.full((B,), lo, dtype=torch.long, device=x.device),
                   torch.full((B,), lo + 1, dtype=torch.long, device=x.device)])
    out = _value(model, torch.cat([x, x]), t, "the model")
    return (1 - w) * out[:B] + w * out[B:]


def _value(field, x: torch.Tensor, t, who: str = "the field",
          what: str = "a value for every point") -> torch.Tensor:
    """field(x, t) -> (B, ...), refused unless shaped like x (never broadcast)."""
    return checks.output(field(x, t), x, who=who, what=what)


class ChainClock:
    """Where chapter 9's chain sits in continuous time, by noise level.

    alphas_bar: the chain's alpha_bar_1..T (decreasing). `sde` is the VP SDE with a linear
    beta(t) from beta_min whose end matches the chain's, alpha_bar(1) = alpha_bar_T
    (beta_max = beta_min + 2 (-log alpha_bar_T - beta_min): about 20.3 for chapter 9's cpu
    chain, Song et al.'s 20 up to the chain's O(1/T) difference). step(t): the real-valued
    step s whose noise level matches the SDE's at t, log alpha_bar linear between steps
    (alpha_bar_0 = 1), so step(1) = T; time(s) the inverse at the integer steps. The network
    knows noise levels, not times: matching them is what lets it run in continuous time.
    """

    def __init__(self, alphas_bar: torch.Tensor, beta_min: float = 0.1):
        ab = checks.chain_alphas_bar(alphas_bar, beta_min)
        self.T = len(ab)
        self.log_ab = torch.cat([torch.zeros(1, dtype=torch.float64), ab.log()]).tolist()
        end = -self.log_ab[-1]
        self.sde = VPSDE(beta_min, beta_min + 2 * (end - beta_min))

    def time(self, s: int) -> float:
        """The SDE time at which alpha_bar(t) equals the chain's alpha_bar_s, s in 1..T."""
        s = checks.count("s (a step of the chain)", s, maximum=self.T)
        return self.sde.time_of(math.exp(self.log_ab[s]))

    def step(self, t: float) -> float:
        target = max(self.sde.log_alpha_bar(t), self.log_ab[-1])  # rounding at t = 1
        la = self.log_ab
        # the first step whose log alpha_bar is at or below the target (la decreases)
        lo, hi = 0, self.T
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if la[mid] > target:
                lo = mid
            else:
                hi = mid
        if la[hi] > target:  # beyond the chain's end
            return float(self.T)
        return lo + (la[lo] - target) / (la[lo] - la[hi])

    def eps(self, model) -> Field:
        """eps(x, t) for t in [time(1), 1] from a model of the chain's steps (interpolated)."""
        def field(x, t):
            s = checks.chain_step(self.step(t), t, self)
            return interpolate_steps(model, x, max(s, 1.0))
        return field


# --- fixed-step solvers ----------------------------------------------------------------------
def _steps(x: torch.Tensor, ts):
    """The grid's steps (t_k, t_{k+1}) for the state x (B, ...), through the book's loop bar
    (silent)."""
    checks.batch("x", x, min_dims=2)
    ts = checks.time_grid(ts)
    return progress(list(zip(ts[:-1], ts[1:], strict=False)), quiet=True)


def euler(field: Field, x: torch.Tensor, ts: Sequence[float]) -> torch.Tensor:
    """x_{k+1} = x_k + (t_{k+1} - t_k) F(x_k, t_k): one evaluation per step.

    Args:
        field: F(x (B, ...), t float) -> (B, ...), the ODE's velocity.
        x: (B, ...) the state at ts[0].
        ts: the times, increasing or decreasing; len(ts) - 1 steps.

    Returns:
        The state at ts[-1], (B, ...).
    """
    for a, b in _steps(x, ts):
        x = x + (b - a) * _value(field, x, a)
    return _finite_end(x, "euler")


def heun(field: Field, x: torch.Tensor, ts: Sequence[float]) -> torch.Tensor:
    """Heun's method (the trapezoid rule with an Euler predictor): two evaluations per step.

    x' = x_k + h F(x_k, t_k),  x_{k+1} = x_k + h/2 [F(x_k, t_k) + F(x', t_{k+1})].

    Args:
        field: the ODE's velocity, as for `euler`.
        x: the state at ts[0], (B, ...).
        ts: the grid, as for `euler`; 2 (len(ts) - 1) evaluations.

    Returns:
        (B, ...), the state at ts[-1].
    """
    for a, b in _steps(x, ts):
        h = b - a
        d1 = _value(field, x, a)
        d2 = _value(field, x + h * d1, b)
        x = x + 0.5 * h * (d1 + d2)
    return _finite_end(x, "heun")


def euler_maruyama(drift: Field, diffusion: Callable[[float], float], x: torch.Tensor,
                   ts: Sequence[float], generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """x_{k+1} = x_k + h f(x_k, t_k) + g(t_k) sqrt(|h|) z, z ~ N(0, I), h = t_{k+1} - t_k.

    Forward in time (increasing ts) or backward (decreasing, for the reverse SDE, whose
    drift the caller gives in the forward-time convention f - g^2 s).

    Args:
        drift: f(x (B, ...), t float) -> (B, ...).
        diffusion: g(t float) -> float.
        x: (B, ...) the state at ts[0].
        ts: the times; len(ts) - 1 steps.
        generator: for the noise z (default None: torch's global generator).

    Returns:
        The state at ts[-1], (B, ...).

    Book: :eq:`ch13-em-step`.
    """
    for a, b in _steps(x, ts):
        h = b - a
        z = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        x = x + h * _value(drift, x, a) + diffusion(a) * math.sqrt(abs(h)) * z
    return _finite_end(x, "euler_maruyama")


def ddim(eps: Field, sde: VPSDE, x: torch.Tensor, ts: Sequence[float]) -> torch.Tensor:
    """DDIM with eta = 0 on the SDE's clock, from ts[0] down to ts[-1]: one evaluation a step.

    x0_hat = (x - sigma_a eps) / sqrt(alpha_bar_a),  x_b = sqrt(alpha_bar_b) x0_hat + sigma_b eps
    (Song, Meng and Ermon 2021): the update `Diffusion.sample_ddim` makes between kept steps.
    A deliberate copy of that update, on the SDE's real-valued clock (the chain's sampler
    indexes its integer steps and adds eta and clipping); x0_hat is the shared
    `diffusion.predict_x0`.

    Args:
        eps: the noise predictor eps(x (B, ...), t float) -> (B, ...) on the SDE's clock.
        sde: the VPSDE whose alpha_bar(t) is the clock.
        x: (B, ...) the state at ts[0].
        ts: decreasing times in [0, 1]; len(ts) - 1 network calls.

    Returns:
        The state at ts[-1], (B, ...).

    Book: :eq:`ch13-ddim-ode`.
    """
    for a, b in _steps(x, ts):
        e = _value(eps, x, a)
        x0 = predict_x0(x, e, sde.alpha_bar(a), sde.sigma(a))
        x = math.sqrt(sde.alpha_bar(b)) * x0 + sde.sigma(b) * e
    return _finite_end(x, "ddim")


def _finite_end(x: torch.Tensor, solver: str) -> torch.Tensor:
    """x, the solver's end state, refused if any value is NaN or infinite (one sync per
    solve, not per step): a diverged network's NaN would otherwise come out as samples."""
    bad = int((~torch.isfinite(x.detach())).sum()) if x.is_floating_point() else 0
    if bad:
        raise checks.ArgumentError(
            f"{solver} ended with {bad} NaN or infinite values of {x.numel()}: the field "
            "returned non-finite values on the way, or the state grew "
            "without bound (a diverged network, NaN in x, or steps too large for the field); "
            "check the field on the first times, or use more steps")
    return x


class Counted:
    """A field that counts its evaluations (`calls`): the solvers' cost in network calls."""

    def __init__(self, field: Field):
        self.field, self.calls = field, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.field(x, t)


# --- divergence ------------------------------------------------------------------------------
def divergence_exact(field: Field, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(F(x, t), div F(x, t)) with the divergence from D backward passes: x (B, D) -> (B, D), (B,).

    For small D only (the toys): D reverse-mode passes, one per column of the Jacobian.
    """
    checks.finite("x", checks.points("x", x, "for images use divergence_hutchinson"))
    f, div = _divergence_exact(field, x, t)
    # the public call checks what the field returned (the solvers' steps do not: a sync)
    checks.finite("the field's output F(x, t)", f, "the field returned NaN or inf at "
                  "finite x: check it at this t (a division by sigma(t) = 0 at t = 0?)")
    checks.finite("the divergence of the field", div, "its Jacobian holds NaN or inf at "
                  "these x: check the field's gradient at this t")
    return f, div


def _divergence_exact(field: Field, x: torch.Tensor, t: float):
    """divergence_exact without the check of x's values, for the solvers' every step."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        f = _value(field, x, t)
        div = _jacobian_trace(f, x, who="the field", what="the exact divergence")
    return f.detach(), div.detach()


def _jacobian_trace(f: torch.Tensor, x: torch.Tensor, *, who: str, what: str,
                    create_graph: bool = False) -> torch.Tensor:
    """tr(df/dx) per point, (B,), for f (B, D) computed from the leaf x (B, D): D backward
    passes, one per column of the Jacobian (kept in the graph with create_graph, for a loss
    differentiated again). A column that does not depend on x adds 0; a function none of
    whose columns does (no_grad, detach, a constant) is refused, named by `who`."""
    trace = torch.zeros(len(x), dtype=f.dtype, device=f.device)
    used = False
    for i in range(x.shape[1]):
        g = checks.gradient(who, f[:, i].sum(), x, what=what, allow_unused=True,
                            create_graph=create_graph,
                            retain_graph=create_graph or i < x.shape[1] - 1)
        if g is not None:
            trace, used = trace + g[:, i], True
    if not used:
        raise checks.not_differentiable(who, what, "its output does not depend on x")
    return trace


def rademacher(n: int, shape, *, dtype=torch.float32, device=None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """n probes of +-1 with equal probability: (n, *shape). Zero mean, identity covariance."""
    n = checks.count("probes (Hutchinson's estimator needs at least one probe)", n)
    r = torch.randint(0, 2, (n, *shape), device=device, generator=generator)
    return (2 * r - 1).to(dtype)


def divergence_hutchinson(field: Field, x: torch.Tensor, t: float, probes: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(F(x, t), v^T (dF/dx) v for each probe v): x (B, ...), probes (P, B, ...) -> (P, B).

    Unbiased for div F whenever E[v] = 0 and E[v v^T] = I (Hutchinson 1989); one
    vector-Jacobian product per probe, whatever the dimension. Average over P for the estimate.

    Book: :eq:`ch13-hutchinson`.
    """
    checks.stacked("probes", probes, checks.batch("x", x, min_dims=2))
    checks.finite("x", x)
    return _divergence_hutchinson(field, x, t, probes)


def _divergence_hutchinson(field: Field, x: torch.Tensor, t: float, probes: torch.Tensor):
    """divergence_hutchinson without the check of x's values, for the solvers' every step."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        f = _value(field, x, t)
        out = []
        for k, v in enumerate(probes):
            g = checks.gradient("the field", f, x, what="Hutchinson's divergence",
                                grad_outputs=v.to(f.dtype), retain_graph=k < len(probes) - 1)
            out.append((g * v).reshape(len(x), -1).sum(1))
    return f.detach(), torch.stack(out)


def field_and_divergence(field: Field, x: torch.Tensor, t: float,
                         probes: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(F(x, t), div F(x, t)): x (B, ...) -> (B, ...), (B,), at most
    companion.run.memory.MAX_IMAGES_WITH_GRAD images' worth of points a pass (each keeps its
    graph for the backward passes). probes=None: the exact divergence (points (B, D));
    probes (P, B, ...): Hutchinson's estimate averaged over the P probes. The solver's every
    step: x's shape is checked, not its values (the solve checks what the field returns).
    """
    if probes is None:
        checks.points("x", x, "for images pass probes (Hutchinson's estimator)")
        return memory.map_chunks(lambda xb: _divergence_exact(field, xb, t), x, grad=True)

    def chunk(xb, vb):
        f, est = _divergence_hutchinson(field, xb, t, vb.transpose(0, 1))
        return f, est.mean(0)
    return memory.map_chunks(chunk, x, probes.transpose(0, 1), grad=True)


# --- the likelihood integral -----------------------------------------------------------------
def standard_normal_log_p(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) summed over every dimension but the first: (B, ...) -> (B,) float64."""
    checks.finite("x", checks.batch("x", x))
    d = x[0].numel()
    return -0.5 * (x.reshape(len(x), -1).double().pow(2).sum(1) + d * math.log(2 * math.pi))


@dataclass
class Likelihood:
    """log p_0(x) = log_prior + delta per point (nats, float64 (B,)); nfe: evaluations of the
    field (each one a vector-Jacobian product per probe as well); x_end: the points at t1."""

    log_p: torch.Tensor
    log_prior: torch.Tensor
    delta: torch.Tensor
    nfe: int
    x_end: torch.Tensor


def ode_log_likelihood(field: Field, x: torch.Tensor, *, t0: float = 0.0, t1: float = 1.0,
                       prior_log_p: Callable = standard_normal_log_p, probes: int | None = None,
                       rtol: float = 1e-5, atol: float = 1e-5, method: str = "RK45",
                       generator: torch.Generator | None = None,
                       max_evals: int = 100_000) -> Likelihood:
    """log p_{t0}(x) for the flow dx/dt = field(x, t), by the instantaneous change of variables.

    Solves d/dt [x, l] = [F(x, t), div F(x, t)] from t0 to t1 with scipy's solve_ivp, all
    points of the batch as one system, and returns log p_{t1}(x_{t1}) + l(t1). The field
    runs on at most companion.run.memory.MAX_IMAGES_WITH_GRAD images a pass
    (`field_and_divergence`).

    Args:
        field: F(x (B, ...), t float) -> (B, ...), the flow's velocity.
        x: (B, ...) the points; the field runs in x's dtype.
        t0: where the density is wanted (default 0.0, the data).
        t1: where the prior is known (default 1.0).
        prior_log_p: (B, ...) -> (B,), log p_{t1} (default: the standard normal).
        probes: None (default): the exact divergence (x (B, D), small D); P: Hutchinson's
            estimator with P Rademacher probes drawn once and kept along the path (the path
            then stays smooth, as in FFJORD).
        rtol: the solver's relative tolerance, > 0 (default 1e-5).
        atol: the solver's absolute tolerance, > 0 (default 1e-5).
        method: solve_ivp's method (default "RK45", Song et al.'s choice).
        generator: for the probes (default None: torch's global generator).
        max_evals: the most evaluations of the field the solve may take (a stiff or
            exploding field); a field value or divergence that is NaN or infinite (a
            diverged network) is an error naming the time.

    Returns:
        Likelihood: `log_p`, log p_{t0}(x) per point (float64 (B,), nats), and `nfe`,
        the evaluations of the field (of the whole batch, however many chunks).

    Book: :eq:`ch13-cov`.
    """
    from scipy.integrate import solve_ivp

    checks.batch("x", x, min_dims=2)
    checks.finite("x", x, "the density is for finite points; drop or fix those first")
    t0, t1 = checks.time_span(t0, t1)
    max_evals = checks.count("max_evals", max_evals)
    rtol = checks.positive("rtol (a positive tolerance)", rtol)
    atol = checks.positive("atol (a positive tolerance)", atol)
    v = None
    if probes is not None:
        v = rademacher(probes, x.shape, dtype=x.dtype, device=x.device, generator=generator)
    else:
        checks.points("x", x, "the exact divergence is for points; for images pass probes=1 "
                      "(Hutchinson)")
    shape, B, dtype, device = x.shape, len(x), x.dtype, x.device
    n = x.numel()
    nfe = 0

    def rhs(t, y):
        nonlocal nfe
        if nfe >= max_evals:
            raise RuntimeError(
                f"the ODE solve from t = {t0:g} to {t1:g} stopped after {max_evals} "
                f"evaluations of the field, at t = {t:.6g}: the field is stiff or grows "
                f"without bound there; check it, loosen rtol/atol (now {rtol:g}/{atol:g}), "
                "or raise max_evals")
        xt = torch.from_numpy(y[:n]).to(device=device, dtype=dtype).reshape(shape)
        nfe += 1  # one evaluation of the field, however many chunks it takes
        f, div = field_and_divergence(field, xt, float(t), v)
        out = np.concatenate([f.detach().double().cpu().numpy().ravel(),
                              div.detach().double().cpu().numpy()])
        bad = int((~np.isfinite(out)).sum())
        if bad:
            raise checks.ArgumentError(
                f"the field or its divergence is NaN or infinite at t = {t:.6g} ({bad} of "
                f"{out.size} values, evaluation {nfe}): a diverged network or a field "
                "undefined there; check the model on finite inputs, or end the solve "
                "before that time (t1)")
        return out

    y0 = np.concatenate([x.detach().double().cpu().numpy().ravel(), np.zeros(B)])
    sol = solve_ivp(rhs, (t0, t1), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"the ODE solver failed: {sol.message}")
    end = sol.y[:, -1]
    x_end = torch.from_numpy(end[:n].copy()).reshape(shape)
    delta = torch.from_numpy(end[n:].copy())
    log_prior = checks.per_point(prior_log_p(x_end.to(torch.float64)), B, who="prior_log_p",
                                 fix="sum the log-density over the dimensions, without keepdim")
    log_prior = log_prior.double().cpu()
    return Likelihood(log_prior + delta, log_prior, delta, nfe, x_end)


# --- 8-bit images: dequantization and bits per dimension -------------------------------------
def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + u, u uniform on the grey level's bin [-1/255, 1/255) for 8-bit images on [-1, 1].

    Then E_u[-log p(x + u)] - D log(2/255) bounds the negative log-probability of the discrete
    image under the model P(x) = integral of p over x's bin, by Jensen's inequality.

    Book: :eq:`ch13-dequantization`.
    """
    checks.batch("x", x, min_dims=2)
    checks.images("x", x, low=-1.0, high=1.0)  # 8-bit images on [-1, 1], not 0..255
    u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    return x + (u - 0.5) * BIN


def bits_per_dim(log_p: torch.Tensor, dims: int) -> torch.Tensor:
    """The discrete bound from a dequantized log-density (nats): -log_p / (D ln 2) + log2(255/2).

    log_p: finite log-densities, a tensor of any shape (`Likelihood.log_p` (B,)) or a
    number; dims: D, the dimensions of one image (784 for the digits)."""
    dims = checks.count("dims", dims)
    fix = ("a log-density of -inf is a point the model gives no mass, NaN a failed "
           "solve: dequantize the data, or check the solve that gave it")
    log_p = checks.finite("log_p", log_p, fix) if torch.is_tensor(log_p) else \
        checks.real("log_p (a finite log-density)", log_p)
    return -log_p / (dims * math.log(2)) - math.log2(BIN)
