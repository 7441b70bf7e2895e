"""One small fit loop for every chapter.

    result = fit(model, loss_fn, data.x_train, epochs=profile.epochs, batch_size=128,
                 checkpoint=checkpoint_path("vae", profile), config=cfg)

`loss_fn(model, batch)` returns a scalar loss, or `(loss, {"name": scalar, ...})` to log
more. A loss whose schedule depends on training progress (KL warm-up) takes a `step` keyword:
`loss_fn(model, batch, step=s)` gets the number of optimizer steps taken before this batch,
counted across resumes, so a resumed run continues its schedule and the loss keeps no state.

The loop adds what every chapter needs and nothing else: a progress bar (silent in the ci
profile), mixed precision chosen by `autocast_dtype` (bf16 on GPUs that have it natively,
fp16 with a gradient scaler on older ones, float32 on the CPU), optional torch.compile
(falling back to eager mode when it fails), gradient clipping, an
EMA of the weights with warm-up, a clear error naming the step when the loss stops being
finite, and checkpoints that resume (and refuse a checkpoint of another model or config).
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .data import batches
from .progress import progress


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint belongs to another model or configuration."""


class EMA:
    """Exponential moving average of a model's weights, with warm-up.

    The decay at update n is min(decay, (1 + n) / (10 + n)): early on the average
    follows the weights closely. With a fixed 0.995 and a short run, the average would
    still be mostly the random initialization.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_p = [p for p in self.model.parameters()]
        new_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, new_p, 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.model.load_state_dict(state["model"])


@dataclass
class FitResult:
    """history: per-step lists ("step", "loss", and every logged metric)."""

    history: dict[str, list[float]]
    steps: int
    seconds: float
    resumed_at: int
    ema: EMA | None
    train_seconds: float = 0.0  # all sessions' training time to these weights (checkpointed)


def cache_dir() -> Path:
    """$BOOK_CACHE, else ~/.cache/companion."""
    return Path(os.environ.get("BOOK_CACHE", Path.home() / ".cache" / "companion"))


def checkpoint_path(name: str, profile) -> Path:
    """Where the load-or-train checkpoint of `name` lives for this profile."""
    pname = getattr(profile, "name", profile)
    return cache_dir() / "checkpoints" / f"{name}-{pname}.pt"


def _identity(model: nn.Module, config: dict | None) -> dict:
    return {
        "model": type(model).__qualname__,
        "n_params": sum(p.numel() for p in model.parameters()),
        "config": dict(config or {}),
    }


def _check_identity(path: Path, saved: dict, expected: dict) -> None:
    diffs = []
    for key in ("model", "n_params"):
        if saved.get(key) != expected[key]:
            diffs.append(f"{key}: checkpoint has {saved.get(key)!r}, this run {expected[key]!r}")
    scfg, ecfg = saved.get("config", {}), expected["config"]
    for key in sorted(set(scfg) | set(ecfg)):
        if scfg.get(key) != ecfg.get(key):
            diffs.append(f"config[{key!r}]: checkpoint has {scfg.get(key)!r}, "
                         f"this run {ecfg.get(key)!r}")
    if diffs:
        raise CheckpointMismatchError(
            f"checkpoint {path} was saved by another model or configuration:\n  "
            + "\n  ".join(diffs)
            + "\nDelete it to train from scratch, or pass a different checkpoint path.")


def save_checkpoint(path: Path, model, optimizer, ema, step, history, identity,
                    train_seconds: float = 0.0) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "identity": identity,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "history": history,
        "train_seconds": train_seconds,
        "rng": torch.get_rng_state(),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind


def load_checkpoint(path: Path, model, optimizer, ema, identity) -> tuple[int, dict, float]:
    """Load a checkpoint into model/optimizer/ema; returns (step, history, train_seconds)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointMismatchError(
            f"cannot read checkpoint {path} ({err}). It is damaged or was not written by "
            "companion.fit; delete it to train from scratch.") from err
    _check_identity(path, state.get("identity", {}), identity)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit this model's weights ({err}). "
            "Delete it to train from scratch, or pass a different checkpoint path.") from err
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["rng"])
    _note_loaded(path)
    return int(state["step"]), state["history"], float(state.get("train_seconds", 0.0))


def _note_loaded(path: Path) -> None:
    """Append the checkpoint's name to $BOOK_LOADED_LOG, if set: `make outputs` reads it to
    tell on the status page which chapters loaded training instead of doing it."""
    log = os.environ.get("BOOK_LOADED_LOG")
    if log:
        with open(log, "a") as f:
            f.write(Path(path).name + "\n")


