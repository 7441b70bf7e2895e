"""Kullback-Leibler divergences: the definitions, the Gaussian closed forms, estimators.

KL(p || q) = sum_x p(x) log(p(x) / q(x)), with 0 log 0 = 0, and +inf when p puts mass
where q has none (the support condition supp(p) ⊆ supp(q) fails).
"""

from __future__ import annotations

import math

import torch
from torch import distributions as D

from .run import checks


def _as_tensor(name: str, v, dtype=None) -> torch.Tensor:
    """v (a tensor, a number or a list of numbers) as a tensor, refusing None, strings and
    NaN with the argument's name."""
    if not torch.is_tensor(v):
        try:
            v = torch.as_tensor(v, dtype=dtype)
        except (TypeError, ValueError, RuntimeError):
            raise checks.ArgumentError(f"{name} must be a tensor or numbers, got "
                                       f"{type(v).__name__} {v!r:.40}") from None
    elif dtype is not None:
        v = v.to(dtype)
    if v.is_floating_point() and torch.isnan(v).any():
        raise checks.ArgumentError(f"{name} holds NaN")
    return v


def kl_discrete(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) for probability vectors along the last dimension.

    p, q: (..., K), each summing to 1  ->  (...,). Terms with p = 0 are 0 (0 log 0 = 0);
    a p > 0 where q = 0 gives +inf.

    Book: :eq:`ch2-kl-discrete`.
    """
    p, q = _as_tensor("p", p), _as_tensor("q", q)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and "
                         f"{tuple(q.shape)}")
    if (p < 0).any() or (q < 0).any():
        raise ValueError("probabilities must be non-negative")
    for name, v in (("p", p), ("q", q)):
        total = v.sum(-1)
        if not torch.allclose(total, torch.ones_like(total), atol=1e-6):
            raise ValueError(f"{name} must sum to 1 along the last dimension; "
                             f"sums are {total.flatten()[:4].tolist()}")
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p))
    return terms.sum(-1)


def kl_normal(mu_p, var_p, mu_q, var_q) -> torch.Tensor:
    """KL(N(mu_p, var_p) || N(mu_q, var_q)) for univariate Gaussians, elementwise.

    = 1/2 [ log(var_q / var_p) + (var_p + (mu_p - mu_q)^2) / var_q - 1 ]

    Book: :eq:`ch2-kl-gauss`.
    """
    mu_p, var_p, mu_q, var_q = (
        _as_tensor(name, t, None if torch.is_tensor(t) else torch.get_default_dtype())
        for name, t in (("mu_p", mu_p), ("var_p", var_p), ("mu_q", mu_q), ("var_q", var_q)))
    if (var_p <= 0).any() or (var_q <= 0).any():
        raise ValueError(f"variances must be positive, got var_p min {float(var_p.min()):g} and "
                         f"var_q min {float(var_q.min()):g}; kl_normal takes variances "
                         "(sigma**2), not standard deviations or log-variances")
    return 0.5 * (torch.log(var_q / var_p) + (var_p + (mu_p - mu_q) ** 2) / var_q - 1.0)


def kl_diag_standard(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per latent dimension (the VAE's KL term).

    mu, logvar: (B, D)  ->  (B, D); sum over the last dim for the total.
    = 1/2 [ mu^2 + exp(logvar) - 1 - logvar ]

    Book: :eq:`ch2-kl-mvn`.
    """
    checks.tensor("mu", mu)
    checks.tensor("logvar", logvar)
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape (B, D), got {tuple(mu.shape)} "
                         f"and {tuple(logvar.shape)}; an encoder's output splits in two with "
                         ".chunk(2, dim=-1)")
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def _cholesky(cov: torch.Tensor, name: str) -> torch.Tensor:
    lower, info = torch.linalg.cholesky_ex(cov)
    if (info != 0).any():
        raise ValueError(f"{name} is not a covariance matrix (symmetric positive definite): "
                         "its Cholesky factorization fails. Build one as A @ A.T + eps * I, "
                         "or check that you passed a covariance, not its square root")
    return lower


def kl_mvn(mu_p, cov_p, mu_q, cov_q) -> torch.Tensor:
    """KL(N(mu_p, cov_p) || N(mu_q, cov_q)) for full-covariance Gaussians.

    mu: (..., k), cov: (..., k, k)  ->  (...,).
    = 1/2 [ tr(S_q^-1 S_p) + (mu_q - mu_p)^T S_q^-1 (mu_q - mu_p) - k + log det S_q - log det S_p ]

    Book: :eq:`ch2-kl-mvn`.
    """
    k = mu_p.shape[-1]
    lq, lp = _cholesky(cov_q, "cov_q"), _cholesky(cov_p, "cov_p")
    # S_q^-1 S_p = L_q^-T L_q^-1 L_p L_p^T, so its trace is ||L_q^-1 L_p||_F^2
    m = torch.linalg.solve_triangular(lq, lp, upper=False)
    trace = m.pow(2).sum((-2, -1))
    diff = torch.linalg.solve_triangular(lq, (mu_q - mu_p).unsqueeze(-1), upper=False)
    maha = diff.pow(2).sum((-2, -1))
    logdet_q = 2 * torch.log(torch.diagonal(lq, dim1=-2, dim2=-1)).sum(-1)
    logdet_p = 2 * torch.log(torch.diagonal(lp, dim1=-2, dim2=-1)).sum(-1)
    return 0.5 * (trace + maha - k + logdet_q - logdet_p)


