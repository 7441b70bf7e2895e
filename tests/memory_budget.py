"""Each chapter's heaviest GPU operations on Colab's T4, measured without a GPU.

Every operation below is a call the chapter makes, through companion's own functions, at the
`gpu` profile's sizes and on the shapes of the full MNIST Colab downloads (60,000 training and
10,000 test digits), run on fake tensors (torch's FakeTensorMode: shapes, dtypes and devices,
no storage) on the device "cuda", with the T4's precision where the chapter uses mixed
precision (fp16 autocast, CUDA's policy: GroupNorm, softmax and upsampling stay in float32).
torch's MemTracker (torch.distributed._tools.mem_tracker, the tool torchtitan estimates
memory with) records the peak of the bytes alive on the device, parameters included, as
torch.cuda.max_memory_allocated would; the caching allocator reserves somewhat more, and the
CUDA context and cuDNN's workspaces take about 0.5-1 GB of the T4's 15 GB: hence the budget
of 14 GB (tests/test_memory.py).

    python tests/memory_budget.py          # the table: chapter, operation, peak GB
"""

from __future__ import annotations

import contextlib
import gc
import math
import pkgutil
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

BUDGET_GB = 14.0
N_TRAIN, N_TEST = 60_000, 10_000  # the full MNIST, as Colab downloads it
DEVICE = torch.device("cuda")


@dataclass
class Operation:
    chapter: str
    name: str
    run: Callable[[], object]


def _images(n: int, *, lo: float = 0.0, device=DEVICE) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, device=device) * (1 - lo) + lo


@contextlib.contextmanager
def _t4_autocast():
    """fp16 autocast for CUDA tensors, as on a T4, on a machine without a GPU (torch.autocast
    refuses to turn on without CUDA, the lower-level switches do not)."""
    was_on, was_dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", torch.float16)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        torch.autocast_decrement_nesting()
        torch.set_autocast_enabled("cuda", was_on)
        torch.set_autocast_dtype("cuda", was_dtype)
        torch.clear_autocast_cache()


def _amp_eps(model):
    """recipes.eps_function on a T4: the network in fp16 autocast, float32 out."""
    from companion import recipes

    with mock.patch("companion.run.precision.autocast_dtype", return_value=None):
        eps = recipes.eps_function(model, "cpu")  # the wrapper, with autocast left to us

    def fp16(x, t):
        with _t4_autocast():
            return eps(x, t)
    return fp16


# --- the chapters' models at the gpu profile's sizes --------------------------------------
def _ddpm(device=DEVICE):
    from companion import recipes
    from companion.models.unet import UNet, preset
    from companion.run.profiles import get_profile

    profile = get_profile("gpu")
    settings = recipes.ddpm_settings(profile)
    with device:
        model = UNet(preset(settings["preset"], T=settings["T"])).eval()
    return model, _diffusion(), settings


def _diffusion():
    """Chapter 9's schedule, built real on the CPU (its host copies are read as numbers)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from companion import recipes
    from companion.run.profiles import get_profile

    with unset_fake_temporarily():
        return recipes.ddpm_diffusion(get_profile("gpu"), "cpu")


def _on_device(d, device=DEVICE):
    """The diffusion's buffers as fake tensors on `device` (the host copies stay real)."""
    for name, value in list(vars(d).items()):
        if name.endswith("_") and torch.is_tensor(value):
            setattr(d, name, torch.empty(value.shape, dtype=value.dtype, device=device))
    d.device = torch.device(device)
    return d


# --- operations -----------------------------------------------------------------------------
# The autograd engine wants a real CUDA context for CUDA tensors, fake or not, so the calls
# that take gradients run on fake CPU tensors in float32. The memory is the same but for
# the precision: for the training step an upper bound of fp16 autocast's (which saves
# half-precision activations, and costs 2 bytes a weight for their fp16 copies: 30 MB);
# the likelihood runs in float32 on the GPU too.
GRAD_DEVICE = torch.device("cpu")


def ddpm_training_step():
    """Chapter 9's (and 13's) training step: the 15M U-Net, batch 128, Adam (its two
    moments included), float32."""
    from companion.run.precision import default_optimizer

    model, d, settings = _ddpm(GRAD_DEVICE)
    model.train()
    d = _on_device(d, GRAD_DEVICE)
    opt = default_optimizer(model.parameters(), 1e-4, "cpu")
    x0 = _images(settings["batch_size"], lo=-1, device=GRAD_DEVICE)
    d.simple_loss(model, x0).backward()
    opt.step()


def ddpm_bound_monte_carlo(draws: int = 20):
    """Chapters 9 and 10: bound_monte_carlo(model, x_test, draws=20), float32."""
    model, d, _ = _ddpm()
    d = _on_device(d)
    x = _images(N_TEST, lo=-1)
    with torch.no_grad():
        d.bound_monte_carlo(model, x, draws=draws)


