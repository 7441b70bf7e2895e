"""One way to say that one method beats another: a difference, its standard error, a t test.

Two methods measured on the same units (the same test digits, the same seeds) give one
difference per unit, d_i = a_i - b_i. Its mean estimates how far a is ahead of b; its
standard error over the n independent units,

    SE = std(d_1, ..., d_n) / sqrt(n)        (std with n - 1 in the denominator),

says how much that mean would move on a redraw of the units. The verdict follows from
z = mean / SE against the two-sided 95% quantile of Student's t with the test's degrees
of freedom (Student 1908; Welch 1947):

    paired units (`paired`): df = n - 1;
    two independent arms (`welch`): SE^2 = v_a + v_b with v = s^2 / n for each arm, and
        Welch's df = (v_a + v_b)^2 / (v_a^2 / (n_a - 1) + v_b^2 / (n_b - 1));
    one value against n redraws of a noise level (`against_noise`): diff = value - their
        mean, SE = their sd * sqrt(1 + 1/n) (a prediction interval), df = n - 1;
    a statistic's difference from paired bootstrap draws (`paired_bootstrap`): SE =
        SD of the draws' differences, the normal quantile;
    a statistic's difference from its values with each unit left out (`paired_jackknife`,
        the book's error bar for Fréchet distances): SE^2 = (n - 1)/n sum_i (d_i - mean)^2
        over the left-out differences d_i, df = n - 1;
    a standard error from elsewhere (`compare`): df given, or n - 1 for n paired units.

Few units need far more than 2 SE: the quantile is 12.7 at 1 degree of freedom, 4.30 at 2,
3.18 at 3 and 2.05 at 29 (1.96 as df grows). Beyond it the words are "ahead by X (z SE;
paired t, 2 df)" or "behind by X (...)", inside it "within noise (+X, z SE; ...)": the
words say which test and how many degrees of freedom.

What counts as a unit matters. Two completions of the same digit, or the same digit
under two masks, are not independent: pass them as columns of a (n, k) array, whose
rows are the units; each unit's difference is then the mean over its k columns, and the
standard error is over the n rows only.

    from companion.compare import paired
    c = paired(acc_repaint, acc_replacement, unit="test digit")
    c.words(".3f")    # 'ahead by 0.040 (2.3 SE; paired t, 99 df)' or 'within noise (...)'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .run import checks

LEVEL = 0.95  # two-sided: the verdict is "within noise" unless |z| reaches the t quantile


def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided `level` quantile of Student's t with df degrees of freedom (normal at inf)."""
    from scipy import stats

    if not (df > 0):
        raise ValueError(f"the degrees of freedom must be > 0, got {df!r}: a standard error "
                         "needs at least 2 units (df = n - 1)")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), e.g. 0.95, got {level!r}")
    q = 1 - (1 - level) / 2
    return float(stats.norm.ppf(q) if math.isinf(df) else stats.t.ppf(q, df))


def welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom of (mean a - mean b) for two independent arms.

    var_a, var_b: the arms' sample variances (ddof 1), not both 0; n_a, n_b >= 2 their sizes
    (whole numbers).
    df = (v_a + v_b)^2 / (v_a^2 / (n_a - 1) + v_b^2 / (n_b - 1)) with v = var / n, which
    lies between min(n_a, n_b) - 1 and n_a + n_b - 2; with both variances 0 it is 0/0.
    """
    n_a = checks.count("n_a (the units of arm a; a variance needs 2)", n_a, minimum=2)
    n_b = checks.count("n_b (the units of arm b; a variance needs 2)", n_b, minimum=2)
    var_a = checks.real("var_a (a sample variance)", var_a, low=0.0)
    var_b = checks.real("var_b (a sample variance)", var_b, low=0.0)
    if var_a == var_b == 0:
        raise checks.ArgumentError(
            "var_a and var_b are both 0: Welch's degrees of freedom are 0/0 (neither arm "
            "varies, so the difference has no standard error); check that the values are "
            "not one repeated number")
    va, vb = var_a / n_a, var_b / n_b
    return (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))


def _format_df(df: float) -> str:
    if math.isinf(df):
        return "normal"
    return f"{df:.0f} df" if abs(df - round(df)) < 1e-9 else f"{df:.1f} df"


@dataclass(frozen=True)
class Comparison:
    """The difference a - b, its standard error, the degrees of freedom and the verdict.

    n: the units the SE was computed over (both arms for `welch`); df: the t test's degrees
    of freedom; test: its name in the words ("paired t", "Welch t", ...); scale: what one
    "SE" is called in the words ("SE", or "noise SD" for `against_noise`).
    """

    diff: float
    se: float
    n: int
    unit: str = "unit"
    df: float = math.inf
    test: str = "t"
    level: float = LEVEL
    scale: str = "SE"

    @property
    def z(self) -> float:
        """The difference in standard errors (inf when the SE is 0 and diff is not)."""
        if self.se == 0:
            return 0.0 if self.diff == 0 else math.copysign(math.inf, self.diff)
        return self.diff / self.se

    @property
    def threshold(self) -> float:
        """The t quantile |z| must reach: t_{df} at (1 + level) / 2."""
        return t_quantile(self.df, self.level)

    @property
    def p(self) -> float:
        """The two-sided p-value of z under Student's t with df degrees of freedom."""
        from scipy import stats

        if math.isinf(self.z):
            return 0.0
        dist = stats.norm if math.isinf(self.df) else stats.t(self.df)
        return float(2 * dist.sf(abs(self.z)))

    @property
    def verdict(self) -> str:
        """'ahead', 'behind' or 'tie': |z| at or beyond the t quantile or not."""
        if abs(self.z) < self.threshold:
            return "tie"
        return "ahead" if self.diff > 0 else "behind"

    @property
    def resolved(self) -> bool:
        """True when the difference is beyond the t quantile (not within noise)."""
        return self.verdict != "tie"

    @property
    def how(self) -> str:
        """The test in words: 'paired t, 2 df', 'Welch t, 3.3 df', ..."""
        return f"{self.test}, {_format_df(self.df)}"

    def words(self, fmt: str = ".3f", *, ahead: str = "ahead by",
              behind: str = "behind by", tie: str = "within noise") -> str:
        """The verdict in words, with the size of the difference, z and the test.

        fmt: the format of the difference ('.3f', '.1f', ...). Beyond the t quantile:
        '<ahead> X (z SE; paired t, n-1 df)' or '<behind> X (...)' with X = |diff|; inside
        it: '<tie> (+X, z SE; ...)'. Pass other words for a lower-is-better quantity
        (ahead='lower by', behind='higher by').
        """
        size = format(abs(self.diff), fmt)
        zs = f"{abs(self.z):.1f} {self.scale}; {self.how}"
        if self.verdict == "ahead":
            return f"{ahead} {size} ({zs})"
        if self.verdict == "behind":
            return f"{behind} {size} ({zs})"
        return f"{tie} ({format(self.diff, '+' + fmt)}, {zs})"

    def __str__(self) -> str:
        return (f"{self.diff:+.4g} ± {self.se:.2g} over {self.n} {self.unit}s: "
                f"{self.words('.4g')}")


def _as_units(x, name: str) -> np.ndarray:
    """x as a float array of shape (n,) or (n, k); anything else is an error (complex
    values too: the cast to float dropped their imaginary parts, with a warning at most)."""
    raw = x.detach().cpu() if hasattr(x, "detach") else x
    if np.iscomplexobj(raw):
        raise checks.ArgumentError(f"{name} must be real numbers, one per unit, got complex "
                                   f"values: compare their .real or abs(), as is meant")
    try:
        array = np.asarray(raw, dtype=float)
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


def _per_unit(x, name: str) -> np.ndarray:
    array = _as_units(x, name)
    return array.mean(axis=1) if array.ndim == 2 else array


