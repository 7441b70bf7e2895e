"""Hierarchical VAEs: m stochastic layers with top-down inference, and the Markovian chain.

    model = HierarchicalVAE(latent_dims=(20, 8), hidden=(480, 128))
    terms = model.elbo_terms(binarize(x))        # per example, in nats
    elbo = terms.reconstruction - terms.kl       # kl = terms.kl_layers.sum(-1)

`HierarchicalVAE` (the Ladder VAE of Sønderby et al., in the book's notation, chapter 7).
The latent z = (z_1, ..., z_m), z_1 nearest the image, z_m at the top:

    generative path   p(x, z) = p(z_m) prod_{i<m} p(z_i | z_{i+1}) p(x | z_1)
    inference path    q(z | x) = q(z_m | x) prod_{i<m} q(z_i | z_{i+1}, x)
    with              q(z_i | z_{i+1}, x)  ∝  p(z_i | z_{i+1}) d_i(z_i, x)

p(z_m) = N(0, I); p(z_i | z_{i+1}) = N(mu_p, diag(exp(logvar_p))) from a small network of
z_{i+1} (z_>i enters through z_{i+1}: the generative path is a Markov chain, as in the Ladder
VAE, so p(z_i | z_>i) = p(z_i | z_{i+1})); p(x | z_1) = independent Bernoulli pixels with
logits from the decoder, for dynamically binarized images (chapter 6's protocol). A
deterministic bottom-up network reads x once and produces, at every layer below the top, a
Gaussian-shaped factor d_i(z_i, x) ∝ exp(eta_i . z_i - lambda_i |z_i|^2 / 2), given by its
natural parameters eta_i and log lambda_i (precision-weighted mean and log-precision). The
inference path then runs top-down *through the generative path's own prior networks*: that
is how q shares its parameters with the generator. At the top the prior is the fixed N(0, I)
and the bottom-up head gives q(z_m | x) = N(mu, diag(exp(logvar))) itself, so with m = 1 the
model is exactly chapter 6's VAE.

Why the precision-weighted product and not NVAE's residual form. NVAE writes
q(z_i | z_>i, x) = N(mu_p + dmu, (sigma_p * dsigma)^2) with dmu, dsigma computed from both x
and z_>i; then q / p depends on z_>i and is no factor d_i(z_i, x) of the image alone. The
slide's factorization asks for exactly such a factor, and the normalized product of two
Gaussian densities is again Gaussian (`gaussian_product`): precisions add, and the mean is
the precision-weighted average, so q is the prior's belief corrected by the evidence from the
image. NVAE's residual form is built for dozens of layers, where it is the more stable one.

Why natural parameters for d_i. Read as a mean and a log-variance, d_i enters q's mean
through the weight var_p / (var_p + var_d), so the large, noisy gradient of the mean also
drives d's variance; in our runs that version trained several nats worse than chapter 6's
VAE at equal budgets. With (eta, log lambda) q's mean, (lambda_p mu_p + eta) / (lambda_p +
lambda), is linear in the network's output eta. The prior networks start at N(0, I) (their
last layer is zero), so training starts from a model whose upper layers change nothing yet.

`MarkovianHVAE` is the other ordering (Luo 2022's Markovian HVAE): inference bottom-up,
q(z_1 | x) prod_t q(z_t | z_{t-1}), generation top-down p(z_T) prod_t p(z_{t-1} | z_t)
p(x | z_1). q no longer shares anything with p. Diffusion (chapter 8) is this model with
the latents in image space, a fixed linear Gaussian q(z_t | z_{t-1}), and a schedule that
ends at N(0, I).

Both models expose `sample_q(x, k)` (z ~ q(z|x) with log q(z|x)) and `log_joint(x, z)`, the
two halves of the importance-weighted estimate `companion.metrics.iw_estimate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import IMAGE_SHAPE, binarize
from ..run import checks
from .vae import MIN_LOG_SCALE, N_PIXELS, MLPDecoder, check_8bit_images, check_images_for

LOG_2PI = math.log(2 * math.pi)


# --- the Gaussian algebra of the family ------------------------------------------------------
def gaussian_product(mu_p, logvar_p, eta, log_precision):
    """The normalized product of a diagonal Gaussian and a Gaussian factor, as (mu, logvar).

        N(z; mu_p, var_p) exp(eta z - lambda z^2 / 2)  ∝  N(z; mu, var),
        1 / var = 1 / var_p + lambda,     mu = var (mu_p / var_p + eta),

    per dimension, with lambda = exp(log_precision). The factor is the density N(z; eta /
    lambda, 1 / lambda) up to a constant, so this is the product of two Gaussian densities,
    precisions adding and means averaging with precision weights. logvar is computed as
    -logaddexp(-logvar_p, log_precision), without forming a precision that could overflow.
    All arguments broadcast, e.g. (S, B, D) against (B, D).

    Book: :eq:`ch7-product`.
    """
    logvar = -torch.logaddexp(-logvar_p, log_precision)
    return (mu_p * torch.exp(-logvar_p) + eta) * torch.exp(logvar), logvar


def gaussian_log_density(z, mu, logvar):
    """log N(z; mu, diag(exp(logvar))), summed over the last dim: (..., D) -> (...)."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def kl_gaussian(mu_q, logvar_q, mu_p, logvar_p):
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) per dimension (diagonal Gaussians), elementwise.

        = 1/2 [ logvar_p - logvar_q + (var_q + (mu_q - mu_p)^2) / var_p - 1 ]
    """
    return 0.5 * (logvar_p - logvar_q
                  + (torch.exp(logvar_q) + (mu_q - mu_p).pow(2)) * torch.exp(-logvar_p) - 1)


def bernoulli_log_likelihood(x, logits):
    """log p(x | z) = sum_pixels x log s + (1 - x) log(1 - s), s = sigmoid(logits).

    x: (B, 1, 28, 28) binary; logits: (..., B, 1, 28, 28) -> (..., B).
    """
    # the range check costs a device sync: on a GPU it would stall every step
    if x.device.type != "cuda" and not bool(((x >= 0) & (x <= 1)).all()):  # NaN too
        raise ValueError("a Bernoulli decoder needs pixel values in [0, 1], got "
                         f"[{x.min().item():.3g}, {x.max().item():.3g}]; scale the images "
                         "(x / 255) and binarize them (companion.data.binarize)")
    ll = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
    return ll.flatten(-3).sum(-1)


@dataclass
class HierarchyTerms:
    """The ELBO of a hierarchy per example, in nats: elbo = reconstruction - kl_layers.sum.

    reconstruction: (B,) Monte Carlo estimate of E_q[log p(x | z_1)]
    kl_layers:      (B, m) the rate of each layer, bottom (z_1) first. HierarchicalVAE: the
                    analytic KL(q(z_i | z_>i, x) || p(z_i | z_>i)) at the sampled z_>i (the
                    top layer's KL to N(0, I) is exact). MarkovianHVAE: Monte Carlo terms
                    log q(z_t | z_{t-1}) - log p(z_t | z_{t+1}), which are not KLs.
    z:              list of m tensors (S, B, D_i), the samples used, bottom first
    """

    reconstruction: torch.Tensor
    kl_layers: torch.Tensor
    z: list

    @property
    def kl(self) -> torch.Tensor:
        """(B,) the total rate, KL(q(z|x) || p(z)) for the HierarchicalVAE."""
        return self.kl_layers.sum(-1)

    @property
    def elbo(self) -> torch.Tensor:
        """(B,) reconstruction - kl."""
        return self.reconstruction - self.kl


def _two_layer(d_in: int, hidden: int, d_out: int, activation) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), activation(), nn.Linear(hidden, d_out))


def _check_sizes(name: str, sizes, count: int | None = None,
                 per: str = "stochastic layer") -> tuple[int, ...]:
    sizes = tuple(sizes)
    if not sizes or not all(isinstance(s, int) and s >= 1 for s in sizes):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints (one per "
                         f"{per}), got {sizes!r}")
    if count is not None and len(sizes) != count:
        raise ValueError(f"{name} must give one size per {per}: latent_dims implies "
                         f"{count}, got {len(sizes)}: {sizes}")
    return sizes


class _ImageModel(nn.Module):
    """What both hierarchies share: the decoder p(x | z_1) and the input checks.

    Bernoulli on binarized images by default; "discretized" is the binned Gaussian of
    DDPM's L_0 on 8-bit images scaled to [-1, 1] (the decoder outputs a mean and a
    log-scale per pixel), as for `VAE(likelihood="discretized")`.
    """

    likelihood = "bernoulli"

    def _check_input(self, x: torch.Tensor) -> None:
        check_images_for(self, x)

    def decode(self, z1: torch.Tensor) -> torch.Tensor:
        """z_1: (..., D_1) -> the decoder output: logits (..., 1, 28, 28), or for the
        discretized decoder means and log-scales (..., 2, 28, 28)."""
        lead = z1.shape[:-1]
        out = self.decoder(z1.reshape(-1, z1.shape[-1]))
        return out.view(*lead, -1, *IMAGE_SHAPE[1:])

    def log_likelihood(self, x: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """log p(x | z_1): x (B, 1, 28, 28), z_1 (..., B, D_1) -> (..., B).

        x: binary for the Bernoulli decoder; for the discretized one the 256 levels
        -1 + 2k/255 of 8-bit images on [-1, 1] (`to_8bit_range`); other values are refused.
        """
        out = self.decode(z1)
        if self.likelihood == "bernoulli":
            return bernoulli_log_likelihood(x, out)
        from ..diffusion import discretized_gaussian_log_likelihood

        check_8bit_images(x, f"{type(self).__name__}.log_likelihood",
                          other="likelihood='bernoulli' on images in [0, 1]")
        mean, log_scale = out[..., :1, :, :].float(), out[..., 1:, :, :].float()
        ll = discretized_gaussian_log_likelihood(x, mean, log_scale.clamp_min(MIN_LOG_SCALE))
        return ll.flatten(-3).sum(-1)

    def mean_image(self, z1: torch.Tensor) -> torch.Tensor:
        """E[x | z_1]: pixel probabilities (Bernoulli) or the means clamped to [-1, 1]."""
        out = self.decode(z1)
        if self.likelihood == "bernoulli":
            return torch.sigmoid(out)
        return out[..., :1, :, :].clamp(-1, 1)

    def forward(self, x: torch.Tensor) -> HierarchyTerms:
        return self.elbo_terms(x)


class HierarchicalVAE(_ImageModel):
    """m stochastic layers, top-down inference sharing the generative path's priors.

    latent_dims:     (D_1, ..., D_m), bottom (nearest x) first; m = len(latent_dims) >= 1.
    hidden:          (H_1, ..., H_m) widths of the bottom-up network: x -> H_1 -> ... -> H_m,
                     d_i read from the i-th hidden layer. The decoder mirrors the first:
                     z_1 -> H_1 -> x.
    prior_hidden:    widths of the prior networks z_{i+1} -> P_i -> (mu_p, logvar_p) of z_i,
                     one per layer below the top (m - 1 of them); default H_{i+1}.

    With latent_dims=(20,), hidden=(512,) this is chapter 6's VAE(20, hidden=(512,)).
    """

    def __init__(self, latent_dims=(32, 8), hidden=(512, 128), prior_hidden=None,
                 activation=nn.ReLU, likelihood: str = "bernoulli"):
        super().__init__()
        if likelihood not in ("bernoulli", "discretized"):
            raise ValueError(f'likelihood must be "bernoulli" or "discretized", got '
                             f"{likelihood!r}")
        self.likelihood = likelihood
        self.latent_dims = _check_sizes("latent_dims", latent_dims)
        m = self.m = len(self.latent_dims)
        self.hidden = _check_sizes("hidden", hidden, m)
        if prior_hidden is None:
            prior_hidden = self.hidden[1:]
        self.prior_hidden = (_check_sizes("prior_hidden", prior_hidden, m - 1,
                                          "layer below the top")
                             if m > 1 else ())
        widths = (N_PIXELS, *self.hidden)
        self.up = nn.ModuleList(nn.Linear(a, b)
                                for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.act = activation()
        self.d_heads = nn.ModuleList(nn.Linear(h, 2 * d)
                                     for h, d in zip(self.hidden, self.latent_dims, strict=True))
        self.priors = nn.ModuleList(
            _two_layer(self.latent_dims[i + 1], self.prior_hidden[i], 2 * self.latent_dims[i],
                       activation) for i in range(m - 1))
        for net in self.priors:  # each conditional prior starts as N(0, I)
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
        self.decoder = MLPDecoder(self.latent_dims[0], (self.hidden[0],), activation,
                                  out_channels=2 if likelihood == "discretized" else 1)

    # --- the two passes ----------------------------------------------------------------
    def bottom_up(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The deterministic pass: x (B, 1, 28, 28) -> one pair of (B, D_i) per layer, bottom
        first: (eta, log lambda) of the factor d_i(z_i, x) below the top, (mu, logvar) of
        q(z_m | x) at the top."""
        self._check_input(x)
        h, out = x.flatten(1), []
        for up, head in zip(self.up, self.d_heads, strict=True):
            h = self.act(up(h))
            out.append(tuple(head(h).chunk(2, dim=-1)))
        return out

    def prior(self, i: int, z_above: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z_i | z_{i+1}) for a layer below the top (0-based i < m - 1): (mu_p, logvar_p)."""
        return tuple(self.priors[i](z_above).chunk(2, dim=-1))

    def top_down(self, d, n_samples: int = 1, noise=None):
        """Top-down inference: z_m ~ q(z_m | x), then z_i ~ q(z_i | z_{i+1}, x) for i < m.

        d:      the bottom-up factors (from `bottom_up`), per layer (B, D_i).
        noise:  optional list of standard normal draws (S, B, D_i) per layer (bottom first).
        Returns (z, q, p), lists bottom first: z_i (S, B, D_i), q_i = (mu, logvar) of
        q(z_i | z_>i, x), p_i = (mu, logvar) of p(z_i | z_>i) (zeros at the top).

        Book: :eq:`ch7-inference`.
        """
        m = self.m
        z, q, p = [None] * m, [None] * m, [None] * m
        for i in reversed(range(m)):
            if i == m - 1:
                zero = torch.zeros_like(d[i][0])
                p[i], q[i] = (zero, zero), d[i]
            else:
                p[i] = self.prior(i, z[i + 1])
                q[i] = gaussian_product(*p[i], *d[i])
            mu, logvar = q[i]
            if noise is not None:
                eps = noise[i]
            else:
                shape = (n_samples, *mu.shape) if i == m - 1 else mu.shape
                eps = torch.randn(shape, device=mu.device, dtype=mu.dtype)
            z[i] = mu + torch.exp(0.5 * logvar) * eps
        return z, q, p

    # --- the ELBO and its per-layer KL -------------------------------------------------
    def elbo_terms(self, x: torch.Tensor, n_samples: int = 1) -> HierarchyTerms:
        """The ELBO with its KL split by layer (chapter 7's decomposition):

            KL(q(z|x) || p(z)) = KL(q(z_m|x) || p(z_m))
                + sum_{i<m} E_{q(z_>i|x)} KL(q(z_i | z_>i, x) || p(z_i | z_>i)),

        each inner KL analytic at the sampled z_>i, the outer expectations by the same
        samples. x: (B, 1, 28, 28) binary; n_samples: z draws per image.

        Book: :eq:`ch7-kl-layers`.
        """
        n_samples = checks.count("n_samples", n_samples)
        z, q, p = self.top_down(self.bottom_up(x), n_samples)
        kls = []
        for i in range(self.m):
            kl = kl_gaussian(*q[i], *p[i]).sum(-1)
            kls.append(kl.mean(0) if kl.dim() == 2 else kl)  # (S, B) -> (B,)
        rec = self.log_likelihood(x, z[0]).mean(0)
        return HierarchyTerms(rec, torch.stack(kls, -1), z)

    # --- the two halves of the importance-weighted estimate ----------------------------
    def sample_q(self, x: torch.Tensor, k: int):
        """k draws z ~ q(z|x) and log q(z|x): x (B, ...) -> ([z_i (k, B, D_i)], (k, B))."""
        z, q, _ = self.top_down(self.bottom_up(x), k)
        log_q = sum(gaussian_log_density(zi, *qi) for zi, qi in zip(z, q, strict=True))
        return z, log_q

    def log_prior(self, z: list) -> torch.Tensor:
        """log p(z) = log p(z_m) + sum_{i<m} log p(z_i | z_{i+1}): [(S, B, D_i)] -> (S, B)."""
        top = z[-1]
        lp = -0.5 * (top.pow(2) + LOG_2PI).sum(-1)
        for i in range(self.m - 1):
            lp = lp + gaussian_log_density(z[i], *self.prior(i, z[i + 1]))
        return lp

    def log_joint(self, x: torch.Tensor, z: list) -> torch.Tensor:
        """log p(x, z) = log p(z) + log p(x | z_1): x (B, ...), [(S, B, D_i)] -> (S, B).

        Book: :eq:`ch7-generative`.
        """
        return self.log_prior(z) + self.log_likelihood(x, z[0])

    # --- generating ----------------------------------------------------------------------
    def generate(self, noise: list) -> list:
        """The generative path from standard normal noise: z_m = eps_m, then z_i = mu_p +
        sigma_p eps_i. noise: [(..., D_i)] bottom first -> [z_i (..., D_i)] bottom first.

        Fixing some layers' noise and redrawing the others shows what each layer encodes.
        """
        if len(noise) != self.m:
            raise ValueError(f"need noise for each of the {self.m} layers, got {len(noise)}")
        z = [None] * self.m
        z[-1] = noise[-1]
        for i in reversed(range(self.m - 1)):
            mu, logvar = self.prior(i, z[i + 1])
            z[i] = mu + torch.exp(0.5 * logvar) * noise[i]
        return z

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images from the model, E[x | z_1]: (n, 1, 28, 28) (see `mean_image`)."""
        n = checks.count("n (the number of samples)", n, minimum=0)
        device = next(self.parameters()).device
        if n == 0:  # as VAE.sample(0): an empty batch, not a reshape error
            return torch.zeros(0, 1, 28, 28, device=device)
        noise = [torch.randn(n, d, generator=generator).to(device) for d in self.latent_dims]
        return self.mean_image(self.generate(noise)[0])


class MarkovianHVAE(_ImageModel):
    """The Markovian hierarchy: bottom-up inference, top-down generation, T layers of size D.

        q(z_{1:T} | x) = q(z_1 | x) prod_{t=2}^T q(z_t | z_{t-1})
        p(x, z_{1:T})  = p(z_T) prod_{t=2}^T p(z_{t-1} | z_t) p(x | z_1),  p(z_T) = N(0, I)

    Every conditional is a diagonal Gaussian from a small network (x -> hidden -> z_1 for
    q(z_1 | x), z -> step_hidden -> z for the steps); p(x | z_1) is Bernoulli as above.

    Book: :eq:`ch7-markov`, :eq:`ch8-markov-hvae`.
    """

    def __init__(self, T: int = 4, latent_dim: int = 16, hidden: int = 256,
                 step_hidden: int = 64, activation=nn.ReLU):
        super().__init__()
        for name, v in (("T", T), ("latent_dim", latent_dim), ("hidden", hidden),
                        ("step_hidden", step_hidden)):
            checks.count(name, v)
        self.T, self.latent_dim = T, latent_dim
        self.latent_dims = (latent_dim,) * T
        self.m = T
        self.encoder = _two_layer(N_PIXELS, hidden, 2 * latent_dim, activation)
        self.q_steps = nn.ModuleList(_two_layer(latent_dim, step_hidden, 2 * latent_dim,
                                                activation) for _ in range(T - 1))
        self.p_steps = nn.ModuleList(_two_layer(latent_dim, step_hidden, 2 * latent_dim,
                                                activation) for _ in range(T - 1))
        self.decoder = MLPDecoder(latent_dim, (hidden,), activation)

    def p_step(self, t: int, z_t: torch.Tensor):
        """p(z_{t-1} | z_t) for t = 2..T (1-based, as in the formulas): (mu, logvar)."""
        return tuple(self.p_steps[t - 2](z_t).chunk(2, dim=-1))

    def q_step(self, t: int, z_prev: torch.Tensor):
        """q(z_t | z_{t-1}) for t = 2..T: (mu, logvar)."""
        return tuple(self.q_steps[t - 2](z_prev).chunk(2, dim=-1))

    def _bottom_up(self, x: torch.Tensor, n_samples: int):
        """z_1 ~ q(z_1 | x), z_t ~ q(z_t | z_{t-1}): lists (z, log q per layer), bottom first."""
        self._check_input(x)
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, dim=-1)
        z, log_q = [], []
        for t in range(1, self.T + 1):
            if t > 1:
                mu, logvar = self.q_step(t, z[-1])
            eps = torch.randn((n_samples, *mu.shape) if t == 1 else mu.shape,
                              device=mu.device, dtype=mu.dtype)
            z.append(mu + torch.exp(0.5 * logvar) * eps)
            log_q.append(gaussian_log_density(z[-1], mu, logvar))
        return z, log_q

    def _log_p_layers(self, z: list) -> list:
        """log p(z_t | z_{t+1}) for t < T and log p(z_T), bottom first: each (S, B)."""
        out = [gaussian_log_density(z[t - 2], *self.p_step(t, z[t - 1]))
               for t in range(2, self.T + 1)]
        out.append(-0.5 * (z[-1].pow(2) + LOG_2PI).sum(-1))
        return out

    def elbo_terms(self, x: torch.Tensor, n_samples: int = 1) -> HierarchyTerms:
        """ELBO = E_q[log p(x | z_1)] - sum_t E_q[log q(z_t | z_{t-1}) - log p(z_t | z_{t+1})]
        (z_0 = x, p(z_T | z_{T+1}) = p(z_T)), every term by Monte Carlo. The per-step terms
        are not KL divergences and can be negative: only their sum is fixed. Chapter 8
        regroups them into true KLs with q(z_{t-1} | z_t, x)."""
        z, log_q = self._bottom_up(x, checks.count("n_samples", n_samples))
        log_p = self._log_p_layers(z)
        steps = torch.stack([(lq - lp).mean(0) for lq, lp in zip(log_q, log_p, strict=True)],
                            -1)
        return HierarchyTerms(self.log_likelihood(x, z[0]).mean(0), steps, z)

    def sample_q(self, x: torch.Tensor, k: int):
        """k draws z ~ q(z|x) and log q(z|x): x (B, ...) -> ([z_t (k, B, D)], (k, B))."""
        z, log_q = self._bottom_up(x, k)
        return z, sum(log_q)

    def log_joint(self, x: torch.Tensor, z: list) -> torch.Tensor:
        """log p(x, z): x (B, ...), [(S, B, D)] -> (S, B)."""
        return sum(self._log_p_layers(z)) + self.log_likelihood(x, z[0])

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images: z_T ~ N(0, I), z_{t-1} ~ p(z_{t-1} | z_t), E[x | z_1]: (n, 1, 28, 28)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator).to(device)
        for t in range(self.T, 1, -1):
            mu, logvar = self.p_step(t, z)
            eps = torch.randn(mu.shape, generator=generator).to(device)
            z = mu + torch.exp(0.5 * logvar) * eps
        return torch.sigmoid(self.decode(z))


