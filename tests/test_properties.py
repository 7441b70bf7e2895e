"""Property-based tests (Hypothesis) of the functions that take a reader's tensors, numbers
and tables: masked, fewstep, flow, sde, diffusion, compare, metrics, memory, glue, tables.

The properties (issue 55):
- valid random inputs give finite outputs of the documented shape (and the documented
  invariants: probabilities that sum to 1, pixels kept or masked, never changed);
- wrong shapes, dtypes, ranges and non-finite values give the package's own clear error: a
  ValueError or TypeError (checks.ArgumentError is both) raised from companion's code, never
  a torch or NumPy traceback and never a silent value;
- a number glue stores rounds, to every precision the prose can show of it, as the number
  itself does (point 8).

Deterministic: every test runs with derandomize=True and no example database, so the same
examples run on every machine and in CI. Two profiles, chosen by $HYPOTHESIS_PROFILE:

    make test                                      # "default": 30 examples a test, seconds
    HYPOTHESIS_PROFILE=nightly python -m pytest tests/test_properties.py    # 1,000 a test

(nightly takes some minutes; run it by hand or on a schedule after touching these modules.)
"""

from __future__ import annotations

import math
import os
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from companion import compare, diffusion, fewstep, flow, masked, metrics, sde
from companion.run import checks, glue, memory, tables
from tests.test_refusals import _glued  # glue's stored text, display caught

pytestmark = pytest.mark.slow  # in make test, not in check-fast (the hook's minute)

settings.register_profile("default", max_examples=30, derandomize=True, database=None,
                          deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=1000, derandomize=True, database=None,
                          deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
if PROFILE not in ("default", "nightly"):
    raise ValueError(f"HYPOTHESIS_PROFILE must be 'default' or 'nightly', got {PROFILE!r}")
SETTINGS = settings(settings.get_profile(PROFILE))

PACKAGE = Path(checks.__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")


def refused(fn, *args, names=(), **kwargs) -> str:
    """fn(*args, **kwargs) must raise the package's own error: a ValueError or TypeError
    raised from a frame of companion (not from torch, NumPy or SciPy), whose message names
    one of `names`. Returns the message."""
    try:
        got = fn(*args, **kwargs)
    except (ValueError, TypeError) as err:
        frame = traceback.extract_tb(err.__traceback__)[-1]
        assert Path(frame.filename).resolve().is_relative_to(PACKAGE), \
            f"{type(err).__name__} raised from {frame.filename}:{frame.lineno}: {err}"
        message = str(err)
        assert not names or any(n in message for n in names), (names, message)
        return message
    raise AssertionError(f"no error: returned {str(got)[:200]}")


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


batch_sizes = st.integers(1, 5)
widths = st.integers(1, 6)
unit = st.floats(0.0, 1.0)
bad_times = st.sampled_from([NAN, INF, -INF, -0.25, 1.5, 7.0])
seeds = st.integers(0, 2**16)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def with_nan(x: torch.Tensor, where: int, value: float = NAN) -> torch.Tensor:
    x = x.clone()
    x.view(-1)[where % x.numel()] = value
    return x


# --- glue: the prose's rounding, and nothing non-finite stored -------------------------------
@SETTINGS
@given(x=st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
       .filter(lambda v: v == 0 or abs(v) > 1e-12), digits=st.integers(1, 8))
def test_glue_a_stored_number_rounds_as_the_number_does(x, digits):
    stored = glue.round_significant(x, digits)
    if x == 0:
        assert stored == 0
        return
    exponent = math.floor(math.log10(abs(x)))
    assert abs(stored - x) <= 0.5 * 10.0 ** (exponent - digits + 1) * (1 + 1e-9)
    for shown in range(0, digits - exponent):  # fixed point, to the decimals stored
        assert f"{stored:.{shown}f}" == f"{x:.{shown}f}", (x, digits, shown)
    for shown in range(1, digits + 1):  # significant digits
        assert f"{stored:.{shown - 1}e}" == f"{x:.{shown - 1}e}", (x, digits, shown)


nested = st.recursive(
    st.floats(allow_nan=False, allow_infinity=False) | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=2), inner, max_size=2), max_leaves=8)


@SETTINGS
@given(value=nested, bad=st.sampled_from([NAN, INF, -INF]),
       how=st.sampled_from(["list", "tuple", "dict", "tensor", "array"]))
def test_glue_refuses_a_non_finite_number_wherever_it_sits(value, bad, how):
    _glued(value)  # finite: stored
    wrapped = {"list": lambda v: [value, v], "tuple": lambda v: (v, value),
               "dict": lambda v: {"x": [value, {"y": v}]},
               "tensor": lambda v: torch.tensor([[1.0, v]]),
               "array": lambda v: np.array([v, 2.0])}[how](bad)
    refused(_glued, wrapped, names=("NaN or infinite",))