def ddpm_bound_terms(n: int = 16):
    """Chapter 9: every term of the bound for 16 test digits, max_batch=2048, float32."""
    model, d, _ = _ddpm()
    d = _on_device(d)
    x = _images(n, lo=-1)
    d.bound_terms(model, x, max_batch=2048, quiet=True)


def ddpm_sampling(n: int, fp32: bool = False):
    """DDIM sampling of n images through recipes.eps_function in fp16 (chapters 9, 12), or
    through recipes.network_function in float32 (chapter 13's ODE samplers)."""
    model, d, _ = _ddpm()
    d = _on_device(d)
    eps = _fp32_eps(model) if fp32 else _amp_eps(model)
    with torch.no_grad():
        d.sample_ddim(eps, (n, 1, 28, 28), n_steps=2, quiet=True)


def ode_likelihood(n: int = 500):
    """Chapter 13: one evaluation of the likelihood's right-hand side on n digits, the field
    (chapter 9's network through the chain's clock) and its Hutchinson divergence with one
    Rademacher probe, in float32 (Song et al. evaluate in float32)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from companion import sde

    model, d, _ = _ddpm(GRAD_DEVICE)
    with unset_fake_temporarily():
        clock = sde.ChainClock(d.alphas_bar)
    eps_model = _fp32_eps(model)
    field = clock.sde.ode_drift(clock.sde.score_from_eps(clock.eps(eps_model)))
    x = _images(n, lo=-1, device=GRAD_DEVICE)
    probes = torch.ones(1, *x.shape, device=GRAD_DEVICE)
    sde.field_and_divergence(field, x, 0.5, probes)


def _fp32_eps(model):
    from companion import recipes

    return recipes.network_function(model, "cpu", precision="float32")


def latent_codes():
    """Chapter 11: the autoencoder's posterior codes of the 60,000 training digits."""
    from companion import latent_diffusion as ld
    from companion import recipes
    from companion.models.vae import VAE

    with DEVICE:
        vae = VAE(recipes.LATENT_DIM, arch="conv", likelihood="discretized").eval()
    ld.posterior_codes(vae, _images(N_TRAIN, lo=-1))


def conv_vae_iw(k: int):
    """Chapter 6: the importance-weighted bound of the convolutional VAE (channels 32, 64)
    on the 10,000 binarized test digits, k samples each."""
    from companion.metrics import vae_iw_log_likelihood
    from companion.models.vae import VAE

    with DEVICE:
        vae = VAE(latent_dim=20, arch="conv", channels=(32, 64))
    x = (_images(N_TEST) > 0.5).float()
    with torch.no_grad():
        vae_iw_log_likelihood(vae, x, k=k)


def hvae_iw(k: int):
    """Chapter 7: the hierarchical VAE's importance-weighted bound on the test digits."""
    from companion.metrics import model_iw_log_likelihood
    from companion.models.hvae import HierarchicalVAE

    with DEVICE:
        hvae = HierarchicalVAE()
    x = (_images(N_TEST) > 0.5).float()
    with torch.no_grad():
        model_iw_log_likelihood(hvae, x, k=k)


def knn_labels():
    """Chapter 6: the 5-nearest-neighbour labels of the 10,000 test digits among the
    60,000 training digits."""
    from companion.metrics import knn_labels as knn

    knn(_images(N_TEST), _images(N_TRAIN), torch.zeros(N_TRAIN, dtype=torch.long,
                                                        device=DEVICE), k=5)


def _binary(n: int, device=DEVICE) -> torch.Tensor:
    return (_images(n, device=device) > 0.5).float()


def _masked_unet(device=DEVICE):
    from companion import recipes
    from companion.models.unet import MaskedUNet, preset
    from companion.run.profiles import get_profile

    settings = recipes.masked_settings(get_profile("gpu"))
    with device:
        model = MaskedUNet(preset(settings["preset"])).eval()
    return model, settings


def _amp_logits(model):
    """Chapter 14's denoiser on a T4: the network's logits in fp16 autocast, float32 out."""
    def logits(z):
        with _t4_autocast():
            return model(z).float()
    return logits


def masked_training_step():
    """Chapter 14's training step: the 15M U-Net with a mask channel, batch 128, Adam,
    float32."""
    from companion import masked
    from companion.run.precision import default_optimizer

    model, settings = _masked_unet(GRAD_DEVICE)
    model.train()
    opt = default_optimizer(model.parameters(), settings["lr"], "cpu")
    masked.loss(model, _binary(settings["batch_size"], GRAD_DEVICE),
                settings["schedule"]).backward()
    opt.step()


