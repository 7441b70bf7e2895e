"""Tests of companion.compare: paired comparisons and their verdict words."""

import math

import numpy as np
import pytest
import torch

from companion.compare import (
    CLOSE,
    Comparison,
    against_noise,
    compare,
    independent,
    is_close,
    paired,
    settled,
    t_quantile,
    welch,
    welch_df,
)


def test_mean_and_standard_error_by_hand():
    a = [1.0, 2.0, 3.0, 4.0]
    b = [0.0, 2.0, 1.0, 1.0]        # d = 1, 0, 2, 3: mean 1.5, sd sqrt(5/3)
    c = paired(a, b, unit="digit")
    assert c.diff == pytest.approx(1.5)
    assert c.se == pytest.approx(math.sqrt(5 / 3) / 2)
    assert c.n == 4 and c.unit == "digit"
    assert c.z == pytest.approx(1.5 / (math.sqrt(5 / 3) / 2))


def test_words_follow_the_t_quantile():
    assert compare(0.10, 0.04, 100).words(".2f") == "ahead by 0.10 (2.5 SE; paired t, 99 df)"
    assert compare(-0.10, 0.04, 100).words(".2f") == "behind by 0.10 (2.5 SE; paired t, 99 df)"
    assert (compare(0.05, 0.04, 100).words(".2f")
            == "within noise (+0.05, 1.2 SE; paired t, 99 df)")
    # the quantile itself counts as resolved, just below it does not
    q = t_quantile(8)
    assert compare(q * 0.01, 0.01, 9).verdict == "ahead"
    assert compare(q * 0.01 - 1e-9, 0.01, 9).verdict == "tie"
    low = compare(-1.0, 0.1, 5).words(".1f", ahead="higher by", behind="lower by")
    assert low == "lower by 1.0 (10.0 SE; paired t, 4 df)"
    assert compare(0.05, 0.04, 100, level=0.6).resolved


def test_few_paired_units_need_the_t_quantile():
    """z = 2.5 is within noise over 3 paired units (t_2 = 4.30), resolved over 30."""
    assert compare(2.5, 1.0, 3).verdict == "tie"
    assert compare(2.5, 1.0, 30).verdict == "ahead"
    rng = np.random.default_rng(0)
    for n, resolved in ((3, False), (30, True)):
        d = rng.normal(size=n)
        d = d - d.mean()
        d = d + 2.5 * d.std(ddof=1) / np.sqrt(n)       # mean exactly 2.5 SE
        c = paired(d, np.zeros(n))
        assert c.z == pytest.approx(2.5) and c.df == n - 1
        assert c.resolved is resolved, c
    assert t_quantile(3) == pytest.approx(3.182, abs=1e-3)
    assert t_quantile(2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile(math.inf) == pytest.approx(1.960, abs=1e-3)


def test_welch_for_independent_arms():
    """Welch's SE and df by hand; the words name the test and the df."""
    a, b = np.array([10.0, 12.0, 17.0]), np.array([4.0, 5.0, 9.0])
    c = welch(a, b, unit="training seed")
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    assert c.diff == pytest.approx(a.mean() - b.mean())
    assert c.se == pytest.approx(math.sqrt(va + vb))
    assert c.df == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 2))
    assert c.df == pytest.approx(welch_df(a.var(ddof=1), 3, b.var(ddof=1), 3))
    assert 2 < c.df < 4 and "Welch t, 3.7 df" in c.words()
    # z = 2.7 would pass a fixed 2-SE rule; with df near 3 it is within noise
    assert 2 < c.z < 3 and c.verdict == "tie" and 0.05 < c.p < 0.2


def test_against_noise_is_a_prediction_interval():
    r = [1.0, 2.0, 3.0, 4.0]
    sd = np.std(r, ddof=1)
    c = against_noise(2.5 + 2 * sd, r)
    assert c.se == pytest.approx(sd * math.sqrt(1 + 1 / 4)) and c.df == 3
    assert c.verdict == "tie" and "noise SD; t, 3 df" in c.words()
    assert against_noise(2.5 + 10 * sd, r).verdict == "ahead"


def test_paired_beats_unpaired_noise():
    """A shared per-unit offset cancels in the paired difference."""
    g = torch.Generator().manual_seed(0)
    offset = torch.randn(500, generator=g) * 10
    a = offset + 0.2 + 0.05 * torch.randn(500, generator=g)
    b = offset + 0.05 * torch.randn(500, generator=g)
    c = paired(a, b)
    assert c.verdict == "ahead" and abs(c.diff - 0.2) < 5 * c.se


def test_repeats_within_a_unit_are_averaged_not_counted():
    """Two masks of the same digits: the SE is over the digits, not over 2n pairs."""
    rng = np.random.default_rng(1)
    d = rng.normal(0.1, 1.0, size=(200, 1))
    a = np.hstack([d, d])                      # the same difference twice per digit
    b = np.zeros_like(a)
    two = paired(a, b)
    one = paired(d[:, 0], b[:, 0])
    assert two.n == 200
    assert two.se == pytest.approx(one.se)
    flat = paired(a.ravel(), b.ravel())        # the mistake: 400 "independent" pairs
    assert flat.se < 0.75 * two.se


