"""Errors audit: every mistake a reader is likely to make gets a message that says what was
wrong and how to fix it.

Each case gives the call, the exception, words that name what was wrong, and words of the
fix. Areas: wrong shapes, wrong dtypes, wrong devices, bad hyperparameters, a checkpoint
from another model, a NaN loss, an interrupted run resumed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import companion
from companion import data, kl, pca, plot
from companion import diffusion as dm
from companion.metrics import frechet_distance, frechet_gaussian
from companion.models.autoencoder import Autoencoder
from companion.models.unet import UNet, UNetConfig, preset
from companion.models.vae import VAE, ELBOLoss
from companion.run import profiles
from companion.run.checkpoint import CheckpointMismatchError, NonFiniteLossError
from companion.train import EMA, fit

X, Y = torch.randn(10, 3), torch.randn(10, 1)


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def linear():
    return nn.Linear(3, 1)


def fit_quiet(model=None, fn=mse, d=(X, Y), **kw):
    kw.setdefault("steps", 2)
    return fit(model or linear(), fn, d, quiet=True, **kw)


def diff10():
    return dm.Diffusion(dm.linear_betas(10, 0.01, 0.2))


def zero_eps(x, t):
    return torch.zeros_like(x)


def levels(n=2):
    """n images on the 8-bit grid of [-1, 1] (what the discretized decoder expects)."""
    return torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(0)
                         ).float() / 127.5 - 1


def nan_row(n=4, d=3):
    a = torch.randn(n, d)
    a[1, 2] = float("nan")
    return a


CASES = {
    # --- shapes ---------------------------------------------------------------------------
    "flat images into a VAE": (lambda: VAE(4).encode(torch.rand(2, 784)), ValueError,
                               ["(2, 784)"], ["x.view(-1, 1, 28, 28)"]),
    "one code into a decoder": (lambda: Autoencoder(4).decode(torch.rand(4)), ValueError,
                                ["(4,)"], ["z.unsqueeze(0)"]),
    "z of the wrong size": (lambda: VAE(4).decode(torch.rand(2, 5)), ValueError,
                            ["(2, 5)"], ["latent size 4"]),
    "data and labels of different lengths": (lambda: fit_quiet(d=(X, Y[:5])), ValueError,
                                             ["[10, 5]"], ["one row per example"]),
    "mu and logvar of different shapes": (
        lambda: kl.kl_diag_standard(torch.zeros(2, 3), torch.zeros(2, 4)), ValueError,
        ["(2, 3)", "(2, 4)"], [".chunk(2, dim=-1)"]),
    "p and q of different sizes": (
        lambda: kl.kl_discrete(torch.tensor([0.5, 0.5]), torch.ones(3) / 3), ValueError,
        ["(2,)", "(3,)"], ["same shape"]),
    "an image grid without channels": (lambda: plot.image_grid(torch.rand(2, 28, 28)),
                                       ValueError, ["(2, 28, 28)"], ["(B, C, H, W)"]),
    # --- dtypes ---------------------------------------------------------------------------
    "uint8 images": (lambda: VAE(4).encode(torch.randint(0, 255, (2, 1, 28, 28),
                                                         dtype=torch.uint8)),
                     TypeError, ["torch.uint8"], ["x.float() / 255"]),
    "float64 data, float32 model": (lambda: fit_quiet(d=(X.double(), Y.double())),
                                    RuntimeError, ["torch.float64", "torch.float32"],
                                    ["x.to(torch.float32)"]),
    "NumPy data": (lambda: fit_quiet(d=X.numpy()), TypeError, ["ndarray"],
                   ["torch.from_numpy"]),
    "a loss that is not a scalar": (lambda: fit_quiet(fn=lambda m, b: (m(b[0]) - b[1]) ** 2),
                                    ValueError, ["shape (10, 1)"], [".mean()"]),
    "a loss that is a float": (lambda: fit_quiet(fn=lambda m, b: 1.0), TypeError,
                               ["got float"], ["scalar tensor"]),
    # --- devices --------------------------------------------------------------------------
    "data on another device than the model": (
        lambda: fit_quiet(d=(X.to("meta"), Y.to("meta"))), RuntimeError,
        ["on meta", "model is on cpu"], ["model.to(device)", "x.to(device)"]),
    # --- hyperparameters ------------------------------------------------------------------
    "learning rate 0": (lambda: fit_quiet(lr=0), ValueError, ["lr", "got 0"], ["1e-3"]),
    "negative learning rate": (lambda: fit_quiet(lr=-1e-3), ValueError, ["got -0.001"],
                               ["positive number"]),
    "batch size 0": (lambda: fit_quiet(batch_size=0), ValueError, ["got 0"],
                     ["positive int"]),
    "zero epochs": (lambda: fit_quiet(steps=None, epochs=0), ValueError, ["0 steps"],
                    ["epochs >= 1"]),
    "both epochs and steps": (lambda: fit_quiet(epochs=1), ValueError, ["epochs=", "steps="],
                              ["exactly one"]),
    "negative clip": (lambda: fit_quiet(clip=-1.0), ValueError, ["got -1.0"], ["e.g. 1.0"]),
    "EMA decay 1": (lambda: EMA(linear(), 1.0), ValueError, ["got 1.0"], ["(0, 1)"]),
    "latent size 0": (lambda: VAE(0), ValueError, ["got 0"], ["positive int"]),
    "unknown likelihood": (lambda: VAE(2, likelihood="gauss"), ValueError, ["'gauss'"],
                           ["bernoulli", "gaussian"]),
    "negative decoder sigma": (lambda: VAE(2, likelihood="gaussian", sigma=-1.0), ValueError,
                               ["got -1.0"], ["positive float", '"learned"']),
    "negative KL weight": (lambda: ELBOLoss(beta=-1), ValueError, ["-1"], [">= 0"]),
    "unknown activation": (lambda: Autoencoder(2, activation="gelu"), ValueError, ["'gelu'"],
                           ["relu", "tanh"]),
    "unknown profile": (lambda: profiles.get_profile("gpu2"), ValueError, ["'gpu2'"],
                        ["ci, cpu, gpu", "BOOK_PROFILE"]),
    "negative seed": (lambda: companion.seed_everything(-1), ValueError, ["-1"],
                      ["non-negative int"]),
    "a standard deviation where a variance goes": (lambda: kl.kl_normal(0.0, -1.0, 0.0, 1.0),
                                                   ValueError, ["var_p min -1"],
                                                   ["not standard deviations"]),
    "a covariance that is not one": (
        lambda: kl.kl_mvn(torch.zeros(2), -torch.eye(2), torch.zeros(2), torch.eye(2)),
        ValueError, ["cov_p"], ["A @ A.T + eps * I"]),
    "too many principal components": (lambda: pca.pca(torch.rand(5, 3), 4), ValueError,
                                      ["got 4"], ["[1, 3]"]),
    "unknown dataset": (lambda: data.load("cifar", download=False), ValueError, ["'cifar'"],
                        ["mnist", "fashion"]),
    "empty subset": (lambda: data.load("mnist", n_train=0, download=False, verbose=False),
                     ValueError, ["got 0"], ["must be positive"]),
    "grey values binarized": (lambda: data.binarize(torch.tensor([2.0])), ValueError,
                              ["[2, 2]"], ["[0, 1]"]),
    # --- diffusion: data the bound's discretized decoder does not model ---------------------
    "bound on pixels in 0..255": (
        lambda: diff10().bound_terms(zero_eps, (levels() + 1) * 127.5, quiet=True),
        ValueError, ["values in [0, 255]", "[-1, 1]"], ["x / 127.5 - 1"]),
    "bound on images in [0, 1]": (
        lambda: diff10().bound_terms(zero_eps, (levels() + 1) / 2, quiet=True),
        ValueError, ["not on the 8-bit grid", "-1 + 2k/255"], ["x * 2 - 1"]),
    "bound on real-valued data": (
        lambda: diff10().bound_terms(zero_eps, torch.rand(2, 1, 28, 28) * 2 - 1, quiet=True),
        ValueError, ["not on the 8-bit grid"], ["quantize_8bit", "decoder='gaussian'"]),
    "bound on NaN images": (
        lambda: diff10().bound_terms(zero_eps, levels() * float("nan"), quiet=True),
        ValueError, ["x0 holds NaN"], ["[-1, 1]"]),
    "Monte Carlo bound on pixels in 0..255": (
        lambda: diff10().bound_monte_carlo(zero_eps, (levels() + 1) * 127.5), ValueError,
        ["values in [0, 255]", "bound_monte_carlo"], ["x / 127.5 - 1"]),
    "one bound term on pixels in 0..255": (
        lambda: diff10().term_at(zero_eps, (levels() + 1) * 127.5, 3), ValueError,
        ["values in [0, 255]", "term_at"], ["x / 127.5 - 1"]),
    "bound on uint8 images": (
        lambda: diff10().bound_terms(zero_eps, torch.zeros(2, 1, 28, 28, dtype=torch.uint8),
                                     quiet=True),
        TypeError, ["floating-point", "torch.uint8"], ["x0.float() / 127.5 - 1"]),
    "bound on no images": (
        lambda: diff10().bound_terms(zero_eps, levels()[:0], quiet=True), ValueError,
        ["no images", "(0, 1, 28, 28)"], ["at least one image"]),
    # --- diffusion: training and the forward process ---------------------------------------
    "L_simple on an empty batch": (
        lambda: diff10().simple_loss(zero_eps, torch.zeros(0, 1, 28, 28)), ValueError,
        ["empty batch", "(0, 1, 28, 28)"], ["at least one image"]),
    "L_simple on int64 data": (
        lambda: diff10().simple_loss(zero_eps, torch.zeros(2, 3, dtype=torch.long)),
        TypeError, ["torch.int64"], ["x0.float()"]),
    "L_simple with a model that broadcasts": (
        lambda: diff10().simple_loss(lambda x, t: x[:, :, :1], levels()), ValueError,
        ["(2, 1, 1, 28)", "(2, 1, 28, 28)"], ["same shape"]),
    "a model that returns nothing": (
        lambda: diff10().simple_loss(lambda x, t: None, levels()), TypeError,
        ["NoneType"], ["must return a tensor"]),
    "q_sample on uint8 images": (
        lambda: diff10().q_sample(torch.zeros(2, 3, dtype=torch.uint8), 1,
                                  torch.zeros(2, 3, dtype=torch.uint8)),
        TypeError, ["torch.uint8"], ["x0.float() / 127.5 - 1"]),
    "q_sample on a NumPy array": (
        lambda: diff10().q_sample(torch.zeros(2, 3).numpy(), 1, torch.zeros(2, 3)), TypeError,
        ["got ndarray"], ["torch.from_numpy"]),
    "the prior term of uint8 images": (
        lambda: diff10().prior_kl(torch.zeros(2, 3, dtype=torch.uint8)), TypeError,
        ["torch.uint8"], ["x0.float() / 127.5 - 1"]),
    "sampling from an integer x_T": (
        lambda: diff10().sample(zero_eps, (2, 3), x_T=torch.zeros(2, 3, dtype=torch.long),
                                quiet=True),
        TypeError, ["x_T", "torch.int64"], ["x_T.float()"]),
    # --- the U-Net --------------------------------------------------------------------------
    "float64 images into a float32 U-Net": (
        lambda: UNet(preset("tiny", T=10))(torch.zeros(2, 1, 28, 28, dtype=torch.float64),
                                           torch.ones(2, dtype=torch.long)),
        TypeError, ["torch.float64", "torch.float32"], ["x.to(torch.float32)"]),
    "uint8 images into the U-Net": (
        lambda: UNet(preset("tiny", T=10))(torch.zeros(2, 1, 28, 28, dtype=torch.uint8),
                                           torch.ones(2, dtype=torch.long)),
        TypeError, ["torch.uint8"], ["x.float() / 127.5 - 1"]),
    "U-Net widths that GroupNorm cannot split": (
        lambda: UNet(preset("tiny", channels=(8, 16, 30))), ValueError,
        ["(8, 16, 30)", "got 30"], ["multiple of groups = 4"]),
    "U-Net with an odd first width": (
        lambda: UNet(UNetConfig(channels=(7, 14, 28), groups=7, heads=1)), ValueError,
        ["(7, 14, 28)"], ["even"]),
    "U-Net for T = 0 steps": (lambda: UNet(preset("tiny", T=0)), ValueError, ["got 0"],
                              ["T=diffusion.T"]),
    "U-Net with a width of 0": (lambda: UNet(preset("tiny", channels=(0, 16, 32))),
                                ValueError, ["(0, 16, 32)"], ["positive ints"]),
    # --- Fréchet distance ----------------------------------------------------------------
    "Fréchet distance of NaN features": (
        lambda: frechet_distance(nan_row(), torch.randn(4, 3)), ValueError,
        ["a holds 1 NaN/inf", "rows [1]"], ["drop or fix those rows"]),
    "Fréchet distance of infinite features": (
        lambda: frechet_distance(torch.randn(4, 3), nan_row() * float("inf")), ValueError,
        ["b holds", "NaN/inf"], ["diverged model"]),
    "Fréchet distance of empty features": (
        lambda: frechet_distance(torch.zeros(5, 0), torch.zeros(5, 0)), ValueError,
        ["d = 0", "(5, 0)"], ["not an empty slice"]),
    "Fréchet distance of complex features": (
        lambda: frechet_distance(torch.zeros(5, 2, dtype=torch.cfloat),
                                 torch.zeros(5, 2, dtype=torch.cfloat)),
        TypeError, ["torch.complex64"], ["real features"]),
    "Gaussians of different dimensions": (
        lambda: frechet_gaussian(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2)),
        ValueError, ["cov_a (3, 3)", "mu_a (2,)"], ["(d, d) of one d"]),
    "a NaN covariance": (
        lambda: frechet_gaussian(torch.zeros(2), torch.eye(2) * float("nan"), torch.zeros(2),
                                 torch.eye(2)),
        ValueError, ["cov_a holds", "NaN/inf"], ["finite features"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_message_says_what_and_how_to_fix(case):
    call, exc, what, fix = CASES[case]
    with pytest.raises(exc) as err:
        call()
    msg = str(err.value)
    for words in what:
        assert words in msg, f"{case}: the message does not say what was wrong ({words!r}): {msg}"
    for words in fix:
        assert words in msg, f"{case}: the message does not say how to fix it ({words!r}): {msg}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_without_one():
    with pytest.raises(RuntimeError) as err:
        companion.setup(device="cuda")
    msg = str(err.value)
    assert "no usable CUDA GPU" in msg and "Change runtime type > GPU" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_profile_on_a_cpu_warns(capsys):
    with pytest.warns(UserWarning, match="BOOK_PROFILE=cpu"):
        companion.setup(profile="gpu")
    assert "profile=gpu" in capsys.readouterr().out


# --- checkpoints -----------------------------------------------------------------------------
def test_checkpoint_of_another_model(tmp_path):
    path = tmp_path / "ckpt.pt"
    fit_quiet(linear(), checkpoint=path, config={"lr": 1e-3})
    other = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(CheckpointMismatchError) as err:
        fit_quiet(other, checkpoint=path, config={"lr": 1e-3})
    msg = str(err.value)
    assert str(path) in msg and "model: checkpoint has 'Linear', this run 'Sequential'" in msg
    assert "n_params: checkpoint has 4, this run 21" in msg
    assert "Delete it to train from scratch" in msg


def test_checkpoint_of_another_configuration(tmp_path):
    path = tmp_path / "ckpt.pt"
    fit_quiet(linear(), checkpoint=path, config={"lr": 1e-3, "profile": "ci"})
    with pytest.raises(CheckpointMismatchError) as err:
        fit_quiet(linear(), checkpoint=path, config={"lr": 1e-2, "profile": "ci"})
    msg = str(err.value)
    assert "config['lr']: checkpoint has 0.001, this run 0.01" in msg
    assert "profile" not in msg.replace(str(path), "")  # only what differs is listed
    assert "Delete it" in msg and "different checkpoint path" in msg


def test_checkpoint_that_is_not_one(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"half a file")
    with pytest.raises(CheckpointMismatchError) as err:
        fit_quiet(checkpoint=path)
    msg = str(err.value)
    assert f"cannot read checkpoint {path}" in msg and "delete it" in msg


# --- NaN ---------------------------------------------------------------------------------
def test_nan_loss_names_the_step_and_the_fixes(tmp_path):
    calls = []

    def blows_up(model, batch):
        calls.append(1)
        loss = mse(model, batch)
        return loss * float("nan") if len(calls) == 3 else loss

    with pytest.raises(NonFiniteLossError) as err:
        fit_quiet(fn=blows_up, steps=5, batch_size=4, check_every=1,
                  checkpoint=tmp_path / "c.pt")
    msg = str(err.value)
    assert "became nan at step 3 of 5" in msg
    assert "Lower the learning rate" in msg and "clip=1.0" in msg and "NaN/inf" in msg
    assert str(tmp_path / "c.pt") in msg


def test_nan_in_the_inputs_is_caught_at_once():
    x = X.clone()
    x[3, 1] = float("nan")
    with pytest.raises(NonFiniteLossError, match="check the inputs for NaN/inf"):
        fit_quiet(d=(x, Y), steps=3, batch_size=10, check_every=1)


# --- an interrupted run, resumed -----------------------------------------------------------
def test_interrupted_run_is_saved_and_resumes_where_it_stopped(tmp_path, capsys):
    path = tmp_path / "run.pt"
    calls = []

    def interrupted_at_7(model, batch):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return mse(model, batch)

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit_quiet(fn=interrupted_at_7, steps=12, batch_size=5, checkpoint=path, save_every=100)
    out = capsys.readouterr().out
    assert f"interrupted at step 6; saved {path}, run again to resume" in out

    result = fit_quiet(steps=12, batch_size=5, checkpoint=path)
    assert result.resumed_at == 6 and result.steps == 12
    assert result.history["step"] == list(range(1, 13))  # one history, no gap, no repeat
