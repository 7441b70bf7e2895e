"""The argument checks every public function of companion shares.

Each returns the value as the function uses it (an int, a float, the tensor) or raises a
ValueError / TypeError whose message names the argument, what it got and what it needs:

    T = checks.count("T", T)                       # a positive whole number
    eta = checks.real("eta", eta, low=0.0)         # a finite real, >= 0
    p = checks.probability("p", p)                 # a real in [0, 1]
    x = checks.images("x", x, low=0.0, high=1.0)   # a float tensor of images in [0, 1]

Whole numbers may be Python or NumPy integers or one-element integer tensors (not floats,
not even 2.0: a size that is a float is usually a computation gone wrong); reals may be any
of those, a float, a NumPy float or a one-element float tensor; bools are neither. NaN and
the infinities are refused unless asked for. The errors are `ArgumentError`, both a
ValueError and a TypeError, so that callers that caught either still do.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterable

import torch
from torch._subclasses.fake_tensor import FakeTensor


class ArgumentError(ValueError, TypeError):
    """An argument of the wrong kind or out of range; the message says which and why."""


def as_int(value):
    """A Python or NumPy integer, or a one-element integer tensor, as an int; anything else
    (floats, bools, None) unchanged, for the caller's own check to refuse."""
    v = _scalar(value)
    if isinstance(v, numbers.Integral) and not isinstance(v, bool) and \
            not isinstance(value, bool):
        return int(v)
    return value


def as_float(value):
    """A real number of any kind (NumPy, a one-element tensor) as a float; anything else
    unchanged."""
    v = _scalar(value)
    if isinstance(v, numbers.Real) and not isinstance(v, bool) and not isinstance(value, bool):
        return float(v)
    return value


def _scalar(value):
    """A one-element tensor or NumPy scalar as a Python number; anything else unchanged."""
    if torch.is_tensor(value) and value.numel() == 1 and not value.is_complex():
        return value.item()
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():  # a NumPy scalar or 0-d array
        return item()
    return value


def _got(value) -> str:
    if torch.is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{value!r}" if isinstance(value, (numbers.Number, str, type(None))) \
        else f"a {type(value).__name__}"


def count(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    """`value` as an int >= `minimum` (1 by default: a positive whole number) and, with
    `maximum`, <= maximum."""
    v = as_int(value)
    where = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
    if not isinstance(v, int) or isinstance(v, bool):
        raise ArgumentError(f"{name} must be a whole number {where}, got {_got(value)}")
    if v < minimum or (maximum is not None and v > maximum):
        raise ArgumentError(f"{name} must be a whole number {where}, got {v}")
    return v


def size(name: str, value, maximum: int, why: str, minimum: int = 1) -> int:
    """`value` as an int in minimum..maximum: a size a reader passes (a number of points,
    steps, slider positions) that past `maximum` would end in a memory error naming no
    argument, or in minutes of computing for nothing; `why` says why the bound (the error
    for a size above it says the limit and the why)."""
    v = count(name, value, minimum)
    if v > maximum:
        raise ArgumentError(f"{name} must be at most {maximum:,}, got {v:,}: {why}")
    return v


# A codebook's codes (VectorQuantizer, code_counts, the code priors): the book's largest has
# 1,000 (FSQ's 8 x 5 x 5 x 5); 10^9 ended in a memory error that named no argument.
MAX_CODES = 2**20


def codes(K) -> int:
    """K, a number of codes (a codebook's, a code prior's), as an int in 2..MAX_CODES."""
    return size("K (the number of codes)", K, MAX_CODES, "the codebook, its counts and a "
                "prior's logits hold K entries a row (the book's largest: FSQ's 1,000)",
                minimum=2)


# A solver's steps: the book's longest solve (chapter 13's reference, Heun) has 4,000.
MAX_GRID_STEPS = 100_000


def grid_steps(name: str, value) -> int:
    """`value`, a solver's number of steps (the intervals of its grid), as an int in
    1..MAX_GRID_STEPS = 1..100,000: 25 times the book's longest solve (chapter 13's
    reference, 4,000 steps of Heun). Past that a grid is beyond any sampler the book runs;
    a billion steps ended in a memory error that named no argument."""
    return size(name, value, MAX_GRID_STEPS, "a grid of more steps is beyond any sampler "
                "the book runs (its longest solve, chapter 13's reference, takes 4,000)")


def early_steps(steps, full: int) -> int:
    """steps, the updates a load-or-train recipe trains, as an int: None for the profile's
    full run of `full` updates, or an early run of 1..full of them (its own checkpoint,
    resumed into the full run: `recipes.snapshots`). Unbounded, 10^12 steps trained until
    the process was killed (issue 96)."""
    if steps is None:
        return full
    return size("steps (the updates of an early run, or None for the full run)", steps, full,
                f"an early run stops partway through the profile's full run of {full:,} "
                "updates and resumes into it (steps=None trains them all); for a longer "
                "run pick a larger profile (get_profile('gpu'))")


# What a FLOP count runs through the network: it reports FLOPs per example, the same for
# any batch (2 by default), so a batch past memory.MAX_IMAGES only costs memory.
MAX_FLOPS_BATCH = 1000


def flops_batch(batch) -> int:
    """batch, the examples a FLOP count (`flops_per_image`, `flops_per_sequence`) runs
    through the network at once, as an int in 1..MAX_FLOPS_BATCH = 1..1,000 (0 divided by
    zero, 2.5 failed inside torch, 10^12 in the allocator)."""
    return size("batch (the examples the FLOP count runs at once)", batch, MAX_FLOPS_BATCH,
                "the count is per example, the same for any batch (2, the default, is "
                "enough), and the network sees at most 1,000 examples a call")


def text(name: str, value, what: str = "a str") -> str:
    """`value` if it is a str (`what` says which: "one sentence, a str"); bytes, a list of
    strings and anything else refused by name (a grammar read bytes or a list as a string
    it never writes, -inf, and called that an answer)."""
    if isinstance(value, str):
        return value
    hint = (f": decode it first, {name.split()[0]}.decode('utf-8')"
            if isinstance(value, (bytes, bytearray)) else
            ": pass one string, not a list (call once per string)"
            if isinstance(value, (list, tuple)) else "")
    raise ArgumentError(f"{name} must be {what}, got {_got(value)}{hint}")


def one_of(name: str, value, options, what: str = ""):
    """`value` if it is one of `options`; `what` says what the options mean."""
    if value not in options:
        raise ArgumentError(f"{name} must be one of {tuple(options)}{what}, got {value!r}")
    return value


def real(name: str, value, *, low: float | None = None, high: float | None = None,
         open_low: bool = False, open_high: bool = False, finite: bool = True) -> float:
    """`value` as a float, finite (unless finite=False) and within [low, high] (open at the
    ends asked for)."""
    v = as_float(value)
    where = _range(low, high, open_low, open_high)
    if not isinstance(v, float):
        raise ArgumentError(f"{name} must be a real number{where}, got {_got(value)}")
    if math.isnan(v) or (finite and math.isinf(v)):
        raise ArgumentError(f"{name} must be a finite number{where}, got {v}")
    if (low is not None and (v < low or (open_low and v == low))) or \
            (high is not None and (v > high or (open_high and v == high))):
        raise ArgumentError(f"{name} must be a number{where}, got {v:g}")
    return v


def positive(name: str, value) -> float:
    """A finite real > 0."""
    return real(name, value, low=0.0, open_low=True)


def probability(name: str, value) -> float:
    """A real in [0, 1]."""
    return real(name, value, low=0.0, high=1.0)


def _range(low, high, open_low, open_high) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if open_low else '>='} {low:g}"
    if low is None:
        return f" {'<' if open_high else '<='} {high:g}"
    return f" in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"


