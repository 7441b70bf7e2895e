"""The VAEs: chapter 1's autoencoder, chapters 6 and 7's single-level VAE and
two-layer hierarchy on one recipe, and chapter 10's 8-bit VAEs."""

from __future__ import annotations

import torch

from ..models.autoencoder import Autoencoder, reconstruction_loss
from ..train import checkpoint_path, fit
from .common import _profile

AE_HIDDEN, AE_LR, AE_NOISE, AE_WEIGHT = (256,), 2e-3, 0.5, 1.0


def chapter1_autoencoder(name: str, x, profile, device, *, loss_fn=reconstruction_loss,
                         latent: int = 16, prefix: str = "ch1", **settings):
    """Chapter 1's autoencoder: MLP 784 -> 256 -> latent and back, squared error (or the
    `loss_fn` given: chapter 1's denoising and contractive losses use AE_NOISE, AE_WEIGHT),
    Adam 2e-3, the profile's batch size, 15 / 30 / 20 epochs (ci / cpu / gpu).

    Args:
        name: the model's name in the checkpoint file (e.g. "ae", "dae", "cae").
        x: (N, 1, 28, 28) training images in [0, 1].
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        loss_fn: (model, x) -> loss (default `reconstruction_loss`).
        latent: the code's size (default 16).
        prefix: the checkpoint file's prefix (default "ch1"): two notebooks that may train
            at once pass different ones, so that they never write one file.
        settings: whatever else shapes `loss_fn` (e.g. radius=2.0), recorded in the
            checkpoint.

    Returns:
        (model, FitResult). Chapter 6 compares the VAE with this model.
    """
    epochs = _profile(profile).pick(ci=15, cpu=30, gpu=20)
    torch.manual_seed(0)
    model = Autoencoder(latent, hidden=AE_HIDDEN).to(device)
    config = dict(profile=profile.name, name=name, latent=latent, hidden=list(AE_HIDDEN),
                  epochs=epochs, lr=AE_LR, noise=AE_NOISE, weight=AE_WEIGHT, n_train=len(x),
                  **settings)
    result = fit(model, loss_fn, x, epochs=epochs, batch_size=profile.batch_size, lr=AE_LR,
                 checkpoint=checkpoint_path(f"{prefix}-{name}", profile), config=config,
                 desc=name)
    return model, result


# --- chapters 6 and 7: the single-level VAE and the hierarchy, on one recipe --------------
VAE_BATCH, VAE_LR, VAE_WARMUP_FRACTION = 32, 1e-3, 0.2


def vae_epochs(profile) -> int:
    """Epochs for the chapter-7 comparison: 8 / 20 / 10 (ci / cpu / gpu; gpu on all 60,000
    digits, 19,000 updates). ci gets more than chapter 6's 3: the layers above z_1 start at
    the prior and need some hundreds of updates before they pay for themselves."""
    return _profile(profile).pick(ci=8, cpu=20, gpu=10)


def _elbo_fit(name, model, loss_fn, x, profile, *, epochs, prefix, **settings):
    """Load-or-train with chapter 6's recipe (batch 32, Adam 1e-3); returns the FitResult."""
    config = dict(profile=profile.name, n_train=len(x), epochs=epochs, batch_size=VAE_BATCH,
                  lr=VAE_LR, **settings)
    return fit(model, loss_fn, x, epochs=epochs, batch_size=VAE_BATCH, lr=VAE_LR,
               checkpoint=checkpoint_path(f"{prefix}-{name}", profile), config=config,
               desc=name)


