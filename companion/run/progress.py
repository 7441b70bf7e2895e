"""The one progress bar helper. It passes `disable` itself: tqdm.auto ignores TQDM_DISABLE."""

from __future__ import annotations

import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

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


LOG_VAR = "BOOK_TRAIN_LOG"  # a file: one line per training run's start and end (device runs)


def log_training(event: str, desc: str, checkpoint, step: int, total: int,
                 seconds: float | None = None) -> None:
    """Append one tab-separated line to the file $BOOK_TRAIN_LOG names, if any: UTC time,
    `event` ("start" or "end"), `desc`, the checkpoint's file name, `step`/`total` and, at
    the end, this session's seconds of training. tools/outputs_device.sh sets it, so that a
    GPU call whose notebook had not finished still says which training ran and how long
    (the notebook's own outputs come back only once it ends)."""
    path = os.environ.get(LOG_VAR, "").strip()
    if not path:
        return
    when = datetime.now(timezone.utc).strftime("%H:%M:%S")
    name = Path(checkpoint).name if checkpoint is not None else "-"
    took = "" if seconds is None else f"\t{seconds:.1f} s"
    try:
        with open(path, "a") as f:
            f.write(f"{when}\t{event}\t{desc}\t{name}\t{step}/{total}{took}\n")
    except OSError as err:  # a log must never stop a training run
        warnings.warn(f"${LOG_VAR} ({path}) could not be written: {err}", stacklevel=2)
