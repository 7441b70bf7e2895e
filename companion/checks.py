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

import math
import numbers

import torch


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


def count(name: str, value, minimum: int = 1) -> int:
    """`value` as an int >= `minimum` (1 by default: a positive whole number)."""
    v = as_int(value)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ArgumentError(f"{name} must be a whole number >= {minimum}, got {_got(value)}")
    if v < minimum:
        raise ArgumentError(f"{name} must be a whole number >= {minimum}, got {v}")
    return v


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