def weights(name_a: str, a, name_b: str, b) -> tuple[float, float]:
    """(a, b) as floats, two finite weights >= 0, not both 0 (of x_0 and of eps in
    x_t = a x_0 + b eps)."""
    a, b = real(name_a, a, low=0.0), real(name_b, b, low=0.0)
    if not a + b > 0:
        raise ArgumentError(f"{name_a} and {name_b} must be >= 0, not both 0; got {a}, {b}")
    return a, b


def tensor(name: str, value, *, dims: int | None = None, floating: bool = False,
           nonempty: bool = False) -> torch.Tensor:
    """`value` if it is a tensor (with `dims` dimensions, floating point, non-empty, as
    asked); a clear TypeError for None, a list or a NumPy array."""
    if not torch.is_tensor(value):
        hint = (" (convert with torch.from_numpy(a).float())"
                if type(value).__module__ == "numpy" else "")
        raise ArgumentError(f"{name} must be a torch tensor, got {_got(value)}{hint}")
    if dims is not None and value.dim() != dims:
        raise ArgumentError(f"{name} must have {dims} dimensions, got shape "
                            f"{tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise ArgumentError(f"{name} must be a floating-point tensor, got {value.dtype} "
                            "(convert with .float())")
    if nonempty and value.numel() == 0:
        raise ArgumentError(f"{name} is empty (shape {tuple(value.shape)})")
    return value


def on_host(x) -> bool:
    """True when the values of tensor `x` can be read without a device sync: a real tensor
    on the CPU. False on a GPU (each read would stall the stream), for fake and meta tensors
    (shapes without values: the memory test's) and while torch.compile traces."""
    return (x.device.type == "cpu" and not x.is_meta and not isinstance(x, FakeTensor)
            and not torch.compiler.is_compiling())


def has_values(x) -> bool:
    """False for a tensor of shapes without values (meta, or fake: the memory test's), whose
    values no check can read; True for anything else."""
    return not (torch.is_tensor(x) and (x.is_meta or isinstance(x, FakeTensor)))


def all_finite(x) -> bool:
    """True unless `x` is a floating-point tensor holding NaN or inf: one sum, finite unless
    some value is NaN or infinite (or the sum overflows: then the exact test), and on a GPU
    one device sync. Non-tensors and integer tensors: True (they hold no NaN)."""
    if not torch.is_tensor(x) or not x.is_floating_point() or x.numel() == 0:
        return True
    if x.is_meta or isinstance(x, FakeTensor):  # shapes without values
        return True
    v = x.detach()
    low = v.dtype in (torch.float16, torch.bfloat16)  # their sums overflow at 65504
    if bool(torch.isfinite(v.sum(dtype=torch.float32) if low else v.sum())):
        return True
    return bool(torch.isfinite(v).all())


def finite(name: str, x, fix: str = "") -> torch.Tensor:
    """`x` (a tensor) if every value is finite; else an error naming `name`, saying how many
    values are NaN or infinite, and `fix` (what to do; by default: drop or repair them).

    The package's one rule for NaN and inf: a public function that takes a reader's data
    tensors refuses non-finite values in them here, naming the argument, rather than
    returning NaN. Not checked: what samplers, solvers and training losses receive at every
    step (fields, denoisers, eps models, the batches of `fit`, which refuses the first
    non-finite loss itself), where a check a step would cost a device sync a step.

    Cost: one reduction (the sum, finite unless some value is NaN or infinite; only if it
    is not, from overflow or from a bad value, the exact count) and, on a GPU, one device
    sync. Measured on a 2-core CPU (the development machine), one thread, float32: 28-56 us
    for a (256, 1, 28, 28) batch and 30-60 us for (2000, 128) (the spread over runs, with
    notebooks executing beside them), where torch.isfinite(x).all() takes
    0.7-1.0 ms; a tensor that does hold NaN costs the exact count too (0.6-1.3 ms).
    """
    if all_finite(x):
        return x
    bad = int((~torch.isfinite(x.detach())).sum())
    if bad:
        raise ArgumentError(f"{name} holds {bad} NaN or infinite value{'s' * (bad > 1)} (of "
                            f"{x.numel()}): {fix or 'drop or repair those values first'}")
    return x


