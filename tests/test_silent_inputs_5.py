"""Silent and cryptic answers of the guidance, EDM and in-painting code made clear errors
(issue 65, points 1-10): each test failed on the code before its fix.

Point 8's rule for the whole package: a public function that takes a reader's data tensors
refuses NaN and inf in them (`checks.finite`), naming the argument. Point 10: every size a
reader passes to the web explorers' state builders and to the solvers' grids is bounded,
checked before anything is computed, with an error that says the limit and why.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from companion import compare, edm, fewstep, flow, inpainting, metrics, page_explorers, sde, toy
from companion import diffusion as dm
from companion import masked as mk
from companion import score as S
from companion.models.classifier import NoisyClassifier
from companion.run import checks
from companion.run.tables import markdown

NAN, INF = float("nan"), float("inf")


def mixture() -> toy.GaussianMixture:
    a = torch.arange(3, dtype=torch.float64) * 2 * math.pi / 3
    return toy.GaussianMixture([0.5, 0.3, 0.2], torch.stack([a.cos(), a.sin()], 1), 0.2)


def smooth_eps(x, t):
    """A noise predictor that depends on x (differentiably) and on nothing else."""
    return 0.5 * torch.tanh(x)


# --- 1. DPS reads the known pixels only --------------------------------------------------------
def _measurement(n=2):
    gen = torch.Generator().manual_seed(0)
    y = torch.rand(n, 1, 8, 8, generator=gen) * 2 - 1
    mask = torch.ones(n, 1, 8, 8)
    mask[..., :4] = 0  # the left half missing
    holed = torch.where(mask.bool(), y, torch.tensor(NAN))
    return torch.where(mask.bool(), y, torch.zeros(())), holed, mask


def test_01_dps_gradient_ignores_a_nan_at_a_missing_pixel():
    clean, holed, mask = _measurement()
    diff = dm.Diffusion(dm.linear_betas(10))
    x_t = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    want = inpainting.dps_gradient(diff, smooth_eps, x_t, 5, clean, mask)
    got = inpainting.dps_gradient(diff, smooth_eps, x_t, 5, holed, mask)
    for a, b in zip(got, want, strict=True):
        assert torch.isfinite(a).all() and torch.equal(a, b)


def test_01_dps_completes_a_measurement_with_nan_at_its_missing_pixels():
    clean, holed, mask = _measurement()
    diff = dm.Diffusion(dm.linear_betas(10))
    run = [inpainting.dps(diff, smooth_eps, y, mask, zeta=1.0, quiet=True,
                          generator=torch.Generator().manual_seed(2)) for y in (clean, holed)]
    assert torch.isfinite(run[1]).all() and torch.equal(run[0], run[1])


@pytest.mark.slow  # over 0.7 s: make test, not check-fast
def test_01_vae_map_ignores_a_nan_at_a_missing_pixel():
    from companion.models.vae import VAE

    torch.manual_seed(0)
    vae = VAE(2)
    y = torch.rand(2, 1, 28, 28)
    mask = inpainting.make_mask("left", 2)
    y[..., :14] = NAN
    image, z = inpainting.vae_map(vae, y, mask, steps=2,
                                  generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(z).all() and torch.isfinite(image).all()


# --- 2. and 3. a guided noise function checks its chain and its steps --------------------------
class _StepModel(nn.Module):
    """A noise predictor built for T steps (its config.T, as the U-Net's)."""

    def __init__(self, T):
        super().__init__()
        self.config = type("Config", (), {"T": T})()

    def forward(self, x, t):
        return torch.zeros_like(x)


def test_02_a_classifier_of_another_chain_is_refused():
    diff = dm.Diffusion(dm.linear_betas(10))
    grad = S.classifier_log_prob_grad(NoisyClassifier(T=20).eval(), torch.tensor([1, 2]))
    with pytest.raises(checks.ArgumentError, match=r"the classifier was built for T = 20 "
                       r"steps but the diffusion has 10.*NoisyClassifier\(T=10\)"):
        S.classifier_guided_eps(diff, _StepModel(10), grad, 1.0)


def test_02_an_eps_model_of_another_chain_is_refused():
    diff = dm.Diffusion(dm.linear_betas(10))
    grad = S.classifier_log_prob_grad(NoisyClassifier(T=10).eval(), torch.tensor([1, 2]))
    with pytest.raises(checks.ArgumentError, match=r"eps_model was built for T = 20 steps "
                                                   r"but the diffusion has 10"):
        S.classifier_guided_eps(diff, _StepModel(20), grad, 1.0)
    S.classifier_guided_eps(diff, _StepModel(10), grad, 1.0)  # the same chain: accepted


def _toy_guided(w):
    gm, diff = mixture(), dm.Diffusion(dm.linear_betas(10))

    def logits(x, t):
        return toy.diffused_log_posterior(gm, x, diff.alphas_bar_[t])

    def eps(x, t):
        return -(1 - diff.alphas_bar_[t][:, None]).sqrt() * toy.diffused_score(
            gm, x, diff.alphas_bar_[t])

    grad = S.classifier_log_prob_grad(logits, torch.tensor([0, 1]), num_classes=3)
    return S.classifier_guided_eps(diff, eps, grad, w)


@pytest.mark.parametrize("w", [0.0, 2.0])
@pytest.mark.parametrize("t, got", [(0, "0..0"), (-1, "-1..-1"), (11, "11..11")])
def test_03_the_guided_function_refuses_a_step_outside_1_to_T(t, got, w):
    guided, x = _toy_guided(w), torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(checks.ArgumentError, match=f"t must lie in 1..T = 1..10, got values "
                                                   f"in {got}"):
        guided(x, torch.full((2,), t))
    assert torch.isfinite(guided(x, torch.tensor([1, 10]))).all()


# --- 4. noise levels as tensors are checked as numbers are ------------------------------------
class _Identity(nn.Module):
    def forward(self, x, c_noise):
        return x


@pytest.mark.parametrize("call, match", [
    (lambda: edm.Denoiser(_Identity())(torch.zeros(2, 3), torch.tensor([INF, 1.0])),
     r"finite noise level >= 0, got inf"),
    (lambda: edm.preconditioning(torch.tensor([0.0, 1.0])), r"finite noise level > 0, got 0"),
    (lambda: edm.preconditioning(torch.tensor([INF])), r"finite noise level > 0, got inf"),
    (lambda: edm.loss_weight(torch.tensor([0.0, 1.0])), r"finite noise level > 0, got 0"),
    (lambda: edm.denoising_loss(lambda x, s: x, torch.zeros(2, 3), 0.0),
     r"sigma \(a noise level > 0\)"),
    (lambda: edm.denoising_loss(lambda x, s: x, torch.zeros(2, 3), torch.tensor([0.0, 1.0])),
     r"finite noise level > 0, got 0"),
], ids=["Denoiser inf", "preconditioning 0", "preconditioning inf",
        "loss_weight 0", "denoising_loss 0.0", "denoising_loss tensor 0"])
def test_04_noise_levels_as_tensors_are_checked_as_numbers_are(call, match):
    with pytest.raises(checks.ArgumentError, match=match):
        call()


# --- 5. the exact denoisers' dimension, the mixture's alpha_bar --------------------------------
def test_05_exact_denoisers_refuse_points_of_another_dimension():
    with pytest.raises(checks.ArgumentError, match=r"x has 1 dimensions but the mixture 2"):
        edm.mixture_denoiser(mixture())(torch.zeros(3, 1), 1.0)
    mean, std = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    with pytest.raises(checks.ArgumentError, match=r"x has 1 dimensions but the Gaussian 4"):
        edm.gaussian_denoiser(mean, std)(torch.zeros(3, 1, dtype=torch.float64), 1.0)
    with pytest.raises(checks.ArgumentError, match=r"x has 1 dimensions but the Gaussian 4"):
        edm.gaussian_flow(mean, std, torch.zeros(3, 1, dtype=torch.float64), 1.0, 0.5)


@pytest.mark.parametrize("call", [
    lambda gm, x: toy.diffused_score(gm, x, NAN),
    lambda gm, x: toy.diffused_posterior_mean(gm, x, NAN),
    lambda gm, x: toy.diffused_log_posterior_grad(gm, x, 0, NAN),
    lambda gm, x: toy.diffused_score(gm, x, torch.tensor([0.5, NAN])),
], ids=["score", "posterior mean", "log posterior grad", "score, one NaN of two"])
def test_05_the_mixtures_closed_forms_refuse_a_nan_alpha_bar(call):
    with pytest.raises(ValueError, match=r"alpha_bar must lie in \(0, 1\]"):
        call(mixture(), torch.zeros(2, 2, dtype=torch.float64))


# --- 6. a classifier in training mode, an eps model cut from the graph ------------------------
def test_06_a_classifier_in_training_mode_is_refused():
    with pytest.raises(checks.ArgumentError, match=r"training mode.*call classifier.eval\(\)"):
        S.classifier_log_prob_grad(NoisyClassifier(T=10), torch.tensor([1, 2]))


class _Net(nn.Module):
    """A small differentiable noise predictor with weights."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x)


@pytest.mark.parametrize("cut", ["no_grad", "detach output", "detach input"])
def test_06_dps_refuses_an_eps_model_cut_from_the_graph(cut):
    torch.manual_seed(0)
    net = _Net()

    def eps(x, t):
        if cut == "no_grad":
            with torch.no_grad():
                return net(x, t)
        return net(x, t).detach() if cut == "detach output" else net(x.detach(), t)

    clean, _, mask = _measurement()
    diff = dm.Diffusion(dm.linear_betas(10))
    with pytest.raises(checks.ArgumentError, match=r"DPS's correction needs the gradient of "
                       r"eps_model.*torch.no_grad\(\).*\.detach\(\)"):
        inpainting.dps_gradient(diff, eps, torch.zeros_like(clean), 5, clean, mask)
    g = inpainting.dps_gradient(diff, net, torch.zeros_like(clean), 5, clean, mask)[0]
    assert torch.isfinite(g).all()  # the network itself: accepted


# --- 7. nearest neighbours of a NaN image, Welch's degrees of freedom ---------------------------
def test_07_knn_labels_refuses_a_nan_image():
    reference, labels = torch.rand(6, 1, 4, 4), torch.arange(6) % 2
    x = torch.rand(2, 1, 4, 4)
    x[1] = NAN
    with pytest.raises(checks.ArgumentError, match=r"x holds 16 NaN or infinite values"):
        metrics.knn_labels(x, reference, labels, k=3)
    reference[0, 0, 0, 0] = INF
    with pytest.raises(checks.ArgumentError, match=r"reference holds 1 NaN or infinite value"):
        metrics.knn_labels(x[:1], reference, labels, k=3)


@pytest.mark.parametrize("args, match", [
    ((1.0, NAN, 1.0, 5), r"n_a .*whole number >= 2, got nan"),
    ((1.0, 2.5, 1.0, 5), r"n_a .*whole number >= 2, got 2.5"),
    ((0.0, 5, 0.0, 5), r"var_a and var_b are both 0: Welch's degrees of freedom are 0/0"),
])
def test_07_welch_df_refuses_what_has_no_degrees_of_freedom(args, match):
    with pytest.raises(checks.ArgumentError, match=match):
        compare.welch_df(*args)


@pytest.mark.slow  # over 0.7 s: make test, not check-fast
def test_07_welch_of_two_constant_arms_still_gives_a_verdict():
    c = compare.welch([1.0, 1.0, 1.0], [1.0, 1.0])
    assert c.verdict == "tie" and c.df == 1.0
    assert compare.welch([2.0, 2.0], [1.0, 1.0, 1.0]).verdict == "ahead"


# --- 8. one rule: NaN and inf in a reader's tensors are refused, by name ------------------------
def _nan(*shape, at=0):
    x = torch.randn(*shape, dtype=torch.float64)
    x.view(-1)[at] = NAN
    return x


def _inf(*shape):
    x = torch.randn(*shape, dtype=torch.float64)
    x.view(-1)[-1] = INF
    return x


R = torch.randn(4, 2, dtype=torch.float64)
SILENT_BEFORE = {
    "velocity_from_eps": (lambda: flow.velocity_from_eps(_nan(4, 2), R, 0.5), "eps_hat"),
    "eps_from_velocity": (lambda: flow.eps_from_velocity(R, _inf(4, 2), 0.5), "x_tau"),
    "standard_normal_log_p": (lambda: sde.standard_normal_log_p(_inf(4, 2)), "x"),
    "bits_per_dim": (lambda: sde.bits_per_dim(torch.tensor([-1e3, -INF]), 784), "log_p"),
    "bits_per_dim, a number": (lambda: sde.bits_per_dim(NAN, 784), "log_p"),
    "divergence_exact": (lambda: sde.divergence_exact(lambda x, t: -x, _nan(4, 2), 0.5),
                         "x"),
    "divergence_hutchinson": (lambda: sde.divergence_hutchinson(
        lambda x, t: -x, _nan(4, 2), 0.5, torch.ones(1, 4, 2, dtype=torch.float64)), "x"),
    "VPSDE.marginal": (lambda: sde.VPSDE().marginal(_nan(4, 2), 0.5), "x0"),
    "normal_kl": (lambda: dm.normal_kl(R, R, _nan(4, 2), R), "mean2"),
    "normal_kl, a number": (lambda: dm.normal_kl(R, R, R, NAN), "logvar2"),
    "gaussian_log_likelihood": (lambda: dm.gaussian_log_likelihood(R, R, _inf(4, 2)),
                                "logvar"),
    "kl_per_dimension": (lambda: metrics.kl_per_dimension(R, _nan(4, 2)), "logvar"),
    "tweedie": (lambda: S.tweedie(_nan(4, 2), R, 0.5), "x_t"),
    "edm.predictions": (lambda: edm.predictions(R, _nan(4, 2), 1.0), "denoised"),
    "edm.denoiser_from": (lambda: edm.denoiser_from("eps", _inf(4, 2), R, 1.0), "x"),
    "edm.gaussian_flow": (lambda: edm.gaussian_flow(torch.zeros(2, dtype=torch.float64), 1.0,
                                                    _nan(4, 2), 1.0, 0.5), "x"),
    "edm.precondition_variances": (lambda: edm.precondition_variances(_nan(4, 2), [1.0]),
                                   "y"),
    "edm.lognormal_density": (lambda: edm.lognormal_density(torch.tensor([0.0, NAN])),
                              "log_sigma"),
}


@pytest.mark.parametrize("name", list(SILENT_BEFORE))
def test_08_nan_and_inf_in_a_readers_tensor_are_refused_by_name(name):
    call, arg = SILENT_BEFORE[name]
    with pytest.raises(checks.ArgumentError, match=rf"^{arg}\b.*(NaN or infinite|finite)"):
        call()


def test_08_gaussian_log_likelihood_refuses_a_shape_that_grows_x():
    x = torch.randn(4)
    with pytest.raises(checks.ArgumentError, match=r"mean of shape \(4, 1\) does not "
                                                   r"broadcast to x's shape \(4,\)"):
        dm.gaussian_log_likelihood(x, x[:, None], torch.zeros(4))
    with pytest.raises(checks.ArgumentError, match=r"logvar of shape \(4, 1\)"):
        dm.gaussian_log_likelihood(x, x, torch.zeros(4, 1))
    images = torch.randn(2, 1, 3, 3)  # one variance per image broadcasts: accepted
    out = dm.gaussian_log_likelihood(images, images, torch.zeros(2, 1, 1, 1))
    assert out.shape == images.shape


def test_08_normal_kl_and_the_gaussian_density_take_numbers_as_their_docstrings_say():
    """A number for a log-variance ended in torch.exp's TypeError."""
    x, zero = torch.randn(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    assert torch.equal(dm.normal_kl(x, 0.0, 0.0, 0.0), dm.normal_kl(x, zero, zero, zero))
    assert torch.equal(dm.gaussian_log_likelihood(x, 0.0, 0.0),
                       dm.gaussian_log_likelihood(x, zero, zero))


def test_08_eps_from_velocity_takes_one_time_per_point():
    """A tau (B,) was broadcast against the last dimension: wrong when B equals it."""
    v, x = torch.randn(4, 4), torch.randn(4, 4)
    tau = torch.tensor([0.0, 0.25, 0.5, 1.0])
    want = x + (1 - tau[:, None]) * v
    assert torch.allclose(flow.eps_from_velocity(v, x, tau), want)


@pytest.mark.parametrize("cell, match", [
    (NAN, "holds nan"), (INF, "holds inf"), (torch.tensor(NAN), "holds nan"),
    ((1.0, NAN), "holds a standard error of nan"), ((NAN, 0.1), "holds a value of nan"),
])
def test_08_tables_refuse_a_cell_that_is_not_a_finite_number(cell, match):
    with pytest.raises(ValueError, match=rf"row 1, column 'y' {match}.*'n/a'"):
        markdown(["x", "y"], [["a", 1.0], ["b", cell]])
    assert "n/a" in markdown(["x", "y"], [["a", 1.0], ["b", "n/a"]])


def test_08_the_finite_check_names_counts_and_lets_large_finite_values_pass():
    with pytest.raises(checks.ArgumentError, match=r"^y holds 2 NaN or infinite values \(of "
                                                   r"6\): rerun it$"):
        checks.finite("y", torch.tensor([1.0, NAN, 2.0, INF, 3.0, 4.0]), "rerun it")
    big = torch.full((10,), 3e38)  # its sum overflows float32; every value is finite
    assert checks.finite("big", big) is big
    half = torch.full((10,), 6e4, dtype=torch.float16)
    assert checks.finite("half", half) is half
    assert checks.finite("steps", torch.arange(3)) is not None  # integers hold no NaN


# --- 9. a function that cannot be differentiated: the argument and the cause named ---------------
def _no_grad_score(x):
    with torch.no_grad():
        return -x


CUT = {"no_grad": _no_grad_score, "detach": lambda x: (-x).detach(),
       "constant": lambda x: torch.ones_like(x)}


@pytest.mark.parametrize("cut", list(CUT))
@pytest.mark.parametrize("loss, what", [
    (lambda s, x: S.implicit_score_matching(s, x), "the implicit loss's trace"),
    (lambda s, x: S.sliced_score_matching(s, x, generator=torch.Generator().manual_seed(0)),
     "the sliced loss's v\\^T J v"),
], ids=["implicit", "sliced"])
def test_09_score_losses_name_a_score_that_cannot_be_differentiated(loss, what, cut):
    with pytest.raises(checks.ArgumentError, match=rf"{what} needs the gradient of score\(x\) "
                       r"with respect to x.*torch.no_grad\(\).*\.detach\(\).*constant"):
        loss(CUT[cut], torch.randn(4, 2))


def test_09_a_score_that_ignores_x_but_has_weights_is_named_too():
    lin = nn.Linear(2, 2)
    with pytest.raises(checks.ArgumentError, match=r"score\(x\).*does not depend on x"):
        S.implicit_score_matching(lambda x: lin(x.detach()), torch.randn(4, 2))


def test_09_classifier_guidance_names_a_classifier_that_cannot_be_differentiated():
    def logits(x, t):
        with torch.no_grad():
            return x.flatten(1)[:, :10]

    grad = S.classifier_log_prob_grad(logits, torch.tensor([1, 2]))
    with pytest.raises(checks.ArgumentError, match=r"classifier guidance needs the gradient "
                                                   r"of the classifier.*torch.no_grad\(\)"):
        grad(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]))