class HierarchyLoss:
    """The training loss for `companion.train.fit`: -(reconstruction - beta_t * rate).

    warmup_steps:  KL warm-up: beta_t = min(1, step / warmup_steps), from `fit`'s `step`
                   (counted across resumes, so the loss keeps no state).
    free_bits:     nats per latent dimension that each layer may spend for free (Kingma et
                   al., 2016): the rate of layer i enters as max(free_bits * D_i, its batch
                   mean KL), so the gradient stops pushing a layer onto its prior once it is
                   that cheap, and an upper layer is not switched off before it is used.
                   0 gives the ELBO.
    binarize:      draw a fresh binarization of every batch (dynamic binarization).

    Logs reconstruction, kl, elbo (the true ELBO, whatever the weighting), beta and the
    batch mean KL of every layer (kl1 = bottom).
    """

    def __init__(self, warmup_steps: int = 0, free_bits: float = 0.0, binarize: bool = True,
                 generator: torch.Generator | None = None):
        if not (warmup_steps >= 0 and free_bits >= 0 and math.isfinite(free_bits)):
            raise ValueError(f"warmup_steps and free_bits must be >= 0, got {warmup_steps}, "
                             f"{free_bits}")
        self.warmup_steps, self.free_bits = warmup_steps, free_bits
        self.binarize, self.generator = binarize, generator

    def beta_at(self, step: int | None) -> float:
        """beta_t: linear warm-up from 0 to 1 over warmup_steps, then 1 (1 without step)."""
        if self.warmup_steps == 0 or step is None:
            return 1.0
        return min(1.0, step / self.warmup_steps)

    def __call__(self, model, x: torch.Tensor, step: int | None = None):
        if self.binarize:
            x = binarize(x, generator=self.generator)
        terms = model.elbo_terms(x)
        rec, kl_layers = terms.reconstruction.mean(), terms.kl_layers.mean(0)   # (), (m,)
        rate = kl_layers
        if self.free_bits > 0:  # python floats: no host-to-device copy per step
            rate = torch.stack([kl.clamp_min(self.free_bits * d)
                                for kl, d in zip(kl_layers, model.latent_dims, strict=True)])
        beta = self.beta_at(step)
        kl = kl_layers.sum()
        logs = {"reconstruction": rec, "kl": kl, "elbo": rec - kl, "beta": beta}
        logs.update({f"kl{i + 1}": v for i, v in enumerate(kl_layers.detach())})
        return -(rec - beta * rate.sum()), logs
