"""Profiles: one notebook, three compute budgets.

A notebook never hard-codes epochs or dataset sizes; it asks the active profile:

    profile = get_profile()          # BOOK_PROFILE, else gpu if CUDA, else cpu
    profile.epochs, profile.n_train, profile.pick(ci=200, cpu=2_000, gpu=20_000)
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

    def pick(self, *, ci, cpu, gpu):
        """The value for this profile: `profile.pick(ci=2, cpu=10, gpu=50)`."""
        return {"ci": ci, "cpu": cpu, "gpu": gpu}[self.name]

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
    """The active profile: `name`, else $BOOK_PROFILE, else chosen from the device."""
    chosen = name or os.environ.get(ENV_VAR, "").strip() or default_profile_name()
    key = chosen.lower()
    if key not in PROFILES:
        valid = ", ".join(PROFILES)
        raise ValueError(
            f"unknown profile {chosen!r}; valid profiles are: {valid}. "
            f"Set {ENV_VAR} to one of them, or unset it to choose from the device."
        )
    return PROFILES[key]


SMOKE_VAR = "BOOK_SMOKE"
SMOKE_STEPS = 2


def smoke_mode() -> bool:
    """True under BOOK_SMOKE=1: the profile's models and code paths, a couple of steps each.

    Like Lightning's `fast_dev_run`: `fit` stops after SMOKE_STEPS optimizer steps and
    writes its checkpoints to a throwaway folder, never the normal cache, so that the `gpu`
    profile's code runs on a CPU in minutes. Anything but "", "0" or unset turns it on.
    """
    return os.environ.get(SMOKE_VAR, "").strip() not in ("", "0")
