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
finite, and checkpoints that resume exactly (and refuse a checkpoint of another model, data
or configuration, or a damaged one).
"""

from __future__ import annotations

import atexit
import copy
import inspect
import math
import numbers
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from . import profiles
from .progress import progress

try:  # advisory file locks; absent on Windows, where two runs sharing a path go unnoticed
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


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
    save_error: str | None = None  # why the last failed save failed (the model is in memory)


def cache_dir() -> Path:
    """$BOOK_CACHE, else ~/.cache/companion; in smoke mode (BOOK_SMOKE=1) a throwaway folder
    of this process's, removed when it exits, so a smoke run never touches the real cache."""
    if profiles.smoke_mode():
        return _smoke_dir()
    return Path(os.environ.get("BOOK_CACHE", Path.home() / ".cache" / "companion"))


_SMOKE_DIRS: dict[int, Path] = {}  # per process id: a forked child gets a folder of its own


def _smoke_dir() -> Path:
    pid = os.getpid()
    if pid not in _SMOKE_DIRS:
        _SMOKE_DIRS[pid] = Path(tempfile.mkdtemp(prefix="companion-smoke-"))
        atexit.register(_remove_smoke_dir, pid)
    return _SMOKE_DIRS[pid]


def _remove_smoke_dir(pid: int) -> None:
    if os.getpid() == pid:  # not a forked child that inherited the exit hook
        shutil.rmtree(_SMOKE_DIRS[pid], ignore_errors=True)


def checkpoint_path(name: str, profile) -> Path:
    """Where the load-or-train checkpoint of `name` lives for this profile."""
    pname = getattr(profile, "name", profile)
    return cache_dir() / "checkpoints" / f"{name}-{pname}.pt"


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the message names the path."""


class CheckpointBusyError(RuntimeError):
    """This process already trains into the checkpoint path a second fit was given."""


class _PathLock:
    """An exclusive lock on `<checkpoint>.lock` while a run trains into the checkpoint.

    A second run that wants the same checkpoint waits (saying whom for) until the first is
    done, then loads or resumes what it saved: two runs never write one file at once, and
    notebooks executed in parallel that share a model (chapters 9 and 10) train it once.
    Within one process waiting would never end, so a second fit there is an error.
    fcntl.flock locks an open file, so the kernel drops the lock when its process dies: a
    killed run leaves no stale lock. Without fcntl (Windows) there is no lock.
    """

    def __init__(self, path: Path):
        self.path = path
        self.file = path.with_name(path.name + ".lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    holder = os.read(fd, 32).decode(errors="replace").strip()
                    if holder == str(os.getpid()):
                        raise CheckpointBusyError(
                            f"this process is already training into {self.path} (another "
                            "fit, in a thread or a loss function, holds it): two runs "
                            "writing one checkpoint would overwrite each other's steps. "
                            "Pass this run a different checkpoint path.") from None
                    print(f"another run (process {holder or '?'}) is training into "
                          f"{self.path}; waiting for it to finish, then this run loads or "
                          "resumes its checkpoint (interrupt to stop waiting)",
                          file=sys.stderr, flush=True)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                # the holder before us may have removed the file between our open and lock
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            self.file.unlink(missing_ok=True)  # while still holding it: see acquire
            os.close(self.fd)
            self.fd = None


def _rng_state(generator: torch.Generator | None, device: torch.device) -> dict:
    """The random state a step draws from: torch's CPU generator, the CUDA generators when
    training on CUDA, and fit's own `generator`. Copies; draws nothing."""
    state = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["rng_generator"] = generator.get_state()
    return state


