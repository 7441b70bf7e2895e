"""The one progress bar helper. It passes `disable` itself: tqdm.auto ignores TQDM_DISABLE."""

from __future__ import annotations

from tqdm.auto import tqdm

from .profiles import env_flag, get_profile, smoke_mode, smoke_thin

ENV_VAR = "BOOK_PROGRESS"  # "0": no bars at all (`make outputs`: stored pages show results)


def bars_off() -> bool:
    """True when $BOOK_PROGRESS is 0/false/no/off (read by `profiles.env_flag`)."""
    return not env_flag(ENV_VAR, default=True)


def progress(iterable=None, *, total=None, desc=None, quiet: bool | None = None, **kwargs):
    """A tqdm bar, silent when `quiet` (default: the active profile's `quiet`, True in ci)
    and always silent when $BOOK_PROGRESS=0.

    The book's long loops (samplers, bound, Langevin, in-painting) run through this bar, so
    the smoke run (BOOK_SMOKE=1) thins them here (`profiles.smoke_thin`): a loop that would
    run longer than SMOKE_LOOP seconds keeps about SMOKE_KEEP evenly spaced iterations
    (every code path runs, with the profile's own models); a shorter loop runs whole.
    """
    if quiet is None:
        quiet = get_profile().quiet
    if smoke_mode() and iterable is not None:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        iterable = _thin(iterable, total)
    return tqdm(iterable, total=total, desc=desc, disable=quiet or bars_off(), leave=False,
                **kwargs)


def _thin(iterable, total):
    """The items `smoke_thin` keeps (the time an item takes is the loop's body on the item
    before: the generator resumes when the body asks for the next one)."""
    keep = smoke_thin(total)
    for i, item in enumerate(iterable):
        if keep(i):
            yield item
        elif total is None:
            return
