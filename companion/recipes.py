"""The book's stored models: one function per chapter model that builds it and
load-or-trains it with the active profile's recipe.

Chapter 10 compares the models of chapters 6, 7 and 9; calling the same function with the
same profile and data gives the same checkpoint identity, so it loads instead of retraining.
Each function returns the trained model (EMA weights where the recipe keeps an average) and
the `companion.train.FitResult`.
"""

from __future__ import annotations

import torch

from .models.autoencoder import Autoencoder, reconstruction_loss
from .train import checkpoint_path, fit

AE_HIDDEN, AE_LR, AE_NOISE, AE_WEIGHT = (256,), 2e-3, 0.5, 1.0


def chapter1_autoencoder(name: str, x, profile, device, *, loss_fn=reconstruction_loss,
                         latent: int = 16, prefix: str = "ch1", **settings):
    """Chapter 1's autoencoder: MLP 784 -> 256 -> latent and back, squared error (or the
    `loss_fn` given: chapter 1's denoising and contractive losses use AE_NOISE, AE_WEIGHT),
    Adam 2e-3, the profile's batch size, 15 / 30 / 20 epochs (ci / cpu / gpu).

    x: (N, 1, 28, 28) training images. Chapter 6 compares the VAE with this model; it calls
    with its own `prefix` so that two notebooks running at once never write one file.
    settings: whatever else shapes `loss_fn` (e.g. radius=2.0), recorded in the checkpoint.
    Returns (model, FitResult).
    """
    epochs = profile.pick(ci=15, cpu=30, gpu=20)
    torch.manual_seed(0)
    model = Autoencoder(latent, hidden=AE_HIDDEN).to(device)
    config = dict(profile=profile.name, name=name, latent=latent, hidden=list(AE_HIDDEN),
                  epochs=epochs, lr=AE_LR, noise=AE_NOISE, weight=AE_WEIGHT, n_train=len(x),
                  **settings)
    result = fit(model, loss_fn, x, epochs=epochs, batch_size=profile.batch_size, lr=AE_LR,
                 checkpoint=checkpoint_path(f"{prefix}-{name}", profile), config=config,
                 desc=name)
    return model, result
