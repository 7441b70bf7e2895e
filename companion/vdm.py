"""Variational diffusion models (Kingma, Salimans, Poole and Ho 2021, VDM): the chain in log-SNR.

Time convention, used everywhere in this module: **t runs over [0, 1]**, t = 0 the least
noisy level (not the data itself), t = 1 the noisiest, as in `companion.sde`. A noise
schedule is one increasing function gamma(t), the negative log signal-to-noise ratio:

    q(z_t | x) = N(alpha_t x, sigma_t^2 I),    alpha_t^2 = sigmoid(-gamma(t)),
    sigma_t^2 = sigmoid(gamma(t)),             SNR(t) = alpha_t^2 / sigma_t^2 = exp(-gamma(t)),

variance preserving (alpha_t^2 + sigma_t^2 = 1). lambda = -gamma is the log-SNR of Kingma
and Gao (2023). The other chapters' noise levels are the same numbers in other clothes:

    chapter 8's chain:  alpha_bar = alpha^2 = sigmoid(-gamma),  gamma = log((1 - ab) / ab),
    chapter 17 (EDM):   sigma^2 = 1 / SNR,                        gamma = 2 log sigma.

Models: every noise predictor here is called as **eps_model(z_t, gamma_t)**, z_t (B, ...) and
gamma_t a float tensor (B,) of the same dtype, returning eps_hat (B, ...). It is told the
noise level gamma, not the time t: then the continuous-time loss depends on the schedule
only through its ends, and a learned schedule can move its interior without changing what
the network's input means (VDM, their section 5). Chapter 9's U-Net takes integer steps:
wrap it in `StepAdapter` (`StepAdapter.linear` for a network trained here,
`StepAdapter.chain` for one trained on chapter 9's chain).

The bound (in nats per example, summed over dimensions):

    -log p(x) <= L_prior + L_diffusion + L_reconstruction,
    L_prior = KL(q(z_1 | x) || N(0, I)),    L_reconstruction = E -log p(x | z_0),
    L_T = (T / 2) E_{i ~ U{1..T}} [(SNR(s) - SNR(t)) |x - x_hat(z_t; t)|^2],
          t = i / T, s = t - 1 / T,
    L_inf = -(1/2) E_{t ~ U(0, 1)} [SNR'(t) |x - x_hat|^2] = (1/2) E [gamma'(t) |eps - eps_hat|^2],

with x_hat = (z_t - sigma_t eps_hat) / alpha_t. Written in SNR, L_inf = (1/2) int_{SNR(1)}^{SNR(0)}
E|x - x_hat|^2 dv: the schedule's interior only changes the estimator's variance.

Closed forms (float64) for Gaussian data x ~ N(mu, diag(s^2)), `gaussian_*`, and the
weightings of Kingma and Gao (2023), `*_weighting`, are at the end. Equation labels: the
chapter `18_variational_diffusion`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from . import edm
from .diffusion import (
    DECODERS,
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    normal_kl,
)
from .run import checks
from .toy import GaussianMixture, diffused_posterior_mean

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Weighting = Callable[[torch.Tensor], torch.Tensor]
GAMMA_MIN, GAMMA_MAX = -13.3, 5.0   # VDM's fixed linear schedule: SNR(0) = 6e5, SNR(1) = 0.0067
LOG_2PI = math.log(2 * math.pi)


# --- noise levels in other clothes --------------------------------------------------------------
def _real_tensor(name: str, value, fix: str = "") -> torch.Tensor:
    """value as a floating tensor: tensors keep a floating dtype, everything else becomes
    float64; NaN and the infinities refused (on the CPU: on a GPU the check would cost a
    device sync a call, as the U-Net's own check of its steps)."""
    if torch.is_tensor(value):
        if value.is_complex():  # .to(float64) drops the imaginary part with a warning
            raise checks.ArgumentError(f"{name} must be real, got {value.dtype}{fix}")
        t = value if value.is_floating_point() else value.to(torch.float64)
    else:
        try:
            t = torch.as_tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise checks.ArgumentError(f"{name} must be a number or a tensor of numbers, got "
                                       f"{checks._got(value)}{fix}") from None
    if t.is_complex():
        raise checks.ArgumentError(f"{name} must be real, got {t.dtype}{fix}")
    if checks.on_host(t) and not bool(torch.isfinite(t.detach()).all()):
        raise checks.ArgumentError(f"{name} holds NaN or infinite values{fix}")
    return t


def alpha_sigma(gamma) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) = (sqrt(sigmoid(-gamma)), sqrt(sigmoid(gamma))): the signal and noise
    scales at noise level gamma (any shape; numbers become float64). alpha^2 + sigma^2 = 1.

    Book: :eq:`ch18-forward`.
    """
    g = _real_tensor("gamma", gamma)
    return torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()


def snr(gamma) -> torch.Tensor:
    """SNR = alpha^2 / sigma^2 = exp(-gamma) (any shape).

    Book: :eq:`ch18-forward`.
    """
    return torch.exp(-_real_tensor("gamma", gamma))


def gamma_from_alpha_bar(alpha_bar) -> torch.Tensor:
    """gamma = log((1 - alpha_bar) / alpha_bar) = -log SNR for chapter 8's alpha_bar in (0, 1)
    (any shape, e.g. `Diffusion.alphas_bar` (T,)); float64 for numbers.

    Book: :eq:`ch18-levels`.
    """
    ab = _real_tensor("alpha_bar", alpha_bar, " (pass the chain's alpha_bar_1..T)")
    if not bool(((ab > 0) & (ab < 1)).all()):
        raise checks.ArgumentError("alpha_bar must lie in (0, 1), strictly: at 1 there is no "
                                   "noise (gamma = -inf), at 0 no signal (gamma = +inf); pass "
                                   "the chain's alpha_bar_1..T, not alpha_bar_0 = 1")
    return torch.log1p(-ab) - torch.log(ab)


def alpha_bar_from_gamma(gamma) -> torch.Tensor:
    """alpha_bar = alpha^2 = sigmoid(-gamma), the inverse of `gamma_from_alpha_bar`."""
    return torch.sigmoid(-_real_tensor("gamma", gamma))


def gamma_from_sigma(sigma) -> torch.Tensor:
    """gamma = 2 log sigma for EDM's variance-exploding level sigma > 0 (chapter 17: x = y +
    sigma n is z_t / alpha_t, so sigma^2 = sigma_t^2 / alpha_t^2 = 1 / SNR).

    Book: :eq:`ch18-levels`.
    """
    s = _real_tensor("sigma", sigma, " (EDM's noise levels, e.g. edm.rho_grid(n)[:-1])")
    if not bool((s > 0).all()):
        raise checks.ArgumentError("sigma must be > 0: at sigma = 0 (the last entry of an EDM "
                                   "grid) gamma is -inf; drop it, e.g. rho_grid(n)[:-1]")
    return 2 * torch.log(s)


def sigma_from_gamma(gamma) -> torch.Tensor:
    """EDM's sigma = exp(gamma / 2) = 1 / sqrt(SNR), the inverse of `gamma_from_sigma`."""
    return torch.exp(_real_tensor("gamma", gamma) / 2)


def noise_levels(gamma) -> dict[str, torch.Tensor]:
    """One noise level in every chapter's clothes, for a table: a dict of tensors shaped like
    gamma, keyed "gamma", "log_snr" (lambda = -gamma), "snr", "alpha_bar" (chapter 8),
    "alpha" and "sigma" (the VP scales) and "sigma_edm" (chapter 17).

    Book: :eq:`ch18-levels`.
    """
    g = _real_tensor("gamma", gamma)
    alpha, sigma = alpha_sigma(g)
    return {"gamma": g, "log_snr": -g, "snr": snr(g), "alpha_bar": alpha_bar_from_gamma(g),
            "alpha": alpha, "sigma": sigma, "sigma_edm": sigma_from_gamma(g)}


# --- schedules -----------------------------------------------------------------------------------
# |gamma| beyond this and SNR = exp(-gamma) (or 1 / SNR) overflows float64 (at 709.8), and
# the schedule's levels under- or overflow with it: -2000 gave gamma(0) = -inf
GAMMA_LIMIT = 700.0


def _end(name: str, value) -> float:
    v = checks.real(name, value)
    if abs(v) > GAMMA_LIMIT:
        raise checks.ArgumentError(
            f"{name} must lie in [-{GAMMA_LIMIT:g}, {GAMMA_LIMIT:g}], got {v:g}: SNR = "
            f"exp(-gamma) {'overflows' if v < 0 else 'underflows'} float64 beyond (VDM's ends "
            "are -13.3 and 5.0)")
    return v


def _ends(gamma_min, gamma_max) -> tuple[float, float]:
    lo = _end("gamma_min (gamma(0), the least noisy level)", gamma_min)
    hi = _end("gamma_max (gamma(1), the noisiest level)", gamma_max)
    if not lo < hi:
        raise checks.ArgumentError(
            f"need gamma_min < gamma_max (gamma increases with t: SNR(0) > SNR(1)), got "
            f"gamma_min={lo:g} and gamma_max={hi:g}: swap them (VDM uses -13.3 and 5.0)")
    return lo, hi


def _times(name: str, t) -> torch.Tensor:
    """t as a floating tensor of times in [0, 1] (numbers become float64; one device sync)."""
    tt = _real_tensor(name, t, " (times in [0, 1])")
    if not bool(((tt >= 0) & (tt <= 1)).all()):
        lo, hi = float(tt.min()), float(tt.max())
        hint = (" (a step i of a T-step chain sits at t = i / T)" if hi > 1 else "")
        raise checks.ArgumentError(f"{name} must lie in [0, 1] (0 the least noisy level, 1 the "
                                   f"noisiest), got values in [{lo:g}, {hi:g}]{hint}")
    return tt


