"""The variational autoencoder: a Gaussian encoder, a Bernoulli or Gaussian decoder.

    model = VAE(latent_dim=20)                      # MLP, Bernoulli decoder
    terms = model.elbo_terms(binarize(x))           # per example, in nats
    elbo = terms.reconstruction - terms.kl          # (B,)

The encoder q_phi(z|x) = N(mu(x), diag(exp(logvar(x)))); the prior p(z) = N(0, I); the
decoder p_theta(x|z) is
  - "bernoulli": independent pixels with probabilities sigmoid(f(z)) (the decoder returns
    the logits f(z)); meant for binary images (dynamically binarized, `data.binarize`).
    On grey values the same formula is the popular "BCE" loss, which is not the
    log-likelihood of anything normalized: it is the expected Bernoulli log-likelihood
    over random binarizations of the grey image.
  - "gaussian": N(f(z), sigma^2 I) for continuous images, with a fixed sigma or one
    learned scalar sigma shared by all pixels (a per-pixel variance would shrink to zero
    on MNIST's constant background and the likelihood would diverge).
  - "discretized": for 8-bit images scaled to [-1, 1] (`to_8bit_range`), the data model of
    DDPM's L_0: a Gaussian per pixel, mean and log-scale both from the decoder (two output
    channels), integrated over the pixel's bin of width 2/255 (the edge bins reach to
    -inf and +inf). log p(x|z) is then a log-probability of the 256 levels, never above 0,
    and bits per dimension are comparable with a diffusion model's bound on the same data.

`elbo_terms` returns the two terms of the ELBO separately, per example: the Monte Carlo
reconstruction term E_q[log p(x|z)] and the closed-form KL(q(z|x) || p(z)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from ..data import IMAGE_SHAPE, binarize, check_images
from ..kl import kl_diag_standard
from ..run import checks

N_PIXELS = int(math.prod(IMAGE_SHAPE))
LIKELIHOODS = ("bernoulli", "gaussian", "discretized")
MIN_LOG_SCALE = -7.0  # the discretized decoder's floor: a std of 1e-3, far below a bin
ARCHS = ("mlp", "conv")
LOG_2PI = math.log(2 * math.pi)


@dataclass
class ELBOTerms:
    """The ELBO's two terms per example, in nats.

    reconstruction: (B,) Monte Carlo estimate of E_q[log p(x|z)]
    kl:             (B,) KL(q(z|x) || p(z)), closed form
    kl_per_dim:     (B, D) the same KL split over latent dimensions
    mu, logvar:     (B, D) the parameters of q(z|x) that were used
    """

    reconstruction: torch.Tensor
    kl: torch.Tensor
    kl_per_dim: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor

    @property
    def elbo(self) -> torch.Tensor:
        """(B,) reconstruction - KL."""
        return self.reconstruction - self.kl


def _mlp(sizes: list[int], activation) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def check_images_for(model: nn.Module, x: torch.Tensor) -> None:
    """Clear errors unless x is a batch of images (B, 1, 28, 28) on the model's device and in
    its dtype."""
    check_images(x)
    check_nonempty(x)
    w = next(model.parameters())
    if x.device != w.device:
        raise ValueError(f"x is on {x.device} but the model is on {w.device}; "
                         f"move one of them: x.to({str(w.device)!r}) or model.to(x.device)")
    if x.dtype != w.dtype:
        raise TypeError(f"x is {x.dtype} but the model's weights are {w.dtype}; "
                        f"convert with x.to({w.dtype}) (or model.to({x.dtype}))")


def check_nonempty(x: torch.Tensor) -> None:
    """An ELBO averaged over no images is NaN: refuse an empty batch."""
    if len(x) == 0:
        raise ValueError(f"x is an empty batch, shape {tuple(x.shape)}: pass at least one "
                         "image (check the batch size and the data slice)")


def check_8bit_images(x: torch.Tensor, where: str,
                      other: str = "likelihood='gaussian' for real-valued data") -> None:
    """Refuse x off the discretized decoder's 256 levels -1 + 2k/255 on [-1, 1] (images in
    [0, 1] or 0..255 would give a plausible but wrong likelihood). One device sync: on a GPU
    the check runs outside training only (with gradients off), not at every step."""
    if x.device.type == "cuda" and torch.is_grad_enabled():
        return
    checks.eight_bit(x, where, name="x", setting="likelihood='discretized'", other=other)


class MLPEncoder(nn.Module):
    """x: (B, 1, 28, 28) -> (mu, logvar), each (B, latent_dim)."""

    def __init__(self, latent_dim: int, hidden=(512, 256), activation=nn.ReLU):
        super().__init__()
        self.body = _mlp([N_PIXELS, *hidden], activation)
        self.act = activation()
        self.head = nn.Linear(hidden[-1], 2 * latent_dim)

    def forward(self, x):
        h = self.act(self.body(x.flatten(1)))
        mu, logvar = self.head(h).chunk(2, dim=-1)
        return mu, logvar


class MLPDecoder(nn.Module):
    """z: (B, latent_dim) -> (B, out_channels, 28, 28) decoder output f(z) (logits or means;
    a discretized decoder's second channel is the log-scale)."""

    def __init__(self, latent_dim: int, hidden=(256, 512), activation=nn.ReLU,
                 out_channels: int = 1):
        super().__init__()
        self.out_channels = out_channels
        self.net = _mlp([latent_dim, *hidden, out_channels * N_PIXELS], activation)

    def forward(self, z):
        return self.net(z).view(-1, self.out_channels, *IMAGE_SHAPE[1:])


def down_convs(channels=(32, 64), activation=nn.ReLU, in_channels: int = 1) -> list[nn.Module]:
    """Two 4 x 4 stride-2 convolutions, each followed by the activation: (B, in_channels,
    28, 28) -> (B, channels[1], 7, 7), through 14 x 14. The conv encoder's body (chapter 19's
    VQ encoder stops here, at a 7 x 7 grid)."""
    c1, c2 = channels
    return [nn.Conv2d(in_channels, c1, 4, stride=2, padding=1), activation(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), activation()]


def up_convs(channels=(64, 32), out_channels: int = 1, activation=nn.ReLU) -> list[nn.Module]:
    """Two 4 x 4 stride-2 transposed convolutions with the activation between: (B,
    channels[0], 7, 7) -> (B, out_channels, 28, 28), no activation at the end (logits or
    means). The conv decoder's last layers, and chapter 19's VQ decoder's."""
    c1, c2 = channels
    return [nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1), activation(),
            nn.ConvTranspose2d(c2, out_channels, 4, stride=2, padding=1)]