def kl_monte_carlo(p: D.Distribution, q: D.Distribution, n: int) -> tuple[float, float]:
    """Monte Carlo estimate of KL(p || q) = E_p[log p(x) - log q(x)] and its standard error.

    Needs samples of p and both log-densities; seed torch for a repeatable estimate.
    """
    n = checks.count("n (the number of samples)", n, minimum=2)
    x = p.sample((n,))
    r = p.log_prob(x) - q.log_prob(x)
    if r.dim() > 1:  # a batch of distributions: one estimate each
        return r.mean(0), r.std(0) / math.sqrt(n)
    return r.mean().item(), (r.std() / math.sqrt(n)).item()


def bernoulli_kl(a, b) -> torch.Tensor:
    """KL(Bernoulli(a) || Bernoulli(b)), elementwise, with 0 log 0 = 0.

    Book: :eq:`ch2-sanov`.
    """
    a, b = _as_tensor("a", a, torch.float64), _as_tensor("b", b, torch.float64)
    for name, v in (("a", a), ("b", b)):
        if ((v < 0) | (v > 1)).any():
            raise checks.ArgumentError(f"{name} must be a probability in [0, 1], got values "
                                       f"in [{float(v.min()):g}, {float(v.max()):g}]")
    return kl_discrete(torch.stack([a, 1 - a], -1), torch.stack([b, 1 - b], -1))


def binomial_log_prob_of_frequency(n, k, p: float) -> torch.Tensor:
    """log P(exactly k heads in n tosses of a coin with P(heads) = p), exact via lgamma.

    n, k: ints or tensors of the same shape.

    Book: :eq:`ch2-sanov`.
    """
    n, k = _as_tensor("n", n, torch.float64), _as_tensor("k", k, torch.float64)
    p = checks.probability("p", p)
    if ((k < 0) | (k > n)).any():
        raise ValueError("need 0 <= k <= n")
    log_choose = torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    if 0 < p < 1:
        return log_choose + k * math.log(p) + (n - k) * math.log1p(-p)
    # p = 0 or 1: 0 log 0 = 0, so a certain outcome has probability 1 and the other 0
    p = torch.tensor(p, dtype=torch.float64)
    return log_choose + torch.xlogy(k, p) + torch.special.xlog1py(n - k, -p)


def kl_quadrature(log_p, log_q, grid: torch.Tensor) -> torch.Tensor:
    """KL(p || q) for 1-D densities by the trapezoid rule on `grid` (deterministic).

    log_p, log_q: callables mapping (N,) points to (N,) log-densities; grid: (N,) sorted,
    wide enough to hold essentially all of p's mass.
    """
    grid = checks.tensor("grid", grid, dims=1, floating=True)
    if len(grid) < 2 or not bool((grid[1:] > grid[:-1]).all()):
        raise checks.ArgumentError("grid must be (N,) increasing points, N >= 2 (a decreasing "
                                   "grid would flip the integral's sign): torch.linspace(a, "
                                   "b, N) with a < b")
    lp, lq = log_p(grid), log_q(grid)
    integrand = torch.where(lp > -torch.inf, lp.exp() * (lp - lq), torch.zeros_like(lp))
    return torch.trapezoid(integrand, grid)


def gaussian_mixture_1d(weights, means, stds) -> D.MixtureSameFamily:
    """A 1-D Gaussian mixture as a torch distribution (has sample and log_prob)."""
    w, m, s = (torch.as_tensor(v, dtype=torch.float64) for v in (weights, means, stds))
    return D.MixtureSameFamily(D.Categorical(probs=w / w.sum()), D.Normal(m, s))


def moment_match(p: D.Distribution) -> D.Normal:
    """argmin over Gaussians q of the forward KL(p || q): the Gaussian with p's moments."""
    return D.Normal(p.mean, p.variance.sqrt())


def fit_reverse_kl(log_p, mu: float, log_sigma: float, *, steps: int = 600, n: int = 256,
                   lr: float = 0.05) -> D.Normal:
    """argmin over Gaussians q of the reverse KL(q || p), by reparameterized gradients.

    Needs only log p (up to a constant), evaluated at q's own samples x = mu + sigma * eps;
    starts from (mu, log_sigma), so it finds the mode it starts near.
    """
    params = torch.tensor([mu, log_sigma], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([params], lr=lr)
    for _ in range(steps):
        m, ls = params
        x = m + ls.exp() * torch.randn(n, dtype=torch.float64)
        # E_q[log q] is minus q's entropy: closed form, so only E_q[log p] is sampled.
        neg_entropy = -(ls + 0.5 * math.log(2 * math.pi * math.e))
        loss = neg_entropy - log_p(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m, ls = params.detach()
    return D.Normal(m, ls.exp())