def _set_rng_state(state: dict, generator: torch.Generator | None) -> None:
    if state.get("rng") is not None:
        torch.set_rng_state(state["rng"])
    cuda = state.get("rng_cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if generator is not None and state.get("rng_generator") is not None:
        try:
            generator.set_state(state["rng_generator"])
        except RuntimeError as err:  # a CUDA generator's state into a CPU one, say
            warnings.warn(f"could not restore the generator's state ({err}); the resumed "
                          "run draws other random numbers than an uninterrupted one would",
                          stacklevel=3)


def _draw_order(n: int, generator: torch.Generator | None, device: torch.device):
    """One epoch's permutation of the examples: the same draw as companion.data.batches
    (so a run's random stream, and every stored result, is what it was before fit began
    keeping the order)."""
    if generator is None or generator.device == device:
        return torch.randperm(n, generator=generator, device=device)
    return torch.randperm(n, generator=generator).to(device)


def _plain(value, key: str):
    """A config value as plain JSON-like data (what a weights_only load reads back)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if torch.is_tensor(value):
        raise TypeError(f"config[{key!r}] is a tensor; pass a plain number or list "
                        "(e.g. t.item() or t.tolist())")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{key}.{k}") for k, v in value.items()}
    name = getattr(value, "name", None)
    if isinstance(name, str):  # a Profile, an enum: its name identifies it
        return name
    raise TypeError(f"config[{key!r}] is a {type(value).__name__}, which a checkpoint cannot "
                    "store; pass numbers, strings, lists or dicts of them")


def _fingerprint(tensors) -> list:
    """Shapes and a cheap checksum of the data: 64 evenly spaced rows, summed on the host."""
    out = []
    for t in tensors:
        n = t.shape[0]
        rows = torch.linspace(0, n - 1, min(n, 64)).round().long().to(t.device)
        sample = t.detach()[rows].double().cpu().reshape(len(rows), -1)
        w = torch.arange(1, sample.shape[1] + 1, dtype=torch.float64)
        out.append({"shape": list(t.shape), "dtype": str(t.dtype),
                    "sum": float(sample.sum()), "weighted": float((sample * w).sum()
                                                                   / sample.shape[1])})
    return out


def _optimizer_identity(optimizer) -> dict:
    """The optimizer's type and constructor settings (not the current lr: a warm-up changes
    that every step, and an early checkpoint must resume into the full run)."""
    keep = {}
    for k, v in optimizer.defaults.items():
        try:
            keep[k] = _plain(v, k)
        except TypeError:
            keep[k] = repr(v)
    return {"type": type(optimizer).__name__, "defaults": keep}


def _identity(model: nn.Module, config: dict | None, tensors=(), optimizer=None,
              ema: float | None = None) -> dict:
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    ident = {
        "model": type(model).__qualname__,
        "n_params": sum(p.numel() for p in model.parameters()),
        "config": {str(k): _plain(v, str(k)) for k, v in (config or {}).items()},
    }
    if tensors:
        ident["data"] = _fingerprint(tensors)
    if optimizer is not None:
        ident["optimizer"] = _optimizer_identity(optimizer)
    ident["ema"] = None if ema is None else float(ema)
    return ident


def _same_data(a, b) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.get("shape") != y.get("shape") or x.get("dtype") != y.get("dtype"):
            return False
        for k in ("sum", "weighted"):
            if not math.isclose(x.get(k, 0.0), y.get(k, 0.0), rel_tol=1e-6, abs_tol=1e-6):
                return False
    return True


def _check_identity(path: Path, saved: dict, expected: dict) -> None:
    diffs = []
    for key in ("model", "n_params"):
        if saved.get(key) != expected[key]:
            diffs.append(f"{key}: checkpoint has {saved.get(key)!r}, this run {expected[key]!r}")
    if "data" in saved and "data" in expected and not _same_data(saved["data"],
                                                                 expected["data"]):
        diffs.append(f"data: checkpoint was trained on {saved['data']}, this run's data is "
                     f"{expected['data']}")
    for key in ("optimizer", "ema"):
        if key in saved and key in expected and saved[key] != expected[key]:
            diffs.append(f"{key}: checkpoint has {saved[key]!r}, this run {expected[key]!r}")
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


def _tensors_of(obj):
    """Every tensor in a nested state, in a fixed order."""
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _tensors_of(obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors_of(v)


def _checksum(*parts) -> int:
    crc = 0
    for t in _tensors_of(list(parts)):
        b = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        crc = zlib.crc32(b, crc)
    return crc


def _all_finite(*modules_and_states) -> bool:
    """One reduction over every floating tensor: are they all finite?"""
    ts = [t for t in _tensors_of(list(modules_and_states))
          if t.is_floating_point() and t.numel()]
    if not ts:
        return True
    by_device: dict = {}
    for t in ts:
        by_device.setdefault(t.device, []).append(t.detach().float()
                                                  if t.dtype != torch.float32 else t.detach())
    return all(bool(torch.isfinite(torch.stack(torch._foreach_norm(v))).all())
               for v in by_device.values())


class NonFiniteWeightsError(NonFiniteLossError):
    """The weights (or optimizer state) stopped being finite; nothing of them is saved."""


def check_writable(path: Path) -> None:
    """Raise CheckpointSaveError unless a checkpoint can be written at `path`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointSaveError(f"checkpoint path {path} is a directory; pass a file name "
                                  f"such as {path}/model.pt")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".",
                                         suffix=".probe"):
            pass
    except OSError as err:
        raise CheckpointSaveError(f"cannot write checkpoints to {path.parent} ({err}); pass "
                                  "checkpoint= a writable path, or set BOOK_CACHE") from err