class ConvEncoder(nn.Module):
    """x: (B, 1, 28, 28) -> (mu, logvar): two stride-2 convs (28 -> 14 -> 7), a linear head."""

    def __init__(self, latent_dim: int, channels=(32, 64), hidden=256, activation=nn.ReLU):
        super().__init__()
        c2 = channels[1]
        self.body = nn.Sequential(
            *down_convs(channels, activation),
            nn.Flatten(), nn.Linear(c2 * 7 * 7, hidden), activation(),
        )
        self.head = nn.Linear(hidden, 2 * latent_dim)

    def forward(self, x):
        mu, logvar = self.head(self.body(x)).chunk(2, dim=-1)
        return mu, logvar


class ConvDecoder(nn.Module):
    """z: (B, latent_dim) -> (B, 1, 28, 28): a linear layer to 7x7 maps, two transposed convs."""

    def __init__(self, latent_dim: int, channels=(64, 32), hidden=256, activation=nn.ReLU,
                 out_channels: int = 1):
        super().__init__()
        c1 = channels[0]
        self.c1 = c1
        self.fc = nn.Sequential(nn.Linear(latent_dim, hidden), activation(),
                                nn.Linear(hidden, c1 * 7 * 7), activation())
        self.deconv = nn.Sequential(*up_convs(channels, out_channels, activation))

    def forward(self, z):
        return self.deconv(self.fc(z).view(-1, self.c1, 7, 7))