def masked_negative_elbo(n_t: int = 2):
    """Chapter 14: the negative ELBO of the 10,000 binarized test digits, fp16. The
    chapter's n_t = 16 times repeat one time's calls, whose memory is freed in between:
    two times show that nothing accumulates."""
    from companion import masked

    model, _ = _masked_unet()
    with torch.no_grad():
        masked.negative_elbo(_amp_logits(model), _binary(N_TEST), n_t=n_t)


def masked_sampling(n: int = 1000, K: int = 4):
    """Chapter 14: unmasking 1,000 samples (the chapter's Fréchet set), fp16; every one
    of its up to 784 steps makes the same call on all of them, so four stand for them."""
    from companion import masked

    model, _ = _masked_unet()
    with torch.no_grad():
        masked.sample(_amp_logits(model), (n, 1, 28, 28), K, device=DEVICE)


def _vq_pair(device=DEVICE, kind: str = "masked"):
    """Chapter 19's autoencoder (FSQ, the run its priors model in the ci run) and a prior
    over its codes, at the gpu profile's sizes."""
    from companion import recipes
    from companion.models.code_prior import ARPrior, CodeDenoiser
    from companion.models.vqvae import VQVAE
    from companion.run.profiles import get_profile

    s = recipes.vq_settings(get_profile("gpu"))
    network = CodeDenoiser if kind == "masked" else ARPrior
    with device:
        vq = VQVAE(quantizer="fsq", levels=s["levels"]).eval()
        prior = network(vq.K, width=s["width"], depth=s["depth"], heads=s["heads"]).eval()
    return vq, prior, s


def _codes(n: int, K: int, device=DEVICE) -> torch.Tensor:
    return torch.zeros(n, 7, 7, dtype=torch.long, device=device)


def code_prior_training_step():
    """Chapter 19's prior training step: a fresh binarization of 32 digits encoded by the
    autoencoder, then the masked prior's loss with K categories and its backward pass,
    Adam, float32."""
    from companion import masked
    from companion.run.precision import default_optimizer

    vq, prior, s = _vq_pair(GRAD_DEVICE)
    prior.train()
    opt = default_optimizer(prior.parameters(), s["prior_lr"], "cpu")
    k = vq.codes(_binary(s["prior_batch"], GRAD_DEVICE))
    masked.loss(prior, k, s["schedule"], categories=vq.K).backward()
    opt.step()


def vq_two_stage_bound():
    """Chapter 19: the two-stage bound of the 10,000 binarized test digits with the
    autoregressive prior (the autoencoder and the prior each on at most MAX_IMAGES a
    call), float32."""
    from companion.models.vqvae import negative_elbo

    vq, prior, _ = _vq_pair(kind="autoregressive")
    negative_elbo(vq, _binary(N_TEST), lambda k: -prior.log_prob(k))


def code_prior_bound(n_t: int = 2):
    """Chapter 19: the masked prior's negative ELBO of the 10,000 test grids, fp16; as in
    chapter 14, two times stand for the chapter's sixteen."""
    from companion import masked

    vq, prior, _ = _vq_pair()
    with torch.no_grad():
        masked.negative_elbo(_amp_logits(prior), _codes(N_TEST, vq.K), n_t=n_t,
                             categories=vq.K)


def code_prior_sampling(n: int = 1000, steps: int = 4):
    """Chapter 19: unmasking 1,000 code grids (the chapter's Fréchet set), fp16; every
    step makes the same call, so four stand for its 49."""
    from companion import masked

    vq, prior, _ = _vq_pair()
    with torch.no_grad():
        masked.sample(_amp_logits(prior), (n, 7, 7), steps, categories=vq.K,
                      device=DEVICE)


def _flow_pair(device=DEVICE):
    """Chapter 15's teacher and student: chapter 13's U-Net (T + 1 steps) twice."""
    from companion import recipes
    from companion.models.unet import UNet, preset
    from companion.run.profiles import get_profile

    profile = get_profile("gpu")
    settings, few = recipes.ddpm_settings(profile), recipes.fewstep_settings(profile)
    with device:
        teacher = UNet(preset(settings["preset"], T=settings["T"] + 1)).eval()
        student = UNet(preset(settings["preset"], T=settings["T"] + 1)).train()
    return teacher, student, settings["T"], few


