"""The explorers on the book's web page, which has no kernel: their states, computed here.

Each function returns what one explorer needs in the browser (a JSON-ready dict): its
controls (the ipywidgets' ranges and steps) and, for every position of them, the numbers
the notebook's widget prints, computed by the same functions (`plot_fit`'s quadrature,
`elbo_terms`, `pinned_gap`, the diffusion schedules and ODE solvers). What the page computes
itself is only closed-form drawing (a Gaussian density, x_t = sqrt(alpha_bar) x_0 +
sqrt(1 - alpha_bar) eps), held to Python by tests/test_browser.py. The solver explorers of
chapters 13 and 15 compute their errors over the chapter's own points (those of its table or
printout, so the page and the chapter agree where their step counts meet) and ship only the
few they draw. Arrays travel as base64 of little-endian float64 (numbers shown) or float32
(points drawn): see `pack`.
The book's Sphinx extension (book/_ext/live_explorers.py) calls these at build time.

Every size a caller passes (slider positions, grid points, samples, points, step counts) is
bounded, generously above the chapters' own, and checked before anything is computed: past
the bounds below a state cannot be drawn on a page, or ended in a memory error naming no
argument (or in minutes of computing first). Each function's docstring says its bounds.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import distributions as D

from . import diffusion as dm
from . import fewstep, sde
from .affine_vae import pinned_gap
from .explorers import pinned_samples
from .kl import gaussian_mixture_1d, kl_mvn, kl_quadrature
from .run import checks
from .run.checkpoint import replace_file as _replace
from .toy import GaussianMixture, LinearGaussian, diffused_score

F64 = torch.float64

# The bounds on the sizes a caller passes (the chapters' own in the comments).
MAX_POSITIONS = 10_001        # a slider's positions (chapter 8's step slider: 1,001)
MAX_KL_GRID = 40_001          # kl_page's quadrature points (chapter 2: 4,001)
MAX_COMPONENTS = 100          # kl_page's mixture components (chapter 2: 2)
MAX_ELBO_DIM = 1_000          # elbo_page's data dimension D (chapter 3: 2)
PINNED_SIGMA = (0.05, 100.0)  # pinned_page's sigma (chapter 5: 1.5)
MAX_PINNED_SAMPLES = 200_000  # pinned_page's samples a histogram (chapter 5: 20,000)
MAX_BINS = 1_000              # pinned_page's histogram bins (chapter 5: 80)
MAX_FORWARD_T = 10_000        # forward_page's chain steps (chapter 8: 1,000)
MAX_FORWARD_POINTS = 10_000   # forward_page's points drawn (chapter 8: 500)
MAX_SOLVER_POINTS = 20_000    # the solver pages' points (chapters 13 and 15: 2,000)
MAX_DRAWN = 10_000            # the solver pages' ends drawn (300)
MAX_PATHS = 200               # the solver pages' paths drawn (40)
MAX_STEP_COUNTS = 100         # the solver pages' step counts, the slider's positions (15, 14)
MAX_STEPS_SUM = 5_000         # their sum, the steps each solver runs (235, 230)


PACK_DTYPES = {"f64": "<f8", "f32": "<f4", "f16": "<f2", "u8": "u1"}


def pack(a, dtype: str = "f64") -> dict:
    """An array as {"shape", dtype: base64 of its little-endian bytes} (dtype f64, f32,
    f16: half precision for network weights, which the page widens to float32, or u8:
    grey images, 0..255)."""
    code = PACK_DTYPES[checks.one_of("dtype", dtype, tuple(PACK_DTYPES))]
    if torch.is_tensor(a):
        a = a.detach().cpu().numpy()  # a tensor that requires grad, or on a GPU, too
    elif not isinstance(a, np.ndarray):  # a list: None, a string, a ragged list refused
        a = checks.numeric("a", a, dtype=torch.float64).numpy()
    if dtype == "u8" and a.dtype != np.uint8 and a.size and not (0 <= a.min() <= a.max()
                                                                  <= 255):
        raise checks.ArgumentError(f"a must hold grey levels 0..255 for dtype 'u8', got "
                                   f"values in [{a.min():g}, {a.max():g}]: pass images in "
                                   "[0, 1] through 255 * x, rounded")
    arr = np.ascontiguousarray(np.asarray(a, dtype=code))
    return {"shape": list(arr.shape), dtype: base64.b64encode(arr.tobytes()).decode()}


def slider_values(lo: float, hi: float, step: float) -> list[float]:
    """The positions of a slider from lo to hi by step, as ipywidgets has them: lo <= hi
    and step > 0, finite, and at most MAX_POSITIONS = 10,001 positions (the chapters'
    longest slider, chapter 8's steps 0..1000, has 1,001)."""
    a = checks.real("lo", lo)
    b, h = checks.real("hi", hi, low=a), checks.positive("step", step)
    span = (b - a) / h  # inf when hi - lo overflows or step is subnormal
    n = round(span) + 1 if math.isfinite(span) else math.inf
    if n > MAX_POSITIONS:
        raise checks.ArgumentError(
            f"a slider from lo = {a:g} to hi = {b:g} by step = {h:g} has "
            f"{n:,} positions, more than {MAX_POSITIONS:,}: a slider is some hundreds of "
            "pixels wide, so past some thousands of positions it cannot be shown on a page "
            "(and every position's numbers travel in the page's state); take a larger step")
    return [round(lo + k * step, 10) for k in range(n)]


def control(name, label, lo, hi, step, value, fmt=2, play=False, equation=None) -> dict:
    """A slider from lo to hi by step (`slider_values`, at most 10,001 positions) that starts
    at value, one of its positions (the page would start another at its first), shown with
    fmt digits (0 to 15); play: the page gives it a play/pause button (a step slider);
    equation: the label of the chapter's equation it moves, which the page links to."""
    values = slider_values(lo, hi, step)
    start = checks.real(f"value (where the slider {name} starts)", value)
    if not any(abs(v - start) < 1e-9 for v in values):  # the page's own test
        raise checks.ArgumentError(f"value = {start:g} is not a position of the slider {name} "
                                   f"(from {lo:g} to {hi:g} by {step:g}): the page would "
                                   "start it at its first position")
    return {"name": name, "label": label, "values": values, "value": value,
            "digits": checks.count("fmt (the digits shown)", fmt, minimum=0, maximum=15),
            "play": bool(play), **({"equation": equation} if equation else {})}


def chapter8_mixture() -> GaussianMixture:
    """Chapter 8's five-component mixture on a circle (chapters 13 and 15 reuse it)."""
    angles = torch.arange(5, dtype=F64) * 2 * math.pi / 5 + math.pi / 2
    return GaussianMixture(weights=[0.35, 0.25, 0.18, 0.12, 0.10],
                           means=torch.stack([angles.cos(), angles.sin()], 1), stds=0.12)


# --- chapters 2, 3, 5: the ELBO chapters' explorers ------------------------------------------
def _kl_sizes(weights, means, stds, lim, n_grid):
    """kl_page's arguments, checked before anything is computed (see `kl_page`)."""
    weights, means, stds = (checks.sequence(name, v, eg) for name, v, eg in (
        ("weights", weights, "(0.5, 0.5)"), ("means", means, "(-2.5, 2.5)"),
        ("stds", stds, "(0.7, 0.7)")))
    k = checks.size("weights (the mixture's components)", len(weights), MAX_COMPONENTS,
                    "a density of more bumps is beyond what the explorer's drawing of 241 "
                    "points shows (the chapter's has 2)")
    if not len(means) == len(stds) == k:
        raise checks.ArgumentError(f"weights, means and stds must have one length (one "
                                   f"entry a component), got {k}, {len(means)} and "
                                   f"{len(stds)}")
    # each a number of its kind: torch.distributions' own check named no argument
    w = [checks.real("every weight in weights", v, low=0.0) for v in weights]
    if not sum(w) > 0:
        raise checks.ArgumentError(f"weights must not all be 0 (the mixture's weights, "
                                   f"normalized by their sum), got {w}")
    for v in means:
        checks.real("every mean in means", v)
    for v in stds:
        checks.positive("every std in stds", v)
    lim = checks.positive("lim (the quadrature runs over [-lim, lim])", lim)
    n_grid = checks.size("n_grid (the quadrature's points)", n_grid, MAX_KL_GRID,
                         "every one of the state's 12,719 pairs of integrals runs over the "
                         "grid (the chapter's 4,001 take some seconds, 40,001 a minute or "
                         "more)", minimum=2)
    return weights, means, stds, lim, n_grid


def kl_page(weights=(0.5, 0.5), means=(-2.5, 2.5), stds=(0.7, 0.7), lim: float = 12,
            n_grid: int = 4001) -> dict:
    """Chapter 2: KL(p||q) and KL(q||p) (as `widgets.plot_fit` computes them, quadrature on
    the chapter's grid) for q = N(mean, std^2) at every slider position.

    p: a 1-D mixture of 1 to MAX_COMPONENTS = 100 components (weights, means, stds of one
    length; the chapter's has 2). The quadrature: n_grid points on [-lim, lim], 2 to
    MAX_KL_GRID = 40,001 (the chapter's 4,001; the state's 12,719 pairs of integrals take
    some seconds on it, and a minute or more on 40,001)."""
    weights, means, stds, lim, n_grid = _kl_sizes(weights, means, stds, lim, n_grid)
    p = gaussian_mixture_1d(weights, means, stds)
    grid = torch.linspace(-lim, lim, n_grid, dtype=F64)
    mus = torch.tensor(slider_values(-4, 4, 0.05), dtype=F64)
    sds = slider_values(0.1, 4, 0.05)
    fwd = torch.empty(len(sds), len(mus), dtype=F64)
    rev = torch.empty_like(fwd)
    for i, s in enumerate(sds):
        q = D.Normal(mus[:, None], torch.tensor(s, dtype=F64))
        fwd[i] = kl_quadrature(p.log_prob, q.log_prob, grid)
        rev[i] = kl_quadrature(q.log_prob, p.log_prob, grid)
    x = torch.linspace(-6, 6, 241, dtype=F64)
    return {"kind": "kl",
            "controls": [control("mu", "mean of q", -4, 4, 0.05, 0.0,
                                 equation="ch2-kl-discrete"),
                         control("sigma", "std of q", 0.1, 4, 0.05, 1.0,
                                 equation="ch2-kl-discrete")],
            "x": pack(x), "p": pack(p.log_prob(x).exp()),
            "fwd": pack(fwd), "rev": pack(rev)}


def elbo_page(W, b, sigma, x) -> dict:
    """Chapter 3: the terms of `explorers.elbo_terms` (the same calls, batched) of the
    linear Gaussian model at every (mean, std) of q; the page draws the three Gaussian
    densities (closed form) and the bars. W: (D, 1), a one-dimensional latent (the sliders
    move q's one mean and std), with D at most MAX_ELBO_DIM = 1,000 (the chapter's 2)."""
    W = checks.numeric("W", W, dtype=F64)
    if W.dim() == 2:
        checks.size("D (the rows of W, the data's dimension)", W.shape[0], MAX_ELBO_DIM,
                    "the state's 6,050 positions of q each hold a (D,) reconstruction and "
                    "the marginal a (D, D) covariance (the chapter's D is 2)")
        if W.shape[1] != 1:
            raise checks.ArgumentError(f"W must be (D, 1), a one-dimensional latent (the "
                                       f"sliders move q's one mean and one std), got "
                                       f"{tuple(W.shape)}")
    model = LinearGaussian(W, checks.numeric("b", b, dtype=F64), sigma)
    x = checks.numeric("x", x, dtype=F64)
    if x.numel() != W.shape[0] or not checks.all_finite(x):
        raise checks.ArgumentError(f"x must be one data point of D = {W.shape[0]} finite "
                                   f"numbers (the rows of W), got shape {tuple(x.shape)}"
                                   + ("" if x.numel() != W.shape[0] else " with NaN or inf"))
    means, stds = slider_values(-3, 3, 0.05), slider_values(0.05, 2.5, 0.05)
    M, S = torch.meshgrid(torch.tensor(means, dtype=F64), torch.tensor(stds, dtype=F64),
                          indexing="xy")  # (len(stds), len(means))
    m, cov = M.reshape(-1, 1), S.reshape(-1, 1, 1) ** 2
    post_m, post_cov = model.posterior(x.reshape(1, -1))
    elbo = model.elbo_gaussian(x.expand(len(m), -1), m, cov)
    kl_prior = kl_mvn(m, cov, torch.zeros_like(m), torch.eye(1, dtype=F64))
    terms = {"log_px": model.log_marginal(x.reshape(1, -1)).expand(len(m)), "elbo": elbo,
             "gap": kl_mvn(m, cov, post_m, post_cov), "reconstruction": elbo + kl_prior,
             "kl_prior": kl_prior}  # explorers.elbo_terms for every position at once
    pm, pc = model.posterior(x.reshape(1, -1))
    return {"kind": "elbo",
            "controls": [control("mean", "mean of q", -3, 3, 0.05, 0.0,
                                 equation="ch3-identity"),
                         control("std", "std of q", 0.05, 2.5, 0.05, 1.0,
                                 equation="ch3-identity")],
            "posterior": [pm[0, 0].item(), pc[0, 0].sqrt().item()],
            "terms": {k: pack(v.reshape(M.shape)) for k, v in terms.items()}}


def pinned_page(mu: float, sigma: float, d: int, n: int = 20_000, seed: int = 0,
                bins: int = 80) -> dict:
    """Chapter 5: the pinned model's gap at every (t, s) (`pinned_gap`), the log10 gap map
    of `plot_pinned`'s left panel, and for every s the histogram of `pinned_samples` (the
    right panel: the samples depend on s only).

    The bounds (the chapter's values in brackets): sigma in [0.05, 100] [1.5] (the decoder
    std's slider runs from 0.05 to 1.6 sigma by 0.05: 3,201 positions at sigma = 100, each
    with a histogram of its own); n, the samples a histogram, 2 to MAX_PINNED_SAMPLES =
    200,000 [20,000]; bins 1 to MAX_BINS = 1,000 [80]; d, the data's dimension, >= 1 [2]."""
    mu = checks.real("mu", mu)
    lo, hi = PINNED_SIGMA
    sigma = checks.real("sigma (the data's std)", sigma, low=lo)
    if sigma > hi:
        raise checks.ArgumentError(
            f"sigma must be at most {hi:g}, got {sigma:g}: the decoder std's slider runs "
            f"from 0.05 to 1.6 sigma by 0.05, {round(1.6 * sigma / 0.05):,} positions, each "
            "with a histogram of n samples of its own (the chapter's sigma is 1.5)")
    d = checks.count("d (the data's dimension)", d)
    n = checks.size("n (the samples a histogram)", n, MAX_PINNED_SAMPLES,
                    "each of the decoder std's slider positions draws its own n samples "
                    "(the chapter's 20,000 give smooth histograms)", minimum=2)
    bins = checks.size("bins", bins, MAX_BINS, "the page draws each histogram's bars in a "
                       "panel some hundreds of pixels wide (the chapter's 80)")
    seed = checks.seed("seed", seed)
    ts, ss = slider_values(0.05, 1.6, 0.05), slider_values(0.05, 1.6 * sigma, 0.05)
    T, S = torch.meshgrid(torch.tensor(ts, dtype=F64), torch.tensor(ss, dtype=F64),
                          indexing="xy")
    map_t = torch.linspace(0.05, 2.0, 120, dtype=F64)
    map_s = torch.linspace(0.05, 1.8 * sigma, 120, dtype=F64)
    MT, MS = torch.meshgrid(map_t, map_s, indexing="xy")
    hists, edges, var = [], [], []
    for s in ss:
        xs = pinned_samples(mu, sigma, s, n, torch.Generator().manual_seed(seed)).numpy()
        h, e = np.histogram(xs, bins=bins, density=True)
        hists.append(h)
        edges.append(e)
        var.append(float(torch.as_tensor(xs).var()))
    import matplotlib

    viridis = matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3]
    return {"kind": "pinned", "mu": mu, "sigma": sigma,
            "controls": [control("t", "encoder std t", 0.05, 1.6, 0.05, 1.0,
                                 equation="ch5-pinned-gap"),
                         control("s", "decoder std s", 0.05, 1.6 * sigma, 0.05,
                                 round(round(sigma / 0.05) * 0.05, 10),
                                 equation="ch5-pinned-gap")],
            "gap": pack(pinned_gap(d, sigma, T, S)),
            "map": pack(torch.log10(pinned_gap(d, sigma, MT, MS)), "f32"),
            "map_t": [map_t[0].item(), map_t[-1].item()],
            "map_s": [map_s[0].item(), map_s[-1].item()],
            "viridis": pack(viridis, "f32"),
            "hist": pack(np.stack(hists), "f32"), "edges": pack(np.stack(edges), "f32"),
            "var": pack(var)}


