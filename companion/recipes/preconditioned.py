"""EDM (chapter 17): the preconditioned denoiser on chapter 9's U-Net and budget."""

from __future__ import annotations

import math

from ..run import checks
from ..train import checkpoint_path, fit
from .common import DDPM_CLIP, _at_steps, _check_unit_images, _continue, _unet_recipe
from .pixel import ddpm_settings, network_function


# --- chapter 17: EDM's preconditioned denoiser --------------------------------------------------
def edm_checkpoint(profile, steps: int | None = None, prefix: str = "ch17", *,
                   P_mean: float | None = None, P_std: float | None = None):
    """The checkpoint file of the EDM model trained for `steps` (None: the full run) with the
    noise distribution ln sigma ~ N(P_mean, P_std^2) (None: EDM's, -1.2 and 1.2)."""
    from ..edm import P_MEAN, P_STD

    pm, ps = P_MEAN if P_mean is None else P_mean, P_STD if P_std is None else P_std
    name = f"{prefix}-edm" + ("" if (pm, ps) == (P_MEAN, P_STD) else f"-pm{pm:g}-ps{ps:g}")
    return checkpoint_path(_at_steps(name, steps), profile)


def edm(x, profile, device, *, steps: int | None = None, resume_from=None,
        prefix: str = "ch17", P_mean: float | None = None, P_std: float | None = None):
    """Chapter 17's EDM model, load-or-train: chapter 9's U-Net and budget (`ddpm_settings`:
    preset, optimizer steps, batch, Adam with the same warm-up, clipping and EMA) trained
    with EDM's preconditioning and loss (`companion.edm`): ln sigma ~ N(-1.2, 1.2^2), weight
    1 / c_out^2, so that the two models differ only in the design choices the chapter
    takes apart. The U-Net is built with chapter 9's T steps, which `StepConditioned`
    spreads over ln sigma in [0.002, 80]; sigma_data is the training images' std on
    [-1, 1] to two decimals (0.62 for the digits: EDM's 0.5 would leave the network's input
    and target variances near 1.5 at the two ends), recorded in the checkpoint's config.

    Args:
        x: (N, 1, 28, 28) training images in [0, 1] (on `device`); the model sees them on
            [-1, 1].
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        steps: None (default) for the profile's number of updates, or train only this
            many (an early checkpoint in its own file, as in `ddpm`).
        resume_from: an early checkpoint of the same recipe to continue from when this
            run's own file does not exist yet (as in `ddpm`); default None.
        prefix: the checkpoint file's prefix (default "ch17").
        P_mean: the mean of ln sigma in training, ln sigma ~ N(P_mean, P_std^2); None:
            EDM's -1.2 (chapter 17 sweeps it).
        P_std: the standard deviation of ln sigma in training; None: EDM's 1.2.

    Returns:
        (D: an `edm.Denoiser` around the EMA U-Net, in eval mode; FitResult).
    """
    from ..edm import P_MEAN, P_STD, SIGMA_MAX, SIGMA_MIN, Denoiser, StepConditioned, edm_loss

    pm, ps = P_MEAN if P_mean is None else P_mean, P_STD if P_std is None else P_std
    if not (math.isfinite(pm) and math.isfinite(ps) and ps > 0):
        raise ValueError(f"the noise distribution needs a finite P_mean and a P_std > 0 "
                         f"(ln sigma ~ N(P_mean, P_std^2)); got P_mean={pm!r}, P_std={ps!r}")
    s = ddpm_settings(profile)
    total = checks.early_steps(steps, s["steps"])
    _check_unit_images(x, "recipes.edm")
    sigma_data = round((x.float() * 2 - 1).std().item(), 2)
    model, optimizer, config, warm_up = _unet_recipe(
        s, profile, device, x, steps_of_net=s["T"], T=s["T"], sigma_data=sigma_data,
        P_mean=pm, P_std=ps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
        loss="EDM: preconditioned, log-normal sigma, lambda = 1 / c_out^2")

    def denoiser(net):
        return Denoiser(StepConditioned(net, SIGMA_MIN, SIGMA_MAX, T=s["T"]), "edm", sigma_data)

    def loss_fn(model, y, step):
        warm_up(step)
        return edm_loss(denoiser(model), y, P_mean=pm, P_std=ps)

    path = edm_checkpoint(profile, steps, prefix, P_mean=pm, P_std=ps)
    _continue(path, resume_from, model, config, x * 2 - 1, optimizer, s, total)
    result = fit(model, loss_fn, x * 2 - 1, steps=total, batch_size=s["batch_size"],
                 optimizer=optimizer, clip=DDPM_CLIP, ema=s["ema"], checkpoint=path,
                 config=config, compile="cuda",
                 desc="EDM" if steps is None else f"EDM ({steps} steps)")
    return denoiser(result.ema.model).eval(), result


def denoiser_function(D, device, *, precision: str = "mixed"):
    """An `edm.Denoiser` whose network is called as the samplers call chapter 9's
    (`network_function`): at most companion.run.memory.MAX_IMAGES images a call, in mixed
    precision on a GPU, float32 out. D: an edm.Denoiser around a `StepConditioned` U-Net
    (what `edm` returns). The coefficients, sigma_data and the steps' mapping are D's own.
    Returns an edm.Denoiser, D(x (B, 1, 28, 28), sigma) -> (B, 1, 28, 28).
    """
    from ..edm import Denoiser, StepConditioned

    step = getattr(D, "net", None)
    if not isinstance(D, Denoiser) or not isinstance(step, StepConditioned):
        raise TypeError(f"denoiser_function takes an edm.Denoiser around a StepConditioned "
                        f"network (what recipes.edm returns), got {type(D).__name__}"
                        + (f" around {type(step).__name__}" if step is not None else ""))
    fn = network_function(step.model, device, precision=precision)
    bounded = StepConditioned(fn, T=step.T)
    bounded.log_min, bounded.log_max = step.log_min, step.log_max  # D's range, bit for bit
    return Denoiser(bounded, D.kind, D.sigma_data)
