"""Chapter 20's measures of sample sets (companion.metrics): precision and recall, density
and coverage, the unbiased MMD^2 and KID, the Fréchet distance's two terms and its value
extrapolated to infinitely many samples. Each on cases with a known answer; tiny sets."""

import pytest
import torch

from companion import metrics
from companion.metrics import (
    density_coverage,
    frechet_distance,
    frechet_gaussian,
    frechet_infinity,
    frechet_line,
    frechet_terms,
    kid,
    mmd2_left_out,
    mmd2_unbiased,
    precision_recall,
    real_balls,
)
from companion.run import checks

pytestmark = pytest.mark.usefixtures("float64_one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clusters(n_each: int, which, g: torch.Generator, d: int = 8) -> torch.Tensor:
    """n_each points from each of the unit Gaussians centred at 10 e_c, c in `which`: four
    clusters about 14 apart, each about 4 across."""
    centres = 10.0 * torch.eye(d)[:4]
    return torch.cat([centres[c] + torch.randn(n_each, d, generator=g) for c in which])


def cubic(x, y):
    return (x @ y.T / x.shape[1] + 1).pow(3)


# --- identical sets and disjoint supports ---------------------------------------------------
def test_a_copy_of_the_real_set_is_precise_covering_and_dense_by_one_over_k():
    """Every copy lies in its own ball (distance 0): precision, recall and coverage are 1,
    and each real ball holds its centre and its k nearest neighbours, k + 1 points, so the
    density is (k + 1) / k, not 1 (no distances tie in continuous data)."""
    real = torch.randn(200, 6, generator=gen(0))
    pr = precision_recall(real, real.clone(), k=3)
    assert (pr.precision, pr.recall, pr.k) == (1.0, 1.0, 3)
    for k in (1, 5):
        dc = density_coverage(real, real.clone(), k=k)
        assert dc.coverage == 1.0
        assert dc.density == pytest.approx((k + 1) / k, rel=1e-12)


def test_a_copy_has_zero_frechet_terms_and_a_negative_unbiased_mmd():
    """Fréchet: both terms 0 up to rounding. MMD^2_u of a set with itself is exactly
    -(2/N)(mean_i k(x_i, x_i) - mean_{i != j} k(x_i, x_j)): below 0, of order 1/N."""
    x = torch.randn(150, 5, generator=gen(1)) + 2.0
    t = frechet_terms(x, x.clone())
    assert t.mean == 0.0 and t.covariance == pytest.approx(0.0, abs=1e-10)
    kern = cubic(x, x)
    n = len(x)
    diag, off = kern.diagonal().mean(), (kern.sum() - kern.diagonal().sum()) / (n * (n - 1))
    expected = (-2 / n * (diag - off)).item()
    assert expected < 0
    assert mmd2_unbiased(x, x.clone()) == pytest.approx(expected, rel=1e-9)


def test_disjoint_supports_score_zero():
    real = torch.randn(120, 4, generator=gen(2))
    fake = torch.randn(90, 4, generator=gen(3)) + 100.0
    pr, dc = precision_recall(real, fake), density_coverage(real, fake)
    assert (pr.precision, pr.recall, dc.density, dc.coverage) == (0.0, 0.0, 0.0, 0.0)


def test_a_point_on_a_balls_edge_is_inside():
    """The balls are closed (Kynkäänniemi et al.): on a line, real points 0, 1, 3 with
    k = 1 have radii 1, 1, 2; fakes at 2 (edge of 1's ball), 5 (edge of 3's) and 5.5."""
    real = torch.tensor([[0.0], [1.0], [3.0]])
    fake = torch.tensor([[2.0], [5.0], [5.5]])
    assert precision_recall(real, fake, k=1).precision == pytest.approx(2 / 3)
    # fake 2 lies in two balls (1's and 3's), fake 5 in one (3's): density 3 / (1 * 3);
    # real 1 and 3 hold a fake, 0 does not (open balls would give 1/3, 1/3 and 2/3)
    dc = density_coverage(real, fake, k=1)
    assert dc.density == 1.0 and dc.coverage == pytest.approx(2 / 3)
    # fake radii (k = 1): 3, 0.5, 0.5; real 0 lies 2 from fake 2: inside, and so are 1, 3
    assert precision_recall(real, fake, k=1).recall == 1.0
    # per sample: fake 2 in two balls, fake 5 in one, fake 5.5 in none
    assert real_balls(real, fake, k=1).tolist() == [2, 1, 0]


def test_real_balls_are_the_per_sample_terms_of_precision_and_density():
    """Their means give precision (k = 3) and density (k = 5) exactly; a sample far from
    every real point is in no ball, and changing one sample changes only its own count."""
    real = torch.randn(150, 5, generator=gen(30))
    fake = torch.randn(80, 5, generator=gen(31)) * 1.3
    c3, c5 = real_balls(real, fake, 3), real_balls(real, fake, 5)
    assert (c3 > 0).double().mean().item() == precision_recall(real, fake).precision
    assert c5.sum().item() / (5 * len(fake)) == pytest.approx(
        density_coverage(real, fake).density, rel=1e-15)
    moved = fake.clone()
    moved[7] += 100.0
    after = real_balls(real, moved, 3)
    assert after[7] == 0
    assert torch.equal(torch.cat([after[:7], after[8:]]), torch.cat([c3[:7], c3[8:]]))


# --- a dropped mode ---------------------------------------------------------------------------
def test_a_dropped_mode_costs_a_quarter_of_recall_and_coverage_not_precision():
    """Real points from 4 well-separated clusters; samples from all 4 (the control) or from
    3 of them, as many points. The quarter of real points in the missing cluster is reached
    by no sample: recall and coverage fall to about 3/4 of the control's (and at most 3/4),
    while precision stays where the control's is (each sample still lies among real points;
    in 8-D with 100 points a cluster about 0.85, not 1)."""
    g = gen(4)
    real = clusters(100, range(4), g)
    full, dropped = clusters(99, range(4), g), clusters(132, range(3), g)
    pr_full, pr_drop = precision_recall(real, full), precision_recall(real, dropped)
    dc_full, dc_drop = density_coverage(real, full), density_coverage(real, dropped)
    assert pr_drop.recall <= 0.75 and dc_drop.coverage <= 0.75
    assert pr_drop.recall / pr_full.recall == pytest.approx(0.75, abs=0.06)
    assert dc_drop.coverage / dc_full.coverage == pytest.approx(0.75, abs=0.04)
    assert abs(pr_drop.precision - pr_full.precision) < 0.06
    assert abs(dc_drop.density - dc_full.density) < 0.15


def test_density_is_one_on_average_for_samples_of_the_real_distribution():
    """A new point is among a real point's k nearest with probability k / N, so the expected
    density is exactly 1 (here N = 300 real, M = 200 samples: dividing by k N instead of
    k M would give 2/3; a radius to the (k-1)-th neighbour, (k - 1) / k)."""
    g = gen(5)
    values = torch.tensor([density_coverage(torch.randn(300, 6, generator=g),
                                            torch.randn(200, 6, generator=g)).density
                           for _ in range(12)])
    se = values.std() / len(values) ** 0.5
    assert abs(values.mean().item() - 1.0) < max(3 * se.item(), 0.03)


def test_blocks_of_distances_give_the_unblocked_answers(monkeypatch):
    """DISTANCE_BLOCK bounds memory only: blocks of a few rows give the same numbers."""
    g = gen(6)
    real, fake = torch.randn(70, 5, generator=g), torch.randn(50, 5, generator=g) + 0.5
    whole = (precision_recall(real, fake), density_coverage(real, fake),
             mmd2_unbiased(real, fake))
    monkeypatch.setattr(metrics, "DISTANCE_BLOCK", 130)  # 1 or 2 rows a block
    blocked = (precision_recall(real, fake), density_coverage(real, fake),
               mmd2_unbiased(real, fake))
    assert blocked[:2] == whole[:2]
    assert blocked[2] == pytest.approx(whole[2], rel=1e-12)


# --- MMD and KID ------------------------------------------------------------------------------
def test_mmd2_unbiased_is_the_formula_and_unbiased_where_the_v_statistic_is_not():
    """50 redraws of two sets of 40 from one Gaussian: the mean of MMD^2_u lies within 3
    standard errors of 0; the V-statistic (diagonals kept) of the same sets lies far above
    0, so the test tells the two apart."""
    g = gen(7)
    n, d = 40, 8
    u, v = [], []
    for _ in range(50):
        x, y = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
        kxx, kyy, kxy = cubic(x, x), cubic(y, y), cubic(x, y)
        direct = ((kxx.sum() - kxx.trace()) / (n * (n - 1)) + (kyy.sum() - kyy.trace())
                  / (n * (n - 1)) - 2 * kxy.mean()).item()
        u.append(mmd2_unbiased(x, y))
        assert u[-1] == pytest.approx(direct, rel=1e-9, abs=1e-12)
        v.append((kxx.mean() + kyy.mean() - 2 * kxy.mean()).item())
    u, v = torch.tensor(u), torch.tensor(v)
    se_u, se_v = u.std() / 50 ** 0.5, v.std() / 50 ** 0.5
    assert abs(u.mean()) < 3 * se_u
    assert v.mean() > 10 * se_v
    # a shifted distribution is told apart
    x, y = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) + 1.0
    assert mmd2_unbiased(x, y) > 10 * u.std()


