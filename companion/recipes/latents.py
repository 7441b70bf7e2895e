"""Latent diffusion (chapter 11): the autoencoder and the denoisers of its codes."""

from __future__ import annotations

import torch

from ..run import checks
from ..train import checkpoint_path, fit
from .common import _at_steps, _check_unit_images, _continue, _profile
from .pixel import ddpm_diffusion, ddpm_settings

# --- chapter 11: latent diffusion ------------------------------------------------------------
LATENT_DIM, LATENT_KL_WEIGHT, LATENT_P_UNCOND = 32, 0.1, 0.15


def latent_settings(profile) -> dict:
    """Chapter 11's recipe per profile.

    The autoencoder: chapter 6's convolutional VAE (28 -> 14 -> 7, a linear head) with a
    LATENT_DIM-number code and chapter 10's discretized decoder, trained on -(log p(x|z)
    - LATENT_KL_WEIGHT * KL): a weak KL, Rombach et al.'s "KL-reg", which keeps the codes
    near the origin without trading the reconstruction for a standard normal aggregate.
    Batch 64, Adam 2e-3, 4 / 20 / 30 epochs (ci / cpu / gpu).
    The denoisers: residual MLPs (width 256, 3 blocks) on chapter 9's diffusion (the same
    T and schedule in each profile), Adam 1e-3 with gradients clipped at 1, an EMA of the
    weights; 300 / 3,000 / 20,000 steps of 256 codes; the class-conditional one drops the
    label with probability LATENT_P_UNCOND.
    """
    return dict(
        latent_dim=LATENT_DIM, kl_weight=LATENT_KL_WEIGHT,
        vae_epochs=_profile(profile).pick(ci=4, cpu=20, gpu=30), vae_batch=64, vae_lr=2e-3,
        width=256, depth=3, T=ddpm_settings(profile)["T"],
        steps=_profile(profile).pick(ci=300, cpu=3000, gpu=20000), batch_size=256, lr=1e-3,
        ema=_profile(profile).pick(ci=0.99, cpu=0.995, gpu=0.999), clip=1.0,
        p_uncond=LATENT_P_UNCOND,
    )


def latent_vae(x, profile, device, *, source: str, prefix: str = "ch11"):
    """Chapter 11's autoencoder (see `latent_settings`), load-or-train.

    Args:
        x: (N, 1, 28, 28) training images in [0, 1] on `device`; the model sees them as
            8-bit levels on [-1, 1] (`to_8bit_range`).
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        source: the data source's name, recorded in the checkpoint.
        prefix: the checkpoint file's prefix (default "ch11"): two notebooks that may train
            at once pass different ones, so that they never write one file.

    Returns:
        (model in eval mode, FitResult).
    """
    from ..models.vae import VAE, ELBOLoss, to_8bit_range

    s = latent_settings(profile)
    _check_unit_images(x, "recipes.latent_vae")
    torch.manual_seed(0)
    model = VAE(s["latent_dim"], arch="conv", likelihood="discretized").to(device)
    config = dict(profile=profile.name, latent=s["latent_dim"], arch="conv",
                  kl_weight=s["kl_weight"], epochs=s["vae_epochs"], batch_size=s["vae_batch"],
                  lr=s["vae_lr"], n_train=len(x), data=source, likelihood="discretized")
    result = fit(model, ELBOLoss(beta=s["kl_weight"], binarize=False), to_8bit_range(x),
                 epochs=s["vae_epochs"], batch_size=s["vae_batch"], lr=s["vae_lr"],
                 checkpoint=checkpoint_path(f"{prefix}-vae", profile), config=config,
                 desc="autoencoder")
    return model.eval(), result


def latent_checkpoint(profile, steps: int | None = None, prefix: str = "ch11", *,
                      conditional: bool = False, **_):
    """The checkpoint file of the latent DDPM trained for `steps` (None: the full run);
    other keywords (those `snapshots` passes to `latent_denoiser`) are ignored."""
    name = f"{prefix}-latent-ddpm" + ("-cond" if conditional else "")
    return checkpoint_path(_at_steps(name, steps), profile)


def latent_denoiser(vae, x, profile, device, *, scale: float, labels=None,
                    steps: int | None = None, resume_from=None, prefix: str = "ch11"):
    """A latent DDPM on `vae`'s codes (see `latent_settings`), load-or-train.

    Each step draws fresh codes z ~ q(z | x) for its batch (from the encoder's means and
    variances, computed once) and scales them by `scale`. With `steps` it trains only that
    many updates into a file of its own, and `resume_from` continues an early run, as in
    `ddpm` (chapter 19 follows the run along its budget with `snapshots`).

    Args:
        vae: the trained autoencoder of `latent_vae`.
        x: (N, 1, 28, 28) training images in [0, 1].
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        scale: the factor on the codes (`latent_diffusion.latent_scale`).
        labels: None (default: an unconditional model) or (N,) digits for a
            class-conditional one (classifier-free guidance).
        steps: None (default) for the profile's number of updates, or train only this
            many (an early checkpoint in its own file, `latent_checkpoint`).
        resume_from: an early checkpoint of the same recipe to continue from when this
            run's own file does not exist yet; default None.
        prefix: the checkpoint file's prefix (default "ch11"): two notebooks that may train
            at once pass different ones, so that they never write one file.

    Returns:
        (EMA model, FitResult).
    """
    from ..latent_diffusion import codec_fingerprint, conditional_loss, draw_codes, posterior_codes
    from ..models.latent_denoiser import LatentDenoiser
    from ..models.vae import to_8bit_range
    from ..run.precision import default_optimizer

    s = latent_settings(profile)
    total = checks.early_steps(steps, s["steps"])
    _check_unit_images(x, "recipes.latent_denoiser")
    mu, logvar = posterior_codes(vae, to_8bit_range(x))
    conditional = labels is not None
    torch.manual_seed(0)
    model = LatentDenoiser(dim=vae.latent_dim, width=s["width"], depth=s["depth"], T=s["T"],
                           num_classes=10 if conditional else None).to(device)
    model.codec_id.fill_(codec_fingerprint(vae))
    diffusion = ddpm_diffusion(profile, device)
    config = dict(profile=profile.name, width=s["width"], depth=s["depth"], T=s["T"],
                  lr=s["lr"], batch_size=s["batch_size"], ema=s["ema"], clip=s["clip"],
                  scale=float(scale), conditional=conditional, n_train=len(x),
                  p_uncond=s["p_uncond"] if conditional else 0.0)

    def loss_fn(model, batch):
        z0 = draw_codes(batch[0], batch[1], scale)
        if conditional:
            return conditional_loss(diffusion, model, z0, batch[2], s["p_uncond"])
        return diffusion.simple_loss(model, z0)

    data = (mu, logvar) + ((torch.as_tensor(labels, device=mu.device).long(),)
                           if conditional else ())
    # fit's own default optimizer, made here so that an early run can be resumed
    optimizer = default_optimizer(model.parameters(), s["lr"], device)
    path = latent_checkpoint(profile, steps, prefix, conditional=conditional)
    _continue(path, resume_from, model, config, data, optimizer, s, total)
    result = fit(model, loss_fn, data, steps=total, batch_size=s["batch_size"],
                 optimizer=optimizer, clip=s["clip"], ema=s["ema"], checkpoint=path,
                 config=config, desc="latent DDPM" + (" (conditional)" if conditional
                                                      else "")
                 + ("" if steps is None else f" ({steps} steps)"))
    return result.ema.model, result