def gradient(who: str, out: torch.Tensor, x: torch.Tensor, *, what: str,
             allow_unused: bool = False, **grad_kw) -> torch.Tensor | None:
    """torch.autograd.grad(out, x, **grad_kw)[0], the gradient `what` needs of `who`'s
    output `out` with respect to its input x (a leaf that requires grad); instead of
    torch's "element 0 of tensors does not require grad", an error naming `who` and the
    likely cause. allow_unused: None where `out` does not depend on x (one column of a
    Jacobian may not), for the caller to refuse when no column does (`not_differentiable`).
    """
    if not out.requires_grad:
        raise not_differentiable(who, what, "its output does not require grad")
    g, = torch.autograd.grad(out, x, allow_unused=True, **grad_kw)
    if g is None and not allow_unused:
        raise not_differentiable(who, what, "its output does not depend on x")
    return g


def not_differentiable(who: str, what: str, reason: str) -> ArgumentError:
    """The error for a function (`who`) whose output autograd cannot trace back to x."""
    return ArgumentError(
        f"{what} needs the gradient of {who} with respect to x, but {reason}: likely it runs "
        "under torch.no_grad() or torch.inference_mode(), calls .detach() (or .item(), "
        ".numpy()) on x or on what it returns, or is a constant function of x. Remove the "
        "no_grad or the detach (the gradient is taken here, under torch.enable_grad())")


def images(name: str, x, *, low: float = 0.0, high: float = 1.0, shape=None,
           tolerance: float = 0.01) -> torch.Tensor:
    """`x` if it is a float tensor of images (B, ...) whose values lie in [low, high] (give
    or take `tolerance`) and, with `shape`, whose per-image shape is `shape`. The error
    for 0..255 bytes or the other of [0, 1] and [-1, 1] says how to convert."""
    tensor(name, x, floating=True)
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ArgumentError(f"{name} must be images of shape (B, "
                            f"{', '.join(map(str, shape))}), got {tuple(x.shape)}")
    if x.numel() == 0:
        return x
    lo, hi = torch.aminmax(x.detach().float())
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ArgumentError(f"{name} holds NaN or infinite values")
    if lo < low - tolerance or hi > high + tolerance:
        fix = ("0..255 bytes? divide by 255" + ("" if low == 0.0 else ", then x * 2 - 1")
               if hi > 2 else "on [-1, 1]? map with (x + 1) / 2" if low == 0.0
               else "on [0, 1]? map with x * 2 - 1")
        raise ArgumentError(f"{name} must be images with values in [{low:g}, {high:g}], got "
                         f"values in [{lo:.3g}, {hi:.3g}]: {fix}")
    return x


def data(name: str, x) -> torch.Tensor:
    """`x` if it is a non-empty floating-point batch (B, ...) with at least 2 dimensions
    and, when it holds images (B, C, H, W), values in [-1, 1], as the U-Net takes them
    (0..255 bytes and [0, 1] images get the conversion)."""
    batch(name, x, min_dims=2)
    return images(name, x, low=-1.0, high=1.0) if x.dim() == 4 else x


def batch(name: str, x, *, min_dims: int = 1, shape=None) -> torch.Tensor:
    """`x` if it is a non-empty floating-point batch (B, ...) with at least `min_dims`
    dimensions, at least one value an example, and, with `shape`, of that whole shape (free:
    no device sync). 8-bit pixels get the conversion to [-1, 1]."""
    if not torch.is_tensor(x):
        raise ArgumentError(f"{name} must be a torch tensor, got {type(x).__name__}; convert "
                            f"it with torch.as_tensor({name}) (torch.from_numpy for a NumPy "
                            "array)")
    if not x.is_floating_point():
        fix = (f"8-bit pixels in 0..255 go on [-1, 1] with {name}.float() / 127.5 - 1"
               if x.dtype == torch.uint8 else f"convert it with {name}.float()")
        raise ArgumentError(f"{name} must be a floating-point tensor, got {x.dtype}: {fix}")
    if x.dim() < max(min_dims, 1):
        what = ("a 0-dim tensor" if x.dim() == 0 else f"shape {tuple(x.shape)}")
        raise ArgumentError(f"{name} must be a non-empty batch (B, ...), got {what}; use "
                            f"{name}.reshape(1, -1) for one point")
    if x.shape[0] == 0:
        raise ArgumentError(f"{name} is an empty batch (no images), shape {tuple(x.shape)}: "
                            "pass at least one image (check the batch size and the data "
                            "slice)")
    if x.numel() == 0:  # (4, 0): a bound of 0 values per example was 0/0, NaN a row
        raise ArgumentError(f"{name} holds no values in each of its {x.shape[0]} examples, "
                            f"shape {tuple(x.shape)}: an example needs at least one value "
                            "(check the slice or reshape that made it)")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ArgumentError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")
    return x


def points(name: str, x, fix: str) -> torch.Tensor:
    """`x` if it is a batch of points (B, D) (`batch` with two dimensions); `fix` says what
    to do with images."""
    batch(name, x, min_dims=2)
    if x.dim() != 2:
        raise ArgumentError(f"{name} must be points (B, D), got shape {tuple(x.shape)}: {fix}")
    return x


