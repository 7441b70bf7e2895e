"""VDM (chapter 18): variational diffusion models on chapter 9's U-Net and budget."""

from __future__ import annotations

import math

import torch

from ..run import checks, smoke
from ..run.profiles import smoke_mode
from ..train import checkpoint_path, fit
from .common import (
    DDPM_CLIP,
    DDPM_WARMUP,
    _at_steps,
    _check_unit_images,
    _continue,
    _prefix,
    _unet_recipe,
)
from .pixel import ddpm_settings, network_function

# --- chapter 18: variational diffusion models ----------------------------------------------
VDM_STEPS_RANGE = (-15.0, 10.0)  # the U-Net's T steps, evenly spaced in gamma over this range
VDM_WEIGHTINGS = ("elbo", "sigmoid")


def vdm_checkpoint(profile, steps: int | None = None, prefix: str = "ch18", *,
                   weighting: str = "elbo"):
    """The checkpoint file of chapter 18's model trained for `steps` (None: the full run) on
    `weighting` ("elbo": the bound with a learned schedule; "sigmoid": Kingma and Gao's
    sigmoid weighting)."""
    if weighting not in VDM_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {VDM_WEIGHTINGS}, got {weighting!r}")
    prefix = _prefix(prefix)
    name = f"{prefix}-vdm" if weighting == "elbo" else f"{prefix}-vdm-{weighting}"
    return checkpoint_path(_at_steps(name, steps), profile)


def vdm(x, profile, device, *, steps: int | None = None, resume_from=None,
        prefix: str = "ch18", weighting: str = "elbo"):
    """Chapter 18's models, load-or-train: chapter 9's U-Net and budget (`ddpm_settings`:
    preset, T, updates, batch, Adam with the same warm-up, clipping and EMA), told the noise
    level gamma instead of a step (`vdm.StepAdapter.linear`: its T steps evenly spaced in
    gamma over VDM_STEPS_RANGE, the nearest step taken), trained in continuous time on
    one of two objectives, each in bits per dimension:

    weighting="elbo": VDM, the whole bound (`vdm.vdm_bound`: prior, continuous-time diffusion
    loss, discretized reconstruction of the 8-bit digits) with a `vdm.LearnedSchedule`
    (hidden width 64, started at VDM's ends -13.3 and 5.0): the network and the schedule's
    ends follow the bound, its interior the variance of the estimate (the variance trick,
    in bits per dimension).

    weighting="sigmoid": Kingma and Gao's weighted loss (`vdm.weighted_loss`) with
    `vdm.sigmoid_weighting` (bias 2), a monotone weighting, the levels drawn by the fixed
    `vdm.CosineSchedule` with VDM's ends.

    Args:
        x: (N, 1, 28, 28) training images in [0, 1] (multiples of 1/255, on `device`); the
            model sees them as the 256 levels on [-1, 1].
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        steps: None (default) for the profile's number of updates, or train only this
            many (an early checkpoint in its own file, as in `ddpm`).
        resume_from: an early checkpoint of the same recipe to continue from when this
            run's own file does not exist yet (as in `ddpm`); default None.
        prefix: the checkpoint file's prefix (default "ch18").
        weighting: "elbo" (default) or "sigmoid".

    Returns:
        (a `vdm.DiffusionModel` around the EMA U-Net with its schedule, in eval mode;
        FitResult).
    """
    from .. import vdm as V

    if weighting not in VDM_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {VDM_WEIGHTINGS}, got {weighting!r}")
    s = ddpm_settings(profile)
    total = checks.early_steps(steps, s["steps"])
    _check_unit_images(x, "recipes.vdm")
    from ..run.precision import default_optimizer

    net, _, config, _ = _unet_recipe(
        s, profile, device, x, steps_of_net=s["T"], T=s["T"], weighting=weighting,
        steps_range=list(VDM_STEPS_RANGE),
        loss=("VDM bound, learned schedule, variance trick" if weighting == "elbo" else
              "sigmoid weighting (bias 2), cosine schedule"))
    adapter = V.StepAdapter.linear(net, *VDM_STEPS_RANGE, T=s["T"])
    if weighting == "elbo":
        schedule = V.LearnedSchedule(hidden=64, generator=torch.Generator().manual_seed(0))
    else:
        schedule = V.CosineSchedule()
    model = V.DiffusionModel(adapter, schedule).to(device)
    optimizer = default_optimizer(model.parameters(), s["lr"], device)  # the schedule too
    per_dim = 1 / (28 * 28 * math.log(2))

    def warm_up(step: int) -> None:  # chapter 9's, on this optimizer
        for group in optimizer.param_groups:
            group["lr"] = s["lr"] * min(1.0, (step + 1) / DDPM_WARMUP)

    def loss_fn(model, x11, step):
        warm_up(step)
        if weighting == "elbo":
            bound = V.vdm_bound(model, model.schedule, x11, variance_gradient=True,
                                variance_scale=per_dim)
            return bound.bits_per_dim().mean()
        return per_dim * V.weighted_loss(model, model.schedule, x11,
                                         V.sigmoid_weighting).mean()

    path = vdm_checkpoint(profile, steps, prefix, weighting=weighting)
    x11 = x * 2 - 1
    _continue(path, resume_from, model, config, x11, optimizer, s, total)
    result = fit(model, loss_fn, x11, steps=total, batch_size=s["batch_size"],
                 optimizer=optimizer, clip=DDPM_CLIP, ema=s["ema"], checkpoint=path,
                 config=config, desc=f"VDM ({weighting})"
                 + ("" if steps is None else f", {steps} steps"))
    if smoke_mode():  # the chapter calls the U-Net itself (`vdm_eps_function`): cut it too
        smoke.cut(result.ema.model.eps_model.model)
    return result.ema.model.eval(), result


