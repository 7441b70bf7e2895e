"""Numbers one chapter measures and a later chapter quotes, kept beside the checkpoints.

Chapter 9 saves what it measured of its DDPM (bits/dim, Fréchet distance, ...) next to the
model's checkpoint; chapter 10, which loads that checkpoint, reads them back, so the two
chapters quote the same model's numbers, and a sentence never types them by hand:

    results.save("ch9", {"fd": 78.0, "bits_per_dim": 1.94}, profile)
    ch9 = results.load("ch9", profile)      # None when chapter 9 has not run here
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from .checkpoint import cache_dir


def results_path(chapter: str, profile) -> Path:
    """cache_dir()/results/{chapter}-{profile}.json, beside the checkpoints of that profile
    (the profile's name in lower case, as get_profile takes it: 'CI' is 'ci')."""
    pname = getattr(profile, "name", profile)
    for what, name in (("chapter", chapter), ("profile", pname)):
        if not isinstance(name, str) or not name or "/" in name or os.sep in name:
            raise ValueError(f"{what} must be a name such as 'ch9' (no path), got {name!r}")
    return cache_dir() / "results" / f"{chapter}-{pname.lower()}.json"


def save(chapter: str, values: dict, profile) -> Path:
    """Write `values` (a flat dict of str to numbers, strings or bools) for `chapter`.

    Numbers must be finite: a NaN saved here would be quoted as a result later.
    """
    for key, value in values.items():
        if not isinstance(key, str):
            raise TypeError(f"results keys are names (str); got {key!r}")
        if isinstance(value, bool) or isinstance(value, str):
            continue
        if not isinstance(value, (int, float)):
            raise TypeError(f"results[{key!r}] is a {type(value).__name__}; save plain "
                            "numbers, strings or bools (use float(x) or x.item() for a tensor)")
        if not math.isfinite(value):
            raise ValueError(f"results[{key!r}] is {value}: only finite numbers are saved")
    if not isinstance(values, dict):
        raise TypeError(f"values must be a dict of names to numbers, got "
                        f"{type(values).__name__}")
    path = results_path(chapter, profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(values, indent=1, sort_keys=True) + "\n"
    # a temporary name of this save's own (two processes saving at once never write or
    # move each other's), then an atomic replace: a reader sees the old file or the new
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # as a plain open() would make it, not mkstemp's 0o600
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(chapter: str, profile) -> dict | None:
    """The values `chapter` saved in this profile, or None when it has not run here."""
    path = results_path(chapter, profile)
    if not path.exists():
        return None
    redo = "delete it and re-run the chapter that writes it"
    try:
        values = json.loads(path.read_text(), parse_constant=_no_constant)
    except ValueError as err:  # JSONDecodeError too
        raise ValueError(f"{path} is not valid JSON of finite numbers ({err}); {redo}") from err
    if not isinstance(values, dict):
        raise ValueError(f"{path} holds a JSON {type(values).__name__}, not the dict of "
                         f"results that save writes; {redo}")
    return values


def _no_constant(name: str):
    raise ValueError(f"{name} is no result to quote")