def _check_fit_args(model, tensors, batch_size, lr, clip) -> None:
    """Clear errors for the mistakes fit would otherwise report obscurely, or not at all."""
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise TypeError(f"model must be an nn.Module with parameters, got {type(model).__name__}")
    if not tensors or not all(torch.is_tensor(t) for t in tensors):
        kinds = [type(t).__name__ for t in tensors]
        raise TypeError(f"data must be a tensor or a tuple of tensors, got {kinds}; convert "
                        "NumPy arrays with torch.from_numpy(a).float() (or use "
                        "companion.data.load, which returns tensors)")
    sizes = [t.shape[0] for t in tensors]
    if len(set(sizes)) > 1:
        raise ValueError(f"the data tensors hold different numbers of examples {sizes}: each "
                         "must have one row per example (e.g. images and their labels from "
                         "the same split, subset the same way)")
    if not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if lr is not None and not (isinstance(lr, numbers.Real) and 0 < lr < float("inf")):
        raise ValueError(f"lr must be a positive number, got {lr!r}; 1e-3 is a good start "
                         "for Adam (lower it if the loss jumps or becomes NaN)")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip is the largest gradient norm allowed and must be > 0 (e.g. "
                         f"1.0), or None for no clipping; got {clip!r}")


def _mismatch(model: nn.Module, tensors) -> str:
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


def _takes_step(loss_fn) -> bool:
    """Whether `loss_fn` accepts a `step` keyword (then fit passes the global step)."""
    try:
        params = inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return "step" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def autocast_dtype(device) -> torch.dtype | None:
    """The mixed-precision dtype for training on `device`, or None for full precision.

    bf16 on CUDA GPUs of compute capability 8.0 and up (Ampere, Hopper: native bf16 tensor
    cores, and bf16 has float32's exponent range, so no loss scaling); fp16 on older CUDA
    GPUs such as Colab's T4 (7.5), where bf16 is emulated and slower than float32, so fp16
    with a gradient scaler is the fast path; None on the CPU (autocast there mostly adds
    casts to these small models).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def default_optimizer(params, lr: float, device) -> torch.optim.Optimizer:
    """Adam; on CUDA the fused kernel, which also takes fp16 loss scaling without a sync."""
    fused = torch.device(device).type == "cuda"
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def _grad_scaler(device: torch.device, enabled: bool):
    """A gradient scaler for fp16 training (a pass-through when not enabled)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


def compile_mode(device) -> str | None:
    """The torch.compile mode fit uses: CUDA graphs on a GPU, the default elsewhere.

    Measured on an H100 (benchmarks/README.md): the compiled gpu U-Net's training step at
    batch 128 ran 12 ms of kernels in about 43 ms, the rest being the host launching some
    1,300 kernels one by one; replaying them as a CUDA graph ("reduce-overhead") removes
    that cost. On a CPU there is nothing to replay.
    """
    return "reduce-overhead" if torch.device(device).type == "cuda" else None


def try_compile(model: nn.Module, mode: str | None = None) -> nn.Module:
    """torch.compile(model, mode=mode), or the model itself where compile is unavailable.

    Compilation itself happens at the first call; fit falls back to eager mode (with a
    warning) when that call fails, e.g. without Triton or a C++ compiler.
    """
    try:
        return torch.compile(model, mode=mode)
    except Exception as err:  # e.g. a Python version torch.compile does not support yet
        warnings.warn(f"torch.compile is unavailable ({err}); training without it",
                      stacklevel=3)
        return model


def _check_loss(loss, step: int) -> None:
    if not torch.is_tensor(loss):
        raise TypeError(f"loss_fn must return a scalar tensor, or (loss, {{'name': value}}); "
                        f"got {type(loss).__name__} at step {step + 1}")
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar (one number for the batch), got shape "
                         f"{tuple(loss.shape)} at step {step + 1}: reduce it, e.g. with "
                         ".mean() over the batch")


