"""A vector-quantized autoencoder for 28 x 28 digits (chapter 19), on a 7 x 7 grid of codes.

    model = VQVAE(K=64, D=16)                        # quantizer="fsq" for FSQ, ema=True
    terms = model(binarize(x))                       # per image, nats and squared errors
    loss = (-terms.reconstruction + terms.codebook + terms.commitment).mean()
    codes = model.codes(x)                           # (B, 7, 7) int64 in 0..K-1
    x_mean = torch.sigmoid(model.decode_indices(codes))

The encoder is chapter 6's conv encoder without its linear head (two stride-2 convolutions,
28 -> 14 -> 7, `vae.down_convs`) and a 1 x 1 convolution to D channels; the decoder a 3 x 3
convolution from the codes and chapter 6's two transposed convolutions (`vae.up_convs`) to
Bernoulli logits, for binary digits (dynamically binarized, as chapter 6's VAE), so that
-log p(x | z_q) is in nats like chapters 6, 7 and 14's bounds. Read as a VAE with a one-hot
q(k | x) (no entropy) and a prior p(k) over code grids:

    -ELBO(x) = -log p(x | z_q(x)) - log p(k(x))                            (two stages)

with the uniform prior 49 log K nats, or a prior over codes fitted afterwards
(`companion.models.code_prior`, or chapter 14's masked diffusion with categories=K, whose
bound keeps the sum a bound): `negative_elbo`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import binarize, check_images
from ..run import checks
from ..run.memory import map_chunks
from .quantizer import FSQ, Quantized, VectorQuantizer
from .vae import down_convs, up_convs

GRID = (7, 7)  # the code grid of a 28 x 28 digit
QUANTIZERS = ("vq", "fsq")


@dataclass
class VQTerms:
    """A VQ autoencoder's terms per image.

    reconstruction: (B,) log p(x | z_q), Bernoulli, summed over pixels, nats (<= 0)
    codebook:       (B,) ||sg[z_e] - e_k||^2 summed over the grid (0 for FSQ)
    commitment:     (B,) beta ||z_e - sg[e_k]||^2 summed over the grid (0 for FSQ)
    indices:        (B, 7, 7) int64, the codes
    z_e:            (B, D, 7, 7) the encoder outputs (for restarts of dead codes)
    """

    reconstruction: torch.Tensor
    codebook: torch.Tensor
    commitment: torch.Tensor
    indices: torch.Tensor
    z_e: torch.Tensor


class VQVAE(nn.Module):
    """Encoder, quantizer, decoder; x (B, 1, 28, 28) binary -> codes (B, 7, 7) -> logits.

    K, D:       the codebook size and the code dimension (quantizer "vq"; None: 64 and 16).
    quantizer:  "vq" (`VectorQuantizer`: beta, ema, decay apply) or "fsq" (`FSQ` with
                `levels`, None: (8, 5, 5, 5); K = prod(levels) and D = len(levels) follow
                from them: a K or D given that differs is refused, as are levels for "vq").
    channels:   the channels after the first and second stride-2 convolution (the decoder
                mirrors them), chapter 6's (32, 64) by default.
    """

    def __init__(self, K: int | None = None, D: int | None = None, *, quantizer: str = "vq",
                 beta: float = 0.25, ema: bool = False, decay: float = 0.99, levels=None,
                 channels: tuple[int, int] = (32, 64)):
        super().__init__()
        checks.one_of("quantizer", quantizer, QUANTIZERS,
                      " (a learned codebook, or finite scalar quantization)")
        c1, c2 = (checks.count(f"channels[{i}]", c) for i, c in enumerate(channels))
        if quantizer == "vq":
            if levels is not None:
                raise checks.ArgumentError(f"levels={levels!r} is FSQ's: pass "
                                           "quantizer='fsq' with it, or K and D without it")
            self.quantizer: VectorQuantizer | FSQ = VectorQuantizer(
                64 if K is None else K, 16 if D is None else D, beta=beta, ema=ema,
                decay=decay)
        else:
            self.quantizer = FSQ((8, 5, 5, 5) if levels is None else levels)
        self.K, self.D = self.quantizer.K, self.quantizer.D
        # FSQ's K and D follow from its levels: a K=512, D=16 given was silently not used
        for name, given, got in (("K", K, self.K), ("D", D, self.D)):
            if given is not None and checks.as_int(given) != got:
                raise checks.ArgumentError(
                    f"{name}={given!r} contradicts levels={tuple(self.quantizer.levels)}: "
                    f"FSQ's K = prod(levels) = {self.K} codes of D = len(levels) = {self.D} "
                    f"dimensions; leave K and D out with quantizer='fsq', or choose levels "
                    f"that give them")
        self.encoder = nn.Sequential(*down_convs((c1, c2)), nn.Conv2d(c2, self.D, 1))
        self.decoder = nn.Sequential(nn.Conv2d(self.D, c2, 3, padding=1), nn.ReLU(),
                                     *up_convs((c2, c1), 1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, 28, 28) -> z_e: (B, D, 7, 7)."""
        return self.encoder(check_images(x))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """z_q: (B, D, 7, 7) -> Bernoulli logits (B, 1, 28, 28)."""
        checks.tensor("z_q", z_q, floating=True)
        if tuple(z_q.shape[1:]) != (self.D, *GRID):
            raise checks.ArgumentError(f"z_q must be quantized codes (B, {self.D}, 7, 7), got "
                                       f"{tuple(z_q.shape)}; from indices use "
                                       "decode_indices")
        return self.decoder(z_q)

    def code_vectors(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, 7, 7) in 0..K-1 -> the codes' vectors z_q (B, D, 7, 7)."""
        check_code_grid("indices", indices, self.K)
        if isinstance(self.quantizer, FSQ):
            return self.quantizer.indices_to_codes(indices)
        return self.quantizer.codebook[indices].permute(0, 3, 1, 2)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, 7, 7) -> Bernoulli logits (B, 1, 28, 28): a prior's samples as
        images (torch.sigmoid for the mean image)."""
        return self.decode(self.code_vectors(indices))

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
        """x -> (z_e, the quantizer's output)."""
        z_e = self.encode(x)
        return z_e, self.quantizer(z_e)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, 28, 28) -> its code grid (B, 7, 7) int64 (no update of any statistic:
        evaluation mode for the call)."""
        was = self.training
        self.eval()
        try:
            return self.quantize(x)[1].indices
        finally:
            self.train(was)

    def forward(self, x: torch.Tensor) -> VQTerms:
        """x: (B, 1, 28, 28) binary -> VQTerms, per image."""
        z_e, q = self.quantize(x)
        return VQTerms(log_likelihood(x, self.decode(q.z_q)), q.codebook_loss,
                       q.commitment_loss, q.indices, z_e)


def check_code_grid(name: str, indices, K: int, grid=GRID) -> torch.Tensor:
    """indices if it is an integer tensor (B, *grid) of codes 0..K-1; a clear error that
    names `name` otherwise."""
    checks.tensor(name, indices)
    if indices.dim() != 1 + len(grid) or tuple(indices.shape[1:]) != tuple(grid):
        raise checks.ArgumentError(
            f"{name} must be a batch of code grids (B, {', '.join(map(str, grid))}), got "
            f"shape {tuple(indices.shape)}" + ("; one grid? use indices.unsqueeze(0)"
                                               if tuple(indices.shape) == tuple(grid) else ""))
    from ..masked import check_codes

    return check_codes(name, indices, K)


def log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x | z_q) = sum over pixels of x log s + (1 - x) log(1 - s), s = sigmoid(logit):
    (B, 1, 28, 28) binary x and logits -> (B,) nats. Grey x is refused (binarize it)."""
    check_binary_images(x)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def check_binary_images(x: torch.Tensor) -> torch.Tensor:
    """x if it is a batch of binary digits (B, 1, 28, 28), 0 or 1 (the values checked on a
    CPU only: a GPU would sync); grey x is refused with what to do."""
    check_images(x)
    if checks.on_host(x) and not bool(((x == 0) | (x == 1)).all()):
        raise checks.ArgumentError("x must be binary pixels, 0 or 1, for the Bernoulli "
                                   "decoder: binarize grey digits with "
                                   "companion.data.binarize(x) first")
    return x


