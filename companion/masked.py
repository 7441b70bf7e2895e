"""Masked (absorbing-state) diffusion on binary pixels: chapter 14.

The forward process keeps each pixel with probability alpha_t and replaces it by a mask
state otherwise, independently across pixels, with alpha_0 = 1 (the data) and alpha_1 = 0
(everything masked) (Austin et al. 2021; in continuous time Sahoo et al. 2024, Shi et al.
2024). A state z holds, per pixel, 0, 1 or `MASK`:

    q(z_t | x_0)          = alpha_t [z_t = x_0] + (1 - alpha_t) [z_t = MASK]      (ch14-marginal)
    q(z_s | z_t, x_0)     = [z_s = z_t]                           if z_t is revealed
                          = r x [z_s = x_0] + (1 - r) [z_s = MASK]  if z_t is masked,
                            r = (alpha_s - alpha_t) / (1 - alpha_t), s < t      (ch14-posterior)

A denoiser maps a state to Bernoulli logits of x_0, one per pixel; the reverse step keeps
revealed pixels ("carry-over") and reveals a masked one with probability r, its value drawn
from the denoiser. Each KL of chapter 8's chain is then r times the cross-entropy of the
masked pixels, and in continuous time the negative ELBO is

    -ELBO(x_0) = int_0^1 w(t) E_{z_t ~ q(z_t | x_0)} [ sum_{i masked} -log p_theta(x_0,i | z_t) ] dt
    w(t) = -alpha'_t / (1 - alpha_t)                                           (ch14-elbo)

which does not depend on the schedule when the denoiser sees only the state: substitute
a = alpha_t. Shapes: x_0 and z are (B, ...) with any per-image shape, (B, 1, 28, 28) for
the digits, (B, D) for the toy; functions work per image and return (B,) in nats.

K categories (chapter 19: a prior over the codes of a vector-quantized autoencoder). Nothing
above uses that a pixel has two values: the forward process masks positions whatever they
hold, and the bound is the same weighted cross-entropy over the masked positions. With
`categories=K` the functions take codes, integer tensors (B, ...) of values 0..K-1 (MASK,
-1, for a masked position), and the denoiser returns K logits per position, (B, K, ...),
a softmax over the values; the marginal and the posterior run over the K + 1 states
(0, ..., K-1, MASK). The default, `categories=None`, is chapter 14's binary pixels: float
0/1 and one Bernoulli logit l per pixel, which is K = 2 with the logits (0, l).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .run import checks
from .run.memory import MAX_IMAGES, chunk_slices, map_chunks, rows_per_call
from .run.progress import progress

MASK = -1.0  # the absorbing state, in the tensor of 0/1 pixels (of codes 0..K-1: -1)
T_MIN = 1e-6  # draws of t below this are moved up to it: w(t) = 1/t would overflow at 0
STATES = (0.0, 1.0, MASK)  # the order of the last axis of `marginal` and `posterior`


# --- schedules -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """A masking schedule alpha_t, decreasing from alpha_0 = 1 to alpha_1 = 0.

    name: "linear", alpha_t = 1 - t, w(t) = 1 / t; or "cosine", alpha_t = cos(pi t / 2),
    w(t) = (pi / 2) sin(pi t / 2) / (1 - cos(pi t / 2)) = (pi / 2) / tan(pi t / 4).
    """

    name: str = "linear"

    def __post_init__(self):
        if self.name not in ("linear", "cosine"):
            raise checks.ArgumentError(f"unknown masking schedule {self.name!r}; choose "
                                       "'linear' or 'cosine'")

    def alpha(self, t) -> torch.Tensor:
        """alpha_t, the probability that a pixel is still revealed at time t.  t: (...)."""
        t = check_times("t", t)
        if self.name == "linear":
            return 1 - t
        a = torch.cos(0.5 * math.pi * t)
        return torch.where(t >= 1, torch.zeros_like(a), a.clamp(0, 1))  # exactly 0 at t = 1

    def weight(self, t) -> torch.Tensor:
        """w(t) = -alpha'_t / (1 - alpha_t) of (ch14-elbo).  t: (...) in (0, 1]: w(0) is
        infinite (1 / t); the bounds move draws below T_MIN up to it."""
        t = check_positive_times(check_times("t", t), self.name)
        if self.name == "linear":
            return 1 / t
        # sin(2u) / (1 - cos(2u)) = 1 / tan(u), u = pi t / 4: no cancellation near t = 0
        return 0.5 * math.pi / torch.tan(0.25 * math.pi * t)


def schedule(name) -> Schedule:
    """A Schedule from its name, or the Schedule itself."""
    return name if isinstance(name, Schedule) else Schedule(name)


def check_times(name: str, t) -> torch.Tensor:
    """t as a float tensor with every value in [0, 1]; a clear error otherwise."""
    if not torch.is_tensor(t):
        t = torch.as_tensor(checks.real(name, t, low=0.0, high=1.0), dtype=torch.float64)
    if not t.is_floating_point():
        t = t.double()
    if t.numel() and checks.on_host(t):
        lo, hi = torch.aminmax(t.detach())
        if not (float(lo) >= 0 and float(hi) <= 1):
            raise checks.ArgumentError(
                f"{name} is diffusion time, which runs over [0, 1] (0: the data, 1: all "
                f"masked); got values in [{float(lo):.3g}, {float(hi):.3g}]")
    return t


# --- states ----------------------------------------------------------------------------------
def check_positive_times(t: torch.Tensor, sched: str) -> torch.Tensor:
    """t (checked times), refused where 0 on a CPU (the weight w(t) is infinite there); on
    a GPU not checked (a device sync every step)."""
    if t.numel() and checks.on_host(t) and bool((t <= 0).any()):
        raise checks.ArgumentError(
            f"the weight w(t) of the {sched} schedule is for t in (0, 1]; got t = 0 "
            f"(at {int((t <= 0).sum())} of {t.numel()} times), where it is infinite: "
            f"move t up to a small time first, t.clamp_min(companion.masked.T_MIN)")
    return t


def check_binary(name: str, x) -> torch.Tensor:
    """x if it is a float tensor of binary pixels (every value 0 or 1); grey values get an
    error that says to binarize them. Checked on CPU tensors only (a GPU would sync)."""
    checks.tensor(name, x, floating=True)
    if x.numel() and checks.on_host(x) and not bool(((x == 0) | (x == 1)).all()):
        raise checks.ArgumentError(
            f"{name} must hold binary pixels, 0 or 1; it holds other values (in "
            f"[{float(x.min()):.3g}, {float(x.max()):.3g}]): binarize grey images with "
            "companion.data.binarize(x) (x in [0, 1]) first")
    return x


def check_states(name: str, z, *, shape=None) -> torch.Tensor:
    """z if it is a float tensor of masked states (every value 0, 1 or MASK)."""
    checks.tensor(name, z, floating=True)
    if shape is not None and tuple(z.shape[1:]) != tuple(shape):
        raise checks.ArgumentError(f"{name} must be states of shape (B, "
                                   f"{', '.join(map(str, shape))}), got {tuple(z.shape)}")
    if z.numel() and checks.on_host(z) and \
            not bool(((z == 0) | (z == 1) | (z == MASK)).all()):
        raise checks.ArgumentError(
            f"{name} must hold masked states: 0, 1 or MASK = {MASK:g} per pixel; it holds "
            "other values (grey pixels? binarize them with companion.data.binarize)")
    return z


def check_codes(name: str, x, K: int) -> torch.Tensor:
    """x if it is an integer tensor of codes, every value in 0..K-1 (a code grid, a token
    sequence); a clear error otherwise. Values checked on CPU tensors only."""
    checks.tensor(name, x)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise checks.ArgumentError(
            f"{name} must be an integer tensor of codes 0..{K - 1} (torch.long), got "
            f"{x.dtype}: the indices a quantizer returns, or x.long() for whole numbers "
            "(binary pixels as floats are chapter 14's case: leave categories=None)")
    _signed(name, x)
    if x.numel() and checks.on_host(x):
        lo, hi = torch.aminmax(x)
        if int(lo) < 0 or int(hi) >= K:
            raise checks.ArgumentError(
                f"{name} must hold codes 0..{K - 1} (categories K = {K}); it holds values "
                f"in [{int(lo)}, {int(hi)}]: pass the codebook size as categories"
                + (" (MASK = -1 is a state, not data)" if int(lo) == MASK else ""))
    return x


def check_code_states(name: str, z, K: int, *, shape=None) -> torch.Tensor:
    """z if it is an integer tensor of masked states of codes: every value in 0..K-1 or
    MASK (-1)."""
    checks.tensor(name, z)
    if shape is not None and tuple(z.shape[1:]) != tuple(shape):
        raise checks.ArgumentError(f"{name} must be states of shape (B, "
                                   f"{', '.join(map(str, shape))}), got {tuple(z.shape)}")
    if z.is_floating_point() or z.is_complex() or z.dtype == torch.bool:
        raise checks.ArgumentError(f"{name} must be an integer tensor of states (codes "
                                   f"0..{K - 1} or MASK = -1), got {z.dtype}")
    _signed(name, z)
    if z.numel() and checks.on_host(z):
        lo, hi = torch.aminmax(z)
        if int(lo) < MASK or int(hi) >= K:
            raise checks.ArgumentError(
                f"{name} must hold masked states: codes 0..{K - 1} or MASK = -1; it holds "
                f"values in [{int(lo)}, {int(hi)}]")
    return z


def _signed(name: str, x: torch.Tensor) -> None:
    """x of a signed integer dtype: an unsigned one (uint8) cannot hold MASK = -1, and its
    masked states failed deep inside torch or the network's embedding."""
    if not x.dtype.is_signed:
        raise checks.ArgumentError(f"{name} must be a signed integer tensor (torch.long), got "
                                   f"{x.dtype}, which cannot hold MASK = -1: convert it with "
                                   f"{name}.long()")