# --- tables: one line a row, whatever the cells ----------------------------------------------
cell_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
cells = cell_text | st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10**6, 10**6)


@SETTINGS
@given(k=st.integers(1, 4), n=st.integers(0, 4), data=st.data())
def test_tables_markdown_is_a_row_a_line_or_a_clear_refusal(k, n, data):
    columns = data.draw(st.lists(cell_text, min_size=k, max_size=k))
    rows = data.draw(st.lists(st.lists(cells, min_size=k, max_size=k), min_size=n,
                              max_size=n))
    texts = columns + [c for r in rows for c in r if isinstance(c, str)]
    if any("\n" in t or "\r" in t for t in texts):
        refused(tables.markdown, columns, rows, names=("line break",))
        return
    text = tables.markdown(columns, rows)
    lines = text.split("\n")
    assert len(lines) == n + 2
    for line in lines:  # k cells: k + 1 pipes that are not escaped
        assert line.startswith("|") and line.endswith("|")
        assert len(line.replace("\\|", "")) - len(line.replace("\\|", "").replace("|", "")) \
            == k + 1, line
    refused(tables.markdown, columns, [[*r, 0] for r in rows] or [[0] * (k + 1)],
            names=("cells",))


# --- masked -----------------------------------------------------------------------------------
def binary(b, d, seed):
    return (torch.rand(b, d, generator=gen(seed)) > 0.5).float()


@SETTINGS
@given(b=batch_sizes, d=widths, seed=seeds, s=unit, t=unit,
       sched=st.sampled_from(["linear", "cosine"]))
def test_masked_valid_inputs_give_distributions_of_the_documented_shape(b, d, seed, s, t,
                                                                      sched):
    s, t = min(s, t), max(s, t)
    assume(t - s > 1e-6 and t > 1e-6)
    x0 = binary(b, d, seed)
    z = masked.forward_sample(x0, t, sched, generator=gen(seed + 1))
    assert z.shape == x0.shape and bool(((z == masked.MASK) | (z == x0)).all())
    q = masked.marginal(x0, t, sched)
    assert q.shape == (b, d, 3) and finite(q) and torch.allclose(q.sum(-1), torch.ones(b, d))
    p = masked.posterior(z, x0, s, t, sched)
    assert p.shape == (b, d, 3) and finite(p) and torch.allclose(p.sum(-1), torch.ones(b, d))
    logits = torch.randn(b, d, generator=gen(seed + 2)) * 10
    ce = masked.masked_cross_entropy(logits, x0, z)
    assert ce.shape == (b,) and finite(ce) and bool((ce >= 0).all())


@SETTINGS
@given(b=batch_sizes, d=widths, seed=seeds, t=bad_times, where=st.integers(0, 99))
def test_masked_refuses_bad_times_shapes_and_values(b, d, seed, t, where):
    x0 = binary(b, d, seed)
    refused(masked.forward_sample, x0, t, names=("t",))
    refused(masked.marginal, x0, t, names=("t",))
    refused(masked.forward_sample, x0, torch.full((b + 1,), 0.5), names=("t",))
    refused(masked.forward_sample, with_nan(x0, where, 0.5), 0.5, names=("x0",))
    refused(masked.forward_sample, x0.long() + 2 if where % 2 else (x0 + 2).half(), 0.5,
            names=("x0",))
    z = masked.forward_sample(x0, 0.5, generator=gen(seed))
    logits = torch.randn(b, d)
    refused(masked.masked_cross_entropy, logits[:, :1].expand(b, d + 1), x0, z,
            names=("logits",))
    refused(masked.masked_cross_entropy, logits.long(), x0, z, names=("logits",))
    refused(masked.posterior, z, x0[:, :1] if d > 1 else x0[:1].expand(b + 1, d), 0.2, 0.5,
            names=("z_t and x0",))
    refused(masked.reveal_probability, 0.5, t, names=("t", "s"))


# --- flow and fewstep ---------------------------------------------------------------------------
@SETTINGS
@given(b=batch_sizes, d=widths, seed=seeds, tau=unit, where=st.integers(0, 99),
       bad=bad_times)
