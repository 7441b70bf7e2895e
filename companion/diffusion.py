"""Denoising diffusion (Ho et al. 2020): the one home of its math.

Time convention, used everywhere in this module: **t runs from 1 to T**, as in the paper.
x_0 is the data, x_t the t-th noisy version, x_T close to N(0, I). Every function that takes
t takes integers in 1..T (a Python int or an int64 tensor of shape (B,)), and every
`eps_model(x_t, t)` is called with t an int64 tensor of shape (B,) holding values in 1..T.
Buffers indexed by t are padded so that `buf[t]` is the value at step t (index 0 holds
the value at t = 0: alpha_bar_0 = 1, beta_0 = 0).

Forward process (the fixed encoder):
    q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I),  alpha_t = 1 - beta_t
    q(x_t | x_0)     = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I),  alpha_bar_t = prod alpha_s
Posterior:
    q(x_{t-1} | x_t, x_0) = N(c0_t x_0 + ct_t x_t, beta_tilde_t I),
    c0_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t),
    ct_t = sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t),
    beta_tilde_t = (1 - alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t).
Reverse process (the decoder): p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I) with
    mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_t)
and sigma_t^2 = beta_t ("beta") or beta_tilde_t ("posterior").
Negative ELBO (in nats, per image), summed over all dimensions:
    L = L_T + sum_{t=2}^T L_{t-1} + L_0,
    L_T = KL(q(x_T | x_0) || N(0, I)),
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),   x_t ~ q(x_t | x_0),
    L_0 = -log p(x_0 | x_1),                                  x_1 ~ q(x_1 | x_0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .run import checks
from .run.memory import map_chunks
from .run.progress import progress

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
VARIANCES = ("beta", "posterior")
DECODERS = ("discretized", "gaussian")
BIN_HALF_WIDTH = 1.0 / 255.0  # 8-bit pixels on [-1, 1]: bins of width 2/255


# --- schedules ------------------------------------------------------------------------------
def linear_betas(T: int, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """Ho et al.'s linear schedule: beta_t = start + (end - start) (t - 1) / (T - 1).  -> (T,)

    float64. For other T than 1000, improved-diffusion scales start and end by 1000 / T so
    that the total noise stays comparable: `linear_betas(T, 1e-4 * 1000 / T, 0.02 * 1000 / T)`.
    """
    T = _check_T(T)
    start = checks.real("start", start, low=0.0, high=1.0, open_low=True, open_high=True)
    end = checks.real("end (start <= end < 1)", end, low=start, high=1.0, open_high=True)
    if T == 1:
        return torch.tensor([end], dtype=torch.float64)
    return torch.linspace(start, end, T, dtype=torch.float64)


def predict_x0(x_t, eps, alpha_bar, sigma=None):
    """x_0 = (x_t - sigma eps) / sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar): the clean data
    a noise prediction implies at noise level alpha_bar (a float, or a tensor broadcasting
    against x_t: (B, 1, ..., 1)); pass `sigma` where it is known more exactly (the SDE's
    -expm1 near t = 0). The one place the formula is written: the chain's samplers and
    sde.ddim call it."""
    checks.same_shape("x_t and eps", x_t, eps)  # a (B, 1) eps would broadcast silently
    if torch.is_tensor(alpha_bar):
        sigma = (1 - alpha_bar).sqrt() if sigma is None else sigma
        return (x_t - sigma * eps) / alpha_bar.sqrt()
    alpha_bar = checks.real("alpha_bar (x_0 is lost at alpha_bar = 0)", alpha_bar, low=0.0,
                            high=1.0, open_low=True)
    sigma = math.sqrt(1 - alpha_bar) if sigma is None else sigma
    return (x_t - sigma * eps) / math.sqrt(alpha_bar)


def predict_eps(x_t, x0, alpha_bar):
    """eps = (x_t - sqrt(alpha_bar) x_0) / sqrt(1 - alpha_bar), the inverse of predict_x0."""
    checks.same_shape("x_t and x0", x_t, x0)  # a (B, 1) x0 would broadcast silently
    if torch.is_tensor(alpha_bar):
        return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
    alpha_bar = checks.real("alpha_bar (no noise is left at alpha_bar = 1)", alpha_bar,
                            low=0.0, high=1.0, open_high=True)
    return (x_t - math.sqrt(alpha_bar) * x0) / math.sqrt(1 - alpha_bar)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule.  -> (T,) float64

    alpha_bar(t) = f(t) / f(0), f(t) = cos^2(pi/2 (t/T + s) / (1 + s)),
    beta_t = min(1 - alpha_bar(t) / alpha_bar(t - 1), max_beta).
    """
    T = _check_T(T)
    s = checks.real("s (the cosine schedule's offset)", s, low=0.0)
    max_beta = checks.real("max_beta", max_beta, low=0.0, high=1.0, open_low=True,
                           open_high=True)
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def _check_T(T) -> int:
    return checks.count("T (the number of diffusion steps, a positive int)", T)


def spaced_timesteps(T: int, n_steps: int) -> list[int]:
    """n_steps timesteps in 1..T, evenly spaced, always including T (and 1 if n_steps > 1).

    Rounds half up, so that the steps are distinct whenever n_steps <= T.
    """
    T = _check_T(T)
    n_steps = checks.count("n_steps", n_steps, maximum=T)
    if n_steps == 1:
        return [T]
    pos = torch.linspace(1, T, n_steps, dtype=torch.float64)
    return torch.floor(pos + 0.5).long().tolist()


