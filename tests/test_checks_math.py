"""The checks the math modules (diffusion, sde, flow) make through companion.checks (issue 42,
item 3): one helper per kind of argument, ArgumentError throughout, and the same answer for a
Python number, a NumPy scalar and a 0-d tensor (a bool is no number)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from companion import diffusion as dm
from companion import flow, sde
from companion.run import checks

D = dm.Diffusion(dm.linear_betas(10, 1e-3, 0.2))
AB = torch.cumprod(1 - dm.linear_betas(10), 0)


# --- the helpers -------------------------------------------------------------------------------
def test_batch_with_a_shape_refuses_another_shape():
    x = torch.zeros(2, 3)
    assert checks.batch("x_T", x, shape=(2, 3)) is x
    with pytest.raises(checks.ArgumentError, match=r"x_T has shape \(2, 3\), expected \(4, 3\)"):
        checks.batch("x_T", x, shape=(4, 3))


def test_points_stacked_and_per_point_name_the_shape_they_need():
    x = torch.zeros(3, 2)
    assert checks.points("x", x, "use images elsewhere") is x
    with pytest.raises(checks.ArgumentError, match=r"points \(B, D\), got shape \(3, 1, 2\): use"):
        checks.points("x", x[:, None], "use images elsewhere")
    assert checks.stacked("probes", torch.ones(2, 3, 2), x).shape == (2, 3, 2)
    for bad in (torch.ones(0, 3, 2), torch.ones(2, 3), torch.ones(2, 2, 2), [1.0]):
        with pytest.raises(checks.ArgumentError, match=r"probes must be \(P, \*x.shape\)"):
            checks.stacked("probes", bad, x)
    assert checks.per_point(torch.zeros(3), 3, who="f", fix="sum").shape == (3,)
    with pytest.raises(checks.ArgumentError, match=r"f must return one value per point \(3,\), "
                       r"got \(3, 1\): sum"):
        checks.per_point(torch.zeros(3, 1), 3, who="f", fix="sum")


def test_times_spans_and_grids_take_any_real_and_refuse_bools():
    for t0 in (0.1, np.float64(0.1), torch.tensor(0.1, dtype=torch.float64)):
        assert checks.time_span(t0, 1) == (pytest.approx(0.1), 1.0)
    with pytest.raises(checks.ArgumentError, match="t0 < t1"):
        checks.time_span(0.5, 0.5)
    with pytest.raises(checks.ArgumentError, match="t0 must be a number"):
        checks.time_span(True, 1.0)
    assert checks.grid_intervals(np.int64(4)) == 4
    with pytest.raises(checks.ArgumentError, match="K .*positive int"):
        checks.grid_intervals(True)


def test_path_pair_refuses_broadcasting_and_the_end_of_the_path_where_asked():
    a = torch.zeros(2, 3)
    assert checks.path_pair("a and b", a, a, torch.tensor(0.25)) == 0.25
    assert checks.path_pair("a and b", a, a, torch.tensor([0.0, 1.0])).shape == (2,)
    assert checks.path_pair("a and b", a, a, 1.0) == 1.0
    with pytest.raises(checks.ArgumentError, match="tau < 1"):
        checks.path_pair("a and b", a, a, 1.0, before_noise=True)
    with pytest.raises(checks.ArgumentError, match="same shape"):
        checks.path_pair("a and b", a, a[:1], 0.5)
    with pytest.raises(checks.ArgumentError, match=r"real times, one per point \(2,\)"):
        checks.path_pair("a and b", a, a, torch.tensor([0.5, 0.5, 0.5]))


def test_weights_data_and_the_chains_arguments():
    assert checks.weights("alpha", np.float32(0.5), "sigma", torch.tensor(0.0)) == (0.5, 0.0)
    with pytest.raises(checks.ArgumentError, match="not both 0"):
        checks.weights("alpha", 0, "sigma", 0.0)
    with pytest.raises(checks.ArgumentError, match="alpha must be a real number"):
        checks.weights("alpha", False, "sigma", 1.0)
    assert checks.data("x0", torch.zeros(2, 3)).shape == (2, 3)  # points: any range
    with pytest.raises(checks.ArgumentError, match="divide by 255"):
        checks.data("x0", torch.full((1, 1, 2, 2), 200.0))
    assert checks.kept_steps([1, 4, 10], 10).tolist() == [1, 4, 10]
    for bad in ([], [4, 4], [0, 3], [3, 11]):
        with pytest.raises(checks.ArgumentError, match=r"increasing integers in 1..10"):
            checks.kept_steps(bad, 10)
    assert checks.noise_levels("sigmas", [2.0, 1.0]).dtype == torch.float64
    for bad in ([], [1.0, 0.0], [[1.0]], [float("nan")]):
        with pytest.raises(checks.ArgumentError, match="positive noise levels"):
            checks.noise_levels("sigmas", bad)
    assert checks.step_sizes([1, 2], [np.float64(0.5), torch.tensor(0.25)]) == [0.5, 0.25]
    with pytest.raises(checks.ArgumentError, match="one step size per level"):
        checks.step_sizes([1, 2], [0.5])
    with pytest.raises(checks.ArgumentError, match="every step size must be a number > 0"):
        checks.step_sizes([1], [0.0])
    assert checks.chain_alphas_bar(AB, 0.1).dtype == torch.float64
    with pytest.raises(checks.ArgumentError, match="too little noise"):
        checks.chain_alphas_bar(AB[:2], 0.1)
    assert checks.score_noise(0.5) == 0.5
    with pytest.raises(checks.ArgumentError, match="0/0 at t = 0"):
        checks.score_noise(0.0)


# --- the math modules answer alike for every kind of scalar -------------------------------------
@pytest.mark.parametrize("kind", [int, np.int64, torch.tensor])
def test_a_chain_step_of_any_integer_kind_is_taken_and_a_bool_refused(kind):
    x = torch.zeros(2, 3)
    score = D.score_fn(lambda x, t: torch.ones_like(x))
    assert torch.equal(score(x, kind(3)), score(x, 3))
    for bad in (True, 0, 11, 2.0):
        with pytest.raises(checks.ArgumentError, match=r"t \(a step of the chain, 1..T\)"):
            score(x, bad)


@pytest.mark.parametrize("kind", [float, np.float64, torch.tensor])
def test_reals_of_any_kind_are_taken_and_bools_refused(kind):
    assert sde.VPSDE(kind(0.1), kind(20.0)).beta_max == 20.0
    assert flow.vp_to_linear(kind(0.6), kind(0.2)) == pytest.approx((0.25, 0.8))
    assert dm.linear_betas(4, kind(1e-3), kind(0.2))[-1].item() == pytest.approx(0.2)
    with pytest.raises(checks.ArgumentError, match="beta_min"):
        sde.VPSDE(True, 20.0)
    with pytest.raises(checks.ArgumentError, match="end .*start <= end < 1"):
        dm.linear_betas(4, kind(0.2), kind(0.1))
    with pytest.raises(checks.ArgumentError, match="alpha_bar"):
        sde.VPSDE().time_of(kind(2.0))


def test_the_math_modules_raise_argument_errors_that_say_what_to_do():
    x = torch.zeros(2, 3)
    with pytest.raises(checks.ArgumentError, match=r"x_T has shape \(2, 3\), expected"):
        D.sample(lambda x, t: x, (4, 3), x_T=x, quiet=True)
    with pytest.raises(checks.ArgumentError, match="x_t and eps must be tensors of the same"):
        D.mean_from_eps(x, 1, x[:1])
    with pytest.raises(checks.ArgumentError, match="a standard error needs at least 2"):
        D.bound_monte_carlo(lambda x, t: x, x[:1], decoder="gaussian")
    with pytest.raises(checks.ArgumentError, match="empty batch"):
        D.bound_terms(lambda x, t: x, x[:0], decoder="gaussian", quiet=True)
    with pytest.raises(checks.ArgumentError, match="increasing integers in 1..10"):
        D.respaced([3, 2])
    with pytest.raises(checks.ArgumentError, match="one step size per level"):
        dm.annealed_langevin(lambda x, s: x, x, [1, 2], [0.1], 1, quiet=True)
    with pytest.raises(checks.ArgumentError, match="positive noise levels"):
        dm.song_ermon_step_sizes([1.0, -1.0], 0.1)
    with pytest.raises(checks.ArgumentError, match=r"the field returned shape \(2, 1\)"):
        sde.euler(lambda x, t: x[:, :1], x, [1.0, 0.5])
    with pytest.raises(checks.ArgumentError, match="less noisy than the chain's first step"):
        sde.ChainClock(AB).eps(lambda x, t: x)(x, 0.0)
    with pytest.raises(checks.ArgumentError, match=r"for images use divergence_hutchinson"):
        sde.divergence_exact(lambda x, t: x, torch.zeros(2, 1, 2), 0.5)
    with pytest.raises(checks.ArgumentError, match="positive tolerance"):
        sde.ode_log_likelihood(lambda x, t: -x, x, rtol=np.float64(-1.0))