def save_checkpoint(path: Path, model, optimizer, ema, step, history, identity,
                    train_seconds: float = 0.0, *, rng: dict | None = None,
                    data_order: torch.Tensor | None = None, data_start: int = 0,
                    scaler=None) -> None:
    """Write a checkpoint atomically: the weights, the optimizer, the EMA, the history, the
    random state (`rng`, as from _rng_state; torch's CPU state if not given) and, for a run
    stopped inside an epoch, that epoch's order of the examples and how many of them the
    saved steps used (`data_order`, `data_start`), so a resumed run sees the very batches
    an uninterrupted one would."""
    path = Path(path)
    opt_state = optimizer.state_dict()
    ema_state = ema.state_dict() if ema is not None else None
    if not _all_finite(model.state_dict(), opt_state.get("state", {}), ema_state):
        raise NonFiniteWeightsError(f"the weights or optimizer state are NaN/inf at step "
                                    f"{step}; not saved to {path}")
    model_state = model.state_dict()
    order = None if data_order is None else data_order.detach().cpu()
    state = {
        "identity": identity,
        "step": step,
        "model": model_state,
        "optimizer": opt_state,
        "ema": ema_state,
        "history": history,
        "train_seconds": train_seconds,
        **(rng if rng is not None else {"rng": torch.get_rng_state()}),
        "data_order": order,
        "data_start": int(data_start) if order is not None else 0,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        # the order joins the checksum last: a checkpoint without one sums as before
        "checksum": _checksum(model_state, opt_state, ema_state, order),
    }
    # a name of its own: two runs saving to one path never move each other's file
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, path)  # never leave a half-written checkpoint behind
    except (OSError, RuntimeError) as err:
        raise CheckpointSaveError(f"could not save checkpoint {path} ({err})") from err
    finally:  # also when a second Ctrl-C lands inside torch.save
        tmp.unlink(missing_ok=True)


class Resumed(NamedTuple):
    """What a checkpoint hands back to fit besides the states it loads in place."""

    step: int
    history: dict
    train_seconds: float
    data_order: torch.Tensor | None  # the unfinished epoch's order, or None
    data_start: int  # how many examples of that order the saved steps used