class VAE(nn.Module):
    """A VAE with a diagonal Gaussian encoder and a standard normal prior.

    latent_dim:  size of z.
    arch:        "mlp" (hidden sizes `hidden`, mirrored in the decoder) or "conv".
    likelihood:  "bernoulli" (decoder gives logits), "gaussian" (decoder gives means) or
                 "discretized" (means and log-scales of binned Gaussians, data in [-1, 1]).
    channels:    conv only: the channels after the first and second stride-2 convolution
                 (the decoder mirrors them).
    sigma:       Gaussian decoder only: a fixed standard deviation (float) or "learned"
                 (one scalar, initialised at `sigma_init`, never below `min_sigma`).
    """

    def __init__(self, latent_dim: int = 20, *, arch: str = "mlp", hidden=(512, 256),
                 likelihood: str = "bernoulli", sigma: float | str = 0.1,
                 sigma_init: float = 0.3, min_sigma: float = 1e-3, activation=nn.ReLU,
                 channels: tuple[int, int] = (32, 64)):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        latent_dim = checks.count("latent_dim (a positive int)", latent_dim)
        self.latent_dim, self.arch, self.likelihood = latent_dim, arch, likelihood
        hidden = tuple(checks.count(f"hidden[{i}] (a layer's width)", h)
                       for i, h in enumerate(hidden))
        self.out_channels = 2 if likelihood == "discretized" else 1
        if arch == "mlp":
            self.encoder = MLPEncoder(latent_dim, hidden, activation)
            self.decoder = MLPDecoder(latent_dim, hidden[::-1], activation, self.out_channels)
        else:
            self.encoder = ConvEncoder(latent_dim, tuple(channels), activation=activation)
            self.decoder = ConvDecoder(latent_dim, tuple(channels)[::-1], activation=activation,
                                       out_channels=self.out_channels)
        self.learn_sigma = likelihood == "gaussian" and sigma == "learned"
        self.min_sigma = min_sigma
        if self.learn_sigma:
            self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma_init)))
        elif likelihood == "gaussian":
            sigma = checks.as_float(sigma)
            if not isinstance(sigma, float) or not 0 < sigma < math.inf:
                raise checks.ArgumentError(f'sigma must be a positive float (finite) or '
                                           f'"learned", got {sigma!r}')
            self.register_buffer("log_sigma", torch.tensor(math.log(sigma)))

    # --- the two networks -------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 1, 28, 28) -> (mu, logvar), each (B, latent_dim)."""
        check_images_for(self, x)
        return self.encoder(x)

    def posterior(self, x: torch.Tensor) -> D.Distribution:
        """q(z|x) as a torch distribution: batch shape (B,), event shape (latent_dim,)."""
        mu, logvar = self.encode(x)
        return D.Independent(D.Normal(mu, torch.exp(0.5 * logvar)), 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (..., latent_dim) -> decoder output f(z): (..., 1, 28, 28) logits or means
        ((..., 2, 28, 28) means and log-scales for the discretized decoder)."""
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must end in the latent size {self.latent_dim}, "
                             f"got shape {tuple(z.shape)}")
        lead = z.shape[:-1]
        out = self.decoder(z.reshape(-1, self.latent_dim))
        return out.view(*lead, self.out_channels, *IMAGE_SHAPE[1:])

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z]: pixel probabilities (Bernoulli) or the Gaussian mean, (..., 1, 28, 28)
        (the discretized decoder: its Gaussians' means clamped to [-1, 1])."""
        out = self.decode(z)
        if self.likelihood == "discretized":
            return out[..., :1, :, :].clamp(-1, 1)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    @property
    def sigma(self) -> torch.Tensor:
        """The Gaussian decoder's standard deviation (a scalar tensor)."""
        if self.likelihood != "gaussian":
            raise TypeError("a Bernoulli decoder has no sigma")
        return self.log_sigma.exp().clamp_min(self.min_sigma)

    # --- densities ----------------------------------------------------------------------
    def log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels, from the decoder output `out` = f(z).

        x: (B, 1, 28, 28); out: (..., B, 1, 28, 28) (leading sample dims broadcast) -> (..., B).
        x in [0, 1] for the Bernoulli decoder (binary), the 256 levels -1 + 2k/255 on [-1, 1]
        for the discretized one (`to_8bit_range`); either is refused outside its range.

        Book: :eq:`ch6-bernoulli`.
        """
        if self.likelihood == "discretized":
            from ..diffusion import discretized_gaussian_log_likelihood

            check_8bit_images(x, "VAE.log_likelihood")
            mean, log_scale = out[..., :1, :, :], out[..., 1:, :, :]
            ll = discretized_gaussian_log_likelihood(
                x, mean.float(), log_scale.float().clamp_min(MIN_LOG_SCALE))
        elif self.likelihood == "bernoulli":
            # the range check costs a device sync: on a GPU it would stall every step
            if x.device.type != "cuda" and not bool(((x >= 0) & (x <= 1)).all()):
                raise ValueError("a Bernoulli decoder needs pixel values in [0, 1], got "
                                 f"[{x.min().item():.3g}, {x.max().item():.3g}]; scale the "
                                 "images (x / 255) or use likelihood='gaussian'")
            # -BCE(logits, x) = x log s + (1 - x) log(1 - s), computed stably from logits
            ll = -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none")
        else:
            sigma = self.sigma
            ll = -0.5 * ((x - out) / sigma) ** 2 - torch.log(sigma) - 0.5 * LOG_2PI
        return ll.flatten(-3).sum(-1)

    @staticmethod
    def log_prior(z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I): (..., D) -> (...)."""
        return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x, z) = log p(x|z) + log p(z).  x: (B, 1, 28, 28), z: (..., B, D) -> (..., B)."""
        return self.log_likelihood(x, self.decode(z)) + self.log_prior(z)

    # --- the ELBO -----------------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor, n_samples: int = 1, q=None,
                   x_encoder: torch.Tensor | None = None) -> ELBOTerms:
        """The ELBO's two terms per example (the five-step learning step, minus the update).

        x:          (B, 1, 28, 28) the images to explain (binary for a Bernoulli decoder).
        n_samples:  z samples per image for the reconstruction term.
        q:          optional (mu, logvar) to use instead of the encoder's (any q gives a
                    lower bound; used to refine q per image for the amortization gap).
        x_encoder:  optional images the encoder sees instead of x (same shape).

        Book: :eq:`ch6-elbo`.
        """
        check_images(x)
        check_nonempty(x)
        n_samples = checks.count("n_samples", n_samples)
        if q is None:
            mu, logvar = self.encode(x if x_encoder is None else x_encoder)  # 1. encode
        else:
            mu, logvar = q
        kl_dims = kl_diag_standard(mu, logvar)                                # 2. KL
        eps = torch.randn(n_samples, *mu.shape, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps                                # 3. sample z
        rec = self.log_likelihood(x, self.decode(z)).mean(0)                 # 4. decode
        return ELBOTerms(rec, kl_dims.sum(-1), kl_dims, mu, logvar)

    def forward(self, x: torch.Tensor) -> ELBOTerms:
        return self.elbo_terms(x)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               mean: bool = True) -> torch.Tensor:
        """n images from the model: z ~ N(0, I), then E[x|z] (mean=True) or x ~ p(x|z).

        Returns (n, 1, 28, 28).
        """
        n = checks.count("n (the number of samples)", n, minimum=0)
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator).to(device)
        return self.sample_x(self.decode(z), generator) if not mean else self.mean_image(z)

    def sample_x(self, out: torch.Tensor, generator: torch.Generator | None = None):
        """A draw x ~ p(x|z) from the decoder output out = f(z)."""
        if self.likelihood == "bernoulli":
            p = torch.sigmoid(out)
            u = torch.rand(p.shape, generator=generator).to(p.device)
            return (u < p).to(p.dtype)
        if self.likelihood == "discretized":
            mean, log_scale = out[..., :1, :, :], out[..., 1:, :, :]
            noise = torch.randn(mean.shape, generator=generator).to(out.device)
            x = mean + log_scale.clamp_min(MIN_LOG_SCALE).exp() * noise
            return quantize_8bit(x)
        noise = torch.randn(out.shape, generator=generator).to(out.device)
        return out + self.sigma * noise


def to_8bit_range(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (multiples of 1/255) -> the 256 levels -1 + 2k/255 on [-1, 1].

    The data model of the discretized decoder and of DDPM's bound: (B, ...) -> (B, ...).
    Refuses input clearly outside [0, 1] (already on [-1, 1], or 0..255 bytes).
    """
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"to_8bit_range takes a float tensor of images in [0, 1], got "
                        f"{getattr(x, 'dtype', type(x).__name__)}: bytes 0..255 go through "
                        "x.float() / 255 first")
    if x.numel():
        lo, hi = torch.aminmax(x.detach().float())
        if not (lo >= -0.01 and hi <= 1.01):
            raise ValueError(f"to_8bit_range takes images in [0, 1], got values in "
                             f"[{lo.item():.3g}, {hi.item():.3g}]: already on [-1, 1]? use "
                             "quantize_8bit; 0..255 bytes? divide by 255 first")
    return quantize_8bit(2 * x - 1)


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Values on [-1, 1] rounded to the nearest of the 256 levels -1 + 2k/255 (clamped)."""
    return (torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1).to(x.dtype)


class ELBOLoss:
    """The training loss for `companion.train.fit`: -(reconstruction - beta_t * KL), averaged.

    beta:           weight of the KL term once warm-up is over (1 = the ELBO).
    warmup_steps:   KL warm-up (annealing): beta_t grows linearly from 0 to `beta` over
                    this many optimizer steps, so the decoder learns to use z before the
                    KL term pulls q(z|x) towards the prior.
    binarize:       draw a fresh binarization of every batch (default: for Bernoulli decoders).

    `fit` passes `step`, the optimizer steps taken so far (counted across resumes), so the
    warm-up needs no state of its own: a resumed run continues its schedule. Called without
    `step`, the loss uses the final beta. Logs the per-example reconstruction, KL, ELBO (all
    in nats) and beta_t.
    """

    def __init__(self, beta: float = 1.0, warmup_steps: int = 0, binarize: bool | None = None,
                 generator: torch.Generator | None = None):
        beta = checks.real("beta", beta, low=0.0)
        warmup_steps = checks.count("warmup_steps", warmup_steps, minimum=0)
        self.beta, self.warmup_steps, self.binarize = beta, warmup_steps, binarize
        self.generator = generator

    def beta_at(self, step: int | None) -> float:
        """beta_t: linear warm-up from 0 to beta over warmup_steps, then constant."""
        if self.warmup_steps == 0 or step is None:
            return self.beta
        return self.beta * min(1.0, step / self.warmup_steps)

    def __call__(self, model: VAE, x: torch.Tensor, step: int | None = None):
        dynamic = model.likelihood == "bernoulli" if self.binarize is None else self.binarize
        if dynamic:
            x = binarize(x, generator=self.generator)
        beta = self.beta_at(step)
        terms = model.elbo_terms(x)
        rec, kl = terms.reconstruction.mean(), terms.kl.mean()
        loss = -(rec - beta * kl)
        return loss, {"reconstruction": rec, "kl": kl, "elbo": rec - kl, "beta": beta}
