"""What a chapter computes in the `gpu` profile, counted by its smoke run (issue 81).

A smoke run (BOOK_SMOKE=1) takes every code path of the `gpu` profile with a couple of
steps each, so it knows what the real run would do without doing it. With $BOOK_WORK_LOG
naming a file, it writes down that work:

- each `fit`: the optimizer steps the gpu run takes, the batch, and the FLOPs of one
  step (forward and backward, counted by torch's FlopCounterMode on the first smoke step,
  per example, times the batch): training FLOPs = steps x flops_step;
- each trained network called in eval mode (samplers, bounds, judges): the calls per input
  shape and the FLOPs of one call on that shape (counted on fake tensors: nothing is
  computed): sampling FLOPs = calls x flops_call.

Such a run takes the profile's counts (`Profile.count`: samples, steps, draws), not the ci
ones a plain smoke run takes; to stay quick, a network's first call on a shape computes a
few rows (`few_rows`) and later ones repeat its output (companion.run.smoke).

A network called inside another's counted call, or inside a training step, is counted once,
in the outer one. tools/gpu_plan.py turns the counts into seconds on a GPU.

The file is one JSON object, rewritten whole (atomically, under a lock) as the counts move;
runs that share it each keep their own part ("runs": {run: its counts}), and the top level
holds them all:
    {"train": [{"desc", "checkpoint", "steps" (those the gpu run takes), "total", "smoke_end",
                "epochs", "rows", "batch", "examples", "flops_step", "ops_step",
                "compiled", "params"}],
     "eval": [{"network", "shape", "calls", "flops_call", "ops_call"}],
     "seconds": wall time of the run so far, "compute_seconds": of it, in counted steps
     and calls (here, on the CPU; the rest is the host's own work: data, plots, metrics),
     each summed over the runs,
     "runs": {"process <pid> on <host>, <start>": {"train", "eval", "seconds",
              "compute_seconds"} of that run alone}}
An op is one ATen operation dispatched (views aside): about one kernel launch on a GPU,
which costs the host a few microseconds whatever the work, so a small network's step
takes ops x that however few its FLOPs. "compiled": the fit asks for torch.compile on a
GPU (CUDA graphs there: the network's launches are replayed, not paid one by one).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import time
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from . import profiles

LOG_VAR = profiles.WORK_VAR
FLUSH_S = 0.5  # the file is rewritten at most this often while networks are called

_train: list[dict] = []
_eval: dict[tuple, dict] = {}
_depth = 0  # > 0 inside a counted call or a training step: inner calls are not counted
_flushed = 0.0
_start = time.perf_counter()
_registered = False


def enabled() -> bool:
    """True in a smoke run with $BOOK_WORK_LOG set."""
    return profiles.counting_work()


def reset() -> None:
    """Forget what was counted (tests)."""
    global _depth, _flushed
    _train.clear()
    _eval.clear()
    _depth, _flushed, _compute[0] = 0, 0.0, 0.0


class _Ops(TorchDispatchMode):
    """Counts the ATen operations dispatched: about the kernels a GPU launches, whose
    host-side cost bounds a small network's step from below."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func not in _FREE:
            self.ops += 1
        return func(*args, **(kwargs or {}))


# views and metadata: no kernel on a GPU
_FREE = {torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default,
         torch.ops.aten.t.default, torch.ops.aten.transpose.int,
         torch.ops.aten.permute.default, torch.ops.aten.expand.default,
         torch.ops.aten.unsqueeze.default, torch.ops.aten.squeeze.dim,
         torch.ops.aten.slice.Tensor, torch.ops.aten.select.int,
         torch.ops.aten.detach.default, torch.ops.aten.alias.default,
         torch.ops.aten.as_strided.default, torch.ops.aten.split.Tensor,
         torch.ops.aten.unbind.int, torch.ops.aten.reshape.default}


@contextlib.contextmanager
def _measuring():
    """Yields a dict that holds, once the block ends, its "flops" and "ops"."""
    flops, ops, out = FlopCounterMode(display=False), _Ops(), {}
    with flops, ops:
        yield out
    out.update(flops=int(flops.get_total_flops()), ops=ops.ops)


