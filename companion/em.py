"""Variational EM for the Gaussian mixture of `companion.toy`.

E-step: for fixed parameters, maximize the ELBO in q  ->  q(z|x) = p(z|x) (exact here).
M-step: for fixed q, maximize the ELBO in the parameters  ->  weighted maximum likelihood,
        as if the labels were observed with weights q (supervised learning on soft labels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .toy import GaussianMixture


def e_step(model: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """The optimal q for fixed parameters: the exact posterior p(z|x).  -> (B, K)."""
    return model.posterior(x)


def m_step(x: torch.Tensor, q: torch.Tensor, min_std: float = 1e-3) -> GaussianMixture:
    """Parameters maximizing sum_i ELBO(x_i, q_i) for fixed q: weighted ML estimates.

    x: (B, D), q: (B, K)  ->  GaussianMixture with weights N_k / B, means the q-weighted
    means and per-component isotropic stds sqrt(sum_i q_ik |x_i - m_k|^2 / (D N_k)).
    """
    if x.dim() != 2 or q.dim() != 2 or len(x) != len(q):
        raise ValueError(f"x must be (B, D) and q (B, K) with the same B, got "
                         f"{tuple(x.shape)} and {tuple(q.shape)}")
    n_k = q.sum(0)  # (K,) soft counts
    if (n_k < 1e-8 * len(x)).any():
        raise ValueError(f"a component has no responsibility left (soft counts "
                         f"{n_k.tolist()}); start EM from another initialization")
    means = (q.T @ x) / n_k[:, None]
    sq = torch.cdist(x, means).pow(2)  # (B, K)
    stds = ((q * sq).sum(0) / (x.shape[1] * n_k)).sqrt().clamp_min(min_std)
    return GaussianMixture(n_k / len(x), means, stds)


@dataclass
class EMHistory:
    """Per iteration t (parameters theta_t, E-step q_t = p_theta_t(z|x)), data totals:

    loglik[t]      = sum_i log p_theta_t(x_i)                 (= ELBO(theta_t, q_t))
    elbo_after_m[t] = sum_i ELBO(theta_{t+1}, q_t; x_i)        (after the M-step, before the
                                                               next E-step)
    models[t]      = theta_t
    """

    loglik: list[float] = field(default_factory=list)
    elbo_after_m: list[float] = field(default_factory=list)
    models: list[GaussianMixture] = field(default_factory=list)


def variational_em(x: torch.Tensor, init: GaussianMixture, iterations: int) -> EMHistory:
    """Alternate E- and M-steps `iterations` times from `init`; record both objectives.

    Returns an EMHistory with iterations + 1 log-likelihoods and `iterations` ELBOs after
    the M-step. EM guarantees loglik[t] <= elbo_after_m[t] <= loglik[t + 1].

    Book: :eq:`ch3-free-energy`, :eq:`ch3-em-sandwich`.
    """
    model = init
    hist = EMHistory()
    for _ in range(iterations):
        q = e_step(model, x)
        hist.models.append(model)
        hist.loglik.append(model.log_marginal(x).sum().item())
        model = m_step(x, q)
        hist.elbo_after_m.append(model.elbo(x, q).sum().item())
    hist.models.append(model)
    hist.loglik.append(model.log_marginal(x).sum().item())
    return hist