def compare(diff: float, se: float, n: int, *, df: float | None = None, test: str | None = None,
            unit: str = "unit", level: float = LEVEL) -> Comparison:
    """A verdict from a difference and its standard error computed elsewhere.

    n: the units the SE was computed over. df: the t test's degrees of freedom; None means
    n - 1, the SE of a mean over n paired units ("paired t"). For a bootstrap SE or another
    large-sample SE pass df=math.inf (the normal quantile) and name it in `test`; for two
    independent arms use `welch` (from the values) or `welch_df`.
    """
    for name, value in (("diff", diff), ("se", se)):
        if not isinstance(checks.as_float(value), float):
            raise checks.ArgumentError(
                f"{name} must be one real number (a float, or a one-element tensor), got "
                f"{checks._got(value)}: pass the summary, e.g. float(d.mean())")
    diff, se = checks.as_float(diff), checks.as_float(se)
    if not (math.isfinite(diff) and math.isfinite(se)) or se < 0:
        raise ValueError(f"diff must be finite and se finite and >= 0; got diff={diff!r}, "
                         f"se={se!r}")
    n = checks.count("n (the number of units the SE was computed over)", n)
    if df is None:
        if n < 2:
            raise ValueError(f"a standard error over paired units needs n >= 2, got {n}; "
                             "pass df= for an SE from elsewhere")
        df, test = float(n - 1), test or "paired t"
    t_quantile(df, level)  # checks df and level
    return Comparison(float(diff), float(se), int(n), unit, float(df), test or "t",
                      float(level))


def _replicate_differences(a, b, name: str, least: int, shape: str, source: str,
                            what: str, where: str):
    """a - b for two arms' replicates of a statistic (bootstrap draws, left-out values):
    both (m,) with m >= least and every difference finite, or a clear error."""
    import torch

    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 1 or len(a) < least:
        raise checks.ArgumentError(
            f"{name}_a and {name}_b must be {shape}, got shapes {tuple(a.shape)} and "
            f"{tuple(b.shape)}: pass both arms' statistics from one {source}")
    d = a - b
    if not bool(torch.isfinite(d).all()):
        raise checks.ArgumentError(
            f"{name}_a - {name}_b holds {int((~torch.isfinite(d)).sum())} NaN or infinite "
            f"{what} of {len(d)}: the statistic failed on those {where}")
    return d


def paired_bootstrap(diff: float, boot_a, boot_b, n: int, *, unit: str = "unit",
                     level: float = LEVEL) -> Comparison:
    """A verdict on a statistic's difference a - b from paired bootstrap draws.

    boot_a, boot_b: (B,) the statistic of a and of b on the same B resamples of n units
    (metrics.frechet_bootstrap). SE = SD(boot_a - boot_b), a large-sample SE: the normal
    quantile.
    """
    n = checks.count("n (the units each bootstrap draw resamples)", n)
    d = _replicate_differences(
        boot_a, boot_b, "boot", 2,
        "(B,) draws on the same B >= 2 resamples",
        "metrics.frechet_bootstrap call (a (1,) would broadcast against every draw)",
        "draws", "resamples; fix it there (a covariance that is not positive definite?) "
        "rather than drop draws")
    return compare(diff, d.std().item(), n, df=math.inf, test="paired bootstrap",
                   unit=unit, level=level)


def paired_jackknife(diff: float, loo_a, loo_b, *, unit: str = "unit",
                     level: float = LEVEL) -> Comparison:
    """A verdict on a statistic's difference a - b from its values with each unit left out.

    loo_a, loo_b: (n,) the statistic of a and of b without unit i, the same unit left out of
    both (metrics.frechet_jackknife); diff: the statistic's difference on all n units.
    SE = the jackknife standard error of the left-out differences (metrics.jackknife_se),
    t with n - 1 degrees of freedom.
    """
    from .metrics import jackknife_se

    d = _replicate_differences(
        loo_a, loo_b, "loo", 3, "(n,) left-out values over the same n >= 3 units",
        "metrics.frechet_jackknife call", "values", "units left out; fix it there")
    return compare(diff, jackknife_se(d), len(d), df=len(d) - 1, test="jackknife",
                   unit=unit, level=level)


