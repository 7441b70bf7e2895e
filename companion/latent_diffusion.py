"""Latent diffusion (chapter 11): a VAE compresses the images, a DDPM models the codes.

    scale = latent_scale(codes)                      # 1 / std of the codes (Rombach et al.)
    z0 = encode(vae, x8, scale)                      # scaled codes, (B, D)
    x = sample(diffusion, denoiser, vae, scale, 64)  # images on [-1, 1], (64, 1, 28, 28)
    bound = latent_bound(vae, denoiser, diffusion, scale, x8)   # -ELBO per image, nats

The diffusion math stays in `companion.diffusion`; this module only moves between images
and scaled codes, guides the noise prediction, and adds up the pair's bound:

    -log p(x) <= E_q[-log p(x | z)] - H[q(z | x)] + E_q[-log p(z)]
              <= E_q[-log p(x | z)] - H[q(z | x)] + E_q[L(s z)] - D log s,

where q(z | x) is the encoder's Gaussian, p(x | z) the discretized decoder, L(s z) the
diffusion model's bound on the scaled code s z (a density bound: Gaussian L_0), and
-D log s the change of variables from s z back to z (D numbers per code).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch

from .models.latent_denoiser import NO_LABEL, LatentDenoiser, check_weight
from .run import checks
from .run.memory import map_chunks


# --- the codec: encoder, decoder and the scale between them and the diffusion --------------
def codec_fingerprint(vae) -> int:
    """A checksum of the autoencoder's weights (CRC-32 of their bytes, in parameter order).

    Stored in a denoiser's `codec_id` when it is trained; two autoencoders trained apart
    (another seed, profile or recipe) get different fingerprints.
    """
    crc = 0
    for p in vae.state_dict().values():
        crc = zlib.crc32(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes(), crc)
    return crc + 1  # never 0, which means "not recorded"


def check_pair(vae, denoiser: LatentDenoiser) -> None:
    """Refuse a denoiser trained on another autoencoder's codes, or of the wrong code size.

    A decoder from another checkpoint decodes the same numbers into other images: the
    samples would be noise-like digits with no error anywhere, so the mismatch is caught here.
    """
    if denoiser.config.dim != vae.latent_dim:
        raise ValueError(f"the denoiser models codes of {denoiser.config.dim} numbers but the "
                         f"autoencoder's codes have {vae.latent_dim}: pair it with the "
                         "autoencoder it was trained on")
    recorded = int(denoiser.codec_id)
    if recorded and recorded != codec_fingerprint(vae):
        raise ValueError("the denoiser was trained on the codes of another autoencoder "
                         f"(fingerprint {recorded}, this one's {codec_fingerprint(vae)}): a "
                         "decoder from another checkpoint maps its codes to other images. "
                         "Load the autoencoder it was trained with (same recipe and profile), "
                         "or train the denoiser again on this one's codes")


def latent_scale(codes: torch.Tensor) -> float:
    """Rombach et al.'s scale factor s = 1 / std of the codes (all entries pooled).

    codes: (N, D) draws z ~ q(z | x) over training images. The forward process assumes
    data of about unit variance (x_T ~ N(0, I) only when sqrt(alpha_bar_T) x_0 is small
    next to the noise, and the schedule's signal-to-noise ratios are set for unit data);
    s z has it.
    """
    if not torch.is_tensor(codes) or codes.dim() != 2 or len(codes) < 2:
        raise ValueError(f"codes must be a batch of at least 2 flat codes (N, D), got "
                         f"{tuple(codes.shape) if torch.is_tensor(codes) else codes!r}")
    std = codes.detach().double().std().item()
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"the codes' standard deviation is {std}: the encoder outputs "
                         "constants or non-finite values; check that it is trained")
    return 1.0 / std


def _check_scale(scale) -> float:
    scale = checks.as_float(scale)  # NumPy and one-element tensors too
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
            math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number (latent_scale(codes)), "
                         f"got {scale!r}")
    return float(scale)


def posterior_codes(vae, x: torch.Tensor, batch_size: int = 1000):
    """The encoder's q(z | x) for every image: x (N, 1, 28, 28) on [-1, 1] ->
    (mu, logvar), each (N, D), without gradients."""
    checks.images("x", x, low=-1.0, high=1.0)  # 0..255 or [0, 1] would encode silently
    batch_size = checks.count("batch_size", batch_size)
    mus, logvars = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            mu, logvar = vae.encode(x[i:i + batch_size])
            mus.append(mu)
            logvars.append(logvar)
    return torch.cat(mus), torch.cat(logvars)


def draw_codes(mu: torch.Tensor, logvar: torch.Tensor, scale: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """z = s (mu + exp(logvar / 2) eps), eps ~ N(0, I): (B, D), (B, D) -> (B, D)."""
    scale = _check_scale(scale)
    eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
    return scale * (mu + torch.exp(0.5 * logvar) * eps)


def encode(vae, x: torch.Tensor, scale: float, generator: torch.Generator | None = None
           ) -> torch.Tensor:
    """Scaled codes s z, z ~ q(z | x): x (B, 1, 28, 28) on [-1, 1] -> (B, D)."""
    mu, logvar = posterior_codes(vae, x)
    return draw_codes(mu, logvar, scale, generator)


def decode(vae, z: torch.Tensor, scale: float) -> torch.Tensor:
    """Images from scaled codes: the decoder's mean E[x | z / s], (B, D) -> (B, 1, 28, 28)
    on [-1, 1]."""
    scale = _check_scale(scale)
    if not torch.is_tensor(z) or z.dim() != 2 or z.shape[1] != vae.latent_dim:
        raise ValueError(f"z must be scaled codes (B, {vae.latent_dim}), got "
                         f"{tuple(z.shape) if torch.is_tensor(z) else type(z).__name__}")
    with torch.no_grad():
        return vae.mean_image(z / scale)


# --- classifier-free guidance ------------------------------------------------------------
def drop_labels(y: torch.Tensor, p: float, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """Each label replaced by NO_LABEL with probability p (training for guidance): (B,)."""
    p = checks.real("p (the label drop probability)", p, low=0.0, high=1.0, open_high=True)
    keep = torch.rand(y.shape, device=y.device, generator=generator) >= p
    return torch.where(keep, y, torch.full_like(y, NO_LABEL))


def check_labels(labels, num_classes: int = 10) -> torch.Tensor:
    """labels as an int64 tensor (B,) of classes 0..num_classes - 1, or a clear error."""
    if labels is None or isinstance(labels, str):
        raise checks.ArgumentError(f"labels must be a 1-D sequence of integer classes, got "
                                   f"{labels!r}")
    y = torch.as_tensor(labels)
    if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D sequence of integer classes, got "
                         f"{y.dtype} {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must be digits 0..{num_classes - 1}, got values in "
                         f"[{int(y.min())}, {int(y.max())}]")
    return y.long()


def guided_eps(denoiser, labels: torch.Tensor, w: float):
    """The guided noise prediction of Ho and Salimans, as the samplers call it:

        eps(z_t, t) = (1 + w) eps_theta(z_t, t, c) - w eps_theta(z_t, t, none),

    c = labels (B,) in 0..9; w = 0 is the plain conditional model. Both predictions come
    from one network call on the batch twice over (2B inputs), at most
    companion.run.memory.MAX_IMAGES inputs of each half a call. denoiser: a class-
    conditional LatentDenoiser (chapter 11) or U-Net (chapter 16), (x, t, y) -> eps.

    Book: :eq:`ch11-cfg`, :eq:`ch16-cfg`.
    """
    w = check_weight(w)
    if not getattr(denoiser, "conditional", False):
        raise ValueError("guidance needs a class-conditional denoiser (num_classes=10)")
    y = check_labels(labels, denoiser.config.num_classes)
    p = next(denoiser.parameters())
    y = y.to(p.device)

    def both(z, t, yb):
        if w == 0:
            return denoiser(z, t, yb)
        out = denoiser(torch.cat([z, z]), torch.cat([t, t]),
                       torch.cat([yb, torch.full_like(yb, NO_LABEL)]))
        cond, uncond = out.chunk(2)
        return (1 + w) * cond - w * uncond

    def eps(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if len(z) != len(y):
            raise ValueError(f"guided_eps was built for {len(y)} labels but got {len(z)} "
                             "inputs: one label per input")
        return map_chunks(both, z, t, y)

    eps.config = denoiser.config  # so Diffusion checks the chain length
    return eps


def conditional_loss(diffusion, denoiser: LatentDenoiser, z0: torch.Tensor, y: torch.Tensor,
                     p_uncond: float, generator: torch.Generator | None = None):
    """Algorithm 1 with labels, dropped with probability p_uncond (Ho and Salimans):
    E |eps - eps_theta(z_t, t, y')|^2, y' = y or NO_LABEL. z0: (B, D), y: (B,) -> scalar."""
    y = drop_labels(y, p_uncond, generator)

    def eps(z, t):
        return denoiser(z, t, y)

    eps.config = denoiser.config
    return diffusion.simple_loss(eps, z0, generator=generator)


# --- sampling ----------------------------------------------------------------------------
def sample(diffusion, denoiser: LatentDenoiser, vae, scale: float, n: int, *,
           labels=None, w: float = 0.0, n_steps: int | None = None,
           generator: torch.Generator | None = None, quiet: bool | None = None
           ) -> torch.Tensor:
    """n images: codes by ancestral sampling (Algorithm 2, or `n_steps` respaced), decoded.

    Args:
        diffusion: the Diffusion (schedule) the denoiser was trained with.
        denoiser: the LatentDenoiser.
        vae: the autoencoder whose decoder turns the codes into images.
        scale: the factor on the codes the denoiser was trained on.
        n: how many images.
        labels: None (default: an unconditional denoiser) or n digits for a conditional
            one, guided with weight w.
        w: the guidance weight (default 0.0: the conditional model alone).
        n_steps: None (default: all T steps) or fewer, respaced.
        generator: for the noise (default None: torch's global generator).
        quiet: no progress bar (default: the profile decides).

    Returns:
        (n, 1, 28, 28) images on [-1, 1].
    """
    check_pair(vae, denoiser)
    scale = _check_scale(scale)
    p = next(denoiser.parameters())
    if labels is None:
        if denoiser.conditional:
            raise ValueError("a class-conditional denoiser needs labels (n digits in 0..9)")
        check_weight(w)
        eps = denoiser
    else:
        y = check_labels(labels, denoiser.config.num_classes or 10)
        if len(y) != n:
            raise ValueError(f"got {len(y)} labels for n = {n} samples: give one per sample")
        eps = guided_eps(denoiser, y, w)
    z = diffusion.sample(eps, (n, denoiser.config.dim), n_steps=n_steps,
                         generator=generator, device=p.device, quiet=quiet)
    return decode(vae, z, scale)


# --- the bound -----------------------------------------------------------------------------
def gaussian_entropy(logvar: torch.Tensor) -> torch.Tensor:
    """H[N(mu, diag(exp(logvar)))] = 1/2 sum_i (log(2 pi e) + logvar_i): (B, D) -> (B,)."""
    return 0.5 * (math.log(2 * math.pi * math.e) + logvar).sum(-1)


@dataclass
class LatentBound:
    """The pair's negative ELBO per image, term by term, in nats (each (B,)).

    reconstruction: E_q[-log p(x | z)], the discretized decoder.
    entropy:        H[q(z | x)], closed form.
    cross_entropy:  E_q[L(s z)] - D log s, the diffusion model's bound on E_q[-log p(z)].
    dims:           pixels per image (784), for bits per dimension.
    """

    reconstruction: torch.Tensor
    entropy: torch.Tensor
    cross_entropy: torch.Tensor
    dims: int

    @property
    def total(self) -> torch.Tensor:
        """-ELBO = reconstruction - entropy + cross_entropy, nats per image: (B,)."""
        return self.reconstruction - self.entropy + self.cross_entropy

    def bits_per_dim(self, nats: torch.Tensor | None = None) -> torch.Tensor:
        """nats / (dims ln 2): of the mean total by default, or of any nats tensor given."""
        nats = self.total.mean() if nats is None else nats
        return nats / (self.dims * math.log(2))


@torch.no_grad()
def latent_bound(vae, denoiser: LatentDenoiser, diffusion, scale: float, x: torch.Tensor, *,
                 samples: int = 1, generator: torch.Generator | None = None,
                 quiet: bool | None = None) -> LatentBound:
    """The negative ELBO of the VAE whose prior is the diffusion model, per image (nats).

    Args:
        vae: the trained autoencoder (encoder q(z | x), discretized decoder p(x | z)).
        denoiser: an unconditional LatentDenoiser (or a conditional one, as its
            unconditional half).
        diffusion: the Diffusion (schedule) the denoiser was trained with.
        scale: the factor on the codes the denoiser was trained on.
        x: (B, 1, 28, 28) 8-bit images on [-1, 1] (the 256 levels, as chapter 10's bound).
        samples: draws z ~ q(z | x) per image (default 1): the reconstruction and
            cross-entropy terms are Monte Carlo over them; the diffusion bound of each draw
            sums every t, T network calls in chunks.
        generator: for the draws (default None: torch's global generator).
        quiet: no progress bar (default: the profile decides).

    Returns:
        LatentBound: `reconstruction`, `entropy` and `cross_entropy` per image (B,), in
        nats, and their `total`.

    Book: :eq:`ch11-bound`.
    """
    check_pair(vae, denoiser)
    scale = _check_scale(scale)
    samples = checks.count("samples", samples)
    mu, logvar = posterior_codes(vae, x)
    D = mu.shape[1]
    rec, cross = torch.zeros(len(x), device=x.device), torch.zeros(len(x), device=x.device)
    for _ in range(samples):
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, device=mu.device,
                                                       dtype=mu.dtype, generator=generator)
        rec -= vae.log_likelihood(x, vae.decode(z)) / samples
        terms = diffusion.bound_terms(denoiser, scale * z, decoder="gaussian",
                                      generator=generator, quiet=quiet)
        cross += (terms.total - D * math.log(scale)) / samples
    return LatentBound(rec, gaussian_entropy(logvar), cross, x[0].numel())