@pytest.mark.parametrize("divergence", [
    lambda f, x: sde.divergence_exact(f, x, 0.5),
    lambda f, x: sde.divergence_hutchinson(f, x, 0.5, torch.ones(1, *x.shape)),
], ids=["exact", "hutchinson"])
def test_09_the_divergences_name_a_field_that_cannot_be_differentiated(divergence):
    with pytest.raises(checks.ArgumentError, match=r"divergence needs the gradient of the "
                                                   r"field.*torch.no_grad\(\)"):
        divergence(lambda x, t: (-x).detach(), torch.randn(4, 2))


# --- 10. the sizes of the explorers' states and of the solvers' grids are bounded ---------------
PE = page_explorers
ROOT = Path(__file__).resolve().parents[1]
BILLION = 10**9
FAST = 0.5  # seconds: a refusal checks the arguments first and computes nothing


def _field(x, tau):
    return -x


def _latent(tmp_path, **kw):
    """latent_page on a small saved decoder (2 -> 4 -> 784)."""
    path = tmp_path / "dec.npz"
    import numpy as np

    np.savez(path, W0=np.zeros((4, 2), "<f2"), b0=np.zeros(4, "<f2"),
             W1=np.zeros((784, 4), "<f2"), b1=np.zeros(784, "<f2"))
    return PE.latent_page(path, **kw)


