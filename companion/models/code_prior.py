"""Priors over grids of codes (chapter 19): a small transformer over the positions of a
code grid, read in raster order, either causal (an autoregressive prior with an exact
likelihood) or bidirectional (the denoiser of masked diffusion over K categories).

    prior = ARPrior(K=64, grid=(7, 7))
    nll = -prior.log_prob(codes)                     # codes (B, 7, 7) -> (B,) nats, exact
    codes = prior.sample(16)                         # (16, 7, 7), one position at a time

    den = CodeDenoiser(K=64, grid=(7, 7))
    masked.loss(den, codes, categories=64)           # chapter 14's bound over K categories
    masked.sample(den, (16, 7, 7), 12, order="confidence", categories=64)   # MaskGIT's order

The autoregressive factorization p(k) = prod_i p(k_i | k_<i) over the L = H W positions is
exact: position i sees the codes before it only (its input is the sequence shifted by one
behind a start token, and the attention is causal), so log p(k) is a sum of L
log-softmaxes, in nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..masked import MASK, check_code_states, draw_values
from ..run import checks
from .vqvae import GRID, check_code_grid


class _CodeTransformer(nn.Module):
    """Tokens (B, L) in 0..K (K: the start or mask token) -> logits (B, K, L): an embedding
    of K + 1 tokens plus a learned position embedding, `depth` pre-norm transformer layers
    (causal or not), a final norm and a linear head to K logits."""

    def __init__(self, K: int, grid, width: int, depth: int, heads: int, causal: bool):
        super().__init__()
        self.K = checks.codes(K)
        self.grid = tuple(checks.count(f"grid[{i}]", g) for i, g in
                          enumerate(checks.sequence("grid", grid, "(7, 7)")))
        self.L = math.prod(self.grid)
        width = checks.count("width", width)
        heads = checks.count("heads", heads)
        if width % heads:
            raise checks.ArgumentError(f"width must be a multiple of heads, got width {width} "
                                       f"and heads {heads}")
        self.causal = causal
        self.token = nn.Embedding(self.K + 1, width)
        self.position = nn.Parameter(torch.randn(self.L, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True,
                                           norm_first=True)
        self.body = nn.TransformerEncoder(layer, checks.count("depth", depth),
                                          enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, self.K)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.token(tokens) + self.position
        mask = None
        if self.causal:
            mask = nn.Transformer.generate_square_subsequent_mask(
                self.L, device=tokens.device, dtype=h.dtype)
        h = self.body(h, mask=mask, is_causal=self.causal)
        return self.head(self.norm(h)).transpose(1, 2)              # (B, K, L)


MAX_PRIOR_SAMPLES = 100_000  # ARPrior.sample's n: L network calls on all of them


class ARPrior(_CodeTransformer):
    """An autoregressive prior over code grids: p(k) = prod_i p(k_i | k_<i), raster order.

    K: the number of codes; grid: (H, W), (7, 7) for chapter 19's digits; width, depth,
    heads: the transformer's size (a small one by default).
    """

    def __init__(self, K: int, grid=GRID, *, width: int = 128, depth: int = 4, heads: int = 4):
        super().__init__(K, grid, width, depth, heads, causal=True)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, H, W) -> logits (B, K, H, W) of p(k_i | k_<i) at every position i (the
        logits at i depend on the codes before i in raster order only)."""
        check_code_grid("codes", codes, self.K, self.grid)
        flat = codes.flatten(1)
        start = torch.full_like(flat[:, :1], self.K)
        tokens = torch.cat([start, flat[:, :-1]], 1)                # shifted by one
        return self.logits(tokens).view(len(codes), self.K, *self.grid)

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        """log p(k) = sum_i log p(k_i | k_<i), exact, nats: (B, H, W) -> (B,).

        Book: :eq:`ch19-ar`.
        """
        logits = self(codes)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        # int32 codes pass the grid's check; the target must be int64 (a no-op for int64)
        return -F.cross_entropy(logits, codes.long(), reduction="none").flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device=None) -> torch.Tensor:
        """n code grids (n, H, W) int64, drawn one position at a time in raster order (L
        network calls; the positions not yet drawn are zeros, which the causal network does
        not see), each from its softmax (`companion.masked.draw_values`; a generator on the
        model's device)."""
        n = checks.size("n (the number of samples)", n, MAX_PRIOR_SAMPLES, "every one "
                        "runs the network at each of the grid's positions (the chapter's "
                        "1,000); draw in batches")
        checks.generator("generator", generator)
        device = checks.device("device", device) or self.head.weight.device
        codes = torch.zeros(n, *self.grid, dtype=torch.long, device=device)
        flat = codes.view(n, self.L)
        for i in range(self.L):
            logits = self(codes).float().flatten(2)[:, :, i]        # (n, K)
            checks.finite_logits("prior", [(f"at position {i + 1} of {self.L}",
                                            checks.nonfinite_count(logits),
                                            f"{logits.numel():,} logits")])
            flat[:, i] = draw_values(logits[:, :, None], generator=generator)[0][:, 0]
        return codes


class CodeDenoiser(_CodeTransformer):
    """The denoiser of masked diffusion over code grids: states (B, H, W), codes 0..K-1 or
    companion.masked.MASK, -> logits (B, K, H, W) of the clean codes, every position seeing
    every other (no time input: the state says how much is masked).

    For `companion.masked` with categories=K (loss, negative_elbo, sample).
    """

    def __init__(self, K: int, grid=GRID, *, width: int = 128, depth: int = 4, heads: int = 4):
        super().__init__(K, grid, width, depth, heads, causal=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, H, W) masked states -> logits (B, K, H, W)."""
        check_code_states("z", z, self.K, shape=self.grid)
        tokens = torch.where(z == MASK, torch.full_like(z, self.K), z).flatten(1)
        return self.logits(tokens).view(len(z), self.K, *self.grid)
