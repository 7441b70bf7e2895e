"""Lost, unbounded and silent answers of chapters 18-20's modules and the explorers' stores
made clear errors or right answers (issue 78, points 1-10): each test failed on the code
before its fix.

The rules, for every module from now on: a store is checked by its own page before it is
written and written atomically (point 1, 7); a cost that is a product of sizes is bounded as
a product, the limit in the message (point 2, 9); a reader's function (a schedule, a
weighting, a field) is checked where it is used, by name (points 3, 4, 8); shapes are never
broadcast silently (points 6, 8).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from companion import page_explorers as PE
from companion.run import checks

ROOT = Path(__file__).resolve().parent.parent
NAN, INF = float("nan"), float("inf")
FAST = 0.5  # seconds: a refusal checks the arguments first and computes nothing


# --- 1. the stores write atomically, inside their folder ---------------------------------------
def _sweep(levels=3, shown=2, measures=6):
    return {k: ("unit", [0.5 * lv for lv in range(levels)],
                [[100 * c + 10 * lv + j for j in range(measures)] for lv in range(levels)],
                torch.full((levels, shown, 28, 28), 0.5))
            for c, k in enumerate(("blur", "noise"))}


CLEAN = {"lo": [0.9] * 6, "hi": [1.1] * 6}


@pytest.mark.slow  # a child process that imports torch, then is killed
def test_01_a_store_killed_while_writing_leaves_the_previous_file_whole(tmp_path):
    """A store killed with SIGKILL inside its write (in a child process) leaves the good
    file it replaces readable, and the next store removes the dead process's temporary."""
    env = {**os.environ, PE.STORE_VAR: str(tmp_path), "PYTHONPATH": str(ROOT)}
    good = PE.corruption_page(_first_store(tmp_path))
    script = (
        "import os, signal, sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_silent_inputs_6 import _sweep, CLEAN\n"
        "from companion import page_explorers as PE\n"
        "real = PE.os.replace\n"
        "def die(*a):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "PE.os.replace = die\n"
        "PE.store_corruptions('sweep.npz', _sweep(levels=5), CLEAN)\n")
    run = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, timeout=120)
    assert run.returncode == -signal.SIGKILL
    assert list(tmp_path.glob("sweep.npz.*.tmp"))  # the dead write's temporary
    assert PE.corruption_page(tmp_path / "sweep.npz") == good  # the previous file, whole
    os.environ[PE.STORE_VAR] = str(tmp_path)
    try:
        PE.store_corruptions("sweep.npz", _sweep(levels=4), CLEAN)
    finally:
        del os.environ[PE.STORE_VAR]
    assert not list(tmp_path.glob("*.tmp"))
    assert PE.corruption_page(tmp_path / "sweep.npz")["controls"][0]["values"] == [0, 1, 2, 3]


def _first_store(folder: Path) -> Path:
    os.environ[PE.STORE_VAR] = str(folder)
    try:
        return PE.store_corruptions("sweep.npz", _sweep(), CLEAN)
    finally:
        del os.environ[PE.STORE_VAR]