def paired(a, b, *, unit: str = "unit", level: float = LEVEL) -> Comparison:
    """Compare a with b on the same units: mean of a - b, its SE over the units, t with n-1 df.

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
    return compare(float(d.mean()), se, n, unit=unit, level=level)


def welch(a, b, *, unit: str = "unit", level: float = LEVEL) -> Comparison:
    """Two independent arms (other seeds, other draws): mean a - mean b, Welch's t test.

    a: (n_a,), b: (n_b,) one value per unit ((n, k) rows are averaged first); n_a, n_b >= 2.
    SE = sqrt(s_a^2 / n_a + s_b^2 / n_b), df by Welch-Satterthwaite (`welch_df`).
    """
    a, b = _per_unit(a, "a"), _per_unit(b, "b")
    if min(len(a), len(b)) < 2:
        raise ValueError(f"each arm needs at least 2 units, got {len(a)} and {len(b)}")
    va, vb = float(a.var(ddof=1)), float(b.var(ddof=1))
    se = math.sqrt(va / len(a) + vb / len(b))
    # neither arm varies: SE = 0 makes z 0 or infinite whatever df is; take the smallest
    # df Welch's formula can give, min(n_a, n_b) - 1, rather than its 0/0
    df = welch_df(va, len(a), vb, len(b)) if va or vb else float(min(len(a), len(b)) - 1)
    return compare(float(a.mean() - b.mean()), se, len(a) + len(b), df=df, test="Welch t",
                   unit=unit, level=level)


def independent(a: float, se_a: float, n_a: int, b: float, se_b: float, n_b: int, *,
                test: str = "Welch t", unit: str = "unit",
                level: float = LEVEL) -> Comparison:
    """Two statistics of independent samples, each with a standard error computed elsewhere
    (a jackknife over its own samples, a Monte Carlo SE): a - b, SE = sqrt(se_a^2 + se_b^2),
    Welch-Satterthwaite degrees of freedom from var = se^2 n (`welch_df`).

    n_a, n_b >= 2: the units each SE was computed over; test names the SEs' origin for the
    evidence table ("jackknife, independent sets"). For values per unit use `welch`.
    """
    se_a = checks.real("se_a (a standard error)", se_a, low=0.0)
    se_b = checks.real("se_b (a standard error)", se_b, low=0.0)
    if se_a == se_b == 0:
        raise checks.ArgumentError(
            "se_a and se_b are both 0: the difference has no standard error, and Welch's "
            "degrees of freedom are 0/0; pass the standard errors the statistics have")
    df = _welch_df_of_ses(se_a, n_a, se_b, n_b)
    return compare(checks.as_float(a) - checks.as_float(b), math.hypot(se_a, se_b),
                   n_a + n_b, df=df, test=test, unit=unit, level=level)


SE_RANGE = (1e-70, 1e70)  # SEs whose se^2 n, its square and their sums are normal floats


def _welch_df_of_ses(se_a: float, n_a, se_b: float, n_b) -> float:
    """`welch_df` of var = se^2 n for two standard errors (not both 0). Outside SE_RANGE
    the variances are taken in units of the larger SE (the same df): se_a = 1e-200 squared
    to 0 and was refused as var_a and var_b, which the caller never passed; se_a = 1e200
    overflowed."""
    n_a = checks.count("n_a (the units of arm a; a variance needs 2)", n_a, minimum=2)
    n_b = checks.count("n_b (the units of arm b; a variance needs 2)", n_b, minimum=2)
    lo, hi = SE_RANGE
    if all(se == 0 or lo <= se <= hi for se in (se_a, se_b)):
        return welch_df(se_a**2 * n_a, n_a, se_b**2 * n_b, n_b)  # the book's SEs, as before
    unit = max(se_a, se_b)
    return welch_df((se_a / unit) ** 2 * n_a, n_a, (se_b / unit) ** 2 * n_b, n_b)


def against_noise(value: float, redraws, *, unit: str = "redraw",
                  level: float = LEVEL) -> Comparison:
    """One value against the spread of redraws of a noise level (the same statistic between
    two independent draws of the reference): is it beyond what another redraw could give?

    redraws: (n,) n >= 2 values of the statistic under the null. diff = value - mean,
    SE = sd sqrt(1 + 1/n) (a new redraw's spread about the mean of n), t with n - 1 df.
    The words count in "noise SD", not in standard errors of a mean.
    """
    r = _per_unit(redraws, "redraws")
    if len(r) < 2:
        raise ValueError(f"a noise level needs at least 2 redraws, got {len(r)}")
    if not math.isfinite(value):
        raise ValueError(f"value must be finite, got {value!r}")
    se = float(r.std(ddof=1)) * math.sqrt(1 + 1 / len(r))
    c = compare(float(value - r.mean()), se, len(r), df=len(r) - 1, test="t",
                unit=unit, level=level)
    return Comparison(c.diff, c.se, c.n, c.unit, c.df, c.test, c.level, "noise SD")


CLOSE = 2.5  # |z| under which a distance's verdict is judged again (chapter 20's protocol)


def is_close(first: Comparison, close: float = CLOSE) -> bool:
    """True when a distance's verdict is close enough to be judged again by a second
    measure: |z| < close. The Fréchet distance's bias in N depends on the model, so a
    verdict near the threshold may be the bias's (chapter 20)."""
    if not close > 0:
        raise ValueError(f"close must be a positive |z|, got {close!r}")
    return abs(first.z) < close


def settled(first: Comparison, second: Comparison, close: float = CLOSE) -> str:
    """first's verdict ('ahead', 'behind', 'tie') where it is not close, or where a second
    measure on the same samples (MMD², KID's statistic) agrees; 'tie' where a close
    verdict and the second measure disagree. One rule for every chapter that compares
    distances (chapters 18 and 20)."""
    if not is_close(first, close) or second.verdict == first.verdict:
        return first.verdict
    return "tie"


SHORT = 60  # the longest verdict phrase a sentence may hold (DESIGN.md, "The voice")


def trend(comparisons, budgets, *, ahead: str = "ahead", behind: str = "behind",
          tie: str = "within noise", along: str = "budget") -> str:
    """A verdict along the training budget in words, from the comparisons at each budget.

    comparisons: one Comparison per budget (the same pair of models from snapshots of the
    same runs); budgets: their names ("1/4", "1/2", "all"). The same verdict at every
    budget reads "lower at every budget (z 5.4, 13.9, 23.5)", with ", shrinking" or
    ", growing" after "budget" where |z| falls or rises at every step (a gap that shrinks
    towards the threshold is a weaker verdict than its last word says); otherwise each
    budget's word:
    "1/4: within noise (1.2); 1/2: lower (2.6); all: lower (3.0)". z is in the tests' own
    units (SE or noise SD), signed by nothing: the word carries the direction. along: what
    the budgets are, for the words ("number of evaluations": "lower at every number of
    evaluations (z ...)").
    """
    comparisons, budgets = list(comparisons), [str(b) for b in budgets]
    if not comparisons or len(comparisons) != len(budgets):
        raise ValueError(f"trend needs one comparison per budget, got {len(comparisons)} "
                         f"comparisons for {len(budgets)} budgets ({', '.join(budgets)})")
    words = [{"ahead": ahead, "behind": behind, "tie": tie}[c.verdict] for c in comparisons]
    zs = [f"{abs(c.z):.1f}" for c in comparisons]
    if len(set(words)) == 1:
        z = [abs(c.z) for c in comparisons]
        steps = [b - a for a, b in zip(z[:-1], z[1:], strict=True)]
        way = ("" if not steps or not (all(d < 0 for d in steps) or all(d > 0 for d in steps))
               else ", shrinking" if steps[0] < 0 else ", growing")
        return f"{words[0]} at every {along}{way} (z {', '.join(zs)})"
    return "; ".join(f"{b}: {w} ({z})" for b, w, z in zip(budgets, words, zs, strict=True))


ANCHOR = re.compile(r"[A-Za-z][\w-]*")


class Verdict(str):
    """A verdict phrase (a str) that knows its row of an Evidence table: gluing it names the
    row (`Evidence.name`), so that the prose's link lands on the row, not the table."""

    def __new__(cls, phrase: str, evidence: Evidence, row: int):
        self = super().__new__(cls, phrase)
        self.evidence, self.row = evidence, row
        return self

    def glued(self, name: str) -> None:
        """Called by `glue(name, verdict)`: the row's anchor is the glue's name."""
        self.evidence.name(self.row, name)

    def __reduce__(self):  # pickled or copied, a verdict is its phrase
        return (str, (str(self),))


class Evidence:
    """A chapter's evidence table: each inline verdict is a short phrase, and its row here
    holds what backs it (the difference, its standard error, z, the test, the degrees of
    freedom and the trend along the budget). One call makes both, so they cannot disagree.

        ev = Evidence("ch18-evidence")        # the MyST label above the table's cell
        glue("ch18_fd_words", ev.verdict("FD, VDM - L_simple", c, fmt=".1f",
                                         ahead="higher", behind="lower"), display=False)
        ev.table()                            # in the cell under (ch18-evidence)=

    and the prose links the phrase to its own row, whose anchor is the glue's name:
    [{glue:text}`ch18_fd_words`](#ch18_fd_words). `verdict` returns a `Verdict` (a str
    that knows its row); `companion.run.glue.glue` of one names the row, and the table
    writes an anchor per name (`<a id="ch18_fd_words" name=...></a>`, which the book's Sphinx
    extension book/_ext/evidence_anchors.py makes a link target). A phrase glued before
    any name is the table's to link to (#ch18-evidence).
    """

    def __init__(self, label: str):
        if not isinstance(label, str) or not label.strip() or any(c.isspace() for c in label):
            raise ValueError(f"an evidence table needs its MyST label, one word such as "
                             f"'ch18-evidence', got {label!r}")
        self.label = label
        self.rows: list[tuple[str, Comparison, str, str, str]] = []
        self.anchors: list[list[str]] = []  # per row: the glue names of its phrase

    def verdict(self, claim: str, c: Comparison, *, fmt: str = ".3g", ahead: str = "ahead",
                behind: str = "behind", tie: str = "within noise", trend: str = "",
                name: str | None = None) -> Verdict:
        """Record c as the row for `claim`; return its phrase for the prose.

        claim: what is compared, as the table's first column says it ("FD, VDM - L_simple");
        fmt: the format of the difference and its SE; ahead/behind/tie: the phrase for each
        verdict (at most SHORT characters: a longer one belongs in the table); trend: the
        budget trend in words (`trend(...)`), if the comparison has one; name: the glue
        name the prose links to the row by, where the phrase is glued inside a longer text
        (gluing the returned `Verdict` itself names the row without it).
        """
        if not isinstance(c, Comparison):
            raise TypeError(f"verdict needs a Comparison (from paired, welch, "
                            f"paired_jackknife, ...), got {type(c).__name__}")
        if not claim or not isinstance(claim, str):
            raise ValueError(f"verdict needs the claim as its row says it, got {claim!r}")
        for word in (ahead, behind, tie):
            if len(word) > SHORT:
                raise ValueError(f"a verdict inside a sentence is at most {SHORT} characters,"
                                 f" got {len(word)}: {word[:70]!r}...; put the detail in "
                                 "the evidence table (claim, trend)")
        format(0.0, fmt)  # a bad spec fails here, with format's own message
        phrase = {"ahead": ahead, "behind": behind, "tie": tie}[c.verdict]
        self.rows.append((claim, c, fmt, phrase, trend))
        self.anchors.append([])
        if name is not None:
            self.name(len(self.rows) - 1, name)
        return Verdict(phrase, self, len(self.rows) - 1)

    def name(self, row: int, anchor: str) -> None:
        """Give row `row` the anchor `anchor` (a glue name: letters, digits, _ and -), the
        target of the prose's link to it. `glue` calls this for a `Verdict`."""
        if not isinstance(anchor, str) or not ANCHOR.fullmatch(anchor):
            raise ValueError(f"an evidence row's anchor is a glue name (letters, digits, _ "
                             f"and -, starting with a letter), got {anchor!r}")
        if anchor not in self.anchors[row]:
            self.anchors[row].append(anchor)

    def markdown(self) -> str:
        """The table as Markdown: one row per verdict, in the order they were made."""
        from .run.tables import markdown

        def size(c, fmt):
            return f"{c.diff:+{fmt}} ± {c.se:{fmt}}"

        def marks(names):
            return "".join(f'<a id="{n}" name="{n}"></a>' for n in names)  # Colab reads name

        def z_text(z, needs):  # as many digits as keep z on its side of the threshold
            for d in (1, 2, 3, 4):
                if (round(z, d) >= needs) == (z >= needs):
                    return f"{z:.{d}f}"
            return f"{math.floor(z * 1e4) / 1e4:.4f}"  # a hair under: cut, not rounded up

        rows = [[marks(names) + claim, size(c, fmt),
                 f"{z_text(abs(c.z), c.threshold)} {c.scale}, needs {c.threshold:.2f}", c.how,
                 f"{c.n:,} {c.unit}s", phrase, trend or "one budget"]
                for (claim, c, fmt, phrase, trend), names in zip(self.rows, self.anchors,
                                                                 strict=True)]
        return markdown(["claim", "difference ± SE", "|z| (a verdict needs)", "test",
                         "over", "verdict", "along the budget"], rows, align="lrrllll")

    def table(self):
        """`markdown()` as an IPython Markdown object: end the table's cell with it."""
        from IPython.display import Markdown

        if not self.rows:
            raise ValueError(f"the evidence table {self.label!r} has no rows: call verdict "
                             "first")
        return Markdown(self.markdown())