# --- chapters 8, 13, 15: the diffusion chapters' explorers ------------------------------------
def forward_page(T: int = 1000, n: int = 500, seed: int = 2) -> dict:
    """Chapter 8: alpha_bar_t of the linear and cosine schedules (`Diffusion.alphas_bar`),
    and n points x_0 of the mixture with fixed noise eps; the page draws
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (`Diffusion.q_sample`). T at
    most MAX_FORWARD_T = 10,000 (the chapter's 1,000; its slider has T + 1 positions), n at
    most MAX_FORWARD_POINTS = 10,000 (the chapter's 500, each drawn at every move); the
    slider starts at t = 100, or at T when T < 100."""
    T = checks.size("T (the chain's steps)", T, MAX_FORWARD_T, "the step slider has T + 1 "
                    f"positions, and a slider of more than {MAX_POSITIONS:,} cannot be shown "
                    "on a page (the chapter's T is 1,000)")
    n = checks.size("n (the points drawn)", n, MAX_FORWARD_POINTS, "the page draws each "
                    "of them at every move of the slider (the chapter's 500)")
    seed = checks.seed("seed", seed)
    mix = chapter8_mixture()
    _, x0 = mix.sample(n, generator=torch.Generator().manual_seed(seed))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 1),
                      dtype=F64)
    abar = {name: dm.Diffusion(betas(T)).alphas_bar.to(F64)
            for name, betas in [("linear", dm.linear_betas), ("cosine", dm.cosine_betas)]}
    return {"kind": "forward", "T": T,
            "controls": [control("t", "step t", 0, T, 1, min(100, T), 0, play=True,
                                 equation="ch8-forward")],
            "schedules": list(abar), "alpha_bar": {k: pack(v) for k, v in abar.items()},
            "x0": pack(x0, "f32"), "eps": pack(eps, "f32"),
            "means": mix.means.tolist()}


class _Recorder:
    """A field that keeps the states it is evaluated at, every `every`-th call (the state
    at the start of each step: Heun evaluates twice a step, DDIM and Euler once)."""

    def __init__(self, field, every: int, keep: int):
        self.field, self.every, self.keep, self.calls, self.states = field, every, keep, 0, []

    def __call__(self, x, t):
        if self.calls % self.every == 0:
            self.states.append(x[:self.keep])
        self.calls += 1
        return self.field(x, t)


def _solve_and_trace(solve, field, per_step: int, n: int, x1: torch.Tensor, n_paths: int):
    """solve(field, x1, n) -> the ends (N, 2), and the paths of the first n_paths points,
    (n + 1, n_paths, 2): the state at the start of each step, then the end."""
    rec = _Recorder(field, per_step, n_paths)
    x = solve(rec, x1, n)
    return x, torch.stack([*rec.states, x[:n_paths]])


def solver_errors(x: torch.Tensor, ref: torch.Tensor, means: torch.Tensor
                  ) -> tuple[float, float, int]:
    """The chapters' summaries of the distances from the ends x (N, 2) to the reference
    (N, 2): their root mean square, their median (torch's: the lower middle value when N is
    even, as the chapters take it) and how many points end nearest another mode (means
    (K, 2)) than their reference. Both summaries, since a few points that flip to another
    mode dominate the RMS and leave the median alone."""
    fix = "points (N, 2) of the plane"
    checks.points("x", x, fix)
    checks.points("means", means, fix)
    if tuple(checks.points("ref", ref, fix).shape) != tuple(x.shape) or \
            means.shape[1] != x.shape[1]:
        raise checks.ArgumentError(f"ref must be one reference point per end of x, "
                                   f"{tuple(x.shape)}, and means points of its width, got "
                                   f"ref {tuple(ref.shape)} and means {tuple(means.shape)}")
    d2 = (x - ref).pow(2).sum(1)  # (N,)
    other = torch.cdist(x, means).argmin(1) != torch.cdist(ref, means).argmin(1)
    return d2.mean().sqrt().item(), d2.sqrt().median().item(), int(other.sum())


