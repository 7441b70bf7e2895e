"""Profiles: one notebook, three compute budgets.

A notebook never hard-codes epochs or dataset sizes; it asks the active profile:

    profile = get_profile()          # BOOK_PROFILE, else gpu if CUDA, else cpu
    profile.epochs, profile.n_train, profile.pick(ci=(8, 16), cpu=(16, 32), gpu=(32, 64))
    profile.count(ci=200, cpu=2_000, gpu=20_000)   # samples, draws, repeats, steps

Under BOOK_SMOKE=1 (the smoke run) the profile keeps its models and recipes but takes the
ci profile's data slice and counts, and the book's loops stop early: see `smoke_mode`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

ENV_VAR = "BOOK_PROFILE"


@dataclass(frozen=True)
class Profile:
    """Sizes for one compute budget.

    name:        "ci", "cpu" or "gpu".
    n_train:     training images to use (None: all the source has).
    n_test:      test images to use (None: all).
    epochs:      passes over the training set for the chapter's main model.
    steps:       optimizer steps, for models trained by step count (diffusion).
    batch_size:  minibatch size.
    mc_samples:  Monte Carlo samples for estimates and checks.
    iw_samples:  importance samples for log p(x) estimates.
    quiet:       silence progress bars (ci, so logs stay readable).
    smoke:       the smoke run (BOOK_SMOKE=1): `count` gives the ci count.
    """

    name: str
    n_train: int | None
    n_test: int | None
    epochs: int
    steps: int
    batch_size: int
    mc_samples: int
    iw_samples: int
    quiet: bool
    smoke: bool = False

    def pick(self, *, ci, cpu, gpu):
        """The value for this profile, a size or a setting: `pick(ci=8, cpu=16, gpu=32)`."""
        return {"ci": ci, "cpu": cpu, "gpu": gpu}[self.name]

    def count(self, *, ci, cpu, gpu):
        """How many samples, draws, repeats or steps: `profile.count(ci=32, cpu=64, gpu=500)`.

        The profile's value, like `pick`, except in the smoke run, which takes the ci count:
        a count sets how long a computation runs, never what it computes with. A smoke run
        that counts the work of its profile ($BOOK_WORK_LOG, companion.run.work) takes the
        profile's count: its networks compute a few rows a call, then repeat themselves.
        """
        if self.smoke and not profile_counts():
            return ci
        return self.pick(ci=ci, cpu=cpu, gpu=gpu)

    def with_(self, **changes) -> Profile:
        """A copy with some sizes changed, e.g. for a quick experiment."""
        return replace(self, **changes)


PROFILES: dict[str, Profile] = {
    "ci": Profile("ci", n_train=2_000, n_test=500, epochs=3, steps=150, batch_size=128,
                  mc_samples=20_000, iw_samples=64, quiet=True),
    "cpu": Profile("cpu", n_train=None, n_test=None, epochs=20, steps=3_000, batch_size=128,
                   mc_samples=200_000, iw_samples=256, quiet=False),
    "gpu": Profile("gpu", n_train=None, n_test=None, epochs=50, steps=40_000, batch_size=128,
                   mc_samples=2_000_000, iw_samples=1_000, quiet=False),
}


def default_profile_name() -> str:
    """`gpu` when CUDA is available, else `cpu`."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def get_profile(name: str | None = None) -> Profile:
    """The active profile: `name`, else $BOOK_PROFILE, else chosen from the device.

    In the smoke run (BOOK_SMOKE=1) it is that profile with the ci profile's data slice,
    Monte Carlo sizes and counts: the same models, on a couple of steps of little data.
    """
    chosen = name or os.environ.get(ENV_VAR, "").strip() or default_profile_name()
    key = chosen.lower()
    if key not in PROFILES:
        valid = ", ".join(PROFILES)
        raise ValueError(
            f"unknown profile {chosen!r}; valid profiles are: {valid}. "
            f"Set {ENV_VAR} to one of them, or unset it to choose from the device."
        )
    profile = PROFILES[key]
    if smoke_mode():
        ci = PROFILES["ci"]
        profile = replace(profile, n_train=ci.n_train, n_test=ci.n_test,
                          mc_samples=ci.mc_samples, iw_samples=ci.iw_samples, smoke=True)
    return profile