def stacked(name: str, value, like: torch.Tensor) -> torch.Tensor:
    """`value` if it is a tensor (P, *like.shape) with P >= 1: P draws of something shaped
    like `like` (Hutchinson's probes)."""
    if not torch.is_tensor(value) or value.dim() != like.dim() + 1 or len(value) == 0 \
            or value.shape[1:] != like.shape:
        raise ArgumentError(f"{name} must be (P, *x.shape) = (P, "
                            f"{', '.join(map(str, like.shape))}) with P >= 1, got "
                            f"{tuple(value.shape) if torch.is_tensor(value) else value!r}")
    return value


def per_point(out, n: int, *, who: str, fix: str) -> torch.Tensor:
    """`out` if it is a tensor (n,), one value per point: a (n, 1) would broadcast into
    (n, n) when added to a (n,)."""
    if not torch.is_tensor(out) or tuple(out.shape) != (n,):
        raise ArgumentError(f"{who} must return one value per point ({n},), got "
                            f"{tuple(getattr(out, 'shape', ())) or type(out).__name__}: {fix}")
    return out


def same_shape(names: str, a, b) -> None:
    """Two tensors of one shape (a batch of 4 against one point would broadcast silently)."""
    if not (torch.is_tensor(a) and torch.is_tensor(b)) or a.shape != b.shape:
        raise ArgumentError(f"{names} must be tensors of the same shape, got "
                            f"{tuple(getattr(a, 'shape', ()))} and "
                            f"{tuple(getattr(b, 'shape', ()))}")


def output(out, shape, *, who: str = "the field", what: str = "a value for every point",
           against: str = "x") -> torch.Tensor:
    """A model's or a field's output `out`, a tensor of `shape` (that of `against`, or
    `against` itself when a tensor is given): a (B, 1, 1, 1) prediction would broadcast
    silently against (B, 1, 28, 28)."""
    shape = shape.shape if torch.is_tensor(shape) else shape
    if not torch.is_tensor(out):
        raise ArgumentError(f"{who} must return a tensor ({what}), got "
                            f"{type(out).__name__}")
    if out.shape != tuple(shape):
        raise ArgumentError(f"{who} returned shape {tuple(out.shape)} for {against} of shape "
                            f"{tuple(shape)}; it must return {what} of the same shape "
                            f"(shaped like {against})")
    return out


def path_pair(names: str, a, b, tau, *, before_noise: bool = False):
    """tau as a float in [0, 1] (in [0, 1) with `before_noise`: at tau = 1 the linear path
    is pure noise, and its velocity no function of eps), or a float tensor (B,) of such
    times, one per point, for two tensors `a` and `b` (B, ...) of one shape."""
    same_shape(names, a, b)
    if torch.is_tensor(tau) and tau.dim() > 0 and not before_noise:
        return unit_times("tau", tau, len(a))
    if before_noise:
        return real("tau (use tau < 1: at tau = 1 the path is pure noise, and the velocity "
                    "no function of eps)", tau, low=0.0, high=1.0, open_high=True)
    return unit_time("tau", tau)


def unit_time(name: str, t) -> float:
    """t as a float in [0, 1], continuous time (0 the data, 1 the noise; a chain's steps
    are 1..T)."""
    value = as_float(t)  # NumPy and one-element tensors too
    if not isinstance(value, float):
        raise ArgumentError(f"{name} must be a number in [0, 1], got {t!r:.60}")
    if not 0.0 <= value <= 1.0:
        hint = (" (continuous time runs over [0, 1]; a chain step s in 1..T is at about "
                "s / T)") if value > 1 else ""
        raise ArgumentError(f"{name} must lie in [0, 1], got {value:g}{hint}")
    return value


def time_span(t0, t1) -> tuple[float, float]:
    """(t0, t1), two times in [0, 1] with t0 < t1 (from the data towards the noise)."""
    t0, t1 = unit_time("t0", t0), unit_time("t1", t1)
    if not t0 < t1:
        raise ArgumentError(f"need t0 < t1 (data to noise), got t0={t0}, t1={t1}")
    return t0, t1


def time_grid(ts) -> list[float]:
    """A solver's grid: at least 2 times in [0, 1], strictly increasing or decreasing."""
    ts = [unit_time("every time in ts", t) for t in ts]
    if len(ts) < 2:
        raise ArgumentError(f"a time grid needs at least 2 points, got {len(ts)}")
    d = [b - a for a, b in zip(ts[:-1], ts[1:], strict=True)]
    if not (all(v > 0 for v in d) or all(v < 0 for v in d)):
        raise ArgumentError("the time grid must be strictly monotone (increasing or "
                            "decreasing)")
    return ts


def sigma_range(sigma_min, sigma_max) -> tuple[float, float]:
    """(sigma_min, sigma_max), two finite noise levels with 0 < sigma_min < sigma_max (EDM's
    0.002 and 80)."""
    lo = positive("sigma_min (the smallest noise level, > 0)", sigma_min)
    hi = positive("sigma_max (the largest noise level)", sigma_max)
    if not lo < hi:
        raise ArgumentError(f"need sigma_min < sigma_max, got sigma_min={lo:g} and "
                            f"sigma_max={hi:g}: swap them (EDM uses 0.002 and 80)")
    return lo, hi


