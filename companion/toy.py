"""Toy latent-variable models where log p(x) and p(z|x) are known exactly.

`LinearGaussian`: z ~ N(0, I_K), x | z ~ N(W z + b, sigma^2 I_D)  (probabilistic PCA).
Its marginal is N(b, W W^T + sigma^2 I_D) and its posterior is Gaussian, so the ELBO, the
gap log p(x) - ELBO and KL(q(z|x) || p(z|x)) can all be computed in closed form.
"""

from __future__ import annotations

import math

import torch
from torch import distributions as D

from .run import checks

LOG_2PI = math.log(2 * math.pi)


def _as_float(t, name: str, dtype=None) -> torch.Tensor:
    """A floating tensor; Python numbers and lists become float64 (the exact checks need it)."""
    if not torch.is_tensor(t):
        t = torch.as_tensor(t, dtype=dtype or torch.float64)
    if not t.is_floating_point():
        t = t.to(dtype or torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} has non-finite entries")
    return t


class LinearGaussian:
    """z ~ N(0, I_K), x | z ~ N(W z + b, sigma^2 I_D): the linear Gaussian latent model.

    W: (D, K), b: (D,), sigma: float > 0 (the decoder noise standard deviation), or a 0-dim
    tensor, kept as it is so that gradients flow to it as they do to tensors W and b.
    Tensors keep their dtype; lists and numbers become float64.
    """

    def __init__(self, W, b, sigma: float):
        W = _as_float(W, "W")
        if W.dim() != 2:
            raise ValueError(f"W must be a (D, K) matrix, got shape {tuple(W.shape)}")
        b = _as_float(b, "b", W.dtype).to(W.dtype)
        if b.shape != (W.shape[0],):
            raise ValueError(f"b must have shape (D,) = ({W.shape[0]},) to match W "
                             f"{tuple(W.shape)}, got {tuple(b.shape)}")
        if torch.is_tensor(sigma) and sigma.numel() != 1:
            raise ValueError(f"sigma must be one number, got shape {tuple(sigma.shape)}")
        value = float(sigma.detach()) if torch.is_tensor(sigma) else float(sigma)
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"sigma is a standard deviation and must be > 0, got {value}")
        if torch.is_tensor(sigma):
            sigma = sigma.to(W.dtype).reshape(())
        self.W, self.b, self.sigma = W, b, sigma
        self.D, self.K = W.shape

    # --- the generative model -------------------------------------------------------------
    def _log_sigma(self):
        return torch.log(torch.as_tensor(self.sigma, dtype=self.W.dtype))

    def _check_x(self, x) -> torch.Tensor:
        x = _as_float(x, "x", self.W.dtype).to(self.W.dtype)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != self.D:
            raise ValueError(f"x must have shape (B, D) with D = {self.D}, got {tuple(x.shape)}")
        return x

    def _check_z(self, z) -> torch.Tensor:
        z = _as_float(z, "z", self.W.dtype).to(self.W.dtype)
        if z.dim() == 1:
            z = z.unsqueeze(0)
        if z.shape[-1] != self.K:
            raise ValueError(f"z must have last dimension K = {self.K}, got {tuple(z.shape)}")
        return z

    def decoder_mean(self, z) -> torch.Tensor:
        """f(z) = W z + b.  z: (..., K) -> (..., D)."""
        return self._check_z(z) @ self.W.T + self.b

    def sample(self, n: int, generator: torch.Generator | None = None):
        """n draws of the joint: returns (z (n, K), x (n, D))."""
        n = checks.count("n", n)  # NumPy integers too
        kw = dict(dtype=self.W.dtype, device=self.W.device, generator=generator)
        z = torch.randn(n, self.K, **kw)
        x = z @ self.W.T + self.b + self.sigma * torch.randn(n, self.D, **kw)
        return z, x

    def log_prior(self, z) -> torch.Tensor:
        """log N(z; 0, I_K).  z: (..., K) -> (...)."""
        z = self._check_z(z)
        return -0.5 * (z.pow(2).sum(-1) + self.K * LOG_2PI)

    def log_likelihood(self, x, z) -> torch.Tensor:
        """log N(x; W z + b, sigma^2 I_D).  x: (B, D), z: (B, K) or (S, B, K) -> (B,) / (S, B)."""
        x = self._check_x(x)
        r = x - self.decoder_mean(z)
        return -0.5 * (r.pow(2).sum(-1) / self.sigma**2
                       + self.D * (LOG_2PI + 2 * self._log_sigma()))

    def log_joint(self, x, z) -> torch.Tensor:
        """log p(x, z) = log p(z) + log p(x | z).  x: (B, D), z: (B, K) -> (B,)."""
        return self.log_prior(z) + self.log_likelihood(x, z)

    # --- exact marginal and posterior -----------------------------------------------------
    def marginal_cov(self) -> torch.Tensor:
        """Cov[x] = W W^T + sigma^2 I_D: (D, D)."""
        eye = torch.eye(self.D, dtype=self.W.dtype, device=self.W.device)
        return self.W @ self.W.T + self.sigma**2 * eye

    def marginal(self) -> D.MultivariateNormal:
        """p(x) = N(b, W W^T + sigma^2 I_D) as a torch distribution."""
        return D.MultivariateNormal(self.b, covariance_matrix=self.marginal_cov())

    def log_marginal(self, x) -> torch.Tensor:
        """Exact log p(x).  x: (B, D) -> (B,).

        Computed by Cholesky of W W^T + sigma^2 I (not through torch.distributions, so the
        tests can compare the two).

        Book: :eq:`ch3-marginal`.
        """
        x = self._check_x(x)
        L = torch.linalg.cholesky(self.marginal_cov())
        r = torch.linalg.solve_triangular(L, (x - self.b).T, upper=False)  # (D, B)
        logdet = 2 * torch.log(torch.diagonal(L)).sum()
        return -0.5 * (r.pow(2).sum(0) + logdet + self.D * LOG_2PI)

    def posterior_cov(self) -> torch.Tensor:
        """Cov[z | x] = (I_K + W^T W / sigma^2)^-1: (K, K), the same for every x."""
        eye = torch.eye(self.K, dtype=self.W.dtype, device=self.W.device)
        prec = eye + self.W.T @ self.W / self.sigma**2
        return torch.cholesky_inverse(torch.linalg.cholesky(prec))

    def posterior(self, x):
        """p(z | x) = N(mean, cov): mean (B, K) = cov W^T (x - b) / sigma^2, cov (K, K)."""
        x = self._check_x(x)
        cov = self.posterior_cov()
        mean = (x - self.b) @ self.W @ cov / self.sigma**2  # cov is symmetric
        return mean, cov

    def posterior_dist(self, x) -> D.MultivariateNormal:
        """p(z | x) as a batch of torch MultivariateNormal distributions (batch shape (B,))."""
        mean, cov = self.posterior(x)
        return D.MultivariateNormal(mean, covariance_matrix=cov.expand(len(mean), -1, -1))

    # --- the ELBO of a Gaussian q(z|x), in closed form ------------------------------------
    def elbo_gaussian(self, x, q_mean, q_cov) -> torch.Tensor:
        """ELBO for q(z|x) = N(q_mean, q_cov), exactly (no sampling).

        x: (B, D), q_mean: (B, K), q_cov: (K, K) or (B, K, K) -> (B,).
        = E_q[log p(x|z)] - KL(q || N(0, I)), with
          E_q[log p(x|z)] = -1/(2 s^2) (|x - W m - b|^2 + tr(W S W^T)) - D/2 log(2 pi s^2).

        Book: :eq:`ch3-recon-kl`.
        """
        x = self._check_x(x)
        m = self._check_z(q_mean)
        S = _as_float(q_cov, "q_cov", self.W.dtype).to(self.W.dtype)
        if S.shape[-2:] != (self.K, self.K):
            raise ValueError(f"q_cov must be (K, K) or (B, K, K) with K = {self.K}, "
                             f"got {tuple(S.shape)}")
        S = S.expand(len(x), self.K, self.K)
        r = x - self.decoder_mean(m)
        tr_wsw = torch.einsum("dk,bkl,dl->b", self.W, S, self.W)
        recon = -0.5 * ((r.pow(2).sum(-1) + tr_wsw) / self.sigma**2
                        + self.D * (LOG_2PI + 2 * self._log_sigma()))
        logdet = torch.logdet(S)
        kl = 0.5 * (torch.diagonal(S, dim1=-2, dim2=-1).sum(-1) + m.pow(2).sum(-1)
                    - self.K - logdet)
        return recon - kl