def test_standard_error_is_calibrated():
    """Over many redraws, the spread of the mean difference matches the SE."""
    rng = np.random.default_rng(2)
    means, ses = [], []
    for _ in range(400):
        a, b = rng.normal(0.3, 1.0, 40), rng.normal(0.0, 0.5, 40)
        c = paired(a, b)
        means.append(c.diff)
        ses.append(c.se)
    assert np.std(means) == pytest.approx(np.mean(ses), rel=0.1)


def test_zero_standard_error():
    assert paired([1.0, 1.0], [0.0, 0.0]).verdict == "ahead"
    assert (paired([1.0, 1.0], [1.0, 1.0]).words()
            == "within noise (+0.000, 0.0 SE; paired t, 1 df)")


@pytest.mark.parametrize("a, b, match", [
    ([1.0, 2.0], [1.0, 2.0, 3.0], "same shape"),
    ([1.0], [0.0], "at least 2 units"),
    ([1.0, float("nan")], [0.0, 0.0], "NaN or infinite"),
    (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), r"shape \(n,\)"),
    (["a", "b"], [0.0, 0.0], "must be numbers"),
])
def test_bad_input_says_what_to_fix(a, b, match):
    with pytest.raises((ValueError, TypeError), match=match):
        paired(a, b)


def test_bad_summary_statistics():
    with pytest.raises(ValueError, match="se finite and >= 0"):
        compare(0.1, -0.1, 10)
    with pytest.raises(ValueError, match="level must lie in"):
        compare(0.1, 0.1, 10, level=2)
    with pytest.raises(ValueError, match="n >= 2"):
        compare(0.1, 0.1, 1)
    with pytest.raises(ValueError, match="at least 2 units"):
        welch([1.0], [1.0, 2.0])


# --- the evidence table: the inline phrase and its row come from one call ------------------

def _pair(shift, n=40, seed=0):
    g = np.random.default_rng(seed)
    a = g.normal(size=n)
    return a + shift, a + 0.5 * g.normal(size=n)


def test_evidence_phrase_and_row_agree():
    from companion.compare import Evidence

    ev = Evidence("ch99-evidence")
    far, near = paired(*_pair(-2.0), unit="digit"), paired(*_pair(0.0), unit="digit")
    assert far.verdict == "behind" and near.verdict == "tie"
    said = [ev.verdict("FD, A - B", far, fmt=".2f", ahead="higher", behind="lower"),
            ev.verdict("FD, A - C", near, fmt=".2f", ahead="higher", behind="lower")]
    assert said == ["lower", "within noise"]
    lines = ev.markdown().splitlines()[2:]
    assert len(lines) == 2
    for line, c, phrase in zip(lines, (far, near), said, strict=True):
        cells = [x.strip() for x in line.strip("|").split("|")]
        assert cells[1] == f"{c.diff:+.2f} ± {c.se:.2f}"
        assert cells[2] == f"{abs(c.z):.1f} SE, needs 2.02"  # t quantile, 39 df
        assert cells[3] == "paired t, 39 df"
        assert cells[4] == "40 digits" and cells[5] == phrase


def test_evidence_row_keeps_z_on_its_side_of_the_threshold():
    """A z that one decimal would round onto the threshold prints the digits that show
    which side it is on: "2.0, needs 1.96" beside "within noise" would contradict itself."""
    from companion.compare import Comparison, Evidence

    ev = Evidence("ch99-evidence")
    rows = {1.955: "1.955", 1.9: "1.9", 2.5: "2.5", 1.96: "2.0",  # needs 1.95996
            1.95995: "1.9599"}  # every rounding to 4 digits lands on the threshold
    for z in rows:
        ev.verdict(f"z {z}", Comparison(diff=z, se=1.0, n=10), fmt=".2f",
                   ahead="higher", behind="lower")
    cells = [line.strip("|").split("|")[2].strip()
             for line in ev.markdown().splitlines()[2:]]
    assert cells == [f"{text} SE, needs 1.96" for text in rows.values()]


def test_evidence_refuses_a_long_phrase_and_a_bad_label():
    from companion.compare import Evidence

    ev = Evidence("ch99-evidence")
    c = paired(*_pair(1.0))
    with pytest.raises(ValueError, match="at most 60 characters"):
        ev.verdict("x", c, ahead="ahead by 1.00 (12.3 SE; paired t, 39 df) at every budget"
                                 " of the three we ran")
    with pytest.raises(TypeError, match="needs a Comparison"):
        ev.verdict("x", 0.5)
    with pytest.raises(ValueError, match="MyST label"):
        Evidence("ch99 evidence")
    with pytest.raises(ValueError, match="no rows"):
        ev.table()
    assert ev.rows == []  # a refused verdict leaves no row behind


