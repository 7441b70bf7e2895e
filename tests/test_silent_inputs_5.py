"""Silent and cryptic answers of the guidance, EDM and in-painting code made clear errors
(issue 65, points 1-9): each test failed on the code before its fix.

Point 8's rule for the whole package: a public function that takes a reader's data tensors
refuses NaN and inf in them (`checks.finite`), naming the argument.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from companion import compare, edm, flow, inpainting, metrics, sde, toy
from companion import diffusion as dm
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