def sigma_grid(sigmas) -> list[float]:
    """A sampler's noise levels as floats: at least 2, finite, strictly decreasing, all > 0
    but the last, which may be 0 (the data)."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if s.dim() != 1 or len(s) < 2:
        raise ArgumentError(f"sigmas must be a 1-D grid of at least 2 noise levels (largest "
                            f"first, e.g. rho_grid(n)), got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        raise ArgumentError("sigmas must be finite noise levels, got NaN or inf")
    if bool((s[1:] >= s[:-1]).any()):
        raise ArgumentError("sigmas must decrease strictly (the sampler runs from the "
                            "largest noise level to the smallest); reverse an increasing "
                            "grid with sigmas.flip(0)")
    if bool((s[:-1] <= 0).any()) or s[-1] < 0:
        raise ArgumentError(f"sigmas must be > 0 (the last may be 0), got min "
                            f"{s.min().item():g}")
    return s.tolist()


def model_steps(model, steps: int, *, what: str, fix: str, who: str = "the model") -> None:
    """A U-Net built for another number of steps (its config.T) than `steps` would take
    the steps silently: `what` names where `steps` comes from, `fix` how to agree, `who`
    the model (the teacher, the student)."""
    T = getattr(getattr(model, "config", None), "T", None)
    if isinstance(T, int) and T != steps:
        raise ArgumentError(f"{who} was built for T = {T} steps but {what} has "
                            f"{steps}: {fix}")


def grid_intervals(K, *models, who: tuple[str, ...] = ()) -> int:
    """K, the number of intervals of the flow's grid tau = k / K, as a positive int; with
    `models`, refused unless each was built for the K + 1 grid times (its config.T): a model
    of T = 41 on K = 10 would read tau = 1 as tau = 0.25. `who` names the models (by
    default "the model"). The one check of a grid against a model (flow, fewstep)."""
    K = count("K (grid intervals of tau, a positive int)", K)
    for i, model in enumerate(models):
        if model is not None:
            model_steps(model, K + 1, what=f"the grid of tau, K + 1 = {K + 1} times",
                        who=who[i] if i < len(who) else "the model", fix="build the U-Net "
                        f"with preset(..., T={K + 1}), or pass the K it was trained on")
    return K


GRID_TOLERANCE = 1e-4  # how far (x + 1) * 127.5 may lie from an integer (float rounding)


def eight_bit(x0: torch.Tensor, where: str, name: str = "x0",
              setting: str = "decoder='discretized'",
              other: str = "decoder='gaussian' for real-valued data") -> None:
    """x0 must hold the discretized decoders' 256 levels -1 + 2k/255 (`name`, `setting` and
    `other` word the message: the DDPM's bound, the VAEs' discretized decoders).

    Checks that (x0 + 1) * 127.5 lies in [0, 255] and within GRID_TOLERANCE of an integer
    (within 255 eps for float16/bfloat16, whose levels are rounded more coarsely): one
    reduction and one device sync per call, for the bound (never the training loss).
    """
    if 255 * torch.finfo(x0.dtype).eps >= 0.5:  # bfloat16: neighbouring levels collapse
        raise ArgumentError(f"{name} is {x0.dtype}, which cannot hold the 256 levels "
                            f"-1 + 2k/255 apart ({where} with {setting} would take any "
                            f"values): pass it as float32, {name}.float()")
    x = x0.detach()
    x = x if x.dtype == torch.float64 else x.float()
    tol = max(GRID_TOLERANCE, 255 * torch.finfo(x0.dtype).eps)
    k = (x + 1) * 127.5
    lo, hi, off = torch.stack([k.amin(), k.amax(), (k - k.round()).abs().amax()]).tolist()
    if any(math.isnan(v) for v in (lo, hi, off)):
        raise ArgumentError(f"{name} holds NaN; {where} with {setting} expects 8-bit "
                            "images scaled to [-1, 1]")
    xlo, xhi = lo / 127.5 - 1, hi / 127.5 - 1
    if lo < -tol or hi > 255 + tol:
        if xlo >= -tol and xhi > 2:
            fix = "for pixels in 0..255 use x / 127.5 - 1"
        else:
            fix = f"rescale it to [-1, 1], or use {other}"
        raise ArgumentError(f"{name} has values in [{xlo:.4g}, {xhi:.4g}]; {where} with "
                            f"{setting} expects 8-bit images scaled to [-1, 1] (the "
                            f"256 levels -1 + 2k/255): {fix}")
    if off > tol:
        if xlo >= -tol / 127.5:
            fix = (f"{name} looks like images in [0, 1]: use x * 2 - 1 (as chapter 9 does), "
                   "or companion.models.vae.to_8bit_range(x)")
        else:
            fix = (f"round it to the levels with companion.models.vae.quantize_8bit({name}), "
                   f"or use {other}")
        raise ArgumentError(f"{name} is not on the 8-bit grid: ({name} + 1) * 127.5 lies up "
                            f"to {off:.3g} from an integer; {where} with {setting} "
                            f"expects the 256 levels -1 + 2k/255 of 8-bit images: {fix}")


def steps(t, batch: int, T: int, device) -> torch.Tensor:
    """A chain's steps t as an int64 tensor (batch,) on `device`, checked to lie in 1..T: an
    int, a NumPy integer, or an integer tensor of shape () or (batch,). Checking the range
    costs one device sync: the samplers build t themselves and skip it."""
    if isinstance(t, bool):
        raise ArgumentError("t must be an int or an int64 tensor, got a bool")
    t = t if torch.is_tensor(t) else as_int(t)
    if isinstance(t, int):
        t = torch.full((batch,), t, dtype=torch.long, device=device)
    if not torch.is_tensor(t) or t.is_floating_point() or t.is_complex() \
            or t.dtype == torch.bool:
        raise ArgumentError(f"t must be an int or an integer tensor of steps in 1..{T}, "
                            f"got {t!r:.80}")
    t = t.to(device=device, dtype=torch.long)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ArgumentError(f"t must have shape ({batch},), one step per image, got "
                            f"{tuple(t.shape)}")
    lo, hi = int(t.min()), int(t.max())
    if lo < 1 or hi > T:
        hint = " (steps count from 1: x_0 is the data; add 1 to 0-based indices)" \
            if lo == 0 else ""
        raise ArgumentError(f"t must lie in 1..T = 1..{T}, got values in {lo}..{hi}{hint}")
    return t


def kept_steps(steps, T: int) -> torch.Tensor:
    """The kept steps s_1 < ... < s_n of a respaced chain as an int64 tensor (n,): at least
    one, strictly increasing, in 1..T."""
    s = torch.as_tensor(steps, dtype=torch.long)
    if s.dim() != 1 or len(s) == 0 or (s[1:] <= s[:-1]).any() or s[0] < 1 or s[-1] > T:
        raise ArgumentError(f"steps must be increasing integers in 1..{T}, got {steps!r:.80}")
    return s


def chain_step(s: float, t: float, clock) -> float:
    """s, the chain's real-valued step at time t, at least the first step (give or take
    1e-6): a time less noisy than `clock`'s first step has no value from the network."""
    if s < 1 - 1e-6:
        raise ArgumentError(f"t = {t:.4g} is less noisy than the chain's first step "
                            f"(t = {clock.time(1):.4g}); stop the solver there")
    return s