def fit(model: nn.Module, loss_fn, data, *, epochs: int | None = None,
        steps: int | None = None, batch_size: int = 128, optimizer=None, lr: float = 1e-3,
        clip: float | None = None, ema: float | None = None, checkpoint=None,
        config: dict | None = None, save_every: int | None = None, amp: bool = True,
        compile: bool = False, check_every: int = 25, quiet: bool | None = None,
        generator: torch.Generator | None = None, desc: str = "train") -> FitResult:
    """Train `model` on `data` (a tensor or tuple of tensors, first dim = examples).

    Give either `epochs` or `steps`. With `compile`, each epoch's last partial batch is
    skipped (a new batch shape would cost a recompilation). With `checkpoint`, training
    resumes from the file when it exists (a finished run just loads: load-or-train) and
    saves to it every `save_every` steps, at the end, and on KeyboardInterrupt.
    """
    tensors = data if isinstance(data, (tuple, list)) else (data,)
    _check_fit_args(model, tensors, batch_size, lr if optimizer is None else None, clip)
    n = tensors[0].shape[0]
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    total = steps if steps is not None else epochs * math.ceil(n / batch_size)
    if total <= 0:
        raise ValueError(f"nothing to train: {total} steps (epochs={epochs}, steps={steps}); "
                         "pass epochs >= 1 or steps >= 1")
    device = next(model.parameters()).device
    optimizer = optimizer or default_optimizer(model.parameters(), lr, device)
    averager = EMA(model, ema) if ema is not None else None
    identity = _identity(model, config)
    history: dict[str, list[float]] = {"step": [], "loss": []}
    step, trained_before = 0, 0.0
    if checkpoint is not None and Path(checkpoint).exists():
        step, history, trained_before = load_checkpoint(Path(checkpoint), model, optimizer,
                                                        averager, identity)
    resumed_at = step
    save_every = save_every or max(total // 10, 100)

    amp_dtype = autocast_dtype(device) if amp else None
    # fp16 needs loss scaling (small gradients underflow); bf16 and float32 do not
    scaler = _grad_scaler(device, enabled=amp_dtype == torch.float16)
    step_model = try_compile(model, compile_mode(device)) if compile else model
    # a compiled model compiles again for every new batch shape (about a minute for a
    # U-Net, and then as a slower dynamic-shape graph): compiled, skip the partial batch
    drop_last = compile and n >= batch_size
    step_kw = _takes_step(loss_fn)
    pending: list[tuple[int, torch.Tensor, dict]] = []
    start = time.perf_counter()

    def flush():
        if not pending:
            return
        # every pending loss and tensor metric comes back in ONE device-to-host copy: a
        # float() per value would be a GPU sync each
        device_values = [p[1] for p in pending] + [
            v for _, _, m in pending for v in m.values() if torch.is_tensor(v)]
        first = device_values[0].device
        values = torch.stack([v.float().reshape(()).to(first) for v in device_values])
        values = values.cpu().tolist()
        losses, rest = values[:len(pending)], iter(values[len(pending):])
        bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
        if bad:
            i = bad[0]
            raise NonFiniteLossError(
                f"the loss became {losses[i]} at step {pending[i][0]} of {total}. "
                "Lower the learning rate, clip gradients (clip=1.0), or check the inputs "
                "for NaN/inf; the last good checkpoint, if any, is "
                f"{checkpoint or '(none: pass checkpoint=...)'}.")
        for (s, _, metrics), loss in zip(pending, losses, strict=True):
            history["step"].append(s)
            history["loss"].append(loss)
            for k, v in metrics.items():
                history.setdefault(k, []).append(next(rest) if torch.is_tensor(v)
                                                 else float(v))
        pending.clear()

    model.train()
    bar = progress(total=total, desc=desc, quiet=quiet, initial=step)
    try:
        while step < total:
            for batch in batches(*tensors, batch_size=batch_size, generator=generator,
                                 drop_last=drop_last):
                if step >= total:
                    break
                try:
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                        enabled=amp_dtype is not None):
                        out = (loss_fn(step_model, batch, step=step) if step_kw
                               else loss_fn(step_model, batch))
                except RuntimeError as err:
                    if step_model is not model:  # compiling failed: train eagerly instead
                        warnings.warn(f"torch.compile failed ({str(err)[:300]}); training "
                                      "without it", stacklevel=2)
                        step_model = model
                        continue
                    hint = _mismatch(model, tensors)
                    if hint:
                        raise RuntimeError(f"{hint} (the loss function failed with: {err})") \
                            from err
                    raise
                loss, metrics = out if isinstance(out, tuple) else (out, {})
                _check_loss(loss, step)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if clip is not None:
                    scaler.unscale_(optimizer)  # clip the true gradients, not scaled ones
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                scaler.step(optimizer)
                scaler.update()
                if averager is not None:
                    averager.update(model)
                step += 1
                pending.append((step, loss.detach(),
                                {k: v.detach() if torch.is_tensor(v) else v
                                 for k, v in metrics.items()}))
                bar.update(1)
                if step % check_every == 0 or step == total:
                    flush()
                    bar.set_postfix(loss=f"{history['loss'][-1]:.4g}")
                if checkpoint is not None and (step % save_every == 0 or step == total):
                    flush()  # never save weights whose loss was not finite
                    save_checkpoint(checkpoint, model, optimizer, averager, step, history,
                                    identity, trained_before + time.perf_counter() - start)
    except KeyboardInterrupt:
        flush()
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, optimizer, averager, step, history, identity,
                            trained_before + time.perf_counter() - start)
            print(f"interrupted at step {step}; saved {checkpoint}, run again to resume")
        raise
    finally:
        bar.close()
    flush()
    model.eval()
    seconds = time.perf_counter() - start
    return FitResult(history, step, seconds, resumed_at, averager, trained_before + seconds)