def _solver_page(kind, solvers: dict, steps: list[int], x1: torch.Tensor, ref: torch.Tensor,
                 means: torch.Tensor, labels: dict, n_draw: int, n_paths: int) -> dict:
    """Errors, ends and paths of the solvers on the grid of n steps from t = 1 to 0:
    solvers[name] = (solve(field, x, n) -> ends, field, evaluations a step). The errors
    (`solver_errors`) are over all of x1 (N, 2), as the chapter's own table has them; the
    page draws only the first n_draw ends and the paths of the first n_paths points (the
    page's weight grows with what is drawn, not with N). labels: ref_label, ref_short
    (the reference, in words) and about (the N points, in words)."""
    errs, ends, paths = {}, {}, {}
    for name, (solve, field, per_step) in solvers.items():
        runs = [_solve_and_trace(solve, field, per_step, n, x1, n_paths) for n in steps]
        errs[name] = [solver_errors(x, ref, means) for x, _ in runs]
        ends[name] = pack(torch.stack([x[:n_draw] for x, _ in runs]), "f32")
        paths[name] = pack(torch.cat([p for _, p in runs]), "f32")
    return {"kind": kind, "steps": steps, "solvers": list(solvers),
            "controls": [{"name": "n", "label": "steps", "values": steps,
                          "value": steps[len(steps) // 2], "digits": 0, "play": True,
                          "equation": {"solvers": "ch13-pf-ode",
                                       "fewstep": "ch15-one-step"}[kind]}],
            "x1": pack(x1[:n_draw], "f32"), "ref": pack(ref[:n_draw], "f32"),
            "ends": ends, "paths": paths,
            "rms": {k: pack([e[0] for e in v]) for k, v in errs.items()},
            "median": {k: pack([e[1] for e in v]) for k, v in errs.items()},
            "flips": {k: [e[2] for e in v] for k, v in errs.items()},
            "points": {"n": len(x1), "drawn": min(n_draw, len(x1)), "about": labels["about"]},
            "means": means.tolist(), "ref_label": labels["ref_label"],
            "ref_short": labels["ref_short"],
            "evaluations": {k: v[2] for k, v in solvers.items()}}


# The slider's step counts: chapter 13's table has 5, 10, 20 and 50 of them (and 100 to 500,
# beyond the explorer), chapter 15's printout 1 to 64 evaluations.
SOLVER_STEPS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25, 32, 40, 50)
FEWSTEP_STEPS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64)


def _solver_sizes(n, n_draw, n_paths, steps) -> tuple[int, int, int, list[int]]:
    """The solver pages' sizes, checked before anything is solved (see `solvers_page`)."""
    n = checks.size("n (the points solved)", n, MAX_SOLVER_POINTS, "the reference and "
                    "every solver run on all of them (the chapters' 2,000 take some seconds)")
    n_draw = checks.size("n_draw (the ends drawn)", n_draw, MAX_DRAWN, "the page draws "
                         "each of them at every move of the slider (the chapters' 300)")
    n_paths = checks.size("n_paths (the paths drawn)", n_paths, MAX_PATHS, "each path "
                          "travels in the page's state at every step count (the chapters' "
                          "40)")
    steps = checks.sequence("steps", steps, "(1, 2, 5, 10)")
    checks.size("steps (the step counts, the slider's positions)", len(steps),
                MAX_STEP_COUNTS, "each is a run of every solver on all the points (the "
                "chapters' sliders have 15 and 14)")
    steps = [checks.count("every step count in steps", k) for k in steps]
    if any(b <= a for a, b in zip(steps[:-1], steps[1:], strict=True)):
        raise checks.ArgumentError(f"steps must increase (the slider's positions in order), "
                                   f"got {steps}")
    if sum(steps) > MAX_STEPS_SUM:
        raise checks.ArgumentError(
            f"steps must sum to at most {MAX_STEPS_SUM:,} steps, got {sum(steps):,}: each "
            "solver runs every count on all the points, and their paths travel in the "
            "page's state (the chapters' step counts sum to 235 and 230)")
    return n, n_draw, n_paths, steps


def _t_grid(n: int) -> list[float]:
    """Chapter 13's grid of n steps, linspace(1, 0, n + 1) (float32 times, as it has them)."""
    return torch.linspace(1, 0, n + 1).tolist()


def solvers_page(n: int = 2_000, seed: int = 4, n_draw: int = 300, n_paths: int = 40,
                 steps=SOLVER_STEPS) -> dict:
    """Chapter 13: DDIM, Euler and Heun on the mixture's probability-flow ODE
    (`sde.ddim`, `sde.euler`, `sde.heun` with the exact score) from t = 1 to 0, against the
    chapter's reference (Heun, 4,000 steps), from the points of its table: n = 2,000
    points of N(0, I) drawn from seed 4, so that its numbers are the table's.

    The bounds, checked before anything is solved (the chapter's values in brackets): n
    at most MAX_SOLVER_POINTS = 20,000 [2,000]; n_draw at most MAX_DRAWN = 10,000 [300];
    n_paths at most MAX_PATHS = 200 [40]; steps, increasing step counts, at most
    MAX_STEP_COUNTS = 100 of them [15] summing to at most MAX_STEPS_SUM = 5,000 [235]."""
    n, n_draw, n_paths, steps = _solver_sizes(n, n_draw, n_paths, steps)
    seed = checks.seed("seed", seed)
    mix, vp = chapter8_mixture(), sde.VPSDE()

    def score(x, t):
        return diffused_score(mix, x, vp.alpha_bar(t))

    def eps(x, t):
        return -vp.sigma(t) * score(x, t)

    ode = vp.ode_drift(score)
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    ref = sde.heun(ode, x_T, _t_grid(4000))
    solvers = {"DDIM": (lambda f, x, k: sde.ddim(f, vp, x, _t_grid(k)), eps, 1),
               "Euler": (lambda f, x, k: sde.euler(f, x, _t_grid(k)), ode, 1),
               "Heun": (lambda f, x, k: sde.heun(f, x, _t_grid(k)), ode, 2)}
    labels = {"ref_label": "the reference (Heun, 4,000 steps)", "ref_short": "reference",
              "about": f"the {n:,} points of the chapter's table (N(0, I), seed {seed})"}
    return _solver_page("solvers", solvers, list(steps), x_T, ref, mix.means.to(F64), labels,
                        n_draw, n_paths)


def _ode_sample(solver: str):
    """solve(field, x1, n) for `_solver_page`: chapter 15's `fewstep.ode_sample`."""
    return lambda field, x1, n: fewstep.ode_sample(field, x1, n, solver=solver)


def fewstep_page(n: int = 2_000, seed: int = 1, n_draw: int = 300, n_paths: int = 40,
                 steps=FEWSTEP_STEPS) -> dict:
    """Chapter 15: Euler and Heun (`fewstep.ode_sample`, as the chapter calls it) on the
    linear path's exact velocity (`fewstep.MixturePath.velocity`) from tau = 1 to 0,
    against the exact flow map (`fewstep.ode_map`, DOP853), from the chapter's x1: n points
    of N(0, I) from seed 1 (its N_TOY: 2,000 in the cpu profile its stored run used).
    The bounds of `solvers_page` (the chapter's steps: 14 counts summing to 230)."""
    n, n_draw, n_paths, steps = _solver_sizes(n, n_draw, n_paths, steps)
    seed = checks.seed("seed", seed)
    mix = chapter8_mixture()
    path = fewstep.MixturePath(mix)
    x1 = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    ref = fewstep.ode_map(path.velocity, x1)
    solvers = {"Euler": (_ode_sample("euler"), path.velocity, 1),
               "Heun": (_ode_sample("heun"), path.velocity, 2)}
    labels = {"ref_label": "the exact map", "ref_short": "exact map",
              "about": f"the chapter's x1, {n:,} points of N(0, I) (seed {seed})"}
    return _solver_page("fewstep", solvers, list(steps), x1, ref, mix.means.to(F64), labels,
                        n_draw, n_paths)


# --- chapter 9: the reverse chain of the trained network ----------------------------------------
MAX_FRAMES, MAX_CHAINS = 201, 12  # chain_page's steps kept and images a step (chapter 9: 51, 6)


def _profile_name(profile) -> str:
    """The run's profile name, of a Profile or given as it is (a store names it in its page)."""
    profile = getattr(profile, "name", profile)
    if not isinstance(profile, str):
        raise checks.ArgumentError(f"profile must be the run's profile (its name, e.g. "
                                   f"'cpu'), got {checks._got(profile)}")
    return profile


def store_chain(name: str, frames: dict, snr, profile: str,
                equation: str | None = "ch9-ancestral") -> Path | None:
    """A reverse chain (chapters 9 and 21) into $BOOK_EXPLORERS/name (`_store_path`; nothing
    elsewhere), for `chain_page`. frames: {t: (x_t (S, 1, 28, 28), x0_pred (S, 1, 28, 28))}
    in [-1, 1], the kept steps from T down to 0 (at t = 0 both are the samples); snr: (T,)
    the schedule's alpha_bar_t / (1 - alpha_bar_t), t = 1..T; profile: the run's profile,
    which the page names; equation: the label of the page's equation the step's control
    moves, or None where the page has none. Images are kept as 8-bit grey levels. Returns
    the path written, or None."""
    if not isinstance(frames, dict) or not frames:
        raise checks.ArgumentError(f"frames must be a dict {{t: (x_t, x0_pred)}} of the kept "
                                   f"steps, at least one, got {checks._got(frames)}")
    steps = sorted((checks.count("every step t in frames", t, minimum=0) for t in frames),
                   reverse=True)
    for t in frames:
        if not isinstance(frames[t], (tuple, list)) or len(frames[t]) != 2:
            raise checks.ArgumentError(f"frames[{t!r}] must be a pair (x_t, x0_pred) of "
                                       f"images (S, 1, 28, 28), got {checks._got(frames[t])}")
    _one_shape([a for t in frames for a in frames[t]],
               "every kept step needs x_t and x0_pred of one shape (the same images)")
    frames = {checks.as_int(t): v for t, v in frames.items()}
    snr = checks.numeric("snr", snr, dtype=torch.float64).numpy(force=True)
    profile = _profile_name(profile)
    if equation is not None and (not isinstance(equation, str) or not equation.strip()
                                 or any(c.isspace() for c in equation)):
        raise checks.ArgumentError(f"equation must be an equation's label such as "
                                   f"'ch9-ancestral', or None, got {equation!r}")
    return _store(name, chain_page, "store_chain", t=np.array(steps),
                  snr=snr.astype("<f8"), profile=profile, equation=equation or "",
                  x_t=np.stack([_grey((torch.as_tensor(frames[t][0]).float() + 1) / 2)
                                for t in steps]),
                  x0=np.stack([_grey((torch.as_tensor(frames[t][1]).float() + 1) / 2)
                               for t in steps]))