def noise_levels(name: str, values) -> torch.Tensor:
    """Noise levels as a float64 tensor (L,): a 1-D sequence of at least one finite value,
    every one > 0."""
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.dim() != 1 or len(v) == 0 or not bool(((v > 0) & torch.isfinite(v)).all()):
        raise ArgumentError(f"{name} must be a 1-D sequence of positive noise levels, got "
                            f"{values!r:.80}")
    return v


def step_sizes(levels: list, sizes) -> list[float]:
    """Langevin step sizes as floats, one per level (at least one level), every one a
    finite real > 0."""
    sizes = list(sizes)
    if len(levels) != len(sizes) or not levels:
        raise ArgumentError(f"need one step size per level, got {len(levels)} levels and "
                            f"{len(sizes)} step sizes")
    return [positive("every step size", a) for a in sizes]


def schedule(name: str, values) -> torch.Tensor:
    """A noise schedule (betas): a 1-D tensor of length T >= 1, every value in (0, 1)."""
    if not torch.is_tensor(values):
        raise ArgumentError(f"{name} must be a 1-D torch tensor, got {type(values).__name__}; "
                            "use linear_betas(T) or cosine_betas(T)")
    if values.dim() != 1 or len(values) < 1:
        raise ArgumentError(f"{name} must be a 1-D tensor of length T >= 1, got shape "
                            f"{tuple(values.shape)}")
    b = values.detach().double()
    if not torch.isfinite(b).all() or (b <= 0).any() or (b >= 1).any():
        raise ArgumentError(f"every {name[:-1] if name.endswith('s') else name} must lie in "
                            f"(0, 1), got min {b.min().item():g} and max {b.max().item():g}")
    return values


def chain_alphas_bar(alphas_bar, beta_min: float) -> torch.Tensor:
    """A chain's alpha_bar_1..T as float64 on the CPU: T >= 2 values, decreasing, in (0, 1)
    (alpha_bar_0 = 1 prepended is refused: it shifts every step by one), ending with more
    noise than a linear beta(t) from beta_min starts with (-log alpha_bar_T >= beta_min)."""
    ab = numeric("alphas_bar", alphas_bar, dtype=torch.float64).cpu()
    if ab.dim() == 1 and len(ab) and (ab.isnan().any() or ab[0] >= 1):
        raise ArgumentError("alphas_bar must be alpha_bar_1..T, each in (0, 1): got NaN, or "
                            "a first value of 1 (alpha_bar_0, which the clock adds itself: "
                            "pass alphas_bar[1:], else T is off by one)")
    if ab.dim() != 1 or len(ab) < 2 or (ab <= 0).any() or (ab[1:] >= ab[:-1]).any():
        raise ArgumentError("alphas_bar must be the chain's decreasing alpha_bar_1..T (T >= 2)")
    if -math.log(ab[-1].item()) < beta_min:
        raise ArgumentError(f"the chain ends at alpha_bar_T = {ab[-1].item():.3g}, too little "
                            f"noise for a linear beta(t) from beta_min = {beta_min}")
    return ab


def score_noise(sigma: float) -> float:
    """sigma(t) > 0, where the score -eps / sigma(t) of a noise predictor is defined (at
    t = 0 it is 0/0)."""
    if sigma == 0.0:
        raise ArgumentError(
            "the score -eps / sigma(t) is 0/0 at t = 0, where sigma(0) = 0: start the "
            "likelihood and end the solver's time grid at a small t > 0 (for a network "
            "trained on a chain, its first step, ChainClock.time(1)); for "
            "ode_log_likelihood pass t0=that time")
    return sigma


def unit_times(name: str, t: torch.Tensor, n: int) -> torch.Tensor:
    """One real time in [0, 1] per point: a float tensor (n,), NaN refused (one sync)."""
    if not torch.is_tensor(t) or t.shape != (n,):
        raise ArgumentError(f"{name} must be real times, one per point ({n},), got "
                            f"{tuple(t.shape) if torch.is_tensor(t) else _got(t)}")
    if not t.is_floating_point():
        raise ArgumentError(f"{name} must hold real times in [0, 1], got {t.dtype}")
    if not bool(((t >= 0) & (t <= 1)).all()):  # NaN too
        raise ArgumentError(f"{name} must lie in [0, 1] (0 the data, 1 the noise)")
    return t


def same_device(owner: str, held, like, fix: str, *more, kind_only: bool = False) -> None:
    """`held` (a tensor or a generator of `owner`'s) and every tensor in `more` on the device
    of `like` (a tensor or a device); `kind_only`: the device type (cuda vs cpu) suffices."""
    want = like.device if torch.is_tensor(like) else torch.device(like)
    for h in (held, *more):
        have = h.device
        if (have.type != want.type) if kind_only else (have != want):
            raise ArgumentError(f"{owner} lives on {have} but the tensors on {want}: {fix}")