def test_mmd2_left_out_is_the_statistic_with_each_sample_left_out(monkeypatch):
    """The shortcut against the statistic recomputed without each sample, in blocks small
    enough that the sums span several of them; too few samples is a clear error."""
    monkeypatch.setattr(metrics, "DISTANCE_BLOCK", 50)  # blocks of a few rows
    g = gen(12)
    real, fake = torch.randn(23, 5, generator=g), torch.randn(11, 5, generator=g) + 0.4
    full, loo = mmd2_left_out(real, fake)
    assert full == pytest.approx(mmd2_unbiased(real, fake), rel=1e-12)
    assert loo.shape == (11,) and loo.dtype == torch.float64
    keep = torch.ones(11, dtype=torch.bool)
    for j in range(11):
        keep[j] = False
        assert loo[j].item() == pytest.approx(mmd2_unbiased(real, fake[keep]), rel=1e-10)
        keep[j] = True
    with pytest.raises(checks.ArgumentError, match="at least 3 rows in fake"):
        mmd2_left_out(real, fake[:2])


def test_kid_averages_mmd2_over_subsets_drawn_by_the_generator():
    g = gen(8)
    real, fake = torch.randn(60, 4, generator=g), torch.randn(50, 4, generator=g) + 0.3
    out = kid(real, fake, subsets=5, subset_size=20, generator=gen(9))
    assert out.values.shape == (5,) and out.subset_size == 20
    draw = gen(9)
    for value in out.values:
        i, j = torch.randperm(60, generator=draw)[:20], torch.randperm(50, generator=draw)[:20]
        assert value.item() == pytest.approx(mmd2_unbiased(real[i], fake[j]), rel=1e-12)
    assert out.mean == pytest.approx(out.values.mean().item(), rel=1e-12)
    assert out.se == pytest.approx(out.values.std().item() / 5 ** 0.5, rel=1e-12)
    assert out.std == pytest.approx(out.se * 5 ** 0.5, rel=1e-12)
    assert torch.equal(kid(real, fake, subsets=5, subset_size=20, generator=gen(9)).values,
                       out.values)