def chain_page(stored) -> dict:
    """Chapters 9 and 21: a trained network's reverse chain (stored: an .npz written by
    `store_chain`), x_t and the network's guess of x_0 at each kept step, and the
    schedule's SNR; the page looks them up. Sizes: at most MAX_FRAMES = 201 kept steps and
    MAX_CHAINS = 12 images a step (the chapter's 51 and 6)."""
    a = _npz(stored, "store_chain", ("t", "snr", "profile", "x_t", "x0"))
    if a["x_t"].ndim < 2:
        raise checks.ArgumentError(f"x_t must be (steps, images, 1, 28, 28), got "
                                   f"{a['x_t'].shape}")
    frames, shown = a["x_t"].shape[:2]
    checks.size("the kept steps", frames, MAX_FRAMES, "one slider position each, every one "
                "with its images in the page", minimum=2)
    checks.size("the images a step", shown, MAX_CHAINS, "a few chains side by side")
    if a["x0"].shape != a["x_t"].shape or a["x_t"].shape[2:] != (1, 28, 28):
        raise checks.ArgumentError(f"x_t and x0 must both be (steps, images, 1, 28, 28), got "
                                   f"{a['x_t'].shape} and {a['x0'].shape}")
    if a["t"].shape != (frames,) or a["t"].dtype.kind not in "iu":
        raise checks.ArgumentError(f"the kept steps t must be {frames} whole numbers, one a "
                                   f"frame, got {a['t'].tolist()!r:.80}")
    if not (np.diff(a["t"]) < 0).all() or a["t"][-1] != 0:
        raise checks.ArgumentError(f"the kept steps must fall to 0, got {a['t'].tolist()}")
    if a["snr"].ndim != 1 or not len(a["snr"]) or a["snr"].dtype.kind != "f" or \
            not (np.isfinite(a["snr"]) & (a["snr"] > 0)).all():
        raise checks.ArgumentError(f"snr must be the schedule's (T,) signal-to-noise ratios, "
                                   f"finite and > 0, got shape {a['snr'].shape}")
    if a["profile"].dtype.kind != "U":
        raise checks.ArgumentError(f"profile must be the run's profile name, got "
                                   f"{a['profile']!r}")
    # chapter 9's file predates the field: its control moves chapter 9's equation
    equation = str(a["equation"]) if "equation" in a else "ch9-ancestral"
    step = {"name": "t", "label": "step t", "values": a["t"].tolist(),
            "value": int(a["t"][0]), "digits": 0, "play": True,  # from T down to 0
            **({"equation": equation} if equation else {})}
    return {"kind": "chain", "T": len(a["snr"]), "profile": str(a["profile"]),
            "controls": [step],
            "snr": pack(a["snr"]), "x_t": pack(a["x_t"], "u8"),
            "x0": pack(a["x0"], "u8")}


# --- chapter 12: completions of each method under each mask -------------------------------------
COMPLETION_NUMBERS = ("judge accuracy", "error, known", "error, missing", "spread",
                      "calls / image")  # chapter 12's table, in its order
MAX_METHODS, MAX_MASKS, MAX_SHOWN_DIGITS = 8, 8, 12  # the chapter's: 4, 5, 6


def store_completions(name: str, truth, masks: dict, completions: dict, numbers: dict,
                      n_digits: int) -> Path | None:
    """Chapter 12's completions into $BOOK_EXPLORERS/name (`_store_path`; nothing
    elsewhere), for `completions_page`. truth: (S, 28, 28) in [0, 1], the test digits shown;
    masks: {mask: (its description, (S, 28, 28) with 1 where a pixel is known)};
    completions: {(method, mask): (K, S, 28, 28) in [0, 1]}, every method under every mask;
    numbers: {(method, mask): the table's row in the order of COMPLETION_NUMBERS};
    n_digits: the test digits the numbers are over.
    Returns the path written, or None."""
    for name, value in (("masks", masks), ("completions", completions),
                        ("numbers", numbers)):
        if not isinstance(value, dict) or not value:
            raise checks.ArgumentError(f"{name} must be a dict, at least one entry, got "
                                       f"{checks._got(value)}")
    for key in (*completions, *numbers):
        if not isinstance(key, tuple) or len(key) != 2:
            raise checks.ArgumentError(f"completions and numbers must be keyed by (method, "
                                       f"mask) pairs, got the key {key!r}")
    for n, v in masks.items():
        if not isinstance(v, (tuple, list)) or len(v) != 2 or not isinstance(v[0], str):
            raise checks.ArgumentError(f"masks[{n!r}] must be a pair (its description, its "
                                       f"(S, 28, 28) known pixels), got {checks._got(v)}")
    n_digits = checks.count("n_digits (the test digits the numbers are over)", n_digits)
    methods = list(dict.fromkeys(m for m, _ in completions))
    names = list(masks)
    missing = [(m, n) for m in methods for n in names if (m, n) not in completions
               or (m, n) not in numbers]
    if missing:
        raise checks.ArgumentError(f"every method needs completions and numbers under every "
                                   f"mask; missing: {missing}")
    _one_shape(completions.values(), "every completion set needs one shape (K, S, 28, 28)")
    for m, n in numbers:  # a row of another length would reach numpy as a ragged array
        if len(numbers[m, n]) != len(COMPLETION_NUMBERS):
            raise checks.ArgumentError(
                f"numbers[{m!r}, {n!r}] must hold the table's {len(COMPLETION_NUMBERS)} "
                f"numbers {COMPLETION_NUMBERS}, in that order, got {len(numbers[m, n])}: "
                f"{list(numbers[m, n])}")
        checks.numeric(f"numbers[{m!r}, {n!r}]", list(numbers[m, n]), dtype=torch.float64)
    return _store(name, completions_page, "store_completions", methods=np.array(methods),
                  masks=np.array(names), descriptions=np.array([masks[n][0] for n in names]),
                  truth=_grey(checks.numeric("truth", truth)),
                  known=np.stack([np.asarray(masks[n][1]) > 0.5 for n in names]).astype("u1"),
                  completions=np.stack([np.stack([_grey(completions[m, n]) for n in names])
                                        for m in methods]),
                  numbers=np.array([[list(numbers[m, n]) for n in names] for m in methods],
                                   dtype=float),
                  n_digits=np.array(n_digits))


def completions_page(stored) -> dict:
    """Chapter 12: each method's completions of the first test digits under each mask, and
    the chapter's table (stored: an .npz written by `store_completions`); the page looks
    them up. Sizes: at most MAX_METHODS = 8 methods, MAX_MASKS = 8 masks and
    MAX_SHOWN_DIGITS = 12 digits (the chapter's 4, 5 and 6)."""
    a = _npz(stored, "store_completions", ("methods", "masks", "descriptions", "truth",
                                           "known", "completions", "numbers", "n_digits"))
    if a["completions"].shape[4:] != (28, 28) or a["completions"].ndim != 6:
        raise checks.ArgumentError(f"completions must be (methods, masks, K, S, 28, 28), got "
                                   f"{a['completions'].shape}")
    methods, masks, k, shown = a["completions"].shape[:4]
    checks.size("the methods", methods, MAX_METHODS, "one radio button each")
    checks.size("the masks", masks, MAX_MASKS, "one radio button each")
    checks.size("the digits shown", shown, MAX_SHOWN_DIGITS, "one slider position each, "
                "every one with its completions in the page")
    if a["numbers"].shape != (methods, masks, len(COMPLETION_NUMBERS)):
        raise checks.ArgumentError(f"numbers must be (methods, masks, "
                                   f"{len(COMPLETION_NUMBERS)}), got {a['numbers'].shape}")
    if a["truth"].shape != (shown, 28, 28) or a["known"].shape != (masks, shown, 28, 28):
        raise checks.ArgumentError(f"truth must be the {shown} digits shown (S, 28, 28) and "
                                   f"each mask's known pixels (S, 28, 28), got truth "
                                   f"{a['truth'].shape} and masks {a['known'].shape[1:]}")
    if a["n_digits"].shape != () or a["n_digits"].dtype.kind not in "iu" or \
            a["n_digits"] < 1:
        raise checks.ArgumentError(f"n_digits must be the number of test digits, >= 1, got "
                                   f"{a['n_digits']!r}")
    return {"kind": "completions", "methods": [str(m) for m in a["methods"]],
            "masks": [str(m) for m in a["masks"]],
            # "centre 14 x 14 square missing" as the text sets it, 14 × 14
            "descriptions": [re.sub(r"(\d) x (\d)", r"\1 × \2", str(d))
                             for d in a["descriptions"]],
            "controls": [control("digit", "test digit", 1, shown, 1, 1, fmt=0)],
            "number_names": list(COMPLETION_NUMBERS), "n_digits": int(a["n_digits"]),
            "completions_each": k, "numbers": pack(a["numbers"]),
            "truth": pack(a["truth"], "u8"), "known": pack(a["known"], "u8"),
            "completions": pack(a["completions"], "u8")}


# --- chapter 14: unmasking the exact toy in K steps ---------------------------------------------
def chapter14_toy():
    """Chapter 14's exact toy (`toy.BinaryTable`): five 3 x 3 stroke prototypes (a top
    bar, a vertical stroke, two diagonals, a cross) of weights 3, 2, 2, 1, 2, each pixel
    flipped with probability 0.1."""
    from .toy import BinaryTable

    prototypes = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 1, 0, 0, 1, 0],
                               [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 1, 0, 1, 0, 1, 0, 0],
                               [0, 1, 0, 1, 1, 1, 0, 1, 0]], dtype=F64)
    return BinaryTable.from_prototypes(prototypes, [3, 2, 2, 1, 2], flip=0.1)


def _unmasking_sizes(shown) -> int:
    """unmasking_page's size, checked before any law is computed."""
    return checks.size("shown (the likeliest images drawn)", shown, 32, "each is drawn as "
                       "a 3 x 3 tile beside the plots")


def unmasking_page(shown: int = 8) -> dict:
    """Chapter 14: the exact law of `masked.sample` on the chapter's toy with its exact
    denoiser (`masked.sampler_law`), in K = 1 to 9 steps of the linear schedule, in random
    and in confidence order: for each, KL(p || q_K) and the entropy of q_K (nats), and q_K
    itself over the 512 images; the page draws q_K against p and the `shown` images most
    likely under q_K (at most 32, the chapter has none). With K = 9 in random order q_K is
    p: one pixel a step from its exact conditional."""
    from . import masked as mk

    shown = _unmasking_sizes(shown)
    toy = chapter14_toy()
    p, steps = toy.probs, list(range(1, toy.D + 1))
    laws, numbers, counts = [], [], []
    for order in mk.ORDERS:
        for K in steps:
            q = mk.sampler_law(toy.denoiser, toy.D, K, order=order)
            kl = (p * (p.log() - q.log())).sum()  # q > 0: each pixel may take either value
            entropy = -(q[q > 0] * q[q > 0].log()).sum()
            laws.append(q)
            numbers.append([kl.item(), entropy.item()])
            counts.append(mk.reveal_counts(toy.D, K))
    top = torch.stack(laws).topk(shown, dim=1).indices  # (orders * K, shown)
    return {"kind": "unmasking", "orders": list(mk.ORDERS), "entropy": toy.entropy(),
            "controls": [control("steps", "steps K", 1, toy.D, 1, 3, fmt=0, play=True,
                                 equation="ch14-any-order")],
            "numbers": pack(numbers), "counts": counts,
            "p": pack(p, "f32"), "q": pack(torch.stack(laws), "f32"),
            "top": top.tolist(), "states": pack(toy.states, "u8")}


# --- chapter 16: the guidance weight on chapter 8's mixture ------------------------------------
GUIDANCE_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)  # the chapter's: 0, 1, 3, 8
MAX_GUIDED = 4_000   # guidance_page's samples (the chapter's ci profile: 1,000)
MAX_WEIGHTS = 30     # guidance_page's weights, each a 1,000-step chain (the chapter's 4)
# n x weights x T, the sample-steps every chain runs together: the cost (the chapter's
# 1,000 x 9 x 1,000 = 9,000,000 take 1-3 minutes on a 2-core CPU); each factor within its
# own bound, 4,000 x 30 x 10,000 never answered
MAX_GUIDED_WORK = 20_000_000