# (the call, what its error says): each ended in a memory error naming no argument, ran for
# minutes, or (the last ones) gave the page a state it cannot show, before the bounds
OVERSIZED = {
    "pinned_page sigma": (lambda _: PE.pinned_page(1.0, 1e4, 2),
                          r"^sigma must be at most 100, got 10000: the decoder std's slider "
                          r"runs from 0.05 to 1.6 sigma by 0.05, 320,000 positions"),
    "pinned_page n": (lambda _: PE.pinned_page(1.0, 1.5, 2, n=BILLION),
                      r"^n \(the samples a histogram\) must be at most 200,000"),
    "pinned_page bins": (lambda _: PE.pinned_page(1.0, 1.5, 2, bins=BILLION),
                         r"^bins must be at most 1,000"),
    "slider_values": (lambda _: PE.slider_values(0, 1e9, 1e-3),
                      r"from lo = 0 to hi = 1e\+09 by step = 0.001 has 1,000,000,000,001 "
                      r"positions, more than 10,001: .*cannot be shown on a page"),
    "slider_values, infinitely many": (lambda _: PE.slider_values(-1e308, 1e308, 1.0),
                                       r"has inf positions, more than 10,001"),
    "control": (lambda _: PE.control("t", "t", 0, 1e9, 1e-3, 0.0),
                r"1,000,000,000,001 positions"),
    "kl_page n_grid": (lambda _: PE.kl_page(n_grid=10**8),
                       r"^n_grid \(the quadrature's points\) must be at most 40,001, got "
                       r"100,000,000: every one of the state's 12,719 pairs of integrals"),
    "kl_page components": (lambda _: PE.kl_page([1e-6] * 10**6, [0.0] * 10**6, [1.0] * 10**6),
                           r"^weights \(the mixture's components\) must be at most 100"),
    "elbo_page D": (lambda _: PE.elbo_page(torch.ones(10**5, 1), torch.zeros(10**5), 0.5,
                                           torch.zeros(10**5)),
                    r"^D \(the rows of W, the data's dimension\) must be at most 1,000"),
    "forward_page T": (lambda _: PE.forward_page(T=BILLION),
                       r"^T \(the chain's steps\) must be at most 10,000, got 1,000,000,000: "
                       r"the step slider has T \+ 1 positions"),
    "forward_page n": (lambda _: PE.forward_page(n=BILLION),
                       r"^n \(the points drawn\) must be at most 10,000"),
    "solvers_page steps": (lambda _: PE.solvers_page(steps=(10**7,)),
                           r"^steps must sum to at most 5,000 steps, got 10,000,000"),
    "solvers_page n": (lambda _: PE.solvers_page(n=10**8),
                       r"^n \(the points solved\) must be at most 20,000"),
    "solvers_page n_draw": (lambda _: PE.solvers_page(n_draw=BILLION),
                            r"^n_draw \(the ends drawn\) must be at most 10,000"),
    "solvers_page n_paths": (lambda _: PE.solvers_page(n_paths=10**6),
                             r"^n_paths \(the paths drawn\) must be at most 200"),
    "solvers_page, many counts": (lambda _: PE.solvers_page(steps=range(1, 10**6)),
                                  r"^steps \(the step counts, the slider's positions\) must "
                                  r"be at most 100"),
    "fewstep_page n": (lambda _: PE.fewstep_page(n=10**8),
                       r"^n \(the points solved\) must be at most 20,000"),
    "fewstep_page steps": (lambda _: PE.fewstep_page(steps=(1, 2, 10**7)),
                           r"^steps must sum to at most 5,000"),
    "latent_page span": (lambda tmp: _latent(tmp, span=1e9, step=0.05),
                         r"has 40,000,000,001 positions, more than 10,001"),
    "guidance_page n": (lambda _: PE.guidance_page(n=BILLION),
                        r"^n \(the guided samples\) must be at most 4,000"),
    "guidance_page weights": (lambda _: PE.guidance_page(weights=range(10**6)),
                              r"^weights \(the slider's positions\) must be at most 30"),
    "guidance_page T": (lambda _: PE.guidance_page(T=BILLION),
                        r"^T \(the chain's steps\) must be at most 10,000"),
    "grid_page n": (lambda _: PE.grid_page(n=BILLION),
                    r"^n \(the starting points\) must be at most 10,000"),
    "grid_page steps": (lambda _: PE.grid_page(steps=(2, 10**7)),
                        r"^steps must sum to at most 5,000"),
    "bound_page T": (lambda _: PE.bound_page(steps=(1, BILLION)),
                     r"^every T in steps must be a whole number in 1..4096"),
    "unmasking_page shown": (lambda _: PE.unmasking_page(shown=BILLION),
                             r"^shown \(the likeliest images drawn\) must be at most 32"),
    "straight_page span": (lambda _: PE.straight_page(span=1e9),
                           r"positions, more than 10,001"),
    "masked.sampler_law D": (lambda _: mk.sampler_law(lambda z: z, 30, 3),
                             r"^D \(the pixels of an image\) must be at most 12"),
    "rho_grid": (lambda _: edm.rho_grid(BILLION),
                 r"^n \(the number of steps, a positive int\) must be at most 100,000, got "
                 r"1,000,000,000: a grid of more steps is beyond any sampler the book runs"),
    "log_sigma_grid": (lambda _: edm.log_sigma_grid(BILLION),
                       r"^n \(the number of steps.*at most 100,000.*beyond any sampler"),
    "uniform_grid": (lambda _: flow.uniform_grid(BILLION),
                     r"^n_steps \(a positive int\) must be at most 100,000.*beyond any"),
    "fewstep.ode_sample": (lambda _: fewstep.ode_sample(_field, torch.zeros(2, 2), BILLION),
                           r"^n_steps must be at most 100,000"),
    "fewstep.straightness": (lambda _: fewstep.straightness(_field, torch.zeros(2, 2),
                                                            BILLION),
                             r"^n_steps must be at most 100,000"),
    "fewstep.jump_sample": (lambda _: fewstep.jump_sample(_field, torch.zeros(2, 2), BILLION),
                            r"^n_steps must be at most 100,000"),
    "fewstep.gaussian_straightness": (lambda _: fewstep.gaussian_straightness(0.3, 2, BILLION),
                                      r"^n \(the trapezoid rule's points\) must be at most "
                                      r"1,000,001"),
}


