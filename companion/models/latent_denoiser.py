"""The denoiser of a latent diffusion model: a residual MLP on flat codes (chapter 11).

    model = LatentDenoiser(dim=32, T=500)                    # eps_theta(z_t, t)
    model = LatentDenoiser(dim=32, T=500, num_classes=10)    # eps_theta(z_t, t, y)

A code z of a few dozen numbers has no spatial layout for a convolution to exploit, so the
denoiser is an MLP: the code goes through `depth` residual blocks (LayerNorm, Linear, SiLU,
Linear, added back), and each block adds a projection of the step's embedding, the U-Net's
sinusoidal `timestep_embedding` through a two-layer MLP. A class-conditional model adds a
learned label embedding to the time embedding (Ho and Salimans' classifier-free guidance):
labels are 0 .. num_classes - 1, and NO_LABEL (-1) asks for the unconditional prediction,
which the same network learns because training drops the label of some examples.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..run import checks
from .unet import NO_LABEL, forward_flops, timestep_embedding


@dataclass(frozen=True)
class LatentDenoiserConfig:
    """dim: the code size; width: the hidden size; depth: residual blocks; T: diffusion
    steps (t runs over 1..T); num_classes: None for an unconditional model."""

    dim: int = 32
    width: int = 256
    depth: int = 3
    T: int = 1000
    num_classes: int | None = None


class ResidualBlock(nn.Module):
    """h + W2 SiLU(W1 LayerNorm(h) + E emb): (B, width), (B, emb) -> (B, width)."""

    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.act(self.fc1(self.norm(h)) + self.emb(emb)))


class LatentDenoiser(nn.Module):
    """eps_theta(z_t, t[, y]): z_t (B, dim), t (B,) int in 1..T, y (B,) int in
    0..num_classes - 1 or NO_LABEL -> the predicted noise (B, dim).

    `codec_id` records which autoencoder's codes the model was trained on (set it with
    `companion.latent_diffusion.codec_fingerprint(vae)`; 0 = not recorded). It is a buffer,
    so it travels with the checkpoint, and `latent_diffusion.check_pair` refuses a decoder
    whose weights differ from the encoder that made the codes.
    """

    def __init__(self, config: LatentDenoiserConfig | None = None, **changes):
        super().__init__()
        config = LatentDenoiserConfig(**{**asdict(config or LatentDenoiserConfig()),
                                         **changes})
        for name in ("dim", "width", "depth", "T"):
            v = getattr(config, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if config.num_classes is not None and (
                isinstance(config.num_classes, bool) or not isinstance(config.num_classes, int)
                or config.num_classes < 2):
            raise ValueError(f"num_classes must be None (unconditional) or an int >= 2, "
                             f"got {config.num_classes!r}")
        self.config = config
        w = config.width
        self.emb_dim = w
        self.time_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        if config.num_classes is not None:
            # one extra row, the last, is the learned "no label" embedding
            self.label_emb = nn.Embedding(config.num_classes + 1, w)
        self.inp = nn.Linear(config.dim, w)
        self.blocks = nn.ModuleList(ResidualBlock(w, w) for _ in range(config.depth))
        self.out_norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, config.dim)
        nn.init.zeros_(self.out.weight)  # start as "predict no noise": a quiet first step
        nn.init.zeros_(self.out.bias)
        self.register_buffer("codec_id", torch.zeros((), dtype=torch.int64))

    @property
    def conditional(self) -> bool:
        return self.config.num_classes is not None

    def check_inputs(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> None:
        """Clear errors for a code of the wrong shape, steps outside 1..T, bad labels."""
        c = self.config
        if not torch.is_tensor(z) or z.dim() != 2 or z.shape[1] != c.dim:
            shape = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            raise ValueError(f"z must be a batch of flat codes (B, {c.dim}), got {shape}: "
                             f"this denoiser was built for codes of {c.dim} numbers (encode "
                             "the images with the autoencoder it was trained with)")
        if not torch.is_tensor(t) or t.shape != (len(z),) or t.is_floating_point():
            raise ValueError(f"t must be an int64 tensor of shape ({len(z)},) with steps in "
                             f"1..{c.T}, got {getattr(t, 'dtype', type(t).__name__)} "
                             f"{tuple(getattr(t, 'shape', ()))}")
        # as the U-Net checks it: on the CPU (on a GPU, reading the range back would cost a
        # device sync every step)
        if len(t) and checks.on_host(t):
            lo, hi = (int(v) for v in torch.aminmax(t))
            if lo < 1 or hi > c.T:
                raise ValueError(f"t must lie in 1..T = 1..{c.T} (the schedule this denoiser "
                                 f"was built for), got values in {lo}..{hi}")
        if y is None:
            return
        if not self.conditional:
            raise ValueError("this denoiser is unconditional (num_classes=None) but got "
                             "labels y; build it with num_classes=10 to condition on digits")
        if not torch.is_tensor(y) or y.shape != (len(z),) or y.is_floating_point():
            raise ValueError(f"y must be an int64 tensor of shape ({len(z)},), got "
                             f"{getattr(y, 'dtype', type(y).__name__)} "
                             f"{tuple(getattr(y, 'shape', ()))}")
        if len(y):
            lo, hi = int(y.min()), int(y.max())
            if lo < NO_LABEL or hi >= c.num_classes:
                raise ValueError(f"labels must lie in 0..{c.num_classes - 1} (or NO_LABEL = "
                                 f"{NO_LABEL} for none), got values in [{lo}, {hi}]")

    def forward(self, z: torch.Tensor, t: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(z, t, y)
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim).to(z.dtype))
        if self.conditional:
            if y is None:
                y = torch.full_like(t, NO_LABEL)
            idx = torch.where(y == NO_LABEL, torch.full_like(y, self.config.num_classes), y)
            emb = emb + self.label_emb(idx)
        h = self.inp(z)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.out_norm(h))


def flops_per_code(model: LatentDenoiser, batch: int = 2) -> float:
    """Forward-pass FLOPs for one code, counted by torch.utils.flop_counter (matrix
    products; a multiply-add is 2 FLOPs), as `unet.flops_per_image` counts the U-Net's."""
    batch = checks.flops_batch(batch)
    p = next(model.parameters())
    z = torch.zeros(batch, model.config.dim, device=p.device, dtype=p.dtype)
    return forward_flops(model, z, torch.ones(batch, dtype=torch.long, device=p.device))


def check_weight(w) -> float:
    """The guidance weight as a float: a real, finite number >= 0 (w = 0: no guidance)."""
    if isinstance(w, bool) or not isinstance(w, numbers.Real):
        raise TypeError(f"the guidance weight w must be a number (e.g. 3.0), got "
                        f"{type(w).__name__} {w!r}")
    w = float(w)
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"the guidance weight w must be finite and >= 0 (0: no guidance), "
                         f"got {w}")
    return w
