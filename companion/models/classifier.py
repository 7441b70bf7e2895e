"""A small MNIST classifier: the frozen judge of generated digits.

Its penultimate features feed the Fréchet distance (companion.metrics.frechet_distance),
its probabilities the label histogram and the mean top-class probability of samples.
Inputs are images in [0, 1], like companion.data's; a DDPM's samples on [-1, 1] go through
`to_unit` first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..run import checks

FEATURES = 128


class Classifier(nn.Module):
    """Two conv-conv-pool stages (28 -> 14 -> 7), a 128-unit feature layer, 10 logits.

    x: (B, 1, 28, 28) in [0, 1] -> logits (B, 10); `features(x)` -> (B, 128).
    """

    def __init__(self, width: int = 32, features: int = FEATURES, dropout: float = 0.3):
        super().__init__()
        w = checks.count("width", width)
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * w * 49, features), nn.ReLU(),
        )
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(features, 10)

    def _check(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x):
            raise TypeError(f"the classifier takes a tensor of images (B, 1, 28, 28) in "
                            f"[0, 1], got {type(x).__name__}; convert with torch.as_tensor(x)")
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"the classifier takes images of shape (B, 1, 28, 28) in [0, 1], "
                             f"got {tuple(x.shape)}")
        dtype = self.out.weight.dtype
        if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"the classifier's weights are {dtype} but the images are "
                            f"{x.dtype}: convert them, e.g. x.to({dtype}) (bytes: "
                            "x.float() / 255)")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations: (B, 1, 28, 28) -> (B, 128)."""
        self._check(x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.features(x)))


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images on [-1, 1] (a DDPM's scale) to [0, 1], clamped: (B, ...) -> (B, ...)."""
    return ((x + 1) / 2).clamp(0, 1)


def augment(x: torch.Tensor, max_shift: int = 2, generator=None) -> torch.Tensor:
    """Random translations by up to `max_shift` pixels (zero fill): (B, 1, H, W) -> same.

    One shift per image, drawn on x's device; the classifier then does not depend on the
    exact centering of a digit, which generated digits need not copy.
    """
    B, _, H, W = x.shape
    pad = F.pad(x, (max_shift,) * 4)
    dx, dy = (torch.randint(0, 2 * max_shift + 1, (2, B), device=x.device,
                            generator=generator))
    rows = (torch.arange(H, device=x.device)[None] + dy[:, None])[:, :, None]  # (B, H, 1)
    cols = (torch.arange(W, device=x.device)[None] + dx[:, None])[:, None, :]  # (B, 1, W)
    return pad[torch.arange(B, device=x.device)[:, None, None], 0, rows, cols][:, None]


def classification_loss(model: Classifier, batch) -> tuple[torch.Tensor, dict]:
    """Cross-entropy on shifted images; batch = (x (B, 1, 28, 28) in [0, 1], y (B,))."""
    x, y = batch
    logits = model(augment(x))
    loss = F.cross_entropy(logits.float(), y)
    return loss, {"accuracy": (logits.argmax(1) == y).float().mean()}


@torch.no_grad()
def predict(model: Classifier, x: torch.Tensor, batch_size: int = 1000
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 128), probabilities (N, 10)) in float32, in eval mode, by batches.

    x: (N, 1, 28, 28) images in [0, 1] (a DDPM's samples go through to_unit first).
    """
    batch_size = checks.count("batch_size", batch_size)
    model._check(x)
    if len(x) == 0:
        raise ValueError(f"predict got no images, shape {tuple(x.shape)}: pass at least one")
    if len(x):
        lo, hi = torch.aminmax(x.detach().float())
        if not (lo >= -0.01 and hi <= 1.01):
            raise ValueError(f"the classifier takes images in [0, 1], got values in "
                             f"[{lo.item():.3g}, {hi.item():.3g}]: a DDPM's samples on "
                             "[-1, 1] go through to_unit(x) first")
    was_training = model.training
    model.eval()
    feats, probs = [], []
    for start in range(0, len(x), batch_size):
        f = model.features(x[start:start + batch_size])
        feats.append(f.float())
        probs.append(model.out(f).float().softmax(1))
    model.train(was_training)
    return torch.cat(feats), torch.cat(probs)


def accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """The fraction of images whose most probable class is the label. y: (B,) labels."""
    if not torch.is_tensor(y) or tuple(y.shape) != (len(x),):
        raise checks.ArgumentError(f"y must hold one label per image ({len(x)},), got "
                                   f"{tuple(getattr(y, 'shape', ())) or type(y).__name__}")
    return (predict(model, x)[1].argmax(1) == y).float().mean().item()