@pytest.mark.parametrize("name", list(OVERSIZED))
def test_10_an_oversized_argument_is_refused_at_once_with_its_limit(name, tmp_path):
    call, match = OVERSIZED[name]
    start = time.perf_counter()
    with pytest.raises(checks.ArgumentError, match=match):
        call(tmp_path)
    assert time.perf_counter() - start < FAST


# what the page could not show: a slider that starts off its positions, a latent coordinate
# the decoder lacks, steps out of order, a two-dimensional latent for sliders of one
MISSHAPEN = {
    "control value": (lambda _: PE.control("z", "z", -1, 1, 0.3, 0.0),
                      r"^value = 0 is not a position of the slider z \(from -1 to 1 by 0.3\)"),
    "latent_page span": (lambda tmp: _latent(tmp, span=1.0, step=0.3),  # issue 78: names both
                         r"^span = 1 and step = 0.3 put no slider position at 0, where each "
                         r"slider starts"),
    "latent_page dims": (lambda tmp: _latent(tmp, dims=(0, 5)),
                         r"^every coordinate in dims \(of the decoder's 2\) must be a whole "
                         r"number in 0..1, got 5"),
    "solvers_page steps order": (lambda _: PE.solvers_page(steps=(5, 2)),
                                 r"^steps must increase"),
    "elbo_page K": (lambda _: PE.elbo_page([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], 0.5,
                                           [0.0, 0.0]), r"^W must be \(D, 1\)"),
    "slider_values step 0": (lambda _: PE.slider_values(0, 1, 0), r"^step must be"),
}


