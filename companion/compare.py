"""One way to say that one method beats another: a paired comparison on the same units.

Two methods measured on the same units (the same test digits, the same seeds) give one
difference per unit, d_i = a_i - b_i. Its mean estimates how far a is ahead of b; its
standard error over the n independent units,

    SE = std(d_1, ..., d_n) / sqrt(n)        (std with n - 1 in the denominator),

says how much that mean would move on a redraw of the units. The verdict words follow
from the ratio z = mean / SE and one threshold (`THRESHOLD` standard errors): beyond it
"ahead by X (z SE)" or "behind by X (z SE)", inside it "within noise".

What counts as a unit matters. Two completions of the same digit, or the same digit
under two masks, are not independent: pass them as columns of a (n, k) array, whose
rows are the units; each unit's difference is then the mean over its k columns, and the
standard error is over the n rows only.

    from companion.compare import paired
    c = paired(acc_repaint, acc_replacement, unit="test digit")
    c.words(".3f")        # 'ahead by 0.040 (2.3 SE)' or 'within noise (+0.040, 1.3 SE)'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

THRESHOLD = 2.0


@dataclass(frozen=True)
class Comparison:
    """The mean difference a - b over `n` units, its standard error, and the verdict."""

    diff: float
    se: float
    n: int
    unit: str = "unit"
    threshold: float = THRESHOLD

    @property
    def z(self) -> float:
        """The difference in standard errors (inf when the SE is 0 and diff is not)."""
        if self.se == 0:
            return 0.0 if self.diff == 0 else math.copysign(math.inf, self.diff)
        return self.diff / self.se

    @property
    def verdict(self) -> str:
        """'ahead', 'behind' or 'tie': a - b beyond +-threshold standard errors or not."""
        if abs(self.z) < self.threshold:
            return "tie"
        return "ahead" if self.diff > 0 else "behind"

    @property
    def resolved(self) -> bool:
        """True when the difference is beyond the threshold (not within noise)."""
        return self.verdict != "tie"

    def words(self, fmt: str = ".3f", *, ahead: str = "ahead by",
              behind: str = "behind by", tie: str = "within noise") -> str:
        """The verdict in words, with the size of the difference and its z.

        fmt: the format of the difference ('.3f', '.1f', ...). Beyond the threshold:
        '<ahead> X (z SE)' or '<behind> X (z SE)' with X = |diff|; inside it:
        '<tie> (+X, z SE)'. Pass other words for a lower-is-better quantity
        (ahead='lower by', behind='higher by').
        """
        size = format(abs(self.diff), fmt)
        zs = f"{abs(self.z):.1f} SE"
        if self.verdict == "ahead":
            return f"{ahead} {size} ({zs})"
        if self.verdict == "behind":
            return f"{behind} {size} ({zs})"
        return f"{tie} ({format(self.diff, '+' + fmt)}, {zs})"

    def __str__(self) -> str:
        return (f"{self.diff:+.4g} ± {self.se:.2g} over {self.n} {self.unit}s: "
                f"{self.words('.4g')}")


def _as_units(x, name: str) -> np.ndarray:
    """x as a float array of shape (n,) or (n, k); anything else is an error."""
    try:
        array = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x,
                           dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be numbers, one per unit (a list, numpy array or "
                        f"tensor of shape (n,) or (n, k)); got {type(x).__name__}") from err
    if array.ndim not in (1, 2):
        raise ValueError(f"{name} must have shape (n,) (one value per unit) or (n, k) "
                         f"(k repeats per unit, averaged within the unit); got shape "
                         f"{array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(array)))} NaN or "
                         "infinite values: drop those units from both sides first")
    return array


def compare(diff: float, se: float, n: int, *, unit: str = "unit",
            threshold: float = THRESHOLD) -> Comparison:
    """A verdict from a difference and its standard error computed elsewhere.

    For a difference whose SE does not come from paired units (two independent
    estimates: se = sqrt(se_a**2 + se_b**2)); `n` is what the SE was computed over.
    """
    if not (math.isfinite(diff) and math.isfinite(se)) or se < 0:
        raise ValueError(f"diff must be finite and se finite and >= 0; got diff={diff!r}, "
                         f"se={se!r}")
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0 standard errors, got {threshold!r}")
    return Comparison(float(diff), float(se), int(n), unit, float(threshold))


def paired(a, b, *, unit: str = "unit", threshold: float = THRESHOLD) -> Comparison:
    """Compare a with b on the same units: mean of a - b, its SE over the units.

    a, b: (n,) one measurement per unit, or (n, k) k measurements per unit (masks,
          completions) that are averaged within the unit first; unit i of a and of b
          must be the same unit (the same digit, the same seed). n >= 2.
    unit: what one row is, for printing ("test digit", "seed").
    """
    a, b = _as_units(a, "a"), _as_units(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must be measured on the same units, so have the same "
                         f"shape; got {a.shape} and {b.shape}")
    d = a - b
    if d.ndim == 2:
        d = d.mean(axis=1)
    n = len(d)
    if n < 2:
        raise ValueError(f"a standard error needs at least 2 units, got {n}")
    se = float(d.std(ddof=1) / math.sqrt(n))
    return compare(float(d.mean()), se, n, unit=unit, threshold=threshold)