def vdm_eps_function(model, device, *, precision: str = "float32"):
    """A `vdm.DiffusionModel` of `vdm` as the losses and bounds call it, eps(z (B, ...),
    gamma (B,)), with its U-Net called as `network_function` calls it: at most
    companion.run.memory.MAX_IMAGES images a call, float32 (default: for the bound) or
    mixed precision on a GPU ("mixed": for sampling). No gradients."""
    adapter = _vdm_model(model, "vdm_eps_function").eps_model
    net = network_function(adapter.model, device, precision=precision)

    def eps(z, gamma):
        with torch.no_grad():
            steps = adapter.steps(gamma).round().long().to(z.device)
            return net(z, steps).to(z.dtype)

    return eps


def _vdm_model(model, who: str):
    """model if it is what `vdm` returns: a vdm.DiffusionModel around a StepAdapter."""
    from .. import vdm as V

    if not isinstance(model, V.DiffusionModel) or \
            not isinstance(model.eps_model, V.StepAdapter):
        raise checks.ArgumentError(
            f"model must be what recipes.vdm returns, a vdm.DiffusionModel around a "
            f"vdm.StepAdapter (its U-Net and schedule), got {checks._got(model)}"
            + (f" around {type(model.eps_model).__name__}"
               if isinstance(model, V.DiffusionModel) else "") + f": {who} calls its U-Net")
    return model


def vdm_sampler(model, profile, device):
    """Chapter 9's samplers for a model of `vdm`: (Diffusion, eps_fn). The Diffusion is the
    model's schedule as a chain of chapter 9's T steps (`vdm.chain_betas`, step i at
    gamma(i / T)); eps_fn(x, t int64 (B,)) calls the model at gamma(t / T) in mixed
    precision (`vdm_eps_function`), for `Diffusion.sample` and `sample_ddim`."""
    from .. import vdm as V
    from ..diffusion import Diffusion

    _vdm_model(model, "vdm_sampler")
    device = checks.device("device", device)
    T = ddpm_settings(profile)["T"]
    diffusion = Diffusion(V.chain_betas(model.schedule, T), device=device)
    with torch.no_grad():
        steps = torch.arange(1, T + 1, dtype=torch.float64, device=model.schedule._device())
        gammas = model.schedule(steps / T).float()  # on the schedule's own device
    gammas = gammas.to(device)
    eps = vdm_eps_function(model, device, precision="mixed")

    def eps_fn(x, t):
        return eps(x, gammas[t - 1])

    return diffusion, eps_fn