def load_checkpoint(path: Path, model, optimizer, ema, identity, *,
                    generator: torch.Generator | None = None, scaler=None) -> Resumed:
    """Load a checkpoint into model/optimizer/ema (and restore the random state, fit's
    `generator` and the gradient scaler's). Checkpoints of earlier versions (without the
    CUDA or generator state, the data order or a checksum) load as they did."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointMismatchError(
            f"cannot read checkpoint {path} ({err}). It is damaged or was not written by "
            "companion.fit; delete it to train from scratch.") from err
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointMismatchError(
            f"{path} holds a {type(state).__name__}, not a checkpoint written by "
            "companion.fit; delete it or pass a different checkpoint path.")
    order = state.get("data_order")
    if "checksum" in state and _checksum(state["model"], state["optimizer"],
                                         state.get("ema"), order) != state["checksum"]:
        raise CheckpointMismatchError(
            f"checkpoint {path} is damaged: its checksum does not match its contents. "
            "Delete it to train from scratch.")
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
    if scaler is not None and scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state, generator)
    _note_loaded(path)
    return Resumed(int(state["step"]), state["history"],
                   float(state.get("train_seconds", 0.0)), order,
                   int(state.get("data_start", 0)))


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
    if not loss.requires_grad:
        raise ValueError(f"the loss at step {step + 1} has no gradient (requires_grad is "
                         "False): compute it from the model's output, not under "
                         "torch.no_grad() or from .detach()ed / .item() values")
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar (one number for the batch), got shape "
                         f"{tuple(loss.shape)} at step {step + 1}: reduce it, e.g. with "
                         ".mean() over the batch")


def fit(model: nn.Module, loss_fn, data, *, epochs: int | None = None,
        steps: int | None = None, batch_size: int = 128, optimizer=None, lr: float = 1e-3,
        clip: float | None = None, ema: float | None = None, checkpoint=None,
        config: dict | None = None, save_every: int | None = None, amp: bool = True,
        compile: bool = False, check_every: int = 25, quiet: bool | None = None,
        generator: torch.Generator | None = None, desc: str = "train",
        save_seconds: float = 60.0) -> FitResult:
    """Train `model` on `data` (a tensor or tuple of tensors, first dim = examples).

    Give either `epochs` or `steps`. With `compile`, each epoch's last partial batch is
    skipped (a new batch shape would cost a recompilation). With `checkpoint`, training
    resumes from the file when it exists (a finished run just loads: load-or-train) and
    saves to it every `save_every` steps or `save_seconds` of training, whichever comes
    first, at the end, and when stopped: Ctrl-C (SIGINT), SIGTERM and SIGHUP end the current
    step, save, and raise KeyboardInterrupt (a second Ctrl-C stops at once). A resumed run
    continues exactly where the stopped one was, to float rounding: a checkpoint saved inside
    an epoch keeps that epoch's order of the examples and how far it got, and every
    checkpoint keeps the random state (torch's CPU and CUDA generators and `generator`;
    randomness a loss draws from a generator of its own is not saved). Non-finite weights
    are never saved; a failed save warns, names the path, and the model stays in memory.
    While a run trains into a checkpoint, another process's run on the same path waits for
    it, then loads or resumes what it saved; a second fit in the same process is an error.
    In smoke mode (BOOK_SMOKE=1, companion.profiles.smoke_mode) each call stops after
    profiles.SMOKE_STEPS optimizer steps, and cache_dir() is a throwaway folder.
    """
    tensors = data if isinstance(data, (tuple, list)) else (data,)
    _check_fit_args(model, tensors, batch_size, lr if optimizer is None else None, clip)
    n = tensors[0].shape[0]
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
    epochs = None if epochs is None else int(epochs)
    steps = None if steps is None else int(steps)
    total = steps if steps is not None else epochs * math.ceil(n / batch_size)
    if total <= 0:
        raise ValueError(f"nothing to train: {total} steps (epochs={epochs}, steps={steps}); "
                         "pass epochs >= 1 or steps >= 1")
    device = next(model.parameters()).device
    optimizer = optimizer or default_optimizer(model.parameters(), lr, device)
    averager = EMA(model, ema) if ema is not None else None
    identity = _identity(model, config, tensors if checkpoint is not None else (),
                         optimizer, ema)
    amp_dtype = autocast_dtype(device) if amp else None
    # fp16 needs loss scaling (small gradients underflow); bf16 and float32 do not
    scaler = _grad_scaler(device, enabled=amp_dtype == torch.float16)
    history: dict[str, list[float]] = {"step": [], "loss": []}
    step, trained_before = 0, 0.0
    order, pos = None, 0  # this epoch's order of the examples, and how many it has used
    lock = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        check_writable(checkpoint)  # before any training, not after all of it
        lock = _PathLock(checkpoint)
        lock.acquire()  # before loading: another run's steps must not be resumed twice
        try:
            if checkpoint.exists():
                step, history, trained_before, order, pos = load_checkpoint(
                    checkpoint, model, optimizer, averager, identity, generator=generator,
                    scaler=scaler)
                if step > total:
                    raise CheckpointMismatchError(
                        f"checkpoint {checkpoint} holds {step} steps, more than this run's "
                        f"{total}: it belongs to a longer run. Pass that run's step count, "
                        "or another checkpoint path.")
                if order is not None:
                    order = order.to(device)
        except BaseException:
            lock.release()
            raise
    resumed_at = step
    if profiles.smoke_mode():  # BOOK_SMOKE=1: every code path, a couple of steps per call
        total = min(total, step + profiles.SMOKE_STEPS)
    save_every = int(save_every or max(total // 10, 100))
    last_saved = step if checkpoint is not None and checkpoint.exists() else None
    save_error: list[str] = []

    step_model = try_compile(model, compile_mode(device)) if compile else model
    # a compiled model compiles again for every new batch shape (about a minute for a
    # U-Net, and then as a slower dynamic-shape graph): compiled, skip the partial batch
    drop_last = compile and n >= batch_size
    stop = n - n % batch_size if drop_last else n  # where an epoch's batches end
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
                "for NaN/inf; " + last_good())
        for (s, _, metrics), loss in zip(pending, losses, strict=True):
            history["step"].append(s)
            history["loss"].append(loss)
            for k, v in metrics.items():
                history.setdefault(k, []).append(next(rest) if torch.is_tensor(v)
                                                 else float(v))
        pending.clear()

    def last_good() -> str:
        if checkpoint is None:
            return "no checkpoint was kept (pass checkpoint=...)."
        if last_saved is None:
            return f"no finite checkpoint was saved to {checkpoint} yet."
        return f"the last finite weights, of step {last_saved}, are in {checkpoint}."

    def save(final: bool = False, rng: dict | None = None) -> None:
        nonlocal last_saved, last_save_time
        flush()  # never save weights whose loss was not finite
        mid_epoch = order is not None and pos < stop
        try:
            save_checkpoint(checkpoint, model, optimizer, averager, step, history,
                            identity, trained_before + time.perf_counter() - start,
                            rng=rng or _rng_state(generator, device),
                            data_order=order if mid_epoch else None, data_start=pos,
                            scaler=scaler)
        except NonFiniteWeightsError as err:
            raise NonFiniteWeightsError(f"the weights became NaN/inf by step {step} of {total} "
                                        f"although the loss was finite (a NaN gradient?); "
                                        f"they were not saved. Lower the learning rate or "
                                        f"clip gradients (clip=1.0); {last_good()}") from err
        except CheckpointSaveError as err:
            save_error.append(str(err))
            warnings.warn(f"{err}; training goes on and the model stays in memory"
                          if not final else f"{err}; the trained model is in memory only "
                          "(save it with torch.save(model.state_dict(), path))", stacklevel=3)
            return
        last_saved, last_save_time = step, time.perf_counter()

    # Ctrl-C, SIGTERM and SIGHUP (what Colab, CI and a closed terminal send) stop the run
    # at the end of the step, so what is saved is one consistent step; a second Ctrl-C
    # stops at once
    stop_signal: list[int] = []

    def on_signal(sig, frame):
        if sig == signal.SIGINT and stop_signal:
            raise KeyboardInterrupt(f"second signal at step {step}")
        stop_signal.append(sig)
        if sig == signal.SIGINT:
            print(f"\ninterrupt: stopping after step {step + 1} (interrupt again to stop "
                  "at once)", file=sys.stderr, flush=True)

    old_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is not None:
                try:
                    old_handlers[sig] = signal.signal(sig, on_signal)
                except (ValueError, OSError):
                    pass
    last_save_time = time.perf_counter()
    rng_at_step = None  # the random state as the step in progress began
    in_step = updating = False

    model.train()
    bar = progress(total=total, desc=desc, quiet=quiet, initial=step)
    try:
        while step < total:
            if order is None or pos >= stop:
                order, pos = _draw_order(n, generator, device), 0
            step_before = step
            while pos < stop and step < total:
                idx = order[pos:pos + batch_size]
                batch = tuple(t[idx] for t in tensors)
                batch = batch if len(batch) > 1 else batch[0]
                in_step, rng_at_step = True, _rng_state(generator, device)
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
                        _set_rng_state(rng_at_step, generator)  # redo this very step
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
                # from the optimizer's first write to the step count, an interrupt would
                # leave weights of neither step: nothing is saved then (see below)
                updating = True
                scaler.step(optimizer)
                scaler.update()
                if averager is not None:
                    averager.update(model)
                step, pos = step + 1, pos + len(idx)
                updating = in_step = False
                pending.append((step, loss.detach(),
                                {k: v.detach() if torch.is_tensor(v) else v
                                 for k, v in metrics.items()}))
                bar.update(1)
                if step % check_every == 0 or step == total:
                    flush()
                    bar.set_postfix(loss=f"{history['loss'][-1]:.4g}")
                if checkpoint is not None and (
                        step % save_every == 0 or step == total
                        or time.perf_counter() - last_save_time > save_seconds):
                    save(final=step == total)
                if stop_signal:
                    raise KeyboardInterrupt(f"signal {stop_signal[0]} at step {step}")
            if step == step_before:
                raise ValueError(f"an epoch of the data yielded no batch ({n} examples, "
                                 f"batch_size {batch_size}, drop_last {drop_last})")
    except KeyboardInterrupt:
        if updating:
            at = (f"the last checkpoint, of step {last_saved}, is kept" if last_saved
                  is not None else "nothing was saved")
            print(f"interrupted while step {step + 1} was updating the weights, which are "
                  f"now of neither step; not saved ({at})")
            raise
        flush()
        if checkpoint is not None and last_saved != step:
            # stopped inside a step: save the random state it began with, so the resumed
            # run draws the same numbers for it
            save(rng=rng_at_step if in_step else None)
            if last_saved == step:
                print(f"interrupted at step {step}; saved {checkpoint}, run again to resume")
        raise
    finally:
        bar.close()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        if lock is not None:
            lock.release()
    flush()
    if stop_signal:  # it came with the last step, after the final save: stop all the same
        raise KeyboardInterrupt(f"signal {stop_signal[0]} at step {step} (the run is complete "
                                f"and saved)")
    if checkpoint is None and not _all_finite(model.state_dict()):
        raise NonFiniteWeightsError(f"the weights became NaN/inf by step {step} although the "
                                    "loss was finite (a NaN gradient?). Lower the learning "
                                    "rate or clip gradients (clip=1.0).")
    model.eval()
    seconds = time.perf_counter() - start
    return FitResult(history, step, seconds, resumed_at, averager, trained_before + seconds,
                     save_error[-1] if save_error else None)