def _guidance_sizes(n, y, weights, T) -> tuple[int, int, list[float], int]:
    """guidance_page's sizes, checked before any chain runs (see `guidance_page`)."""
    n = checks.size("n (the guided samples)", n, MAX_GUIDED, "every weight runs a chain of "
                    "T steps on all of them (the chapter's ci profile: 1,000)", minimum=2)
    weights = checks.sequence("weights", weights, "(0.0, 1.0, 3.0)")
    checks.size("weights (the slider's positions)", len(weights), MAX_WEIGHTS, "each is a "
                "chain of T steps on all the samples (the chapter's 4)")
    weights = [checks.real("every weight in weights", w, low=0.0) for w in weights]
    if any(b <= a for a, b in zip(weights[:-1], weights[1:], strict=True)):
        raise checks.ArgumentError(f"weights must increase (the slider's positions in "
                                   f"order), got {weights}")
    T = checks.size("T (the chain's steps)", T, MAX_FORWARD_T, "every weight's chain runs "
                    "all of them (the chapter's 1,000)")
    y = checks.count("y (the component asked for)", y, minimum=0,
                     maximum=len(chapter8_mixture().weights) - 1)
    _work("n x len(weights) x T (the sample-steps of all the chains)", n * len(weights) * T,
          MAX_GUIDED_WORK, "the chapter's 1,000 x 9 x 1,000 = 9,000,000 take 1-3 minutes on "
          "a 2-core CPU; take fewer samples, weights or steps")
    return n, y, weights, T


def _work(name: str, value: int, maximum: int, why: str) -> None:
    """Refuse a product of sizes (the cost of a state: points x steps, samples x steps)
    above `maximum`, each size within its own bound: the call would not answer."""
    if value > maximum:
        raise checks.ArgumentError(f"{name} must be at most {maximum:,}, got {value:,}: {why}")


def guidance_page(n: int = 1_000, y: int = 3, weights=GUIDANCE_WEIGHTS, seed: int = 17,
                  T: int = 1000) -> dict:
    """Chapter 16: classifier guidance with the exact scores on chapter 8's mixture
    (`score.classifier_guided_score` of `toy.diffused_score` and
    `toy.diffused_log_posterior_grad`, in the ancestral sampler of T = 1,000 steps) at each
    weight, from the chapter's noise (x_T from seed 17, the chain's noise from seed 18, the
    same for every weight), against the tilted density p(x) p(y | x)^w / Z_w. For each
    weight: the mean and standard deviation of u = x . mu_y (the coordinate along the
    class's mean) against the tilted density's (quadrature on the chapter's 1001 x 1001
    grid), the share of samples whose most likely component is y, the samples, and the
    tilted density over the chapter's zoom (mu_y +- 0.55) as grey levels.

    The chapter's stored run uses 8,000 samples; n = 1,000 is its ci profile's count, so
    that the page's numbers are those of the chapter run there. Bounds: n at most
    MAX_GUIDED = 4,000 [1,000]; at most MAX_WEIGHTS = 30 weights, increasing and >= 0 [9];
    y a component of the mixture [3]; T at most MAX_FORWARD_T = 10,000 [1,000]."""
    from . import score as S
    from .toy import diffused_log_posterior_grad

    n, y, weights, T = _guidance_sizes(n, y, weights, T)
    seed = checks.seed("seed", seed)
    mix = chapter8_mixture()
    diff = dm.Diffusion(dm.linear_betas(T))
    u_dir = mix.means[y]  # a unit vector
    fine = torch.linspace(-2.5, 2.5, 1001, dtype=F64)
    cell = torch.cartesian_prod(fine, fine)
    log_p, log_py = mix.log_marginal(cell), mix.log_posterior(cell)[:, y]
    zx = torch.linspace(u_dir[0] - 0.55, u_dir[0] + 0.55, 61, dtype=F64)
    zy = torch.linspace(u_dir[1] - 0.55, u_dir[1] + 0.55, 61, dtype=F64)
    zoom = torch.cartesian_prod(zx, zy)  # (61 * 61, 2), x-major
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    rows, samples, heat = [], [], []
    for w in weights:
        field = S.classifier_guided_score(
            lambda x, t: diffused_score(mix, x, diff.alphas_bar_[t]),
            lambda x, t: diffused_log_posterior_grad(mix, x, y, diff.alphas_bar_[t]), w)
        x = diff.sample(lambda x, t, f=field: diff.eps_from_score(x, t, f(x, t)), (n, 2),
                        x_T=x_T.clone(), generator=torch.Generator().manual_seed(seed + 1),
                        quiet=True)
        u = x @ u_dir
        tilt = torch.softmax(log_p + w * log_py, 0)
        u_tilt = (tilt * (cell @ u_dir)).sum()
        sd_tilt = (tilt * (cell @ u_dir - u_tilt).pow(2)).sum().sqrt()
        in_y = (mix.map_encode(x) == y).double().mean()
        rows.append([u.mean().item(), u_tilt.item(), u.std().item(), sd_tilt.item(),
                     in_y.item()])
        samples.append(x)
        log_tilt = mix.log_marginal(zoom) + w * mix.log_posterior(zoom)[:, y]
        heat.append((log_tilt - log_tilt.max()).exp().reshape(61, 61).T)  # (y, x)
    return {"kind": "guidance", "y": y, "n": n, "T": T,
            "controls": [{"name": "w", "label": "guidance weight w", "values": weights,
                          "value": 1.0 if 1.0 in weights else weights[0], "digits": 1,
                          "play": True, "equation": "ch16-guided"}],
            "stats": pack(rows), "samples": pack(torch.stack(samples), "f32"),
            "heat": pack(_grey(torch.stack(heat)), "u8"),
            "zoom": [zx[0].item(), zx[-1].item(), zy[0].item(), zy[-1].item()],
            "mean": u_dir.tolist(), "means": mix.means.tolist()}


# --- chapter 17: the grid's exponent and the solver, on Gaussian data ------------------------
# The slider's step counts (chapter 17's grid table has 5, 10 and 18 steps) and exponents
# (its grids have rho = 1, 3 and 7).
GRID_STEPS = (2, 3, 4, 5, 6, 8, 10, 12, 14, 18, 24, 32)
GRID_RHOS = (1, 12, 1)  # the rho slider: lo, hi, step
GRID_SOLVERS = {"Euler": ("euler", 1), "Heun": ("heun", 2),
                "DPM-Solver++(2M)": ("dpm_solver_pp_2m", 1)}  # edm's name, calls a step
MAX_GRID_POINTS = 10_000  # grid_page's starting points (chapter 17: 256)
# grid_page runs the 3 solvers on every rho (12) over every step count, from all the points:
# the step counts' sum (chapter 17: 138) and points x that sum (35,328) set its cost. At
# these bounds about 10 s on a 2-core CPU; n = 10,000 with steps 1..99 never answered.
MAX_GRID_STEPS_SUM = 1_000
MAX_GRID_WORK = 1_000_000


def chapter17_gaussian() -> tuple[torch.Tensor, torch.Tensor]:
    """Chapter 17's eight-dimensional Gaussian: its mean (8,) and standard deviations (8,),
    0.05 to 1."""
    return (torch.linspace(-0.5, 0.5, 8, dtype=F64),
            torch.logspace(-1.3, 0, 8, dtype=F64))