def test_kid_is_near_zero_for_one_distribution_and_clearly_positive_for_two():
    g = gen(10)
    a, b = torch.randn(200, 6, generator=g), torch.randn(200, 6, generator=g)
    same = kid(a, b, subsets=20, subset_size=100, generator=gen(11))
    shifted = kid(a, b + 0.5, subsets=20, subset_size=100, generator=gen(11))
    assert abs(same.mean) < 4 * same.se + 0.01
    assert shifted.mean > 10 * shifted.se and shifted.mean > 20 * abs(same.mean)


# --- the Fréchet distance's terms and its value at infinity -----------------------------------
def test_frechet_terms_sum_to_the_distance_and_a_shift_moves_only_the_mean_term():
    g = gen(12)
    a = torch.randn(300, 6, generator=g) @ torch.randn(6, 6, generator=g) + 1.0
    b = torch.randn(250, 6, generator=g) * 1.5
    t = frechet_terms(a, b)
    assert t.total == frechet_distance(a, b) and t.mean > 0 and t.covariance > 0
    shift = torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0, 3.0])
    moved = frechet_terms(a, a + shift)
    assert moved.mean == pytest.approx(14.25, rel=1e-10)
    assert moved.covariance == pytest.approx(0.0, abs=1e-9)
    # b = 2a: |mu - 2 mu|^2 and tr S + 4 tr S - 2 tr(2 S) = tr S
    scaled = frechet_terms(a, 2 * a)
    assert scaled.mean == pytest.approx(a.mean(0).pow(2).sum().item(), rel=1e-10)
    assert scaled.covariance == pytest.approx(torch.cov(a.T).trace().item(), rel=1e-9)


