"""A U-Net that predicts the noise eps_theta(x_t, t) of a DDPM on 28x28 images.

The layout, for channels (c1, c2, c3):

    28x28, c1  --res blocks-------------------------------------------->  res blocks  -> out
      | downsample (stride-2 conv)                                          ^ upsample
    14x14, c2  --res blocks---------------------------->  res blocks ------|
      | downsample                                          ^ upsample
     7x7,  c3  --res blocks + attention -- middle: res, attention, res --|

28 halves only twice (28 -> 14 -> 7; a third halving would need padding to 32), so the
U-Net has three resolutions. Self-attention runs only at 7x7: there it mixes 49 positions
(a 49 x 49 attention matrix per head), at 28x28 it would be 784 x 784 per image, 256 times
the memory and work, for features whose receptive field the convolutions already cover.

Every residual block sees the step t through a sinusoidal embedding (as in a Transformer's
positions) passed through a small MLP and added to its features after the first
convolution: one network serves all T noise levels, and the embedding tells it which.
Normalization is GroupNorm (per image, so statistics never mix different t in a batch).

Built with `num_classes`, the network is class-conditional, eps_theta(x_t, t, y): a learned
label embedding is added to the time embedding (as chapter 11's latent denoiser does), with
one extra row for NO_LABEL (-1), the unconditional prediction that label dropout trains
(Ho and Salimans' classifier-free guidance, chapter 16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..masked import MASK, check_states
from ..run import checks

NO_LABEL = -1  # "no class": the unconditional half of classifier-free guidance


@dataclass(frozen=True)
class UNetConfig:
    """channels: widths at 28, 14, 7; blocks: residual blocks per resolution and side;
    heads: attention heads at 7x7; groups: GroupNorm groups; dropout: in the residual
    blocks; T: the number of diffusion steps (t must lie in 1..T); in_channels: channels of
    the input image (1 for grey images; 2 for chapter 14's masked states, `MaskedUNet`);
    num_classes: None for an unconditional network, or the number of classes of a
    class-conditional one (chapter 16's classifier-free guidance)."""

    channels: tuple[int, int, int] = (32, 64, 128)
    blocks: int = 2
    heads: int = 4
    groups: int = 8
    dropout: float = 0.0
    T: int = 1000
    in_channels: int = 1
    num_classes: int | None = None


# Parameters and forward FLOPs per image (measured by `n_params` and `flops_per_image`; the
# numbers are checked in tests/test_unet.py): tiny 0.17M / 37 MFLOPs, cpu 0.67M / 145
# MFLOPs, gpu 14.9M / 3.19 GFLOPs. At 7x7 a weight costs 98 FLOPs per image, at 28x28 1,568:
# the cpu preset keeps few channels at 28 and puts three quarters of its weights at 7x7.
# It was 2.16M / 328 MFLOPs, (16, 32, 128): 1.5-1.7 s per training step of 64 images on a
# 2-core machine that multiplies float32 matrices at about 37 GFLOP/s, too slow for the
# chapter's budget there; (16, 32, 64) takes 0.6-1.0 s there (0.1 s on 2 cores with bf16
# matrix units) and trains for 4,500 steps, once, for the shipped set (recipes.ddpm_settings).
# Narrower still, (8, 16, 64), was not stable: its samples drifted to all-white and
# all-black images after 1,000 steps.
PRESETS: dict[str, UNetConfig] = {
    "tiny": UNetConfig(channels=(8, 16, 32), blocks=1, heads=2, groups=4),
    "cpu": UNetConfig(channels=(16, 32, 64), blocks=1, heads=4, groups=8),
    "gpu": UNetConfig(channels=(64, 128, 256), blocks=2, heads=4, groups=16, dropout=0.1),
}


def preset(name: str, **changes) -> UNetConfig:
    """A preset ("tiny", "cpu", "gpu") with optional changes, e.g. preset("cpu", T=500)."""
    if name not in PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; choose one of {list(PRESETS)}")
    cfg = PRESETS[name]
    return UNetConfig(**{**cfg.__dict__, **changes}) if changes else cfg


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer steps.  t: (B,) -> (B, dim), dim even.

    e(t)_i = sin(t w_i) for i < dim/2, cos(t w_{i - dim/2}) after, w_i = max_period^(-2i/dim):
    wavelengths from 2 pi to about 2 pi max_period, so nearby t get nearby embeddings at the
    slow frequencies and still differ at the fast ones.
    """
    if dim % 2:
        raise ValueError(f"the embedding dimension must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + time embedding, GroupNorm-SiLU-dropout-conv, + skip.

    x: (B, c_in, H, W), emb: (B, d) -> (B, c_out, H, W).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection.

    x: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} must be divisible by heads {heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, C/heads)
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(h.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    """eps_theta(x_t, t): x (B, 1, 28, 28) and t (B,) int64 in 1..T -> (B, 1, 28, 28).

    Build it from a preset, `UNet(preset("cpu"))`, or any `UNetConfig`.
    """

    def __init__(self, config: UNetConfig | None = None, **changes):
        super().__init__()
        cfg = config or UNetConfig()
        if changes:
            cfg = UNetConfig(**{**cfg.__dict__, **changes})
        if len(cfg.channels) != 3:
            raise ValueError(f"channels holds the widths at 28, 14 and 7: three numbers, got "
                             f"{cfg.channels}")
        if cfg.blocks < 1:
            raise ValueError(f"blocks must be at least 1, got {cfg.blocks}")
        if not isinstance(cfg.T, int) or isinstance(cfg.T, bool) or cfg.T < 1:
            raise ValueError(f"T (the number of diffusion steps t = 1..T) must be a positive "
                             f"int, got {cfg.T!r}; use the T of the Diffusion, e.g. "
                             "preset('cpu', T=diffusion.T)")
        if not isinstance(cfg.groups, int) or cfg.groups < 1:
            raise ValueError(f"groups (GroupNorm groups) must be a positive int, got "
                             f"{cfg.groups!r}")
        for w in cfg.channels:
            if not isinstance(w, int) or w < 1:
                raise ValueError(f"channels must be three positive ints, got {cfg.channels}")
            if w >= cfg.groups and w % cfg.groups:
                raise ValueError(f"every width in channels {cfg.channels} must be a multiple "
                                 f"of groups = {cfg.groups} (GroupNorm splits the channels "
                                 f"into equal groups), got {w}")
        if cfg.num_classes is not None and (isinstance(cfg.num_classes, bool) or not
                                            isinstance(cfg.num_classes, int)
                                            or cfg.num_classes < 2):
            raise ValueError(f"num_classes must be None (unconditional) or an int >= 2, "
                             f"got {cfg.num_classes!r}")
        if not isinstance(cfg.in_channels, int) or cfg.in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {cfg.in_channels!r}")
        if cfg.channels[0] % 2:
            raise ValueError(f"the first width sets the size of the time embedding, which "
                             f"must be even: got channels {cfg.channels}")
        self.config = cfg
        c1, c2, c3 = cfg.channels
        emb_dim = 4 * c1
        g, p = cfg.groups, cfg.dropout
        self.time_mlp = nn.Sequential(nn.Linear(c1, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        if cfg.num_classes is not None:
            # one extra row, the last, is the learned "no label" embedding
            self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim)
        self.stem = nn.Conv2d(cfg.in_channels, c1, 3, padding=1)
        widths = [c1, c2, c3]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [c1]
        c = c1
        for level, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(cfg.blocks):
                blocks.append(ResBlock(c, w, emb_dim, g, p))
                c = w
                skips.append(c)
            self.down.append(blocks)
            if level < 2:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.attn_down = Attention(c3, cfg.heads, g)
        self.mid1 = ResBlock(c3, c3, emb_dim, g, p)
        self.mid_attn = Attention(c3, cfg.heads, g)
        self.mid2 = ResBlock(c3, c3, emb_dim, g, p)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(cfg.blocks + 1):
                blocks.append(ResBlock(c + skips.pop(), w, emb_dim, g, p))
                c = w
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.attn_up = Attention(c3, cfg.heads, g)
        self.head = nn.Sequential(nn.GroupNorm(min(g, c), c), nn.SiLU(),
                                  nn.Conv2d(c, 1, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    @property
    def conditional(self) -> bool:
        """Whether the network takes labels (built with num_classes)."""
        return self.config.num_classes is not None

    def check_labels(self, y, batch: int) -> None:
        """Clear errors for labels given to an unconditional network, or labels that are not
        (batch,) integers in 0..num_classes - 1 or NO_LABEL (checked on the CPU only)."""
        if not self.conditional:
            raise ValueError("this U-Net is unconditional (num_classes=None) but got labels "
                             "y; build it with preset(..., num_classes=10) to condition on "
                             "digits")
        if not torch.is_tensor(y) or y.shape != (batch,) or y.is_floating_point() \
                or y.dtype == torch.bool:
            raise ValueError(f"y must be an int64 tensor of shape ({batch},), one label per "
                             f"image, got {getattr(y, 'dtype', type(y).__name__)} "
                             f"{tuple(getattr(y, 'shape', ()))}")
        if checks.on_host(y) and len(y):
            lo, hi = (int(v) for v in torch.aminmax(y))
            if lo < NO_LABEL or hi >= self.config.num_classes:
                raise ValueError(f"labels must lie in 0..{self.config.num_classes - 1} (or "
                                 f"NO_LABEL = {NO_LABEL} for none), got values in "
                                 f"[{lo}, {hi}]")

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Clear errors for a wrong image shape or dtype, or a t outside 1..T.

        The range is checked for CPU tensors only: on a GPU it would cost a device sync per
        call (companion.diffusion checks the t it is given before any network call).
        """
        c = self.config.in_channels
        if not torch.is_tensor(x):
            raise TypeError(f"the U-Net takes a tensor of images (B, {c}, 28, 28), got "
                            f"{type(x).__name__}; convert it with torch.as_tensor(x)")
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, 28, 28):
            raise ValueError(f"the U-Net takes images of shape (B, {c}, 28, 28), got "
                             f"{tuple(x.shape)}")
        weight = self.stem.weight
        if not x.is_floating_point():
            raise TypeError(f"the U-Net takes floating-point images, got {x.dtype}: use "
                            f"x.to({weight.dtype}) (8-bit pixels: x.float() / 127.5 - 1)")
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x is {x.dtype} but the U-Net's weights are {weight.dtype}: use "
                            f"x.to({weight.dtype}), or model.to({x.dtype})")
        if not torch.is_tensor(t) or t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"t must be an integer tensor of steps in 1..{self.config.T}, got "
                            f"{t!r:.60}")
        if t.shape != (len(x),):
            raise ValueError(f"t must have shape ({len(x)},), one step per image, got "
                             f"{tuple(t.shape)}")
        if t.device.type != "cpu" or not len(t):
            return
        lo, hi = torch.aminmax(t)
        if lo < 1 or hi > self.config.T:
            raise ValueError(f"t must lie in 1..T = 1..{self.config.T} (the schedule this "
                             f"U-Net was built for), got values in {int(lo)}..{int(hi)}")

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            self.check_inputs(x, t)
            if y is not None:
                self.check_labels(y, len(x))
        emb = self.time_mlp(timestep_embedding(t, self.config.channels[0]).to(x.dtype))
        if self.conditional:  # no label: the unconditional prediction
            y = torch.full_like(t, NO_LABEL) if y is None else y
            idx = torch.where(y == NO_LABEL, torch.full_like(y, self.config.num_classes), y)
            emb = emb + self.label_emb(idx).to(emb.dtype)
        return self.trunk(x, emb)

    def trunk(self, x: torch.Tensor, emb: torch.Tensor, text=None) -> torch.Tensor:
        """The network below the embedding: x (B, C, 28, 28) and the step's (and label's)
        embedding emb (B, 4 * channels[0]), added in every residual block -> (B, 1, 28, 28).
        A network conditioned in another way adds its own vector to emb and calls this;
        `text` is handed to `attend`, the three 7x7 attention layers (chapter 21)."""
        h = self.stem(x)
        hs = [h]
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
                hs.append(h)
            if level < 2:
                h = self.downsample[level](h)
                hs.append(h)
        h = self.attend(0, h, text)
        h = self.mid2(self.attend(1, self.mid1(h, emb), text), emb)
        for i, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            if i == 0:
                h = self.attend(2, h, text)
            if i < 2:
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(h)

    def attend(self, i: int, h: torch.Tensor, text=None) -> torch.Tensor:
        """The i-th 7x7 self-attention (0: down, 1: middle, 2: up) on h (B, C, 7, 7); a
        subclass that reads text there (`CaptionUNet`) adds its own layer after it."""
        return (self.attn_down, self.mid_attn, self.attn_up)[i](h)