def distillation_step(kind: str):
    """Chapter 15's training step of a student, batch 128, Adam, float32: progressive
    distillation (two teacher Euler steps) or consistency distillation (a teacher Heun step
    and the student at both ends)."""
    from companion import fewstep
    from companion.run.precision import default_optimizer

    teacher, student, K, few = _flow_pair(GRAD_DEVICE)
    opt = default_optimizer(student.parameters(), few["lr"], "cpu")
    x0 = _images(few["batch_size"], lo=-1, device=GRAD_DEVICE)
    if kind == "progressive":
        loss = fewstep.progressive_distillation_loss(student, teacher, x0, 8, K)
    else:
        loss = fewstep.consistency_distillation_loss(student, teacher, x0, few["cd_N"], K)
    loss.backward()
    opt.step()


def reflow_pairs(n_steps: int = 1):
    """Chapter 15: the teacher's ends of the 10,000 noise images reflow trains on, through
    recipes.eps_function in fp16; each of the 25 Heun steps makes the same calls as one."""
    from companion import fewstep

    teacher, _, K, few = _flow_pair()
    x1 = torch.randn(few["pairs"], 1, 28, 28, device=DEVICE)
    with torch.no_grad():
        fewstep.reflow_pairs(fewstep.grid_field(_amp_eps(teacher), K), x1, n_steps)


def _cond_ddpm(device=DEVICE):
    """Chapter 16's class-conditional U-Net: chapter 9's with a label embedding."""
    from companion import recipes
    from companion.models.unet import UNet, preset
    from companion.run.profiles import get_profile

    settings = recipes.ddpm_settings(get_profile("gpu"))
    with device:
        model = UNet(preset(settings["preset"], T=settings["T"], num_classes=10)).eval()
    return model, settings


def cond_training_step():
    """Chapter 16's conditional DDPM training step: batch 128, labels dropped (chapter 11's
    conditional_loss), Adam, float32."""
    from companion.latent_diffusion import conditional_loss
    from companion.run.precision import default_optimizer

    model, settings = _cond_ddpm(GRAD_DEVICE)
    model.train()
    d = _on_device(_diffusion(), GRAD_DEVICE)
    opt = default_optimizer(model.parameters(), 1e-4, "cpu")
    x0 = _images(settings["batch_size"], lo=-1, device=GRAD_DEVICE)
    y = torch.zeros(settings["batch_size"], dtype=torch.long, device=GRAD_DEVICE)
    conditional_loss(d, model, x0, y, 0.15).backward()
    opt.step()


def cfg_sampling(n: int = 1000):
    """Chapter 16: DDIM with classifier-free guidance on n images through
    recipes.guided_eps_function in fp16 (each call sends the batch twice)."""
    from companion import recipes

    model, _ = _cond_ddpm()
    d = _on_device(_diffusion())
    labels = torch.zeros(n, dtype=torch.long)
    with mock.patch("companion.run.precision.autocast_dtype", return_value=None):
        eps = recipes.guided_eps_function(model, labels, 2.0, "cpu")
    _ddim_in_fp16(d, eps, model.config, n)


def _ddim_in_fp16(d, eps, config, n: int):
    """Two DDIM steps on n images with `eps` under the T4's fp16 autocast (every sampler's
    step makes one such call)."""
    def fp16(x, t):
        with _t4_autocast():
            return eps(x, t)
    fp16.config = config
    with torch.no_grad():
        d.sample_ddim(fp16, (n, 1, 28, 28), n_steps=2, quiet=True)


def classifier_guided_sampling(n: int = 1000):
    """Chapter 16: DDIM of n images guided by the noise-aware classifier: the U-Net in
    fp16 and the classifier's input gradient, float32, on fake CPU tensors (autograd)."""
    from companion import score
    from companion.models.classifier import NoisyClassifier

    model, d, settings = _ddpm(GRAD_DEVICE)
    d = _on_device(d, GRAD_DEVICE)
    with GRAD_DEVICE:
        judge = NoisyClassifier(T=settings["T"]).eval()
    grad = score.classifier_log_prob_grad(judge, torch.zeros(n, dtype=torch.long))
    eps = score.classifier_guided_eps(d, model, grad, 3.0)
    with torch.no_grad():
        d.sample_ddim(eps, (n, 1, 28, 28), n_steps=2, quiet=True)


def dps_step(n: int = 500):
    """Chapter 16: one step of diffusion posterior sampling on n digits: the 15M U-Net's
    input gradient (chunks of MAX_IMAGES_WITH_GRAD), float32, on fake CPU tensors."""
    from companion import inpainting

    model, d, _ = _ddpm(GRAD_DEVICE)
    d = _on_device(d, GRAD_DEVICE)
    y = _images(n, lo=-1, device=GRAD_DEVICE)
    mask = torch.ones(n, 1, 28, 28, dtype=torch.bool, device=GRAD_DEVICE)
    x = torch.randn(n, 1, 28, 28, device=GRAD_DEVICE)
    inpainting.dps_gradient(d, model, x, 10, y, mask)


