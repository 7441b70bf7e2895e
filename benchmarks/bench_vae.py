"""The chapter-6 MLP VAE: our loop (`companion.fit`, data on the device) against the
common recipe, the PyTorch example's (MLP 784-400-20, a DataLoader, float32, Adam 1e-3,
batch 128, the loss read back with .item() every step).

Both train the same network on the same grey images with the same loss (the example's
BCE + KL); what differs is the loop. Reported: images per second, and seconds until our
loop reaches the test loss the common recipe has after its 10 epochs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from companion.models.vae import VAE, ELBOLoss
from companion.train import fit

from .common import Context, clock, count_syncs, training_flops_per_image

EPOCHS = 10
BATCH = 128


class ExampleVAE(nn.Module):
    """The PyTorch example's VAE: 784 -> 400 -> (mu, logvar) of 20, 20 -> 400 -> 784."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def example_loss(recon, x, mu, logvar):
    """The example's loss: BCE summed over pixels and the batch, plus the KL."""
    bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def train_example(model, x_train_cpu, device, epochs, generator):
    """The example's train(): a DataLoader, batches copied to the device, .item() per step."""
    loader = DataLoader(TensorDataset(x_train_cpu), batch_size=BATCH, shuffle=True,
                        generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        train_loss = 0.0
        for (data,) in loader:
            data = data.to(device)
            optimizer.zero_grad()
            recon, mu, logvar = model(data)
            loss = example_loss(recon, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
    return train_loss


@torch.no_grad()
def test_loss(forward, x, samples: int = 10) -> float:
    """The example's test loss (BCE + KL per image), averaged over `samples` draws of z.

    forward(x) -> (probabilities (B, 784), mu, logvar); the same function scores both.
    """
    torch.manual_seed(1)
    total = 0.0
    for _ in range(samples):
        for start in range(0, len(x), 1000):
            xb = x[start:start + 1000]
            recon, mu, logvar = forward(xb)
            total += example_loss(recon, xb, mu, logvar).item()
    return total / samples / len(x)


def ours_forward(model: VAE):
    def forward(x):
        mu, logvar = model.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(model.decode(z)).view(-1, 784), mu, logvar
    return forward


def ours_model(device) -> VAE:
    return VAE(20, hidden=(400,)).to(device)  # the example's network, in companion


def run(ctx: Context) -> dict:
    dev, x = ctx.device, ctx.mnist.x_train
    x_test = ctx.mnist.x_test
    x_cpu = x.cpu()
    n = len(x)
    g = torch.Generator().manual_seed(0)
    loss_fn = ELBOLoss(binarize=False)  # grey images, BCE + KL: the example's loss

    # --- the common recipe: 10 epochs, timed; its test loss is the target ---------------
    torch.manual_seed(0)
    peer = ExampleVAE().to(dev)
    train_example(peer, x_cpu[:BATCH * 4], dev, 1, g)  # warm-up (lazy init, kernels)
    torch.manual_seed(0)
    peer = ExampleVAE().to(dev)
    t0 = clock(dev)
    train_example(peer, x_cpu, dev, EPOCHS, g)
    peer_s = clock(dev) - t0
    peer.eval()
    target = test_loss(lambda xb: peer(xb), x_test)

    # --- ours: the same network and loss through fit, epoch by epoch until the target ---
    warm = ours_model(dev)
    fit(warm, loss_fn, x[:BATCH * 4], epochs=1, batch_size=BATCH, quiet=True)
    torch.manual_seed(0)
    model = ours_model(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=dev.type == "cuda" or None)
    train_s, epochs_to_target, losses = 0.0, None, []
    for epoch in range(1, 3 * EPOCHS + 1):
        t0 = clock(dev)
        fit(model, loss_fn, x, epochs=1, batch_size=BATCH, optimizer=opt, quiet=True)
        train_s += clock(dev) - t0
        losses.append(test_loss(ours_forward(model), x_test))
        if epochs_to_target is None and losses[-1] <= target:
            epochs_to_target, seconds_to_target = epoch, train_s
            if epoch >= EPOCHS:
                break
        if epoch >= EPOCHS and epochs_to_target is not None:
            break
    ours_10 = train_s / len(losses) * EPOCHS  # seconds for 10 epochs at the measured pace

    def one_step():
        loss, _ = loss_fn(model, x[:BATCH])
        loss.backward()

    flops = training_flops_per_image(one_step, BATCH)
    syncs = count_syncs(lambda: fit(model, loss_fn, x[:BATCH * 20], epochs=1,
                                    batch_size=BATCH, quiet=True, check_every=10**6))
    res = {
        "n_train": n, "batch": BATCH, "epochs": EPOCHS,
        "params": sum(p.numel() for p in model.parameters()),
        "flops_per_image_train": flops,
        "peer_seconds_10_epochs": peer_s,
        "peer_images_per_s": EPOCHS * n / peer_s,
        "peer_test_loss_10_epochs": target,
        "ours_images_per_s": len(losses) * n / train_s,
        "ours_seconds_10_epochs": ours_10,
        "ours_test_loss_by_epoch": losses,
        "ours_epochs_to_target": epochs_to_target,
        "ours_seconds_to_target": seconds_to_target if epochs_to_target else None,
        "syncs_per_20_steps": syncs,
    }
    res["speedup_images_per_s"] = res["ours_images_per_s"] / res["peer_images_per_s"]
    if epochs_to_target:
        res["time_to_quality_ratio"] = peer_s / seconds_to_target
    return res
