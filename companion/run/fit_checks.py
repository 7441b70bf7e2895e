"""The checks fit makes of its arguments and of what a loss function returns: a clear error
(what was wrong, the value, how to fix it) for the mistakes the loop would otherwise report
obscurely, or not at all."""

from __future__ import annotations

import inspect
import math
import numbers

import torch
from torch import nn

from . import checks


def check_fit_args(model, tensors, epochs, steps, batch_size, lr, clip, check_every,
                   save_every, save_seconds, lock_timeout=None) -> int:
    """Clear errors for the mistakes fit would otherwise report obscurely, or not at all;
    returns the number of steps to train."""
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise TypeError(f"model must be an nn.Module with parameters, got {type(model).__name__}")
    if not tensors or not all(torch.is_tensor(t) for t in tensors):
        kinds = [type(t).__name__ for t in tensors]
        raise TypeError(f"data must be a tensor or a tuple of tensors, got {kinds}; convert "
                        "NumPy arrays with torch.from_numpy(a).float() (or use "
                        "companion.data.load, which returns tensors)")
    if any(t.dim() == 0 for t in tensors):
        raise ValueError("data must have a first dimension of examples, got a 0-dim tensor")
    sizes = [t.shape[0] for t in tensors]
    if sizes[0] == 0:
        raise ValueError(f"the data is empty (shape {tuple(tensors[0].shape)}): nothing to "
                         "train on; check the subset or the loader")
    if len(set(sizes)) > 1:
        raise ValueError(f"the data tensors hold different numbers of examples {sizes}: each "
                         "must have one row per example (e.g. images and their labels from "
                         "the same split, subset the same way)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, numbers.Real)
                           or not 0 < lr < float("inf")):
        raise ValueError(f"lr must be a positive number, got {lr!r}; 1e-3 is a good start "
                         "for Adam (lower it if the loss jumps or becomes NaN)")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, numbers.Real)
                             or not 0 < clip <= float("inf")):
        raise ValueError(f"clip is the largest gradient norm allowed and must be > 0 (e.g. "
                         f"1.0), or None for no clipping; got {clip!r}")
    checks.real("save_seconds", save_seconds, low=0.0, finite=False)
    if lock_timeout is not None:
        checks.real("lock_timeout", lock_timeout, low=0.0)
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    for name, v in (("epochs", epochs), ("steps", steps), ("check_every", check_every),
                    ("save_every", save_every)):
        if v is None and name != "check_every":
            continue
        if isinstance(v, bool) or not (isinstance(v, numbers.Integral) or (
                isinstance(v, float) and v.is_integer())):
            raise ValueError(f"{name} must be a whole number, got {v!r}")
        if name in ("check_every", "save_every") and v <= 0:
            raise ValueError(f"{name} must be >= 1, got {v!r}")
    total = int(steps) if steps is not None else int(epochs) * math.ceil(sizes[0] / batch_size)
    if total <= 0:
        raise ValueError(f"nothing to train: {total} steps (epochs={epochs}, steps={steps}); "
                         "pass epochs >= 1 or steps >= 1")
    return total


def check_optimizer(model: nn.Module, optimizer) -> None:
    """Refuse an optimizer that would train nothing of `model` (built over another model's
    parameters, or over this one's before it was rebuilt)."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not hasattr(optimizer, "step"):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    held = {id(p) for g in groups for p in g["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if trainable and not any(id(p) in held for p in trainable):
        raise ValueError(f"the optimizer holds none of the model's {len(trainable)} trainable "
                         "parameters, so training would change nothing: build it from this "
                         "model, e.g. torch.optim.Adam(model.parameters(), lr=1e-3)")


def loss_and_metrics(out, step: int) -> tuple[torch.Tensor, dict]:
    """A loss function's result as (scalar loss, {name: scalar}), or a clear error."""
    loss, metrics = out if isinstance(out, tuple) and len(out) == 2 else (out, {})
    _check_loss(loss, step)
    if not isinstance(metrics, dict):
        raise TypeError(f"loss_fn returned (loss, {type(metrics).__name__}) at step "
                        f"{step + 1}; the second item must be a dict {{'name': scalar}}")
    for k, v in metrics.items():
        if not isinstance(k, str):
            raise TypeError(f"logged metric names must be str, got {k!r} at step {step + 1}")
        ok = (torch.is_tensor(v) and v.numel() == 1 and not v.is_complex()) or (
            isinstance(v, numbers.Real) and not isinstance(v, bool))
        if not ok:
            got = (f"a tensor of shape {tuple(v.shape)}" if torch.is_tensor(v)
                   else repr(v))
            raise TypeError(f"logged metric {k!r} must be one number (a scalar tensor or a "
                            f"float), got {got} at step {step + 1}: reduce it, e.g. .mean()")
    return loss, metrics


def _check_loss(loss, step: int) -> None:
    if not torch.is_tensor(loss):
        raise TypeError(f"loss_fn must return a scalar tensor, or (loss, {{'name': value}}); "
                        f"got {type(loss).__name__} at step {step + 1}")
    if not loss.requires_grad:
        raise ValueError(f"the loss at step {step + 1} has no gradient (requires_grad is "
                         "False): compute it from the model's output, not under "
                         "torch.no_grad() or from .detach()ed / .item() values")
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar (one number for the batch), got shape "
                         f"{tuple(loss.shape)} at step {step + 1}: reduce it, e.g. with "
                         ".mean() over the batch")


def mismatch(model: nn.Module, tensors) -> str:
    """Why the model cannot take this data (device or dtype), with the fix; '' if it can."""
    p = next(model.parameters())
    for i, t in enumerate(tensors):
        name = "data" if len(tensors) == 1 else f"data[{i}]"
        if t.device != p.device:
            return (f"{name} is on {t.device} but the model is on {p.device}: move both to "
                    "one device, e.g. `profile, device = companion.setup()`, then "
                    "`model.to(device)` and `x.to(device)` (ImageData has .to(device) too)")
        if t.is_floating_point() and t.dtype != p.dtype:
            return (f"{name} is {t.dtype} but the model's parameters are {p.dtype}: convert "
                    f"one of them, e.g. x.to({p.dtype}) or model.to({t.dtype})")
    return ""


def takes_step(loss_fn) -> bool:
    """Whether `loss_fn` accepts a `step` keyword (then fit passes the global step)."""
    try:
        params = inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return "step" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