# --- the kinds of argument a careless call gets wrong (issue 78, point 10) ----------------------
# Each turns what ended inside torch, NumPy or Python with a message naming no argument ("'int'
# object is not iterable", "'NoneType' object is not callable", "new(): invalid data type
# 'str'", "manual_seed expected a long") into an error that names the argument and says what
# it needs.

def function(name: str, value, what: str, args: int | None = None) -> Callable:
    """`value` if it is callable (with `args`, with that many positional arguments, where
    Python can tell); `what` says how it is called (e.g. "(z_t, gamma_t) -> eps_hat").
    None, a string or a number ended in "'NoneType' object is not callable", a function of
    other arity in "<lambda>() takes 1 positional argument but 2 were given"."""
    if not callable(value):
        raise ArgumentError(f"{name} must be a function {what}, got {_got(value)}"
                            + (" (pass the function itself, not its name)"
                               if isinstance(value, str) else ""))
    if args is not None:
        try:  # introspection only: builtins and some extensions have no signature
            signature = inspect.signature(value)
        except (TypeError, ValueError):
            return value
        try:
            signature.bind(*([None] * args))
        except TypeError as err:
            raise ArgumentError(f"{name} must be a function of {args} argument"
                                f"{'s' * (args > 1)} {what}, but it cannot be called so: "
                                f"{err}") from None
    return value


def sequence(name: str, value, example: str = "", length: int | None = None) -> list:
    """`value` as a list: a list, a tuple, a 1-D tensor or array, a range (with `length`, of
    that many entries); a number, None or a string refused ("'int' object is not
    iterable"). `example` shows one (e.g. "(8, 5, 5, 5)")."""
    eg = f", e.g. {example}" if example else ""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) or \
            (getattr(value, "ndim", 1) == 0):
        raise ArgumentError(f"{name} must be a sequence (a list or tuple){eg}, got "
                            f"{_got(value)}")
    items = list(value)
    if length is not None and len(items) != length:
        raise ArgumentError(f"{name} must hold {length} entries{eg}, got {len(items)}")
    return items


def numeric(name: str, value, *, dtype=None, fix: str = "") -> torch.Tensor:
    """`value` as a real tensor (a tensor as it is, or as `dtype`; a list, a number or a
    NumPy array converted with torch.as_tensor): a string, None, a dict or a ragged list
    ended in torch's "new(): invalid data type 'str'" or "Could not infer dtype"."""
    if torch.is_tensor(value):
        if value.is_complex():  # before .to(dtype), which would drop the imaginary part
            raise ArgumentError(f"{name} must be real numbers, got {value.dtype}{fix}")
        t = value if dtype is None else value.to(dtype)
    else:
        if isinstance(value, (str, bytes, dict)) or value is None:
            raise ArgumentError(f"{name} must be numbers (a tensor, an array or a list of "
                                f"numbers), got {_got(value)}{fix}")
        try:  # the conversion only: its errors name no argument
            t = torch.as_tensor(value, dtype=dtype)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ArgumentError(f"{name} must be numbers (a tensor, an array or a list of "
                                f"numbers, every row of one length), got {_got(value)}: "
                                f"{err}{fix}") from None
    if t.is_complex():
        raise ArgumentError(f"{name} must be real numbers, got {t.dtype}{fix}")
    return t


def seed(name: str, value) -> int:
    """A seed: a whole number in 0..2^63 - 1 (a string or a float ended in torch's
    "manual_seed expected a long"; a negative one wrapped around silently)."""
    return count(name, value, minimum=0, maximum=2**63 - 1)


def generator(name: str, value) -> torch.Generator | None:
    """None or a torch.Generator ("'str' object has no attribute 'device'" otherwise)."""
    if value is not None and not isinstance(value, torch.Generator):
        raise ArgumentError(f"{name} must be a torch.Generator or None, got {_got(value)}: "
                            "make one with torch.Generator().manual_seed(seed)")
    return value


def _faking() -> bool:
    """True under torch's FakeTensorMode: its tensors name a device without touching it (the
    memory test measures "cuda" on a machine without one)."""
    from torch._guards import detect_fake_mode

    return detect_fake_mode() is not None


def device(name: str, value) -> torch.device | None:
    """None or a device (a torch.device or its name) that this machine has: 'gpu' ended in
    torch's list of every device type, 'cuda' without a GPU in a driver error."""
    if value is None:
        return None
    try:  # the parse only
        d = torch.device(value)
    except (RuntimeError, TypeError):
        raise ArgumentError(f"{name} must be a device such as 'cpu', 'cuda', 'cuda:1' or "
                            f"'mps', got {_got(value)}") from None
    if d.type == "cuda" and not torch.cuda.is_available() and not _faking():
        raise ArgumentError(f"{name} is {value!r}, but this machine has no usable CUDA GPU "
                            "(torch.cuda.is_available() is False): pass 'cpu'")
    return d


def floating_dtype(name: str, value) -> torch.dtype:
    """A floating-point torch dtype (times and noise levels are real): an integer dtype ended
    in "not implemented for 'Long'", a string in torch's list of overloads."""
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ArgumentError(f"{name} must be a floating-point torch dtype such as "
                            f"torch.float64, got {value!r}")
    return value


def broadcastable(names: str, a: torch.Tensor, b: torch.Tensor) -> None:
    """Two tensors whose shapes broadcast together (aligned from the right, each pair of
    sizes equal or one of them 1): "The size of tensor a (2) must match the size of tensor
    b (3)" named neither."""
    for m, n in zip(reversed(a.shape), reversed(b.shape), strict=False):
        if m != n and 1 not in (m, n):
            raise ArgumentError(f"{names} must have shapes that broadcast together (one "
                                f"value, or one per entry of the other), got "
                                f"{tuple(a.shape)} and {tuple(b.shape)}")


