"""Tests of companion.metrics."""

import itertools

import pytest
import torch

from companion.metrics import auroc


def brute_force_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_known_cases():
    assert auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1])) == 1.0
    assert auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), torch.tensor([0, 0, 1, 1])) == 0.0
    assert auroc(torch.ones(6), torch.tensor([0, 1, 0, 1, 0, 1])) == 0.5
    # one positive above one of two negatives and below the other
    assert auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1, 0])) == 0.5


def test_auroc_matches_pairwise_count_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (60,), generator=g).float()  # many ties
    labels = torch.rand(60, generator=g) < 0.3
    expected = brute_force_auroc(scores.tolist(), labels.tolist())
    assert auroc(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_auroc_errors():
    with pytest.raises(ValueError, match="both classes"):
        auroc(torch.rand(5), torch.ones(5))
    with pytest.raises(ValueError, match="differ in size"):
        auroc(torch.rand(5), torch.ones(4))
    with pytest.raises(ValueError, match="0/1"):
        auroc(torch.rand(3), torch.tensor([0, 2, 1]))