def test_flow_paths_have_the_documented_shape_and_refuse_what_they_cannot_use(b, d, seed, tau,
                                                                           where, bad):
    g = gen(seed)
    x0, eps = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    x = flow.linear_path(x0, eps, tau)
    assert x.shape == (b, d) and finite(x)
    taus = torch.rand(b, generator=g)
    assert flow.linear_path(x0, eps, taus).shape == (b, d)
    v = flow.velocity_from_eps(eps, x, min(tau, 0.99))
    assert v.shape == (b, d) and finite(v)
    refused(flow.linear_path, x0, eps, bad, names=("tau",))
    refused(flow.linear_path, x0, eps[:, :1].expand(b, d + 1), tau, names=("x0 and eps",))
    refused(flow.linear_path, x0, eps, torch.rand(b + 1), names=("tau",))
    refused(flow.linear_path, x0.long(), eps.long(), tau, names=("x0",))
    refused(flow.velocity_from_eps, eps, x, 1.0, names=("tau",))
    refused(flow.uniform_grid, -where, names=("n_steps",))


@SETTINGS
@given(seed=seeds, b=batch_sizes, tau=unit, bad=bad_times)
def test_fewstep_mixture_velocity_is_finite_where_defined_and_checks_its_points(seed, b, tau,
                                                                             bad):
    from companion.toy import GaussianMixture

    path = fewstep.MixturePath(GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], 0.3))
    x = torch.randn(b, path.D, generator=gen(seed), dtype=torch.float64)
    v = path.velocity(x, min(tau, 0.999))
    assert v.shape == (b, path.D) and finite(v)
    refused(path.velocity, x, bad, names=("tau",))
    refused(path.velocity, x[:, :1], tau, names=("x",))
    refused(path.velocity, x.long(), tau, names=("x",))
    refused(fewstep.ode_map, lambda y, t: y * NAN, x, names=("field", "NaN"))


# --- sde and diffusion --------------------------------------------------------------------------
@SETTINGS
@given(b=batch_sizes, d=widths, seed=seeds, t=unit, bad=bad_times)
def test_sde_vp_marginal_and_solvers_keep_shapes_and_refuse_bad_times(b, d, seed, t, bad):
    vp = sde.VPSDE()
    x0 = torch.randn(b, d, generator=gen(seed))
    mean, std = vp.marginal(x0, t)
    assert mean.shape == (b, d) and finite(mean) and 0 <= std <= 1
    refused(vp.marginal, x0, bad, names=("t",))
    out = sde.euler(lambda x, s: -x, x0, [1.0, 0.5, 0.0])
    assert out.shape == (b, d) and finite(out)
    refused(sde.euler, lambda x, s: x[:, :1].expand(b, d + 1), x0, [1.0, 0.0],
            names=("field",))
    refused(sde.euler, lambda x, s: -x, x0, [1.0, bad], names=("ts", "time"))
    refused(sde.bits_per_dim, torch.zeros(b), 0, names=("dims",))
    refused(sde.ode_log_likelihood, lambda y, s: y * NAN, x0, names=("NaN",))
    for solver in (sde.euler, sde.heun):
        refused(solver, lambda y, s: y * NAN, x0, [1.0, t, 0.0] if 0 < t < 1 else [1.0, 0.0],
                names=("NaN or infinite",))
    refused(sde.ddim, lambda y, s: -y, vp, with_nan(x0, seed), [0.9, 0.0],
            names=("NaN or infinite",))
    refused(sde.ode_log_likelihood, lambda y, s: -y, with_nan(x0, seed), names=("x holds",))


@SETTINGS
@given(b=batch_sizes, d=widths, seed=seeds, T=st.integers(1, 50), where=st.integers(0, 99))
def test_diffusion_q_sample_is_finite_and_checks_steps_and_shapes(b, d, seed, T, where):
    D = diffusion.Diffusion(diffusion.linear_betas(T))
    g = gen(seed)
    x0, noise = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    t = torch.randint(1, T + 1, (b,), generator=g)
    x = D.q_sample(x0, t, noise)
    assert x.shape == (b, d) and finite(x)
    refused(D.q_sample, x0, torch.full((b,), T + 1 + where), noise, names=("t",))
    refused(D.q_sample, x0, torch.zeros(b, dtype=torch.long), noise, names=("t",))
    refused(D.q_sample, x0, t.float() + 0.5, noise, names=("t",))
    refused(D.q_sample, x0, t, noise[:, :1].expand(b, d + 1), names=("x0 and noise",))
    refused(D.q_sample, x0.long(), t, noise.long(), names=("x0",))
    refused(diffusion.linear_betas, T, 0.5, 2.0, names=("end",))
    refused(diffusion.spaced_timesteps, T, T + 1 + where, names=("n_steps",))
    abar = D.alphas_bar[t - 1].reshape(b, 1).float()
    assert torch.allclose(diffusion.predict_x0(x, diffusion.predict_eps(x, x0, abar), abar),
                          x0, atol=1e-3 / float(abar.min().sqrt()))
    refused(diffusion.predict_x0, x, noise[:, :1].expand(b, d + 1), abar, names=("x_t and eps",))
    refused(diffusion.predict_x0, x, noise, 0.0, names=("alpha_bar",))
    refused(diffusion.predict_eps, x, x0, 1.0, names=("alpha_bar",))