def _edm_denoiser(model, T: int):
    """recipes.edm's denoiser around a U-Net of T steps (sigma_data of the digits)."""
    from companion import edm

    return edm.Denoiser(edm.StepConditioned(model, edm.SIGMA_MIN, edm.SIGMA_MAX, T=T), "edm",
                        0.62)


def edm_training_step():
    """Chapter 17's training step: the 15M U-Net in EDM's preconditioning, edm_loss on a
    batch of 128, Adam, float32."""
    from companion import edm
    from companion.run.precision import default_optimizer

    model, _, settings = _ddpm(GRAD_DEVICE)
    model.train()
    opt = default_optimizer(model.parameters(), 1e-4, "cpu")
    y = _images(settings["batch_size"], lo=-1, device=GRAD_DEVICE)
    edm.edm_loss(_edm_denoiser(model, settings["T"]), y).backward()
    opt.step()


def edm_heun_sampling(n: int = 2000):
    """Chapter 17: Heun on the rho grid (two steps, the calls of any number) for n images
    through recipes.denoiser_function in fp16."""
    from companion import edm, recipes

    model, _, settings = _ddpm()
    with mock.patch("companion.run.precision.autocast_dtype", return_value=None):
        D = recipes.denoiser_function(_edm_denoiser(model, settings["T"]), "cpu")

    def fp16(x, sigma):
        with _t4_autocast():
            return D(x, sigma)

    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        grid = edm.rho_grid(2)  # the host's list of levels
    with torch.no_grad():
        edm.heun(fp16, 80.0 * torch.randn(n, 1, 28, 28, device=DEVICE), grid)


def vp_denoiser_between_levels(n: int = 2000):
    """Chapter 17: chapter 9's network as a denoiser between two of its chain's levels
    (the network at both neighbouring steps: a batch of 2n), through eps_function in fp16."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from companion import edm

    model, d, _ = _ddpm()
    with unset_fake_temporarily():
        D = edm.VPDenoiser(_amp_eps(model), d.alphas_bar)
        sigma = math.sqrt(D.sigmas[100].item() * D.sigmas[101].item())
    with torch.no_grad():
        D(torch.randn(n, 1, 28, 28, device=DEVICE), sigma)


def _as_tensor(name, value, fix=""):
    """companion.vdm._real_tensor without its check of the values (a host sync)."""
    if torch.is_tensor(value):
        return value if value.is_floating_point() else value.to(torch.float64)
    return torch.as_tensor(value, dtype=torch.float64)


class _Steps(torch.nn.Module):
    """A stand-in with a config.T, to build a StepAdapter on real tensors."""

    def __init__(self, T: int):
        super().__init__()
        self.config = type("Config", (), {"T": T})()


def _vdm_net(model, T: int, schedule, device):
    """recipes.vdm's DiffusionModel around a (fake) U-Net: the adapter's levels are made on
    real tensors (its checks read them), then replaced by fake ones of the same shape."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from companion import recipes, vdm

    with unset_fake_temporarily():
        adapter = vdm.StepAdapter.linear(_Steps(T), *recipes.VDM_STEPS_RANGE, T=T)
        shape = adapter.gammas.shape
    adapter.model = model
    adapter.gammas = torch.empty(shape, dtype=torch.float64)
    with device:
        return vdm.DiffusionModel(adapter, schedule())


def vdm_training_step(weighting: str = "elbo"):
    """Chapter 18's training step (recipes.vdm): the 15M U-Net told gamma through
    vdm.StepAdapter, the whole VDM bound with a learned schedule and the variance trick
    ("elbo"), or the sigmoid-weighted loss ("sigmoid"), batch 128, Adam, float32."""
    from companion import vdm
    from companion.run.precision import default_optimizer

    model, _, settings = _ddpm(GRAD_DEVICE)
    model.train()
    net = _vdm_net(model, settings["T"], (lambda: vdm.LearnedSchedule(hidden=64))
                   if weighting == "elbo" else vdm.CosineSchedule, GRAD_DEVICE)
    schedule = net.schedule
    opt = default_optimizer(net.parameters(), 1e-4, "cpu")
    x = _images(settings["batch_size"], lo=-1, device=GRAD_DEVICE)
    with mock.patch("companion.vdm._real_tensor", _as_tensor), \
            mock.patch("companion.vdm._times", lambda name, t: _as_tensor(name, t)):
        if weighting == "elbo":
            loss = vdm.vdm_bound(net, schedule, x, variance_gradient=True).total.mean()
        else:
            loss = vdm.weighted_loss(net, schedule, x, vdm.sigmoid_weighting).mean()
        loss.backward()
    opt.step()


