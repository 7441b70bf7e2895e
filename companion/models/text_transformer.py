"""A character-level transformer, two ways (chapter 22): masked diffusion against an
autoregressive model, the same network differing only in its attention mask and input.

    den = TextTransformer(vocab_size=65, length=256)               # bidirectional
    masked.loss(den, x, categories=65)                             # chapter 14's bound
    masked.sample(den, (16, 256), 64, categories=65)               # 64 unmasking steps

    ar = TextTransformer(vocab_size=65, length=256, causal=True)   # autoregressive
    ar_nll(ar, x).mean()                                           # its loss: exact nats
    ar_sample(ar, 16, 256)                                         # one character a call
    ar_nll(fim, fim_psm(x, pad=64))                                # fill-in-the-middle

Both are nanoGPT (Karpathy 2022) without dropout: token plus learned position embeddings,
`depth` pre-LayerNorm blocks (dit.EncoderLayer), a final LayerNorm and a linear head to
logits (B, vocab_size, L), the vocabulary on dim 1 as `companion.masked` reads them. The
embedding has one extra row, token id vocab_size: the mask for the denoiser, which sees
every position, and the begin-of-sequence token for the causal model, whose input is the
sequence shifted right by one behind it, so that position i predicts x_i from x_<i:

    log p(x) = sum_i log softmax(logits_i)[x_i],  logits_i a function of x_<i only   (exact)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..masked import MASK, draw_values
from ..run import checks, memory
from .dit import Attention, EncoderLayer, linear
from .unet import forward_flops
from .unet import n_params as n_params  # re-exported: text_transformer.n_params(model)

# The sizes a TextConfig may have, and why (checks.TRANSFORMER_SIZES, shared with the DiT)
LIMITS = {k: checks.TRANSFORMER_SIZES[k] for k in ("vocab_size", "length", "width", "depth",
                                                   "mlp_ratio")}
MAX_PARAMS = checks.MAX_TRANSFORMER_PARAMS  # the weights of a whole TextTransformer


@dataclass(frozen=True)
class TextConfig:
    """vocab_size: V, the characters (token ids 0..V-1); length: the longest sequence, L <=
    length; width, depth, heads, mlp_ratio: the transformer; causal: autoregressive (True)
    or the masked-diffusion denoiser (False)."""

    vocab_size: int
    length: int
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    causal: bool = False

    def __post_init__(self):
        for name in LIMITS:
            checks.transformer_size(name, getattr(self, name),
                                    minimum=2 if name == "vocab_size" else 1)
        checks.count("heads", self.heads)
        checks.transformer_params(self, self.n_params(), "lower depth, width, vocab_size or "
                                  "length (the book's largest, the gpu profile's, has about "
                                  "5 million)")
        if self.width % self.heads:
            raise checks.ArgumentError(f"width must be a multiple of heads (each head gets "
                                       f"width / heads channels), got width {self.width}, "
                                       f"heads {self.heads}")
        if not isinstance(self.causal, bool):
            raise checks.ArgumentError(f"causal must be True or False, got {self.causal!r}")

    def n_params(self) -> int:
        """The weights TextTransformer(self) has, counted from the sizes (nothing built):
        embeddings (V + 1 + length) x width, per block 4 w^2 + 2 r w^2 (attention, MLP) and
        their biases and norms, the final norm and the head w x V."""
        V, L, w, r, depth = (int(checks.as_int(getattr(self, k))) for k in
                             ("vocab_size", "length", "width", "mlp_ratio", "depth"))
        block = 4 * w * w + 4 * w + 2 * r * w * w + r * w + w + 4 * w
        return (V + 1 + L) * w + depth * block + 2 * w + w * V + V


class Block(EncoderLayer):
    """dit.EncoderLayer without padding, causal or not: h (B, L, width) -> (B, L, width),
    h += Attn(LN(h)); h += MLP(LN(h))."""

    def forward(self, h: torch.Tensor, causal: bool = False) -> torch.Tensor:
        h = h + self.attn(self.norm1(h), causal=causal)
        return h + self.mlp(self.norm2(h))


class TextTransformer(nn.Module):
    """x (B, L) int token ids, 1 <= L <= length -> logits (B, vocab_size, L).

    causal=False: x is a masked state, ids 0..V-1 or masked.MASK (-1); logits_i read every
    position. causal=True: x is text, ids 0..V-1; logits_i read x_<i only (p(x_i | x_<i)).
    """

    def __init__(self, config: TextConfig | None = None, **changes):
        super().__init__()
        cfg = self.config = replace(config, **changes) if config else TextConfig(**changes)
        self.tok = nn.Embedding(cfg.vocab_size + 1, cfg.width)  # row V: MASK or BOS
        # learned positions (nanoGPT, GPT-2, dit.TextEncoder): L never exceeds `length`, so
        # nothing must extrapolate, and they cost only length x width numbers
        self.pos = nn.Parameter(0.02 * torch.randn(cfg.length, cfg.width))
        nn.init.normal_(self.tok.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio)
                                    for _ in range(cfg.depth))
        self.norm, self.head = nn.LayerNorm(cfg.width), linear(cfg.width, cfg.vocab_size)

    def check_tokens(self, x) -> torch.Tensor:
        """x if it is an integer tensor (B, L), 1 <= L <= length, of ids 0..V-1 (or MASK,
        bidirectional only); values read on the CPU only (a GPU would sync)."""
        cfg, name = self.config, "x (text)" if self.config.causal else "z (masked states)"
        checks.index_tensor(name, x)
        if x.dim() != 2 or not 1 <= x.shape[1] <= cfg.length:
            raise checks.ArgumentError(f"{name} must have shape (B, L), 1 <= L <= length = "
                                       f"{cfg.length}, got {tuple(x.shape)}: cut longer "
                                       "text into windows of at most length")
        lo = 0 if cfg.causal else int(MASK)
        if x.numel() and checks.on_host(x):
            low, high = (int(v) for v in torch.aminmax(x))
            if low < lo or high >= cfg.vocab_size:
                what = "0..V-1 (a causal model takes text: no MASK)" if cfg.causal else \
                    "0..V-1 or MASK = -1"
                raise checks.ArgumentError(f"{name} must hold token ids {what}, V = "
                                           f"vocab_size = {cfg.vocab_size}; got values in "
                                           f"{low}..{high}")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg, V = self.config, self.config.vocab_size
        if not torch.compiler.is_compiling():
            self.check_tokens(x)
        if cfg.causal:  # BOS, x_0, ..., x_{L-2}: position i reads x_<i
            ids = torch.cat([torch.full_like(x[:, :1], V), x[:, :-1]], 1)
        else:
            ids = torch.where(x == MASK, V, x)
        h = self.tok(ids) + self.pos[:x.shape[1]]                       # (B, L, width)
        for block in self.blocks:
            h = block(h, causal=cfg.causal)
        return self.head(self.norm(h)).transpose(1, 2)                  # (B, V, L)


def _causal(model, who: str) -> TextTransformer:
    """model if it is an autoregressive TextTransformer; else an error for `who`."""
    if not isinstance(model, TextTransformer) or not model.config.causal:
        got = "a bidirectional one (causal=False)" if isinstance(model, TextTransformer) \
            else f"a {type(model).__name__}"
        raise checks.ArgumentError(f"model: {who} needs an autoregressive model, "
                                   f"TextTransformer(..., causal=True), got {got}")
    return model


def ar_nll(model: TextTransformer, x: torch.Tensor, *, among: int | None = None
           ) -> torch.Tensor:
    """-log p(x) = sum_i -log softmax(logits_i)[x_i], exact, nats: x (B, L) -> (B,) (B = 0:
    an empty (0,)).

    among: None, or the softmax over the first `among` ids only: -log p(x | no other id
    anywhere). A fill-in-the-middle model read on plain text (`fim_psm`) with among =
    the tokenizer's vocab_size is conditioned on the text being plain: half its training
    sequences start with PRE, so unconditioned it pays about a bit on every first
    character for the format, not for the text.

    Its batch mean is the training loss. The network sees at most memory.MAX_IMAGES
    sequences a call (fewer when long: rows_per_call), so under torch.no_grad the memory
    is bounded whatever B. Non-finite logits are refused (`checks.finite_logits`, one sync
    after the last call), except in a training loss (the model in training mode, its logits
    requiring grad), which `fit` refuses itself when it is not finite.
    """
    model = _causal(model, "ar_nll")
    model.check_tokens(x)
    if among is not None:
        among = checks.count("among (the ids the softmax runs over)", among, 1)
        if len(x) and int(x.max()) >= among:
            raise checks.ArgumentError(f"x holds id {int(x.max())}, outside the first "
                                       f"among={among} ids the softmax runs over")
    size = min(memory.MAX_IMAGES, memory.rows_per_call(x))
    parts, counts = [], []
    for rows in memory.chunk_slices(len(x), size) or [slice(0, 0)]:
        logits = model(x[rows])
        if not (model.training and logits.requires_grad):  # not a training loss
            counts.append((f"for sequences {rows.start}..{rows.stop - 1} of x",
                           checks.nonfinite_count(logits), f"{logits.numel():,} logits"))
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if among is not None:
            logits = logits[:, :among]
        parts.append(F.cross_entropy(logits, x[rows].long(), reduction="none").sum(1))
    checks.finite_logits("model", counts)
    return torch.cat(parts) if len(parts) != 1 else parts[0]


# ar_sample's n: `length` network calls on every one. A bound on memory, not on time: at
# the chapter's sizes 1,000 take 10.7 s on 2 CPU cores, so 100,000 about 18 minutes there
# and seconds on a GPU; a bound set by one machine's speed would refuse the other's.
MAX_SAMPLES = 100_000


@torch.no_grad()
def ar_sample(model: TextTransformer, n: int, length: int, *, temperature: float = 1.0,
              prompt: torch.Tensor | None = None, generator: torch.Generator | None = None,
              device=None) -> torch.Tensor:
    """n sequences (n, length) long, ancestral: x_i ~ softmax(logits_i(x_<i) / temperature),
    left to right. temperature 1 draws the model's law; below 1 sharpens each conditional
    towards its likeliest value (fewer mistakes, less variety), above 1 flattens it.
    prompt: ids (P,) or (n, P), P < length, kept as the first P positions of every sample
    (a fill-in-the-middle model's `fim_prompt`); the draws start after it.

    One forward pass per position on the prefix drawn so far (no key-value cache: L^2 / 2
    positions' work instead of L, simple and enough at the book's lengths); at most
    memory.MAX_IMAGES sequences a call. generator: on the model's device (or `device`).
    Non-finite logits are refused (`checks.finite_logits`): on the CPU at once, on a GPU
    after the last position (one sync).
    """
    model = _causal(model, "ar_sample")
    n = checks.size("n (the number of samples)", n, MAX_SAMPLES, "each runs the network "
                    "once per position; draw in batches")
    length = checks.count("length", length, maximum=model.config.length)
    temperature = checks.positive("temperature", temperature)
    checks.generator("generator", generator)
    device = checks.device("device", device) or model.head.weight.device
    x = torch.zeros(n, length, dtype=torch.long, device=device)  # x_i unseen until drawn
    start = 0
    if prompt is not None:
        prompt = checks.index_tensor("prompt", prompt)
        prompt = prompt.expand(n, -1) if prompt.dim() == 1 else prompt
        if prompt.dim() != 2 or len(prompt) != n or not 0 < prompt.shape[1] < length:
            raise checks.ArgumentError(
                f"prompt must be ids (P,) or (n, P) with 0 < P < length = {length}, got "
                f"shape {tuple(prompt.shape)} for n = {n}")
        checks.token_ids("prompt", prompt, 0, model.config.vocab_size - 1,
                         fix="encode it with the model's tokenizer (and fim_prompt)")
        start = prompt.shape[1]
        x[:, :start] = prompt.to(device)
    counts = []
    for rows in memory.chunk_slices(n, min(memory.MAX_IMAGES, memory.rows_per_call(x))):
        for i in range(start, length):
            logits = model(x[rows, :i + 1])[:, :, i].float()            # (b, V)
            counts.append((f"at position {i + 1} of {length}", checks.nonfinite_count(logits),
                           f"{logits.numel():,} logits"))
            if checks.on_host(logits):
                checks.finite_logits("model", counts[-1:])
            x[rows, i] = draw_values(logits[:, :, None] / temperature,
                                     generator=generator)[0][:, 0]
    checks.finite_logits("model", counts)
    return x


def fim_psm(x: torch.Tensor, pad: int, *, rate: float = 0.5,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill-in-the-middle training data (Bavarian et al. 2022, prefix-suffix-middle): each
    sequence of ids x (B, L) whose text is the ids before its first `pad`, with probability
    `rate` cut at two points drawn uniformly in its text and rewritten

        PRE prefix SUF suffix MID middle pad ...        (B, L + 3)

    with the sentinels PRE, SUF, MID = pad + 1, pad + 2, pad + 3 (the tokenizer's
    vocab_size and the next two: the network needs vocab_size + 3 ids), so that a
    left-to-right model trained on it (`ar_nll`) learns to write a middle from both sides;
    the other sequences stay as they are, padded by three. One left-to-right model does both.
    """
    x = checks.index_tensor("x (token sequences (B, L))", x)
    if x.dim() != 2:
        raise checks.ArgumentError(f"x must be ids (B, L), got shape {tuple(x.shape)}")
    rate = checks.real("rate", rate, low=0.0, high=1.0)
    pre, suf, mid = pad + 1, pad + 2, pad + 3
    out = torch.full((len(x), x.shape[1] + 3), pad, dtype=torch.long, device=x.device)
    out[:, :x.shape[1]] = x
    lengths = (x != pad).long().cumprod(1).sum(1).tolist()  # text before the first pad
    u = torch.rand(len(x), 3, generator=generator).tolist()
    for r, (n, (coin, a, b)) in enumerate(zip(lengths, u, strict=True)):
        if coin >= rate:
            continue
        i, j = sorted((int(a * (n + 1)), int(b * (n + 1))))       # 0 <= i <= j <= n
        row = x[r]
        out[r, :n + 3] = torch.cat([row.new_tensor([pre]), row[:i], row.new_tensor([suf]),
                                    row[j:n], row.new_tensor([mid]), row[i:j]])
    return out


def fim_prompt(prefix: torch.Tensor, suffix: torch.Tensor, pad: int) -> torch.Tensor:
    """The prompt that asks a `fim_psm`-trained model for the middle between two texts'
    ids: PRE prefix SUF suffix MID (1-D); `ar_sample(..., prompt=...)` then draws it."""
    prefix, suffix = (checks.index_tensor(name, t).reshape(-1)
                      for name, t in (("prefix", prefix), ("suffix", suffix)))
    return torch.cat([prefix.new_tensor([pad + 1]), prefix, prefix.new_tensor([pad + 2]),
                      suffix, prefix.new_tensor([pad + 3])])


def flops_per_sequence(model: TextTransformer, length: int | None = None,
                       batch: int = 2) -> float:
    """Forward FLOPs of one sequence of `length` tokens (the model's longest by default),
    counted by torch.utils.flop_counter (a multiply-add is 2), attention the explicit way
    so that its two products (q k^T, weights @ v) are counted, as dit.flops_per_image does;
    the causal mask is not subtracted (the matrices are full). Norms, softmax, GELU and the
    embeddings are not counted."""
    length = checks.count("length", model.config.length if length is None else length,
                          maximum=model.config.length)
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    x = torch.zeros(checks.flops_batch(batch), length, dtype=torch.long,
                    device=model.head.weight.device)
    for m in attns:
        m.explicit = True
    try:
        return forward_flops(model, x)
    finally:
        for m in attns:
            m.explicit = False
