"""One small set of argument checks (companion.run.checks), used across companion, and issue
34's findings outside `fit`: each bad input ends in a clear error naming the argument, each
valid one (NumPy and tensor scalars) is taken. tests/probes/probe_inputs.py's 154 cases run
here one by one; the findings of the issue have their own, more exact tests below."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from companion import diffusion as dm
from companion import inpainting as ip
from companion import latent_diffusion as ld
from companion.run import checks
from tests.probes import probe_inputs

CASES = probe_inputs.cases()


# the data cases load MNIST (seconds, whichever runs first): in `make test`, not in
# check-fast's minute
SLOW_CASES = ("data: ",)


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.slow) if f"{c[0]}: {c[1]}".startswith(SLOW_CASES)
    else c for c in CASES], ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_misuse_gets_a_clear_error_and_valid_input_works(case):
    _, _, fn, expect, want = case
    verdict, why = probe_inputs.classify(fn, expect, want)
    assert verdict == ("clear" if expect == "error" else "ok"), why


# --- the checks themselves --------------------------------------------------------------------
def test_count_takes_whole_numbers_of_any_kind_and_names_the_argument():
    assert checks.count("T", np.int64(3)) == 3 and checks.count("T", torch.tensor(3)) == 3
    assert type(checks.count("T", np.int32(3))) is int
    for bad in (2.5, 2.0, "3", None, True, torch.tensor(2.0), torch.ones(2, dtype=torch.long)):
        with pytest.raises(checks.ArgumentError, match="T must be a whole number >= 1"):
            checks.count("T", bad)
    with pytest.raises(ValueError, match="n must be a whole number >= 0, got -1"):
        checks.count("n", -1, minimum=0)


def test_real_refuses_nan_inf_strings_and_bounds():
    assert checks.real("s", np.float32(0.5)) == 0.5 and checks.real("s", torch.tensor(2)) == 2.0
    for bad, match in ((float("nan"), "finite"), (math.inf, "finite"), ("1", "real number"),
                       (None, "real number"), (True, "real number")):
        with pytest.raises(checks.ArgumentError, match=f"s must be a {match}"):
            checks.real("s", bad)
    assert checks.real("s", math.inf, finite=False) == math.inf
    with pytest.raises(TypeError, match=r"p must be a number in \[0, 1\], got 1.5"):
        checks.probability("p", 1.5)
    with pytest.raises(ValueError, match=r"lr must be a number > 0, got 0"):
        checks.positive("lr", 0)


def test_images_say_how_to_convert():
    x = torch.rand(2, 1, 28, 28)
    assert checks.images("x", x) is x
    with pytest.raises(ValueError, match=r"0..255 bytes\? divide by 255$"):
        checks.images("x", x * 255)
    with pytest.raises(ValueError, match=r"on \[-1, 1\]\? map with \(x \+ 1\) / 2"):
        checks.images("x", x * 2 - 1)
    with pytest.raises(ValueError, match=r"0..255 bytes\? divide by 255, then x \* 2 - 1"):
        checks.images("x", x * 255, low=-1.0)
    with pytest.raises(ValueError, match=r"shape \(B, 1, 28, 28\), got \(2, 784\)"):
        checks.images("x", x.flatten(1), shape=(1, 28, 28))
    with pytest.raises(TypeError, match="floating-point"):
        checks.images("x", (x * 255).byte())
    with pytest.raises(TypeError, match=r"torch tensor, got a ndarray \(convert"):
        checks.images("x", x.numpy())


# --- issue 34's findings outside fit ----------------------------------------------------------
def zero_eps(x, t):
    return torch.zeros_like(x)


@pytest.mark.parametrize("call", [
    lambda d, y, m, vae: ip.inpaint(d, zero_eps, y * 255, m, quiet=True),
    lambda d, y, m, vae: ip.denoise(d, zero_eps, y * 255, 0.1, quiet=True),
    lambda d, y, m, vae: ip.vae_map(vae, y * 255, m, steps=1),
    lambda d, y, m, vae: ip.vae_pseudo_gibbs(vae, y * 255, m, iterations=1),
    lambda d, y, m, vae: ld.encode(vae, y * 255, 1.0),
], ids=["inpaint", "denoise", "vae_map", "vae_pseudo_gibbs", "latent encode"])
def test_0_255_images_are_refused_everywhere(call):
    """Finding 8: they passed silently where the recipes and to_8bit_range refuse them."""
    from companion.models.vae import VAE

    d = dm.Diffusion(dm.linear_betas(10, 1e-3, 0.2))
    vae = VAE(latent_dim=2, hidden=(16,))
    with pytest.raises(ValueError, match="255"):
        call(d, torch.rand(2, 1, 28, 28), ip.make_mask("left", 2), vae)


def test_denoise_takes_noisy_images_far_outside_the_unit_range():
    """The check of denoise's input allows for the noise: sigma = 1.4 pushes pixels to
    +-5, and the chapter's images on [-1, 1] plus that noise are taken."""
    d = dm.Diffusion(dm.linear_betas(10, 1e-3, 0.2))
    g = torch.Generator().manual_seed(0)
    y = torch.rand(8, 1, 28, 28, generator=g) * 2 - 1 + 1.39 * torch.randn(8, 1, 28, 28,
                                                                          generator=g)
    assert ip.denoise(d, zero_eps, y, 1.39, quiet=True).shape == y.shape