def vdm_bound_of_test_digits(n: int = 2000, draws: int = 8):
    """Chapter 18: the VDM bound of n test digits, `draws` each (a batch of n * draws),
    the U-Net through recipes.vdm_eps_function in float32."""
    from companion import recipes, vdm

    model, _, settings = _ddpm()
    net = _vdm_net(model, settings["T"], lambda: vdm.LearnedSchedule(hidden=64), DEVICE)
    eps = recipes.vdm_eps_function(net, "cpu")
    x = _images(n * draws, lo=-1)
    with mock.patch("companion.vdm._real_tensor", _as_tensor), \
            mock.patch("companion.vdm._times", lambda name, t: _as_tensor(name, t)), \
            torch.no_grad():
        vdm.vdm_bound(eps, net.schedule, x)


def _ch21_network(network: str, cond: str, device=DEVICE):
    """Chapter 21's network at the gpu profile's size (a DiT, or a U-Net reading captions)."""
    from companion import recipes
    from companion.run.profiles import get_profile

    gpu = get_profile("gpu")
    with device:
        model = recipes.ch21_network(network, cond, gpu).eval()
    return model, recipes.dit_settings(gpu)


def _ch21_condition(model, n: int, device=DEVICE) -> torch.Tensor:
    """Labels (n,) for a label-conditioned network, or caption tokens (n, 8) of one word."""
    if hasattr(model, "text"):
        return torch.ones((n, 8), dtype=torch.long, device=device)
    return torch.zeros(n, dtype=torch.long, device=device)


def ch21_training_step(network: str, cond: str):
    """Chapter 21's training step: batch 128, Adam, float32 (the DiT-L of the gpu profile on
    labels, or the gpu U-Net reading captions)."""
    from companion.run.precision import default_optimizer

    model, settings = _ch21_network(network, cond, GRAD_DEVICE)
    model.train()
    d = _on_device(_diffusion(), GRAD_DEVICE)
    opt = default_optimizer(model.parameters(), 1e-4, "cpu")
    x0 = _images(settings["batch_size"], lo=-1, device=GRAD_DEVICE)
    c = _ch21_condition(model, settings["batch_size"], GRAD_DEVICE)

    def eps(z, t):
        return model(z, t, c)

    eps.config = model.config
    d.simple_loss(eps, x0).backward()
    opt.step()


def ch21_guided_sampling(network: str, cond: str, n: int = 1000):
    """Chapter 21: n images with classifier-free guidance through recipes.ch21_eps_function
    in fp16 (each call sends the batch twice), two sampler steps."""
    from companion import recipes

    model, _ = _ch21_network(network, cond)
    d = _on_device(_diffusion())
    c = _ch21_condition(model, n, torch.device("cpu"))
    with mock.patch("companion.run.precision.autocast_dtype", return_value=None):
        eps = recipes.ch21_eps_function(model, c, 2.0, "cpu")
    _ddim_in_fp16(d, eps, model.config, n)  # the chapter's ancestral steps: the same call


def _text_model(kind: str, device=DEVICE):
    """Chapter 22's transformer at the gpu profile's size, on the toy language's sentences."""
    from companion import recipes
    from companion.run.profiles import get_profile

    gpu = get_profile("gpu")
    with device:
        model = recipes.lm_network(kind, gpu, TEXT_V, TEXT_L).eval()
    return model, recipes.lm_settings(gpu)


TEXT_V, TEXT_L = 26, 44  # the toy language's characters and pad; its longest sentence


def _sentences(n: int, device=DEVICE) -> torch.Tensor:
    return torch.randint(0, TEXT_V, (n, TEXT_L), device=device)


def lm_training_step(kind: str):
    """Chapter 22's training step of either model: batch 256, Adam, float32."""
    from companion import masked
    from companion.models.text_transformer import ar_nll
    from companion.run.precision import default_optimizer

    model, settings = _text_model(kind, GRAD_DEVICE)
    model.train()
    opt = default_optimizer(model.parameters(), settings["lr"], "cpu")
    x = _sentences(settings["batch_size"], GRAD_DEVICE)
    loss = (ar_nll(model, x).mean() if kind == "autoregressive" else
            masked.loss(model, x, categories=TEXT_V))
    loss.backward()
    opt.step()


def lm_bits_of_test(kind: str, n_t: int = 2):
    """Chapter 22: the bits of the gpu profile's 5,000 test sentences (the masked model's
    32 times repeat one time's calls: two show that nothing accumulates)."""
    from companion import recipes

    model, settings = _text_model(kind)
    recipes.lm_bits(model, _sentences(settings["n_test"]), n_t=n_t)