class GaussianMixture:
    """z ~ Categorical(weights), x | z = k ~ N(means[k], stds[k]^2 I_D).

    weights: (K,) summing to 1, means: (K, D), stds: (K,) or a float (shared).
    Everything is a finite sum over k, so log p(x), p(z|x) and the ELBO of any
    categorical q(z|x) are exact.
    """

    def __init__(self, weights, means, stds):
        means = _as_float(means, "means")
        if means.dim() != 2:
            raise ValueError(f"means must be a (K, D) matrix, got shape {tuple(means.shape)}")
        K = means.shape[0]
        weights = _as_float(weights, "weights", means.dtype).to(means.dtype)
        stds = _as_float(stds, "stds", means.dtype).to(means.dtype)
        if stds.dim() == 0:
            stds = stds.expand(K).clone()
        if weights.shape != (K,) or stds.shape != (K,):
            raise ValueError(f"weights and stds must have shape (K,) = ({K},) to match means "
                             f"{tuple(means.shape)}; got {tuple(weights.shape)} and "
                             f"{tuple(stds.shape)}")
        if (weights < 0).any() or abs(weights.sum().item() - 1) > 1e-6:
            raise ValueError(f"weights must be non-negative and sum to 1, got {weights.tolist()}")
        if (stds <= 0).any():
            raise ValueError(f"stds must be > 0, got {stds.tolist()}")
        self.weights, self.means, self.stds = weights, means, stds
        self.K, self.D = means.shape

    def _check_x(self, x) -> torch.Tensor:
        x = _as_float(x, "x", self.means.dtype).to(self.means.dtype)
        if x.dim() == 1 and self.D == 1:
            x = x.unsqueeze(-1)
        if x.dim() != 2 or x.shape[1] != self.D:
            raise ValueError(f"x must have shape (B, D) with D = {self.D}, got {tuple(x.shape)}")
        return x

    def _check_q(self, q, B: int) -> torch.Tensor:
        q = _as_float(q, "q", self.means.dtype).to(self.means.dtype)
        if q.shape != (B, self.K):
            raise ValueError(f"q must hold one categorical distribution per x: shape "
                             f"({B}, {self.K}), got {tuple(q.shape)}")
        if (q < 0).any() or not torch.allclose(q.sum(-1), torch.ones(B, dtype=q.dtype),
                                               atol=1e-9):
            raise ValueError("each row of q must be non-negative and sum to 1")
        return q

    def sample(self, n: int, generator: torch.Generator | None = None):
        """n draws of the joint: (z (n,) int64 component labels, x (n, D))."""
        n = checks.count("n", n)  # NumPy integers too
        z = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return z, self.decode(z, generator)

    def decode(self, z, generator: torch.Generator | None = None) -> torch.Tensor:
        """The sampling decoder: one x ~ p(x | z) per label.  z: (n,) int64 -> (n, D)."""
        z = torch.as_tensor(z)
        noise = torch.randn(len(z), self.D, dtype=self.means.dtype, generator=generator)
        return self.means[z] + self.stds[z, None] * noise

    def log_prior(self) -> torch.Tensor:
        """log p(z = k): (K,)."""
        return torch.log(self.weights)

    def log_likelihood(self, x) -> torch.Tensor:
        """log p(x | z = k) for every k: x (B, D) -> (B, K)."""
        x = self._check_x(x)
        sq = torch.cdist(x, self.means).pow(2)  # (B, K)
        var = self.stds.pow(2)
        return -0.5 * (sq / var + self.D * torch.log(2 * math.pi * var))

    def log_joint(self, x) -> torch.Tensor:
        """log p(x, z = k) for every k: x (B, D) -> (B, K)."""
        return self.log_likelihood(x) + self.log_prior()

    def log_marginal(self, x) -> torch.Tensor:
        """Exact log p(x) = log sum_k p(k) p(x | k): (B, D) -> (B,).

        Book: :eq:`ch3-marginal`.
        """
        return torch.logsumexp(self.log_joint(x), dim=-1)

    def log_posterior(self, x) -> torch.Tensor:
        """log p(z = k | x) by Bayes' rule: (B, D) -> (B, K)."""
        lj = self.log_joint(x)
        return lj - torch.logsumexp(lj, dim=-1, keepdim=True)

    def posterior(self, x) -> torch.Tensor:
        """p(z = k | x) (the responsibilities): (B, D) -> (B, K), rows sum to 1."""
        return self.log_posterior(x).exp()

    def map_encode(self, x) -> torch.Tensor:
        """The MAP encoder: argmax_k p(z = k | x).  (B, D) -> (B,) int64."""
        return self.log_joint(x).argmax(-1)  # p(x) does not depend on k

    # --- the ELBO of a categorical q(z|x): exact sums --------------------------------------
    def reconstruction(self, x, q) -> torch.Tensor:
        """E_q[log p(x | z)] = sum_k q_k log p(x | k).  x: (B, D), q: (B, K) -> (B,).

        Book: :eq:`ch3-recon-kl`.
        """
        x = self._check_x(x)
        q = self._check_q(q, len(x))
        return (q * self.log_likelihood(x)).sum(-1)

    def kl_to_prior(self, q) -> torch.Tensor:
        """KL(q(z|x) || p(z)), with 0 log 0 = 0.  q: (B, K) -> (B,)."""
        q = _as_float(q, "q", self.means.dtype).to(self.means.dtype)
        safe = torch.where(q > 0, q, torch.ones_like(q))
        return (q * (torch.log(safe) - self.log_prior())).sum(-1)

    def elbo(self, x, q) -> torch.Tensor:
        """E_q[log p(x, z) - log q(z|x)] as one sum over k (0 log 0 = 0).  -> (B,).

        Book: :eq:`ch3-jensen`.
        """
        x = self._check_x(x)
        q = self._check_q(q, len(x))
        safe = torch.where(q > 0, q, torch.ones_like(q))
        return (q * (self.log_joint(x) - torch.log(safe))).sum(-1)