def grid_page(n: int = 256, seed: int = 5, n_paths: int = 8, steps=GRID_STEPS) -> dict:
    """Chapter 17: Euler, Heun and DPM-Solver++(2M) (`edm.euler`, `edm.heun`,
    `edm.dpm_solver_pp_2m`) with the exact denoiser of the chapter's Gaussian
    (`edm.gaussian_denoiser`), on the rho grid of each step count from sigma_max = 80 to 0
    (`edm.rho_grid`), rho = 1 to 12, from the chapter's starting points: n = 256 draws of
    80 N(0, I) from seed 5. The error: the RMS over the points of the distance to the exact
    flow (`edm.gaussian_flow`) at sigma = 0, as the chapter's table of grids has it (Heun,
    rho = 1, 3 and 7, 5, 10 and 18 steps).

    The page draws, for the first n_paths points, the first coordinate (std 0.05) at every
    level divided by its exact scale sqrt(std^2 + sigma^2) (the exact flow keeps it
    constant: a perfect solver draws flat lines; all n of them where n_paths > n). Bounds
    (the chapter's in brackets): n at most MAX_GRID_POINTS = 10,000 [256]; n_paths at most
    MAX_PATHS = 200 [8]; steps,
    increasing step counts, as the solver pages' (at most MAX_STEP_COUNTS = 100 summing to
    MAX_STEPS_SUM = 5,000) [12 summing to 138]."""
    from . import edm

    n = checks.size("n (the starting points)", n, MAX_GRID_POINTS, "every solver runs from "
                    "all of them on every grid (the chapter's 256)")
    _, _, n_paths, steps = _solver_sizes(1, 1, n_paths, steps)
    n_paths = min(n_paths, n)  # as the solver pages' ends: 8 of 4 points were reported drawn
    _work("sum(steps) (the steps of each solver on each of the 12 grids)", sum(steps),
          MAX_GRID_STEPS_SUM, "every solver runs them on every rho (the chapter's 138); "
          "take fewer or smaller step counts")
    _work("n x sum(steps) (the point-steps of each solver on each grid)", n * sum(steps),
          MAX_GRID_WORK, "3 solvers run them on 12 grids (the chapter's 256 x 138 = "
          "35,328); take fewer points or steps")
    seed = checks.seed("seed", seed)
    mean, std = chapter17_gaussian()
    denoise = edm.gaussian_denoiser(mean, std)
    x = 80 * torch.randn(n, 8, dtype=F64, generator=torch.Generator().manual_seed(seed))
    exact = edm.gaussian_flow(mean, std, x, 80.0, 0.0)
    rhos = slider_values(*GRID_RHOS)
    err = torch.empty(len(rhos), len(steps), len(GRID_SOLVERS), dtype=F64)
    calls = torch.empty(len(steps), len(GRID_SOLVERS), dtype=torch.long)
    levels, paths = [], []
    for r, rho in enumerate(rhos):
        for k, count in enumerate(steps):
            grid = edm.rho_grid(count, rho=rho)
            scale = (std[0] ** 2 + grid ** 2).sqrt()  # (count + 1,)
            levels.append(grid)
            for j, (name, per_step) in enumerate(GRID_SOLVERS.values()):
                solve = getattr(edm, name)
                rec = _Recorder(denoise, per_step, n_paths)
                out = solve(rec, x, grid)
                states = torch.stack([*rec.states, out[:n_paths]])  # (count + 1, P, 8)
                err[r, k, j] = (out - exact).pow(2).sum(1).mean().sqrt()
                calls[k, j] = rec.calls
                paths.append((states[:, :, 0] - mean[0]) / scale[:, None])
    return {"kind": "grid", "steps": steps, "solvers": list(GRID_SOLVERS),
            "controls": [control("rho", "grid exponent ρ", *GRID_RHOS, 7, fmt=0,
                                 equation="ch17-rho-grid"),
                         {"name": "n", "label": "steps", "values": steps,
                          "value": 10 if 10 in steps else steps[len(steps) // 2],
                          "digits": 0, "play": True, "equation": "ch17-ode"}],
            "std0": std[0].item(), "points": n, "drawn": n_paths,
            "levels": pack(torch.cat(levels)), "err": pack(err),
            "evaluations": calls.tolist(),
            "paths": pack(torch.cat(paths), "f32"),
            "exact": pack((x[:n_paths, 0] - mean[0]) / (std[0] ** 2 + 80.0 ** 2) ** 0.5,
                          "f32")}


# --- chapter 6: the 2-D VAE's decoder, run in the page ------------------------------------------
def save_latent_decoder(model, path) -> None:
    """The decoder of a VAE with an MLP decoder (linear layers with ReLU between them,
    Bernoulli logits out) as half-precision arrays W0, b0, W1, b1, ... in an .npz file, for
    the page's latent explorer (`latent_page`). A 2 -> 512 -> 784 decoder is 0.8 MB."""
    if not isinstance(path, (str, os.PathLike)):
        raise checks.ArgumentError(f"path must be a file name (a str or a Path), got "
                                   f"{checks._got(path)}")
    _replace(Path(path), _npz_bytes(_decoder_arrays(model)))


def _decoder_arrays(model) -> dict:
    if getattr(model, "arch", None) != "mlp" or \
            getattr(model, "likelihood", None) != "bernoulli":
        raise checks.ArgumentError(f"model must be a VAE with arch='mlp' and Bernoulli "
                                   f"likelihood (chapter 6's), got {checks._got(model)}")
    linears = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    arrays = {}
    for k, lin in enumerate(linears):
        arrays[f"W{k}"] = lin.weight.detach().cpu().numpy().astype("<f2")
        arrays[f"b{k}"] = lin.bias.detach().cpu().numpy().astype("<f2")
    return arrays


STORE_VAR = "BOOK_EXPLORERS"  # the folder a storing run keeps explorers' arrays in


def _one_shape(arrays, need: str) -> None:
    """Refuse arrays (tensors or arrays) of more than one shape: need says what must agree."""
    shapes = {tuple(np.shape(a)) for a in arrays}
    if len(shapes) > 1:
        raise checks.ArgumentError(f"{need}, got {sorted(shapes)}")


ZIP_MAGIC = b"PK"  # an .npz is a zip archive


def _npz(stored, who: str, keys: tuple[str, ...]) -> dict:
    """The arrays of `stored`, an .npz written by `who` (a path, or a file object as `_store`
    passes), holding at least `keys`: None, a missing file, another kind of file or the
    arrays of another explorer ended in NumPy's or in a KeyError naming no argument."""
    if isinstance(stored, (str, os.PathLike)):
        if not Path(stored).is_file():
            raise checks.ArgumentError(f"stored must be an .npz file written by {who}, but "
                                       f"{os.fspath(stored)!r} is no file")
        with open(stored, "rb") as f:
            head = f.read(2)
    elif hasattr(stored, "read") and hasattr(stored, "seek"):
        where = stored.tell()
        head = stored.read(2)
        stored.seek(where)
    else:
        raise checks.ArgumentError(f"stored must be the path of an .npz file written by "
                                   f"{who}, got {checks._got(stored)}")
    if head != ZIP_MAGIC:
        raise checks.ArgumentError(f"stored must be an .npz file written by {who}; "
                                   f"{stored!r:.80} is another kind of file")
    with np.load(stored) as f:
        a = {k: f[k] for k in f.files}
    missing = [k for k in keys if k not in a]
    if missing:
        raise checks.ArgumentError(f"stored lacks {missing} of the arrays {who} writes (it "
                                   f"holds {sorted(a)}): the file of another explorer?")
    return a


def _grey(a) -> np.ndarray:
    """Images with values in [0, 1] (a tensor or an array) as 8-bit grey levels, 0..255."""
    a = a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)
    return np.round(255 * np.clip(a.astype(float), 0, 1)).astype("u1")


def _store_name(name) -> str:
    """name, a file name inside the store's folder (sub-folders allowed) ending in .npz (added
    as numpy's savez adds it): an absolute name or one with '..' would write outside it."""
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise checks.ArgumentError(f"name must be a file name such as 'ch9-chain.npz', got "
                                   f"{name!r:.60}")
    name = os.fspath(name)
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise checks.ArgumentError(f"name must be a file name inside ${STORE_VAR}, got "
                                   f"{name!r}: an absolute name or one with '..' writes outside "
                                   "the store's folder; pass a plain name such as "
                                   "'ch9-chain.npz'")
    return name if name.endswith(".npz") else name + ".npz"


def _store_path(name: str) -> Path | None:
    """$BOOK_EXPLORERS/name (its folder made), the folder that tools/run_notebooks.py sets
    when it executes a chapter to store its outputs; None elsewhere (nbval, Colab, a dry
    run), where nothing is written. The name is checked in every run (`_store_name`)."""
    name = _store_name(name)
    folder = os.environ.get(STORE_VAR)
    if not folder:
        return None
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _npz_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _store(name, page, who: str, **arrays) -> Path | None:
    """The arrays, read back by `page` (the page's own checks) in every run, then in a
    storing run written to $BOOK_EXPLORERS/name atomically (`_replace`): a store never keeps
    what its page would refuse, and says so where the chapter stores it, not at the
    build. Returns the path written, or None."""
    name = _store_name(name)
    data = _npz_bytes(arrays)
    try:
        page(io.BytesIO(data))
    except checks.ArgumentError as err:
        raise checks.ArgumentError(f"{who}: its page would refuse what it stores: {err}") \
            from None
    path = _store_path(name)
    if path is not None:
        _replace(path, data)
    return path


def store_latent_decoder(model, name: str):
    """`save_latent_decoder` into $BOOK_EXPLORERS/name (`_store_path`), so that the page's
    explorer runs the decoder of the run the page shows. Returns the path written, or
    None."""
    return _store(name, latent_page, "store_latent_decoder", **_decoder_arrays(model))


def latent_decoder(path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The layers (W, b) saved by `save_latent_decoder`, as float32 tensors."""
    f = _npz(path, "save_latent_decoder", ("W0", "b0"))
    n = len([k for k in f if k.startswith("W")])
    return [(torch.from_numpy(f[f"W{k}"].astype("<f4")),
             torch.from_numpy(f[f"b{k}"].astype("<f4"))) for k in range(n)]


def latent_mean_image(layers, z: torch.Tensor) -> torch.Tensor:
    """The decoder's mean image (pixel probabilities) at z (..., 2): (..., 28, 28), float32,
    as the page computes it (ReLU between layers, a sigmoid at the end)."""
    layers = checks.sequence("layers", layers, "latent_decoder(path)")
    if not layers or not all(isinstance(v, (tuple, list)) and len(v) == 2 for v in layers):
        raise checks.ArgumentError("layers must be the decoder's (W, b) pairs, at least one: "
                                   "latent_decoder(path)")
    checks.tensor("z", z, floating=True)
    if z.dim() < 1 or z.shape[-1] != layers[0][0].shape[1]:
        raise checks.ArgumentError(f"z must be latent codes (..., {layers[0][0].shape[1]}), the "
                                   f"decoder's input width, got shape {tuple(z.shape)}")
    h = z.to(torch.float32)
    for k, (W, b) in enumerate(layers):
        h = h @ W.T + b
        if k < len(layers) - 1:
            h = h.relu()
    return torch.sigmoid(h).reshape(*z.shape[:-1], 28, 28)


def _plane(span, step, starts: tuple[float, ...], what: str, chapter: str) -> None:
    """span and step of sliders from -span to span by step, each with the positions
    `starts` (`what` names them; `chapter` gives the chapter's span and step): -span of a
    string ended in "bad operand type for unary -", a span that misses a start in "value =
    0.9 is not a position of the slider z1"."""
    span, step = checks.positive("span", span), checks.positive("step", step)
    values = slider_values(-span, span, step)
    for start in starts:
        if not any(abs(v - start) < 1e-9 for v in values):
            raise checks.ArgumentError(
                f"span = {span:g} and step = {step:g} put no slider position at {what}: the "
                f"sliders run from -span to span by step, so span and {what} must be "
                f"multiples of step (the chapter's span and step: {chapter})")


def latent_page(stored, span: float = 2.5, step: float = 0.05, dims=(0, 1)) -> dict:
    """Chapter 6: the latent explorer (`latent.latent_explorer`'s sliders: each latent
    coordinate from -span to span by step) with the decoder's weights, which the page runs
    (two small matrix products a position: exact arithmetic, held to Python by
    tests/test_browser.py). stored: an .npz file written by `save_latent_decoder`. Each
    slider starts at 0, one of its positions (span a multiple of step), and has at most
    10,001 positions (the chapter's 101); dims: distinct coordinates of the decoder's
    latent."""
    layers = latent_decoder(stored)
    latent = layers[0][0].shape[1]
    dims = [checks.count(f"every coordinate in dims (of the decoder's {latent})", d,
                         minimum=0, maximum=latent - 1)
            for d in checks.sequence("dims", dims, "(0, 1)")]
    _plane(span, step, (0.0,), "0, where each slider starts", "2.5 and 0.05")
    if not dims or len(set(dims)) != len(dims):
        raise checks.ArgumentError(f"dims must be distinct coordinates of the latent, at "
                                   f"least one, got {dims}")
    return {"kind": "latent",
            "controls": [control(f"z{d}", f"z[{d}]", -span, span, step, 0.0) for d in dims],
            "layers": [{"W": pack(W.numpy(), "f16"), "b": pack(b.numpy(), "f16")}
                       for W, b in layers]}


# --- chapter 18: T steps of three schedules with the same ends ---------------------------------
BOUND_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256, 1024)
MAX_BOUND_STEPS = 4_096  # bound_page's largest T (the chapter's slider: 1,024)


def chapter18_schedules(ends=(-10.0, 6.0)) -> dict:
    """Chapter 18's three schedules with the same ends: linear, cosine and a learned one at
    its random start (hidden = 16, seed 3), gamma from -10 to 6."""
    from . import vdm

    ends = checks.sequence("ends", ends, "(-10.0, 6.0), (gamma_min, gamma_max)", length=2)
    return {"linear": vdm.LinearSchedule(*ends), "cosine": vdm.CosineSchedule(*ends),
            "learned, random": vdm.LearnedSchedule(
                *ends, hidden=16, generator=torch.Generator().manual_seed(3))}


def bound_page(steps=BOUND_STEPS) -> dict:
    """Chapter 18: the T-step loss L_T (`vdm.gaussian_discrete_loss`) of the optimal denoiser
    on the chapter's eight-dimensional Gaussian (standard deviations 0.05 to 1) under its
    three schedules with the same ends, against the exact L_inf
    (`vdm.gaussian_continuous_loss`), which only the ends decide. For each schedule and T:
    the levels gamma(t_i), i = 0..T, and each step's term
    (1/2) (SNR(s_i) - SNR(t_i)) mmse(SNR(t_i)) (`vdm.gaussian_mmse`), whose sum is L_T; the
    page draws each term as a bar over its step's log-SNR interval, under the curve
    (1/2) SNR mmse(SNR) against log SNR, whose area is L_inf. steps: increasing T, at most
    MAX_STEP_COUNTS = 100 of them, each at most MAX_BOUND_STEPS = 4,096 (the chapter's
    slider: 14, up to 1,024)."""
    from . import vdm

    steps = [checks.count("every T in steps", k, maximum=MAX_BOUND_STEPS)
             for k in checks.sequence("steps", steps, "(1, 2, 4, 8)")]
    checks.size("steps (the slider's positions)", len(steps), MAX_STEP_COUNTS,
                "each is a step count of every schedule (the chapter's 14)")
    if any(b <= a for a, b in zip(steps[:-1], steps[1:], strict=True)):
        raise checks.ArgumentError(f"steps must increase (the slider's positions in order), "
                                   f"got {steps}")
    std = torch.logspace(-1.3, 0, 8, dtype=F64)  # the chapter's Gaussian
    schedules = chapter18_schedules()
    lo, hi = (float(v) for v in schedules["linear"].ends())
    exact = vdm.gaussian_continuous_loss(math.exp(-lo), math.exp(-hi), std).item()
    t = torch.linspace(0, 1, 201, dtype=F64)
    lam = torch.linspace(-hi, -lo, 321, dtype=F64)  # log SNR over the schedules' range
    levels, terms, losses, curves = [], [], [], {}
    with torch.no_grad():
        for name, schedule in schedules.items():
            curves[name] = pack(schedule(t))
            for T in steps:
                g = schedule(torch.arange(T + 1, dtype=F64) / T)
                snr_t = torch.exp(-g[1:])
                term = 0.5 * snr_t * torch.expm1(g[1:] - g[:-1]) * vdm.gaussian_mmse(snr_t,
                                                                                       std)
                levels.append(g)
                terms.append(term)
                losses.append(vdm.gaussian_discrete_loss(schedule, T, std).item())
    return {"kind": "bound", "schedules": list(schedules), "exact": exact,
            "controls": [{"name": "T", "label": "steps T", "values": steps,
                          "value": 8 if 8 in steps else steps[0], "digits": 0,
                          "play": True, "equation": "ch18-discrete-loss"}],
            "loss": pack(losses), "levels": pack(torch.cat(levels)),
            "terms": pack(torch.cat(terms)), "t": pack(t, "f32"), "gamma": curves,
            "lam": pack(lam, "f32"),
            "density": pack(0.5 * lam.exp() * vdm.gaussian_mmse(lam.exp(), std), "f32")}


# --- chapter 19: the straight-through gradient on the toy quantizer ------------------------------
def chapter19_toy():
    """Chapter 19's toy: a quantizer of five codes in the plane (the origin and four
    points at distance 1.5 on the axes) and its stand-in for the decoder's loss,
    L(y) = |tanh(A y) - t|^2 with A (3, 2) from seed 1: (quantizer, loss (B, 2) -> (B,))."""
    from .models.quantizer import VectorQuantizer

    quantizer = VectorQuantizer(K=5, D=2, beta=0.25).double().eval()
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5],
                                               [-1.5, 0.0], [0.0, -1.5]], dtype=F64))
    A = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0.3, -0.5, 0.8], dtype=F64)

    def loss(y):
        return (torch.tanh(y @ A.T) - target).pow(2).sum(1)
    return quantizer, loss