# --- compare and metrics ----------------------------------------------------------------------
finite_values = st.floats(-1e6, 1e6, allow_nan=False)


@SETTINGS
@given(a=st.lists(finite_values, min_size=2, max_size=20), data=st.data(),
       bad=st.sampled_from([NAN, INF, -INF]))
def test_compare_gives_finite_verdicts_and_refuses_non_finite_units(a, data, bad):
    b = data.draw(st.lists(finite_values, min_size=len(a), max_size=len(a)))
    c = compare.paired(a, b)
    assert math.isfinite(c.diff) and math.isfinite(c.se) and c.se >= 0 and c.n == len(a)
    w = compare.welch(a, b)
    assert math.isfinite(w.diff) and w.n == 2 * len(a)
    assert c.verdict in {c.verdict} and isinstance(c.words(), str)
    i = data.draw(st.integers(0, len(a) - 1))
    spoiled = [*a[:i], bad, *a[i + 1:]]
    refused(compare.paired, spoiled, b, names=("a",))
    refused(compare.welch, a, spoiled, names=("b",))
    refused(compare.against_noise, 0.0, spoiled, names=("redraws",))
    refused(compare.paired, a, b[:-1] or [0.0, 0.0, 0.0], names=("a and b", "same"))
    refused(compare.compare, 0.1, 0.1, 0, names=("n",))
    refused(compare.compare, str(a[0]), 0.1, 5, names=("diff",))
    refused(compare.compare, torch.tensor(a), 0.1, 5, names=("diff",))
    refused(compare.welch_df, -1.0 - abs(a[0]), len(a), 1.0, len(a), names=("var_a",))


@SETTINGS
@given(n=st.integers(3, 20), d=st.integers(1, 4), seed=seeds, where=st.integers(0, 999))
def test_metrics_frechet_and_auroc_are_finite_and_refuse_nan(n, d, seed, where):
    g = gen(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n + 1, d, generator=g, dtype=torch.float64) + 1
    fd = metrics.frechet_distance(a, b)
    assert math.isfinite(fd) and fd >= -1e-6
    refused(metrics.frechet_distance, with_nan(a, where), b, names=("a",))
    refused(metrics.frechet_distance, a, b[:, :1].expand(n + 1, d + 1),
            names=("same d",))
    scores = torch.rand(n, generator=g)
    labels = torch.arange(n) % 2
    auc = metrics.auroc(scores, labels)
    assert 0.0 <= auc <= 1.0
    refused(metrics.auroc, with_nan(scores, where), labels, names=("scores",))
    refused(metrics.auroc, scores, labels[:-1], names=("size",))
    ref = torch.rand(n + 2, 1, d + 1, d + 1, generator=g)
    assert metrics.knn_labels(torch.rand(n, 1, d + 1, d + 1, generator=g), ref,
                              torch.arange(n + 2) % 3, k=3).shape == (n,)
    refused(metrics.knn_labels, torch.rand(n, 1, d + 2, d + 1), ref, torch.arange(n + 2) % 3,
            names=("x and reference",))


# --- memory -------------------------------------------------------------------------------------
@SETTINGS
@given(n=st.integers(0, 40), size=st.integers(1, 50), d=widths)
def test_memory_map_chunks_equals_one_call_and_checks_its_rows(n, size, d):
    slices = memory.chunk_slices(n, size)
    assert sum(s.stop - s.start for s in slices) == n
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:], strict=False))
    x = torch.arange(n * d, dtype=torch.float32).reshape(n, d)
    old = memory.MAX_IMAGES
    memory.MAX_IMAGES = size
    try:
        if n:
            out = memory.map_chunks(lambda v: v * 2 + 1, x)
            assert torch.equal(out, x * 2 + 1)
            refused(memory.map_chunks, lambda v: v.sum(0, keepdim=True), x
                    if n > 1 else x.expand(2, d), names=("row",))
        refused(memory.map_chunks, lambda v, w: v, x, torch.zeros(n + 1, d),
                names=("same length",))
    finally:
        memory.MAX_IMAGES = old
    refused(memory.chunk_slices, n, 1 - size, names=("size",))
    refused(memory.rows_per_call, torch.tensor(float(n)), names=("0-dim",))
    refused(memory.map_chunks, lambda v: v, x.tolist() or [1.0], names=("torch tensor",))