# --- a Gaussian mixture under the diffusion's forward process ------------------------------
def _mixture_at(gm: GaussianMixture, x, alpha_bar):
    """Checked x (B, D) and the noisy components at alpha_bar: means (B|1, K, D), vars (B|1, K).

    alpha_bar: a float or a tensor (B,) (one noise level per point), each in (0, 1].
    """
    x = gm._check_x(x)
    ab = torch.as_tensor(alpha_bar, dtype=x.dtype, device=x.device)
    if ab.dim() == 0:
        ab = ab.reshape(1)
    if ab.dim() != 1 or len(ab) not in (1, len(x)):
        raise ValueError(f"alpha_bar must be a number or a tensor of shape ({len(x)},), got "
                         f"shape {tuple(ab.shape)}")
    if not bool(((ab > 0) & (ab <= 1)).all()):  # NaN fails both comparisons
        raise ValueError("alpha_bar must lie in (0, 1]")
    means = ab.sqrt()[:, None, None] * gm.means.to(x)                      # (B|1, K, D)
    var = ab[:, None] * gm.stds.to(x).pow(2) + (1 - ab[:, None])           # (B|1, K)
    return x, means, var


def _mixture_log_joint(gm: GaussianMixture, x, means, var):
    sq = (x[:, None, :] - means).pow(2).sum(-1)                            # (B, K)
    return torch.log(gm.weights.to(x)) - 0.5 * (sq / var + gm.D * torch.log(2 * math.pi * var))