def lm_sampling(kind: str, n: int = 1000, K: int = 4):
    """Chapter 22: 1,000 samples of either model (the masked model's steps all make the
    same call, so four stand for 44; the autoregressive sampler's calls grow to L)."""
    from companion import masked
    from companion.models.text_transformer import ar_sample

    model, _ = _text_model(kind)
    with torch.no_grad():
        if kind == "autoregressive":
            ar_sample(model, n, TEXT_L, device=DEVICE)
        else:
            masked.sample(model, (n, TEXT_L), K, categories=TEXT_V, device=DEVICE)


def operations() -> list[Operation]:
    from companion.run.profiles import get_profile

    gpu = get_profile("gpu")
    return [
        Operation("06", "conv VAE, IW bound on the test set", lambda: conv_vae_iw(
            gpu.iw_samples)),
        Operation("06", "5-NN labels of the test set", knn_labels),
        Operation("07", "hierarchical VAE, IW bound on the test set", lambda: hvae_iw(
            gpu.iw_samples)),
        Operation("09", "DDPM training step, batch 128", ddpm_training_step),
        Operation("09", "DDIM sampling, 500 images", lambda: ddpm_sampling(500)),
        Operation("09", "bound_terms, 16 digits", ddpm_bound_terms),
        Operation("09", "bound_monte_carlo, test set x 20 draws", ddpm_bound_monte_carlo),
        Operation("10", "bound_monte_carlo, test set x 20 draws", ddpm_bound_monte_carlo),
        Operation("11", "posterior codes of the training set", latent_codes),
        # in-painting's reverse steps make the same U-Net call on 500 digits as DDIM does
        Operation("12", "reverse chain on 500 digits", lambda: ddpm_sampling(500)),
        Operation("13", "training step of the flow model, batch 128", ddpm_training_step),
        Operation("13", "ODE likelihood, one evaluation on 500 digits", ode_likelihood),
        Operation("13", "ODE sampling, 2,000 images, float32", lambda: ddpm_sampling(
            2000, fp32=True)),
        Operation("14", "masked diffusion training step, batch 128", masked_training_step),
        Operation("14", "negative ELBO of the test set", masked_negative_elbo),
        Operation("14", "unmasking 1,000 samples", masked_sampling),
        Operation("15", "progressive distillation step, batch 128",
                  lambda: distillation_step("progressive")),
        Operation("15", "consistency distillation step, batch 128",
                  lambda: distillation_step("consistency")),
        Operation("15", "reflow pairs of 10,000 noise images", reflow_pairs),
        Operation("16", "conditional DDPM training step, batch 128", cond_training_step),
        Operation("16", "classifier-free guided DDIM, 1,000 images", cfg_sampling),
        Operation("16", "classifier-guided DDIM, 1,000 images", classifier_guided_sampling),
        Operation("16", "a DPS step on 500 digits", dps_step),
        Operation("17", "EDM training step, batch 128", edm_training_step),
        Operation("17", "Heun on the EDM denoiser, 2,000 images, fp16", edm_heun_sampling),
        Operation("17", "chapter 9's network between two levels, 2,000 images",
                  vp_denoiser_between_levels),
        Operation("18", "VDM training step (bound, learned schedule), batch 128",
                  vdm_training_step),
        Operation("18", "sigmoid-weighted training step, batch 128",
                  lambda: vdm_training_step("sigmoid")),
        Operation("18", "ancestral sampling of the VDM U-Net, 2,000 images",
                  lambda: ddpm_sampling(2000)),
        Operation("18", "the VDM bound of 2,000 test digits x 8 draws",
                  vdm_bound_of_test_digits),
        Operation("19", "prior training step, batch 32, encoding included",
                  code_prior_training_step),
        Operation("19", "two-stage bound of the test set", vq_two_stage_bound),
        Operation("19", "the masked prior's bound of the test codes", code_prior_bound),
        Operation("19", "unmasking 1,000 code grids", code_prior_sampling),
        Operation("19", "chapter 14's negative ELBO of the test set", masked_negative_elbo),
        Operation("19", "hierarchical VAE, IW bound on the test set", lambda: hvae_iw(
            gpu.iw_samples)),
        # chapter 20 samples chapter 9's DDPM ancestrally, 1,000 images (the gpu profile)
        Operation("20", "ancestral sampling, 1,000 images", lambda: ddpm_sampling(1000)),
        *(op for network, cond in (("dit-L", "label"), ("unet", "cross")) for op in (
            Operation("21", f"{network} ({cond}) training step, batch 128",
                      lambda network=network, cond=cond: ch21_training_step(network, cond)),
            Operation("21", f"{network} ({cond}) guided sampling, 1,000 images",
                      lambda network=network, cond=cond: ch21_guided_sampling(network,
                                                                              cond)))),
        *(op for kind in ("autoregressive", "masked") for op in (
            Operation("22", f"{kind} training step, batch 256",
                      lambda kind=kind: lm_training_step(kind)),
            Operation("22", f"{kind} bits of the 5,000 test sentences",
                      lambda kind=kind: lm_bits_of_test(kind)),
            Operation("22", f"{kind} sampling, 1,000 sentences",
                      lambda kind=kind: lm_sampling(kind)))),
    ]


