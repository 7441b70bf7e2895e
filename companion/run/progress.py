"""The one progress bar helper. It passes `disable` itself: tqdm.auto ignores TQDM_DISABLE."""

from __future__ import annotations

from tqdm.auto import tqdm

from .profiles import env_flag, get_profile

ENV_VAR = "BOOK_PROGRESS"  # "0": no bars at all (`make outputs`: stored pages show results)


def bars_off() -> bool:
    """True when $BOOK_PROGRESS is 0/false/no/off (read by `profiles.env_flag`)."""
    return not env_flag(ENV_VAR, default=True)


def progress(iterable=None, *, total=None, desc=None, quiet: bool | None = None, **kwargs):
    """A tqdm bar, silent when `quiet` (default: the active profile's `quiet`, True in ci)
    and always silent when $BOOK_PROGRESS=0. It only shows: every iteration runs (the smoke
    run cuts a slow network's cost instead, `companion.run.smoke`).
    """
    if quiet is None:
        quiet = get_profile().quiet
    return tqdm(iterable, total=total, desc=desc, disable=quiet or bars_off(), leave=False,
                **kwargs)