def diffused_log_density(gm: GaussianMixture, x, alpha_bar) -> torch.Tensor:
    """log q_t(x) of x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps with x_0 ~ gm.

    q_t = sum_k w_k N(sqrt(alpha_bar) mu_k, (alpha_bar s_k^2 + 1 - alpha_bar) I): again a
    mixture. x: (B, D) -> (B,); alpha_bar = 1 gives gm's own log density.
    """
    x, means, var = _mixture_at(gm, x, alpha_bar)
    return torch.logsumexp(_mixture_log_joint(gm, x, means, var), dim=-1)


def diffused_score(gm: GaussianMixture, x, alpha_bar) -> torch.Tensor:
    """grad_x log q_t(x) in closed form: sum_k r_k(x) (m_k - x) / v_k.  x: (B, D) -> (B, D).

    r_k(x) are the responsibilities of the noisy components (m_k, v_k) at alpha_bar.
    """
    x, means, var = _mixture_at(gm, x, alpha_bar)
    r = torch.softmax(_mixture_log_joint(gm, x, means, var), dim=-1)      # (B, K)
    return ((r / var)[:, :, None] * (means - x[:, None, :])).sum(1)


def diffused_posterior_mean(gm: GaussianMixture, x, alpha_bar) -> torch.Tensor:
    """E[x_0 | x_t = x] in closed form, the denoiser Tweedie's formula gives from the score.

    Given x_t and component k, x_0 is Gaussian with mean
    mu_k + sqrt(alpha_bar) s_k^2 / v_k (x - sqrt(alpha_bar) mu_k), v_k = alpha_bar s_k^2 +
    1 - alpha_bar; the posterior mean weights these by the responsibilities r_k(x) of the
    noisy components. x: (B, D) -> (B, D); alpha_bar = 1 gives x itself.

    Book: :eq:`ch16-mixture-posterior-mean`.
    """
    x, means, var = _mixture_at(gm, x, alpha_bar)
    r = torch.softmax(_mixture_log_joint(gm, x, means, var), dim=-1)      # (B, K)
    ab = torch.as_tensor(alpha_bar, dtype=x.dtype, device=x.device).reshape(-1)
    gain = ab.sqrt()[:, None] * gm.stds.to(x).pow(2) / var                # (B|1, K)
    each = gm.means.to(x) + gain[:, :, None] * (x[:, None, :] - means)   # (B, K, D)
    return (r[:, :, None] * each).sum(1)


