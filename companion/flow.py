"""Flow matching on the linear path (Lipman et al. 2023; Liu et al. 2023, rectified flow).

Time convention as in `companion.sde`: tau in [0, 1], tau = 0 the data, tau = 1 pure noise.
The conditional path and its velocity, for one data point x_0 and one noise draw eps:
    x_tau = (1 - tau) x_0 + tau eps,      d x_tau / d tau = eps - x_0.
Regressing a network v(x_tau, tau) on eps - x_0 over random (x_0, eps, tau) gives, at the
optimum, v(x, tau) = E[eps - x_0 | x_tau = x], the velocity whose ODE carries N(0, I) at
tau = 1 to the data at tau = 0 with the path's marginals at every tau. Along the path, a
prediction of eps and a velocity are affine in each other:
    v = (eps_hat - x_tau) / (1 - tau),   eps_hat = x_tau + (1 - tau) v,   x0_hat = x_tau - tau v.
A VP diffusion x_t = alpha x_0 + sigma eps is the same path rescaled: x_t / (alpha + sigma)
is the linear path at tau = sigma / (alpha + sigma).

The network: chapter 9's U-Net, which takes integer steps. It is trained at the K + 1 grid
times tau = k / K, k = 0..K, as steps k + 1 (a U-Net built with T = K + 1), and used at other
tau by linear interpolation between grid steps (`companion.sde.interpolate_steps`).
"""

from __future__ import annotations

import torch

from .run import checks
from .sde import _value, interpolate_steps


def linear_path(x0: torch.Tensor, eps: torch.Tensor, tau) -> torch.Tensor:
    """x_tau = (1 - tau) x_0 + tau eps.  x0, eps: (B, ...); tau a float or (B,).

    Shapes and times are checked, not x0's and eps's values: chapter 15's distillation
    losses call it at every training step (where `fit` refuses a non-finite loss).

    Book: :eq:`ch13-linear-path`.
    """
    tau = checks.path_pair("x0 and eps", checks.batch("x0", x0, min_dims=2), eps, tau)
    return _linear_path(x0, eps, tau)


def _finite(**tensors: torch.Tensor) -> None:
    """Each tensor refused, by its name, if it holds NaN or inf (checks.finite)."""
    for name, x in tensors.items():
        checks.finite(name, x)


def _linear_path(x0: torch.Tensor, eps: torch.Tensor, tau) -> torch.Tensor:
    """linear_path without its checks, for times and noise drawn here."""
    tau = _as_times(tau, x0)
    return (1 - tau) * x0 + tau * eps


def _as_times(tau, like: torch.Tensor) -> torch.Tensor:
    """tau, a float or (B,), shaped (B, 1, ..., 1) (or a 0-dim tensor) like `like`."""
    if torch.is_tensor(tau):
        return tau.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))
    return torch.tensor(tau, dtype=like.dtype, device=like.device)


def velocity_from_eps(eps_hat: torch.Tensor, x_tau: torch.Tensor, tau: float) -> torch.Tensor:
    """v = (eps_hat - x_tau) / (1 - tau), for tau < 1.

    Book: :eq:`ch13-v-from-eps`.
    """
    tau = checks.path_pair("eps_hat and x_tau", eps_hat, x_tau, tau, before_noise=True)
    _finite(eps_hat=eps_hat, x_tau=x_tau)
    return (eps_hat - x_tau) / (1 - tau)


def eps_from_velocity(v: torch.Tensor, x_tau: torch.Tensor, tau: float) -> torch.Tensor:
    """eps_hat = x_tau + (1 - tau) v."""
    tau = checks.path_pair("v and x_tau", v, x_tau, tau)
    _finite(v=v, x_tau=x_tau)
    return x_tau + (1 - _as_times(tau, v)) * v  # a tau (B,) shaped (B, 1, ..., 1)


def flow_matching_loss(model, x0: torch.Tensor, K: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """E |v(x_tau, tau) - (eps - x_0)|^2, tau = k / K with k uniform on 0..K, per element mean.

    Checks are on x0's type and shape, and for images their range (one reduction): this
    runs every training step.

    Args:
        model: (x (B, ...), step int64 (B,)) -> like x, called with step k + 1 in 1..K + 1 (a
            U-Net built with T = K + 1).
        x0: (B, ...) data (the digits on [-1, 1]).
        K: the number of grid intervals of tau (tau = k / K).
        generator: for tau and eps (default None: torch's global generator).

    Returns:
        A scalar, the mean squared error over every element of the batch.

    Book: :eq:`ch13-fm-loss`.
    """
    K = checks.grid_intervals(K, model)
    checks.data("x0", x0)  # images on [-1, 1], as the U-Net takes them
    k = torch.randint(0, K + 1, (len(x0),), device=x0.device, generator=generator)
    eps = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
    x_tau = _linear_path(x0, eps, k.to(x0.dtype) / K)  # eps and k / K drawn above: no checks
    v = _value(model, x_tau, k + 1, "the model", "a velocity")
    return (v.float() - (eps - x0).float()).pow(2).mean()


def velocity_field(model, K: int):
    """v(x, tau) for tau in [0, 1] from a model trained on the grid tau = k / K (steps k + 1)."""
    K = checks.grid_intervals(K, model)

    def field(x, tau):
        return interpolate_steps(model, x, checks.unit_time("tau", tau) * K + 1)
    return field


def uniform_grid(n_steps: int) -> list[float]:
    """n_steps + 1 times from tau = 1 (noise) down to 0 (data), evenly spaced; n_steps at
    most checks.MAX_GRID_STEPS = 100,000 (the book's longest solve has 4,000 steps)."""
    n_steps = checks.grid_steps("n_steps (a positive int)", n_steps)
    return [1 - k / n_steps for k in range(n_steps + 1)]


def vp_to_linear(alpha: float, sigma: float) -> tuple[float, float]:
    """The linear path's (tau, scale) for a VP point x_t = alpha x_0 + sigma eps:
    x_t / scale = (1 - tau) x_0 + tau eps with scale = alpha + sigma, tau = sigma / scale."""
    alpha, sigma = checks.weights("alpha", alpha, "sigma", sigma)
    scale = alpha + sigma
    return sigma / scale, scale

