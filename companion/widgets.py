"""Interactive explorers. Each has a static figure beside it in the book: no kernel there."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from .kl import kl_quadrature


def kl_surfaces(p, mus: torch.Tensor, log_sigmas: torch.Tensor, grid: torch.Tensor):
    """Forward KL(p||q) and reverse KL(q||p) for every Gaussian q = N(mu, exp(log_sigma)^2).

    mus: (M,), log_sigmas: (S,)  ->  two (S, M) tensors, by quadrature on `grid`.
    """
    fwd = torch.empty(len(log_sigmas), len(mus), dtype=torch.float64)
    rev = torch.empty_like(fwd)
    for i, ls in enumerate(log_sigmas):
        for j, m in enumerate(mus):
            q = torch.distributions.Normal(m, ls.exp())
            fwd[i, j] = kl_quadrature(p.log_prob, q.log_prob, grid)
            rev[i, j] = kl_quadrature(q.log_prob, p.log_prob, grid)
    return fwd, rev


def plot_fit(p, mu: float, sigma: float, grid: torch.Tensor, ax=None):
    """Draw p and the Gaussian q = N(mu, sigma^2) with both KL values in the title."""
    q = torch.distributions.Normal(torch.tensor(mu, dtype=torch.float64),
                                   torch.tensor(sigma, dtype=torch.float64))
    fwd = kl_quadrature(p.log_prob, q.log_prob, grid).item()
    rev = kl_quadrature(q.log_prob, p.log_prob, grid).item()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    ax.fill_between(grid, p.log_prob(grid).exp(), alpha=0.3, label="p (target)")
    ax.plot(grid, q.log_prob(grid).exp(), lw=2, label=f"q = N({mu:.2f}, {sigma:.2f}²)")
    ax.set_title(f"KL(p‖q) = {fwd:.3f}    KL(q‖p) = {rev:.3f}")
    ax.set_xlabel("x")
    ax.legend(loc="upper right")
    return ax, fwd, rev


def kl_explorer(p, grid: torch.Tensor):
    """Sliders for q's mean and standard deviation; shows both KL(p‖q) and KL(q‖p)."""
    import ipywidgets as W

    out = W.Output()
    mu = W.FloatSlider(value=0.0, min=-4, max=4, step=0.05, description="mean of q")
    sigma = W.FloatSlider(value=1.0, min=0.1, max=4, step=0.05, description="std of q")

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6, 3))
            plot_fit(p, mu.value, sigma.value, grid, ax=ax)
            plt.show()

    mu.observe(redraw, names="value")
    sigma.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([mu, sigma]), out])