def exact_moments(x: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """x (N, d) moved and recoloured so that its sample mean is mu and its sample
    covariance cov, exactly (up to rounding)."""
    x = x - x.mean(0)
    white = torch.linalg.solve_triangular(torch.linalg.cholesky(torch.cov(x.T)), x.T,
                                          upper=False).T
    return white @ torch.linalg.cholesky(cov).T + mu


def test_frechet_line_standard_errors_are_least_squares_and_cover_the_truth():
    """The line's standard errors are ordinary least squares' (s^2 (X'X)^-1 on the design
    [1, 1/N]), and on points made from a known line plus noise of SD 1 the intercept is
    within 3 of its SEs of the truth in at least 95 of 100 seeded fits (its SE is the
    spread of the intercept over fits, within 20%)."""
    sizes = [50, 100, 200, 400]
    x = torch.tensor(sizes, dtype=torch.float64).reciprocal().repeat_interleave(3)
    design = torch.stack([torch.ones_like(x), x], 1)
    values, ses, hits = [], [], 0
    for seed in range(100):
        y = 10 + 300 * x + torch.randn(len(x), generator=gen(seed), dtype=torch.float64)
        out = frechet_line(sizes, y.view(4, 3))
        resid = y - design @ torch.tensor([out.value, out.slope], dtype=torch.float64)
        cov = resid.pow(2).sum() / (len(y) - 2) * torch.linalg.inv(design.T @ design)
        assert (out.se, out.slope_se) == pytest.approx(cov.diagonal().sqrt().tolist(),
                                                       rel=1e-9)
        values.append(out.value)
        ses.append(out.se)
        hits += abs(out.value - 10) < 3 * out.se
    assert hits >= 95
    spread = torch.tensor(values).std().item()
    assert sum(ses) / len(ses) == pytest.approx(spread, rel=0.2)
    with pytest.raises(checks.ArgumentError, match=r"distances must be \(len\(sizes\), draws\)"):
        frechet_line([10, 20], torch.zeros(3, 2))
    with pytest.raises(checks.ArgumentError, match="finite"):
        frechet_line([10, 20], torch.tensor([1.0, float("nan")]))


def test_frechet_infinity_is_nearer_the_truth_than_the_largest_subset():
    """Real features with exactly the moments of N(0, S) (no reference bias), samples from
    N(0, 1.21 S): the true distance is frechet_gaussian's, tr(S) / 100. The distance of 400
    samples (d = 16) is biased up by about its own size; the line through 5 sizes in 1/N
    lands within half that error of the truth (10 of 10 seeds tried did), and the points
    are the fit's."""
    g = gen(13)
    d = 16
    root = torch.randn(d, d, generator=g)
    cov = root @ root.T / d + 0.5 * torch.eye(d)
    real = exact_moments(torch.randn(1000, d, generator=g), torch.zeros(d), cov)
    fake = 1.1 * torch.randn(4000, d, generator=g) @ torch.linalg.cholesky(cov).T
    truth = frechet_gaussian(torch.zeros(d), cov, torch.zeros(d), 1.21 * cov)
    assert truth == pytest.approx(cov.trace().item() / 100, rel=1e-9)
    sizes = [100, 150, 200, 300, 400]
    out = frechet_infinity(real, fake, sizes, draws=5, generator=gen(14))
    assert out.sizes == tuple(sizes) and out.distances.shape == (5, 5)
    largest = out.distances[-1].mean().item()
    assert out.slope > 0 and largest - truth > 0.1
    assert abs(out.value - truth) < 0.5 * abs(largest - truth)
    # the value and the slope are the least-squares line through every draw
    x = torch.tensor(sizes, dtype=torch.float64).reciprocal().repeat_interleave(5)
    design = torch.stack([torch.ones_like(x), x], 1)
    fit = torch.linalg.lstsq(design, out.distances.flatten()[:, None]).solution.flatten()
    assert (out.value, out.slope) == pytest.approx(fit.tolist(), rel=1e-9)
    # each point is frechet_distance of a subset drawn without replacement
    draw = gen(14)
    first = fake[torch.randperm(4000, generator=draw)[:100]]
    assert out.distances[0, 0].item() == frechet_distance(first, real)


# --- bad input ----------------------------------------------------------------------------------
R, F = torch.randn(20, 3), torch.randn(15, 3)


def _nan(x: torch.Tensor, row: int = 2) -> torch.Tensor:
    x = x.clone()
    x[row, 1] = float("nan")
    return x


BAD = {
    "widths differ (precision_recall)": (lambda: precision_recall(R, torch.randn(15, 4)),
                                         r"real and fake must have the same width d"),
    "widths differ (kid)": (lambda: kid(R, torch.randn(15, 4), subset_size=10),
                            r"real and fake must have the same width d"),
    "widths differ (mmd2)": (lambda: mmd2_unbiased(R, torch.randn(15, 4)),
                             r"real and fake must have the same width d"),
    "widths differ (frechet_terms)": (lambda: frechet_terms(R, torch.randn(15, 4)),
                                      r"same d"),
    "widths differ (frechet_infinity)": (
        lambda: frechet_infinity(R, torch.randn(15, 4), [5, 10]), r"same d.*real and fake"),
    "k = 0": (lambda: precision_recall(R, F, k=0), r"^k must be a whole number >= 1"),
    "k a float": (lambda: density_coverage(R, F, k=2.0), r"^k must be a whole number"),
    "k = rows of fake": (lambda: precision_recall(R, F, k=15),
                         r"k must be less than the rows of fake .*k \+ 1 points"),
    "k above rows of real": (lambda: density_coverage(R, F, k=20),
                             r"k must be less than the rows of real"),
    "k above rows of real (real_balls)": (lambda: real_balls(R, F, k=20),
                                          r"k must be less than the rows of real"),
    "widths differ (real_balls)": (lambda: real_balls(R, F[:, :2], k=3),
                                   r"real and fake must have the same width d"),
    "NaN in real": (lambda: precision_recall(_nan(R), F),
                    r"^real holds 1 NaN/inf values in rows \[2\]; precision_recall"),
    "NaN in fake": (lambda: density_coverage(R, _nan(F, 4)),
                    r"^fake holds 1 NaN/inf values in rows \[4\]"),
    "inf in fake (kid)": (lambda: kid(R, _nan(F) * float("inf"), subset_size=10),
                          r"^fake holds .* NaN/inf"),
    "NaN in fake (mmd2)": (lambda: mmd2_unbiased(R, _nan(F)), r"^fake holds"),
    "NaN in b (frechet_terms)": (lambda: frechet_terms(R, _nan(F)), r"^b holds 1 NaN/inf"),
    "NaN in fake (frechet_infinity)": (lambda: frechet_infinity(R, _nan(F), [5, 10]),
                                       r"^fake holds 1 NaN/inf"),
    "real 3-D": (lambda: precision_recall(R[:, :, None], F),
                 r"^real must be points \(N, d\).*flatten"),
    "fake 1-D": (lambda: density_coverage(R, F[:, 0]),
                 r"^fake must be points \(N, d\).*one point is fake.reshape"),
    "real 1-D (kid)": (lambda: kid(R[:, 0], F), r"^real must be points"),
    "real a list": (lambda: precision_recall(R.tolist(), F), r"^real must be a torch tensor"),
    "fake 3-D (frechet_infinity)": (lambda: frechet_infinity(R, F[:, :, None], [5, 10]),
                                    r"feature matrices \(N, d\)"),
    "subset_size above a set": (lambda: kid(R, F, subset_size=16),
                                r"^subset_size must be at most the rows of each set.*"
                                r"subset_size=15"),
    "subset_size 1": (lambda: kid(R, F, subset_size=1), r"^subset_size must be"),
    "one subset": (lambda: kid(R, F, subsets=1, subset_size=10), r"^subsets must be"),
    "generator not a Generator": (lambda: kid(R, F, subset_size=10, generator=3),
                                  r"^generator must be a torch.Generator"),
    "one size": (lambda: frechet_infinity(R, F, [10]), r"^sizes must hold at least 2"),
    "one size twice": (lambda: frechet_infinity(R, F, [10, 10]),
                       r"^sizes must hold at least 2 different"),
    "a size not a sequence": (lambda: frechet_infinity(R, F, 10), r"^sizes must be a seq"),
    "a size above the samples": (lambda: frechet_infinity(R, F, [5, 16]),
                                 r"^every one of sizes must be a whole number in 2\.\.15"),
    "draws 0": (lambda: frechet_infinity(R, F, [5, 10], draws=0), r"^draws must be"),
    "too many points": (lambda: precision_recall(torch.zeros(1, 3).expand(20_001, 3), F),
                        r"^the rows of real must be at most 20,000, got 20,001: .*subset"),
    "too many points (mmd2)": (lambda: mmd2_unbiased(R, torch.zeros(1, 3).expand(20_001, 3)),
                               r"^the rows of fake must be at most 20,000"),
    "one row (mmd2)": (lambda: mmd2_unbiased(R, F[:1]), r"needs at least 2 rows in fake"),
    "on two devices": (lambda: precision_recall(R, F.to("meta")), r"real is on cpu and fake"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_refused_naming_the_argument(name):
    call, match = BAD[name]
    with pytest.raises(ValueError, match=match):
        call()


def test_the_refusals_are_argument_errors_where_the_checks_raise_them():
    for name in ("widths differ (kid)", "k = 0", "subset_size above a set", "one size",
                 "too many points", "real 3-D"):
        with pytest.raises(checks.ArgumentError):
            BAD[name][0]()
