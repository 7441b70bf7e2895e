"""Numbers from a cell into the prose: the book's `{glue:text}` role reads what this stores.

    from companion.run.glue import glue
    glue("ch9_fd_full", fd, display=False)     # prose: {glue:text}`ch9_fd_full:.1f`

The output is the one myst-nb's own `glue` writes (its mime bundle under the papermill
prefix, the name in the output's "scrapbook" metadata), made here so that a notebook runs
where myst-nb and its Sphinx stack are not installed (Colab, a bare GPU machine).

A real number is stored to `digits` significant digits (4 unless asked), not at full
`repr` precision: the prose rounds it anyway (`:.1f`, `:.3f`), and the last bits of a
float change with the order of a summation, which differs between CPUs (AVX2, AVX-512)
and would make nbval's exact comparison of stored outputs fail on another machine.
tests/test_glue.py checks that no sentence shows more digits than are stored.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from companion.run import checks

GLUE_PREFIX = "application/papermill.record/"
DIGITS = 4
DIGITS_KEY = "companion_glue_digits"


def round_significant(x: float, digits: int = DIGITS) -> float:
    """x rounded to `digits` significant digits, or more where that would end in a 5.

    A stored 1.305 (from 1.3054) would read as a tie to the prose's `:.2f` and print 1.30
    where x gives 1.31; so while the rounded value's last non-zero digit is a 5 and it is
    not x itself, one more digit is kept (1.3054; 0.0497 to one digit stays 0.0497, not 0.05,
    which `:.1f` shows as 0.1 where x gives 0.0). Rounding x to the digits kept cannot step
    past a tie of a coarser digit, only land on one; so then rounding the stored value to
    fewer digits, or to fewer decimals, always agrees with rounding x (to the digits stored).
    NaN and infinities are returned unchanged.
    """
    digits = _digits(digits)
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    for n in range(digits, 18):
        text = f"{x:.{n - 1}e}"
        mantissa = text.split("e")[0].rstrip("0").rstrip(".")  # '5.0' ends in a 5 too
        if not mantissa.endswith("5") or float(text) == x:
            break
    return float(text)


def _digits(digits) -> int:
    try:
        return checks.count("digits", digits)
    except checks.ArgumentError as e:
        raise checks.ArgumentError(f"{e} (the significant digits glue stores of a real "
                                   "number: at least as many as the prose shows, say 4)") \
            from None


def _non_finite(value: Any, depth: int = 0) -> float | None:
    """The first NaN or infinity inside value (a number, tensor, array, or a list, tuple, set
    or dict of them), or None."""
    if isinstance(value, bool | numbers.Integral | str | bytes) or value is None or depth > 20:
        return None
    if isinstance(value, numbers.Number):
        z = complex(value)
        return None if math.isfinite(z.real) and math.isfinite(z.imag) else value
    if torch.is_tensor(value):
        if not (value.is_floating_point() or value.is_complex()):
            return None
        bad = value.detach()[~torch.isfinite(value.detach())]
        return bad.flatten()[0].item() if bad.numel() else None
    if isinstance(value, np.ndarray | np.generic):
        if value.dtype.kind in "fc":
            bad = np.asarray(value)[~np.isfinite(value)]
            return bad.flat[0].item() if bad.size else None
        if value.dtype.kind == "O":
            return _non_finite(np.asarray(value).tolist(), depth + 1)
        return None
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, list | tuple | set | frozenset):
        for v in value:
            bad = _non_finite(v, depth + 1)
            if bad is not None:
                return bad
    return None


def _real_value(variable: Any) -> float | None:
    """variable as a float if it is a real, non-integer number (float, numpy, 0-d tensor)."""
    if isinstance(variable, bool | numbers.Integral | str):
        return None
    if isinstance(variable, numbers.Real):
        return float(variable)
    shape = getattr(variable, "shape", None)
    if shape is not None and tuple(shape) == () and hasattr(variable, "item"):
        value = variable.item()
        if isinstance(value, float):
            return value
    return None


def glue(name: str, variable: Any, display: bool = True, digits: int = DIGITS) -> None:
    """Store `variable`'s displayed form under `name` for the book's glue roles.

    display: also show it in the notebook (False: stored only, shown nowhere).
    digits:  significant digits kept of a real number (at least what the prose shows).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"glue needs a non-empty name (str), got {name!r}")
    from IPython.core.formatters import format_display_data
    from IPython.display import display as ipy_display

    digits = _digits(digits)
    real = _real_value(variable)
    bad = real if real is not None and not math.isfinite(real) else _non_finite(variable)
    if bad is not None:
        inside = "" if real is not None else f" (inside a {type(variable).__name__})"
        raise ValueError(f"glue({name!r}, {bad}{inside}): a NaN or infinite number would be "
                         "quoted in the prose as a result; find where it stopped being finite")
    glued = getattr(variable, "glued", None)  # a verdict phrase names its evidence row
    if callable(glued) and isinstance(variable, str):
        glued(name)
        variable = str(variable)
    stored = variable if real is None else round_significant(real, digits)
    bundle, metadata = format_display_data(stored)
    prefix = "" if display else GLUE_PREFIX
    metadata["scrapbook"] = {"name": name, "mime_prefix": prefix}
    if real is not None:
        metadata[DIGITS_KEY] = int(digits)  # read by tests/test_glue.py, ignored by myst-nb
    ipy_display({prefix + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)