class MaskedUNet(UNet):
    """Chapter 14's denoiser: Bernoulli logits of x_0 from a masked state of binary pixels.

    z (B, 1, 28, 28) with values 0, 1 or `companion.masked.MASK` -> logits (B, 1, 28, 28),
    one per pixel, of p_theta(x_0 = 1 | z) (used for the masked pixels only).

    The U-Net above, built with in_channels=2 and T=784: it sees the revealed values (0 where
    masked) and a mask indicator as two channels, and, in place of a time step, the number
    of masked pixels (1..784) through the same sinusoidal embedding. The masked state alone
    then decides the prediction, as it decides the exact denoiser's (the masking does not
    depend on the pixel values, so p(x_0 | z_t) does not depend on t): the network knows
    nothing of the schedule, and its bound is the same for every schedule (chapter 14).
    """

    def __init__(self, config: UNetConfig | None = None, **changes):
        cfg = config or UNetConfig()
        changes = {"in_channels": 2, "T": 28 * 28, **changes}
        super().__init__(cfg, **changes)
        if self.config.in_channels != 2 or self.config.T != 28 * 28:
            raise ValueError("a MaskedUNet takes two input channels (values, mask) and "
                             "T = 784 (the number of masked pixels); got in_channels="
                             f"{self.config.in_channels}, T={self.config.T}")

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not torch.compiler.is_compiling():
            check_states("z", z, shape=(1, 28, 28))
        masked = z == MASK
        values = torch.where(masked, torch.zeros_like(z), z)
        n_masked = masked.flatten(1).sum(1).clamp(min=1)  # a revealed image: nothing to say
        return super().forward(torch.cat([values, masked.to(z.dtype)], dim=1), n_masked)


def n_params(model: nn.Module) -> int:
    """The number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flops_per_image(model: UNet, batch: int = 2) -> float:
    """Forward-pass FLOPs for one image, counted by torch.utils.flop_counter.

    Counts matrix multiplications, convolutions and attention (a multiply-add is 2 FLOPs);
    normalizations and activations, a few percent more, are not counted.
    """
    batch = checks.flops_batch(batch)
    p = next(model.parameters())
    x = torch.zeros(batch, 1, 28, 28, device=p.device, dtype=p.dtype)
    return forward_flops(model, x, torch.ones(batch, dtype=torch.long, device=p.device))


def forward_flops(model: nn.Module, *inputs: torch.Tensor) -> float:
    """Forward-pass FLOPs per example of `model(*inputs)` (inputs: (B, ...)), counted by
    torch.utils.flop_counter in eval mode without gradients; the mode is restored."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    model.train(was_training)
    return counter.get_total_flops() / inputs[0].shape[0]
