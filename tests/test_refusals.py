"""The new chapters' modules refuse what they cannot compute (issue 55, points 1-12): a
hang, and silent wrong answers, each made a clear error (what was wrong, the value, how to
fix it). One test (or a few) per point, each failing on the code before the fix.
"""

from __future__ import annotations

import time

import pytest
import torch

from companion import fewstep
from companion.run import checks


# --- 1. ode_map: a field that returns NaN is an error, and the solve has a bound -----------------
def _nan_field(x, tau):
    return torch.full_like(x, float("nan"))


@pytest.mark.parametrize("start", [0.0, 1.0])
def test_01_ode_map_refuses_a_field_that_returns_nan(start):
    began = time.monotonic()
    with pytest.raises(checks.ArgumentError, match=r"4 non-finite values.*tau = 1 .*4 of 4"):
        fewstep.ode_map(_nan_field, torch.full((2, 2), start))
    assert time.monotonic() - began < 5


def test_01_ode_map_stops_at_its_evaluation_bound():
    calls = []

    def stiff(x, tau):  # finite but stiff: an explicit solver takes tiny steps
        calls.append(tau)
        return 1e7 * torch.sin(1e3 * x + 1e4 * tau)

    with pytest.raises(RuntimeError, match=r"500 evaluations.*max_evals"):
        fewstep.ode_map(stiff, torch.ones(2, 2), max_evals=500)
    assert len(calls) <= 500