def check_categories(categories) -> int | None:
    """None (binary pixels, chapter 14) or K >= 2, the number of values of a position."""
    if categories is None:
        return None
    return checks.count("categories (K, the number of values a position takes, the "
                        "codebook size; None for binary pixels)", categories, minimum=2)


def _data(name: str, x0, categories: int | None) -> torch.Tensor:
    """x0 checked as binary pixels (categories None) or as codes 0..K-1."""
    if categories is None:
        return check_binary(name, x0)
    return check_codes(name, x0, categories)


def _states(name: str, z, categories: int | None) -> torch.Tensor:
    if categories is None:
        return check_states(name, z)
    return check_code_states(name, z, categories)


def _real(x: torch.Tensor) -> torch.dtype:
    """The dtype of probabilities and times beside x: x's own if floating (binary pixels),
    the default float dtype beside integer codes."""
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def _one_hot(x0: torch.Tensor, categories: int | None) -> torch.Tensor:
    """(B, ...) -> (B, ..., K) indicators of the values, in _real(x0): [1 - x0, x0] for
    binary pixels."""
    if categories is None:
        return torch.stack([1 - x0, x0], dim=-1)
    return F.one_hot(x0.long(), categories).to(_real(x0))


def _per_image(t, x: torch.Tensor) -> torch.Tensor:
    """t (a number, or (B,)) as a (B, 1, ..., 1) tensor in x's real dtype, to broadcast on
    x."""
    t = check_times("t", t).to(x.device, _real(x))
    if t.dim() == 0:
        t = t.expand(len(x))
    if t.shape != (len(x),):
        raise checks.ArgumentError(f"t must be one number or one per image, shape "
                                   f"({len(x)},); got {tuple(t.shape)}")
    return t.view(-1, *([1] * (x.dim() - 1)))


def _uniform(like: torch.Tensor, generator) -> torch.Tensor:
    return torch.rand(like.shape, device=like.device, dtype=_real(like), generator=generator)