def warmup_steps(n_train: int, epochs: int) -> int:
    """Chapter 6's KL warm-up: the first fifth of the updates."""
    return int(VAE_WARMUP_FRACTION * epochs * -(-n_train // VAE_BATCH))


def single_level_vae(x, profile, device, *, source: str, epochs: int | None = None,
                     prefix: str = "ch7"):
    """Chapter 6's MLP VAE (784 -> 512 -> 20 and back, Bernoulli decoder, dynamic
    binarization, KL warm-up over the first fifth of the updates), load-or-train.

    Args:
        x: (N, 1, 28, 28) grey training images in [0, 1] on `device`.
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        source: the data source's name, recorded in the checkpoint.
        epochs: None (default) for the profile's number, or this many.
        prefix: the checkpoint file's prefix (default "ch7"): two notebooks that may train
            at once pass different ones, so that they never write one file.

    Returns:
        (model, FitResult).
    """
    from ..models.vae import VAE, ELBOLoss

    epochs = epochs or vae_epochs(profile)
    warmup = warmup_steps(len(x), epochs)
    torch.manual_seed(0)
    model = VAE(latent_dim=20, hidden=(512,)).to(device)
    result = _elbo_fit("vae", model, ELBOLoss(warmup_steps=warmup), x, profile, epochs=epochs,
                       prefix=prefix, warmup=warmup, latent=20, hidden=512, data=source)
    return model, result


HVAE_LATENTS, HVAE_HIDDEN = (20, 8), (480, 128)


def hierarchical_vae(x, profile, device, *, source: str, free_bits: float = 0.0,
                     epochs: int | None = None, latent_dims=HVAE_LATENTS,
                     hidden=HVAE_HIDDEN, name: str = "hvae", prefix: str = "ch7"):
    """Chapter 7's two-layer HierarchicalVAE (z_1: 20, z_2: 8; bottom-up 784 -> 480 -> 128;
    within 3% of the single-level VAE's parameters) on the single-level VAE's recipe, with
    `free_bits` nats per latent dimension for each layer, load-or-train.

    Args:
        x: (N, 1, 28, 28) grey training images in [0, 1] on `device`.
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        source: the data source's name, recorded in the checkpoint.
        free_bits: nats per latent dimension below which a layer's KL is not pushed
            down (default 0.0: the plain ELBO).
        epochs: None (default) for the profile's number, or this many.
        latent_dims: the layers' sizes, bottom first (default (20, 8)).
        hidden: the bottom-up network's widths (default (480, 128)).
        name: the model's name in the checkpoint file (default "hvae").
        prefix: the checkpoint file's prefix (default "ch7"): two notebooks that may train
            at once pass different ones, so that they never write one file.

    Returns:
        (model, FitResult); the history logs kl1, kl2, ... per update.
    """
    from ..models.hvae import HierarchicalVAE, HierarchyLoss

    epochs = epochs or vae_epochs(profile)
    warmup = warmup_steps(len(x), epochs)
    torch.manual_seed(0)
    model = HierarchicalVAE(tuple(latent_dims), tuple(hidden)).to(device)
    loss = HierarchyLoss(warmup_steps=warmup, free_bits=free_bits)
    result = _elbo_fit(name, model, loss, x, profile, epochs=epochs, prefix=prefix,
                       warmup=warmup, free_bits=free_bits, latent_dims=list(latent_dims),
                       hidden=list(hidden), data=source)
    return model, result


def eight_bit_vae(x, profile, device, *, source: str, hierarchical: bool = False,
                  prefix: str = "ch10"):
    """Chapter 6's VAE, or chapter 7's two-layer hierarchy, with DDPM's data model: a
    discretized Gaussian decoder on the 8-bit images scaled to [-1, 1], so that their
    likelihoods and DDPM's bound are in the same units (chapter 10). Otherwise chapter 7's
    recipe (batch 32, Adam 1e-3, KL warm-up over the first fifth), load-or-train; in ci 4
    epochs, not 8: chapter 10's ci run must stay under two minutes, and it asserts nothing
    that needs these two models well trained.

    Args:
        x: (N, 1, 28, 28) training images in [0, 1] on `device`.
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        source: the data source's name, recorded in the checkpoint.
        hierarchical: False (default) for chapter 6's VAE, True for chapter 7's hierarchy.
        prefix: the checkpoint file's prefix (default "ch10"): two notebooks that may train
            at once pass different ones, so that they never write one file.

    Returns:
        (model, FitResult).
    """
    from ..models.hvae import HierarchicalVAE, HierarchyLoss
    from ..models.vae import VAE, ELBOLoss, to_8bit_range

    epochs = 4 if profile.name == "ci" else vae_epochs(profile)
    warmup = warmup_steps(len(x), epochs)
    torch.manual_seed(0)
    if hierarchical:
        name = "hvae8"
        model = HierarchicalVAE(HVAE_LATENTS, HVAE_HIDDEN, likelihood="discretized")
        loss = HierarchyLoss(warmup_steps=warmup, binarize=False)
    else:
        name = "vae8"
        model = VAE(latent_dim=20, hidden=(512,), likelihood="discretized")
        loss = ELBOLoss(warmup_steps=warmup, binarize=False)
    result = _elbo_fit(name, model.to(device), loss, to_8bit_range(x), profile,
                       epochs=epochs, prefix=prefix, warmup=warmup, data=source,
                       likelihood="discretized")
    return model, result
