"""The one progress bar helper. It passes `disable` itself: tqdm.auto ignores TQDM_DISABLE."""

from __future__ import annotations

from tqdm.auto import tqdm

from .profiles import get_profile


def progress(iterable=None, *, total=None, desc=None, quiet: bool | None = None, **kwargs):
    """A tqdm bar, silent when `quiet` (default: the active profile's `quiet`, True in ci)."""
    if quiet is None:
        quiet = get_profile().quiet
    return tqdm(iterable, total=total, desc=desc, disable=quiet, leave=False, **kwargs)