# --- small math helpers -----------------------------------------------------------------
def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise (broadcasting).

    = 1/2 [ logvar2 - logvar1 + (e^logvar1 + (mean1 - mean2)^2) e^-logvar2 - 1 ]

    Each argument a tensor or a number, finite (a NaN or inf is refused by its name).

    Book: :eq:`ch8-kl-mse`, :eq:`ch9-kl-1d`.
    """
    args = _finite_args(mean1=mean1, logvar1=logvar1, mean2=mean2, logvar2=logvar2)
    _one_of_the_shapes(("mean1", "logvar1", "mean2", "logvar2"), args)
    return _normal_kl(*args)


def _one_of_the_shapes(names, tensors) -> None:
    """Broadcasting only expands arguments to the shape of one of them (a number, a
    per-dimension (D,) against (B, D)): (4, 1) against (1, 4) was broadcast to (4, 4), a KL
    for every pair of rows and columns."""
    shapes = [tuple(t.shape) for t in tensors]
    try:
        out = tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        out = None
    if out not in shapes:
        raise checks.ArgumentError(
            f"{', '.join(names)} must broadcast to the shape of one of them, got shapes "
            f"{', '.join(f'{n} {s}' for n, s in zip(names, shapes, strict=True))}"
            f"{'' if out is None else f' (together {out})'}: give them one shape, e.g. "
            "reshape a (B, 1) column and a (1, B) row alike")


def _finite_args(**values) -> list[torch.Tensor]:
    """The values as tensors (a number in the dtype and on the device of the first tensor),
    each refused by its name if it is NaN or infinite (checks.finite, checks.real)."""
    like = next((v for v in values.values() if torch.is_tensor(v)), None)
    kw = dict(dtype=torch.float64) if like is None else dict(dtype=like.dtype,
                                                             device=like.device)
    return [checks.finite(name, v) if torch.is_tensor(v)
            else torch.tensor(checks.real(name, v), **kw) for name, v in values.items()]


def _normal_kl(mean1, logvar1, mean2, logvar2):
    """normal_kl without its checks, for the bound's every step."""
    return 0.5 * (logvar2 - logvar1 - 1.0
                  + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log_ndtr_interval(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails (a may be -inf, b may be +inf)."""
    flip = a > 0  # Phi(b) - Phi(a) = Phi(-a) - Phi(-b): keep the pair in the lower tail
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    lhi, llo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    d = (llo - lhi).clamp(max=-1e-30)  # log(1 - e^d) with d < 0
    log1mexp = torch.where(d > -math.log(2), torch.log(-torch.expm1(d)),
                           torch.log1p(-torch.exp(d)))
    return lhi + log1mexp


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor,
                                        log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) per element for 8-bit data on [-1, 1] under a Gaussian binned to width 2/255.

    x, mean, log_scale: broadcastable (log_scale = log of the standard deviation).
    P(x) = Phi((x + 1/255 - mean) / s) - Phi((x - 1/255 - mean) / s), except that the bin of
    x = -1 extends to -inf and the bin of x = 1 to +inf, so the 256 bins sum to 1 (Ho et al.).
    x must hold the 256 levels -1 + 2k/255; other values are binned as if they were.

    Book: :eq:`ch9-bound`.
    """
    inv_s = torch.exp(-log_scale)
    centered = x - mean
    lo = torch.where(x < -0.999, torch.full_like(centered, -math.inf),
                     (centered - BIN_HALF_WIDTH) * inv_s)
    hi = torch.where(x > 0.999, torch.full_like(centered, math.inf),
                     (centered + BIN_HALF_WIDTH) * inv_s)
    return _log_ndtr_interval(lo, hi)


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor,
                            logvar: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, e^logvar) per element, for real-valued (continuous) data: shaped like x.

    mean and logvar: tensors that broadcast to x's shape (a (B, 1, 1, 1) variance against
    images (B, 1, 28, 28)), or numbers; a shape that would grow x's, such as (4, 1) against
    x (4,), which gives (4, 4), is refused, and so are NaN and inf."""
    checks.tensor("x", x, floating=True)
    for name, v in (("mean", mean), ("logvar", logvar)):
        if torch.is_tensor(v) and _broadcast(x.shape, v.shape) != x.shape:
            raise checks.ArgumentError(
                f"{name} of shape {tuple(v.shape)} does not broadcast to x's shape "
                f"{tuple(x.shape)}: one value per element of x (or a shape that broadcasts "
                f"to it); {name}.reshape(x.shape) if they hold the same values")
    return _gaussian_log_likelihood(*_finite_args(x=x, mean=mean, logvar=logvar))


def _broadcast(a, b):
    """The broadcast of shapes a and b, or None where they do not broadcast."""
    try:
        return torch.broadcast_shapes(a, b)
    except RuntimeError:
        return None


def _gaussian_log_likelihood(x, mean, logvar):
    """gaussian_log_likelihood without its checks, for the bound's every step."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def _flat_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: (B, ...) -> (B,)."""
    return x.reshape(len(x), -1).sum(1)


@dataclass
class BoundTerms:
    """The negative ELBO of a batch, term by term, in nats per image.

    terms: (B, T), column t - 1 holds the term computed at step t: L_0 = -log p(x_0 | x_1)
           in column 0, L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) in column t - 1.
    prior: (B,), L_T = KL(q(x_T | x_0) || N(0, I)).
    dims:  the number of dimensions of one image (for bits per dimension).
    """

    terms: torch.Tensor
    prior: torch.Tensor
    dims: int

    @property
    def total(self) -> torch.Tensor:
        """-ELBO per image, nats: (B,)."""
        return self.terms.sum(1) + self.prior

    @property
    def reconstruction(self) -> torch.Tensor:
        """L_0 per image, nats: (B,)."""
        return self.terms[:, 0]

    @property
    def denoising(self) -> torch.Tensor:
        """sum_{t=2}^T L_{t-1} per image, nats: (B,)."""
        return self.terms[:, 1:].sum(1)

    def bits_per_dim(self, nats: torch.Tensor | None = None) -> torch.Tensor:
        """nats / (dims ln 2): of the total by default, or of any nats tensor given."""
        return (self.total if nats is None else nats) / (self.dims * math.log(2))


