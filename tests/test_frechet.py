"""Fréchet distance, label histogram and mean top-class probability (companion.metrics)."""

import pytest
import torch

from companion.compare import paired_bootstrap
from companion.metrics import (
    frechet_bootstrap,
    frechet_distance,
    frechet_gaussian,
    label_histogram,
    mean_top_probability,
)


def test_commuting_covariances_closed_form():
    # diagonal covariances: the distance is |dmu|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    mu_a, mu_b = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    d2 = frechet_gaussian(mu_a, torch.diag(a), mu_b, torch.diag(b))
    assert d2 == pytest.approx(5.0 + (1 - 3) ** 2 + (2 - 1) ** 2, rel=1e-12)


def test_non_commuting_2x2_closed_form():
    # for 2x2 PSD matrices tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)), M ~ S_a S_b
    sa = torch.tensor([[2.0, 0.7], [0.7, 1.0]], dtype=torch.float64)
    sb = torch.tensor([[0.5, -0.3], [-0.3, 3.0]], dtype=torch.float64)
    cross = torch.sqrt((sa @ sb).trace() + 2 * torch.sqrt(sa.det() * sb.det()))
    expected = (sa.trace() + sb.trace() - 2 * cross).item()
    assert frechet_gaussian(torch.zeros(2), sa, torch.zeros(2), sb) == \
        pytest.approx(expected, rel=1e-10)


def test_from_features_mean_shift_and_scaling():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 6, generator=g) @ torch.randn(6, 6, generator=g) + 3.0
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0, 0.0])
    assert frechet_distance(a, a + shift) == pytest.approx(5.25, rel=1e-8)
    # b = 2a: |mu|^2 + tr S + 4 tr S - 2 tr(2 S) = |mu|^2 + tr S  (sample statistics)
    a64 = a.double()
    expected = a64.mean(0).pow(2).sum() + torch.cov(a64.T).trace()
    assert frechet_distance(a, 2 * a) == pytest.approx(expected.item(), rel=1e-8)


def test_frechet_errors():
    with pytest.raises(ValueError, match="same d"):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


def test_label_histogram_and_top_probability():
    probs = torch.tensor([[0.9, 0.1] + [0.0] * 8,
                          [0.2, 0.7] + [0.1] + [0.0] * 7,
                          [0.1] * 10])
    hist = label_histogram(probs)
    assert hist.tolist() == [2, 1] + [0] * 8  # ties go to the first class
    assert mean_top_probability(probs) == pytest.approx((0.9 + 0.7 + 0.1) / 3)
    with pytest.raises(ValueError, match="class probabilities"):
        label_histogram(torch.zeros(3, 4))


def test_frechet_floor_draws_real_images_and_checks_n():
    from companion.metrics import frechet_floor

    torch.manual_seed(0)
    real = torch.randn(40, 3)
    reference = torch.randn(200, 3)
    d = frechet_floor(lambda x: x, real, reference, 10, repeats=4, seed=1)
    assert d.shape == (4,) and d.dtype == torch.float64
    # each entry is the distance of one draw, the draws of a generator seeded alike
    g = torch.Generator().manual_seed(1)
    first = real[torch.randperm(40, generator=g)[:10]]
    assert d[0].item() == pytest.approx(frechet_distance(first, reference), rel=1e-12)
    assert len(set(d.tolist())) == 4  # different draws
    assert torch.equal(d, frechet_floor(lambda x: x, real, reference, 10, repeats=4, seed=1))
    with pytest.raises(ValueError, match="n must lie in 2..40"):
        frechet_floor(lambda x: x, real, reference, 41)


def test_timed_returns_the_result_and_the_seconds():
    import time

    from companion import timed

    out, secs = timed(lambda a, b=0: (time.sleep(0.02), a + b)[1], 2, b=3)
    assert out == 5 and 0.02 <= secs < 1.0


def test_frechet_names_nan_rows_and_bad_dims():
    a = torch.randn(6, 3)
    a[[2, 4], 0] = float("nan")
    with pytest.raises(ValueError, match=r"a holds 2 NaN/inf values in rows \[2, 4\]"):
        frechet_distance(a, torch.randn(6, 3))
    with pytest.raises(ValueError, match="d = 0"):
        frechet_distance(torch.zeros(5, 0), torch.zeros(5, 0))
    with pytest.raises(ValueError, match="of one d"):
        frechet_gaussian(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(2))
    # lists and float32 still work as before
    assert frechet_distance([[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 5.0]]) == \
        pytest.approx(0.75)


def test_frechet_bootstrap_draws_are_paired():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 4, generator=g, dtype=torch.float64)
    feats = {"a": a, "copy": a.clone(), "other": torch.randn(300, 4, generator=g,
                                                            dtype=torch.float64)}
    ref = torch.randn(400, 4, generator=g, dtype=torch.float64)
    fd, boot = frechet_bootstrap(feats, ref, 40, seed=3)
    assert fd == {k: frechet_distance(f, ref) for k, f in feats.items()}
    assert all(v.shape == (40,) and v.dtype == torch.float64 for v in boot.values())
    assert torch.equal(frechet_bootstrap(feats, ref, 40, seed=3)[1]["a"], boot["a"])
    # the same resamples for every set: a copy's draws equal the original's, and those of
    # another set differ
    assert torch.equal(boot["copy"], boot["a"])
    assert not torch.equal(boot["other"], boot["a"])
    assert paired_bootstrap(0.0, boot["copy"], boot["a"], 300).se == 0
    with pytest.raises(ValueError, match="same number of rows"):
        frechet_bootstrap({"a": a, "b": a[:100]}, ref, 40, seed=0)
    with pytest.raises(ValueError, match="draws must be at least 2"):
        frechet_bootstrap(feats, ref, 1, seed=0)


def test_paired_bootstrap_is_a_large_sample_verdict():
    a = torch.tensor([10.0, 11.0, 12.0, 11.5], dtype=torch.float64)
    c = paired_bootstrap(3.0, a + 3.0 + torch.tensor([0.1, -0.1, 0.2, -0.2]), a, 500,
                         unit="sample")
    assert c.se == pytest.approx(torch.tensor([0.1, -0.1, 0.2, -0.2]).std().item())
    assert c.threshold == pytest.approx(1.959964, abs=1e-6)
    assert c.resolved and "paired bootstrap, normal" in c.words(".1f")
    with pytest.raises(ValueError, match=r"\(B,\) draws"):
        paired_bootstrap(1.0, torch.ones(2, 3), torch.ones(2, 3), 10)