def negative_elbo(model: VQVAE, x: torch.Tensor,
                  code_nll: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> torch.Tensor:
    """The two-stage bound in nats per image: -log p(x | z_q(x)) - log p(k(x)), (B,).

    x: (B, 1, 28, 28) binary. code_nll: codes (B, 7, 7) -> (B,) nats, -log p(k) of a prior
    over code grids or an upper bound on it (chapter 14's masked diffusion bound with
    categories=K); None: the uniform prior, 49 log K. A one-hot posterior has no entropy, so
    KL(q(k | x) || p(k)) = -log p(k(x)) and the sum is the negative ELBO. The model and
    code_nll see at most companion.run.memory.MAX_IMAGES images (grids) a call.

    Book: :eq:`ch19-two-stage`.
    """
    def reconstruct(xb):
        terms = model(xb)
        return terms.reconstruction, terms.indices

    def nll(codes):
        return checks.per_point(code_nll(codes), len(codes), who="code_nll",
                                fix="-log p(k) in nats, one per code grid")

    with torch.no_grad():
        was = model.training
        model.eval()
        try:
            rec, indices = map_chunks(reconstruct, x)
        finally:
            model.train(was)
        if code_nll is None:
            return -rec.double() + math.prod(GRID) * math.log(model.K)
        return -rec.double() + _code_nats(map_chunks(nll, indices).double())


def _code_nats(nats: torch.Tensor) -> torch.Tensor:
    """`nats` if every value is >= 0 (+inf too: a code of probability 0), read with one
    device sync a call: -log p(k) of a discrete code is never below 0, and a log-probability
    returned as it is (code_nll = prior.log_prob) made the bound smaller than it is."""
    if checks.has_values(nats) and not bool((nats >= 0).all()):  # NaN too
        bad = nats[~(nats >= 0)]
        raise checks.ArgumentError(
            f"code_nll must return -log p(k) >= 0 in nats (a discrete code's probability is "
            f"at most 1), got {len(bad)} of {len(nats)} values below 0 or NaN, e.g. "
            f"{bad[0].item():.4g}: a log-probability returned as it is? negate it "
            "(code_nll = lambda k: -prior.log_prob(k))")
    return nats


def loss(model: VQVAE, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The VQ-VAE objective, the batch mean of

        -log p(x | z_q) + ||sg[z_e] - e_k||^2 + beta ||z_e - sg[e_k]||^2

    (van den Oord et al. 2017; the last two are 0 for FSQ), and its terms: (loss,
    {"reconstruction", "codebook", "commitment": batch means, "usage", "perplexity": of the
    batch's codes}). x: (B, 1, 28, 28) binary.

    Book: :eq:`ch19-vq-loss`.
    """
    return _objective(model(x), model.K)


def _objective(terms: VQTerms, K: int) -> tuple[torch.Tensor, dict]:
    from .quantizer import perplexity, usage

    rec, cb, cm = terms.reconstruction.mean(), terms.codebook.mean(), terms.commitment.mean()
    return -rec + cb + cm, {"reconstruction": rec, "codebook": cb, "commitment": cm,
                            "usage": usage(terms.indices, K),
                            "perplexity": perplexity(terms.indices, K)}


class VQLoss:
    """The training loss for `companion.train.fit`: `loss` on a fresh binarization of the
    batch, each term logged, and dead codes restarted after the step's forward pass.

    binarize:       draw a fresh binarization of every batch (chapter 6's dynamic one).
    restart_after:  restart the codes unused for this many steps from the batch's encoder
                    outputs after every step (`VectorQuantizer.restart_dead_codes`); None:
                    never. Logs the number restarted.
    Logs also the codes' usage and perplexity on the batch (companion.models.quantizer).
    """

    def __init__(self, binarize: bool = True, restart_after: int | None = None,
                 generator: torch.Generator | None = None):
        self.binarize, self.generator = bool(binarize), generator
        self.restart_after = None if restart_after is None else \
            checks.count("restart_after", restart_after)

    def __call__(self, model: VQVAE, x: torch.Tensor):
        if self.restart_after is not None and not isinstance(model.quantizer, VectorQuantizer):
            raise checks.ArgumentError("restart_after is for a learned codebook (quantizer="
                                       "'vq'); FSQ has no codes to restart: leave it None")
        if self.binarize:
            x = binarize(x, generator=self.generator)
        terms = model(x)
        total, logs = _objective(terms, model.K)
        if self.restart_after is not None:
            dead = model.quantizer.restart_dead_codes(terms.z_e, self.restart_after,
                                                      generator=self.generator)
            logs["restarted"] = len(dead)  # one device sync a step
        return total, logs
