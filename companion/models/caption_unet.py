"""Chapter 9's U-Net that reads a caption: eps_theta(x_t, t, caption) (chapter 21).

    model = CaptionUNet(preset("cpu", T=500), vocab_size=len(captions.VOCAB), cond="cross")
    eps = model(x, t, ids)             # ids: token ids (B, L), 0 = pad; all pads: no caption

The caption goes through a small `TextEncoder` (`dit.py`) trained with the network, then
by `cond` one of three paths, here at the U-Net's 7x7 resolution where its attention already
is. They echo DiT's conditioning choices (Peebles and Xie 2023, section 3.2: in-context
tokens, cross-attention, adaLN, adaLN-Zero), but only "cross" is the same mechanism:

  "pooled":     emb += W mean(words): one vector per caption, added to the step's embedding,
                which every residual block adds to its features as a bias (as DDPM adds the
                step and chapter 16 the label; not adaLN's scale and shift); the words'
                order is lost;
  "in_context": after each of the three 7x7 self-attentions, a layer in which every one of
                the 49 positions attends to the 49 positions and the words together (the
                words are keys in these three layers only, not tokens carried through
                every block as in DiT's in-context variant or U-ViT; Bao et al. 2023);
  "cross":      the same layer attending to the words only (Stable Diffusion's
                cross-attention, Rombach et al. 2022); `attention_maps` shows where.

Every text path starts at zero (a zero projection, zero output weights), so a CaptionUNet
built from a trained unconditional U-Net's weights (`load_unet`) starts as that network,
and training adds the caption to a model that already draws digits.
"""

from __future__ import annotations

import torch
from torch import nn

from ..run import checks
from .dit import Attention, TextEncoder
from .unet import UNet, UNetConfig, timestep_embedding

CONDS = ("pooled", "in_context", "cross")


class TextAttention(nn.Module):
    """h (B, C, 7, 7) += Attn(LN(tokens of h), keys), keys the words (B, L, C) ("cross") or
    [LN(tokens of h); words] ("in_context"); text_pad (B, L) True at pads. The output
    projection starts at zero: the layer starts as the identity. need_weights=True returns
    (h, weights (B, heads, 49, keys))."""

    def __init__(self, channels: int, heads: int, cond: str):
        super().__init__()
        self.cond = checks.one_of("cond", cond, ("in_context", "cross"))
        self.norm, self.attn = nn.LayerNorm(channels), Attention(channels, heads)
        nn.init.zeros_(self.attn.out.weight)

    def forward(self, h, words, text_pad, need_weights: bool = False):
        B, C, H, W = h.shape
        u = self.norm(h.flatten(2).transpose(1, 2))                      # (B, HW, C)
        keys, pad = words, text_pad
        if self.cond == "in_context":  # image positions are never padding
            keys = torch.cat([u, words], 1)
            pad = torch.cat([text_pad.new_zeros(B, H * W), text_pad], 1)
        o = self.attn(u, keys, pad, need_weights)
        o, w = o if need_weights else (o, None)
        h = h + o.transpose(1, 2).reshape(B, C, H, W)
        return (h, w) if need_weights else h


class CaptionUNet(UNet):
    """eps_theta(x_t, t, ids): x (B, 1, 28, 28), t (B,) in 1..T, ids (B, L) token ids, L <=
    text_length, 0 = pad (None: the empty caption) -> (B, 1, 28, 28).

    The text encoder has the width of the 7x7 level (channels[2]), text_depth layers and the
    U-Net's heads; config.num_classes must be None (the caption carries the digit).
    """

    def __init__(self, config: UNetConfig, *, vocab_size: int, cond: str,
                 text_length: int = 8, text_depth: int = 2):
        if config.num_classes is not None:
            raise checks.ArgumentError("a CaptionUNet reads the digit from the caption: build "
                                       "it from a config with num_classes=None")
        super().__init__(config)
        self.cond = checks.one_of("cond", cond, CONDS)
        c3, emb_dim = config.channels[2], 4 * config.channels[0]
        self.text = TextEncoder(vocab_size, c3, text_length, text_depth, config.heads)
        if cond == "pooled":
            self.pool = nn.Linear(c3, emb_dim)
            nn.init.zeros_(self.pool.weight)
            nn.init.zeros_(self.pool.bias)
        else:
            self.read = nn.ModuleList(TextAttention(c3, config.heads, cond) for _ in range(3))
        self._maps = None

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                ids: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            self.check_inputs(x, t)
        length = len(self.text.pos)
        ids = t.new_zeros(len(t), length) if ids is None else ids
        if not torch.is_tensor(ids) or ids.is_floating_point() or ids.dim() != 2 \
                or len(ids) != len(x):
            raise checks.ArgumentError(f"ids must be int64 token ids ({len(x)}, L <= "
                                       f"{length}), 0 = pad, got "
                                       f"{getattr(ids, 'dtype', type(ids).__name__)} "
                                       f"{tuple(getattr(ids, 'shape', ()))}")
        emb = self.time_mlp(timestep_embedding(t, self.config.channels[0]).to(x.dtype))
        words, pad, pooled = self.text(ids)
        if self.cond == "pooled":
            return self.trunk(x, emb + self.pool(pooled))
        return self.trunk(x, emb, (words, pad))

    def attend(self, i: int, h: torch.Tensor, text=None) -> torch.Tensor:
        h = super().attend(i, h)
        if self.cond == "pooled":
            return h
        if self._maps is None:
            return self.read[i](h, *text)
        h, w = self.read[i](h, *text, need_weights=True)
        self._maps.append(w)
        return h

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor):
        """The three text layers' weights, (3, B, heads, 49, keys): for "cross" each of the
        49 positions' distribution over the caption's words (keys = L; all 0 for the empty
        caption); for "in_context" over the 49 positions, then the words (keys = 49 + L)."""
        if self.cond == "pooled":
            raise checks.ArgumentError("attention_maps needs cond='cross' or 'in_context'; a "
                                       "'pooled' network has no attention to words")
        self._maps = []
        try:  # this class's own forward: the weights are made, never a cached output
            CaptionUNet.forward(self, x, t, ids)
            return torch.stack(self._maps)
        finally:
            self._maps = None


def load_unet(model: CaptionUNet, unet: UNet) -> CaptionUNet:
    """Copy a trained unconditional U-Net's weights into `model` (same config otherwise);
    the text path keeps its zero start, so the result computes what `unet` computes."""
    if not isinstance(unet, UNet) or unet.config != model.config:
        raise checks.ArgumentError(f"the U-Net does not match this CaptionUNet's trunk: "
                                   f"build both from one config, got "
                                   f"{getattr(unet, 'config', checks._got(unet))} and "
                                   f"{model.config}")
    missing, unexpected = model.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not k.startswith(("text.", "pool.", "read.")) for k in missing):
        raise checks.ArgumentError(f"the U-Net does not match this CaptionUNet's trunk: "
                                   f"unexpected {unexpected[:3]}, missing "
                                   f"{[k for k in missing if not k.startswith('text.')][:3]}")
    return model