YES = ("1", "true", "yes", "on")
NO = ("0", "false", "no", "off")


def env_flag(name: str, default: bool = False, environ=None) -> bool:
    """A yes/no environment variable, read one way everywhere: 1/true/yes/on is True,
    0/false/no/off is False (any case), unset or blank is `default`; anything else is an
    error naming the variable (BOOK_SMOKE=false must not mean "on"). `environ`: another
    mapping to read (a child process's environment), else os.environ."""
    raw = (os.environ if environ is None else environ).get(name)
    value = "" if raw is None else raw.strip().lower()
    if not value:
        return default
    if value in YES:
        return True
    if value in NO:
        return False
    raise ValueError(f"{name}={raw!r} is not a yes/no value: set it to one of "
                     f"{'/'.join(YES)} or {'/'.join(NO)}, or unset it")


SMOKE_VAR = "BOOK_SMOKE"
SMOKE_STEPS = 2  # optimizer steps a smoke run's fit takes
SMOKE_BATCH = 8  # examples a smoke run's optimizer step sees (of the batch it drew)
WORK_VAR = "BOOK_WORK_LOG"  # a smoke run that writes down its profile's work there
COUNTS_VAR = "BOOK_WORK_COUNTS"  # "ci": such a run takes the ci counts (its host's time)
T4_VAR = "BOOK_T4"


def t4_emulated() -> bool:
    """True under BOOK_T4=1: train and sample as on Colab's T4 (read by `env_flag`, as
    BOOK_SMOKE: 1/true/yes/on). Here, below both `runtime` (which emulates the T4) and
    `precision` (which picks fp16 for it), so that neither imports the other's reader."""
    return env_flag(T4_VAR)


def counting_work() -> bool:
    """True in a smoke run with $BOOK_WORK_LOG set (companion.run.work)."""
    return smoke_mode() and bool(os.environ.get(WORK_VAR, "").strip())


def profile_counts() -> bool:
    """True where `Profile.count` gives the profile's count in a smoke run: one that counts
    its work, unless $BOOK_WORK_COUNTS is "ci" (tools/gpu_cost.py times the host's own
    work so: the same cheap networks, on the ci counts' small tensors)."""
    if not counting_work():
        return False
    counts = os.environ.get(COUNTS_VAR, "").strip().lower()
    if counts not in ("", "profile", "ci"):
        raise ValueError(f"{COUNTS_VAR}={counts!r}: give 'ci' or 'profile' (the default)")
    return counts != "ci"



def smoke_mode() -> bool:
    """True under BOOK_SMOKE=1: the profile's models and code paths, a couple of steps each.

    Like Lightning's `fast_dev_run`, so that the `gpu` profile's code runs on a CPU in
    minutes: `fit` stops after SMOKE_STEPS optimizer steps, each on the first SMOKE_BATCH
    examples of the batch it drew (a gpu-sized batch through a gpu-sized U-Net took half a
    minute a step on 2 cores), and writes its checkpoints to a throwaway folder, never the
    normal cache (a data download goes there too; data already in the user's folder is
    read); `get_profile` gives the ci profile's data slice and counts; and a trained
    network that takes longer than `smoke.SLOW` seconds a call repeats its output after
    `smoke.SMOKE_CALLS` call per input shape (`companion.run.smoke`: fit makes the cut, so
    a sampler's loop runs every step of its own code, cheaply, and reads as in any other
    run). Read by `env_flag` (1/true/yes/on).
    """
    return env_flag(SMOKE_VAR)