_compute = [0.0]  # seconds spent in counted steps and calls (the rest is the host's work)


@contextlib.contextmanager
def _inside():
    global _depth
    _depth += 1
    start = time.perf_counter()
    try:
        yield
    finally:
        _depth -= 1
        _compute[0] += time.perf_counter() - start


@contextlib.contextmanager
def counting(run):
    """Around one fit step's forward and backward. In a smoke run with a work log, calls
    inside it are not counted as eval calls, and the fit's first step is measured: its
    FLOPs per example times the batch go into the log with the steps the gpu run would
    take (run.full_total, before the smoke run's cut)."""
    if not enabled() or _depth:
        yield
        return
    measure = not getattr(run, "work_counted", True)
    with _inside(), (_measuring() if measure else contextlib.nullcontext({})) as got:
        yield
    if not measure:
        return
    run.work_counted = True
    rows = max(1, getattr(run, "step_rows", 1))
    batch = min(run.batch_size, run.n)
    params = sum(p.numel() for p in run.model.parameters())
    _train.append({
        "desc": run.desc, "checkpoint": run.checkpoint_name,
        "steps": run.full_total - _resumes_at(run, params, batch), "total": run.full_total,
        "smoke_end": run.total, "epochs": run.epochs, "rows": run.n,
        "batch": batch, "examples": rows,
        "flops_step": got["flops"] * batch // rows, "ops_step": got["ops"],
        "compiled": getattr(run, "wants_compile", False),
        "params": params})
    flush(force=True)


def _resumes_at(run, params: int, batch: int) -> int:
    """The step the gpu run starts this fit at. A smoke run's cache is its own, so a fit
    that resumes there continues an earlier fit of this run: on its own checkpoint, one
    the gpu run finished (it just loads: no steps); on an early checkpoint copied to it
    (as chapter 9's 600 steps), where that one's full run ended."""
    if not run.start_step:
        return 0
    if run.checkpoint_name and any(prev["checkpoint"] == run.checkpoint_name
                                   for prev in _train):
        return run.full_total
    for prev in reversed(_train):
        if (prev["params"], prev["batch"], prev["smoke_end"]) == (params, batch,
                                                                    run.start_step):
            return prev["total"]
    return run.start_step


def faking() -> bool:
    """True while a call is measured on fake tensors: networks inside it just compute."""
    return _faking


def eval_call(network: torch.nn.Module, key: tuple, args, kwargs, forward, call):
    """Count one eval-mode call of a trained network on inputs of shapes `key`, and return
    call() (the smoke run's: a few rows, or an earlier output repeated). The first on each
    shape is measured: forward(*args, **kwargs) (the network's own) on fake tensors of
    the full shapes, which counts its FLOPs and ops and computes nothing."""
    if not enabled() or _depth:
        return call()
    name = type(network).__qualname__
    entry = _eval.get((name, key))
    with _inside():
        if entry is None:
            got = _measure(forward, args, kwargs)
            entry = _eval[(name, key)] = {"network": name, "shape": [list(s) for s in key],
                                          "calls": 0, "flops_call": got["flops"],
                                          "ops_call": got["ops"]}
        out = call()
    entry["calls"] += 1
    flush()
    return out


_faking = False


def _measure(forward, args, kwargs) -> dict:
    """{"flops", "ops"} of forward(*args, **kwargs) on fake tensors of the same shapes;
    where an operation needs real values, of a real call on a few rows, the FLOPs scaled
    to the whole batch."""
    global _faking
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)

    def fake(a):
        return mode.from_tensor(a) if torch.is_tensor(a) else a

    _faking = True
    try:
        with torch.no_grad(), mode, _measuring() as got:
            forward(*map(fake, args), **{k: fake(v) for k, v in kwargs.items()})
        return got
    except Exception:  # data-dependent shapes (nonzero, item): count a few real rows
        rows, batch = _rows(args, kwargs)
        with _measuring() as got:
            few_rows(forward, args, kwargs)
        return {"flops": got["flops"] * batch // max(rows, 1), "ops": got["ops"]}
    finally:
        _faking = False


def _rows(args, kwargs) -> tuple[int, int]:
    """(rows few_rows computes, rows of the batch) for these inputs."""
    tensors = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a) and a.dim()]
    batch = tensors[0].shape[0] if tensors else 1
    return min(batch, profiles.SMOKE_BATCH), batch


