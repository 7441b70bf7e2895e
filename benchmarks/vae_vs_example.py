"""Chapter 6's comparison on any data set: our default VAE against the PyTorch example's.

    python -m benchmarks.vae_vs_example --dataset fashion --profile cpu

Trains both models for the same number of epochs on the same images (the profile's, as in
the notebook: 10 epochs for the gpu profile) and reports, in nats per image, on one fixed
binarization of the test set: the negative ELBO, the importance-weighted estimate of
-log p(x) with the profile's k, and the PyTorch example's own test loss (BCE with the grey
images plus KL). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from companion.data import binarize, load
from companion.metrics import test_elbo, vae_iw_log_likelihood
from companion.models.vae import VAE, ELBOLoss
from companion.run.profiles import get_profile
from companion.run.runtime import get_device, seed_everything
from companion.train import fit


def evaluate(model, x_bin, x_grey, k, grey_encoder: bool) -> dict:
    """Scores on the binarized test set; with grey_encoder the better of both encoder inputs."""
    torch.manual_seed(0)
    options = [None, x_grey] if grey_encoder else [None]
    best = None
    for x_enc in options:
        elbo = test_elbo(model, x_bin, n_samples=10, x_encoder=x_enc).elbo
        if best is None or elbo > best[0]:
            iw = vae_iw_log_likelihood(model, x_bin, k=k, x_encoder=x_enc).log_px.mean().item()
            best = (elbo, iw)
    grey = -test_elbo(model, x_grey, n_samples=10).elbo
    return {"neg_elbo": -best[0], "neg_iw": -best[1], "example_test_loss": grey}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion"])
    ap.add_argument("--profile", default=None, help="ci, cpu or gpu (default: $BOOK_PROFILE)")
    ap.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    args = ap.parse_args()

    profile = get_profile(args.profile)
    device = get_device()
    seed_everything(0)
    data = load(args.dataset, n_train=profile.n_train, n_test=profile.n_test, device=device)
    epochs = args.epochs or profile.pick(ci=profile.epochs, cpu=profile.epochs, gpu=10)
    x_bin = binarize(data.x_test.cpu(), generator=torch.Generator().manual_seed(0)).to(device)
    steps = epochs * math.ceil(len(data.x_train) / 32)
    recipes = {
        "PyTorch example": (VAE(20, hidden=(400,)), ELBOLoss(binarize=False), 128, True),
        "chapter 6 default": (VAE(20, hidden=(512,)), ELBOLoss(warmup_steps=steps // 5), 32,
                              False),
    }
    print(f"{args.dataset}: {len(data.x_train):,} train / {len(x_bin):,} test, {epochs} epochs, "
          f"profile {profile.name}, device {device}, {torch.get_num_threads()} threads")
    print(f"{'model':18s} {'train s':>8s} {'-ELBO':>8s} {'-log p IW':>10s} {'example loss':>13s}")
    for name, (model, loss_fn, batch, grey_encoder) in recipes.items():
        torch.manual_seed(0)
        t = time.perf_counter()
        fit(model.to(device), loss_fn, data.x_train, epochs=epochs, batch_size=batch, lr=1e-3,
            quiet=True)
        seconds = time.perf_counter() - t
        r = evaluate(model, x_bin, data.x_test, profile.iw_samples, grey_encoder)
        print(f"{name:18s} {seconds:8.0f} {r['neg_elbo']:8.2f} {r['neg_iw']:10.2f} "
              f"{r['example_test_loss']:13.2f}", flush=True)


if __name__ == "__main__":
    main()