class Schedule(nn.Module):
    """A noise schedule gamma(t), increasing on t in [0, 1] (see the module docstring).

    Call it as schedule(t) -> gamma(t), t a number or a tensor of any shape in [0, 1] (the
    result has t's shape and dtype; numbers become float64). Subclasses define `_gamma`
    (and `_derivative`, `_inverse` where closed forms exist; the defaults use autograd and
    bisection).
    """

    def forward(self, t) -> torch.Tensor:
        return self._gamma(_times("t", t))

    def derivative(self, t) -> torch.Tensor:
        """gamma'(t) > 0, shaped like t."""
        return self._derivative(_times("t", t))

    def inverse(self, gamma) -> torch.Tensor:
        """t(gamma), the time at which the schedule reaches gamma in [gamma(0), gamma(1)]."""
        g = _real_tensor("gamma", gamma)
        lo, hi = (float(v.detach()) for v in self.ends(g.dtype))
        if not bool(((g >= lo - 1e-9 * abs(lo)) & (g <= hi + 1e-9 * abs(hi))).all()):
            raise checks.ArgumentError(f"gamma must lie in the schedule's range [{lo:.4g}, "
                                       f"{hi:.4g}] = [gamma(0), gamma(1)]")
        return self._inverse(g.clamp(lo, hi)).clamp(0, 1)

    def ends(self, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma(0), gamma(1)) as 0-dim tensors (with gradients for a learned schedule)."""
        t = torch.tensor([0.0, 1.0], dtype=checks.floating_dtype("dtype", dtype),
                         device=self._device())
        g = self._gamma(t)
        return g[0], g[1]

    def log_snr_density(self, lam) -> torch.Tensor:
        """p(lambda) = 1 / gamma'(t(-lambda)): the density of the log-SNR lambda = -gamma(t)
        when t ~ U(0, 1), 0 outside [-gamma(1), -gamma(0)]. lam: any shape, float64 for
        numbers; differentiable in lam for the closed-form schedules (a learned one inverts
        by bisection, without gradient). The schedule as importance sampling over noise
        levels (Kingma and Gao 2023).

        Book: :eq:`ch18-weighted-loss`.
        """
        lam = _real_tensor("lam", lam)
        lo, hi = (float(v.detach()) for v in self.ends(lam.dtype))
        tol = 1e-12 * max(1.0, abs(lo), abs(hi))  # the ends' rounding
        inside = (-lam >= lo - tol) & (-lam <= hi + tol)
        # no clamp on the levels inside: its gradient vanishes at the ends
        t = self._inverse(torch.where(inside, -lam, torch.full_like(lam, (lo + hi) / 2)))
        return torch.where(inside, 1 / self._derivative(t), torch.zeros_like(lam))

    def check(self, n: int = 1001) -> Schedule:
        """self, after checking on n + 1 times k / n that gamma is finite and increases
        strictly, and that gamma' > 0 there and at the n midpoints between them (a wiggle
        whose period divides 1 / n is level at the times, not at the midpoints); otherwise
        an error naming where it fails."""
        n = checks.size("n (the check's grid, n + 1 times)", n, MAX_CHECK_GRID, "a grid "
                        "this fine is checked in seconds (FunctionSchedule's default: 1,000)",
                        minimum=2)
        t = torch.linspace(0, 1, 2 * n + 1, dtype=torch.float64, device=self._device())
        with torch.no_grad():
            g, d = self._gamma(t), self._derivative(t)
        _check_increasing("the schedule", t, g, d)
        return self

    # defaults -----------------------------------------------------------------------------
    def _gamma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _derivative(self, t: torch.Tensor) -> torch.Tensor:
        graph = torch.is_grad_enabled()  # keep the graph for a loss that is differentiated
        with torch.enable_grad():
            tt = t.detach().requires_grad_(True)
            g = self._gamma(tt)
            (d,) = torch.autograd.grad(g.sum(), tt, create_graph=graph)
        return d

    def _inverse(self, g: torch.Tensor) -> torch.Tensor:
        lo = torch.zeros_like(g)
        hi = torch.ones_like(g)
        with torch.no_grad():
            for _ in range(64):  # bisection: gamma increases
                mid = (lo + hi) / 2
                up = self._gamma(mid) < g
                lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
        return (lo + hi) / 2

    def _device(self):
        p = next(iter(self.parameters()), None)
        if p is None:
            p = next(iter(self.buffers()), None)
        return p.device if p is not None else torch.device("cpu")


def _check_increasing(what: str, t: torch.Tensor, g: torch.Tensor, d: torch.Tensor) -> None:
    if not bool(torch.isfinite(g).all() & torch.isfinite(d).all()):
        raise checks.ArgumentError(f"{what} gives NaN or infinite gamma (or gamma') on [0, 1]; "
                                   "gamma(0) and gamma(1) must be finite")
    bad = torch.nonzero((g[1:] <= g[:-1]) | (d[1:] <= 0) | (d[:-1] <= 0)).reshape(-1)
    if len(bad):
        k = int(bad[0])
        raise checks.ArgumentError(
            f"{what} is not increasing: gamma({float(t[k]):.4g}) = {float(g[k]):.4g} and "
            f"gamma({float(t[k + 1]):.4g}) = {float(g[k + 1]):.4g}. gamma = -log SNR must "
            "increase with t (more noise later): if yours decreases, use gamma(1 - t) or "
            "-gamma; LearnedSchedule is monotone by construction")


class LinearSchedule(Schedule):
    """gamma(t) = gamma_min + (gamma_max - gamma_min) t, VDM's fixed baseline (-13.3, 5.0).

    Book: :eq:`ch18-linear-schedule`.
    """

    def __init__(self, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX):
        super().__init__()
        self.gamma_min, self.gamma_max = _ends(gamma_min, gamma_max)

    def _gamma(self, t):
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t

    def _derivative(self, t):
        return torch.full_like(t, self.gamma_max - self.gamma_min)

    def _inverse(self, g):
        return (g - self.gamma_min) / (self.gamma_max - self.gamma_min)


class CosineSchedule(Schedule):
    """The cosine schedule's log-SNR (Nichol and Dhariwal 2021), truncated to [gamma_min,
    gamma_max]:

        gamma(t) = 2 log tan(a + (b - a) t),
        a = atan(exp(gamma_min / 2)),  b = atan(exp(gamma_max / 2)),

    so alpha_t = cos(u), sigma_t = sin(u) with u = a + (b - a) t. With a = 0 and b = pi/2
    (gamma_min -> -inf, gamma_max -> +inf) it is alpha_bar(t) = cos^2(pi t / 2), Nichol and
    Dhariwal's schedule without its offset s (which only moves the start); the defaults
    are VDM's ends, so that it can be compared with `LinearSchedule` end for end.
    gamma'(t) = 4 (b - a) / sin(2u).

    Book: :eq:`ch18-cosine-schedule`.
    """

    def __init__(self, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX):
        super().__init__()
        self.gamma_min, self.gamma_max = _ends(gamma_min, gamma_max)
        self.a = math.atan(math.exp(self.gamma_min / 2))
        self.b = math.atan(math.exp(self.gamma_max / 2))
        # near pi/2 float64 cannot tell b's neighbours apart: tan(b), and gamma(1), lose the
        # end given (gamma_max = 700 computes as 74)
        for name, end, got in (("gamma_min", self.gamma_min, self._gamma(torch.tensor(0.0,
                                dtype=torch.float64))), ("gamma_max", self.gamma_max,
                                self._gamma(torch.tensor(1.0, dtype=torch.float64)))):
            if not abs(float(got) - end) <= 1e-6 * (1 + abs(end)):
                raise checks.ArgumentError(
                    f"CosineSchedule's {name} = {end:g} computes as gamma = {float(got):.6g} "
                    "in float64 (tan of a level this close to 0 or pi/2 is not resolved): "
                    "keep the ends within about [-700, 40] (VDM's are -13.3 and 5.0)")

    def ends(self, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma_min, gamma_max) as given, exactly (not through the rounding of tan)."""
        dtype = checks.floating_dtype("dtype", dtype)
        return (torch.tensor(self.gamma_min, dtype=dtype),
                torch.tensor(self.gamma_max, dtype=dtype))

    def _u(self, t):
        return self.a + (self.b - self.a) * t

    def _gamma(self, t):
        return 2 * torch.log(torch.tan(self._u(t)))

    def _derivative(self, t):
        return 4 * (self.b - self.a) / torch.sin(2 * self._u(t))

    def _inverse(self, g):
        return (torch.atan(torch.exp(g / 2)) - self.a) / (self.b - self.a)


