"""A small MNIST classifier: the frozen judge of generated digits.

Its penultimate features feed the Fréchet distance (companion.metrics.frechet_distance),
its probabilities the label histogram and the mean top-class probability of samples.
Inputs are images in [0, 1], like companion.data's; a DDPM's samples on [-1, 1] go through
`to_unit` first.

`NoisyClassifier` is the same network with the diffusion step t as a second input, trained
on noised digits x_t at every t (`noisy_classification_loss`): the p_t(y | x_t) of
classifier guidance (Dhariwal and Nichol 2021; chapter 16). It reads x_t on the chain's
scale (data on [-1, 1], plus noise), not [0, 1].
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


class NoisyClassifier(Classifier):
    """p_t(y | x_t): chapter 9's classifier with the step t as an input, 10 logits.

    x: (B, 1, 28, 28) on the chain's scale, t: (B,) int64 in 1..T -> logits (B, 10). The
    step enters through the U-Net's sinusoidal `timestep_embedding` and a small MLP, as
    a per-channel bias after the first convolution of each stage and on the feature layer
    (the way the U-Net's residual blocks take it); the layers are `Classifier`'s.
    """

    def __init__(self, T: int, width: int = 32, features: int = FEATURES,
                 dropout: float = 0.3):
        super().__init__(width, features, dropout)
        self.T = checks.count("T (the number of diffusion steps t = 1..T)", T)
        w = self.body[0].out_channels
        self.emb_dim = w if w % 2 == 0 else w + 1
        self.time_mlp = nn.Sequential(nn.Linear(self.emb_dim, 4 * w), nn.SiLU())
        self.time_bias = nn.ModuleList([nn.Linear(4 * w, w), nn.Linear(4 * w, 2 * w),
                                        nn.Linear(4 * w, features)])

    @property
    def num_classes(self) -> int:
        return self.out.out_features

    def _check_t(self, x: torch.Tensor, t) -> None:
        if not torch.is_tensor(t) or t.is_floating_point() or t.dtype == torch.bool \
                or t.shape != (len(x),):
            raise ValueError(f"t must be an int64 tensor of shape ({len(x)},) with steps in "
                             f"1..{self.T}, got {getattr(t, 'dtype', type(t).__name__)} "
                             f"{tuple(getattr(t, 'shape', ()))}")
        if checks.on_host(t) and len(t):  # on a GPU: no sync per call
            lo, hi = (int(v) for v in torch.aminmax(t))
            if lo < 1 or hi > self.T:
                raise ValueError(f"t must lie in 1..T = 1..{self.T} (the chain this "
                                 f"classifier was trained on), got values in {lo}..{hi}")

    def features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Penultimate activations: x (B, 1, 28, 28), t (B,) -> (B, features)."""
        from .unet import timestep_embedding

        self._check(x)
        self._check_t(x, t)
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim).to(x.dtype))
        b1, b2, b3 = (lin(emb) for lin in self.time_bias)
        h = self.body[0](x) + b1[:, :, None, None]
        h = self.body[5](self.body[1:5](h)) + b2[:, :, None, None]
        h = self.body[11](self.body[6:11](h)) + b3
        return self.body[12](h)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.out(self.drop(self.features(x, t)))


def noisy_classification_loss(model: NoisyClassifier, diffusion, batch,
                              generator: torch.Generator | None = None
                              ) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of p_t(y | x_t) on x_t ~ q(x_t | x_0), t uniform on 1..T.

    batch = (x0 (B, 1, 28, 28) in [0, 1], y (B,)); each digit is shifted (`augment`), put
    on [-1, 1] and noised to its own t by `diffusion` (a `companion.diffusion.Diffusion`
    with model.T steps): E_t E_{x_t} [-log p_t(y | x_t)].

    Book: :eq:`ch16-noisy-classifier-loss`.
    """
    x, y = batch
    if diffusion.T != model.T:
        raise ValueError(f"the classifier was built for T = {model.T} steps but the "
                         f"diffusion has {diffusion.T}: build it with "
                         f"NoisyClassifier(T={diffusion.T})")
    x0 = augment(x, generator=generator) * 2 - 1
    t = torch.randint(1, model.T + 1, (len(x0),), device=x0.device, generator=generator)
    noise = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
    logits = model(diffusion.q_sample(x0, t, noise), t)
    loss = F.cross_entropy(logits.float(), y)
    return loss, {"accuracy": (logits.argmax(1) == y).float().mean()}


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
