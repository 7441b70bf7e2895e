"""The one progress bar helper. It passes `disable` itself: tqdm.auto ignores TQDM_DISABLE."""

from __future__ import annotations

import os

from tqdm.auto import tqdm

from .profiles import get_profile, smoke_cut, smoke_mode

ENV_VAR = "BOOK_PROGRESS"  # "0": no bars at all (`make outputs`: stored pages show results)


def bars_off() -> bool:
    """True when $BOOK_PROGRESS is 0/false/no/off."""
    return os.environ.get(ENV_VAR, "").strip().lower() in {"0", "false", "no", "off"}


def progress(iterable=None, *, total=None, desc=None, quiet: bool | None = None, **kwargs):
    """A tqdm bar, silent when `quiet` (default: the active profile's `quiet`, True in ci)
    and always silent when $BOOK_PROGRESS=0.

    The book's long loops (samplers, bound, Langevin, in-painting) run through this bar, so
    the smoke run (BOOK_SMOKE=1) cuts them here: a loop whose first SMOKE_STEPS iterations
    took more than SMOKE_SLOW seconds each stops after them (every code path runs, with the
    profile's own models); a cheaper loop runs whole.
    """
    if quiet is None:
        quiet = get_profile().quiet
    if smoke_mode() and iterable is not None:
        iterable = _cut_if_slow(iterable)
    return tqdm(iterable, total=total, desc=desc, disable=quiet or bars_off(), leave=False,
                **kwargs)


def _cut_if_slow(iterable):
    """The iterable, stopped where `smoke_cut` says (the time an item takes is the loop's
    body on the item before: the generator resumes when the body asks for the next one)."""
    cut = smoke_cut()
    for item in iterable:
        if cut():
            return
        yield item