def test_01_an_interrupted_store_leaves_no_temporary(tmp_path, monkeypatch):
    path = _first_store(tmp_path)
    monkeypatch.setenv(PE.STORE_VAR, str(tmp_path))

    def interrupt(*a):
        raise KeyboardInterrupt
    monkeypatch.setattr(PE.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        PE.store_corruptions("sweep.npz", _sweep(levels=5), CLEAN)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.npz"]
    assert PE.corruption_page(path)["controls"][0]["values"] == [0, 1, 2]


@pytest.mark.parametrize("name", ["/tmp/evil.npz", "../evil.npz", "sub/../../evil.npz"])
def test_01_a_store_refuses_a_name_outside_its_folder(name, tmp_path, monkeypatch):
    monkeypatch.setenv(PE.STORE_VAR, str(tmp_path / "store"))
    with pytest.raises(checks.ArgumentError, match=r"^name must be a file name inside "
                       r"\$BOOK_EXPLORERS, got .*writes outside the store's folder"):
        PE.store_corruptions(name, _sweep(), CLEAN)
    monkeypatch.delenv(PE.STORE_VAR)  # refused in every run, not only a storing one
    with pytest.raises(checks.ArgumentError, match="writes outside"):
        PE.store_corruptions(name, _sweep(), CLEAN)
    assert not (tmp_path / "evil.npz").exists() and not Path("/tmp/evil.npz").exists()


def test_01_a_name_without_npz_is_stored_under_the_name_returned(tmp_path, monkeypatch):
    monkeypatch.setenv(PE.STORE_VAR, str(tmp_path))
    path = PE.store_corruptions("sub/sweep", _sweep(), CLEAN)
    assert path == tmp_path / "sub" / "sweep.npz" and path.is_file()


# --- 2. a cost that is a product of sizes is bounded as a product ------------------------------
def _frechet_big():
    from companion import metrics

    real = torch.randn(10, 2)
    fake = torch.zeros(1_000_000, 2)  # no memory: a view
    return metrics.frechet_infinity(real, fake.expand(1_000_000, 2), [100, 200], draws=1000)


PRODUCTS = {
    "grid_page": (lambda: PE.grid_page(n=10_000, steps=range(1, 100)),
                  r"^sum\(steps\) \(the steps of each solver on each of the 12 grids\) must be "
                  r"at most 1,000, got 4,950"),
    "grid_page points": (lambda: PE.grid_page(n=10_000, steps=(100, 200)),
                         r"^n x sum\(steps\) .* must be at most 1,000,000, got 3,000,000"),
    "guidance_page": (lambda: PE.guidance_page(n=4000, weights=range(30), T=10_000),
                      r"^n x len\(weights\) x T \(the sample-steps of all the chains\) must "
                      r"be at most 20,000,000, got 1,200,000,000"),
    "straight_page": (lambda: PE.straight_page(5, 0.01),
                      r"^the grid's points \(positions of z1 x positions of z2\) must be at "
                      r"most 10,201, got 1,002,001"),
    "frechet_infinity": (_frechet_big, r"^draws x len\(sizes\) x rows of fake = "
                         r"2,000,000,000 .* must be at most 200,000,000"),
}


@pytest.mark.parametrize("name", list(PRODUCTS))
def test_02_a_product_of_sizes_within_their_own_bounds_is_refused(name):
    call, match = PRODUCTS[name]
    start = time.perf_counter()
    with pytest.raises(checks.ArgumentError, match=match):
        call()
    assert time.perf_counter() - start < FAST


def test_02_the_chapters_products_are_within_the_bounds():
    """Chapter 16's guidance (1,000 x 9 x 1,000), 17's grid (256 x 138), 19's plane (51^2)."""
    PE._guidance_sizes(1_000, 3, PE.GUIDANCE_WEIGHTS, 1000)
    assert PE.straight_page()["controls"][0]["values"][0] == -2.5
    assert 256 * sum(PE.GRID_STEPS) <= PE.MAX_GRID_WORK
    assert sum(PE.GRID_STEPS) <= PE.MAX_GRID_STEPS_SUM


# --- 3. schedules: monotone where used, ends representable, gamma finite ------------------------
def _wiggle(t):
    return 10 * t - 5 + 0.01 * torch.sin(2000 * math.pi * t)


def test_03_a_function_schedule_checked_on_a_coarse_grid_is_refused():
    from companion import vdm

    with pytest.raises(checks.ArgumentError, match=r"^n \(the grid gamma_fn is checked on.*"
                       r"a coarser one misses a decrease between its times\) must be a whole "
                       r"number >= 1000, got 2"):
        vdm.FunctionSchedule(_wiggle, n=2)


def test_03_a_schedule_that_decreases_between_its_check_times_is_refused():
    """The wiggle is level at every k / 1000 (sin(2 pi k) = 0, gamma' > 0 there): the
    midpoints, and the check where gamma' is used, find its decrease."""
    from companion import vdm

    with pytest.raises(checks.ArgumentError, match=r"^gamma_fn is not increasing at t = "
                       r"0.0005: gamma'\(t\) = -52.8"):
        vdm.FunctionSchedule(_wiggle)
    sched = vdm.FunctionSchedule(lambda t: 10 * t - 5)
    sched.gamma_fn = _wiggle  # swapped after its check: refused where it is used
    with pytest.raises(checks.ArgumentError, match="gamma_fn is not increasing"):
        sched.derivative(torch.tensor([0.0005], dtype=torch.float64))
    with pytest.raises(checks.ArgumentError, match=r"^the schedule gives beta_\d+ = .*outside "
                       r"\(0, 1\)"):
        vdm.chain_betas(sched, 4000)


def test_03_a_function_schedule_returning_nan_is_refused_where_used():
    from companion import vdm

    sched = vdm.FunctionSchedule(lambda t: 10 * t - 5)
    sched.gamma_fn = lambda t: torch.where(t > 0.5, torch.tensor(NAN, dtype=t.dtype), t)
    with pytest.raises(checks.ArgumentError, match="^gamma_fn returned NaN or infinite gamma"):
        sched(torch.tensor([0.7]))


@pytest.mark.parametrize("cls", ["LinearSchedule", "CosineSchedule", "LearnedSchedule"])
def test_03_ends_whose_snr_overflows_are_refused(cls):
    from companion import vdm

    with pytest.raises(checks.ArgumentError, match=r"^gamma_min \(gamma\(0\), the least noisy "
                       r"level\) must lie in \[-700, 700\], got -2000: SNR = exp\(-gamma\) "
                       r"overflows float64"):
        getattr(vdm, cls)(-2000, 5)


def test_03_cosine_ends_that_tan_cannot_resolve_are_refused():
    from companion import vdm

    with pytest.raises(checks.ArgumentError, match=r"^CosineSchedule's gamma_max = 700 "
                       r"computes as gamma = 74.66"):
        vdm.CosineSchedule(-13.3, 700)
    g = vdm.CosineSchedule(-600, 40)(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(g, torch.tensor([-600.0, 40.0], dtype=torch.float64))


def test_03_the_step_adapter_refuses_a_nan_gamma_by_name():
    from companion import vdm

    seen = []
    adapter = vdm.StepAdapter.linear(lambda z, t: seen.append(t) or z, T=10)
    with pytest.raises(checks.ArgumentError, match="^gamma holds NaN or infinite noise "
                                                   "levels: the adapter would turn them"):
        adapter(torch.zeros(2, 3), torch.tensor([NAN, 0.0]))
    assert not seen


# --- 4. weightings: differentiable, non-negative, shaped like lam, representable ---------------
LAM = torch.linspace(-5, 10, 101, dtype=torch.float64)
PARTIAL = torch.linspace(0, 1, 101, dtype=torch.float64)


def test_04_a_weighting_computed_outside_torch_is_refused():
    """Its derivative was taken as 0: 0.205 where the identity gives 1.403."""
    from companion import vdm

    def numpy_sigmoid(lam):
        return torch.from_numpy(1 / (1 + np.exp(lam.detach().numpy() - 2.0)))

    with pytest.raises(checks.ArgumentError, match=r"^weighting must be differentiable in "
                       r"torch.*compute it with torch operations on lam"):
        vdm.weighted_loss_as_elbos(numpy_sigmoid, LAM, PARTIAL)
    assert vdm.weighted_loss_as_elbos(vdm.elbo_weighting, LAM, PARTIAL) == 1.0  # constant


def test_04_a_negative_weighting_is_refused():
    from companion import vdm

    with pytest.raises(checks.ArgumentError, match=r"^weighting\(lam\) must be finite and >= 0"
                                                   r".*a negative weight makes the loss"):
        vdm.weighted_loss_as_elbos(lambda lam: -torch.sigmoid(2 - lam), LAM, PARTIAL)
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(checks.ArgumentError, match=r"^weighting\(lambda\) must be finite"):
        vdm.weighted_loss(vdm.gaussian_eps_model(torch.zeros(2), 1.0), vdm.LinearSchedule(),
                          x, lambda lam: -torch.ones_like(lam))


def test_04_a_weighting_one_element_short_is_refused():
    from companion import vdm

    with pytest.raises(checks.ArgumentError, match=r"^weighting\(lam\) must return one weight "
                                                   r"per log-SNR, a tensor shaped like lam"):
        vdm.is_monotone_weighting(lambda lam: vdm.sigmoid_weighting(lam)[:-1], LAM)


@pytest.mark.parametrize("name", ["edm_weighting", "v_prediction_weighting",
                                  "flow_matching_weighting", "sigmoid_weighting"])
def test_04_log_snrs_beyond_the_representable_are_refused(name):
    from companion import vdm

    with pytest.raises(checks.ArgumentError, match=r"^lam must be log-SNRs within "
                                                   r"\[-709.8, 709.8\] in torch.float64"):
        getattr(vdm, name)(-800.0)
    with pytest.raises(checks.ArgumentError, match=r"within \[-88.7, 88.7\] in torch.float32"):
        getattr(vdm, name)(torch.tensor([-100.0]))
    assert torch.isfinite(getattr(vdm, name)(LAM)).all()


# --- 5. FSQ: two levels, an int64 index, values on the levels -----------------------------------
def test_05_fsq_with_two_levels_gives_its_two_levels():
    from companion.models.quantizer import FSQ

    q = FSQ((2, 3))
    out = q(torch.randn(64, 2, 3, 3, generator=torch.Generator().manual_seed(0)) * 3)
    assert set(out.z_q[:, 0].unique().tolist()) == {-1.0, 0.0}
    assert out.indices.min() >= 0 and out.indices.max() < q.K == 6
    assert q(torch.zeros(1, 2, 1, 1)).z_q.abs().max() == 0  # f(0) = 0
    assert torch.equal(q.indices_to_codes(out.indices), out.z_q)


def test_05_fsq_keeps_every_other_level_count_as_the_paper():
    """h = (L - 1)(1 - eps) / 2 for L > 2: the values of before the fix."""
    from companion.models.quantizer import FSQ

    q = FSQ((8, 5, 5, 5))
    assert torch.allclose(q.half_l, torch.tensor([3.4965, 1.998, 1.998, 1.998]))
    assert torch.allclose(q.shift, torch.atanh(torch.tensor([0.5 / 3.4965, 0, 0, 0])))


def test_05_fsq_whose_codes_overflow_int64_is_refused():
    from companion.models.quantizer import FSQ

    with pytest.raises(checks.ArgumentError, match=r"^levels\[0\] \(the levels of channel 0\) "
                                                   r"must be a whole number in 2..16777216"):
        FSQ((2**32, 2**32))
    with pytest.raises(checks.ArgumentError, match=r"more than 4,611,686,018,427,387,904 = "
                                                   r"2\^62: the code index \(int64\)"):
        FSQ((2**20,) * 4)


@pytest.mark.parametrize("value", [1.5, NAN, 0.3])
def test_05_codes_off_the_levels_are_refused(value):
    from companion.models.quantizer import FSQ

    q = FSQ((5, 4))
    z = torch.zeros(1, 2, 1, 1)
    z[0, 0] = value
    with pytest.raises(checks.ArgumentError, match=r"^z_q holds 1 value\(s\) off the levels "
                                                   r"\(channel 0 has 5"):
        q.codes_to_indices(z)


# --- 6. metrics, the sampler's law, the Gaussian eps model: no silent reading ------------------
@pytest.mark.parametrize("sizes, match", [
    ("12", r"^sizes must be a sequence of subset sizes \(ints\)"),
    ((100.7, 200), r"^every one of sizes \(a subset size\) must be a whole number >= 1, got "
                   r"100.7"),
])
def test_06_frechet_line_reads_sizes_as_given(sizes, match):
    from companion import metrics

    with pytest.raises(checks.ArgumentError, match=match):
        metrics.frechet_line(sizes, torch.ones(2, 3))


@pytest.mark.parametrize("distances, match", [
    (torch.ones(2, 0), r"^distances must be \(len\(sizes\), draws\) = \(2, draws\), draws >= 1"),
    (torch.tensor([[1.0], [-1.0]]), r"^distances must be >= 0 \(squared Fréchet distances\)"),
])
def test_06_frechet_line_refuses_no_draws_and_negative_distances(distances, match):
    from companion import metrics

    with pytest.raises(checks.ArgumentError, match=match):
        metrics.frechet_line([100, 200], distances)


@pytest.mark.parametrize("name", ["precision_recall", "density_coverage", "real_balls"])
def test_06_real_rows_with_a_ball_of_radius_0_are_refused(name):
    from companion import metrics

    g = torch.Generator().manual_seed(0)
    real = torch.cat([torch.zeros(4, 2), torch.randn(20, 2, generator=g)])
    fake = torch.randn(30, 2, generator=g)
    args = (real, fake, 3)
    with pytest.raises(checks.ArgumentError, match=r"^real has 4 row\(s\) with k = 3 or more "
                                                   r"exact copies.*real.unique\(dim=0\)"):
        getattr(metrics, name)(*args)
    getattr(metrics, name)(real[3:], fake, 3)  # 1 copy of the origin: no ball of radius 0
    metrics.precision_recall(fake, torch.zeros(8, 2), 3)  # collapsed samples: what it shows


def test_06_sampler_law_refuses_nan_logits_as_sample_does():
    from companion import masked as mk

    with pytest.raises(checks.ArgumentError, match=r"^the denoiser returned non-finite "
                                                   r"logits \(NaN or inf\) at step 1 of 2"):
        mk.sampler_law(lambda z: torch.full_like(z, NAN), 3, 2)


@pytest.mark.parametrize("model", ["gaussian", "mixture"])
def test_06_the_closed_form_eps_models_refuse_another_width(model):
    from companion import toy, vdm

    eps = (vdm.gaussian_eps_model(torch.zeros(2), 1.0) if model == "gaussian" else
           vdm.mixture_eps_model(toy.GaussianMixture([0.5, 0.5], torch.eye(2), 0.3)))
    with pytest.raises(checks.ArgumentError, match=r"^z must be \(B, 2\), one column per "
                                                   r"dimension.*got shape \(4, 1\)"):
        eps(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(checks.ArgumentError, match=r"^gamma must be one noise level per row"):
        eps(torch.zeros(4, 2), torch.zeros(3))
    assert eps(torch.zeros(4, 2), torch.zeros(4)).shape == (4, 2)


# --- 7. stores refuse what their pages refuse; the recipes' paths stay in the cache ----------
def test_07_a_chain_whose_steps_do_not_end_at_0_is_refused_at_store_time(monkeypatch):
    monkeypatch.delenv(PE.STORE_VAR, raising=False)  # refused in every run
    frames = {t: (torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 28, 28)) for t in (20, 10)}
    with pytest.raises(checks.ArgumentError, match=r"^store_chain: its page would refuse what "
                                                   r"it stores: the kept steps must fall to 0"):
        PE.store_chain("chain.npz", frames, torch.ones(20), "ci")


def test_07_four_numbers_where_five_belong_are_refused_at_store_time():
    truth = torch.zeros(2, 28, 28)
    masks = {"left": ("left missing", torch.ones(2, 28, 28))}
    comp = {("a", "left"): torch.zeros(1, 2, 28, 28)}
    with pytest.raises(checks.ArgumentError, match=r"^numbers\['a', 'left'\] must hold the "
                                                   r"table's 5 numbers"):
        PE.store_completions("c.npz", truth, masks, comp, {("a", "left"): [1, 2, 3, 4]}, 8)


def test_07_five_measures_where_six_belong_are_refused_at_store_time():
    with pytest.raises(checks.ArgumentError, match=r"^store_corruptions: its page would refuse "
                       r"what it stores: measures must be \(corruptions, strengths, 6\)"):
        PE.store_corruptions("s.npz", _sweep(measures=5), CLEAN)
    with pytest.raises(checks.ArgumentError, match=r"^clean\['hi'\] must hold one bound per "
                                                   r"measure"):
        PE.store_corruptions("s.npz", _sweep(), {"lo": [0.9] * 6, "hi": [1.1] * 5})


@pytest.mark.parametrize("call, match", [
    (lambda R: R.ddpm_checkpoint("ci", -5), r"^steps \(the updates of an early run, or None\) "
                                            r"must be a whole number >= 1, got -5"),
    (lambda R: R.flow_checkpoint("ci", 2.5), r"^steps .* must be a whole number >= 1, got 2.5"),
    (lambda R: R.vdm_checkpoint("ci", 0), r"^steps .* got 0"),
    (lambda R: R.code_prior_checkpoint("ci", variant="../../../evil"),
     r"^variant must be one of \('plain', 'ema', 'restart', 'fsq'\)"),
    (lambda R: R.ddpm_checkpoint("ci", prefix="../../evil"),
     r"^name of a checkpoint must be a plain name without a folder"),
])
def test_07_the_recipes_paths_refuse_a_step_or_name_off_the_cache(call, match):
    from companion import recipes

    with pytest.raises(ValueError, match=match):
        call(recipes)
    assert recipes.ddpm_checkpoint("ci", 100).name == "ch9-ddpm-step100-ci.pt"


class _Run:
    def __init__(self, rec):
        self.history = {"reconstruction": rec}


@pytest.mark.parametrize("rec, what", [([], "no"), ([-1.0] * 9 + [NAN], "a NaN or infinite")])
def test_07_chosen_variant_refuses_a_run_with_no_or_nan_history(rec, what):
    from companion import recipes

    runs = {"plain": _Run([-3.0] * 10), "fsq": _Run(rec)}
    with pytest.raises(checks.ArgumentError, match=rf"^runs\['fsq'\] has {what} logged "
                                                   r"reconstruction term"):
        recipes.chosen_variant(runs)
    assert recipes.chosen_variant({"plain": _Run([-3.0] * 10), "ema": _Run([-2.0] * 10)}) \
        == "ema"


# --- 8. the last pass's two left --------------------------------------------------------------
def test_08_divergence_exact_refuses_a_field_that_returns_nan():
    from companion import sde

    with pytest.raises(checks.ArgumentError, match=r"^the field's output F\(x, t\) holds 2 NaN"):
        sde.divergence_exact(lambda x, t: x * torch.tensor([NAN, 1.0]), torch.ones(2, 2), 0.5)


def test_08_normal_kl_refuses_a_broadcast_to_a_shape_of_none_of_them():
    from companion import diffusion as dm

    with pytest.raises(checks.ArgumentError, match=r"^mean1, logvar1, mean2, logvar2 must "
                       r"broadcast to the shape of one of them.*together \(4, 4\)"):
        dm.normal_kl(torch.zeros(4, 1), 0.0, torch.zeros(1, 4), 0.0)
    assert dm.normal_kl(torch.zeros(4, 3), torch.zeros(4, 1), 1.0, 0.0).shape == (4, 3)


# --- 9. every size a bound, with its limit and why --------------------------------------------
def _sizes_9():
    from companion import masked as mk
    from companion import vdm
    from companion.models import code_prior
    from companion.models import quantizer as Q

    big = 10**9
    return {
        "Schedule.check": (lambda: vdm.LinearSchedule().check(n=big),
                           r"^n \(the check's grid, n \+ 1 times\) must be at most 10,000,000"),
        "LearnedSchedule hidden": (lambda: vdm.LearnedSchedule(hidden=big),
                                   r"^hidden \(the sigmoid layer's width\) must be at most "
                                   r"65,536"),
        "chain_betas": (lambda: vdm.chain_betas(vdm.LinearSchedule(), big),
                        r"^T \(the number of steps\) must be at most 1,048,576"),
        "stratified_times": (lambda: vdm.stratified_times(10**10),
                             r"^n must be at most 10,000,000"),
        "gaussian_discrete_loss": (lambda: vdm.gaussian_discrete_loss(vdm.LinearSchedule(),
                                                                      big, 1.0),
                                   r"^T \(the number of steps\) must be at most 1,048,576"),
        "VectorQuantizer": (lambda: Q.VectorQuantizer(K=big),
                            r"^K \(the number of codes\) must be at most 1,048,576"),
        "code_counts": (lambda: Q.code_counts(torch.zeros(3, dtype=torch.long), 10**11),
                        r"^K \(the number of codes\) must be at most 1,048,576"),
        "FSQ.grid": (lambda: Q.FSQ((1000,) * 3).grid(),
                     r"^K \(the codes of grid\(\), prod of the levels\) must be at most "
                     r"1,048,576"),
        "ARPrior K": (lambda: code_prior.ARPrior(K=10**8),
                      r"^K \(the number of codes\) must be at most 1,048,576"),
        "ARPrior.sample": (lambda: code_prior.ARPrior(K=4, grid=(2, 2), width=8, depth=1,
                                                      heads=1).sample(10**7),
                           r"^n \(the number of samples\) must be at most 100,000"),
        "masked.sample": (lambda: mk.sample(lambda z: z, (10**6, 1, 28, 28), 4),
                          r"^the values drawn, prod\(shape\) must be at most 10,000,000, got "
                          r"784,000,000"),
    }


@pytest.mark.parametrize("name", list(_sizes_9()))
def test_09_every_size_has_a_bound_with_its_limit(name):
    call, match = _sizes_9()[name]
    start = time.perf_counter()
    with pytest.raises(checks.ArgumentError, match=match):
        call()
    assert time.perf_counter() - start < 2 * FAST


def test_09_the_chapters_sizes_are_within_the_bounds():
    """Chapter 18's T up to 2^16 and hidden 1,024; chapter 14's (20,000, 9) samples."""
    from companion import vdm

    assert vdm.gaussian_discrete_loss(vdm.LinearSchedule(), 2**16, 1.0) > 0
    assert len(vdm.chain_betas(vdm.LinearSchedule(), 1000)) == 1000
    assert vdm.LearnedSchedule(hidden=1024).check() is not None