@pytest.mark.parametrize("name", list(MISSHAPEN))
def test_10_what_the_page_could_not_show_is_refused(name, tmp_path):
    call, match = MISSHAPEN[name]
    with pytest.raises(checks.ArgumentError, match=match):
        call(tmp_path)


def test_10_the_step_slider_of_a_short_chain_starts_on_it():
    """forward_page(T < 100) started its slider at 100, off its positions (the page then
    started it at 0); it starts at T."""
    state = PE.forward_page(T=50, n=5)
    assert state["controls"][0]["value"] == 50 and state["controls"][0]["values"][-1] == 50


@pytest.mark.parametrize("call", [
    lambda: edm.rho_grid(checks.MAX_GRID_STEPS), lambda: edm.log_sigma_grid(100_000),
    lambda: flow.uniform_grid(100_000), lambda: PE.slider_values(0, 10_000, 1),
    lambda: PE.forward_page(T=10_000, n=10), lambda: PE.pinned_page(0.0, 0.05, 1, n=2),
], ids=["rho_grid", "log_sigma_grid", "uniform_grid", "slider_values", "forward_page",
        "pinned_page"])
def test_10_the_limits_themselves_are_accepted(call):
    assert call() is not None


def _chapter_explorers():
    """(chapter, explorer, args) of every explorer cell of the chapters (their metadata)."""
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            spec = cell["metadata"].get("explorer")
            if spec:
                yield path.stem, spec["name"], spec.get("args", {})