@dataclass
class MonteCarloBound:
    """An unbiased estimate of the mean -ELBO over a batch, from one random t per draw.

    per_image: (B,) nats, L_T + T * L_{t-1} at random t (averaged over the draws).
    mean, stderr: the batch mean of per_image and its standard error (nats, 0-dim tensors).
    """

    per_image: torch.Tensor
    mean: torch.Tensor
    stderr: torch.Tensor
    dims: int

    def bits_per_dim(self, nats: torch.Tensor | None = None) -> torch.Tensor:
        return (self.mean if nats is None else nats) / (self.dims * math.log(2))


# --- the process ----------------------------------------------------------------------------
class Diffusion:
    """A Gaussian diffusion with T steps of noise variances betas (t = 1..T, see module doc).

    betas: 1-D tensor (T,), every entry in (0, 1). All buffers are float64 on `device`
    (gathered values are cast to the dtype of the tensor they multiply).
    """

    def __init__(self, betas: torch.Tensor, device: torch.device | str | None = None):
        b = checks.schedule("betas", betas).detach().to(torch.float64).cpu()
        self.T = len(b)
        device = torch.device(device) if device is not None else betas.device
        zero = torch.zeros(1, dtype=torch.float64)
        alphas = 1 - b
        abar = torch.cumprod(alphas, 0)
        # padded: index t holds the value at step t, index 0 the value at t = 0
        self.betas_ = torch.cat([zero, b])
        self.alphas_ = torch.cat([zero + 1, alphas])
        self.alphas_bar_ = torch.cat([zero + 1, abar])
        abar_prev = self.alphas_bar_[:-1]                                  # (T,) t-1 for t=1..T
        post_var = b * (1 - abar_prev) / (1 - abar)                        # beta_tilde_t
        self.posterior_variance_ = torch.cat([zero, post_var])
        self.posterior_coef_x0_ = torch.cat([zero, abar_prev.sqrt() * b / (1 - abar)])
        self.posterior_coef_xt_ = torch.cat([zero, alphas.sqrt() * (1 - abar_prev) / (1 - abar)])
        # Ho's treatment of t = 1: beta_tilde_1 = 0, so its log is replaced by that of
        # beta_tilde_2 (also the decoder variance of L_0, whatever the choice of sigma_t^2)
        first = post_var[1] if self.T > 1 else b[0]
        self.posterior_log_variance_ = torch.cat([zero, torch.log(
            torch.cat([first.reshape(1), post_var[1:]]))])
        self.beta_log_variance_ = torch.cat([zero, torch.log(
            torch.cat([first.reshape(1), b[1:]]))])
        # the decoder's sigma_t^2 (t = 1: beta_tilde_2, like the log-variances above)
        self.beta_model_variance_ = self.beta_log_variance_.exp()
        self.posterior_model_variance_ = self.posterior_log_variance_.exp()
        self._alphas_bar_list = self.alphas_bar_.tolist()  # host copy: no device sync
        self.to(device)

    def to(self, device) -> Diffusion:
        """Move every buffer to `device` (in place); returns self."""
        self.device = torch.device(device)
        for name, value in list(vars(self).items()):
            if name.endswith("_") and torch.is_tensor(value):
                setattr(self, name, value.to(self.device))
        return self

    # public views of length T (index t - 1 holds step t)
    @property
    def betas(self) -> torch.Tensor:
        return self.betas_[1:]

    @property
    def alphas_bar(self) -> torch.Tensor:
        return self.alphas_bar_[1:]

    @property
    def posterior_variance(self) -> torch.Tensor:
        return self.posterior_variance_[1:]

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) for t = 1..T: (T,)."""
        return self.alphas_bar / (1 - self.alphas_bar)

    # --- t handling ---------------------------------------------------------------------
    def check_t(self, t, batch: int) -> torch.Tensor:
        """t as an int64 tensor of shape (batch,) on this device, checked to lie in 1..T.

        Checking the range costs one device sync: the samplers build t themselves and skip it.
        """
        return checks.steps(t, batch, self.T, self.device)

    @staticmethod
    def _at(buf: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """buf[t] shaped to broadcast against `like` (B, ...): (B, 1, ..., 1), like's dtype."""
        checks.same_device("this Diffusion", buf, like, "create it with Diffusion(betas, "
                           "device=...) or move it with .to(device)", t)
        return buf[t].to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def _check_at(self, t, **batch: torch.Tensor) -> torch.Tensor:
        """t as the steps (B,) of a batch: the first tensor named in `batch`, (B, ...), a
        non-empty float batch, and every other one of its shape (no broadcasting)."""
        (name, x), *rest = batch.items()
        checks.batch(name, x)
        for other, y in rest:
            checks.same_shape(f"{name} and {other}", x, checks.batch(other, y))
        return self.check_t(t, len(x))

    # --- forward process and posterior ---------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I): (mean, variance).

        x0: (B, ...); mean (B, ...), variance (B, 1, ..., 1).

        Book: :eq:`ch8-forward`.
        """
        t = self._check_at(t, x0=x0)
        abar = self._at(self.alphas_bar_, t, x0)
        return abar.sqrt() * x0, 1 - abar

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise.  x0, noise: (B, ...).

        Book: :eq:`ch8-forward`.
        """
        t = self._check_at(t, x0=x0, noise=noise)
        return self._q_sample(x0, t, noise)

    def _q_sample(self, x0, t, noise):
        abar = self._at(self.alphas_bar_, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def q_step(self, x_prev: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """One forward step: x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) noise."""
        t = self._check_at(t, x_prev=x_prev, noise=noise)
        return (self._at(self.alphas_, t, x_prev).sqrt() * x_prev
                + self._at(self.betas_, t, x_prev).sqrt() * noise)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t):
        """q(x_{t-1} | x_t, x_0) = N(c0_t x_0 + ct_t x_t, beta_tilde_t I): (mean, variance).

        x0, x_t: (B, ...); mean (B, ...), variance (B, 1, ..., 1). At t = 1 the variance is 0
        (x_0 is known exactly).

        Book: :eq:`ch8-posterior`.
        """
        t = self._check_at(t, x0=x0, x_t=x_t)
        return self._q_posterior_mean(x0, x_t, t), self._at(self.posterior_variance_, t, x0)

    def _q_posterior_mean(self, x0, x_t, t):
        return (self._at(self.posterior_coef_x0_, t, x0) * x0
                + self._at(self.posterior_coef_xt_, t, x_t) * x_t)

    # --- parameterizations ---------------------------------------------------------------
    def x0_from_eps(self, x_t, t, eps):
        """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        t = self._check_at(t, x_t=x_t, eps=eps)
        return self._x0_from_eps(x_t, t, eps)

    def _x0_from_eps(self, x_t, t, eps):
        return predict_x0(x_t, eps, self._at(self.alphas_bar_, t, x_t))

    def eps_from_x0(self, x_t, t, x0):
        """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)."""
        t = self._check_at(t, x_t=x_t, x0=x0)
        abar = self._at(self.alphas_bar_, t, x_t)
        return predict_eps(x_t, x0, abar)

    def mean_from_eps(self, x_t, t, eps):
        """mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t).

        Book: :eq:`ch9-ancestral`.
        """
        t = self._check_at(t, x_t=x_t, eps=eps)
        return self._mean_from_eps(x_t, t, eps)

    def _mean_from_eps(self, x_t, t, eps):
        beta = self._at(self.betas_, t, x_t)
        abar = self._at(self.alphas_bar_, t, x_t)
        return (x_t - beta / (1 - abar).sqrt() * eps) / (1 - beta).sqrt()

    def eps_from_mean(self, x_t, t, mean):
        """eps = (x_t - sqrt(alpha_t) mu) sqrt(1 - alpha_bar_t) / beta_t."""
        t = self._check_at(t, x_t=x_t, mean=mean)
        beta = self._at(self.betas_, t, x_t)
        abar = self._at(self.alphas_bar_, t, x_t)
        return (x_t - (1 - beta).sqrt() * mean) * (1 - abar).sqrt() / beta

    def score_from_eps(self, x_t, t, eps):
        """grad log q(x_t) = -eps / sqrt(1 - alpha_bar_t) (Tweedie; exact for the optimal eps).

        Book: :eq:`ch8-tweedie`.
        """
        t = self._check_at(t, x_t=x_t, eps=eps)
        return -eps / (1 - self._at(self.alphas_bar_, t, x_t)).sqrt()

    def eps_from_score(self, x_t, t, score):
        """eps = -sqrt(1 - alpha_bar_t) score: the factor that is easy to leave out.

        Book: :eq:`ch8-tweedie`.
        """
        t = self._check_at(t, x_t=x_t, score=score)
        return -(1 - self._at(self.alphas_bar_, t, x_t)).sqrt() * score

    def score_fn(self, eps_model: EpsModel) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """The score s(x, t) = -eps_model(x, t) / sqrt(1 - alpha_bar_t), t an int in 1..T."""
        def score(x: torch.Tensor, t: int) -> torch.Tensor:
            t = checks.count("t (a step of the chain, 1..T)", t, maximum=self.T)
            tt = torch.full((len(x),), t, dtype=torch.long, device=x.device)
            return -eps_model(x, tt).to(x.dtype) / math.sqrt(1 - self._alphas_bar_list[t])
        return score

    # --- the reverse process ---------------------------------------------------------------
    def model_log_variance(self, t, like: torch.Tensor, variance: str = "beta"):
        """log sigma_t^2 shaped (B, 1, ..., 1); at t = 1 log beta_tilde_2 (Ho's treatment)."""
        _check_variance(variance)
        buf = self.beta_log_variance_ if variance == "beta" else self.posterior_log_variance_
        t = self._check_at(t, like=like)
        return self._at(buf, t, like)

    def p_mean_variance(self, eps_model: EpsModel, x_t: torch.Tensor, t,
                        variance: str = "beta", clip: bool = False) -> dict:
        """p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I).  x_t: (B, ...).

        Returns {"mean", "variance", "log_variance", "x0", "eps"}; variance and log_variance
        shaped (B, 1, ..., 1), the rest like x_t. variance: "beta" (sigma_t^2 = beta_t) or
        "posterior" (beta_tilde_t), both with Ho's treatment of t = 1: sigma_1^2 = beta_tilde_2
        (the decoder's variance in L_0; sampling adds no noise at t = 1).
        clip: clamp the predicted x_0 to [-1, 1] before forming the mean, a sampling
        heuristic for images, not part of the model (the bound never clips).
        """
        _check_variance(variance)
        t = self._check_at(t, x_t=x_t)
        return self._p_mean_variance(eps_model, x_t, t, variance, clip)

    def _p_mean_variance(self, eps_model, x_t, t, variance, clip):
        return self._p_from_eps(x_t, t, eps_model(x_t, t), variance, clip)

    def _p_from_eps(self, x_t, t, eps, variance, clip):
        _check_eps(eps, x_t.shape, "x_t")
        eps = eps.to(x_t.dtype)
        x0 = self._x0_from_eps(x_t, t, eps)
        if clip:
            x0 = x0.clamp(-1, 1)
            mean = self._q_posterior_mean(x0, x_t, t)
        else:
            mean = self._mean_from_eps(x_t, t, eps)
        if variance == "beta":
            var, logvar = self.beta_model_variance_, self.beta_log_variance_
        else:
            var, logvar = self.posterior_model_variance_, self.posterior_log_variance_
        return {"mean": mean, "variance": self._at(var, t, x_t),
                "log_variance": self._at(logvar, t, x_t), "x0": x0, "eps": eps}

    # --- training --------------------------------------------------------------------------
    def simple_loss(self, eps_model: EpsModel, x0: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Algorithm 1's L_simple = E_{t ~ U{1..T}, eps} |eps - eps_theta(x_t, t)|^2.

        Input checks here are on type and shape only (free: this runs every training step).

        Args:
            eps_model: (x_t (B, ...), t int64 (B,)) -> eps (B, ...), t in 1..T.
            x0: (B, ...) a batch of training images.
            generator: for t and eps (default None: torch's global generator).

        Returns:
            A scalar, the mean squared error over every element of the batch.

        Book: :eq:`ch9-lsimple`.
        """
        checks.batch("x0", x0)  # an empty batch too: the mean over no images is NaN
        self._check_model_T(eps_model)
        t = torch.randint(1, self.T + 1, (len(x0),), device=x0.device,
                          generator=_gen_for(generator, x0.device))
        noise = _randn(x0.shape, x0, generator)
        eps = eps_model(self._q_sample(x0, t, noise), t)
        _check_eps(eps, noise.shape, "x0")
        return (eps.float() - noise.float()).pow(2).mean()

    def _check_model_T(self, eps_model) -> None:
        """A U-Net built for another chain length would take this chain's t silently."""
        checks.model_steps(eps_model, self.T, what="this diffusion",
                           fix=f"build the U-Net with preset(..., T={self.T})")

    # --- sampling --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, eps_model: EpsModel, shape, *, variance: str = "beta",
               n_steps: int | None = None, x_T: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device=None, clip: bool = False,
               callback=None, quiet: bool | None = None) -> torch.Tensor:
        """Ancestral sampling, Algorithm 2: x_T ~ N(0, I), x_{t-1} = mu_theta + sigma_t z.

        No noise is added at the last step (t = 1): the output is the decoder's mean
        mu_theta(x_1, 1). All B images go through the network as one batch.

        Args:
            eps_model: (x_t (B, ...), t int64 (B,)) -> eps (B, ...), t in 1..T.
            shape: (B, ...) of the samples, e.g. (64, 1, 28, 28).
            variance: "beta" (sigma_t^2 = beta_t, default) or "posterior" (beta_tilde_t).
            n_steps: None (default) runs all T steps; fewer respaces the chain over
                `spaced_timesteps(T, n_steps)` s_1 < ... < s_n = T, with betas
                1 - alpha_bar_{s_i} / alpha_bar_{s_{i-1}} (alpha_bar_{s_0} = 1), the recipe
                of improved-diffusion; eps_model still sees the original steps s_i.
            x_T: the starting noise (B, ...); None (default) draws it.
            generator: a torch.Generator on the sampling device (reproducible runs).
            device: where to sample when x_T is None (default: the buffers' device).
            clip: clip each predicted x_0 to [-1, 1] (default False).
            callback: callback(t, x_t, x0_pred), called before each step with the original
                step t (default None).
            quiet: no progress bar (default: the profile decides).

        Returns:
            x_0 (B, ...), on [-1, 1] for data on [-1, 1].

        Book: :eq:`ch9-ancestral`.
        """
        _check_variance(variance)
        self._check_model_T(eps_model)
        steps = spaced_timesteps(self.T, n_steps if n_steps is not None else self.T)
        sub = self if len(steps) == self.T else self.respaced(steps)
        x = _start(shape, x_T, generator, device or self.device)
        model_t = torch.tensor(steps, dtype=torch.long, device=x.device)
        sub_t = torch.arange(len(steps) + 1, device=x.device)
        for i in progress(range(len(steps), 0, -1), desc="sampling", quiet=quiet):
            eps = eps_model(x, model_t[i - 1].expand(len(x)))
            out = sub._p_from_eps(x, sub_t[i].expand(len(x)), eps, variance, clip)
            if callback is not None:
                callback(steps[i - 1], x, out["x0"])
            x = out["mean"]
            if i > 1:  # no noise at the last step
                x = x + out["variance"].sqrt() * _randn(x.shape, x, generator)
        return x

    def respaced(self, steps: list[int]) -> Diffusion:
        """The diffusion over the kept steps s_1 < ... < s_n (values in 1..T).

        Its alpha_bar at step i is this one's alpha_bar_{s_i}; its betas are
        1 - alpha_bar_{s_i} / alpha_bar_{s_{i-1}} with alpha_bar_{s_0} = 1.
        """
        s = checks.kept_steps(steps, self.T)
        abar = self.alphas_bar_.cpu()[s]
        prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
        return Diffusion(1 - abar / prev, device=self.device)

    @torch.no_grad()
    def sample_ddim(self, eps_model: EpsModel, shape, *, n_steps: int, eta: float = 0.0,
                    x_T: torch.Tensor | None = None, generator: torch.Generator | None = None,
                    device=None, clip: bool = False, callback=None,
                    quiet: bool | None = None) -> torch.Tensor:
        """DDIM (Song et al. 2021) over `spaced_timesteps(T, n_steps)`; eta = 0 is deterministic.

        From step s to the previous kept step r (alpha_bar_r = 1 after the last one):
        x0 = x0_from_eps(x_s, eps), x_r = sqrt(abar_r) x0 + sqrt(1 - abar_r - sig^2) eps
        + sig z, sig = eta sqrt((1 - abar_r) / (1 - abar_s)) sqrt(1 - abar_s / abar_r).
        The last step returns the predicted x_0 without noise.

        Args:
            eps_model: (x_t (B, ...), t int64 (B,)) -> eps (B, ...), t in 1..T.
            shape: (B, ...) of the samples.
            n_steps: network calls, 1..T (required).
            eta: 0 (default) deterministic; 1 injects the ancestral sampler's noise.
            x_T: the starting noise (B, ...); None (default) draws it.
            generator: a torch.Generator on the sampling device (reproducible runs).
            device: where to sample when x_T is None (default: the buffers' device).
            clip: clip each predicted x_0 to [-1, 1] (default False).
            callback: callback(t, x_t, x0_pred) before each step (default None).
            quiet: no progress bar (default: the profile decides).

        Returns:
            x_0 (B, ...).
        """
        eta = checks.real("eta (0: deterministic DDIM, 1: DDPM-like)", eta, low=0.0)
        steps = spaced_timesteps(self.T, n_steps)
        x = _start(shape, x_T, generator, device or self.device)
        abar = self.alphas_bar_.to(x.device)
        ts = torch.tensor(steps, dtype=torch.long, device=x.device)
        for i in progress(range(len(steps) - 1, -1, -1), desc="DDIM", quiet=quiet):
            t = ts[i].expand(len(x))
            eps = eps_model(x, t)
            _check_eps(eps, x.shape, "x_t")  # as sample does: never broadcast a wrong shape
            eps = eps.to(x.dtype)
            # the update of sde.ddim (a deliberate copy: the same DDIM step on the chain's
            # integer clock, with eta and clipping; sde.ddim runs it at real times)
            x0 = self._x0_from_eps(x, t, eps)
            if clip:
                x0 = x0.clamp(-1, 1)
                eps = predict_eps(x, x0, self._at(abar, t, x))
            if callback is not None:
                callback(steps[i], x, x0)
            if i == 0:
                x = x0
                break
            a_s, a_r = abar[steps[i]].to(x.dtype), abar[steps[i - 1]].to(x.dtype)
            sig = eta * ((1 - a_r) / (1 - a_s) * (1 - a_s / a_r)).sqrt()
            x = a_r.sqrt() * x0 + (1 - a_r - sig**2).clamp(min=0).sqrt() * eps
            if eta > 0:
                x = x + sig * _randn(x.shape, x, generator)
        return x

    @torch.no_grad()
    def sample_denoise_only(self, eps_model: EpsModel, shape, *,
                            x_T: torch.Tensor | None = None,
                            generator: torch.Generator | None = None, device=None,
                            callback=None, quiet: bool | None = None) -> torch.Tensor:
        """x_{t-1} = mu_theta(x_t, t) for t = T..1 from x_T ~ N(0, I): no noise injected."""
        x = _start(shape, x_T, generator, device or self.device)
        for t in progress(range(self.T, 0, -1), desc="denoise only", quiet=quiet):
            tt = torch.full((len(x),), t, dtype=torch.long, device=x.device)
            out = self._p_mean_variance(eps_model, x, tt, "beta", False)
            if callback is not None:
                callback(t, x, out["x0"])
            x = out["mean"]
        return x

    # --- the variational bound ---------------------------------------------------------------
    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) in nats, summed over dimensions: (B, ...) -> (B,)."""
        checks.batch("x0", x0)
        abar = self.alphas_bar_[self.T].to(x0.dtype)
        mean = abar.sqrt() * x0
        logvar = torch.log1p(-abar).expand_as(x0)
        return _flat_sum(_normal_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(x0)))

    def term_at(self, eps_model: EpsModel, x0: torch.Tensor, t, *, variance: str = "beta",
                decoder: str = "discretized", noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """The bound's term at step t per image, nats (B,), from one x_t ~ q(x_t | x_0).

        t = 1: L_0 = -log p(x_0 | x_1) with the decoder N(mu_theta(x_1, 1), sigma_1^2),
        sigma_1^2 = beta_tilde_2 (Ho's treatment), either "discretized" (8-bit data on
        [-1, 1], bins of width 2/255) or "gaussian" (real-valued data, a density).
        t >= 2: L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)).
        t may differ per image: an int64 tensor (B,).

        Book: :eq:`ch8-kl-mse`.
        """
        _check_bound(x0, variance, decoder, "term_at")
        t = self.check_t(t, len(x0))
        if noise is None:
            noise = _randn(x0.shape, x0, generator)
        checks.same_shape("x0 and noise", x0, checks.batch("noise", noise))
        return self._term_at(eps_model, x0, t, noise, variance, decoder)

    def _term_at(self, eps_model, x0, t, noise, variance, decoder):
        x_t = self._q_sample(x0, t, noise)
        out = self._p_mean_variance(eps_model, x_t, t, variance, False)
        true_mean = self._q_posterior_mean(x0, x_t, t)
        true_logvar = self._at(self.posterior_log_variance_, t, x0)
        kl = _flat_sum(_normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"]))
        if decoder == "discretized":
            nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        else:
            nll = -_gaussian_log_likelihood(x0, out["mean"], out["log_variance"])
        return torch.where(t == 1, _flat_sum(nll), kl)

    def _terms_chunked(self, eps_model, x0, t, noise, variance, decoder):
        """_term_at on at most memory.MAX_IMAGES images a network call (the draws made)."""
        return map_chunks(lambda x, tt, e: self._term_at(eps_model, x, tt, e, variance,
                                                         decoder), x0, t, noise)

    @torch.no_grad()
    def bound_terms(self, eps_model: EpsModel, x0: torch.Tensor, *, variance: str = "beta",
                    decoder: str = "discretized", max_batch: int = 4096,
                    generator: torch.Generator | None = None,
                    quiet: bool | None = None) -> BoundTerms:
        """Every term of the bound for a batch, exactly summed over t = 1..T (T network calls).

        One x_t ~ q(x_t | x_0) per image and t, as in the reference code.

        Args:
            eps_model: (x_t (B, ...), t int64 (B,)) -> eps (B, ...), t in 1..T.
            x0: (B, ...) the images. With decoder="discretized" they must hold the 256
                levels -1 + 2k/255 (checked: one reduction and one device sync per call).
            variance: "beta" (default) or "posterior", the model's sigma_t^2.
            decoder: "discretized" (default: 8-bit data, a probability) or "gaussian"
                (a density, for real-valued data).
            max_batch: steps are drawn in groups of max(1, max_batch // B) (default
                4096); each network call sees at most companion.run.memory.MAX_IMAGES of the
                group's images.
            generator: for the draws of x_t (reproducible runs).
            quiet: no progress bar (default: the profile decides).

        Returns:
            BoundTerms: per image, in nats: `terms` (B, T), L_0 in column 0 and L_{t-1}
            in column t - 1, and `prior` (B,), L_T.

        Book: :eq:`ch8-bound`, :eq:`ch9-bound`.
        """
        _check_bound(x0, variance, decoder, "bound_terms")
        B = len(x0)
        chunk = max(1, max_batch // B)
        terms = torch.zeros(B, self.T, dtype=x0.dtype, device=x0.device)
        starts = range(1, self.T + 1, chunk)
        for start in progress(starts, desc="bound", quiet=quiet):
            stop = min(start + chunk, self.T + 1)
            n = stop - start
            t = torch.arange(start, stop, device=x0.device).repeat_interleave(B)
            xs = x0.repeat(n, *([1] * (x0.dim() - 1)))
            noise = _randn(xs.shape, xs, generator)
            part = self._terms_chunked(eps_model, xs, t, noise, variance, decoder)
            terms[:, start - 1:stop - 1] = part.reshape(n, B).T
        return BoundTerms(terms, self.prior_kl(x0), x0[0].numel())

    @torch.no_grad()
    def bound_monte_carlo(self, eps_model: EpsModel, x0: torch.Tensor, *, draws: int = 1,
                          variance: str = "beta", decoder: str = "discretized",
                          generator: torch.Generator | None = None) -> MonteCarloBound:
        """Unbiased estimate of the bound: L_T + T L_{t-1} with t ~ U{1..T}, per image.

        The standard error is that of the batch mean, std(per_image) / sqrt(B). Every step
        and noise is drawn first; the network then sees at most companion.run.memory.MAX_IMAGES
        images a call.

        Args:
            eps_model: (x_t (B, ...), t int64 (B,)) -> eps (B, ...), t in 1..T.
            x0: (B, ...) the images (the 256 levels on [-1, 1] for "discretized").
            draws: random steps per image, averaged (default 1).
            variance: "beta" (default) or "posterior".
            decoder: "discretized" (default) or "gaussian", as in `bound_terms`.
            generator: for the steps and the draws of x_t (reproducible runs).

        Returns:
            MonteCarloBound: `per_image` (B,) nats, their `mean` and its `stderr`.
        """
        draws = checks.count("draws", draws)
        _check_bound(x0, variance, decoder, "bound_monte_carlo")
        B = checks.count("the number of images (a standard error needs at least 2)", len(x0),
                         minimum=2)
        xs = x0.repeat(draws, *([1] * (x0.dim() - 1)))
        t = torch.randint(1, self.T + 1, (len(xs),), device=x0.device,
                          generator=_gen_for(generator, x0.device))
        noise = _randn(xs.shape, xs, generator)
        term = self._terms_chunked(eps_model, xs, t, noise, variance, decoder)
        per_image = self.prior_kl(x0) + self.T * term.reshape(draws, B).mean(0)
        return MonteCarloBound(per_image, per_image.mean(),
                               per_image.std() / math.sqrt(B), x0[0].numel())


    @torch.no_grad()
    def bound_stratified(self, eps_model: EpsModel, x0: torch.Tensor, *, exact: int = 20,
                         draws: int = 8, variance: str = "beta",
                         decoder: str = "discretized",
                         generator: torch.Generator | None = None) -> MonteCarloBound:
        """An unbiased estimate of the bound per image with far less spread than
        `bound_monte_carlo` at a few more network calls (exact + draws per image):

            L = L_T + sum_{t=1}^{exact} L_{t-1} + sum_{k=1}^{draws} n_k L_{t_k - 1},

        the first `exact` terms summed (near the data, where the terms are large and vary
        most from step to step), the other T - exact steps split into `draws` blocks of
        n_k consecutive steps with one uniform step t_k in each (stratified sampling: each
        block's term is n_k times a uniform draw's, so its expectation is the block's sum).

        Args:
            eps_model: (x_t (B, ...), t int64 (B,)) -> eps (B, ...), t in 1..T.
            x0: (B, ...) the images (the 256 levels on [-1, 1] for "discretized").
            exact: the first steps summed exactly, 0 <= exact <= T.
            draws: blocks of the other steps, one draw each, 1 <= draws <= T - exact
                (0 when exact = T).
            variance, decoder: as in `bound_terms`.
            generator: for the steps and the draws of x_t (reproducible runs).

        Returns:
            MonteCarloBound: `per_image` (B,) nats, their `mean` and its `stderr`.
        """
        exact = checks.count("exact (the first steps summed exactly)", exact, minimum=0)
        rest = self.T - exact
        if rest < 0:
            raise ValueError(f"exact must be at most T = {self.T}, got {exact}")
        draws = checks.count("draws (blocks of the other steps)", draws, minimum=0)
        if not (1 <= draws <= rest or draws == rest == 0):
            raise ValueError(f"draws must lie in 1..{rest} (one per block of the {rest} steps "
                             f"after the first {exact}), got {draws}")
        _check_bound(x0, variance, decoder, "bound_stratified")
        B = checks.count("the number of images (a standard error needs at least 2)", len(x0),
                         minimum=2)
        edges = torch.linspace(exact, self.T, draws + 1).round().long().tolist()
        sizes = torch.tensor([b - a for a, b in zip(edges[:-1], edges[1:], strict=True)],
                             dtype=x0.dtype, device=x0.device)
        gen = _gen_for(generator, x0.device)
        u = torch.rand(draws, B, device=x0.device, dtype=torch.float64, generator=gen)
        lo = torch.tensor(edges[:-1], device=x0.device, dtype=torch.long)
        drawn = lo[:, None] + 1 + (u * sizes[:, None].double()).long()  # u < 1: in the block
        t = torch.cat([torch.arange(1, exact + 1, device=x0.device).repeat_interleave(B),
                       drawn.reshape(-1)])
        weight = torch.cat([torch.ones(exact * B, dtype=x0.dtype, device=x0.device),
                            sizes.repeat_interleave(B)])
        xs = x0.repeat(exact + draws, *([1] * (x0.dim() - 1)))
        noise = _randn(xs.shape, xs, generator)
        terms = self._terms_chunked(eps_model, xs, t, noise, variance, decoder) * weight
        per_image = self.prior_kl(x0) + terms.reshape(exact + draws, B).sum(0)
        return MonteCarloBound(per_image, per_image.mean(),
                               per_image.std() / math.sqrt(B), x0[0].numel())


# --- annealed Langevin dynamics -------------------------------------------------------------
def song_ermon_step_sizes(sigmas, eps: float) -> torch.Tensor:
    """alpha_i = eps sigma_i^2 / sigma_L^2 (Song & Ermon 2019), sigma_L the smallest level."""
    sigmas = checks.noise_levels("sigmas", sigmas)
    return eps * sigmas**2 / sigmas[-1] ** 2


@torch.no_grad()
def annealed_langevin(score_fn, x: torch.Tensor, levels, step_sizes, n_steps: int, *,
                      generator: torch.Generator | None = None, final_denoise: bool = False,
                      quiet: bool | None = None) -> torch.Tensor:
    """Song & Ermon's annealed Langevin dynamics from x (B, ...), level by level.

    For each level i (largest noise first) and n_steps times:
        x <- x + alpha_i / 2 score_fn(x, levels[i]) + sqrt(alpha_i) z,  z ~ N(0, I).
    Args:
        score_fn: (x (B, ...), level) -> the score at that noise level, (B, ...).
        x: (B, ...) the starting points.
        levels: what score_fn takes as its second argument (noise scales, or diffusion
            steps t), largest noise first.
        step_sizes: alpha_i, one per level (`song_ermon_step_sizes`).
        n_steps: Langevin steps per level.
        generator: for the noise z (default None: torch's global generator).
        final_denoise: one last noise-free step at the last level,
            x <- x + alpha_L / 2 score (removes the noise of the last Langevin step);
            default False.
        quiet: no progress bar (default: the profile decides).

    Returns:
        (B, ...) the samples.
    """
    levels = list(levels)
    step_sizes = checks.step_sizes(levels, step_sizes)
    n_steps = checks.count("n_steps", n_steps)
    checks.batch("x", x)

    def score(x, level):
        return checks.output(score_fn(x, level), x.shape, who="score_fn(x, level)",
                             what="the score")

    x = x.clone()
    for level, a in progress(list(zip(levels, step_sizes, strict=True)), desc="Langevin",
                             quiet=quiet):
        for _ in range(n_steps):
            x = x + 0.5 * a * score(x, level) + math.sqrt(a) * _randn(x.shape, x, generator)
    if final_denoise:
        x = x + 0.5 * step_sizes[-1] * score(x, levels[-1])
    return x


# --- helpers ----------------------------------------------------------------------------------
def _check_variance(variance: str) -> None:
    checks.one_of("variance", variance, VARIANCES, " (sigma_t^2 = beta_t or the posterior "
                  "variance beta_tilde_t)")


def _check_decoder(decoder: str) -> None:
    checks.one_of("decoder", decoder, DECODERS, " ('discretized': 8-bit images on [-1, 1]; "
                  "'gaussian': real-valued data)")


def _check_bound(x0, variance: str, decoder: str, where: str) -> None:
    """The bound's arguments: x0 a batch (B, ...), holding the 256 levels of 8-bit images
    for the discretized decoder (one device sync), and the variance and decoder named."""
    _check_variance(variance)
    _check_decoder(decoder)
    checks.batch("x0", x0)
    if decoder == "discretized":
        checks.eight_bit(x0, where)


def _check_eps(eps, shape, name: str) -> None:
    checks.output(eps, shape, who="eps_model(x_t, t)", what="the predicted noise", against=name)


def _gen_for(generator: torch.Generator | None, device: torch.device):
    if generator is not None:
        checks.same_device("the generator", generator, device, f"pass torch.Generator("
                           f"device={str(device)!r}) so that noise is drawn where it is used "
                           "(no copy and sync per step)", kind_only=True)
    return generator


def _randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, dtype=like.dtype, device=like.device,
                       generator=_gen_for(generator, like.device))


def _start(shape, x_T, generator, device) -> torch.Tensor:
    if x_T is not None:
        checks.batch("x_T", x_T, shape=shape)
        return x_T.clone()
    device = torch.device(device)
    return torch.randn(tuple(shape), device=device, generator=_gen_for(generator, device))