# --- the measurement -------------------------------------------------------------------------
# Checks that read values (a reduction and a host sync) cannot run on fake tensors; they
# allocate nothing of note, so they are skipped here. Shape checks still run.
VALUE_CHECKS = ("companion.run.checks.images",
                "companion.run.checks.finite",
                "companion.run.checks.steps",
                "companion.edm._checked_levels",
                "companion.run.checks.unit_times",
                "companion.run.checks.eight_bit",
                "companion.models.hvae._ImageModel._check_input",
                "companion.models.unet.UNet.check_inputs",
                "companion.models.unet.UNet.check_labels",
                "companion.latent_diffusion.check_labels",
                "companion.models.classifier.NoisyClassifier._check_t",
                "companion.masked.check_binary",
                "companion.masked.check_times",
                "companion.masked.check_positive_times",
                "companion.masked._finite_logits",
                "companion.sde._finite_end",
                "companion.masked.check_states",
                "companion.masked.check_codes",
                "companion.masked.check_code_states",
                "companion.models.code_prior.check_code_states",
                "companion.models.vqvae.check_binary_images",
                "companion.models.unet.check_states")
# Host-side arithmetic on small CPU tensors (a step list): run for real.
HOST_HELPERS = ("companion.diffusion.spaced_timesteps", "companion.masked.reveal_counts",
                "companion.run.checks.sigma_grid", "companion.edm.VPDenoiser.step")
# Decisions a value makes: taken as the call that needs more memory (times off chapter 13's
# grid: two network calls a point instead of one).
WORST_CASE = {"companion.fewstep._on_grid": lambda w: False}


def _real(fn):
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    def run(*args, **kwargs):
        with unset_fake_temporarily():
            return fn(*args, **kwargs)
    return run


def _pass_through(*args, **kwargs):
    """A value check skipped: returns the tensor it was given, as the checks do."""
    return next((a for a in args if torch.is_tensor(a)), None)


@contextlib.contextmanager
def _no_value_checks():
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        with contextlib.ExitStack() as stack:
            for target in VALUE_CHECKS:
                stack.enter_context(mock.patch(target, _pass_through))
            for target in HOST_HELPERS:
                stack.enter_context(mock.patch(target, _real(pkgutil.resolve_name(target))))
            for target, worst in WORST_CASE.items():
                stack.enter_context(mock.patch(target, worst))
            yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)


class LiveBytes(TorchDispatchMode):
    """The bytes of tensor storage alive, and their peak, as ops create and free them.

    Each storage is counted once (views share it) at its size rounded up to 512 bytes, the
    caching allocator's granularity, and uncounted when Python frees it.
    """

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _add(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = id(st)
        if key in self._refs and self._refs[key]() is st:
            return
        size = -(-st.nbytes() // 512) * 512
        self.live += size
        self.peak = max(self.peak, self.live)

        def free(_, size=size, key=key):
            self.live -= size
            self._refs.pop(key, None)
        self._refs[key] = weakref.ref(st, free)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out


def peak_bytes(run: Callable[[], object]) -> int:
    """The peak of bytes alive while `run` builds its model and runs (fake tensors)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with FakeTensorMode(allow_non_fake_inputs=True), _no_value_checks():
            tracker = LiveBytes()
            with tracker:
                run()
            gc.collect()
    return tracker.peak


def measure(ops: list[Operation] | None = None) -> list[tuple[Operation, float, float]]:
    """[(operation, peak GB, seconds)]; an operation that two chapters share (the same
    function) is measured once."""
    out, cache = [], {}
    for op in ops or operations():
        start = time.perf_counter()
        if op.run not in cache:
            cache[op.run] = peak_bytes(op.run) / 1e9
        out.append((op, cache[op.run], time.perf_counter() - start))
    return out


def main() -> None:
    rows = measure()
    print(f"{'chapter':8} {'operation':48} {'peak GB':>8} {'s':>6}")
    for op, gb, secs in rows:
        print(f"{op.chapter:8} {op.name:48} {gb:8.2f} {secs:6.1f}")
    worst: dict[str, float] = {}
    for op, gb, _ in rows:
        worst[op.chapter] = max(worst.get(op.chapter, 0.0), gb)
    print("per chapter:", ", ".join(f"{c}: {math.ceil(g * 10) / 10:.1f} GB"
                                   for c, g in sorted(worst.items())))


if __name__ == "__main__":
    main()