CHAPTER_EXPLORERS = list(_chapter_explorers())


def _with_defaults(fn, args: dict) -> dict:
    bound = inspect.signature(fn).bind_partial(**args)
    bound.apply_defaults()
    return dict(bound.arguments)


@pytest.mark.parametrize("chapter, name, args", CHAPTER_EXPLORERS,
                         ids=[f"{c}-{n}" for c, n, _ in CHAPTER_EXPLORERS])
def test_10_the_chapters_own_explorers_are_within_the_bounds(chapter, name, args):
    """The arguments each chapter's explorer cell names pass the bounds: the slow builders
    (kl, solvers, fewstep, guidance, unmasking: seconds) through their checks alone, the
    others whole."""
    if name == "kl":
        PE._kl_sizes(**_with_defaults(PE.kl_page, args))
    elif name in ("solvers", "fewstep"):
        a = _with_defaults(PE.PAGES[name], args)
        PE._solver_sizes(a["n"], a["n_draw"], a["n_paths"], a["steps"])
    elif name == "guidance":
        a = _with_defaults(PE.guidance_page, args)
        PE._guidance_sizes(a["n"], a["y"], a["weights"], a["T"])
    elif name == "unmasking":
        PE._unmasking_sizes(_with_defaults(PE.unmasking_page, args)["shown"])
    else:
        if "stored" in args:
            args = {**args, "stored": ROOT / args["stored"]}
        assert PE.page_state(name, **args)["controls"]


def test_10_every_explorer_of_the_page_is_a_chapters():
    assert {name for _, name, _ in CHAPTER_EXPLORERS} == set(PE.PAGES)


def test_10_the_chapters_grids_are_within_the_bound():
    """The chapters' longest grids: chapter 17's rho_grid(128), chapter 15's straightness
    over 1,000 steps, chapter 13's 4,000-step reference (uniform in tau here)."""
    assert len(edm.rho_grid(128)) == 129 and len(edm.log_sigma_grid(128)) == 129
    assert len(flow.uniform_grid(4000)) == 4001
    _, s = fewstep.straightness(_field, torch.zeros(2, 2), 1000)
    assert s.shape == (2,)
    assert fewstep.gaussian_straightness(1.0, 2) > 0  # its default 20,001 points