# --- the forward process ---------------------------------------------------------------------
def forward_sample(x0: torch.Tensor, t, sched="linear", *, categories: int | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """z_t ~ q(z_t | x_0) of (ch14-marginal): each pixel kept with probability alpha_t,
    masked otherwise, independently.  x0: (B, ...) binary (codes 0..K-1 with
    categories=K); t: a number or (B,)."""
    _data("x0", x0, check_categories(categories))
    alpha = schedule(sched).alpha(_per_image(t, x0))
    keep = _uniform(x0, generator) < alpha
    return torch.where(keep, x0, torch.full_like(x0, MASK))


def forward_step(z_s: torch.Tensor, s, t, sched="linear", *, categories: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """z_t ~ q(z_t | z_s) for s < t: a revealed pixel stays with probability
    alpha_t / alpha_s, a masked one stays masked.  z_s: (B, ...) states."""
    _states("z_s", z_s, check_categories(categories))
    sc = schedule(sched)
    a_s, a_t = sc.alpha(_per_image(s, z_s)), sc.alpha(_per_image(t, z_s))
    if bool((a_t > a_s).any()):
        raise checks.ArgumentError("forward_step needs s <= t (alpha_s >= alpha_t)")
    keep = _uniform(z_s, generator) * a_s < a_t
    return torch.where(keep, z_s, torch.full_like(z_s, MASK))


def marginal(x0: torch.Tensor, t, sched="linear", *, categories: int | None = None
             ) -> torch.Tensor:
    """q(z_t | x_0) of (ch14-marginal), (B, ...) -> (B, ..., 3): the probabilities of the
    states STATES = (0, 1, MASK) for every pixel ((B, ..., K + 1) over 0, ..., K-1, MASK
    with categories=K).

    Book: :eq:`ch14-marginal`.
    """
    categories = check_categories(categories)
    _data("x0", x0, categories)
    alpha = schedule(sched).alpha(_per_image(t, x0))
    return torch.cat([alpha[..., None] * _one_hot(x0, categories),
                      (1 - alpha).expand(x0.shape)[..., None]], dim=-1)


def reveal_probability(s, t, sched="linear") -> torch.Tensor:
    """r = (alpha_s - alpha_t) / (1 - alpha_t) of (ch14-posterior): the probability that a
    pixel masked at t is revealed at s < t (1 at s = 0)."""
    sc = schedule(sched)
    a_s, a_t = sc.alpha(s), sc.alpha(t)
    if bool(torch.as_tensor(a_t > a_s).any()) or bool(torch.as_tensor(a_t >= 1).any()):
        raise checks.ArgumentError("reveal_probability needs 0 <= s < t <= 1")
    return (a_s - a_t) / (1 - a_t)


def posterior(z_t: torch.Tensor, x0: torch.Tensor, s, t, sched="linear", *,
              categories: int | None = None) -> torch.Tensor:
    """q(z_s | z_t, x_0) of (ch14-posterior), (B, ...) -> (B, ..., 3) over STATES
    ((B, ..., K + 1) with categories=K).

    A revealed pixel stays as it is; a masked one is revealed as x_0 with probability r and
    stays masked with probability 1 - r. s, t: numbers or (B,), s < t.

    Book: :eq:`ch14-posterior`.
    """
    categories = check_categories(categories)
    _states("z_t", z_t, categories)
    _data("x0", x0, categories)
    checks.same_shape("z_t and x0", z_t, x0)
    wrong = int(((z_t != MASK) & (z_t != x0)).sum())
    if wrong:
        raise checks.ArgumentError(
            f"z_t is not a noisy version of x0: {wrong} revealed pixel"
            f"{'s of z_t differ' if wrong > 1 else ' of z_t differs'} from x0 (the "
            "forward process keeps a pixel or masks it, never changes it): pass the z_t "
            "drawn from this x0, forward_sample(x0, t)")
    r = reveal_probability(_per_image(s, x0), _per_image(t, x0), sched)
    masked = (z_t == MASK).to(_real(x0))
    values = _one_hot(torch.where(z_t == MASK, x0, z_t), categories)  # z_t where revealed
    revealed = torch.cat([values, torch.zeros_like(values[..., :1])], dim=-1)
    moved = torch.cat([r[..., None] * _one_hot(x0, categories),
                       (1 - r).expand(x0.shape)[..., None]], dim=-1)
    return (1 - masked)[..., None] * revealed + masked[..., None] * moved


# --- the bound -------------------------------------------------------------------------------
def masked_cross_entropy(logits: torch.Tensor, x0: torch.Tensor, z: torch.Tensor, *,
                         categories: int | None = None) -> torch.Tensor:
    """sum over the masked pixels of z of -log p_theta(x_0,i | z), in nats: (B, ...) -> (B,).

    logits: the denoiser's Bernoulli logits of x_0 = 1; x0: the binary targets; z: the
    states; all three of one shape. Revealed pixels add nothing (the reverse step keeps them,
    so the model pays nothing for them): they are left out, so that even a NaN logit there
    adds nothing, to the value or to the gradient. With categories=K: x0 and z codes
    (B, ...), logits (B, K, ...), -log softmax(logits)[x_0] per masked position."""
    checks.tensor("logits", logits, floating=True)
    categories = check_categories(categories)
    if categories is not None:
        return _categorical_cross_entropy(logits, x0, z, categories)
    check_binary("x0", x0)
    check_states("z", z)
    if not logits.shape == x0.shape == z.shape or logits.dim() < 2:
        raise checks.ArgumentError(
            f"logits, x0 and z must be tensors of the same shape (B, ...), got "
            f"{tuple(logits.shape)}, {tuple(x0.shape)} and {tuple(z.shape)}: one logit, one "
            "target and one state per pixel (a (B, 1) mask would broadcast over every "
            "pixel)")
    dtype = torch.promote_types(logits.dtype, torch.float32)  # half precision: float32
    masked = z == MASK
    logits = torch.where(masked, logits.to(dtype), torch.zeros((), dtype=dtype,
                                                               device=logits.device))
    ce = F.binary_cross_entropy_with_logits(logits, x0.to(dtype), reduction="none")
    return torch.where(masked, ce, torch.zeros_like(ce)).flatten(1).sum(1)


def _categorical_cross_entropy(logits: torch.Tensor, x0: torch.Tensor, z: torch.Tensor,
                               K: int) -> torch.Tensor:
    """masked_cross_entropy for codes: logits (B, K, ...), x0 and z (B, ...) -> (B,)."""
    check_codes("x0", x0, K)
    check_code_states("z", z, K)
    if not (x0.shape == z.shape and logits.dim() == x0.dim() + 1 and x0.dim() >= 2
            and logits.shape == (len(x0), K, *x0.shape[1:])):
        raise checks.ArgumentError(
            f"logits must be (B, K, ...) = {(len(x0), K, *x0.shape[1:])} for x0 and z of "
            f"one shape (B, ...) with categories K = {K}; got logits {tuple(logits.shape)}, "
            f"x0 {tuple(x0.shape)} and z {tuple(z.shape)}: K logits per position, on dim 1")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    masked = z == MASK
    zero = torch.zeros((), dtype=dtype, device=logits.device)
    logits = torch.where(masked[:, None], logits.to(dtype), zero)
    ce = F.cross_entropy(logits, torch.where(masked, x0, torch.zeros_like(x0)).long(),
                         reduction="none")
    return torch.where(masked, ce, torch.zeros_like(ce)).flatten(1).sum(1)


DENOISER = ("of the states z (B, ...) returning logits: one per pixel (B, ...), or K per "
            "position (B, K, ...) with categories=K")


def _denoiser(denoiser, name: str = "denoiser") -> Callable:
    """denoiser if it is a function of one argument, the states z."""
    return checks.function(name, denoiser, DENOISER, args=1)


def _logits(denoiser: Callable, z: torch.Tensor, whole: bool = False,
            categories: int | None = None) -> torch.Tensor:
    """denoiser(z), at most MAX_IMAGES images a call (all at once if `whole`), checked to be
    one logit per pixel (K per position, (B, K, ...), with categories=K: at most MAX_IMAGES
    grids a call)."""
    if categories is None:
        logits = denoiser(z) if whole else map_chunks(denoiser, z)
        return checks.output(logits, z, who="the denoiser", what="logits, one per pixel",
                             against="the states z")
    size = len(z) if whole else min(MAX_IMAGES, rows_per_call(z))
    # no rows: one call on the empty batch, as map_chunks makes (torch.cat of none fails)
    parts = [denoiser(z[s]) for s in chunk_slices(len(z), max(size, 1))] or [denoiser(z)]
    logits = torch.cat(parts) if len(parts) != 1 else parts[0]
    want = (len(z), categories, *z.shape[1:])
    if not torch.is_tensor(logits) or tuple(logits.shape) != want:
        raise checks.ArgumentError(
            f"the denoiser returned shape {tuple(getattr(logits, 'shape', ()))} for states z "
            f"of shape {tuple(z.shape)}; with categories K = {categories} it must return K "
            f"logits per position, (B, K, ...) = {want}")
    return logits


def _masked_nonfinite(logits: torch.Tensor, z: torch.Tensor, categories: int | None):
    """(masked positions of z with a non-finite logit (any of the K, for codes), masked
    positions), 0-d tensors without a sync, counted as `sample` counts them: what a bound
    reads (revealed positions add nothing)."""
    masked = z == MASK
    finite = logits.isfinite() if categories is None else logits.isfinite().all(1)
    return (~finite & masked).sum(), masked.sum()


def _refuse_nonfinite(counts: list, categories: int | None) -> None:
    """A bound's non-finite logits refused by the package's one rule
    (`checks.finite_logits`), one sync for all: counts [(where, (bad, masked)), ...], one
    entry a denoiser call, from `_masked_nonfinite`."""
    if not counts or not checks.has_values(counts[0][1][0]):  # fake tensors: no values
        return
    read = torch.stack([torch.stack(c) for _, c in counts]).tolist()  # the one sync
    word = "pixel" if categories is None else "position"
    checks.finite_logits("denoiser", [(where, bad, f"{m} masked {word}s") for (where, _),
                                      (bad, m) in zip(counts, read, strict=True)],
                         needs=f"every masked {word} (every value's, for codes)")


def bound_terms(denoiser: Callable, x0: torch.Tensor, t, sched="linear", *,
                categories: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw of the integrand of (ch14-elbo) at t: w(t) times the masked cross-entropy,
    z_t ~ q(z_t | x_0), one z_t per image.  x0: (B, ...) binary (codes with categories=K);
    t: (B,) -> (B,) nats."""
    _denoiser(denoiser)
    sc = schedule(sched)
    categories = check_categories(categories)
    t = check_times("t", t).clamp_min(T_MIN)
    z = forward_sample(x0, t, sc, categories=categories, generator=generator)
    logits = _logits(denoiser, z, whole=True, categories=categories)  # a batch: one call
    ce = masked_cross_entropy(logits, x0, z, categories=categories)
    return sc.weight(t.to(ce.device, ce.dtype)) * ce


def stratified_times(n: int, *, device=None, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """n times in (0, 1], one uniform draw in each of the strata [j/n, (j+1)/n), shuffled:
    a Monte Carlo estimate of an integral over t with less variance than iid draws."""
    n = checks.count("n", n)
    u = torch.rand(n, device=device, generator=generator)
    t = (torch.arange(n, device=device) + u) / n
    return t[torch.randperm(n, device=device, generator=generator)]


def loss(model: Callable, x0: torch.Tensor, sched="linear", *,
         categories: int | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """The training loss: the batch mean of one draw of (ch14-elbo)'s integrand per image,
    t stratified over the batch. Its expectation is the negative ELBO in nats per image.

    x0: (B, ...) binary pixels (binarize grey digits afresh every step), or codes 0..K-1
    with categories=K (the model then returns (B, K, ...) logits)."""
    _denoiser(model, "model")
    categories = check_categories(categories)
    _data("x0", x0, categories)
    t = stratified_times(len(x0), device=x0.device, generator=generator)
    return bound_terms(model, x0, t, sched, categories=categories,
                       generator=generator).mean()


MAX_TIMES = 10_000  # negative_elbo's n_t: a network call on every image at each


def negative_elbo(denoiser: Callable, x0: torch.Tensor, sched="linear", *, n_t: int = 8,
                  categories: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The negative ELBO (ch14-elbo) of every image, nats, by stratified Monte Carlo over t.

    x0: (N, ...) binary -> (N,). Each image gets n_t times, one in each stratum of [0, 1],
    and one z_t at each; the network sees at most companion.run.memory.MAX_IMAGES images a call
    (the draws for all N are made before the split). categories=K: x0 codes (N, ...), the
    denoiser's logits (N, K, ...). n_t at most MAX_TIMES = 10,000; a non-finite logit at a
    masked position is refused (`checks.finite_logits`).

    Book: :eq:`ch14-elbo`; with categories=K, :eq:`ch19-masked-bound`; for text,
    :eq:`ch22-bound`.
    """
    _denoiser(denoiser)
    categories = check_categories(categories)
    _data("x0", x0, categories)
    n_t = checks.size("n_t (the times each sequence or image gets)", n_t, MAX_TIMES,
                      "each time runs the network once on every one (the book's estimates "
                      "take 8 to 32; for less noise, average over more of them)")
    sc = schedule(sched)
    total = torch.zeros(len(x0), dtype=torch.float64, device=x0.device)
    counts = []
    with torch.no_grad():
        for j in range(n_t):
            u = torch.rand(len(x0), device=x0.device, generator=generator)
            t = ((j + u) / n_t).clamp_min(T_MIN)
            z = forward_sample(x0, t, sc, categories=categories, generator=generator)
            logits = _logits(denoiser, z, categories=categories)
            counts.append((f"at time {j + 1} of n_t = {n_t}",
                           _masked_nonfinite(logits, z, categories)))
            ce = masked_cross_entropy(logits, x0, z, categories=categories)
            del logits  # not alive through the next time's network calls, the peak
            total += (sc.weight(t.to(ce.dtype)) * ce).double()
    _refuse_nonfinite(counts, categories)
    return total / n_t


def ordered_nll(denoiser: Callable, x0: torch.Tensor, categories: int,
                order=None) -> torch.Tensor:
    """-log q_sigma(x0), nats, (N,): the exact likelihood of the autoregressive model that
    the denoiser's conditionals make in one fixed order of the positions,

        -log q_sigma(x0) = sum_k -log p_theta(x0_sigma(k) | x0_sigma(<k), the rest masked),

    one term of the average over orders that the bound is (chapter 14's any-order
    identity). x0: token sequences (N, L), values 0..categories-1; order: a permutation of
    range(L), left to right by default. L network calls, each on every sequence (at most
    MAX_IMAGES a call); no sequences (0, L) give an empty (0,). A non-finite logit among
    those read (position sigma(k)'s) is refused (`checks.finite_logits`).

    Book: :eq:`ch22-bound`.
    """
    _denoiser(denoiser)
    categories = check_categories(categories)
    if categories is None:
        raise checks.ArgumentError("ordered_nll needs categories (token sequences); for "
                                   "binary images use negative_elbo")
    _data("x0", x0, categories)
    if x0.dim() != 2:
        raise checks.ArgumentError(f"x0 must be token sequences (N, L), got shape "
                                   f"{tuple(x0.shape)}")
    order = _order(order, x0.shape[1])
    z = torch.full_like(x0, int(MASK))
    total = torch.zeros(len(x0), dtype=torch.float64, device=x0.device)
    counts = []
    with torch.no_grad():
        for k, i in enumerate(order):
            logits = _logits(denoiser, z, categories=categories)[:, :, i].double()
            counts.append((f"at position {i} (step {k + 1} of {len(order)})",
                           checks.nonfinite_count(logits), f"{logits.numel()} logits"))
            total -= logits.log_softmax(1).gather(1, x0[:, i:i + 1])[:, 0]
            z[:, i] = x0[:, i]
    checks.finite_logits("denoiser", counts)
    return total


def _order(order, L: int) -> list[int]:
    """order as a list of ints, a permutation of range(L) (None: left to right); 0.0 passed
    the permutation test, then failed as an index."""
    if order is None:
        return list(range(L))
    order = [checks.count("every entry of order (a position)", i, minimum=0, maximum=L - 1)
             for i in checks.sequence("order", order, "list(range(L)), a permutation")]
    if sorted(order) != list(range(L)):
        raise checks.ArgumentError(f"order must be a permutation of the {L} positions "
                                   f"0..{L - 1}, each once, got {order!r:.80}")
    return order


def time_grid(K: int) -> torch.Tensor:
    """t_k = k / K, k = 0..K, float64: the K steps of a finite-step chain."""
    K = checks.count("K (the number of unmasking steps)", K)
    return torch.arange(K + 1, dtype=torch.float64) / K


def step_bound(denoiser: Callable, x0: torch.Tensor, K: int, sched="linear", *,
               categories: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The negative ELBO of the K-step chain, one Monte Carlo draw per step, (N,) nats:

        sum_{k=1}^K E_{z_{t_k}} [ r_k sum_{i masked} -log p_theta(x_0,i | z_{t_k}) ],
        r_k = (alpha_{t_{k-1}} - alpha_{t_k}) / (1 - alpha_{t_k}),            (ch14-steps)

    chapter 8's chain of KLs with t_k = k / K; the prior term is 0 (alpha_1 = 0: z_1 is all
    masks under q and p) and so is the last reconstruction (alpha_0 = 1). K counts the
    steps; `categories` the values of a position (codes 0..categories-1).

    Book: :eq:`ch14-steps`.
    """
    _denoiser(denoiser)
    categories = check_categories(categories)
    _data("x0", x0, categories)
    sc = schedule(sched)
    ts = time_grid(K)
    total = torch.zeros(len(x0), dtype=torch.float64, device=x0.device)
    counts = []
    with torch.no_grad():
        for k in progress(range(1, K + 1), desc=f"K-step bound (K = {K})", quiet=True):
            r = float(reveal_probability(ts[k - 1], ts[k], sc))
            z = forward_sample(x0, float(ts[k]), sc, categories=categories,
                               generator=generator)
            logits = _logits(denoiser, z, categories=categories)
            counts.append((f"at step {k} of {K}", _masked_nonfinite(logits, z, categories)))
            total += r * masked_cross_entropy(logits, x0, z, categories=categories).double()
            del logits  # not alive through the next step's network calls
    _refuse_nonfinite(counts, categories)
    return total


# --- exact values, by enumerating the masks (small images only) ------------------------------
def all_masks(D: int) -> torch.Tensor:
    """Every subset of D pixels as a (2^D, D) bool tensor, row m = the bits of m (masked)."""
    D = checks.count("D", D)
    if D > 16:
        raise checks.ArgumentError(f"enumerating 2^{D} masks is too much; exact values are "
                                   "for toys of at most 16 pixels")
    bits = torch.arange(2 ** D)[:, None] >> torch.arange(D)[None]
    return (bits & 1).bool()


def masked_ce_table(denoiser: Callable, x0: torch.Tensor, *,
                    categories: int | None = None) -> torch.Tensor:
    """f(M, x_0) = sum_{i in M} -log p_theta(x_0,i | x_0 with M masked), for every mask M.

    x0: (B, D) binary (codes with categories=K) -> (B, 2^D) float64, column m = the mask
    `all_masks(D)[m]`. For exact denoisers of toys: it calls `denoiser` once on all B 2^D
    states, not in chunks."""
    _denoiser(denoiser)
    categories = check_categories(categories)
    _data("x0", x0, categories)
    if x0.dim() != 2:
        raise checks.ArgumentError(f"exact values take flat toy images (B, D), got "
                                   f"{tuple(x0.shape)}")
    B, D = x0.shape
    masks = all_masks(D).to(x0.device)
    z = torch.where(masks[None], torch.full((), MASK, dtype=x0.dtype, device=x0.device),
                    x0[:, None]).reshape(-1, D)
    x = x0[:, None].expand(B, len(masks), D).reshape(-1, D)
    with torch.no_grad():
        logits = _logits(denoiser, z, whole=True, categories=categories).double()
        ce = masked_cross_entropy(logits, x.double() if categories is None else x, z,
                                  categories=categories)
    return ce.view(B, len(masks))


def _mask_sizes(D: int) -> torch.Tensor:
    return all_masks(D).sum(1).double()


def exact_negative_elbo(table: torch.Tensor) -> torch.Tensor:
    """(ch14-elbo) in closed form from `masked_ce_table`, (B, 2^D) -> (B,), any schedule:

        -ELBO = sum_M f(M) (m - 1)! (D - m)! / D!,   m = |M|,

    since int_0^1 w(t) (1 - a_t)^m a_t^(D-m) dt = int_0^1 (1 - a)^(m-1) a^(D-m) da, a Beta
    integral: each mask of size m weighs 1 / (m C(D, m)), one over the number of ways to
    pick it among masks of its size, times 1 / m (which masked pixel is revealed next)."""
    D = int(round(math.log2(table.shape[1])))
    m = _mask_sizes(D).to(table.device)
    log_w = torch.lgamma(m) + torch.lgamma(D - m + 1) - math.lgamma(D + 1)
    weight = torch.where(m > 0, log_w.exp(), torch.zeros_like(m))
    return table @ weight


def expected_masked_ce(table: torch.Tensor, alpha: float) -> torch.Tensor:
    """g(alpha) = E_{z ~ q(z | x_0)} [masked cross-entropy] with every pixel kept with
    probability alpha: sum_M (1 - alpha)^m alpha^(D - m) f(M).  (B, 2^D) -> (B,)."""
    alpha = checks.probability("alpha", alpha)
    D = int(round(math.log2(table.shape[1])))
    m = _mask_sizes(D).to(table.device)
    return table @ ((1 - alpha) ** m * alpha ** (D - m))


def quadrature_negative_elbo(table: torch.Tensor, sched="linear", nodes: int = 64
                             ) -> torch.Tensor:
    """(ch14-elbo) by Gauss-Legendre quadrature over t with `nodes` nodes, for the schedule
    given: w(t) g(alpha_t) integrated numerically (the closed form says it is the same for
    every schedule; this checks it).  (B, 2^D) -> (B,)."""
    import numpy as np

    sc = schedule(sched)
    u, wq = np.polynomial.legendre.leggauss(checks.count("nodes", nodes))
    ts = torch.tensor((u + 1) / 2, dtype=torch.float64)
    total = torch.zeros(len(table), dtype=torch.float64, device=table.device)
    for t, w in zip(ts, wq / 2, strict=True):
        total += float(w * sc.weight(t)) * expected_masked_ce(table, float(sc.alpha(t)))
    return total


def exact_step_bound(table: torch.Tensor, K: int, sched="linear") -> torch.Tensor:
    """(ch14-steps) in closed form: sum_k r_k g(alpha_{t_k}).  (B, 2^D) -> (B,)."""
    sc = schedule(sched)
    ts = time_grid(K)
    total = torch.zeros(len(table), dtype=torch.float64, device=table.device)
    for k in range(1, K + 1):
        r = float(reveal_probability(ts[k - 1], ts[k], sc))
        total += r * expected_masked_ce(table, float(sc.alpha(ts[k])))
    return total


# --- sampling --------------------------------------------------------------------------------
def reveal_counts(D: int, K: int, sched="linear") -> list[int]:
    """How many pixels each of K unmasking steps reveals: the masked count follows the
    schedule's expectation, round(D (1 - alpha_{t_k})), from D at t = 1 to 0 at t = 0.
    With the linear schedule and K = D, one pixel a step."""
    D = checks.count("D", D)
    sc = schedule(sched)
    masked = [round(D * (1 - float(sc.alpha(t)))) for t in time_grid(K)]
    return [masked[k] - masked[k - 1] for k in range(K, 0, -1)]


ORDERS = ("random", "confidence")


def sample(denoiser: Callable, shape, K: int, *, order: str = "random", sched="linear",
           categories: int | None = None, device=None,
           generator: torch.Generator | None = None,
           given: torch.Tensor | None = None, blocks: int = 1) -> torch.Tensor:
    """Ancestral unmasking in K steps from the all-masked state: (n, ...) binary samples
    (codes 0..categories-1, torch.long, with categories given).

    Each step asks the denoiser for every masked pixel's Bernoulli probability, draws a
    value for each, and reveals `reveal_counts(D, K)[k]` of them: chosen uniformly at random
    ("random", the reverse process with the number revealed fixed at its expectation) or
    those whose drawn value the denoiser was most sure of ("confidence", MaskGIT's order,
    Chang et al. 2022). Pixels revealed in one step are drawn independently: with K = 1
    every pixel is drawn from its own marginal; with K = D, one at a time, an
    autoregressive model in a random order. shape: (n, ...) of the samples. With
    categories: each value drawn from the softmax of its K logits (`draw_values`), the
    confidence the probability of the value drawn. given: a state of that shape to start
    from instead of the all-masked one (infilling: the revealed positions are kept, the
    masked ones filled in K steps, the same number masked in every row). blocks: cut the
    positions, flattened, into this many contiguous blocks and fill them left to right,
    K / blocks steps each, choosing by `order` inside the block (LLaDA's semi-autoregressive
    sampling, Nie et al. 2025; blocks = 1, the default, is plain unmasking).
    """
    _denoiser(denoiser)
    K = checks.count("K (the number of unmasking steps)", K)
    categories = check_categories(categories)
    if order not in ORDERS:
        raise checks.ArgumentError(f"order must be one of {ORDERS}, got {order!r}")
    shape = tuple(checks.count("every size in shape", v) for v in
                  checks.sequence("shape", shape, "(n, 1, 28, 28), the samples' shape"))
    if not shape:
        raise checks.ArgumentError("shape must hold at least the number of samples n, e.g. "
                                   "(n, 1, 28, 28)")
    device = checks.device("device", device)
    checks.generator("generator", generator)
    n, D = shape[0], math.prod(shape[1:])
    checks.size("the values drawn, prod(shape)", n * D, MAX_SAMPLED, "the states and every "
                "step's logits hold them all (the chapters' largest, 20,000 x 9); draw in "
                "batches")
    z = torch.full(shape, MASK, device=device,
                   dtype=torch.float32 if categories is None else torch.long)
    M = D  # the positions to fill
    if given is not None:
        z, M = _given(given, shape, categories, z)
    if K > M:
        raise checks.ArgumentError(f"K = {K} steps for {M} masked pixels: at most one step "
                                   f"per pixel, K <= {M}")
    still, bad = M, []
    for k, (count, lo, hi) in enumerate(progress(_plan(D, M, K, blocks, sched, given),
                                                 desc=f"unmasking ({order}, K = {K})",
                                                 quiet=True)):
        still -= count
        if count == 0:
            continue
        with torch.no_grad():
            logits = _logits(denoiser, z, categories=categories).float()
        logits = logits.reshape(n, D) if categories is None else \
            logits.reshape(n, categories, D)
        flat = z.reshape(n, D)
        finite = logits.isfinite() if categories is None else logits.isfinite().all(1)
        bad.append((k, (~finite & (flat == MASK)).sum(), n * still + n * count))
        if checks.on_host(flat):  # a GPU is checked once, after the last step
            _finite_logits(bad[-1:], K)
        values, confidence = draw_values(logits, generator=generator)
        if order == "random":
            score = torch.rand(n, D, device=z.device, generator=generator)
        else:
            score = confidence
        score = score.masked_fill(flat != MASK, -math.inf)
        if (lo, hi) != (0, D):  # semi-autoregressive: only the current block
            score[:, :lo], score[:, hi:] = -math.inf, -math.inf
        pick = score.topk(count, dim=1).indices
        flat = flat.scatter(1, pick, values.gather(1, pick))
        z = flat.reshape(shape)
    _finite_logits(bad, K)
    return z


def _plan(D: int, M: int, K: int, blocks, sched, given) -> list[tuple[int, int, int]]:
    """sample's steps: (positions revealed, first and last + 1 position it may reveal)."""
    blocks = checks.count("blocks", blocks)
    if blocks == 1:
        return [(c, 0, D) for c in reveal_counts(M, K, sched)]
    if given is not None:
        raise checks.ArgumentError("blocks > 1 fills from the all-masked state: give blocks "
                                   "= 1 with given")
    if blocks > D or K % blocks:
        raise checks.ArgumentError(f"blocks must divide K and be at most the {D} positions, "
                                   f"got blocks = {blocks}, K = {K}")
    # K <= D and blocks | K leave K / blocks <= floor(D / blocks), every block's size at least
    edges = [round(b * D / blocks) for b in range(blocks + 1)]
    return [(c, a, b) for a, b in itertools.pairwise(edges)
            for c in reveal_counts(b - a, K // blocks, sched)]


def _given(given, shape, categories: int | None, like: torch.Tensor):
    """sample's starting state: `given` checked to be states of `shape` with the same number
    of masked positions in every row, on the sampler's device and dtype; (z, masked count)."""
    given = _states("given", given, categories)
    if tuple(given.shape) != tuple(shape):
        raise checks.ArgumentError(f"given must have the samples' shape {tuple(shape)}, got "
                                   f"{tuple(given.shape)}")
    counts = (given.reshape(len(given), -1) == MASK).sum(1)
    if len(counts) and (counts.min() != counts.max() or counts.min() == 0):
        raise checks.ArgumentError(f"given must mask the same number (at least 1) of "
                                   f"positions in every row, got {int(counts.min())} to "
                                   f"{int(counts.max())}: fill rows with other gaps in "
                                   "separate calls")
    return given.to(like.device, like.dtype), int(counts[0]) if len(counts) else 0


MAX_SAMPLED = 10_000_000  # sample's n x D (a million images asked for 784 million: 19 s)
MAX_LAW_PIXELS = 12  # sampler_law enumerates partial states: up to 3^D of them


def sampler_law(denoiser: Callable, D: int, K: int, *, order: str = "random",
                sched="linear") -> torch.Tensor:
    """The exact distribution of `sample`'s binary images of D pixels in K steps of the
    schedule sched, (2^D,) float64, entry m the image whose pixel i is bit i of m
    (`toy.BinaryTable`'s order).

    It follows `sample` step by step over every partial state (the revealed pixels and
    their values, at most 3^D of them): each step asks the denoiser for the masked pixels'
    probabilities p_i (rounded to float32, as `sample` has them; the states reach the
    denoiser as float64, which the toy's exact denoiser takes alike) and draws a value for
    each; "random" reveals `reveal_counts(D, K, sched)[k]` of them, every subset equally
    likely; "confidence" reveals those whose drawn value had the largest probability, the
    choice made by torch's `topk` on the CPU as `sample` makes it there (so that ties fall
    alike), for every joint draw of the masked pixels. The count revealed a step is fixed,
    unlike in the model of the K-step bound (`exact_step_bound`), where each masked pixel
    is revealed on its own. With an exact denoiser (`toy.BinaryTable.denoiser`), the linear
    schedule and K = D, one pixel a step in random order, the law is the data's. D at most
    MAX_LAW_PIXELS = 12."""
    _denoiser(denoiser)
    K = checks.count("K (the number of unmasking steps)", K)
    D = checks.size("D (the pixels of an image)", D, MAX_LAW_PIXELS, "the law is followed "
                    "over every partial state, up to 3^D of them (the chapter's toy has 9 "
                    "pixels)")
    if order not in ORDERS:
        raise checks.ArgumentError(f"order must be one of {ORDERS}, got {order!r}")
    if K > D:
        raise checks.ArgumentError(f"K = {K} steps for {D} pixels: at most one step per "
                                   f"pixel, K <= {D}")
    n = 2 ** D
    pixel = 1 << torch.arange(D)
    law = torch.zeros(n * n, dtype=torch.float64)  # entry R n + v: revealed bits R, values v
    law[0] = 1.0
    for k, count in enumerate(reveal_counts(D, K, sched)):
        if count == 0:
            continue
        keys = law.nonzero().squeeze(1)
        R_all, v_all = keys // n, keys % n
        revealed = (R_all[:, None] & pixel) != 0
        z = torch.where(revealed, ((v_all[:, None] & pixel) != 0).double(), MASK)
        with torch.no_grad():
            logits = _logits(denoiser, z, whole=True).float().reshape(-1, D)
        # as `sample` refuses them: a NaN at a masked pixel made the whole law NaN
        _finite_logits([(k, (~torch.isfinite(logits) & ~revealed).sum(),
                         int((~revealed).sum()))], K)
        p1 = torch.sigmoid(logits)
        step = torch.zeros_like(law)
        for R in R_all.unique().tolist():  # the states that revealed the same pixels
            rows = (R_all == R).nonzero().squeeze(1)
            masked = [i for i in range(D) if not R >> i & 1]
            draws = torch.tensor(list(itertools.product((0, 1), repeat=len(masked))))
            drawn = (draws * pixel[masked]).sum(1)  # (2^m,) each joint draw's value bits
            p_m = p1[rows][:, masked]  # (G, m) float32, as `sample` has them
            chance = torch.where(draws[None] == 1, p_m[:, None], 1 - p_m[:, None])
            weight = law[keys[rows]][:, None] * torch.where(
                draws[None] == 1, p_m[:, None].double(), 1 - p_m[:, None].double()).prod(-1)
            if order == "random":  # every subset of `count` masked pixels, equally likely
                picks = torch.tensor([sum(1 << masked[k] for k in c) for c in
                                      itertools.combinations(range(len(masked)), count)])
                w = (weight / len(picks))[:, :, None].expand(-1, -1, len(picks))
            else:  # the drawn values the denoiser was surest of, chosen as `sample` does
                score = torch.full((chance.shape[0] * chance.shape[1], D), -math.inf)
                score[:, masked] = chance.reshape(-1, len(masked))
                top = score.topk(count, dim=1).indices
                picks = (pixel[top].sum(1)).reshape(chance.shape[:2])[:, :, None]  # (G, 2^m, 1)
                w = weight[:, :, None]
            new_R = R | picks
            new_v = v_all[rows][:, None, None] | (drawn[None, :, None] & picks)
            step.index_add_(0, (new_R * n + new_v).expand_as(w).reshape(-1), w.reshape(-1))
        law = step
    return law.reshape(n, n).sum(0)


def draw_values(logits: torch.Tensor, *, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One value for every position and how sure the denoiser was of it: (values,
    confidence), both (n, D).

    logits (n, D), Bernoulli (binary pixels): value = [u < p_1], p_1 = sigmoid(logit), as
    floats 0/1; logits (n, K, D), a softmax over K values: the inverse CDF read from the
    top, value = max {k : u < p_k + ... + p_{K-1}} (torch.long), one uniform u per position,
    so that at K = 2 with the logits (0, l) it is the binary draw u < p_1 with the same u.
    confidence: the probability of the value drawn. NaN logits give value 0 (the sampler
    refuses them)."""
    checks.tensor("logits", logits, floating=True)
    if logits.dim() not in (2, 3):
        raise checks.ArgumentError(f"logits must be (n, D) Bernoulli logits or (n, K, D) "
                                   f"logits over K values, got shape {tuple(logits.shape)}")
    checks.generator("generator", generator)
    u = torch.rand(logits.shape[0], logits.shape[-1], device=logits.device,
                   generator=generator)
    if logits.dim() == 2:
        p1 = torch.sigmoid(logits)
        values = (u < p1).float()
        return values, torch.where(values == 1, p1, 1 - p1)
    p = torch.softmax(logits, dim=1)
    tail = p.flip(1).cumsum(1).flip(1)                        # (n, K, D): P(value >= k)
    values = (u[:, None] < tail[:, 1:]).sum(1)                # (n, D) in 0..K-1
    return values, p.gather(1, values[:, None]).squeeze(1)


def _finite_logits(steps: list, K: int) -> None:
    """Refuse the first of `steps`, (k, count of non-finite logits at masked pixels, masked
    pixels), with a non-finite logit (one sync for all): a diverged denoiser's NaN would
    otherwise be drawn as clean zeros."""
    checks.finite_logits("denoiser", [(f"at step {k + 1} of {K}", c, f"{m} masked pixels")
                                      for k, c, m in steps],
                         needs="every masked pixel (every value's, for codes)")
