"""The chapter-7 hierarchical VAE: training throughput, and seconds to a stated test ELBO.

The two-layer model of chapter 7 (z_1: 20, z_2: 8, bottom-up 784 -> 480 -> 128) and the
single-level VAE of chapter 6 at the same size, both through `companion.fit` with chapter
6's recipe (batch 32, Adam 1e-3, dynamic binarization, free bits 0.25 for the hierarchy),
trained epoch by epoch. Reported: images per second, and the training seconds each needs
until its test ELBO (10 samples per image, the test set binarized once) reaches TARGET_ELBO.
"""

from __future__ import annotations

import torch

from companion.data import binarize
from companion.models.hvae import HierarchicalVAE, HierarchyLoss
from companion.models.vae import VAE, ELBOLoss
from companion.train import fit

from .common import Context, clock

BATCH = 32
TARGET_ELBO = -125.0  # nats per image; the small CPU run reaches it within a few epochs


@torch.no_grad()
def test_elbo(model, x_bin) -> float:
    torch.manual_seed(1)
    model.eval()
    return model.elbo_terms(x_bin, n_samples=10).elbo.mean().item()


def time_to_target(model, loss_fn, x, x_bin, max_epochs: int) -> dict:
    """Train one epoch at a time until the test ELBO reaches TARGET_ELBO (or max_epochs)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    dev = next(model.parameters()).device
    seconds, elbos, reached = 0.0, [], None
    for _ in range(max_epochs):
        t0 = clock(dev)
        fit(model, loss_fn, x, epochs=1, batch_size=BATCH, optimizer=opt, quiet=True)
        seconds += clock(dev) - t0
        elbos.append(test_elbo(model, x_bin))
        if elbos[-1] >= TARGET_ELBO:
            reached = seconds
            break
    return {"params": sum(p.numel() for p in model.parameters()),
            "images_per_s": len(elbos) * len(x) / seconds,
            "test_elbo_by_epoch": elbos, "seconds_to_target": reached}


def run(ctx: Context) -> dict:
    dev, x = ctx.device, ctx.mnist.x_train
    x_bin = binarize(ctx.mnist.x_test, generator=torch.Generator(device=dev).manual_seed(0))
    max_epochs = ctx.pick(10, 20)
    warm = HierarchicalVAE((20, 8), (480, 128)).to(dev)   # lazy init, kernels
    fit(warm, HierarchyLoss(), x[:BATCH * 4], epochs=1, batch_size=BATCH, quiet=True)
    torch.manual_seed(0)
    hier = time_to_target(HierarchicalVAE((20, 8), (480, 128)).to(dev),
                          HierarchyLoss(free_bits=0.25), x, x_bin, max_epochs)
    torch.manual_seed(0)
    flat = time_to_target(VAE(20, hidden=(512,)).to(dev), ELBOLoss(), x, x_bin, max_epochs)
    def row(name, r):
        to_target = (f"{r['seconds_to_target']:.1f}" if r["seconds_to_target"] is not None
                     else f"not within {len(r['test_elbo_by_epoch'])} epochs")
        return [name, f"{r['params']:,}", f"{r['images_per_s']:,.0f}",
                f"{r['test_elbo_by_epoch'][-1]:.2f}", to_target]

    return {"n_train": len(x), "batch": BATCH, "target_test_elbo": TARGET_ELBO,
            "hvae": hier, "vae": flat, "ours_images_per_s": hier["images_per_s"],
            "hvae_slowdown_images_per_s": flat["images_per_s"] / hier["images_per_s"],
            "table_header": ["model", "params", "images/s", "last test ELBO",
                             f"s to test ELBO {TARGET_ELBO:.0f}"],
            "table_rows": [row("hierarchical VAE (20, 8)", hier),
                           row("VAE (20), chapter 6", flat)]}