def test_trend_words_follow_each_budget():
    from companion.compare import trend

    shrinking = [compare(-1.0, se, 255) for se in (1 / 7.2, 1 / 4.0, 1 / 2.1)]
    assert trend(shrinking, ["1/4", "1/2", "all"], behind="lower") == (
        "lower at every budget, shrinking (z 7.2, 4.0, 2.1)")
    assert trend(shrinking[::-1], ["1/4", "1/2", "all"], behind="lower") == (
        "lower at every budget, growing (z 2.1, 4.0, 7.2)")
    up_down = [compare(-1.0, se, 255) for se in (1 / 3.0, 1 / 5.0, 1 / 4.0)]
    assert trend(up_down, ["1/4", "1/2", "all"], behind="lower") == (
        "lower at every budget (z 3.0, 5.0, 4.0)")
    assert trend(shrinking, [5, 10, 20], behind="lower",
                 along="number of evaluations") == (
        "lower at every number of evaluations, shrinking (z 7.2, 4.0, 2.1)")
    mixed = [compare(-1.0, 1.0, 255), compare(-1.0, 1 / 2.6, 255)]
    assert trend(mixed, ["1/2", "all"], behind="lower") == (
        "1/2: within noise (1.0); all: lower (2.6)")
    with pytest.raises(ValueError, match="one comparison per budget"):
        trend(mixed, ["all"])


def test_independent_combines_two_standard_errors_with_welchs_df():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 2.0, 40), rng.normal(0.0, 1.0, 90)
    se_a, se_b = a.std(ddof=1) / math.sqrt(40), b.std(ddof=1) / math.sqrt(90)
    c, w = independent(a.mean(), se_a, 40, b.mean(), se_b, 90), welch(a, b)
    # from the two SEs alone it is Welch's test on the values
    assert c.diff == pytest.approx(w.diff) and c.se == pytest.approx(w.se)
    assert c.df == pytest.approx(w.df) and c.n == 130
    assert independent(5.0, 1.0, 10, 5.0, 1.0, 10).verdict == "tie"
    assert independent(9.0, 1.0, 10, 1.0, 1.0, 10, test="jackknife").how.startswith(
        "jackknife")
    with pytest.raises(ValueError, match="se_a"):
        independent(1.0, -1.0, 10, 0.0, 1.0, 10)


# --- issue 96, case 8 ---------------------------------------------------------------------
@pytest.mark.parametrize("a, b, who", [
    (np.array([1 + 1j, 2, 3]), np.array([1.0, 2, 3]), "a"),
    (torch.tensor([1.0, 2, 3]), torch.tensor([1, 2, 3 + 5j]), "b"),
    ([1.0, 2.0, 3.0], [1j, 2, 3], "b"),
])
def test_paired_refuses_complex_values(a, b, who):
    """The cast to float dropped the imaginary parts: "within noise" of the real parts."""
    with pytest.raises(TypeError, match=rf"^{who} must be real numbers, one per unit, got "
                                        r"complex values: compare their \.real or abs\(\)"):
        paired(a, b)
    with pytest.raises(TypeError, match=rf"^{who} must be real numbers"):
        welch(a, b)


def test_independent_takes_tiny_and_huge_standard_errors():
    """se_a = 1e-200 squared to 0, and the error blamed var_a and var_b, which the caller
    never passed; se_a = 1e200 ended in a bare OverflowError."""
    for se in (1e-200, 1e200, 1e-70, 1e80):
        c = independent(1.0, se, 10, 0.5, 0.0, 10)
        assert c.se == se and c.df == pytest.approx(9)  # arm a's SE alone: n_a - 1
    c = independent(1.0, 3e-150, 10, 0.5, 4e-150, 20)
    assert c.df == pytest.approx(welch_df(9 * 10, 10, 16 * 20, 20))  # scale-free
    with pytest.raises(ValueError, match=r"^se_a and se_b are both 0: the difference has "
                                         r"no standard error"):
        independent(1.0, 0.0, 10, 0.5, 0.0, 10)
    with pytest.raises(ValueError, match=r"^n_b \(the units of arm b; a variance needs 2\)"):
        independent(1.0, 1e-200, 10, 0.5, 0.0, 1)


def test_a_close_distance_verdict_stands_only_where_the_second_measure_agrees():
    """Chapter 20's protocol, used by chapters 18 and 20: |z| under CLOSE is judged again."""
    def c(z):
        return Comparison(diff=z, se=1.0, n=100)
    lower, higher, level = c(-2.2), c(2.2), c(0.3)
    assert lower.verdict == "behind" and is_close(lower) and not is_close(c(CLOSE))
    assert settled(lower, c(-3.0)) == "behind"        # the second agrees
    assert settled(lower, level) == "tie"             # it does not: no ranking
    assert settled(lower, higher) == "tie"
    assert settled(c(-4.0), level) == "behind"        # not close: the first stands
    assert settled(level, c(5.0)) == "tie"            # a tie is never made a ranking
    assert settled(c(-3.0), level, close=3.5) == "tie"
    with pytest.raises(ValueError, match="close"):
        is_close(lower, close=0)