@pytest.mark.parametrize("sampler", ["ddim", "langevin"])
def test_a_wrongly_shaped_model_output_is_refused_not_broadcast(sampler):
    """Finding 9: Diffusion.sample refused it; sample_ddim and annealed_langevin broadcast."""
    d = dm.Diffusion(dm.linear_betas(10, 1e-3, 0.2))

    def per_image(x, t):
        return torch.zeros(x.shape[0], 1, 1, 1)

    with pytest.raises(ValueError, match=r"shape \(2, 1, 1, 1\).*\(2, 1, 4, 4\)"):
        if sampler == "ddim":
            d.sample_ddim(per_image, (2, 1, 4, 4), n_steps=3)
        else:
            dm.annealed_langevin(per_image, torch.zeros(2, 1, 4, 4), [1.0], [0.1], 2,
                                 quiet=True)


@pytest.mark.parametrize("t", [0, 11, -3])
def test_latent_denoiser_refuses_steps_outside_1_to_T(t):
    """Finding 10: its docstring promised an error; the U-Net gives one."""
    from companion.models.latent_denoiser import LatentDenoiser

    den = LatentDenoiser(dim=4, width=16, depth=1, T=10)
    with pytest.raises(ValueError, match=r"t must lie in 1..T = 1..10"):
        den(torch.randn(3, 4), torch.tensor([5, t, 5]))
    assert den(torch.randn(3, 4), torch.tensor([1, 10, 5])).shape == (3, 4)


def test_binomial_at_p_0_and_1_is_exact():
    from companion.kl import binomial_log_prob_of_frequency as f

    assert float(f(3, 0, 0.0)) == 0.0 and float(f(3, 1, 0.0)) == -math.inf
    assert float(f(3, 3, 1.0)) == 0.0 and float(f(3, 2, 1.0)) == -math.inf
    assert float(f(3, 1, 0.5)) == pytest.approx(math.log(3 / 8))


def test_hierarchical_vae_samples_zero_images_like_the_vae():
    from companion.models.hvae import HierarchicalVAE
    from companion.models.vae import VAE

    assert HierarchicalVAE((4, 2), (32, 16)).sample(0).shape == (0, 1, 28, 28)
    assert VAE(latent_dim=2, hidden=(16,)).sample(0).shape == (0, 1, 28, 28)


def test_bfloat16_images_fail_the_8bit_grid_check():
    from companion.models.vae import VAE, to_8bit_range

    vae = VAE(latent_dim=2, hidden=(16,), likelihood="discretized")
    x = to_8bit_range(torch.rand(2, 1, 28, 28))
    vae.elbo_terms(x)  # float32 on the grid: fine
    with pytest.raises(ValueError, match="bfloat16.*256 levels"):
        vae.to(torch.bfloat16).elbo_terms(x.bfloat16())


def test_seeds_too_large_for_torch_are_refused_by_name():
    from companion.run.runtime import seed_everything

    with pytest.raises(ValueError, match="seed must be a non-negative int below 2\\*\\*63"):
        seed_everything(2**70)
    assert seed_everything(np.int64(7)).initial_seed() == 7


def test_als_with_no_iterations_is_refused():
    from companion.models.autoencoder import fit_linear_als, linear_autoencoder

    with pytest.raises(ValueError, match="iters must be a whole number >= 1, got 0"):
        fit_linear_als(linear_autoencoder(2), torch.rand(8, 1, 28, 28), iters=0)


def test_a_cached_mnist_whose_files_disagree_is_refused(tmp_path):
    """Images and labels of different lengths, or a label outside 0..9, loaded silently."""
    from companion.data import CorruptDataError

    pytest.importorskip("torchvision")
    with pytest.raises(CorruptDataError, match="100 train images but 60 labels"):
        probe_inputs._mismatched_idx(__import__("companion.data").data, 100, 60)
    with pytest.raises(CorruptDataError, match="label is 254"):
        probe_inputs._mismatched_idx(__import__("companion.data").data, 10, 10, 254)


@pytest.mark.skipif(torch.cuda.is_available(), reason="'cuda' names a device here")
def test_a_fake_cuda_device_passes_the_device_check():
    """The memory test measures the chapters on fake "cuda" tensors on machines without a
    GPU; outside a FakeTensorMode the same name is refused."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        assert checks.device("device", "cuda") == torch.device("cuda")
    with pytest.raises(checks.ArgumentError, match="no usable CUDA GPU"):
        checks.device("device", "cuda")
