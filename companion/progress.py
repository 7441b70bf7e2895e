"""The one progress bar helper. It passes `disable` itself: tqdm.auto ignores TQDM_DISABLE."""

from __future__ import annotations

import os
from itertools import islice

from tqdm.auto import tqdm

from .profiles import SMOKE_STEPS, get_profile, smoke_mode

ENV_VAR = "BOOK_PROGRESS"  # "0": no bars at all (`make outputs`: stored pages show results)


def bars_off() -> bool:
    """True when $BOOK_PROGRESS is 0/false/no/off."""
    return os.environ.get(ENV_VAR, "").strip().lower() in {"0", "false", "no", "off"}


def progress(iterable=None, *, total=None, desc=None, quiet: bool | None = None, **kwargs):
    """A tqdm bar, silent when `quiet` (default: the active profile's `quiet`, True in ci)
    and always silent when $BOOK_PROGRESS=0.

    The book's long loops (samplers, bounds, Langevin, in-painting) run through this bar, so
    the smoke run (BOOK_SMOKE=1) cuts each of them to its first SMOKE_STEPS iterations here:
    every code path runs once or twice, with the profile's own models and sizes.
    """
    if quiet is None:
        quiet = get_profile().quiet
    if smoke_mode() and iterable is not None:
        iterable = list(islice(iterable, SMOKE_STEPS))
        total = len(iterable)
    return tqdm(iterable, total=total, desc=desc, disable=quiet or bars_off(), leave=False,
                **kwargs)