MAX_PLANE = 101 * 101  # straight_page's grid points, both sliders' positions (chapter 19: 51^2)


def straight_page(span: float = 2.5, step: float = 0.1) -> dict:
    """Chapter 19: at every point z_e of a grid of the plane (two sliders from -span to span
    by step), the toy quantizer's code (`VectorQuantizer`), the loss without quantizing,
    L(z_e), and through the quantizer, L(z_q), the gradient of L at z_e and the
    straight-through gradient (the quantizer's z_q carries it: the gradient of L at the
    code, `models.quantizer.straight_through`); and on a 121 x 121 grid, the loss and the
    code of every point, which the page draws. At most MAX_PLANE = 10,201 points (101
    positions a slider; the chapter's 51)."""
    _plane(span, step, (0.9, 0.4), "0.9 and 0.4, where the sliders start", "2.5 and 0.1")
    quantizer, loss = chapter19_toy()
    values = slider_values(-span, span, step)
    _work("the grid's points (positions of z1 x positions of z2)", len(values) ** 2,
          MAX_PLANE, "every point's six numbers travel in the page's state (the chapter's "
          "51 x 51 = 2,601; 5 / 0.01 built 66 MB); take a larger step or a smaller span")
    z1, z2 = torch.meshgrid(torch.tensor(values, dtype=F64), torch.tensor(values, dtype=F64),
                            indexing="xy")  # (second, first)
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], 1).requires_grad_()
    out = quantizer(z.view(-1, 2, 1, 1))  # z_q carries the straight-through gradient
    (g_st,) = torch.autograd.grad(loss(out.z_q.view(-1, 2)).sum(), z)
    (g_ze,) = torch.autograd.grad(loss(z).sum(), z)
    with torch.no_grad():
        numbers = torch.stack([loss(z), loss(out.z_q.view(-1, 2)), *g_ze.T, *g_st.T], 1)
        fine = torch.linspace(-span, span, 121, dtype=F64)
        f1, f2 = torch.meshgrid(fine, fine, indexing="xy")
        grid = torch.stack([f1.reshape(-1), f2.reshape(-1)], 1)
        cells = quantizer(grid.view(-1, 2, 1, 1)).indices.view(121, 121)
        heat = loss(grid).view(121, 121)
    return {"kind": "straight",
            "controls": [control("z1", "z_e, first coordinate", -span, span, step, 0.9,
                                 fmt=1, equation="ch19-ste"),
                         control("z2", "z_e, second coordinate", -span, span, step, 0.4,
                                 fmt=1, equation="ch19-ste")],
            "codes": quantizer.codebook.tolist(), "code": pack(out.indices.view(-1), "u8"),
            "numbers": pack(numbers), "span": span,
            "cells": pack(cells, "u8"), "heat": pack(heat, "f32")}


# --- chapter 20: the measures against each corruption's strength ------------------------------
CORRUPTION_MEASURES = ("FD", "KID", "precision", "recall", "density", "coverage")
MAX_CORRUPTIONS, MAX_LEVELS, MAX_SHOWN = 12, 21, 12  # the chapter's: 5, 9, 6


def store_corruptions(name: str, corruptions: dict, clean: dict) -> Path | None:
    """Chapter 20's sweep into $BOOK_EXPLORERS/name (`_store_path`; nothing elsewhere), for
    `corruption_page`. corruptions: {name: (unit, strengths (L,), measures (L, 6) in the
    order of CORRUPTION_MEASURES, images (L, S, 28, 28) in [0, 1])}, every corruption with
    the same L levels and S images; clean: {"lo": (6,), "hi": (6,)}, the band of each
    measure within which the chapter's test calls a set no different from clean redraws.
    Returns the path written, or None."""
    if not isinstance(corruptions, dict) or not corruptions:
        raise checks.ArgumentError(f"corruptions must be a dict {{name: (unit, strengths, "
                                   f"measures, images)}}, at least one, got "
                                   f"{checks._got(corruptions)}")
    for n, v in corruptions.items():
        if not isinstance(v, (tuple, list)) or len(v) != 4 or not isinstance(v[0], str):
            raise checks.ArgumentError(f"corruptions[{n!r}] must be (unit, strengths, "
                                       f"measures, images), the unit a string, got "
                                       f"{checks._got(v)}")
    if not isinstance(clean, dict) or not {"lo", "hi"} <= set(clean):
        raise checks.ArgumentError(f"clean must be {{'lo': (6,), 'hi': (6,)}}, the band of "
                                   f"each measure, got {checks._got(clean)}"
                                   + (f" with keys {sorted(clean)}" if isinstance(clean, dict)
                                      else ""))
    names = list(corruptions)
    arrays = [[checks.numeric(f"corruptions[{n!r}]'s {what}", v[i], dtype=torch.float64)
               .numpy(force=True) for n, v in corruptions.items()]
              for i, what in ((1, "strengths"), (2, "measures"), (3, "images"))]
    for what, arrs in zip(("strengths", "measures", "images"), arrays, strict=True):
        shapes = {n: a.shape for n, a in zip(names, arrs, strict=True)}
        if len(set(shapes.values())) != 1:
            raise checks.ArgumentError(f"every corruption needs {what} of one shape (the "
                                       f"same strengths, the same digits shown), got "
                                       f"{shapes}")
    clean = {end: checks.numeric(f"clean[{end!r}]", clean[end], dtype=torch.float64)
             .numpy(force=True) for end in ("lo", "hi")}
    for end in ("lo", "hi"):
        if np.shape(clean[end]) != (len(CORRUPTION_MEASURES),):
            raise checks.ArgumentError(
                f"clean[{end!r}] must hold one bound per measure {CORRUPTION_MEASURES}, "
                f"shape ({len(CORRUPTION_MEASURES)},), got shape {np.shape(clean[end])}")
    return _store(name, corruption_page, "store_corruptions", names=np.array(names),
                  units=np.array([v[0] for v in corruptions.values()]),
                  strength=np.stack(arrays[0]), measures=np.stack(arrays[1]),
                  images=_grey(np.stack(arrays[2])),
                  clean_lo=clean["lo"], clean_hi=clean["hi"])


