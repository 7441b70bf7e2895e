"""A diffusion transformer (DiT) that predicts the noise eps_theta(x_t, t, y) (chapter 21).

    model = DiT(num_classes=10)                  # y: digits (B,), NO_LABEL for none
    model = DiT(vocab_size=32, cond="cross")     # y: captions, token ids (B, L), 0 = pad

Peebles and Xie (2023) replace the U-Net with a plain transformer: the image is cut into
p x p patches (p = 4: 49 tokens for 28x28), each a token with a fixed 2-D sine-cosine
position (as in MAE, He et al. 2022); `depth` identical blocks mix the tokens and a last
linear layer turns each token back into its patch of noise. The step and the condition,
one vector c, steer every block through adaLN-Zero: the LayerNorms have no scale and shift
of their own, a linear map of c supplies them and a gate per residual branch. The map starts
at zero, so each block starts as the identity and the network as the zero predictor
(Peebles and Xie, section 3.2; Goyal et al. 2017 zero the last BatchNorm scale of each
residual block likewise: a deep network that starts as a shallow one trains stably).

Captions go through a small `TextEncoder` trained with the model, then by `cond`:
  "adaln":      c = t_emb + W pooled: one vector per caption, the mean of the encoded words;
  "in_context": the text tokens join the image tokens through every block (DiT's in-context
                conditioning), pads masked; only the image tokens come out;
  "cross":      each block attends from the image to the text tokens (PixArt-alpha, Chen et
                al. 2023), c = t_emb; `attention_maps` shows where.
The empty caption (all pads) is the unconditional half of classifier-free guidance; a
caption shorter than text_length acts as if padded to it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..run import checks
from .unet import NO_LABEL, forward_flops, timestep_embedding
from .unet import n_params as n_params  # re-exported: dit.n_params(model)


def check_patch(p, H: int, W: int) -> int:
    """p as an int if it cuts H x W images into at least 2 x 2 whole patches (28: 2, 4, 7
    or 14); else an error listing the valid ones."""
    valid, v = [q for q in range(2, min(H, W)) if H % q == 0 and W % q == 0], checks.as_int(p)
    if not isinstance(v, int) or isinstance(p, bool) or v not in valid:
        raise checks.ArgumentError(f"patch must cut {H}x{W} images into at least 2 x 2 whole "
                                   f"patches: one of {valid}, got {p!r}")
    return v


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), N = (H/p)(W/p) patches in row-major order, each
    token its patch's pixels in (row, column, channel) order, as DiT's unpatchify reads."""
    B, C, H, W = x.shape
    p = check_patch(p, H, W)
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(tokens: torch.Tensor, p: int, C: int, H: int, W: int) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W), the exact inverse of `patchify`."""
    p = check_patch(p, H, W)
    B, N, D = tokens.shape
    if (N, D) != ((H // p) * (W // p), p * p * C):
        raise checks.ArgumentError(f"tokens must have shape (B, {(H // p) * (W // p)}, "
                                   f"{p * p * C}) for {C}x{H}x{W} images in {p}x{p} patches, "
                                   f"got {tuple(tokens.shape)}")
    x = tokens.reshape(B, H // p, W // p, p, p, C).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, C, H, W)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed positions of a grid x grid layout of patches, row-major: (grid^2, dim).

    pos(r, c) = [e(r), e(c)], e the U-Net's sinusoidal step embedding at dim/2 channels (the
    frequencies of MAE's 1-D table): half the channels say the row, half the column.
    """
    r, c = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([timestep_embedding(r.flatten(), dim // 2),
                      timestep_embedding(c.flatten(), dim // 2)], dim=1)


def linear(d_in: int, d_out: int, zero: bool = False) -> nn.Linear:
    """A Linear, Xavier-uniform with zero bias (DiT's reference code), or all zero."""
    layer = nn.Linear(d_in, d_out)
    (nn.init.zeros_ if zero else nn.init.xavier_uniform_)(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def mlp(dim: int, ratio: int) -> nn.Sequential:
    """(..., dim) -> (..., dim) through ratio * dim hidden units (GELU, tanh form, as DiT)."""
    return nn.Sequential(linear(dim, ratio * dim), nn.GELU(approximate="tanh"),
                         linear(ratio * dim, dim))


def modulate(u: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: u (B, N, D) * (1 + scale) + shift, with scale and shift (B, 1, D) from c."""
    return u * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head attention: x (B, Nq, dim) attends to context (B, Nk, dim), x if None.

    softmax(q k^T / sqrt(d)) v per head, d = dim / heads. pad (B, Nk): True where a key is
    padding, which gets weight 0. A row whose keys are all padding (the empty caption) has
    nothing to attend to: its output is 0 (not softmax's NaN). need_weights=True returns
    (output, weights (B, heads, Nq, Nk)), computed explicitly; otherwise the fused
    F.scaled_dot_product_attention runs, unless `explicit` is set (`flops_per_image`).
    causal=True (self-attention without padding only): query i sees keys j <= i, an
    autoregressive model's mask (chapter 22).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise checks.ArgumentError(f"dim must be divisible by heads, got dim {dim} and "
                                       f"heads {heads}")
        self.heads, self.explicit = heads, False
        self.q, self.kv, self.out = linear(dim, dim), linear(dim, 2 * dim), linear(dim, dim)

    def forward(self, x, context=None, pad=None, need_weights: bool = False,
                causal: bool = False):
        if causal and (context is not None or pad is not None):
            raise checks.ArgumentError("causal=True is for self-attention without padding: "
                                       "pass neither context nor pad")
        context = x if context is None else context
        (B, Nq, D), Nk, H = x.shape, context.shape[1], self.heads
        q = self.q(x).reshape(B, Nq, H, D // H).transpose(1, 2)         # (B, H, Nq, d)
        k, v = self.kv(context).reshape(B, Nk, 2, H, D // H).permute(2, 0, 3, 1, 4)
        attend = empty = w = None
        if pad is not None:  # an empty row attends to its pads, and is zeroed below
            empty = pad.all(dim=1)
            attend = ~(pad & ~empty[:, None])[:, None, None, :]         # (B, 1, 1, Nk)
        if need_weights or self.explicit:
            s = q @ k.transpose(-1, -2) / math.sqrt(D // H)
            if causal:  # the future, keys j > i, gets weight 0
                s = s.masked_fill(torch.ones(Nq, Nk, dtype=torch.bool,
                                             device=s.device).triu(1), -math.inf)
            w = (s if attend is None else s.masked_fill(~attend, -math.inf)).softmax(-1)
            o = w @ v
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, is_causal=causal)
        o = self.out(o.transpose(1, 2).reshape(B, Nq, D))
        if empty is not None:
            keep = (~empty).to(o.dtype)[:, None, None]
            o, w = o * keep, (None if w is None else w * keep[..., None])
        return (o, w) if need_weights else o


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer, (B, L, dim): h += Attn(LN(h), pad); h += MLP(LN(h))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), mlp(dim, mlp_ratio)

    def forward(self, h: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h), pad=pad)
        return h + self.mlp(self.norm2(h))


class TextEncoder(nn.Module):
    """Token ids (B, L), L <= length, 0 = pad -> tokens (B, L, dim), pad (B, L) True at
    pads, pooled (B, dim).

    Token plus learned position embeddings, `depth` pre-norm layers over the caption (pads
    masked), a final LayerNorm; pad tokens come out 0 and pooled is the mean over the
    non-pad tokens (0 for the empty caption). No pretrained weights: it learns with the DiT.
    """

    def __init__(self, vocab_size: int, dim: int, length: int, depth: int, heads: int,
                 mlp_ratio: int = 4):
        super().__init__()
        self.tok = nn.Embedding(checks.count("vocab_size", vocab_size, 2), dim)
        self.pos = nn.Parameter(0.02 * torch.randn(checks.count("length", length), dim))
        nn.init.normal_(self.tok.weight, std=0.02)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, mlp_ratio)
                                    for _ in range(checks.count("depth", depth, 0)))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor):
        """ids (B, L) -> (tokens (B, L, dim), pad (B, L), pooled (B, dim)); ids checked as
        the DiT checks its captions: int64 values in 0..vocab_size - 1 (on the CPU)."""
        if not torch.compiler.is_compiling():
            checks.token_ids("ids", ids, 0, len(self.tok.weight) - 1, "token ids (0: pad)")
        if ids.dim() != 2 or not 1 <= ids.shape[1] <= len(self.pos):
            raise checks.ArgumentError(f"ids must be token ids (B, L), 1 <= L <= length = "
                                       f"{len(self.pos)}, got shape {tuple(ids.shape)}")
        pad = ids == 0
        h = self.tok(ids) + self.pos[:ids.shape[1]]
        for layer in self.layers:
            h = layer(h, pad)
        words = (~pad).to(h.dtype)[..., None]                           # (B, L, 1)
        h = self.norm(h) * words
        return h, pad, h.sum(1) / words.sum(1).clamp(min=1)


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero: h (B, N, dim), c (B, dim) -> (B, N, dim).

    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = Linear(SiLU(c)), zero at init;
    h += gate_a * Attn(modulate(LN(h), shift_a, scale_a), pad)      pad: h's own padding
    h += CrossAttn(LN(h), text, text_pad)                           if cross (PixArt-alpha)
    h += gate_m * MLP(modulate(LN(h), shift_m, scale_m))
    With the gates and the cross-attention's output projection zero it is the identity.
    need_weights=True returns (h, cross-attention weights (B, heads, N, L) or None).
    Book: :eq:`ch21-adaln`.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, cross: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = mlp(dim, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), linear(dim, 6 * dim, zero=True))
        self.cross = Attention(dim, heads) if cross else None
        if cross:
            self.norm_cross = nn.LayerNorm(dim)
            nn.init.zeros_(self.cross.out.weight)

    def forward(self, h, c, pad=None, text=None, text_pad=None, need_weights=False):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada(c)[:, None].chunk(6, -1)
        h = h + gate_a * self.attn(modulate(self.norm1(h), shift_a, scale_a), pad=pad)
        w = None
        if self.cross is not None:
            if text is None:
                raise checks.ArgumentError("a cross-attention block needs text (B, L, dim)")
            u = self.cross(self.norm_cross(h), text, text_pad, need_weights)
            u, w = u if need_weights else (u, None)
            h = h + u
        h = h + gate_m * self.mlp(modulate(self.norm2(h), shift_m, scale_m))
        return (h, w) if need_weights else h


class FinalLayer(nn.Module):
    """h (B, N, dim), c (B, dim) -> (B, N, out) = Linear(modulate(LN(h), shift, scale)),
    shift and scale from c; both Linears start at zero, so the DiT starts predicting 0."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), linear(dim, 2 * dim, zero=True))
        self.out = linear(dim, out, zero=True)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c)[:, None].chunk(2, -1)
        return self.out(modulate(self.norm(h), shift, scale))


@dataclass(frozen=True)
class DiTConfig:
    """patch: p ((image_size / p)^2 tokens); width, depth, heads, mlp_ratio: the transformer;
    T: diffusion steps (t in 1..T); num_classes: labels, or vocab_size: captions of at most
    text_length token ids read by a text encoder of text_depth layers, or neither
    (unconditional); cond: how captions enter, "adaln", "in_context" or "cross"."""

    patch: int = 4
    width: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    T: int = 1000
    in_channels: int = 1
    image_size: int = 28
    num_classes: int | None = None
    vocab_size: int | None = None
    text_length: int = 8
    text_depth: int = 1
    cond: str = "adaln"

    def __post_init__(self):
        # bounded sizes (checks.TRANSFORMER_SIZES, as TextConfig's): depth 10^6 built until
        # memory ran out; image_size 10^9 looped over its divisors for a patch size
        for name in ("width", "depth", "mlp_ratio", "in_channels", "image_size"):
            checks.transformer_size(name, getattr(self, name))
        checks.transformer_size("text_length", self.text_length, "length")
        checks.transformer_size("text_depth", self.text_depth, "depth", minimum=0)
        for name in ("heads", "T"):
            checks.count(name, getattr(self, name))
        check_patch(self.patch, self.image_size, self.image_size)
        checks.transformer_size("(image_size / patch)^2 (the image's tokens)",
                                (self.image_size // checks.as_int(self.patch)) ** 2, "tokens")
        if self.width % self.heads or self.width % 4:
            raise checks.ArgumentError(f"width must be a multiple of heads (each head gets "
                                       f"width / heads channels) and of 4 (the 2-D sine-cosine "
                                       f"positions), got width {self.width}, heads {self.heads}")
        for name, kind in (("num_classes", "classes"), ("vocab_size", "vocab_size")):
            if getattr(self, name) is not None:
                checks.transformer_size(f"{name} (or None)", getattr(self, name), kind, 2)
        if self.num_classes is not None and self.vocab_size is not None:
            raise checks.ArgumentError("give num_classes (labels) or vocab_size (captions), "
                                       "not both")
        checks.one_of("cond", self.cond, ("adaln", "in_context", "cross"))
        if self.cond != "adaln" and self.vocab_size is None:
            raise checks.ArgumentError(f"cond={self.cond!r} conditions on captions: give "
                                       "vocab_size (labels and unconditional models use "
                                       "cond='adaln')")
        checks.transformer_params(self, self.n_params(), "lower depth, width, mlp_ratio or "
                                  "text_depth (the book's largest DiT, the gpu profile's "
                                  "DiT-L, has about 15 million)")

    def n_params(self) -> int:
        """The weights DiT(self) has, counted from the sizes (nothing built): the patch
        embedding, the time MLP, the labels' or the text encoder's embeddings and layers,
        per block attention 4 w^2, MLP 2 r w^2, adaLN 6 w^2 (and a cross-attention), the
        final layer; biases and norms too."""
        w, r, p = (int(checks.as_int(getattr(self, k))) for k in ("width", "mlp_ratio",
                                                                  "patch"))
        c = int(checks.as_int(self.in_channels))
        attention, mlp_w = 4 * w * w + 4 * w, 2 * r * w * w + r * w + w
        block = attention + mlp_w + 6 * w * w + 6 * w
        if self.cond == "cross":
            block += attention + 2 * w
        n = (p * p * c + 1) * w + 2 * (w * w + w) + self.depth * block
        n += 2 * w * w + 2 * w + (w + 1) * p * p * c  # the final layer
        if self.num_classes is not None:
            n += (self.num_classes + 1) * w
        if self.vocab_size is not None:
            n += (self.vocab_size + self.text_length) * w + 2 * w
            n += self.text_depth * (attention + mlp_w + 4 * w)
            n += w * w + w if self.cond == "adaln" else 0
        return n


class DiT(nn.Module):
    """eps_theta(x_t, t, y): x (B, C, S, S) float, t (B,) int in 1..T, y -> (B, C, S, S).

    y: labels (B,) in 0..num_classes - 1 or NO_LABEL (None: NO_LABEL); token ids (B, L),
    L <= text_length (None: the empty caption); None for an unconditional model.
    """

    def __init__(self, config: DiTConfig | None = None, **changes):
        super().__init__()
        cfg = self.config = DiTConfig(**{**asdict(config or DiTConfig()), **changes})
        w, p = cfg.width, cfg.patch
        self.embed = linear(p * p * cfg.in_channels, w)
        self.register_buffer("pos", sincos_2d(cfg.image_size // p, w)[None], persistent=False)
        self.time_mlp = nn.Sequential(linear(w, w), nn.SiLU(), linear(w, w))
        if cfg.num_classes is not None:  # one extra row, the last, for NO_LABEL
            self.label_emb = nn.Embedding(cfg.num_classes + 1, w)
            nn.init.normal_(self.label_emb.weight, std=0.02)
        if cfg.vocab_size is not None:
            self.text = TextEncoder(cfg.vocab_size, w, cfg.text_length, cfg.text_depth,
                                    cfg.heads, cfg.mlp_ratio)
            if cfg.cond == "adaln":
                self.pool = linear(w, w)
        self.blocks = nn.ModuleList(DiTBlock(w, cfg.heads, cfg.mlp_ratio, cfg.cond == "cross")
                                    for _ in range(cfg.depth))
        self.final = FinalLayer(w, p * p * cfg.in_channels)

    def check_inputs(self, x, t, y) -> None:
        """Clear errors for a wrong image, t or y; the values of t and y are read only on the
        CPU (on a GPU each read would cost a device sync)."""
        cfg, S = self.config, self.config.image_size
        checks.tensor("x", x)
        if x.dim() != 4 or tuple(x.shape[1:]) != (cfg.in_channels, S, S):
            raise checks.ArgumentError(f"x must be images (B, {cfg.in_channels}, {S}, {S}), "
                                       f"got {tuple(x.shape)}")
        weight = self.embed.weight
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise checks.ArgumentError(f"x is {x.dtype} but the weights are {weight.dtype}: "
                                       f"use x.to({weight.dtype}) (8-bit pixels: x.float() / "
                                       "127.5 - 1)")
        if not torch.is_tensor(t) or t.is_floating_point() or t.dtype == torch.bool \
                or t.shape != (len(x),):
            raise checks.ArgumentError(f"t must be an int64 tensor ({len(x)},) of steps in "
                                       f"1..{cfg.T}, got {t!r:.60}")
        if checks.on_host(t) and len(t) and (t.min() < 1 or t.max() > cfg.T):
            raise checks.ArgumentError(f"t must lie in 1..T = 1..{cfg.T}, got values in "
                                       f"{int(t.min())}..{int(t.max())}")
        if y is not None:
            self.check_condition(y, len(x))

    def check_condition(self, y, batch: int) -> None:
        """y as the config asks: labels (batch,) in 0..num_classes - 1 or NO_LABEL, or token
        ids (batch, L), 1 <= L <= text_length, in 0..vocab_size - 1."""
        cfg, labels = self.config, self.config.num_classes is not None
        if not labels and cfg.vocab_size is None:
            raise checks.ArgumentError("this DiT is unconditional (no num_classes, no "
                                       "vocab_size) but got y; build it with num_classes=10 "
                                       "or a vocab_size to condition it")
        what = "labels (-1: NO_LABEL)" if labels else "token ids (0: pad)"
        ok = torch.is_tensor(y) and not y.is_floating_point() and y.dtype != torch.bool and (
            y.shape == (batch,) if labels else
            y.dim() == 2 and len(y) == batch and 1 <= y.shape[1] <= cfg.text_length)
        if not ok:
            shape = f"({batch},)" if labels else f"({batch}, L <= {cfg.text_length})"
            raise checks.ArgumentError(f"y must be an int64 tensor of {what} of shape {shape}, "
                                       f"got {getattr(y, 'dtype', type(y).__name__)} "
                                       f"{tuple(getattr(y, 'shape', ()))}")
        if labels:
            checks.token_ids("y", y, NO_LABEL, cfg.num_classes - 1, what,
                             fix=f"digits 0..{cfg.num_classes - 1}, or NO_LABEL for none")
        else:
            checks.token_ids("y", y, 0, cfg.vocab_size - 1, what)

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(x, t, y, need_weights=False)[0]

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None):
        """Every block's cross-attention weights, (depth, B, heads, N, L): each row a
        distribution over the caption's non-pad tokens (all 0 for the empty caption)."""
        if self.config.cond != "cross":
            raise checks.ArgumentError(f"attention_maps needs a DiT built with cond='cross', "
                                       f"this one has cond={self.config.cond!r}")
        return torch.stack(self._run(x, t, y, need_weights=True)[1])

    def _run(self, x, t, y, need_weights: bool):
        """(eps (B, C, S, S), a list of each block's cross-attention weights if asked)."""
        cfg = self.config
        if not torch.compiler.is_compiling():
            self.check_inputs(x, t, y)
        c = self.time_mlp(timestep_embedding(t, cfg.width).to(x.dtype))
        h = self.embed(patchify(x, cfg.patch)) + self.pos.to(x.dtype)   # (B, N, width)
        N, pad, text, text_pad, maps = h.shape[1], None, None, None, []
        if cfg.num_classes is not None:
            y = torch.full_like(t, NO_LABEL) if y is None else y
            c = c + self.label_emb(torch.where(y == NO_LABEL, cfg.num_classes, y))
        elif cfg.vocab_size is not None:
            y = t.new_zeros(len(t), cfg.text_length) if y is None else y
            tokens, text_pad, pooled = self.text(y)
            if cfg.cond == "adaln":
                c = c + self.pool(pooled)
            elif cfg.cond == "in_context":  # image tokens are never padding
                h = torch.cat([h, tokens], 1)
                pad = torch.cat([text_pad.new_zeros(len(h), N), text_pad], 1)
            else:
                text = tokens
        for block in self.blocks:
            h = block(h, c, pad, text, text_pad, need_weights)
            if need_weights:
                h, w = h
                maps.append(w)
        eps = self.final(h[:, :N], c)
        return unpatchify(eps, cfg.patch, cfg.in_channels, cfg.image_size, cfg.image_size), maps


def load_label_dit(model: DiT, labelled: DiT) -> DiT:
    """Start a caption DiT `model` from a trained label DiT `labelled` of the same shape
    (chapter 21 fine-tunes it to read captions, as the caption U-Nets start from chapter 9's).

    Every shared weight is copied; the label path's "no label" vector e_none is folded into
    the time MLP's last bias, so that c = t_emb + e_none is the label DiT's unconditional
    c; the pooled caption's map (cond "adaln") starts at zero. With "adaln" and "cross" the
    result computes what `labelled` computes without a label, whatever the caption; with
    "in_context" only for the empty caption: the words join every block's attention from
    the first step.
    """
    shape = ("patch", "width", "depth", "heads", "mlp_ratio", "T", "in_channels", "image_size")
    old, cfg = getattr(labelled, "config", None), model.config
    if not isinstance(labelled, DiT) or old.num_classes is None or cfg.vocab_size is None \
            or any(getattr(old, k) != getattr(cfg, k) for k in shape):
        raise checks.ArgumentError(f"load_label_dit needs a label DiT (num_classes) and a "
                                   f"caption DiT (vocab_size) of one shape ({', '.join(shape)}), "
                                   f"got {old} and {cfg}")

    def reads_text(k):  # the text encoder, the pooled map, the cross-attention layers
        return k.startswith(("text.", "pool.")) or ".cross." in k or ".norm_cross." in k

    state = {k: v for k, v in labelled.state_dict().items() if k != "label_emb.weight"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or not all(map(reads_text, missing)):
        raise checks.ArgumentError(f"the label DiT does not match this caption DiT: "
                                   f"unexpected {unexpected[:3]}, missing {missing[:3]}")
    with torch.no_grad():
        model.time_mlp[-1].bias += labelled.label_emb.weight[old.num_classes]
        if cfg.cond == "adaln":
            nn.init.zeros_(model.pool.weight), nn.init.zeros_(model.pool.bias)
    return model


def flops_per_image(model: DiT, batch: int = 2) -> float:
    """Forward FLOPs per image, counted by torch.utils.flop_counter (a multiply-add is 2).

    The counter (torch 2.14) has no formula for scaled_dot_product_attention's fused CPU
    kernel, which runs for the DiT's q, k, v, and counts it as 0 (the U-Net's strided q, k,
    v take the math kernel, whose bmm it counts); so attention runs the explicit way here,
    two matrix products (q k^T, weights @ v) that it counts, the same on every device.
    Normalizations, softmax and activations are not counted.
    """
    batch = checks.flops_batch(batch)
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    p, S = next(model.parameters()), model.config.image_size
    x = torch.zeros(batch, model.config.in_channels, S, S, device=p.device, dtype=p.dtype)
    for m in attns:
        m.explicit = True
    try:
        return forward_flops(model, x, torch.ones(batch, dtype=torch.long, device=p.device))
    finally:
        for m in attns:
            m.explicit = False
