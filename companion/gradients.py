"""Monte Carlo gradients of E_{z ~ q}[f(z)] in the parameters of q = N(mu, diag(std^2)).

Two unbiased estimators, one sample each (average S of them for an S-sample estimate):

score function (REINFORCE):  f(z) * grad log q(z),            needs only values of f;
pathwise (reparameterized):  grad f(mu + std * eps),           needs the gradient of f.

Both return per-sample gradient estimates so their variance can be measured.
"""

from __future__ import annotations

import math

import torch


def _check(mu: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor):
    if mu.shape != log_std.shape or mu.dim() != 1:
        raise ValueError(f"mu and log_std must be (K,) vectors of the same shape, got "
                         f"{tuple(mu.shape)} and {tuple(log_std.shape)}")
    if eps.dim() != 2 or eps.shape[1] != mu.shape[0]:
        raise ValueError(f"eps must have shape (S, K) with K = {mu.shape[0]}, "
                         f"got {tuple(eps.shape)}")


def score_function_grads(f, mu: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor,
                         baseline: float = 0.0):
    """Per-sample REINFORCE estimates of grad_{mu, log_std} E_q[f(z)].

    f: (S, K) -> (S,) (values only, no gradient needed); eps: (S, K) standard normal.
    With z = mu + std * eps:  grad_mu log q = eps / std,  grad_log_std log q = eps^2 - 1.
    `baseline` is subtracted from f (still unbiased, since E_q[grad log q] = 0).
    Returns (g_mu (S, K), g_log_std (S, K)).

    Book: :eq:`ch4-score`.
    """
    _check(mu, log_std, eps)
    with torch.no_grad():
        std = log_std.exp()
        fz = f(mu + std * eps) - baseline  # (S,)
        return fz[:, None] * eps / std, fz[:, None] * (eps.pow(2) - 1)


def pathwise_grads(f, mu: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor):
    """Per-sample reparameterization estimates of grad_{mu, log_std} E_q[f(z)].

    f: (S, K) -> (S,), differentiable; eps: (S, K). With z = mu + std * eps the chain rule
    gives grad_mu = f'(z) and grad_log_std = f'(z) * std * eps (samples are independent,
    so one backward pass of the sum yields every per-sample f'(z)).
    Returns (g_mu (S, K), g_log_std (S, K)).

    Book: :eq:`ch4-pathwise`.
    """
    _check(mu, log_std, eps)
    std = log_std.detach().exp()
    z = (mu.detach() + std * eps).requires_grad_(True)
    (fz_grad,) = torch.autograd.grad(f(z).sum(), z)
    return fz_grad, fz_grad * std * eps


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """H(N(mu, diag(std^2))) = sum_i log std_i + K/2 log(2 pi e); its gradient in log std is 1.

    Book: :eq:`ch4-entropy-term`.
    """
    return log_std.sum(-1) + 0.5 * log_std.shape[-1] * (math.log(2 * math.pi) + 1)


def gauss_hermite_expectation(f, mean: torch.Tensor, chol: torch.Tensor,
                              n_points: int = 5) -> torch.Tensor:
    """E_{z ~ N(mean, L L^T)}[f(z)] by the product Gauss-Hermite rule (float64).

    Exact when f is a polynomial of degree <= 2 n_points - 1 in each coordinate (for example
    any quadratic, such as the log-density of a Gaussian). mean: (B, K), chol: (K, K) or
    (B, K, K) lower-triangular; f: (N, B, K) -> (N, B). Returns (B,).
    """
    import numpy as np

    if mean.dim() != 2:
        raise ValueError(f"mean must be (B, K), got {tuple(mean.shape)}")
    K = mean.shape[1]
    if n_points ** K > 1_000_000:
        raise ValueError(f"{n_points}^{K} nodes is too many; use fewer points or a smaller K")
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_points)  # weight exp(-u^2 / 2)
    nodes = torch.tensor(nodes, dtype=torch.float64)
    weights = torch.tensor(weights / math.sqrt(2 * math.pi), dtype=torch.float64)
    grid = torch.cartesian_prod(*[nodes] * K).reshape(-1, K)  # (N, K)
    w = torch.cartesian_prod(*[weights] * K).reshape(-1, K).prod(-1)  # (N,)
    L = chol.expand(len(mean), K, K)
    z = mean + torch.einsum("bkl,nl->nbk", L, grid)  # (N, B, K)
    return (w[:, None] * f(z)).sum(0)