# --- the mixture's components as classes: the exact noisy classifier -------------------------
# Beside diffused_score because they are the same closed form (the noisy components' means,
# variances and responsibilities); companion.score combines any scores, these are the toy's.
def _check_class(gm: GaussianMixture, y, B: int) -> torch.Tensor:
    """y, the class of every point: an int or an integer tensor () or (B,), in 0..K - 1."""
    if not torch.is_tensor(y):
        y = torch.tensor(checks.count("y (a class, a component of the mixture)", y,
                                      minimum=0, maximum=gm.K - 1))
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.dim() > 1 \
            or y.numel() not in (1, B):
        raise checks.ArgumentError(f"y must be an integer class or one per point ({B},), got "
                                   f"{y.dtype} of shape {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= gm.K:
        raise checks.ArgumentError(f"y must be a class of the mixture, in 0..{gm.K - 1}, got "
                                   f"values in {int(y.min())}..{int(y.max())}")
    return y.long().reshape(-1).expand(B)


def diffused_log_posterior(gm: GaussianMixture, x, alpha_bar) -> torch.Tensor:
    """log p_t(y = k | x): the exact noisy classifier, the responsibilities of the noisy
    components at alpha_bar.  x: (B, D) -> (B, K), rows log-summing to 0.
    """
    x, means, var = _mixture_at(gm, x, alpha_bar)
    return torch.log_softmax(_mixture_log_joint(gm, x, means, var), dim=-1)


def diffused_log_posterior_grad(gm: GaussianMixture, x, y, alpha_bar) -> torch.Tensor:
    """grad_x log p_t(y | x) = (m_y - x) / v_y - sum_k r_k(x) (m_k - x) / v_k.

    The gradient of the log-softmax of the noisy components' log-joints l_k, whose
    gradients are (m_k - x) / v_k. x: (B, D), y: an int or (B,) classes -> (B, D).

    Book: :eq:`ch16-noisy-classifier`.
    """
    x, means, var = _mixture_at(gm, x, alpha_bar)
    y = _check_class(gm, y, len(x))
    r = torch.softmax(_mixture_log_joint(gm, x, means, var), dim=-1)      # (B, K)
    grads = (means - x[:, None, :]) / var[:, :, None]                    # (B, K, D)
    own = grads[torch.arange(len(x)), y]                                  # (B, D)
    return own - (r[:, :, None] * grads).sum(1)


def diffused_conditional_score(gm: GaussianMixture, x, y, alpha_bar) -> torch.Tensor:
    """grad_x log p_t(x | y) = (m_y - x) / v_y: the score of the noisy component y alone.

    x: (B, D), y: an int or (B,) classes -> (B, D).
    """
    x, means, var = _mixture_at(gm, x, alpha_bar)
    y = _check_class(gm, y, len(x))
    means, var = means.expand(len(x), -1, -1), var.expand(len(x), -1)
    i = torch.arange(len(x))
    return (means[i, y] - x) / var[i, y][:, None]


class NoisePredictorMLP(torch.nn.Module):
    """eps_theta(x_t, t) for low-dimensional toy data: an MLP on [x_t, embedding(t)].

    x: (B, D), t: (B,) int64 steps in 1..T -> (B, D). The step enters through sinusoidal
    features sin(t w_j), cos(t w_j), w_j = T^(-j / (n - 1)) pi / 2, j = 0..n-1 (periods from
    about 4 steps to about 4T), so every step gets its own embedding.
    """

    def __init__(self, dim: int = 2, T: int = 1000, hidden: int = 128, depth: int = 3,
                 n_freq: int = 16):
        super().__init__()
        if dim < 1 or T < 1 or hidden < 1 or depth < 1 or n_freq < 2:
            raise ValueError("dim, T, hidden and depth must be positive and n_freq >= 2")
        self.dim, self.T = dim, T
        j = torch.arange(n_freq, dtype=torch.float32)
        self.register_buffer("freqs", math.pi / 2 * float(T) ** (-j / (n_freq - 1)))
        layers, width = [], dim + 2 * n_freq
        for _ in range(depth):
            layers += [torch.nn.Linear(width, hidden), torch.nn.SiLU()]
            width = hidden
        layers.append(torch.nn.Linear(width, dim))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        if t.shape != (len(x),):
            raise ValueError(f"t must have shape ({len(x)},), one step per row of x, got "
                             f"{tuple(t.shape)}")
        angle = t.to(self.freqs.dtype)[:, None] * self.freqs
        h = torch.cat([x.to(self.freqs.dtype), torch.sin(angle), torch.cos(angle)], dim=1)
        return self.net(h).to(x.dtype)


class BinaryTable:
    """A distribution over D binary pixels given by its table of 2^D probabilities: the
    exact toy of chapter 14, where log p(x) and every conditional p(x_i | x_R) are known.

    probs: (2^D,) non-negative, summing to 1; entry m is the image whose pixel i is bit i
    of m. D <= 16. `denoiser` is the optimal denoiser of masked diffusion, the exact
    conditionals; `from_prototypes` builds a structured one.
    """

    def __init__(self, probs):
        p = _as_float(probs, "probs").double()
        D = int(round(math.log2(max(len(p), 1)))) if p.dim() == 1 else -1
        if p.dim() != 1 or 2 ** D != len(p) or not 1 <= D <= 16:
            raise ValueError(f"probs must be a table of 2^D probabilities, D in 1..16, got "
                             f"shape {tuple(p.shape)}")
        if (p < 0).any() or abs(float(p.sum()) - 1) > 1e-9:
            raise ValueError(f"probs must be non-negative and sum to 1, got sum "
                             f"{float(p.sum()):.6g}, min {float(p.min()):.3g}")
        self.D, self.probs = D, p
        from .masked import all_masks

        self.states = all_masks(D).double()  # row m: the bits of m
        self._log_marginals = None

    @classmethod
    def from_prototypes(cls, prototypes, weights, flip: float) -> BinaryTable:
        """A mixture of binary prototypes (K, D), each pixel flipped with probability flip."""
        from .masked import all_masks

        protos = _as_float(prototypes, "prototypes")
        w = _as_float(weights, "weights").double()
        flip = checks.real("flip", flip, low=0.0, high=0.5, open_low=True)
        states = all_masks(protos.shape[1]).double()
        agree = (states[:, None] == protos[None]).double()            # (2^D, K, D)
        like = (agree * (1 - flip) + (1 - agree) * flip).prod(-1)     # (2^D, K)
        return cls(like @ (w / w.sum()))

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """The table entry of binary images x (B, D) -> (B,) int64."""
        checks.tensor("x", x, dims=2)
        if x.shape[1] != self.D:
            raise ValueError(f"x must have {self.D} pixels per image, got {tuple(x.shape)}")
        return (x.long() << torch.arange(self.D, device=x.device)).sum(1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x), (B, D) binary -> (B,) float64."""
        return self.probs.log().to(x.device)[self.index(x)]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images drawn from the table, (n, D) float64 in {0, 1}."""
        i = torch.multinomial(self.probs, checks.count("n", n), replacement=True,
                              generator=generator)
        return self.states[i]

    def entropy(self) -> float:
        """H(p) = -sum p log p, nats: the expected negative log-likelihood under p."""
        p = self.probs[self.probs > 0]
        return float(-(p * p.log()).sum())

    def log_marginals(self) -> torch.Tensor:
        """L[S, m] = log p(x_S) at image m, for every subset S (bits of S: the pixels kept),
        (2^D, 2^D) float64: the log-probability of the pixels in S, the others summed out."""
        if self._log_marginals is None:
            D = self.D
            logp = self.probs.log().view((2,) * D)  # axis D-1-i is pixel i (bit order)
            rows = []
            for S in range(2 ** D):
                out = [D - 1 - i for i in range(D) if not S >> i & 1]
                m = torch.logsumexp(logp, dim=out, keepdim=True) if out else logp
                rows.append(m.expand((2,) * D).reshape(-1))
            self._log_marginals = torch.stack(rows)
        return self._log_marginals

    def denoiser(self, z: torch.Tensor) -> torch.Tensor:
        """The exact denoiser: logit p(x_i = 1 | the revealed pixels of z), for every pixel.

        z: (B, D) states, 0, 1 or companion.masked.MASK -> (B, D) float64 logits (for a
        revealed pixel, the logit of its own value given the others revealed, unused)."""
        from .masked import MASK, check_states

        # a sampler asked for another D (sampler_law(toy.denoiser, 4, ...)) ends here
        check_states(f"z (the states of this table's D = {self.D} pixels; a sampler or bound "
                     "given another D?)", z, shape=(self.D,))
        L = self.log_marginals().to(z.device)
        bit = 1 << torch.arange(self.D, device=z.device)
        revealed = z != MASK
        x = torch.where(revealed, z, torch.zeros_like(z))
        idx = (x.long() * bit).sum(1, keepdim=True)                   # (B, 1)
        kept = (revealed.long() * bit).sum(1, keepdim=True)           # S = R
        S = kept | bit                                                # R + {i}
        on, off = idx | bit, idx & ~bit
        return (L[S, on] - L[S, off]).to(torch.float64)


class CategoricalTable:
    """A distribution over D positions of K values each (a short sequence of codes), given
    by its table of K^D probabilities: chapter 19's exact toy for masked diffusion over
    codes, where log p(x) and every conditional p(x_i | x_R) are known.

    probs: (K^D,) non-negative, summing to 1; entry m is the sequence whose position i is
    digit i of m in base K (position 0 the lowest digit: at K = 2 the bit order of
    `BinaryTable`). K >= 2, D >= 1, K^D <= 2^16. `denoiser` gives the exact conditionals.
    """

    def __init__(self, probs, K: int):
        K = checks.count("K (the number of values of a position)", K, minimum=2)
        p = _as_float(probs, "probs").double()
        D = round(math.log(max(len(p), 1)) / math.log(K)) if p.dim() == 1 else -1
        if p.dim() != 1 or D < 1 or K ** D != len(p) or len(p) > 2 ** 16:
            raise ValueError(f"probs must be a table of K^D = {K}^D probabilities (at most "
                             f"2^16 entries), got shape {tuple(p.shape)}")
        if (p < 0).any() or abs(float(p.sum()) - 1) > 1e-9:
            raise ValueError(f"probs must be non-negative and sum to 1, got sum "
                             f"{float(p.sum()):.6g}, min {float(p.min()):.3g}")
        self.K, self.D, self.probs = K, D, p
        self.states = torch.arange(K ** D)[:, None] // K ** torch.arange(D) % K  # (K^D, D)

    @classmethod
    def from_prototypes(cls, prototypes, weights, flip: float, K: int) -> CategoricalTable:
        """A mixture of prototype sequences (P, D) of codes 0..K-1, each position replaced,
        with probability flip, by one of the K - 1 other values, uniformly (at K = 2:
        `BinaryTable.from_prototypes`)."""
        K = checks.count("K", K, minimum=2)
        protos = torch.as_tensor(prototypes).long()
        if protos.dim() != 2 or int(protos.min()) < 0 or int(protos.max()) >= K:
            raise ValueError(f"prototypes must be (P, D) codes 0..{K - 1}, got shape "
                             f"{tuple(protos.shape)}")
        w = _as_float(weights, "weights").double()
        flip = checks.real("flip", flip, low=0.0, high=1 - 1 / K, open_low=True)
        states = torch.arange(K ** protos.shape[1])[:, None] // K ** torch.arange(
            protos.shape[1]) % K
        agree = (states[:, None] == protos[None]).double()            # (K^D, P, D)
        like = (agree * (1 - flip) + (1 - agree) * flip / (K - 1)).prod(-1)
        return cls(like @ (w / w.sum()), K)

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """The table entry of code sequences x (B, D) -> (B,) int64."""
        checks.tensor("x", x, dims=2)
        if x.shape[1] != self.D:
            raise ValueError(f"x must have {self.D} positions, got {tuple(x.shape)}")
        return (x.long() * self.K ** torch.arange(self.D, device=x.device)).sum(1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x), (B, D) codes -> (B,) float64."""
        return self.probs.log().to(x.device)[self.index(x)]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n sequences drawn from the table, (n, D) int64."""
        i = torch.multinomial(self.probs, checks.count("n", n), replacement=True,
                              generator=generator)
        return self.states[i]

    def entropy(self) -> float:
        """H(p) = -sum p log p, nats."""
        p = self.probs[self.probs > 0]
        return float(-(p * p.log()).sum())

    def denoiser(self, z: torch.Tensor) -> torch.Tensor:
        """The exact denoiser: log p(x_i = k | the revealed positions of z), every i and k.

        z: (B, D) states, codes 0..K-1 or companion.masked.MASK -> (B, K, D) float64,
        normalized log-probabilities (valid logits). At a revealed position the mass sits
        on its own value (the others get -inf), unused by the bound and the samplers. Sums
        the table over the sequences that agree with the revealed positions: (B, K^D, D)
        comparisons, for toys."""
        from .masked import MASK, check_code_states

        check_code_states(f"z (the states of this table's D = {self.D} positions; a sampler "
                          "or bound given another D?)", z, self.K, shape=(self.D,))
        states = self.states.to(z.device)
        agree = ((states[None] == z[:, None]) | (z[:, None] == MASK)).all(-1)  # (B, K^D)
        onehot = torch.nn.functional.one_hot(states, self.K).double()       # (K^D, D, K)
        mass = torch.einsum("bn,ndk->bkd", agree.double() * self.probs.to(z.device), onehot)
        return mass.log() - mass.sum(1, keepdim=True).log()