class LinearBetaSchedule(Schedule):
    """Chapter 9's chain (Ho et al.'s linear betas) as a continuous gamma: the VP SDE of
    chapter 13 with beta(u) = beta_min + (beta_max - beta_min) u, u in (0, 1],

        -log alpha_bar(u) = A(u) = beta_min u + (beta_max - beta_min) u^2 / 2,
        gamma = log(expm1(A(u))) = A + log(1 - exp(-A)),  u = t_min + (1 - t_min) t.

    At u = 0 gamma is -inf (no noise), so the schedule starts at the chain's first step:
    t_min = 1 / T for a chain of T steps (1e-3, chapter 9's T = 1000), and step i of that
    chain sits at t = (i - 1) / (T - 1). The chain's own alpha_bar_i differ from these by
    the discretization (at most 0.1 in gamma for T = 1000: `ChainSchedule` follows the
    chain exactly). gamma'(t) = (1 - t_min) beta(u) / (1 - exp(-A(u))).

    Book: :eq:`ch18-linear-beta-schedule`.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        super().__init__()
        self.beta_min = checks.positive("beta_min", beta_min)
        self.beta_max = checks.real("beta_max (>= beta_min)", beta_max, low=self.beta_min)
        self.t_min = checks.real("t_min (the chain's first step, 1 / T)", t_min, low=0.0,
                                 high=1.0, open_low=True, open_high=True)
        self.k = self.beta_max - self.beta_min

    def _u(self, t):
        return self.t_min + (1 - self.t_min) * t

    def _A(self, u):
        return self.beta_min * u + 0.5 * self.k * u * u

    def _gamma(self, t):
        A = self._A(self._u(t))
        return A + torch.log(-torch.expm1(-A))

    def _derivative(self, t):
        u = self._u(t)
        return (1 - self.t_min) * (self.beta_min + self.k * u) / (-torch.expm1(-self._A(u)))

    def _inverse(self, g):
        A = torch.logaddexp(g, torch.zeros_like(g))  # A = log(1 + e^gamma), exactly
        if self.k == 0:
            u = A / self.beta_min
        else:
            u = (torch.sqrt(self.beta_min**2 + 2 * self.k * A) - self.beta_min) / self.k
        return (u - self.t_min) / (1 - self.t_min)


class ChainSchedule(Schedule):
    """A discrete chain's noise levels as a continuous gamma, exactly at its steps:
    gamma_i = log((1 - alpha_bar_i) / alpha_bar_i) at t = (i - 1) / (T - 1), i = 1..T, linear
    in between (gamma' piecewise constant). With it, VDM's discrete loss with T - 1 steps is
    the chain's sum of KL terms L_1..L_{T-1} with the posterior variance (chapter 8).

    alphas_bar: the chain's alpha_bar_1..T (decreasing, T >= 2; `Diffusion.alphas_bar`).

    Book: :eq:`ch18-linear-beta-schedule`.
    """

    def __init__(self, alphas_bar: torch.Tensor):
        super().__init__()
        ab = checks.chain_alphas_bar(alphas_bar, 0.0)
        self.register_buffer("gammas", gamma_from_alpha_bar(ab))
        self.T = len(ab)

    def _where(self, t):
        pos = t * (self.T - 1)
        k = pos.detach().floor().clamp(0, self.T - 2).long()
        return k, pos - k.to(t.dtype)

    def _gamma(self, t):
        k, w = self._where(t)
        g = self.gammas.to(t.dtype)
        return g[k] + w * (g[k + 1] - g[k])

    def _derivative(self, t):
        k, _ = self._where(t)
        g = self.gammas.to(t.dtype)
        return (self.T - 1) * (g[k + 1] - g[k])

    def _inverse(self, g):
        gs = self.gammas.to(g.dtype)
        k = (torch.searchsorted(gs, g.contiguous()) - 1).clamp(0, self.T - 2)
        return (k.to(g.dtype) + (g - gs[k]) / (gs[k + 1] - gs[k])) / (self.T - 1)


FUNCTION_CHECK_MIN = 1000  # FunctionSchedule's coarsest check grid (its default)


class FunctionSchedule(Schedule):
    """Any increasing function as a schedule: gamma_fn(t (N,)) -> (N,), and optionally
    derivative_fn(t) -> gamma'(t) (by default autograd through gamma_fn). Checked at
    construction on n + 1 >= 1001 times k / n in [0, 1] (and gamma' between them): finite
    and strictly increasing (a decreasing function, a log-SNR instead of its negative, is
    refused with the fix); and where it is used: gamma finite and gamma' > 0 at every time
    asked for (on the CPU).
    """

    def __init__(self, gamma_fn: Callable[[torch.Tensor], torch.Tensor],
                 derivative_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 n: int = 1000):
        super().__init__()
        what = "of a tensor of times t (N,) returning (N,)"
        checks.function("gamma_fn", gamma_fn, what, args=1)
        if derivative_fn is not None:
            checks.function("derivative_fn", derivative_fn, what, args=1)
        self.gamma_fn, self.derivative_fn = gamma_fn, derivative_fn
        t = torch.linspace(0, 1, 5, dtype=torch.float64)
        for name, fn in (("gamma_fn", gamma_fn), ("derivative_fn", derivative_fn)):
            out = t if fn is None else fn(t)
            if not torch.is_tensor(out) or out.shape != t.shape:  # a (N, 1) broadcast
                raise checks.ArgumentError(
                    f"{name} must return a tensor shaped like t, got "
                    f"{tuple(getattr(out, 'shape', ())) or type(out).__name__} for t of "
                    "shape (5,)")
        # a grid checks only its own times: a coarse one passed 10t - 5 + 0.01 sin(2000 pi t)
        self.n = checks.count("n (the grid gamma_fn is checked on, n + 1 times k / n; a "
                              "coarser one misses a decrease between its times)", n,
                              minimum=FUNCTION_CHECK_MIN)
        self.check(self.n)

    def _gamma(self, t):
        g = self.gamma_fn(t)
        if torch.is_tensor(g) and checks.on_host(g) and not checks.all_finite(g):
            raise checks.ArgumentError("gamma_fn returned NaN or infinite gamma at the times "
                                       "asked for: gamma(t) must be finite on [0, 1]")
        return g

    def _derivative(self, t):
        d = self.derivative_fn(t) if self.derivative_fn is not None else super()._derivative(t)
        # where it is used (the losses' weight gamma'(t), the density of the log-SNR): a
        # decrease between the times checked at construction would weigh a loss negatively
        if torch.is_tensor(d) and checks.on_host(d) and not bool((d > 0).all()):
            k = int(torch.nonzero(~(d > 0)).reshape(-1)[0])
            raise checks.ArgumentError(
                f"gamma_fn is not increasing at t = {float(t.reshape(-1)[k]):.6g}: gamma'(t) = "
                f"{float(d.detach().reshape(-1)[k]):.4g}. gamma = -log SNR must increase "
                "with t everywhere on [0, 1] (FunctionSchedule checks gamma' wherever it is "
                "used, and at construction on n + 1 times k / n and between them): if yours "
                "decreases, use gamma(1 - t) or -gamma")
        return d


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class LearnedSchedule(Schedule):
    """VDM's learned schedule: a monotone network, rescaled to its two end parameters.

        h(t) = w1 t + (1/H) sum_k w3_k (2 sigmoid(w2_k (2t - 1) + b2_k) - 1),   w1, w2_k, w3_k > 0,
        gamma(t) = gamma_min + (gamma_max - gamma_min) (h(t) - h(0)) / (h(1) - h(0)),

    the positive weights being softplus of unconstrained parameters, so h (and gamma)
    increase strictly for any parameter values: a linear layer, a sigmoid hidden layer of H
    units and a linear read-out, all with positive weights (VDM's appendix; their layer
    l1's bias cancels in the rescaling and is left out). gamma(0) = gamma_min and
    gamma(1) = gamma_max exactly: `gamma_min` is a parameter and gamma_max = gamma_min +
    softplus(`span`), so the ends can never swap. gamma'(t) in closed form,
    h'(t) = w1 + (4/H) sum_k w3_k w2_k s_k (1 - s_k).

    `end_parameters()` (gamma_min, span) follow the bound; `interior_parameters()` only
    change the estimator's variance (`continuous_diffusion_loss(..., variance_gradient=
    True)` gives them the gradient of the squared loss). Initialization: w1 = 1, the raw
    w2, b2, w3 standard normal (`generator` for reproducible draws).

    Book: :eq:`ch18-learned-schedule`.
    """

    def __init__(self, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX,
                 hidden: int = 1024, generator: torch.Generator | None = None):
        super().__init__()
        lo, hi = _ends(gamma_min, gamma_max)
        checks.generator("generator", generator)
        hidden = checks.size("hidden (the sigmoid layer's width)", hidden, 65_536, "every "
                             "time evaluates all the units (VDM's: 1,024)")
        dtype = torch.get_default_dtype()
        self.gamma_min = nn.Parameter(torch.tensor(lo, dtype=dtype))
        self.span = nn.Parameter(torch.tensor(_inv_softplus(hi - lo), dtype=dtype))
        self.w1 = nn.Parameter(torch.tensor(_inv_softplus(1.0), dtype=dtype))
        self.w2 = nn.Parameter(torch.randn(hidden, generator=generator, dtype=dtype))
        self.b2 = nn.Parameter(torch.randn(hidden, generator=generator, dtype=dtype))
        self.w3 = nn.Parameter(torch.randn(hidden, generator=generator, dtype=dtype))

    @property
    def gamma_max(self) -> torch.Tensor:
        """gamma(1) = gamma_min + softplus(span), a 0-dim tensor."""
        return self.gamma_min + F.softplus(self.span)

    def end_parameters(self) -> list[nn.Parameter]:
        """[gamma_min, span]: what the bound moves (the ends)."""
        return [self.gamma_min, self.span]

    def interior_parameters(self) -> list[nn.Parameter]:
        """[w1, w2, b2, w3]: the shape between the ends (the estimator's variance only)."""
        return [self.w1, self.w2, self.b2, self.w3]

    def _h(self, t):
        dt = t.dtype
        w1 = F.softplus(self.w1.to(dt))
        w2, b2, w3 = F.softplus(self.w2.to(dt)), self.b2.to(dt), F.softplus(self.w3.to(dt))
        s = torch.sigmoid(w2 * (2 * t[..., None] - 1) + b2)
        h = w1 * t + (w3 * (2 * s - 1)).mean(-1)
        dh = w1 + (4 * w3 * w2 * s * (1 - s)).mean(-1)
        return h, dh

    def interior(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_n(t), h_n'(t)) with h_n = (h(t) - h(0)) / (h(1) - h(0)) in [0, 1]: the shape,
        which only the interior parameters move. t: any shape, times in [0, 1] (numbers
        become float64)."""
        t = _real_tensor("t", t, " (times in [0, 1])")
        return self._interior(_times("t", t) if checks.on_host(t) else t)  # no GPU sync

    def _interior(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, dh = self._h(t)
        ends, _ = self._h(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))
        width = ends[1] - ends[0]
        return (h - ends[0]) / width, dh / width

    def _gamma(self, t):
        hn, _ = self._interior(t)
        return self.gamma_min.to(t.dtype) + F.softplus(self.span.to(t.dtype)) * hn

    def _derivative(self, t):
        _, dhn = self._interior(t)
        return F.softplus(self.span.to(t.dtype)) * dhn

    def _routed(self, t):
        """gamma(t), gamma'(t) and arm(loss): after arm(L) with L (B,) per example, the
        gradient reaching the interior through h_n(t_b), h_n'(t_b) is multiplied by 2 L_b,
        so that back-propagating mean(L) gives the interior the gradient of mean(L^2)."""
        hn, dhn = self._interior(t)
        scale: dict[str, torch.Tensor] = {}

        def hook(grad):
            if "w" not in scale:
                raise RuntimeError("variance_gradient: the loss was not recorded (internal)")
            return grad * scale["w"].to(grad.dtype)

        if hn.requires_grad:
            hn.register_hook(hook)
            dhn.register_hook(hook)
        span = F.softplus(self.span.to(t.dtype))

        def arm(loss):
            scale["w"] = 2 * loss.detach()
        return self.gamma_min.to(t.dtype) + span * hn, span * dhn, arm


# --- chapter 9's U-Net, which takes integer steps ----------------------------------------------
class StepAdapter(nn.Module):
    """A network of integer steps, model(z, t int64 (B,)) with t in 1..T (chapter 9's U-Net),
    as an eps_model(z, gamma (B,)): gamma is placed on the steps by `gammas` (T,), the
    increasing noise level of each step, linear in between, then rounded to the nearest
    step (one call), or with interpolate=True the outputs at the two neighbouring steps are
    blended linearly (one batch of 2B). Levels outside [gammas[0], gammas[-1]] go to the end
    steps. The rounding stops gradients to gamma through the network's input; the loss's
    weight gamma'(t) and z_t still carry them.

    Use `StepAdapter.linear(model, gamma_min, gamma_max)` for a U-Net trained here (the
    steps evenly spaced in gamma; keep the range fixed while a learned schedule moves its
    ends, e.g. -15 to 10) and `StepAdapter.chain(model, alphas_bar)` for one trained on
    chapter 9's chain (its step t at the chain's gamma_t).
    """

    def __init__(self, model: nn.Module, gammas: torch.Tensor, interpolate: bool = False):
        super().__init__()
        checks.function("model", model, "of integer steps, model(z (B, ...), t int64 (B,)) "
                        "-> eps_hat (B, ...), e.g. chapter 9's U-Net", args=2)
        g = _real_tensor("gammas", gammas).detach().to(torch.float64).reshape(-1).cpu()
        if len(g) < 2 or bool((g[1:] <= g[:-1]).any()):
            raise checks.ArgumentError("gammas must be the steps' noise levels gamma_1..T, "
                                       "T >= 2, strictly increasing (step 1 the least noisy)")
        checks.model_steps(model, len(g), what=f"gammas ({len(g)} levels)",
                           fix="pass one level per step of the model")
        self.model = model
        self.interpolate = bool(interpolate)
        self.register_buffer("gammas", g)

    @classmethod
    def linear(cls, model: nn.Module, gamma_min: float = GAMMA_MIN,
               gamma_max: float = GAMMA_MAX, T: int | None = None,
               interpolate: bool = False) -> StepAdapter:
        """Steps 1..T evenly spaced in gamma over [gamma_min, gamma_max] (T from the model's
        config.T when not given)."""
        lo, hi = _ends(gamma_min, gamma_max)
        T = getattr(getattr(model, "config", None), "T", None) if T is None else T
        T = checks.count("T (the model's steps; pass T= for a model without config.T)", T,
                         minimum=2)
        return cls(model, torch.linspace(lo, hi, T, dtype=torch.float64), interpolate)

    @classmethod
    def chain(cls, model: nn.Module, alphas_bar: torch.Tensor,
              interpolate: bool = False) -> StepAdapter:
        """Step t at the chain's gamma_t = log((1 - alpha_bar_t) / alpha_bar_t)."""
        ab = checks.chain_alphas_bar(alphas_bar, 0.0)
        return cls(model, gamma_from_alpha_bar(ab), interpolate)

    def steps(self, gamma) -> torch.Tensor:
        """gamma (B,) -> the real-valued step in [1, T], float64 (B,)."""
        return self._steps(_real_tensor("gamma", gamma))

    def _steps(self, gamma: torch.Tensor) -> torch.Tensor:
        gs = self.gammas
        g = gamma.detach().to(gs).clamp(gs[0], gs[-1])
        k = torch.searchsorted(gs, g.contiguous()).clamp(1, len(gs) - 1)  # gs[k-1] < g <= gs[k]
        return k + (g - gs[k - 1]) / (gs[k] - gs[k - 1])

    def forward(self, z: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        checks.batch("z", z)
        if not torch.is_tensor(gamma) or gamma.shape != (len(z),):
            raise checks.ArgumentError(f"gamma must be one noise level per example ({len(z)},), "
                                       f"got {tuple(getattr(gamma, 'shape', ())) or gamma!r}")
        if checks.on_host(gamma) and not checks.all_finite(gamma):  # no sync on a GPU
            raise checks.ArgumentError("gamma holds NaN or infinite noise levels: the "
                                       "adapter would turn them into step -2^63; pass finite "
                                       "levels (a schedule's gamma(t), t in [0, 1])")
        s = self._steps(gamma)
        if not self.interpolate:
            return self.model(z, s.round().long().to(z.device))
        lo = s.floor().clamp(max=len(self.gammas) - 1)
        w = (s - lo).to(z.dtype).reshape(-1, *([1] * (z.dim() - 1))).to(z.device)
        t = torch.cat([lo, lo + 1]).long().to(z.device)
        out = checks.output(self.model(torch.cat([z, z]), t), (2 * len(z), *z.shape[1:]),
                            who="model(z, t)", what="eps_hat", against="z")
        return (1 - w) * out[:len(z)] + w * out[len(z):]


class DiffusionModel(nn.Module):
    """A noise predictor and its schedule as one module: what training updates and what an
    average of the weights keeps (an EMA copy holds both, a learned schedule included).

    model(z_t (B, ...), gamma_t (B,)) -> eps_hat (B, ...) calls `eps_model` (e.g. a
    `StepAdapter` around chapter 9's U-Net); `schedule` is the `Schedule` it trains on
    and samples with (`chain_betas`).
    """

    def __init__(self, eps_model: nn.Module, schedule: Schedule):
        super().__init__()
        if not isinstance(eps_model, nn.Module):
            raise checks.ArgumentError("eps_model must be an nn.Module (z, gamma) -> eps, e.g. "
                                       "StepAdapter.linear(unet, -15.0, 10.0)")
        self.eps_model = eps_model
        self.schedule = _check_schedule(schedule)

    def forward(self, z: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return self.eps_model(z, gamma)


MAX_CHECK_GRID = 10_000_000   # Schedule.check's n
MAX_CHAIN_STEPS = 2**20       # chain_betas' and gaussian_discrete_loss's T (the chapter's 2^16)


def _chain_steps(T) -> int:
    return checks.size("T (the number of steps)", T, MAX_CHAIN_STEPS, "a chain's levels are "
                       "held at every step (the chapter's longest, 2^16 = 65,536)")


def chain_betas(schedule: Schedule, T: int) -> torch.Tensor:
    """The schedule as a chain of T steps for chapter 9's samplers (`diffusion.Diffusion`):
    alpha_bar_i = sigmoid(-gamma(i / T)), i = 1..T, and beta_i = 1 - alpha_bar_i /
    alpha_bar_{i-1} with alpha_bar_0 = 1 (the data). Step i of that chain is at noise level
    gamma(i / T). Returns betas (T,), float64, each in (0, 1).
    """
    _check_schedule(schedule)
    T = _chain_steps(T)
    with torch.no_grad():
        g = schedule._gamma(torch.arange(1, T + 1, dtype=torch.float64,
                                         device=schedule._device()) / T).cpu()
    log_ab = F.logsigmoid(-g)
    prev = torch.cat([torch.zeros(1, dtype=torch.float64), log_ab[:-1]])
    betas = -torch.expm1(log_ab - prev)
    bad = torch.nonzero(~((betas > 0) & (betas < 1))).reshape(-1)
    if len(bad):  # NaN too: a gamma that decreases between steps, or is not finite
        i = int(bad[0]) + 1
        raise checks.ArgumentError(
            f"the schedule gives beta_{i} = {float(betas[i - 1]):.4g}, outside (0, 1): gamma "
            f"({float(g[i - 1]):.4g} at step {i}) must be finite and increase from step to "
            "step (between the times its check looked at too)")
    return betas


# --- the losses ----------------------------------------------------------------------------------
def _check_schedule(schedule) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise checks.ArgumentError(
            f"schedule must be a companion.vdm.Schedule (LinearSchedule(), CosineSchedule(), "
            f"LearnedSchedule(), ...), got {type(schedule).__name__}; wrap a function of t with "
            "FunctionSchedule(fn)")
    return schedule


def _flat_sum(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(len(x), -1).sum(1)


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) or 0-dim -> broadcastable against like (B, ...)."""
    return v.reshape(-1, *([1] * (like.dim() - 1))) if v.dim() else v


def _noise(x: torch.Tensor, noise, generator) -> torch.Tensor:
    if noise is None:
        return torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    checks.same_shape("x and noise", x, checks.batch("noise", noise))
    return noise


def diffuse(x: torch.Tensor, gamma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = alpha x + sigma noise at noise level gamma (B,) (or one 0-dim level).
    x, noise: (B, ...) -> (B, ...).

    Book: :eq:`ch18-forward`.
    """
    checks.same_shape("x and noise", checks.batch("x", x), checks.batch("noise", noise))
    g = _real_tensor("gamma", gamma).to(x)
    if g.dim() and g.shape != (len(x),):
        raise checks.ArgumentError(f"gamma must be one level or one per example ({len(x)},), "
                                   f"got shape {tuple(g.shape)}")
    return _diffuse(x, g, noise)


def _diffuse(x, gamma, noise):
    g = _col(gamma, x)
    return torch.sigmoid(-g).sqrt() * x + torch.sigmoid(g).sqrt() * noise


EPS_MODEL = "(z_t (B, ...), gamma_t (B,)) -> eps_hat (B, ...)"


def _inputs(eps_model, schedule, generator, optional: bool = False) -> None:
    """The arguments every loss shares: an eps_model of two arguments (None too where
    `optional`), a Schedule, a torch.Generator or None."""
    if eps_model is not None or not optional:
        checks.function("eps_model", eps_model, EPS_MODEL, args=2)
    _check_schedule(schedule)
    checks.generator("generator", generator)


def _eps(eps_model, z, gamma):
    out = eps_model(z, gamma)
    return checks.output(out, z, who="eps_model(z_t, gamma_t)",
                         what="the predicted noise", against="z_t").to(z.dtype)


def stratified_times(n: int, *, dtype=torch.float64, device=None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """VDM's low-discrepancy times t_b = (u + b / n) mod 1, b = 0..n-1, u ~ U(0, 1): one per
    stratum of width 1/n, which lowers the variance of a batch mean; the values are not
    independent, so measure per-example variances with iid times instead.  -> (n,)
    """
    n = checks.size("n", n, 10_000_000, "one time per example of a batch (a batch of "
                    "more than 10^7 would not fit beside its images)")
    dtype = checks.floating_dtype("dtype", dtype)
    device = checks.device("device", device)
    checks.generator("generator", generator)
    u = torch.rand((), dtype=dtype, device=device, generator=generator)
    return torch.remainder(u + torch.arange(n, dtype=dtype, device=device) / n, 1.0)


def _draw_times(x, t, stratified, generator):
    if t is not None:
        return checks.unit_times("t", t, len(x)).to(x.dtype)
    if stratified:
        return stratified_times(len(x), dtype=x.dtype, device=x.device, generator=generator)
    return torch.rand(len(x), dtype=x.dtype, device=x.device, generator=generator)


def continuous_diffusion_loss(eps_model: EpsModel, schedule: Schedule, x: torch.Tensor, *,
                              t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                              generator: torch.Generator | None = None,
                              stratified: bool = False,
                              variance_gradient: bool = False,
                              variance_scale: float = 1.0) -> torch.Tensor:
    """VDM's continuous-time diffusion loss, one draw per example, in nats:

        L_inf(x) = -(1/2) E_t [SNR'(t) |x - x_hat|^2]
                 = (1/2) E_{t ~ U(0,1), eps} [gamma'(t) |eps - eps_hat(z_t; gamma_t)|^2].

    Args:
        eps_model: (z_t (B, ...), gamma_t (B,)) -> eps_hat (B, ...).
        schedule: a `Schedule` (LinearSchedule, CosineSchedule, LearnedSchedule, ...).
        x: (B, ...) data, e.g. (B, 1, 28, 28) images on [-1, 1] or points (B, D).
        t: times (B,) in [0, 1] (default: drawn, iid U(0, 1)).
        noise: eps (B, ...) (default: drawn).
        generator: for t and eps.
        stratified: draw t with `stratified_times` (lower variance of the batch mean; the
            per-example values are then not independent).
        variance_gradient: for a `LearnedSchedule`: back-propagating the mean of the
            returned values gives the schedule's interior parameters the gradient of
            mean(L^2) instead of mean(L) (VDM's variance trick, one backward pass), while
            its ends, the model and anything else in the graph get the ordinary gradient.
            Since E[L] does not depend on the interior, that minimizes the estimator's
            variance. Back-propagate through the returned L only once.
        variance_scale: c > 0, for a caller that back-propagates the mean of c L (e.g.
            c = 1 / (D ln 2), bits per dimension): the interior then gets the gradient of
            mean((c L)^2), the variance in the caller's units, so that its gradient is on
            the scale of the others (default 1: nats).

    Returns:
        (B,) per-example estimates: their mean is an unbiased estimate of E L_inf(x), their
        variance the estimator's.

    Book: :eq:`ch18-continuous-loss`, :eq:`ch18-variance-trick`.
    """
    _inputs(eps_model, schedule, generator)
    checks.batch("x", x)
    t = _draw_times(x, t, stratified, generator)
    noise = _noise(x, noise, generator)
    if variance_gradient:
        if not isinstance(schedule, LearnedSchedule):
            raise checks.ArgumentError("variance_gradient=True needs a LearnedSchedule (a fixed "
                                       f"schedule has no interior to train), got "
                                       f"{type(schedule).__name__}")
        gamma, dgamma, arm = schedule._routed(t)
    else:
        gamma, dgamma = schedule._gamma(t), schedule._derivative(t)
    z = _diffuse(x, gamma, noise)
    loss = 0.5 * dgamma * _flat_sum((_eps(eps_model, z, gamma) - noise) ** 2)
    if variance_gradient:
        arm(checks.positive("variance_scale", variance_scale) * loss)
    return loss


def discrete_diffusion_loss(eps_model: EpsModel, schedule: Schedule, x: torch.Tensor, T: int, *,
                            i: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """VDM's diffusion loss with T steps, one random step per example, in nats:

        L_T(x) = (T/2) E_{i ~ U{1..T}, eps} [(SNR(s) - SNR(t)) |x - x_hat|^2],
               t = i / T, s = (i - 1) / T,
               = (T/2) E [expm1(gamma_t - gamma_s) |eps - eps_hat(z_t; gamma_t)|^2],

    since |x - x_hat|^2 = |eps - eps_hat|^2 / SNR(t). Each term is T times the KL between
    q(z_s | z_t, x) and the model's p(z_s | z_t) (chapter 8's L_{t-1} with the posterior
    variance).

    Args:
        eps_model: (z_t (B, ...), gamma_t (B,)) -> eps_hat (B, ...).
        schedule: a `Schedule`.
        x: (B, ...) data.
        T: the number of steps, >= 1.
        i: the steps (B,) in 1..T (default: drawn uniformly).
        noise: eps (B, ...) (default: drawn).
        generator: for i and eps.

    Returns:
        (B,) per-example unbiased estimates of L_T(x).

    Book: :eq:`ch18-discrete-loss`.
    """
    _inputs(eps_model, schedule, generator)
    T = checks.count("T (the number of steps, a whole number >= 1)", T)
    checks.batch("x", x)
    B = len(x)
    if i is None:
        i = torch.randint(1, T + 1, (B,), device=x.device, generator=generator)
    else:
        i = checks.steps(i, B, T, x.device)
    noise = _noise(x, noise, generator)
    t = i.to(x.dtype) / T
    g = schedule._gamma(torch.cat([t, t - 1 / T]).clamp(min=0))
    g_t, g_s = g[:B], g[B:]
    z = _diffuse(x, g_t, noise)
    return 0.5 * T * torch.expm1(g_t - g_s) * _flat_sum((_eps(eps_model, z, g_t) - noise) ** 2)


def prior_kl(schedule: Schedule, x: torch.Tensor) -> torch.Tensor:
    """L_prior = KL(q(z_1 | x) || N(0, I)) = (1/2) sum [alpha_1^2 x^2 + sigma_1^2 - 1 -
    log sigma_1^2] in nats: (B, ...) -> (B,).

    Book: :eq:`ch18-bound`.
    """
    _check_schedule(schedule)
    checks.batch("x", x)
    g1 = schedule._gamma(torch.ones((), dtype=x.dtype, device=x.device))
    mean = torch.sigmoid(-g1).sqrt() * x
    logvar = F.logsigmoid(g1).expand_as(x)
    zero = torch.zeros_like(x)
    return _flat_sum(normal_kl(mean, logvar, zero, zero))


def reconstruction_nll(schedule: Schedule, x: torch.Tensor, *, decoder: str = "discretized",
                       eps_model: EpsModel | None = None, noise: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """L_reconstruction = -log p(x | z_0), z_0 ~ q(z_0 | x), in nats: (B, ...) -> (B,).

    The decoder is Gaussian in x with mean z_0 / alpha_0 (no network, as in VDM, since
    sigma_0 is small) or, with eps_model, x_hat(z_0; gamma_0), and standard deviation
    sigma_0 / alpha_0 = exp(gamma_0 / 2); "discretized" bins it into chapter 9's 256 levels
    of 8-bit pixels on [-1, 1] (`diffusion.discretized_gaussian_log_likelihood`, a
    probability; x is checked to lie on the grid; VDM instead normalizes the density over
    the 256 values), "gaussian" is its density (real data).

    Book: :eq:`ch18-bound`.
    """
    _inputs(eps_model, schedule, generator, optional=True)
    checks.one_of("decoder", decoder, DECODERS, " ('discretized': 8-bit images on [-1, 1]; "
                  "'gaussian': real-valued data)")
    checks.batch("x", x)
    if decoder == "discretized":
        checks.eight_bit(x, "reconstruction_nll")
    noise = _noise(x, noise, generator)
    g0 = schedule._gamma(torch.zeros((), dtype=x.dtype, device=x.device))
    alpha0, sigma0 = torch.sigmoid(-g0).sqrt(), torch.sigmoid(g0).sqrt()
    z0 = alpha0 * x + sigma0 * noise
    if eps_model is None:
        mean = z0 / alpha0
    else:
        mean = (z0 - sigma0 * _eps(eps_model, z0, g0.expand(len(x)))) / alpha0
    if decoder == "discretized":
        nll = -discretized_gaussian_log_likelihood(x, mean, (0.5 * g0).expand_as(x))
    else:
        nll = -gaussian_log_likelihood(x, mean, g0.expand_as(x))
    return _flat_sum(nll)


@dataclass
class VDMBound:
    """The negative ELBO of a batch, term by term, in nats per example.

    diffusion: (B,) the diffusion loss (L_T or L_inf, one draw per example).
    prior: (B,) KL(q(z_1 | x) || N(0, I)).
    reconstruction: (B,) -log p(x | z_0).
    dims: the number of dimensions of one example (for bits per dimension).
    """

    diffusion: torch.Tensor
    prior: torch.Tensor
    reconstruction: torch.Tensor
    dims: int

    @property
    def total(self) -> torch.Tensor:
        """-ELBO per example, nats: (B,)."""
        return self.diffusion + self.prior + self.reconstruction

    def bits_per_dim(self, nats: torch.Tensor | None = None) -> torch.Tensor:
        """nats / (dims ln 2): of the total by default, or of any nats tensor given."""
        nats = self.total if nats is None else _real_tensor("nats", nats)
        return nats / (self.dims * math.log(2))


def vdm_bound(eps_model: EpsModel, schedule: Schedule, x: torch.Tensor, *,
              T: int | None = None, decoder: str = "discretized",
              generator: torch.Generator | None = None, stratified: bool = False,
              variance_gradient: bool = False, variance_scale: float = 1.0) -> VDMBound:
    """The whole VDM bound per example: prior + diffusion + reconstruction, nats.

    Args:
        eps_model: (z_t (B, ...), gamma_t (B,)) -> eps_hat (B, ...).
        schedule: a `Schedule`.
        x: (B, ...) data; with decoder="discretized" the 256 levels -1 + 2k/255 of 8-bit
            images (chapter 9's bits/dim), e.g. (B, 1, 28, 28).
        T: None (default) for the continuous-time loss, or the number of steps.
        decoder: "discretized" (default) or "gaussian" (real-valued data).
        generator: for the draws.
        stratified: low-discrepancy times (continuous time only, `stratified_times`).
        variance_gradient: VDM's variance trick for a `LearnedSchedule` (continuous time
            only, see `continuous_diffusion_loss`).
        variance_scale: the units of that variance (see `continuous_diffusion_loss`;
            1 / (D ln 2) for a loss back-propagated in bits per dimension).

    Returns:
        VDMBound: `diffusion`, `prior`, `reconstruction` (B,), `total`, `bits_per_dim()`.

    Book: :eq:`ch18-bound`.
    """
    _inputs(eps_model, schedule, generator)
    checks.batch("x", x)
    if decoder == "discretized":
        checks.eight_bit(x, "vdm_bound")
    recon = reconstruction_nll(schedule, x, decoder=decoder, generator=generator)
    if T is None:
        diff = continuous_diffusion_loss(eps_model, schedule, x, generator=generator,
                                         stratified=stratified,
                                         variance_gradient=variance_gradient,
                                         variance_scale=variance_scale)
    else:
        if stratified or variance_gradient:
            raise checks.ArgumentError("stratified and variance_gradient are for the "
                                       "continuous-time loss: leave T=None")
        diff = discrete_diffusion_loss(eps_model, schedule, x, T, generator=generator)
    return VDMBound(diff, prior_kl(schedule, x), recon, x[0].numel())


# --- weighted losses (Kingma and Gao 2023) -------------------------------------------------------
def weighted_loss(eps_model: EpsModel, schedule: Schedule, x: torch.Tensor,
                  weighting: Weighting, *, t: torch.Tensor | None = None,
                  noise: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Kingma and Gao's weighted loss, one draw per example, lambda = -gamma the log-SNR:

        L_w(x) = (1/2) E_{t ~ U(0,1), eps} [w(lambda_t) (-d lambda / dt) |eps_hat - eps|^2]
               = (1/2) int w(lambda) E|eps_hat - eps|^2 d lambda.

    The schedule only decides where lambda is sampled (importance sampling, density
    p(lambda) = 1 / gamma'(t)); the weighting w is what defines the objective. w = 1 is
    the ELBO's diffusion loss (`continuous_diffusion_loss`).

    Args:
        eps_model: (z_t (B, ...), gamma_t (B,)) -> eps_hat (B, ...).
        schedule: a `Schedule` (the sampling of noise levels).
        x: (B, ...) data.
        weighting: w(lambda), a function of a tensor of log-SNRs (B,) -> (B,), e.g.
            `sigmoid_weighting` or `edm_weighting`.
        t: times (B,) in [0, 1] (default: drawn iid).
        noise: eps (B, ...) (default: drawn).
        generator: for t and eps.

    Returns:
        (B,) per-example unbiased estimates, nats.

    Book: :eq:`ch18-weighted-loss`.
    """
    _inputs(eps_model, schedule, generator)
    checks.function("weighting", weighting, WEIGHTING, args=1)
    checks.batch("x", x)
    t = _draw_times(x, t, False, generator)
    noise = _noise(x, noise, generator)
    gamma, dgamma = schedule._gamma(t), schedule._derivative(t)
    w = checks.per_point(weighting(-gamma), len(x), who="weighting(lambda)",
                         fix="return one weight per log-SNR, shaped like lambda")
    _weights(w, -gamma, who="weighting(lambda)")
    z = _diffuse(x, gamma, noise)
    return 0.5 * w.to(x.dtype) * dgamma * _flat_sum((_eps(eps_model, z, gamma) - noise) ** 2)


WEIGHTING = ("w(lambda) of a tensor of log-SNRs, returning one weight each, e.g. "
             "companion.vdm.sigmoid_weighting")


def _log_snrs(lam) -> torch.Tensor:
    """lam as a floating tensor of finite log-SNRs whose exp(-lam) and exp(lam) are finite in
    its dtype (|lam| <= 88 in float32, 709 in float64): beyond, the weightings' e^-lambda
    overflows and 0 x inf gave NaN (edm_weighting(-800))."""
    lam = _real_tensor("lam", lam)
    limit = math.log(torch.finfo(lam.dtype).max)
    if checks.on_host(lam) and lam.numel() and float(lam.detach().abs().max()) > limit:
        raise checks.ArgumentError(
            f"lam must be log-SNRs within [-{limit:.1f}, {limit:.1f}] in {lam.dtype}, got "
            f"values in [{float(lam.min()):.4g}, {float(lam.max()):.4g}]: exp(-lambda) "
            "overflows beyond (a schedule's log-SNRs lie in [-gamma_max, -gamma_min]; pass "
            "float64 for a wider range)")
    return lam


def _weights(w, lam: torch.Tensor, who: str = "weighting(lam)") -> torch.Tensor:
    """w, a weighting's output, checked: a tensor shaped like lam, finite and >= 0 (on the
    CPU: on a GPU each check would cost a device sync a training step)."""
    if not torch.is_tensor(w) or w.shape != lam.shape:
        raise checks.ArgumentError(
            f"{who} must return one weight per log-SNR, a tensor shaped like lam "
            f"{tuple(lam.shape)}, got {tuple(w.shape) if torch.is_tensor(w) else checks._got(w)}")
    if checks.on_host(w) and w.numel():
        v = w.detach()
        if not checks.all_finite(v) or bool((v < 0).any()):
            raise checks.ArgumentError(
                f"{who} must be finite and >= 0 (a weight of the loss at each noise level), "
                f"got values in [{float(v.min()):.4g}, {float(v.max()):.4g}]: a negative "
                "weight makes the loss negative")
    return w


def elbo_weighting(lam) -> torch.Tensor:
    """w(lambda) = 1: the ELBO (VDM's continuous-time loss). Monotone."""
    return torch.ones_like(_log_snrs(lam))


def sigmoid_weighting(lam, bias: float = 2.0) -> torch.Tensor:
    """w(lambda) = sigmoid(bias - lambda), the sigmoid weighting Kingma and Gao propose (the
    bias shifts it along the log-SNR axis): about 1 at low log-SNR (heavy noise), like the
    ELBO, decaying as e^(bias - lambda) where the noise is slight. Monotone.

    Book: :eq:`ch18-weight-sigmoid`.
    """
    b = checks.real("bias", bias)
    return torch.sigmoid(b - _log_snrs(lam))


def lsimple_weighting(lam, schedule: Schedule | None = None) -> torch.Tensor:
    """The weighting of chapter 9's L_simple = E_{t, eps} |eps - eps_hat|^2 (eps-prediction,
    t uniform, unit weight), default with chapter 9's chain (`LinearBetaSchedule()`):

        E_t |eps - eps_hat|^2 = int p(lambda) E|eps - eps_hat|^2 d lambda,
        so w(lambda) = 2 p(lambda),

    p(lambda) = 1 / gamma'(t(-lambda)) the density of the log-SNR that uniform t gives
    (`Schedule.log_snr_density`), 0 outside the schedule's range. For chapter 9's linear
    betas, -d lambda / dt = (1 - t_min) beta(u) (1 + e^lambda): p rises from about
    1 / (beta_max (1 + e^lambda)) at the noisy end to a peak near lambda = 0 and falls to 0 as
    lambda grows: NOT monotone (Kingma and Gao's table has epsilon-prediction for another
    schedule, not chapter 9's linear betas). The discrete chain,
    t uniform on 1..T, is this density up to O(1/T).

    Book: :eq:`ch18-weight-lsimple`.
    """
    sched = LinearBetaSchedule() if schedule is None else _check_schedule(schedule)
    return 2 * sched.log_snr_density(lam)


def edm_weighting(lam, P_mean: float = edm.P_MEAN, P_std: float = edm.P_STD,
                  sigma_data: float = edm.SIGMA_DATA) -> torch.Tensor:
    """The weighting of EDM's loss (chapter 17): E_{ln sigma ~ N(P_mean, P_std^2)}
    lambda(sigma) |D(y + sigma n; sigma) - y|^2, lambda(sigma) = (sigma^2 + sigma_data^2) /
    (sigma sigma_data)^2. With sigma^2 = 1/SNR = e^-lambda and D - y = -sigma (eps_hat - eps):

        lambda(sigma) |D - y|^2 = (1 + e^-lambda / sigma_data^2) |eps_hat - eps|^2,
        lambda = -2 ln sigma ~ N(-2 P_mean, (2 P_std)^2),
        w(lambda) = 2 N(lambda; -2 P_mean, (2 P_std)^2) (1 + e^-lambda / sigma_data^2)

    (Kingma and Gao's table: N(lambda; 2.4, 2.4^2)(e^-lambda + 0.5^2) / 0.5^2, which w is
    twice). NOT monotone: the Gaussian vanishes faster than e^-lambda grows
    at low lambda, so w rises and then falls.

    Book: :eq:`ch18-weight-edm`.
    """
    lam = _log_snrs(lam)
    m = -2 * checks.real("P_mean", P_mean)
    s = 2 * checks.positive("P_std", P_std)
    sd = checks.positive("sigma_data", sigma_data)
    density = torch.exp(-0.5 * ((lam - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
    return 2 * density * (1 + torch.exp(-lam) / sd**2)


def v_prediction_weighting(lam, schedule: Schedule | None = None) -> torch.Tensor:
    """The weighting of v-prediction, E_{t, eps} |v - v_hat|^2 with v = alpha eps - sigma x and
    t uniform under `schedule` (default: the untruncated cosine schedule). A v prediction
    and an eps prediction are affine in each other at z_t, v_hat - v = (eps_hat - eps) /
    alpha, so

        |v - v_hat|^2 = (1 + e^-lambda) |eps - eps_hat|^2,
        w(lambda) = 2 p(lambda) (1 + e^-lambda).

    The cosine schedule's p(lambda) = sech(lambda / 2) / (4 (b - a)) (`CosineSchedule`), and
    sech(lambda / 2) (1 + e^-lambda) = 2 e^(-lambda / 2), so w(lambda) = e^(-lambda / 2) / (b - a):
    (2 / pi) e^(-lambda / 2) on the whole line untruncated (Kingma and Gao: e^(-lambda / 2)).
    Monotone with the cosine schedule.

    Book: :eq:`ch18-weight-v`.
    """
    lam = _log_snrs(lam)
    if schedule is None:
        return (2 / math.pi) * torch.exp(-lam / 2)
    return 2 * _check_schedule(schedule).log_snr_density(lam) * (1 + torch.exp(-lam))


def flow_matching_weighting(lam) -> torch.Tensor:
    """The weighting of flow matching on the linear path (chapter 13; rectified flow),
    E_{tau ~ U(0,1), eps} |v_hat - (eps - x)|^2 with x_tau = (1 - tau) x + tau eps. The path is
    the VP chain rescaled: alpha = (1 - tau) / c, sigma = tau / c, so lambda = 2 log((1 - tau)
    / tau), tau = sigmoid(-lambda / 2) and p(lambda) = sigmoid(lambda / 2) sigmoid(-lambda / 2)
    / 2. With eps_hat = x_tau + (1 - tau) v_hat (`flow.eps_from_velocity`),
    v_hat - v = (eps_hat - eps) / (1 - tau), and 1 / (1 - tau) = 1 + e^(-lambda / 2):

        w(lambda) = 2 p(lambda) (1 + e^(-lambda / 2))^2
                  = sigmoid(-lambda / 2) / sigmoid(lambda / 2) = e^(-lambda / 2).

    Kingma and Gao's table: e^(-lambda / 2), v-prediction's with the cosine schedule up to a
    constant. Monotone.

    Book: :eq:`ch18-weight-flow`.
    """
    return torch.exp(-_log_snrs(lam) / 2)


def is_monotone_weighting(weighting: Weighting, lam, rtol: float = 1e-9) -> bool:
    """Whether w is non-increasing in lambda on the grid lam (increasing, (N,)): Kingma and
    Gao's condition for the weighted loss to be an ELBO of noise-augmented data (w(lambda)
    increasing in t). Increases up to rtol (relative) are rounding.
    """
    checks.function("weighting", weighting, WEIGHTING, args=1)
    lam = _grid("lam", lam)
    rtol = checks.real("rtol", rtol, low=0.0)
    out = weighting(lam)
    w = _weights(_real_tensor("weighting(lam)", out) if not torch.is_tensor(out) else out,
                 lam).detach()
    return bool((w[1:] <= w[:-1] + rtol * w[:-1].abs().clamp(min=1e-300)).all())


def _grid(name: str, lam) -> torch.Tensor:
    g = _real_tensor(name, lam).detach().reshape(-1)
    if len(g) < 2 or bool((g[1:] <= g[:-1]).any()):
        raise checks.ArgumentError(f"{name} must be a grid of log-SNRs, at least 2, strictly "
                                   "increasing (e.g. torch.linspace(-5, 13.3, 4001))")
    return g


def weighted_loss_as_elbos(weighting: Weighting, lam, partial_losses: torch.Tensor
                           ) -> torch.Tensor:
    """Kingma and Gao's identity, the right-hand side: for w non-increasing in lambda,

        (1/2) int_{lam_min}^{lam_max} w(lambda) E|eps - eps_hat|^2 d lambda
            = int (-w'(lambda)) L(lambda; x) d lambda + w(lam_max) L(lam_max; x),

    with L(lambda; x) = (1/2) int_{lam_min}^{lambda} E|eps - eps_hat|^2 d lambda' the diffusion
    loss over the levels noisier than lambda (the ELBO of data noised to level lambda, up
    to a constant that does not depend on the model). Integration by parts, L(lam_min) = 0;
    -w' >= 0 and -w' + w(lam_max) delta(lam_max) integrates to w(lam_min): the weighted loss
    is w(lam_min) times an expectation of such ELBOs over noise levels.

    Args:
        weighting: w(lambda), non-increasing on the grid (refused otherwise).
        lam: the grid (N,), increasing, from lam_min to lam_max.
        partial_losses: L(lambda; x) on the grid, (..., N) (e.g. `gaussian_partial_loss`).

    Returns:
        (...): the right-hand side by the trapezoidal rule (w' by autograd).

    Book: :eq:`ch18-kg-identity`.
    """
    lam = _grid("lam", lam)
    if not is_monotone_weighting(weighting, lam):
        raise checks.ArgumentError(
            "weighting increases with lambda somewhere on the grid: Kingma and Gao's identity "
            "(an expectation of ELBOs over noise levels) needs w non-increasing in lambda; "
            "for a non-monotone w (EDM's, L_simple's) compute the weighted loss itself")
    L = _real_tensor("partial_losses", partial_losses)
    if L.shape[-1:] != lam.shape:
        raise checks.ArgumentError(f"partial_losses must be (..., {len(lam)}), one value per "
                                   f"grid point, got {tuple(L.shape)}")
    with torch.enable_grad():
        ll = lam.clone().requires_grad_(True)
        w = weighting(ll)
        if w.requires_grad:
            dw = torch.autograd.grad(w.sum(), ll)[0]
        elif bool((w == w[0]).all()):  # a constant weighting (elbo_weighting)
            dw = torch.zeros_like(lam)
        else:  # computed outside torch (NumPy, .item(), detach): its w' would be taken as 0
            raise checks.ArgumentError(
                "weighting must be differentiable in torch: Kingma and Gao's identity takes "
                "w'(lambda) by autograd, but its output does not require grad and is not "
                "constant (it would be taken as 0). Likely it is computed with NumPy or math, "
                "or calls .detach() / .item(); compute it with torch operations on lam")
    w_max = weighting(lam[-1:]).detach()[0]
    return torch.trapezoid(-dw.to(L) * L, lam.to(L), dim=-1) + w_max.to(L) * L[..., -1]


# --- closed forms on Gaussian data: x ~ N(mu, diag(s^2)), float64 -------------------------------
def _std(std) -> torch.Tensor:
    s = _real_tensor("std", std).to(torch.float64).reshape(-1)
    if len(s) == 0 or not bool((s > 0).all()):
        raise checks.ArgumentError("std must be the data's standard deviations, > 0 (a number "
                                   "or one per dimension (D,))")
    return s


def _snr(name: str, value) -> torch.Tensor:
    v = _real_tensor(name, value).to(torch.float64)
    if not bool((v >= 0).all()):
        raise checks.ArgumentError(f"{name} must be a signal-to-noise ratio >= 0")
    return v


def _gaussian_inputs(z, gamma, D: int) -> None:
    """z (B, D) and gamma (B,) for a closed-form eps model of D dimensions: (4, 1) was
    broadcast against a mean of 2 dimensions to (4, 2)."""
    checks.points("z", z, "flatten images first")
    if z.shape[1] != D:
        raise checks.ArgumentError(f"z must be (B, {D}), one column per dimension of the "
                                   f"data's mean, got shape {tuple(z.shape)}")
    if not torch.is_tensor(gamma) or gamma.shape not in ((len(z),), ()):
        got = tuple(gamma.shape) if torch.is_tensor(gamma) else checks._got(gamma)
        raise checks.ArgumentError(f"gamma must be one noise level per row of z ({len(z)},), "
                                   f"got {got}")


def gaussian_eps_model(mean, std) -> EpsModel:
    """The optimal noise predictor for data N(mean, diag(std^2)), as eps_model(z, gamma):
    with k = SNR s^2 / (1 + SNR s^2) = s^2 / (e^gamma + s^2),

        x_hat = mu + k (z / alpha - mu),
        eps_hat = (z - alpha x_hat) / sigma = (1 - k) (z - alpha mu) / sigma.

    mean: (D,); std: a number or (D,). Returns eps_model(z (B, D), gamma (B,)) -> (B, D) in
    z's dtype. Built with another std than the data's, it is a mis-specified (linear) model
    whose errors `gaussian_eps_mse(..., model_std=)` gives.

    Book: :eq:`ch18-gaussian-denoiser`.
    """
    mu = _real_tensor("mean", mean).to(torch.float64).reshape(-1)
    s = _std(std)
    s2 = (s.expand_as(mu) if len(s) == 1 else s) ** 2
    if s2.shape != mu.shape:
        raise checks.ArgumentError(f"mean {tuple(mu.shape)} and std {tuple(s2.shape)} must "
                                   "have one value per dimension (or std one number)")

    def eps_model(z, gamma):
        _gaussian_inputs(z, gamma, len(mu))
        g = gamma.to(z.dtype).reshape(-1, 1)
        eg = torch.exp(g)
        alpha = torch.sigmoid(-g).sqrt()
        # (1 - k) / sigma = e^(g/2) sqrt(1 + e^g) / (e^g + s^2): no 0/0 at small sigma
        c = torch.exp(g / 2) * torch.sqrt(1 + eg) / (eg + s2.to(z))
        return c * (z - alpha * mu.to(z))
    return eps_model


def mixture_eps_model(gm: GaussianMixture) -> EpsModel:
    """The optimal noise predictor for chapter 8's Gaussian mixture (`toy.GaussianMixture`),
    eps_hat = (z - alpha x_hat) / sigma with x_hat = E[x | z] in closed form
    (`toy.diffused_posterior_mean` at alpha_bar = sigmoid(-gamma)). Returns
    eps_model(z (B, D), gamma (B,)) -> (B, D), computed in the mixture's dtype.
    """
    if not isinstance(gm, GaussianMixture):
        raise checks.ArgumentError(f"mixture_eps_model takes a companion.toy.GaussianMixture, "
                                   f"got {type(gm).__name__}")

    def eps_model(z, gamma):
        _gaussian_inputs(z, gamma, gm.means.shape[1])
        zz = z.to(gm.means.dtype)
        g = gamma.to(zz.dtype)
        x_hat = diffused_posterior_mean(gm, zz, torch.sigmoid(-g))
        g = g.reshape(-1, 1)
        return ((zz - torch.sigmoid(-g).sqrt() * x_hat) / torch.sigmoid(g).sqrt()).to(z.dtype)
    return eps_model


def gaussian_mmse(v, std) -> torch.Tensor:
    """mmse(SNR) = sum_d s_d^2 / (1 + SNR s_d^2): E|x - E[x | z]|^2 of Gaussian data observed
    at SNR v, summed over dimensions. v: any shape (float64) -> its shape.

    Book: :eq:`ch18-mmse`.
    """
    v = _snr("v (the SNR)", v)
    s2 = _std(std) ** 2
    return (s2 / (1 + v[..., None] * s2)).sum(-1)


def gaussian_mutual_information(v, std) -> torch.Tensor:
    """I(x; sqrt(SNR) x + n) = (1/2) sum_d log(1 + SNR s_d^2) nats, n ~ N(0, I), Gaussian x;
    d I / d SNR = mmse(SNR) / 2 (Guo, Shamai and Verdu 2005, the I-MMSE relation).
    v = SNR: any shape -> its shape.

    Book: :eq:`ch18-immse`.
    """
    v = _snr("v (the SNR)", v)
    s2 = _std(std) ** 2
    return 0.5 * torch.log1p(v[..., None] * s2).sum(-1)


def gaussian_eps_mse(gamma, std, model_std=None) -> torch.Tensor:
    """E|eps - eps_hat(z; gamma)|^2 on Gaussian data at level gamma (any shape, summed over
    dimensions) for the Gaussian noise predictor with the right mean and std `model_std`
    (default: the data's, the optimal one, SNR mmse(SNR)): with k = SNR m^2 / (1 + SNR m^2),

        E|eps - eps_hat|^2 = sum_d [SNR (1 - k_d)^2 s_d^2 + k_d^2]
                           (= sum_d SNR s_d^2 / (1 + SNR s_d^2) at m = s).
    """
    g = _real_tensor("gamma", gamma).to(torch.float64)[..., None]
    s2 = _std(std) ** 2
    m2 = s2 if model_std is None else _model_std(model_std, s2) ** 2
    k = m2 / (torch.exp(g) + m2)
    return (torch.exp(-g) * (1 - k) ** 2 * s2 + k**2).sum(-1)


def _model_std(model_std, s2: torch.Tensor) -> torch.Tensor:
    """model_std (one number, or one per dimension of std) expanded to std's dimensions."""
    m = _std(model_std)
    if len(m) not in (1, len(s2)):
        raise checks.ArgumentError(f"model_std must be one number or one per dimension of "
                                   f"std ({len(s2)},), got {len(m)} values")
    return m.expand_as(s2)


def gaussian_continuous_loss(snr_0, snr_1, std) -> torch.Tensor:
    """L_inf with the optimal denoiser on Gaussian data, in closed form:

        L_inf = (1/2) int_{SNR(1)}^{SNR(0)} mmse(v) dv
              = (1/2) sum_d log((1 + SNR(0) s_d^2) / (1 + SNR(1) s_d^2)) = I(SNR(0)) - I(SNR(1)),

    which depends on the schedule only through its ends. snr_0 = SNR(0) (the least noisy
    end) must exceed snr_1 = SNR(1); float64.

    Book: :eq:`ch18-gaussian-loss`.
    """
    a, b = _snr("snr_0 (SNR(0))", snr_0), _snr("snr_1 (SNR(1))", snr_1)
    checks.broadcastable("snr_0 and snr_1", a, b)
    if not bool((a > b).all()):
        raise checks.ArgumentError("snr_0 = SNR(0) must exceed snr_1 = SNR(1) (t = 0 is the "
                                   "least noisy end: SNR decreases with t): swap them")
    return gaussian_mutual_information(a, std) - gaussian_mutual_information(b, std)


def gaussian_discrete_loss(schedule: Schedule, T: int, std) -> torch.Tensor:
    """L_T with the optimal denoiser on Gaussian data, the sum over the T steps, float64:

        L_T = (1/2) sum_{i=1}^T (SNR(s_i) - SNR(t_i)) mmse(SNR(t_i)),
        t_i = i / T, s_i = (i - 1) / T.

    mmse decreases in SNR, so each term is the largest value on its interval times its
    width: L_T is an upper Riemann sum of L_inf's integral, never below it, and refining
    the steps (doubling T) never increases it; L_T - L_inf = O(1/T).

    Book: :eq:`ch18-gaussian-discrete`.
    """
    _check_schedule(schedule)
    T = _chain_steps(T)
    with torch.no_grad():
        g = schedule._gamma(torch.arange(T + 1, dtype=torch.float64,
                                         device=schedule._device()) / T).cpu()
    snr_t = torch.exp(-g[1:])
    dsnr = snr_t * torch.expm1(g[1:] - g[:-1])            # SNR(s) - SNR(t) > 0
    return 0.5 * (dsnr * gaussian_mmse(snr_t, std)).sum()


def gaussian_partial_loss(lam, lam_min: float, std) -> torch.Tensor:
    """L(lambda; x) = (1/2) int_{lam_min}^{lambda} E|eps - eps_hat|^2 d lambda' with the optimal
    denoiser on Gaussian data: E|eps - eps_hat|^2 = SNR mmse(SNR) and d SNR = SNR d lambda, so
    by I-MMSE it is I(e^lambda) - I(e^lam_min). lam: any shape, >= lam_min.

    Book: :eq:`ch18-kg-identity`.
    """
    lam = _log_snrs(_real_tensor("lam", lam).to(torch.float64))  # e^lam finite
    lo = checks.real("lam_min", lam_min)
    if not bool((lam >= lo).all()):
        raise checks.ArgumentError("lam must be >= lam_min (L integrates from lam_min up)")
    return (gaussian_mutual_information(torch.exp(lam), std)
            - gaussian_mutual_information(torch.tensor(math.exp(lo), dtype=torch.float64), std))


def gaussian_weighted_loss(weighting: Weighting, lam, std, model_std=None) -> torch.Tensor:
    """(1/2) int w(lambda) E|eps - eps_hat|^2 d lambda over the grid lam (N,) (trapezoidal
    rule), on Gaussian data with the Gaussian noise predictor of std `model_std` (default
    the optimal one): what `weighted_loss` estimates, as a number. float64 0-dim.
    """
    checks.function("weighting", weighting, WEIGHTING, args=1)
    lam = _grid("lam", lam).to(torch.float64)
    w = _real_tensor("weighting(lam)", weighting(lam)).detach().to(torch.float64)
    _weights(w.expand_as(lam) if w.dim() == 0 else w, lam)  # a constant: one number
    return 0.5 * torch.trapezoid(w * gaussian_eps_mse(-lam, std, model_std), lam)


def gaussian_bound(schedule: Schedule, mean, std) -> VDMBound:
    """The expected VDM bound on Gaussian data N(mean, diag(std^2)) with the optimal denoiser
    and the "gaussian" decoder (continuous time), each term as a 0-dim float64 tensor:

        diffusion = gaussian_continuous_loss(SNR(0), SNR(1), std),
        prior = (1/2) sum_d [alpha_1^2 (mu_d^2 + s_d^2 - 1) - log sigmoid(gamma_1)],
        reconstruction = (D/2) (log 2 pi + gamma_0 + 1).

    As gamma_0 -> -inf and gamma_1 -> +inf the total tends to the entropy
    (1/2) sum_d log(2 pi e s_d^2): the bound is tight.
    """
    _check_schedule(schedule)
    s = _std(std)
    mu = _real_tensor("mean", mean).to(torch.float64).reshape(-1)
    if len(s) == 1 and len(mu) > 1:  # one std for every dimension of the mean
        s = s.expand_as(mu)
    if len(mu) not in (1, len(s)):
        raise checks.ArgumentError(f"mean must be one number or one per dimension of std "
                                   f"({len(s)},), got {len(mu)} values")
    mu = mu.expand_as(s)
    with torch.no_grad():
        g0, g1 = (v.cpu() for v in schedule.ends(torch.float64))
    diff = gaussian_continuous_loss(torch.exp(-g0), torch.exp(-g1), s)
    prior = 0.5 * (torch.sigmoid(-g1) * (mu**2 + s**2 - 1) - F.logsigmoid(g1)).sum()
    recon = 0.5 * len(s) * (LOG_2PI + g0 + 1)
    return VDMBound(diff, prior, recon, len(s))