def few_rows(forward, args, kwargs):
    """forward on the first SMOKE_BATCH rows of a batch, the output's rows repeated to the
    batch's: what a smoke run that counts work computes (its outputs mean nothing), so a
    gpu-sized batch costs it a few rows. An output not by rows: the whole call."""
    rows, batch = _rows(args, kwargs)
    if rows == batch:
        return forward(*args, **kwargs)

    def cut(a):
        return a[:rows] if torch.is_tensor(a) and a.dim() and a.shape[0] == batch else a

    out = forward(*map(cut, args), **{k: cut(v) for k, v in kwargs.items()})
    if torch.is_tensor(out) and out.dim() and out.shape[0] == rows:
        return out[torch.arange(batch, device=out.device) % rows]
    return forward(*args, **kwargs)


def flush(force: bool = False) -> None:
    """Write this run's counts so far into $BOOK_WORK_LOG (at most every FLUSH_S seconds),
    keeping the other runs' (`_merge`)."""
    global _flushed, _registered
    path = os.environ.get(LOG_VAR, "").strip()
    now = time.perf_counter()
    if not path or (not force and now - _flushed < FLUSH_S):
        return
    if not _registered:  # the last counts, when the kernel exits
        atexit.register(flush, True)
        _registered = True
    _flushed = now
    own = {"train": _train, "eval": list(_eval.values()), "seconds": round(now - _start, 1),
           "compute_seconds": round(_compute[0], 1)}
    try:
        _merge(Path(path), own)
    except OSError as err:  # a count must never stop a run
        warnings.warn(f"${LOG_VAR} ({path}) could not be written: {err}", stacklevel=2)


# This run's name in a shared log: two smoke runs given one $BOOK_WORK_LOG (notebooks run
# side by side) each rewrote the whole file, and the last one's counts were all it kept.
_RUN = f"process {os.getpid()} on {socket.gethostname()}, {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _merge(path: Path, own: dict) -> None:
    """Put this run's counts `own` into the log at `path` beside the other runs': under a
    lock on `<path>.lock` (left there: removing it would let a waiting run lock a file
    no longer named), read the log, replace this run's part ("runs": {run: counts}), sum
    the runs into the top-level "train", "eval", "seconds" and "compute_seconds" that
    readers take, and write it atomically. A log begins with its first run: delete the
    file to start a new one."""
    with _locked(path.with_name(path.name + ".lock")):
        runs = _runs(path)
        runs[_RUN] = own
        data = {"train": [e for r in runs.values() for e in r.get("train", [])],
                "eval": [e for r in runs.values() for e in r.get("eval", [])],
                "seconds": round(sum(r.get("seconds", 0.0) for r in runs.values()), 1),
                "compute_seconds": round(sum(r.get("compute_seconds", 0.0)
                                             for r in runs.values()), 1),
                "runs": runs}
        tmp = Path(f"{path}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)


def _runs(path: Path) -> dict:
    """{run: its counts} from the log at `path`: {} without one, the whole log as one
    earlier run for a log of one run (written before logs were shared)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError) as err:  # kept aside, not written over
        aside = path.with_name(path.name + ".unreadable")
        os.replace(path, aside)
        warnings.warn(f"${LOG_VAR} ({path}) was not a work log ({err}); moved to {aside}",
                      stacklevel=3)
        return {}
    if not isinstance(data, dict):
        return {}
    if isinstance(data.get("runs"), dict):
        return data["runs"]
    return {"an earlier run": data} if "train" in data or "eval" in data else {}


@contextlib.contextmanager
def _locked(lock: Path):
    """An exclusive lock on the file `lock` while the block runs (fcntl.flock: the kernel
    drops it if the process dies); none where files cannot be locked (Windows, some network
    file systems), as the checkpoints' lock."""
    with open(lock, "a") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass
        yield