def corruption_page(stored) -> dict:
    """Chapter 20: the six measures of each corrupted set at every strength, and some of its
    digits, from the chapter's run (stored: an .npz written by `store_corruptions`). The
    page looks the numbers up; it computes nothing. Sizes: at most MAX_CORRUPTIONS = 12
    corruptions, MAX_LEVELS = 21 strengths each and MAX_SHOWN = 12 digits a set (the
    chapter's 5, 9 and 6)."""
    a = _npz(stored, "store_corruptions", ("names", "units", "strength", "measures",
                                           "images", "clean_lo", "clean_hi"))
    if a["images"].ndim != 5 or a["images"].shape[3:] != (28, 28):
        raise checks.ArgumentError(f"images must be (corruptions, strengths, S, 28, 28), got "
                                   f"{a['images'].shape}")
    k, levels, shown = a["images"].shape[:3]
    checks.size("the corruptions", k, MAX_CORRUPTIONS, "one radio button each")
    checks.size("the strengths of a corruption", levels, MAX_LEVELS, "one slider position "
                "each, every one with its digits in the page", minimum=2)
    checks.size("the digits shown a set", shown, MAX_SHOWN, "a few digits a position")
    if a["measures"].shape != (k, levels, len(CORRUPTION_MEASURES)):
        raise checks.ArgumentError(f"measures must be (corruptions, strengths, "
                                   f"{len(CORRUPTION_MEASURES)}) = ({k}, {levels}, "
                                   f"{len(CORRUPTION_MEASURES)}), got "
                                   f"{a['measures'].shape}")
    if a["strength"].shape != (k, levels) or not np.isfinite(a["strength"]).all():
        raise checks.ArgumentError(f"the strengths must be (corruptions, strengths) = ({k}, "
                                   f"{levels}), finite, one a level of the images, got "
                                   f"{a['strength'].shape}")
    if not (np.isfinite(a["clean_lo"]).all() and np.isfinite(a["clean_hi"]).all()
            and (a["clean_lo"] <= a["clean_hi"]).all()):
        raise checks.ArgumentError(f"clean's band must be finite with lo <= hi for every "
                                   f"measure, got lo {a['clean_lo'].tolist()} and hi "
                                   f"{a['clean_hi'].tolist()}")
    return {"kind": "corruption",
            "controls": [control("level", "strength", 0, levels - 1, 1, 0, fmt=0, play=True,
                                 equation="ch20-precision-recall")],
            "corruptions": [str(n) for n in a["names"]],
            "units": [str(u) for u in a["units"]], "measure_names": list(CORRUPTION_MEASURES),
            "strength": pack(a["strength"]), "measures": pack(a["measures"]),
            "clean_lo": pack(a["clean_lo"]), "clean_hi": pack(a["clean_hi"]),
            "images": pack(a["images"], "u8")}


# --- chapter 22: a masked model's sentences, unmasked step by step ------------------------------
MAX_SENTENCES, MAX_LENGTH, MAX_ALPHABET = 12, 128, 64  # the chapter's: 6, 44 and 25


def _text_unmasking_sizes(name: str, shape) -> tuple[int, int, int]:
    """(K + 1, S, L) of one order's states, each within its bound: K + 1 in 2..MAX_FRAMES
    = 201 frames, S in 1..MAX_SENTENCES = 12 sentences, L in 1..MAX_LENGTH = 128 positions."""
    if len(shape) != 3:
        raise checks.ArgumentError(f"{name} must be (K + 1, S, L): the S sentences' L token "
                                   f"ids after each of the K steps and before the first, got "
                                   f"shape {tuple(shape)}")
    frames, S, L = shape
    checks.size(f"{name}'s frames K + 1", frames, MAX_FRAMES, "one slider position each, "
                "every one with its sentences in the page", minimum=2)
    checks.size(f"{name}'s sentences S", S, MAX_SENTENCES, "a few lines a step")
    checks.size(f"{name}'s positions L", L, MAX_LENGTH, "a sentence is one line of the "
                "page, one monospace character a position")
    return frames, S, L


def _alphabet(alphabet) -> str:
    """The tokenizer's characters: a str of 1..MAX_ALPHABET = 64 distinct characters."""
    if not isinstance(alphabet, str) or not alphabet or len(set(alphabet)) != len(alphabet):
        raise checks.ArgumentError(f"alphabet must be the tokenizer's characters, a string "
                                   f"of distinct ones (CharTokenizer.alphabet), got "
                                   f"{alphabet!r:.80}")
    checks.size("len(alphabet)", len(alphabet), MAX_ALPHABET, "every id, padding and masked "
                "included, travels as one byte")
    return alphabet


def _token_ids(name: str, ids, pad: int) -> torch.Tensor:
    """ids, integer token ids in -1 (masked) ..pad (padding, the last id)."""
    ids = checks.numeric(name, ids)
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise checks.ArgumentError(f"{name} must be token ids, an integer tensor (torch.long, "
                                   f"as masked.sample returns them), got {ids.dtype}")
    if ids.numel() and (ids.min() < -1 or ids.max() > pad):
        raise checks.ArgumentError(f"{name} must hold ids -1 (masked) to {pad} (padding, "
                                   f"after the alphabet's {pad} characters), got "
                                   f"{int(ids.min())}..{int(ids.max())}: is alphabet the "
                                   "tokenizer's that made them?")
    return ids


def store_text_unmasking(name: str, states: dict, alphabet: str, profile) -> Path | None:
    """Chapter 22's masked sampler, recorded after every step, into $BOOK_EXPLORERS/name
    (`_store_path`; nothing elsewhere), for `text_unmasking_page`. states: {order: ids
    (K + 1, S, L)} for both orders of `masked.ORDERS`, of one shape: the token ids of S
    sentences of L positions at step 0 (all masked) to step K (none masked), -1 where a
    position is masked (`masked.MASK`), a character 0..len(alphabet) - 1 or padding
    len(alphabet) (`language.CharTokenizer`'s ids) elsewhere; a step only reveals
    positions. alphabet: the tokenizer's characters (at most MAX_ALPHABET = 64); profile:
    the run's profile (a Profile or its name), which the page names. Sizes: at most
    MAX_FRAMES = 201 frames, MAX_SENTENCES = 12 sentences and MAX_LENGTH = 128 positions
    (the chapter's 45, 6 and 44). Returns the path written, or None."""
    from .masked import ORDERS

    if not isinstance(states, dict) or set(states) != set(ORDERS):
        keys = sorted(map(repr, states)) if isinstance(states, dict) else None
        raise checks.ArgumentError(f"states must be a dict {{order: ids (K + 1, S, L)}} with "
                                   f"exactly the orders {ORDERS}, both sampled, got "
                                   + (f"the keys [{', '.join(keys)}]" if keys is not None
                                      else checks._got(states)))
    pad = len(_alphabet(alphabet))
    profile = _profile_name(profile)
    ids = {o: _token_ids(f"states[{o!r}]", states[o], pad) for o in ORDERS}
    for o in ORDERS:  # before they are stacked: the error names the order
        _text_unmasking_sizes(f"states[{o!r}]", ids[o].shape)
    _one_shape(ids.values(), "both orders need states of one shape (K + 1, S, L): the same "
               "steps, sentences and positions")
    return _store(name, text_unmasking_page, "store_text_unmasking", orders=np.array(ORDERS),
                  alphabet=np.array(alphabet), profile=np.array(profile),
                  ids=np.stack([ids[o].numpy(force=True) for o in ORDERS]).astype("i1"))


def _reveal_steps(ids: np.ndarray, orders: list[str]) -> np.ndarray:
    """The step at which each position is revealed, (orders, S, L) in 1..K, from the ids
    (orders, K + 1, S, L): all masked at step 0, none at step K, and a position once
    revealed keeping its id (else refused, naming the first position that breaks it)."""
    masked = ids == -1
    for o, order in enumerate(orders):
        if not masked[o, 0].all() or masked[o, -1].any():
            raise checks.ArgumentError(
                f"the states of order {order!r} must be all masked at step 0 and none at "
                f"step K = {len(ids[o]) - 1}, got {int((~masked[o, 0]).sum())} revealed at "
                f"step 0 and {int(masked[o, -1].sum())} masked at step K: record the state "
                "before the first step and after every step, to the last")
    changed = ~masked[:, :-1] & (ids[:, 1:] != ids[:, :-1])
    if changed.any():
        o, k, s, j = np.argwhere(changed)[0]
        raise checks.ArgumentError(
            f"the states of order {orders[o]!r}: position {j} of sentence {s} is "
            f"{ids[o, k, s, j]} at step {k} and {ids[o, k + 1, s, j]} at step {k + 1} (-1: "
            "masked), but a step only reveals positions: store the states of one sampling "
            "run, in the order of its steps")
    return masked.sum(axis=1)  # masked at steps 0..r - 1: revealed at step r


def text_unmasking_page(stored) -> dict:
    """Chapter 22: its masked model's sentences at every step of the sampler, in random and
    in confidence order (stored: an .npz written by `store_text_unmasking`); the page looks
    them up. It ships each order's last ids and the step at which each position is revealed
    ("ids" and "revealed", (orders, S, L) 8-bit), which hold every step's state: a position
    is masked before its step, and its last id from then on. Sizes: at most MAX_FRAMES = 201
    frames (K + 1), MAX_SENTENCES = 12 sentences, MAX_LENGTH = 128 positions and
    MAX_ALPHABET = 64 characters (the chapter's 45, 6, 44 and 25)."""
    from .masked import ORDERS

    a = _npz(stored, "store_text_unmasking", ("orders", "alphabet", "profile", "ids"))
    if a["ids"].ndim != 4 or a["ids"].dtype.kind not in "iu":
        raise checks.ArgumentError(f"ids must be whole numbers (orders, K + 1, S, L), got "
                                   f"{a['ids'].dtype} of shape {a['ids'].shape}")
    orders = [str(o) for o in a["orders"].reshape(-1)]
    if orders != list(ORDERS) or len(a["ids"]) != len(ORDERS):
        raise checks.ArgumentError(f"the orders must be {ORDERS}, one states array each, got "
                                   f"{orders} for {len(a['ids'])}")
    frames, S, L = _text_unmasking_sizes("ids", a["ids"].shape[1:])
    for key in ("alphabet", "profile"):
        if a[key].dtype.kind != "U" or a[key].shape != ():
            raise checks.ArgumentError(f"{key} must be a string (the tokenizer's characters, "
                                       f"the run's profile name), got {a[key]!r:.80}")
    alphabet = _alphabet(str(a["alphabet"]))
    ids = _token_ids("ids", torch.from_numpy(a["ids"].astype(np.int64)), len(alphabet))
    revealed = _reveal_steps(ids.numpy(), orders)
    return {"kind": "textunmasking", "profile": str(a["profile"]), "K": frames - 1,
            "alphabet": alphabet, "orders": orders,
            "controls": [control("k", "step k", 0, frames - 1, 1, (frames - 1) // 2, fmt=0,
                                 play=True)],
            "ids": pack(ids[:, -1], "u8"), "revealed": pack(revealed, "u8")}


PAGES = {"kl": kl_page, "elbo": elbo_page, "pinned": pinned_page, "latent": latent_page,
         "forward": forward_page, "solvers": solvers_page, "fewstep": fewstep_page,
         "corruption": corruption_page, "grid": grid_page,
         "guidance": guidance_page, "unmasking": unmasking_page,
         "chain": chain_page, "completions": completions_page,
         "bound": bound_page, "straight": straight_page,
         "textunmasking": text_unmasking_page}


def page_state(name: str, **kwargs) -> dict:
    """The state of explorer `name` (a key of PAGES) with the chapter's arguments."""
    if name not in PAGES:
        raise KeyError(f"no web explorer {name!r}; there are {sorted(PAGES)}")
    return {"name": name, **PAGES[name](**kwargs)}