# --- a transformer's sizes (issue 96): TextConfig's and DiTConfig's ---------------------------
# Past these, depth 10^6 built until memory ran out and a vocabulary of 10^10 failed in the
# allocator, naming no argument; the book's sizes are far below.
TRANSFORMER_SIZES = {
    "vocab_size": (2**20, "the embedding and the head hold width numbers per token (a "
                   "character model has under 100, GPT-2's byte-pair vocabulary 50,257)"),
    "length": (2**16, "attention compares every pair of positions (the book's longest "
               "sequence has 44 characters)"),
    "width": (2**14, "each block holds about 12 width^2 weights (the book's widest: 256)"),
    "depth": (1_000, "each block adds its weights and a step of every forward pass (the "
              "book's deepest: 12)"),
    "mlp_ratio": (64, "the MLP holds 2 mlp_ratio width^2 weights a block (the book's: 4)"),
    "classes": (2**20, "the label embedding holds width numbers per class (the book's: 10)"),
    "image_size": (4096, "the image is cut into (image_size / patch)^2 tokens, each with "
                   "its position (the book's images: 28 x 28)"),
    "tokens": (2**16, "attention compares every pair of tokens (the book's DiTs: 49)"),
    "in_channels": (4096, "each patch is a token of patch^2 in_channels numbers (the book's "
                    "digits: 1 channel)"),
}
MAX_TRANSFORMER_PARAMS = 2**31  # a whole transformer's weights: 8 GiB of float32


def transformer_size(name: str, value, kind: str | None = None, minimum: int = 1) -> int:
    """`value`, the size `name` of a transformer, as an int in minimum..its bound in
    TRANSFORMER_SIZES (under `kind`, by default `name`), the why in the error."""
    most, why = TRANSFORMER_SIZES[kind or name]
    return size(name, value, most, why, minimum)


def transformer_params(config, n: int, fix: str) -> None:
    """A config (TextConfig, DiTConfig) that builds n weights: refused past
    MAX_TRANSFORMER_PARAMS before anything is allocated; `fix` says what to lower."""
    if n > MAX_TRANSFORMER_PARAMS:
        raise ArgumentError(
            f"this {type(config).__name__} builds {n:,} weights, more than MAX_PARAMS = "
            f"{MAX_TRANSFORMER_PARAMS:,} ({4 * MAX_TRANSFORMER_PARAMS / 2**30:.0f} GiB of "
            f"float32, before the optimizer's two copies): {fix}")


# --- token ids and logits: what the transformers of chapters 21-22 read and return (issue 96) --
INDEX_DTYPES = (torch.int64, torch.int32)  # the index dtypes nn.Embedding takes


def index_tensor(name: str, ids, what: str = "token ids") -> torch.Tensor:
    """`ids` if it is an int64 (or int32) tensor, the index dtypes an embedding takes
    (`what` says what the values are: "token ids (0: pad)"): uint8 ids failed deep in the
    embedding, naming nothing."""
    tensor(name, ids)
    if ids.dtype not in INDEX_DTYPES:
        raise ArgumentError(f"{name} must be an integer tensor of {what} (torch.long), got "
                            f"{ids.dtype}: convert it with {name.split()[0]}.long()")
    return ids


def token_ids(name: str, ids, low: int, high: int, what: str = "token ids",
              fix: str = "encode the text with the model's own vocabulary (its vocab_size)"
              ) -> torch.Tensor:
    """`ids` if it is an `index_tensor` whose values lie in low..high; the values are read
    on the CPU only (on a GPU each read would cost a device sync). Out of range ended in
    torch's "index out of range in self", naming no argument."""
    index_tensor(name, ids, what)
    if ids.numel() and on_host(ids):
        lo, hi = (int(v) for v in torch.aminmax(ids))
        if lo < low or hi > high:
            raise ArgumentError(f"{name} must hold {what} in {low}..{high}, got values in "
                                f"{lo}..{hi}: {fix}")
    return ids


def nonfinite_count(logits: torch.Tensor) -> torch.Tensor:
    """How many of `logits` are NaN or infinite, a 0-d tensor, without a device sync (for
    `finite_logits`, which reads every call's count at once)."""
    return (~torch.isfinite(logits.detach())).sum()


def finite_logits(who: str, counts, needs: str = "every position it is asked about"
                  ) -> None:
    """The package's one rule for NaN and inf in the logits a network returns, for every
    reader of them: the samplers (`ar_sample`, `masked.sample`, `sampler_law`,
    `ARPrior.sample`) and the likelihoods and bounds (`ar_nll`, `lm_bits`,
    `masked.negative_elbo`, `step_bound`, `ordered_nll`) refuse them, rather than draw a
    NaN as a clean value or return NaN. counts: [(where, count, of)], one entry a step or a
    call: where it was ("at step 3 of 8"), `nonfinite_count`'s 0-d tensor (or an int), and
    what it counts among ("36 masked pixels"). All are read with one device sync, and the
    first with a non-finite logit is refused, naming `who` ("denoiser", "model").

    Not checked: the logits of a training loss (a model in training mode, logits that
    require grad), which `fit` refuses itself at the first non-finite loss, without a sync
    a step."""
    values = [c for _, c, _ in counts]
    if not values or not all(has_values(v) for v in values):
        return
    tensors = [v.reshape(()).to(torch.int64) for v in values if torch.is_tensor(v)]
    if tensors:  # one sync for all
        read = iter(torch.stack(tensors).tolist())
        values = [next(read) if torch.is_tensor(v) else int(v) for v in values]
    for (where, _, of), bad in zip(counts, values, strict=True):
        if bad:
            raise ArgumentError(
                f"the {who} returned non-finite logits (NaN or inf) {where}: {bad} of {of}; "
                f"a diverged network (check its training loss and weights) or a {who} that "
                f"divides by zero: it must return finite logits for {needs}")
