"""The design space of diffusion models (Karras, Aittala, Aila and Laine 2022, EDM).

Convention, used everywhere in this module: the variance-exploding (VE) form. A noisy point
is x = y + sigma n, y the data, n ~ N(0, I), sigma in [0, inf) the noise level; no scaling.
Every model is a denoiser D(x; sigma), the estimate of y (x_0-prediction), called as
D(x (B, ...), sigma) with sigma a float or a tensor (B,) of one level per point, returning
(B, ...). The probability-flow ODE in these coordinates is

    dx / dsigma = (x - D(x; sigma)) / sigma,

run from sigma_max down to 0 on a decreasing grid of noise levels (`rho_grid`).

A variance-preserving (VP) point x_t = sqrt(alpha_bar) y + sqrt(1 - alpha_bar) n, chapter 8's
chain, is the same point scaled: x = x_t / sqrt(alpha_bar) with
sigma = sqrt(1 - alpha_bar) / sqrt(alpha_bar), so x_t = x / sqrt(1 + sigma^2). The other
predictions are affine in D (`predictions`, `denoiser_from`):

    eps = (x - D) / sigma,                    D = x - sigma eps,
    v   = alpha eps - s D  (VP velocity),     D = alpha^2 x - s v,
    u   = eps - D  (chapter 13's flow),       D = (x - sigma u) / (1 + sigma),

with alpha = 1 / sqrt(1 + sigma^2) and s = sigma alpha, the VP signal and noise scales.

Preconditioning (`preconditioning`, `Denoiser`): a network F is wrapped as
D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), and trained on (`edm_loss`)

    E_{sigma, y, n} lambda(sigma) |D(y + sigma n; sigma) - y|^2
    = E c_out^2 lambda(sigma) |F(c_in x; c_noise) - (y - c_skip x) / c_out|^2,

so the network's input c_in x and its effective target (y - c_skip x) / c_out have unit
variance at every sigma when the data's std is sigma_data and
    c_in = 1 / sqrt(sigma^2 + sigma_data^2),      c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
    c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),   lambda = 1 / c_out^2,
with c_noise = ln(sigma) / 4 and ln sigma ~ N(P_mean, P_std^2), P_mean = -1.2, P_std = 1.2.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import torch
from torch import nn

from . import toy
from .diffusion import spaced_timesteps
from .run import checks
from .run.progress import progress
from .sde import interpolate_steps
from .toy import GaussianMixture

DenoiserFn = Callable[[torch.Tensor, object], torch.Tensor]
KINDS = ("edm", "eps", "x0", "v")
PREDICTIONS = ("x0", "eps", "v", "flow")
SIGMA_DATA = 0.5       # EDM's data std for images on [-1, 1]
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
P_MEAN, P_STD = -1.2, 1.2


# --- noise levels as tensors -------------------------------------------------------------------
def _levels(sigma, x: torch.Tensor, *, positive: bool = False) -> torch.Tensor:
    """sigma, a number or one level per point (B,), as x's dtype shaped (B, 1, ..., 1) (or a
    0-dim tensor), every level finite and >= 0 (> 0 with `positive`), checked as
    `_checked_levels` checks."""
    if torch.is_tensor(sigma) and sigma.dim() > 0:
        if sigma.shape != (len(x),):
            raise checks.ArgumentError(f"sigma must be a number or one noise level per point "
                                       f"({len(x)},), got shape {tuple(sigma.shape)}")
        _checked_levels(sigma, positive=positive)
        return sigma.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    where = "> 0" if positive else ">= 0"
    s = checks.real(f"sigma (a noise level {where})", sigma, low=0.0, open_low=positive)
    return torch.tensor(s, dtype=x.dtype, device=x.device)


def _checked_levels(s, *, positive: bool):
    """s if it is a number, or a tensor of noise levels all finite and >= 0 (> 0 with
    `positive`). A number is checked by the caller; a tensor here when it is on the CPU (on
    a GPU that would cost a device sync a call, as the U-Net's own check of its steps)."""
    if torch.is_tensor(s) and checks.on_host(s) and s.numel():
        ok = torch.isfinite(s) & ((s > 0) if positive else (s >= 0))
        if not bool(ok.all()):
            raise checks.ArgumentError(
                f"every sigma must be a finite noise level {'> 0' if positive else '>= 0'}, "
                f"got {s.detach()[~ok].flatten()[0].item():g} ({int((~ok).sum())} of "
                f"{s.numel()} levels)")
    return s


def _denoised(denoiser: DenoiserFn, x: torch.Tensor, sigma) -> torch.Tensor:
    """denoiser(x, sigma), refused unless shaped like x (a (B, 1) would broadcast)."""
    return checks.output(denoiser(x, sigma), x, who="the denoiser D(x, sigma)",
                         what="a denoised point for every point")


# --- four faces of one denoiser --------------------------------------------------------------
def predictions(x: torch.Tensor, denoised: torch.Tensor, sigma) -> dict[str, torch.Tensor]:
    """The four predictions a denoiser's output D implies at x and sigma > 0:
        x0 = D,  eps = (x - D) / sigma,  v = alpha eps - s D,  flow = eps - D,
    alpha = 1 / sqrt(1 + sigma^2), s = sigma alpha (the VP scales), `flow` chapter 13's
    velocity on the linear path. x, denoised: (B, ...); sigma a number or (B,).
    Returns a dict of (B, ...) tensors keyed "x0", "eps", "v", "flow".

    Book: :eq:`ch17-faces`.
    """
    checks.same_shape("x and denoised", checks.batch("x", x), denoised)
    checks.finite("x", x)
    checks.finite("denoised", denoised)
    s = _levels(sigma, x)
    if not bool((s > 0).all()):
        raise checks.ArgumentError("at sigma = 0 the noise eps is 0/0: predictions need "
                                   "sigma > 0")
    eps = (x - denoised) / s
    alpha = (1 + s**2).rsqrt()
    return {"x0": denoised, "eps": eps, "v": alpha * eps - s * alpha * denoised,
            "flow": eps - denoised}


def denoiser_from(kind: str, x: torch.Tensor, prediction: torch.Tensor, sigma) -> torch.Tensor:
    """D from one of the predictions of `predictions` (the inverse maps):
        x0: D = x0,  eps: D = x - sigma eps,  v: D = alpha^2 x - s v,
        flow: D = (x - sigma u) / (1 + sigma).
    x, prediction: (B, ...); sigma a number or (B,). Returns (B, ...).

    Book: :eq:`ch17-faces`.
    """
    checks.one_of("kind", kind, PREDICTIONS, " (what the network predicts)")
    checks.same_shape("x and prediction", checks.batch("x", x), prediction)
    checks.finite("x", x)
    checks.finite("prediction", prediction)
    s = _levels(sigma, x)
    if kind == "x0":
        return prediction
    if kind == "eps":
        return x - s * prediction
    if kind == "v":
        return (x - s * (1 + s**2).sqrt() * prediction) / (1 + s**2)
    return (x - s * prediction) / (1 + s)


# --- preconditioning -----------------------------------------------------------------------
def preconditioning(sigma, kind: str = "edm", sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out, c_in, c_noise) at noise level sigma (a number or a tensor, every level
    finite and > 0; a tensor's are checked on the CPU): D(x; sigma) = c_skip x + c_out
    F(c_in x; c_noise).

        edm: c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
             c_in = 1 / sqrt(sigma^2 + sd^2)                       (sd = sigma_data)
        eps: c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(1 + sigma^2)   (F predicts eps)
        x0:  c_skip = 0, c_out = 1,      c_in = 1 / sqrt(1 + sigma^2)   (F predicts y)
        v:   c_skip = 1 / (1 + sigma^2), c_out = -sigma / sqrt(1 + sigma^2),
             c_in = 1 / sqrt(1 + sigma^2)                          (F predicts v)
    and c_noise = ln(sigma) / 4 for all. The last three feed F the VP point x_t = x /
    sqrt(1 + sigma^2); v is edm with sd = 1 and the sign of c_out flipped.
    Returns tensors (float64 for a number; sigma's dtype for a tensor).

    Book: :eq:`ch17-precond`, :eq:`ch17-edm-coeffs`.
    """
    checks.one_of("kind", kind, KINDS, " (the preconditioning: EDM's, or a VP network "
                  "predicting eps, x0 or v)")
    sd = checks.positive("sigma_data (the data's standard deviation)", sigma_data)
    s = _checked_levels(sigma, positive=True) if torch.is_tensor(sigma) else torch.tensor(
        checks.positive("sigma (a noise level > 0)", sigma), dtype=torch.float64)
    one = torch.ones_like(s)
    vp_in = (1 + s**2).rsqrt()
    if kind == "edm":
        c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
        c_in = (s**2 + sd**2).rsqrt()
    elif kind == "eps":
        c_skip, c_out, c_in = one, -s, vp_in
    elif kind == "x0":
        c_skip, c_out, c_in = 0 * one, one, vp_in
    else:
        c_skip, c_out, c_in = 1 / (1 + s**2), -s * vp_in, vp_in
    return c_skip, c_out, c_in, s.log() / 4


@torch.no_grad()
def precondition_variances(y: torch.Tensor, sigmas, kind: str = "edm",
                           sigma_data: float = SIGMA_DATA,
                           generator: torch.Generator | None = None):
    """The variances of the network's input c_in x and of its effective target
    (y - c_skip x) / c_out over a batch y (B, ...) noised at each level of `sigmas` (one
    noise draw per level), pooled over every element: float64 (S,), (S,). With EDM's
    coefficients and sigma_data the data's pooled std, both are about 1 at every sigma
    (the digits on [-1, 1] have std 0.62, not EDM's 0.5 for CIFAR-10).

    Book: :eq:`ch17-unit-variance`, :eq:`ch17-edm-coeffs`.
    """
    checks.finite("y", checks.batch("y", y, min_dims=2))
    levels = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    ins, targets = [], []
    for sigma in levels.tolist():
        c_skip, c_out, c_in, _ = preconditioning(sigma, kind, sigma_data)
        x = y + sigma * torch.randn(y.shape, dtype=y.dtype, device=y.device,
                                    generator=generator)
        ins.append((c_in.item() * x).double().var().item())
        targets.append(((y - c_skip.item() * x) / c_out.item()).double().var().item())
    return torch.tensor(ins, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64)


class Denoiser(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) around a network F (`preconditioning`).

    net: F(x (B, ...), c_noise (B,)) -> (B, ...) (for the book's U-Net, which takes integer
    steps, wrap it in `StepConditioned`). kind: "edm" (default) or a VP face, "eps", "x0",
    "v". sigma_data: the data's standard deviation (0.5 for images on [-1, 1]).
    Called as D(x (B, ...), sigma a number or (B,)) -> (B, ...) in x's dtype, sigma finite
    and >= 0 (a tensor's levels are checked on the CPU, not on a GPU, where
    that would cost a device sync a call).

    Book: :eq:`ch17-precond`.
    """

    def __init__(self, net: nn.Module, kind: str = "edm", sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.kind = checks.one_of("kind", kind, KINDS)
        self.sigma_data = checks.positive("sigma_data", sigma_data)
        self.net = net

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        checks.batch("x", x, min_dims=2)
        s = _levels(sigma, x)
        if s.dim() == 0:
            s = s.expand(len(x)).reshape(-1, *([1] * (x.dim() - 1)))
        c_skip, c_out, c_in, c_noise = preconditioning(s.clamp(min=1e-30), self.kind,
                                                       self.sigma_data)
        f = checks.output(self.net(c_in * x, c_noise.reshape(-1)), x,
                          who="the network F(c_in x, c_noise)", what="one output per pixel")
        return c_skip * x + c_out * f.to(x.dtype)


class StepConditioned(nn.Module):
    """A network of integer steps, model(x, t int64 (B,)) with t in 1..T (the book's U-Net,
    T from its config or given), as an F(x, c_noise): ln sigma = 4 c_noise is mapped
    linearly from [ln sigma_min, ln sigma_max] onto the steps 1..T and rounded (levels
    outside go to the end steps). With T = 1000 over EDM's range, neighbouring steps are
    0.0106 apart in ln sigma.
    """

    def __init__(self, model: nn.Module, sigma_min: float = SIGMA_MIN,
                 sigma_max: float = SIGMA_MAX, T: int | None = None):
        super().__init__()
        self.model = model
        lo, hi = checks.sigma_range(sigma_min, sigma_max)
        self.log_min, self.log_max = math.log(lo), math.log(hi)
        T = getattr(getattr(model, "config", None), "T", None) if T is None else T
        self.T = checks.count("T (the model's steps; pass T= for a model without "
                              "config.T)", T, minimum=2)

    def steps(self, c_noise: torch.Tensor) -> torch.Tensor:
        """c_noise (B,) -> the model's steps, int64 (B,) in 1..T."""
        u = (4 * c_noise.double() - self.log_min) / (self.log_max - self.log_min)
        return (1 + (u.clamp(0, 1) * (self.T - 1)).round()).long()

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.steps(c_noise))


class VPDenoiser:
    """A chain's noise predictor eps_model(x_t, t) (chapter 9's network, t in 1..T) as a
    denoiser in VE coordinates:

        D(x; sigma) = x - sigma eps(x / sqrt(1 + sigma^2), t(sigma)),
        sigma_t = sqrt(1 - alpha_bar_t) / sqrt(alpha_bar_t).

    alphas_bar: the chain's alpha_bar_1..T (decreasing, `Diffusion.alphas_bar`). At a level
    sigma_t of the chain, t(sigma) = t (one call); between two, the network's outputs at the
    neighbouring steps are interpolated linearly in ln sigma (one batch of 2B). sigma is a
    number in [sigma_min, sigma_max] = [sigma_1, sigma_T].

    Book: :eq:`ch17-vp-sigma`.
    """

    def __init__(self, eps_model, alphas_bar: torch.Tensor):
        ab = checks.chain_alphas_bar(alphas_bar, 0.0)
        self.eps_model = eps_model
        self.sigmas = ((1 - ab) / ab).sqrt()                     # float64 (T,), increasing
        self._log = self.sigmas.log().tolist()
        self.T = len(ab)

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def step(self, sigma: float) -> float:
        """The chain's real-valued step at level sigma, linear in ln sigma between steps."""
        lo, hi = self.sigma_min, self.sigma_max
        sigma = checks.real(f"sigma (the chain's levels span [{lo:.4g}, {hi:.4g}])", sigma,
                            low=lo * (1 - 1e-9), high=hi * (1 + 1e-9))
        ls, la = math.log(sigma), self._log
        k = min(max(bisect.bisect_left(la, ls), 1), self.T - 1)  # la[k-1] < ls <= la[k]
        w = min(max((ls - la[k - 1]) / (la[k] - la[k - 1]), 0.0), 1.0)
        return float(k + 1) if w == 1.0 else k + w

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        checks.batch("x", x, min_dims=2)
        sigma = checks.real("sigma (one level for the batch)", sigma, low=0.0)
        eps = interpolate_steps(self.eps_model, x / math.sqrt(1 + sigma**2), self.step(sigma))
        return x - sigma * eps.to(x.dtype)

    def grid(self, n_steps: int) -> torch.Tensor:
        """`chain_grid` of this chain: DDIM's kept steps as levels, largest first, then 0."""
        return _chain_grid(self.sigmas, n_steps)


# --- time grids ------------------------------------------------------------------------------
def rho_grid(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
             rho: float = RHO) -> torch.Tensor:
    """EDM's grid of n steps: sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho)
    - sigma_max^(1/rho)))^rho for i = 0..n-1, then sigma_n = 0.  -> float64 (n + 1,)

    rho = 1 is uniform in sigma; large rho approaches uniform in ln sigma (`log_sigma_grid`);
    rho = 7 spends the steps near sigma_min. n = 1: [sigma_max, 0]. n is at most
    checks.MAX_GRID_STEPS = 100,000 (chapter 17 runs up to 128; the book's longest solve
    has 4,000 steps).

    Book: :eq:`ch17-rho-grid`.
    """
    n = checks.grid_steps("n (the number of steps, a positive int)", n)
    lo, hi = checks.sigma_range(sigma_min, sigma_max)
    rho = checks.positive("rho (the grid's exponent, EDM uses 7)", rho)
    if n == 1:
        return torch.tensor([hi, 0.0], dtype=torch.float64)
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    s = (hi ** (1 / rho) + i * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    s[0], s[-1] = hi, lo  # exact ends, whatever the rounding of the powers
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


def log_sigma_grid(n: int, sigma_min: float = SIGMA_MIN,
                   sigma_max: float = SIGMA_MAX) -> torch.Tensor:
    """n steps uniform in ln sigma from sigma_max to sigma_min, then 0: float64 (n + 1,);
    n at most checks.MAX_GRID_STEPS = 100,000, as `rho_grid`."""
    n = checks.grid_steps("n (the number of steps, a positive int)", n)
    lo, hi = checks.sigma_range(sigma_min, sigma_max)
    if n == 1:
        return torch.tensor([hi, 0.0], dtype=torch.float64)
    s = torch.linspace(math.log(hi), math.log(lo), n, dtype=torch.float64).exp()
    s[0], s[-1] = hi, lo
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


def chain_grid(alphas_bar: torch.Tensor, n_steps: int) -> torch.Tensor:
    """A grid uniform in a chain's steps: the levels sigma_t = sqrt((1 - alpha_bar_t) /
    alpha_bar_t) of DDIM's kept steps `spaced_timesteps(T, n_steps)`, largest first, then
    0: float64 (n_steps + 1,). With chapter 9's schedule, the "uniform in t" grid."""
    ab = checks.chain_alphas_bar(alphas_bar, 0.0)
    return _chain_grid(((1 - ab) / ab).sqrt(), n_steps)


def _chain_grid(sigmas: torch.Tensor, n_steps: int) -> torch.Tensor:
    steps = spaced_timesteps(len(sigmas), n_steps)[::-1]
    kept = sigmas[[t - 1 for t in steps]]
    return torch.cat([kept, torch.zeros(1, dtype=torch.float64)])


# --- samplers of dx/dsigma = (x - D(x; sigma)) / sigma ------------------------------------------
def _pairs(x: torch.Tensor, sigmas):
    """The grid's steps (sigma_i, sigma_{i+1}) through the book's loop bar (silent), after
    checking the state and the grid."""
    checks.batch("x", x, min_dims=2)
    s = checks.sigma_grid(sigmas)
    return progress(list(zip(s[:-1], s[1:], strict=True)), quiet=True)


def euler(denoiser: DenoiserFn, x: torch.Tensor, sigmas) -> torch.Tensor:
    """Euler's method on the ODE: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (x_i - D_i) / sigma_i,
    one evaluation a step; a step to sigma = 0 returns D_i itself.

    Args:
        denoiser: D(x (B, ...), sigma float) -> (B, ...).
        x: (B, ...) the state at sigmas[0] (for sampling, sigma_max times N(0, I) draws).
        sigmas: the decreasing grid (`rho_grid`); len(sigmas) - 1 evaluations.

    Returns:
        (B, ...), the state at sigmas[-1].

    Book: :eq:`ch17-ode`.
    """
    for a, b in _pairs(x, sigmas):
        d = (x - _denoised(denoiser, x, a)) / a
        x = x + (b - a) * d
    return x


def heun(denoiser: DenoiserFn, x: torch.Tensor, sigmas, *, S_churn: float = 0.0,
         S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """EDM's sampler (their Algorithm 2): Heun's second-order step, Euler on a last step to
    sigma = 0 (2n - 1 evaluations on n steps ending at 0), and optional churn.

    Churn first raises the level: for sigma_i in [S_tmin, S_tmax],
    gamma = min(S_churn / n, sqrt(2) - 1), sigma_hat = (1 + gamma) sigma_i and
    x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise z, z ~ N(0, I) (Langevin-like noise
    that the ODE step from sigma_hat then removes); then
        d = (x_hat - D(x_hat; sigma_hat)) / sigma_hat,  x' = x_hat + (sigma_{i+1} - sigma_hat) d,
        x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2,
        d' = (x' - D(x'; sigma_{i+1})) / sigma_{i+1}  (skipped when sigma_{i+1} = 0).

    Args:
        denoiser: D(x (B, ...), sigma float) -> (B, ...).
        x: (B, ...) the state at sigmas[0].
        sigmas: the decreasing grid (`rho_grid`).
        S_churn: the total churn (default 0: the deterministic sampler).
        S_tmin: churn only at levels >= S_tmin (default 0).
        S_tmax: churn only at levels <= S_tmax (default inf).
        S_noise: the scale of the added noise (default 1; EDM used 1.003-1.007).
        generator: for the churn's noise (default None: torch's global generator).

    Returns:
        (B, ...), the state at sigmas[-1].
    """
    S_churn = checks.real("S_churn (>= 0, 0 for none)", S_churn, low=0.0)
    S_tmin = checks.real("S_tmin", S_tmin, low=0.0)
    S_tmax = checks.real("S_tmax", S_tmax, low=S_tmin, finite=False)
    S_noise = checks.real("S_noise", S_noise, low=0.0)
    steps = _pairs(x, sigmas)
    gamma = min(S_churn / len(steps), math.sqrt(2) - 1)
    for a, b in steps:
        if gamma > 0 and S_tmin <= a <= S_tmax:
            a_hat = a * (1 + gamma)
            z = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
            x, a = x + math.sqrt(a_hat**2 - a**2) * S_noise * z, a_hat
        d = (x - _denoised(denoiser, x, a)) / a
        x_next = x + (b - a) * d
        if b > 0:
            d2 = (x_next - _denoised(denoiser, x_next, b)) / b
            x_next = x + (b - a) * 0.5 * (d + d2)
        x = x_next
    return x


def dpm_solver_pp_2m(denoiser: DenoiserFn, x: torch.Tensor, sigmas) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): the exact integrator of the ODE's linear part in
    lambda = -ln sigma (the log-SNR up to the VE scale), with D extrapolated linearly in
    lambda from the last two evaluations; one evaluation a step.

    With h_i = ln(sigma_i / sigma_{i+1}) and r = h_{i-1} / h_i,
        D' = (1 + 1 / (2r)) D_i - 1 / (2r) D_{i-1}   (D' = D_i on the first step and on a
                                                       last step to sigma = 0),
        x_{i+1} = (sigma_{i+1} / sigma_i) x_i + (1 - sigma_{i+1} / sigma_i) D'.
    The first-order step (D' = D_i) is DDIM's.

    Args:
        denoiser: D(x (B, ...), sigma float) -> (B, ...).
        x: (B, ...) the state at sigmas[0].
        sigmas: the decreasing grid (`rho_grid`); len(sigmas) - 1 evaluations.

    Returns:
        (B, ...), the state at sigmas[-1].

    Book: :eq:`ch17-exp-integrator`.
    """
    prev, h_prev = None, None
    for a, b in _pairs(x, sigmas):
        den = _denoised(denoiser, x, a)
        if b == 0:
            x = den
            break
        h = math.log(a / b)
        d = den if prev is None else (1 + h / (2 * h_prev)) * den - h / (2 * h_prev) * prev
        x = (b / a) * x + (1 - b / a) * d
        prev, h_prev = den, h
    return x


# --- training: where the noise levels are drawn and how they are weighted -------------------------
def sample_sigmas(n: int, P_mean: float = P_MEAN, P_std: float = P_STD, *, device=None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """n training levels with ln sigma ~ N(P_mean, P_std^2): float32 (n,)."""
    n = checks.count("n", n)
    P_mean = checks.real("P_mean (the mean of ln sigma)", P_mean)
    P_std = checks.positive("P_std (the std of ln sigma)", P_std)
    z = torch.randn(n, device=device, generator=generator)
    return (P_mean + P_std * z).exp()


def lognormal_density(log_sigma, P_mean: float = P_MEAN, P_std: float = P_STD) -> torch.Tensor:
    """The density of ln sigma under EDM's training distribution, N(ln sigma; P_mean, P_std^2)."""
    u = checks.finite("log_sigma", torch.as_tensor(log_sigma, dtype=torch.float64))
    P_std = checks.positive("P_std", P_std)
    return torch.exp(-0.5 * ((u - P_mean) / P_std) ** 2) / (P_std * math.sqrt(2 * math.pi))


def loss_weight(sigma, sigma_data: float = SIGMA_DATA):
    """EDM's lambda(sigma) = 1 / c_out^2 = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
    sd = checks.positive("sigma_data", sigma_data)
    s = _checked_levels(sigma, positive=True) if torch.is_tensor(sigma) else torch.tensor(
        checks.positive("sigma", sigma), dtype=torch.float64)
    return (s**2 + sd**2) / (s * sd) ** 2


def chain_weighting(alphas_bar: torch.Tensor):
    """Chapter 9's training as a density and a weighting over ln sigma: with t uniform on 1..T
    and L_simple = |eps - eps_hat|^2 = |D - y|^2 / sigma_t^2, the levels
    sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), the density of ln sigma (mass 1/T per
    step over the step's width in ln sigma, central differences) and the weight 1 / sigma^2
    on the denoiser's squared error. -> three float64 (T,).

    Book: :eq:`ch17-loss`.
    """
    ab = checks.chain_alphas_bar(alphas_bar, 0.0)
    sig = ((1 - ab) / ab).sqrt()
    width = torch.gradient(sig.log())[0]
    return sig, 1 / (len(ab) * width), 1 / sig**2


def denoising_loss(denoiser: DenoiserFn, y: torch.Tensor, sigma, *,
                   sigma_data: float = SIGMA_DATA, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """lambda(sigma) |D(y + sigma n; sigma) - y|^2 per point, the mean over its elements: (B,).

    y: (B, ...) data; sigma a number or one level per point (B,), > 0; noise: n (B, ...)
    (default: drawn with `generator`). The loss per sigma of a trained denoiser is this at a
    fixed sigma; with EDM's weighting it is the squared error of the effective target.
    """
    checks.data("y", y)
    if noise is None:
        noise = torch.randn(y.shape, dtype=y.dtype, device=y.device, generator=generator)
    checks.same_shape("y and noise", y, noise)
    s = _levels(sigma, y, positive=True)  # lambda(0) = inf: no loss at sigma = 0
    d = _denoised(denoiser, y + s * noise, sigma)
    err = (d.float() - y.float()).pow(2).reshape(len(y), -1).mean(1)
    return loss_weight(s.reshape(-1).float(), sigma_data) * err


def edm_loss(denoiser: DenoiserFn, y: torch.Tensor, *, P_mean: float = P_MEAN,
             P_std: float = P_STD, sigma_data: float | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """EDM's training loss: E lambda(sigma) |D(y + sigma n; sigma) - y|^2, ln sigma ~
    N(P_mean, P_std^2), one level per point, the mean over the batch and the elements.

    Args:
        denoiser: D(x (B, ...), sigma (B,)) -> (B, ...), e.g. a `Denoiser`.
        y: (B, ...) data (images on [-1, 1]).
        P_mean: the mean of ln sigma (default -1.2).
        P_std: the std of ln sigma (default 1.2).
        sigma_data: lambda's sigma_data (default: the denoiser's own).
        generator: for sigma and the noise (default None: torch's global generator).

    Returns:
        A scalar.

    Book: :eq:`ch17-loss`.
    """
    sd = getattr(denoiser, "sigma_data", None) if sigma_data is None else sigma_data
    if sd is None:
        raise checks.ArgumentError("edm_loss needs sigma_data: pass sigma_data=, or a "
                                   "Denoiser, which holds its own")
    checks.batch("y", y, min_dims=2)
    sigma = sample_sigmas(len(y), P_mean, P_std, device=y.device, generator=generator)
    return denoising_loss(denoiser, y, sigma.to(y.dtype), sigma_data=sd,
                          generator=generator).mean()


# --- exact denoisers: Gaussian data and a Gaussian mixture -----------------------------------
def gaussian_denoiser(mean: torch.Tensor, std) -> DenoiserFn:
    """The optimal denoiser for data N(mean, diag(std^2)): D(x; sigma) = E[y | x] =
    mean + std^2 / (std^2 + sigma^2) (x - mean). mean: (D,); std a number or (D,).
    Returns D(x (B, D), sigma a number or (B,)) -> (B, D).

    Book: :eq:`ch17-denoiser`.
    """
    mean, var = _gaussian(mean, std)

    def denoiser(x, sigma):
        s = _levels(sigma, _points(x, len(mean), "the Gaussian"))
        return mean.to(x) + var.to(x) / (var.to(x) + s**2) * (x - mean.to(x))
    return denoiser


def gaussian_flow(mean: torch.Tensor, std, x: torch.Tensor, sigma_from: float,
                  sigma_to: float) -> torch.Tensor:
    """The exact solution of the ODE for Gaussian data from level sigma_from to sigma_to:
        x(sigma_to) = mean + sqrt((std^2 + sigma_to^2) / (std^2 + sigma_from^2)) (x - mean).
    x: (B, D) -> (B, D); what a perfect solver returns with `gaussian_denoiser`."""
    mean, var = _gaussian(mean, std)
    a = checks.real("sigma_from", sigma_from, low=0.0)
    b = checks.real("sigma_to", sigma_to, low=0.0)
    x = checks.finite("x", _points(x, len(mean), "the Gaussian"))
    return mean.to(x) + ((var + b**2) / (var + a**2)).sqrt().to(x) * (x - mean.to(x))


def _points(x, D: int, data: str) -> torch.Tensor:
    """x if it is points (B, D) in the data's D dimensions: a (B, 1) would broadcast against
    the data's means into (B, D) (free: no device sync)."""
    checks.points("x", x, "flatten images first")
    if x.shape[1] != D:
        raise checks.ArgumentError(f"x has {x.shape[1]} dimensions but {data} {D}: pass "
                                   f"points (B, {D})")
    return x


def _gaussian(mean, std):
    mean = checks.tensor("mean", mean, dims=1, floating=True, nonempty=True)
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device).expand_as(mean)
    if not bool((std > 0).all()):
        raise checks.ArgumentError("std must be > 0 in every dimension")
    return mean, std**2


def mixture_denoiser(gm: GaussianMixture) -> DenoiserFn:
    """The optimal denoiser for data from a Gaussian mixture sum_k w_k N(mu_k, s_k^2 I):
        D(x; sigma) = sum_k r_k(x) [mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)],
    r_k the responsibilities of the components of the noisy data's mixture
    sum_k w_k N(mu_k, (s_k^2 + sigma^2) I) at x. Returns D(x (B, D), sigma a number) -> (B, D),
    computed in the mixture's dtype."""
    if not isinstance(gm, GaussianMixture):
        raise checks.ArgumentError(f"mixture_denoiser takes a companion.toy.GaussianMixture, "
                                   f"got {type(gm).__name__}")

    def denoiser(x, sigma):
        s = checks.real("sigma (one level for the batch)", sigma, low=0.0)
        _points(x, gm.D, "the mixture")
        xx = x.to(gm.means.dtype)
        var = gm.stds**2 + s**2                                                 # (K,)
        r = torch.softmax(toy._mixture_log_joint(gm, xx, gm.means, var), -1)    # (B, K)
        per = gm.means + (gm.stds**2 / var)[:, None] * (xx[:, None, :] - gm.means)
        return (r[:, :, None] * per).sum(1).to(x.dtype)
    return denoiser
