"""Device, seeding and the notebook setup line."""

from __future__ import annotations

import os
import platform
import random
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from . import checks
from .profiles import Profile, get_profile


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
    """One line naming the profile, device and versions that produced a notebook's outputs."""
    where = device.type
    if device.type == "cuda":
        where = f"cuda ({torch.cuda.get_device_name(device)})"
    return (
        f"profile={profile.name} device={where} torch={torch.__version__} "
        f"python={platform.python_version()}"
    )


def setup(seed: int = 0, profile: str | None = None, device: str | None = None,
          threads: int | None = None):
    """Seed everything, pick the profile and device, print them; returns (profile, device).

    threads: CPU threads for torch. Chapters whose tensors are tiny pass 1: there, more
    threads only add synchronization cost.
    """
    if threads is not None:
        threads = checks.as_int(threads)
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise checks.ArgumentError(f"threads must be at least 1 (a whole number), got "
                                       f"{threads!r}")
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
