"""Device, seeding and the notebook setup line; the T4 emulation and the GPU memory record.

BOOK_T4=1 (`profiles.t4_emulated`, the one place that reads it) makes a bigger GPU
behave, as far as the book's code can tell, like Colab's T4: `setup` caps the process at a
T4's memory and turns TF32 off, and `precision.autocast_dtype` picks fp16 (with fit's
gradient scaler) instead of bf16. It is an emulation of the precision and the memory, not
of the speed. With $BOOK_PEAK_LOG set (book/_ext/execution_status.py sets it), `setup` has
the kernel write torch's peak GPU memory to that file after every cell.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import random
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch

from . import checks, precision, shipped
from .profiles import T4_VAR, Profile, get_profile, t4_emulated

# Colab's T4 has 16 GB, of which about 15.8e9 bytes are usable after the CUDA context; the
# cap is what issue 31 asks for, 15 GB, a little under that.
T4_MEMORY_BYTES = 15 * 10**9
PEAK_LOG_VAR = "BOOK_PEAK_LOG"


def get_device(name: str | None = None) -> torch.device:
    """`name` if given, else CUDA when available, else CPU."""
    if name is not None:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError) as err:
            raise checks.ArgumentError(f"device {name!r} is not a device: use 'cpu', 'cuda', "
                                       f"'cuda:1' or 'mps' ({err})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device {name!r} was asked for, but this machine has no usable CUDA GPU "
                "(torch.cuda.is_available() is False). On Colab: Runtime > Change runtime type "
                "> GPU, then run the notebook again; elsewhere leave the device out to use "
                "the CPU.")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); returns a CPU generator seeded alike."""
    seed = checks.as_int(seed)  # NumPy integers too
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise checks.ArgumentError(f"seed must be a non-negative int below 2**63, got "
                                   f"{seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeds the global generator users call)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    return torch.Generator().manual_seed(seed)


def describe(profile: Profile, device: torch.device) -> str:
    """One line naming the profile, device, precision rule and versions that produced a
    notebook's outputs (precision: `companion.run.precision.describe`)."""
    where = device.type
    if device.type == "cuda":
        where = f"cuda ({torch.cuda.get_device_name(device)})"
    return (
        f"profile={profile.name} device={where} precision={precision.describe(device)} "
        f"torch={torch.__version__} "
        f"python={platform.python_version()}"
    )


def setup(seed: int = 0, profile: str | None = None, device: str | None = None,
          threads: int | None = None):
    """Seed everything, pick the profile and device, print them; returns (profile, device).

    threads: CPU threads for torch. Chapters whose tensors are tiny pass 1: there, more
    threads only add synchronization cost.
    """
    if threads is not None:
        threads = checks.count("threads (at least 1)", threads)
        torch.set_num_threads(threads)
    seed_everything(seed)
    prof = get_profile(profile)
    dev = get_device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if prof.name == "ci" and dev.type == "cpu":
        # the test suite runs one notebook per core: more threads only oversubscribe
        torch.set_num_threads(1)
    print(describe(prof, dev))
    if t4_emulated():
        print(emulate_t4(dev))
    note = shipped.setup_line(prof.name)
    if note:
        print(note)
    _record_peak_memory()
    if prof.name == "gpu" and dev.type != "cuda":
        warnings.warn("the gpu profile runs the full experiments, which take hours without a "
                      "GPU; on this machine use BOOK_PROFILE=cpu (or unset BOOK_PROFILE)",
                      stacklevel=2)
    return prof, dev


def timed(fn: Callable, *args, **kwargs):
    """(fn(*args, **kwargs), wall-clock seconds), GPU work included.

    CUDA runs asynchronously: without a synchronize before and after, the clock would stop
    when the work is queued, not when it is done.
    """
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def emulate_t4(device: torch.device) -> str:
    """Make CUDA device `device` look like a T4 to this process; returns what was done.

    A T4 (compute capability 7.5) has no native bf16 and no TF32: training runs in fp16
    with a gradient scaler (`precision.autocast_dtype` reads `t4_emulated`), float32
    matrix products in full float32, and the caching allocator may hold no more than
    T4_MEMORY_BYTES (torch.cuda.set_per_process_memory_fraction: an allocation past it
    raises torch.OutOfMemoryError, as on the T4). Without CUDA there is nothing to emulate.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return (f"{T4_VAR}=1: no CUDA GPU here, so nothing is emulated (the CPU trains in the "
                "precision its own matrix units allow, T4 or not)")
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, T4_MEMORY_BYTES / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return (f"T4 emulation ({T4_VAR}=1): fp16 autocast with a gradient scaler, no TF32, "
            f"memory capped at {T4_MEMORY_BYTES / 1e9:.0f} GB of this GPU's "
            f"{total / 1e9:.0f} GB; a T4's speed is not emulated")


def cuda_peak_memory() -> dict[str, float] | None:
    """torch's peak GPU memory in this process so far (MiB): what tensors held at most
    ("allocated", torch.cuda.max_memory_allocated) and what the caching allocator held
    ("reserved"; the T4 cap applies to this one); None where CUDA was never used."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return {"allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1)}


def _write_peak_memory(*_) -> None:
    """Write cuda_peak_memory() to $BOOK_PEAK_LOG (a post_run_cell callback)."""
    path, peak = os.environ.get(PEAK_LOG_VAR), cuda_peak_memory()
    if path and peak is not None:
        try:
            with open(path, "w") as f:
                json.dump(peak, f)
        except OSError:  # a record, never a reason for a cell to fail
            pass


def _record_peak_memory() -> None:
    """With $BOOK_PEAK_LOG set, write the peak after every cell of this kernel (once per
    process, however often setup runs), or at exit outside IPython."""
    if not os.environ.get(PEAK_LOG_VAR):
        return
    try:
        from IPython import get_ipython
        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is None:
        atexit.unregister(_write_peak_memory)
        atexit.register(_write_peak_memory)
    elif _write_peak_memory not in shell.events.callbacks["post_run_cell"]:
        shell.events.register("post_run_cell", _write_peak_memory)


@contextmanager
def one_thread():
    """torch on one CPU thread inside the block, as before after it.

    For small dense linear algebra (the judge's 128 x 128 covariances): more threads only
    add synchronization, and when the cores are busy each waits on the others (an eigh of
    128 x 128 took 0.35 s on two threads of a busy 2-core machine, 0.008 s on one).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
