"""What the recipes share: the checks of a profile and a checkpoint prefix, the names
of early checkpoints, an early run resumed, the U-Net skeleton of chapters 9 and
13-18 (seed, preset, Adam, the config, the warm-up over DDPM_WARMUP updates; gradients
clipped at DDPM_CLIP), labelled images, and the check that images lie in [0, 1]."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..run import checks


def _profile(profile):
    """profile if it is a companion Profile: a name ('ci') or None ended in "'str' object
    has no attribute 'pick'"."""
    from ..run.profiles import Profile

    if not isinstance(profile, Profile):
        raise checks.ArgumentError(
            f"profile must be a companion Profile, got {checks._got(profile)}: pass "
            "companion.run.profiles.get_profile('ci') (or get_profile() for the active one)")
    return profile


def _prefix(prefix) -> str:
    """prefix, the start of a checkpoint's file name: a non-empty string (None named the
    file 'None-...')."""
    if not isinstance(prefix, str) or not prefix.strip():
        raise checks.ArgumentError(f"prefix must be a non-empty string such as 'ch18' (the "
                                   f"start of the checkpoint's file name), got {prefix!r}")
    return prefix


DDPM_CLIP, DDPM_WARMUP = 1.0, 200


def _at_steps(name: str, steps) -> str:
    """The checkpoint name of `name` trained for `steps` updates (None: the full run): steps a
    whole number >= 1 (-5 named a file of no run)."""
    if steps is None:
        return name
    return f"{name}-step{checks.count('steps (the updates of an early run, or None)', steps)}"


def _continue(path, resume_from, model, config, x11, optimizer, s: dict, total: int) -> None:
    """Start the run into `path` from `resume_from`, an early checkpoint of the same recipe,
    when `path` does not exist yet (the early run's steps are not trained again). x11: the
    training data as fit gets it, a tensor or a tuple of tensors; s: the recipe's settings
    (its "ema" and "batch_size")."""
    if resume_from is not None and not path.exists():
        from ..run import shipped
        from ..run.checkpoint import identity, seed_from

        if not Path(resume_from).exists() and shipped.listed(Path(resume_from).name):
            return  # the early run ships without its optimizer's state: this one trains whole
        data = tuple(x11) if isinstance(x11, (tuple, list)) else (x11,)
        ident = identity(model, config, data, optimizer, s["ema"], s["batch_size"])
        if shipped.ships(path.name, ident, total):
            return  # the full run ships: fit loads it
        seed_from(path, resume_from, ident, total)  # a stale shipped file: it goes on


def _unet_recipe(s: dict, profile, device, x, *, steps_of_net: int, network=None,
                 seed: int = 0, **more):
    """The skeleton chapters 9, 13 and 14 share: seed 0 (or `seed`, which the config then
    names: another run of the same recipe), the profile's U-Net preset built
    for `steps_of_net` time steps (as `network`, default UNet), Adam, the config that
    identifies the run (`more` adds the recipe's own settings: T, or K and the loss), and
    the linear learning-rate warm-up over DDPM_WARMUP steps, a function of the global step
    so that it survives resuming.
    s: ddpm_settings(profile) or masked_settings(profile).
    Returns (model, optimizer, config, warm_up(step))."""
    from ..models.unet import UNet, preset
    from ..run.precision import default_optimizer

    torch.manual_seed(seed)  # the weights, then (through fit) the batches and the noise
    model = (network or UNet)(preset(s["preset"], T=steps_of_net)).to(device)
    optimizer = default_optimizer(model.parameters(), s["lr"], device)
    config = dict(profile=profile.name, preset=s["preset"], lr=s["lr"],
                  batch_size=s["batch_size"], ema=s["ema"], clip=DDPM_CLIP,
                  warmup=DDPM_WARMUP, n_train=len(x), **more)
    if seed:  # seed 0 keeps the shipped files' configs as they were
        config["seed"] = seed

    return model, optimizer, config, _warm_up(optimizer, s["lr"])


def _labelled_images(x, labels, who: str) -> torch.Tensor:
    """The labels of training images x (checked to lie in [0, 1]) as int64 on x's device,
    one per image, or a clear error naming the recipe `who`."""
    from ..latent_diffusion import check_labels

    _check_unit_images(x, f"recipes.{who}")
    y = check_labels(labels).to(x.device)
    if len(y) != len(x):
        raise checks.ArgumentError(f"{who} needs one label per image: {len(x)} images, "
                                   f"{len(y)} labels")
    return y


def _warm_up(optimizer, lr: float):
    """The linear learning-rate warm-up over DDPM_WARMUP updates, as a function of the
    global step (so that it survives resuming): warm_up(step) sets every group's lr."""
    def warm_up(step: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / DDPM_WARMUP)

    return warm_up


def _check_unit_images(x, where: str) -> None:
    """Refuse images clearly outside [0, 1] (0..255 bytes, or [-1, 1]): one check per call."""
    if not torch.is_tensor(x) or x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{where} needs a non-empty tensor of images (N, 1, 28, 28) in "
                         f"[0, 1], got {getattr(x, 'shape', type(x).__name__)}")
    lo, hi = torch.aminmax(x.detach().float())
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -0.01 or hi > 1.01:
        raise ValueError(f"{where} expects images in [0, 1] (companion.data's scale), got "
                         f"values in [{lo:.3g}, {hi:.3g}]: divide 0..255 bytes by 255, map "
                         "[-1, 1] with (x + 1) / 2")
