"""Interactive explorers for the ELBO chapters (each has a static figure beside it in the book).

The functions that compute what a widget shows are plain and tested; the widgets only wire
sliders to them.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from torch import distributions as D

from .affine_vae import pinned_gap
from .kl import kl_mvn
from .toy import LinearGaussian


def elbo_terms(model: LinearGaussian, x: torch.Tensor, mean, std) -> dict[str, float]:
    """Every quantity of the ELBO identity for q(z|x) = N(mean, diag(std^2)), exactly.

    x: (D,); mean, std: floats or (K,).  Returns log_px, elbo, gap = KL(q || p(z|x)),
    reconstruction = E_q[log p(x|z)] and kl_prior = KL(q || p(z)) (all in nats).

    Book: :eq:`ch3-identity`.
    """
    x = torch.as_tensor(x, dtype=model.W.dtype).reshape(1, -1)
    m = torch.as_tensor(mean, dtype=model.W.dtype).reshape(1, -1).expand(1, model.K)
    sd = torch.as_tensor(std, dtype=model.W.dtype).reshape(-1).expand(model.K)
    if (sd <= 0).any():
        raise ValueError(f"std must be > 0, got {sd.tolist()}")
    cov = torch.diag(sd**2)
    post_m, post_cov = model.posterior(x)
    zeros, eye = torch.zeros_like(m), torch.eye(model.K, dtype=m.dtype)
    kl_prior = kl_mvn(m, cov, zeros, eye)
    elbo = model.elbo_gaussian(x, m, cov)
    return {"log_px": model.log_marginal(x).item(), "elbo": elbo.item(),
            "gap": kl_mvn(m, cov, post_m, post_cov).item(),
            "reconstruction": (elbo + kl_prior).item(), "kl_prior": kl_prior.item()}


def plot_q_against_posterior(model: LinearGaussian, x, mean: float, std: float, axes=None):
    """Left: p(z|x), p(z) and q for a 1-D latent. Right: log p(x), ELBO and its two terms."""
    if model.K != 1:
        raise ValueError(f"this picture needs a 1-D latent (K = 1), got K = {model.K}")
    terms = elbo_terms(model, x, mean, std)
    pm, pc = model.posterior(torch.as_tensor(x, dtype=model.W.dtype).reshape(1, -1))
    grid = torch.linspace(-4, 4, 400, dtype=torch.float64)
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    ax.plot(grid, D.Normal(0.0, 1.0).log_prob(grid).exp(), ":", color="gray", label="p(z)")
    ax.plot(grid, D.Normal(pm[0, 0], pc[0, 0].sqrt()).log_prob(grid).exp(), lw=2,
            label="p(z|x)")
    ax.plot(grid, D.Normal(mean, std).log_prob(grid).exp(), lw=2, ls="--", label="q(z|x)")
    ax.set_xlabel("z")
    ax.legend(loc="upper left")
    ax = axes[1]
    names = ["log p(x)", "ELBO", "E_q log p(x|z)", "−KL(q‖p(z))"]
    vals = [terms["log_px"], terms["elbo"], terms["reconstruction"], -terms["kl_prior"]]
    ax.barh(names[::-1], vals[::-1], color=["C3", "C2", "C1", "C0"])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_title(f"gap = KL(q‖p(z|x)) = {terms['gap']:.3f} nats")
    ax.set_xlabel("nats")
    return axes, terms


def elbo_explorer(model: LinearGaussian, x):
    """Sliders for q's mean and std; shows q against p(z|x) and the ELBO's terms."""
    import ipywidgets as W

    out = W.Output()
    pm, pc = model.posterior(torch.as_tensor(x, dtype=model.W.dtype).reshape(1, -1))
    mean = W.FloatSlider(value=0.0, min=-3, max=3, step=0.05, description="mean of q")
    std = W.FloatSlider(value=1.0, min=0.05, max=2.5, step=0.05, description="std of q")
    hint = W.HTML(f"posterior: mean {pm[0, 0].item():.3f}, std {pc[0, 0].sqrt().item():.3f}")

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            plot_q_against_posterior(model, x, mean.value, std.value)
            plt.show()

    mean.observe(redraw, names="value")
    std.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([mean, std]), hint, out])


def pinned_samples(mu: float, sigma: float, s: float, n: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Samples x = sigma z + mu + s eps of the pinned decoder (1-D): their variance is
    sigma^2 + s^2, so any s > 0 widens them beyond the data's sigma^2.  -> (n,)."""
    z = torch.randn(n, dtype=torch.float64, generator=generator)
    eps = torch.randn(n, dtype=torch.float64, generator=generator)
    return sigma * z + mu + s * eps


def plot_pinned(mu: float, sigma: float, t: float, s: float, d: int, axes=None,
                n: int = 20_000, seed: int = 0):
    """Left: the pinned model's gap over (t, s) with the current point. Right: its samples
    (first coordinate) against the data density N(mu, sigma^2)."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    ts = torch.linspace(0.05, 2.0, 120, dtype=torch.float64)
    ss = torch.linspace(0.05, 1.8 * sigma, 120, dtype=torch.float64)
    T, S = torch.meshgrid(ts, ss, indexing="xy")
    gap = pinned_gap(d, sigma, T, S)
    ax = axes[0]
    cs = ax.contourf(T, S, torch.log10(gap), levels=20, cmap="viridis")
    plt.colorbar(cs, ax=ax, label="log10 gap (nats)")
    ax.plot(ts, sigma * ts, "w--", lw=1, label="s = σ t")
    ax.plot([1.0], [sigma], "r*", ms=12, label="(1, σ) of Example 1.6")
    ax.plot([t], [s], "wo", ms=7, mec="k", label=f"gap {pinned_gap(d, sigma, t, s).item():.3f}")
    ax.set_xlim(ts[0], ts[-1])
    ax.set_ylim(ss[0], ss[-1])
    ax.set_xlabel("encoder std t")
    ax.set_ylabel("decoder std s")
    ax.legend(loc="lower right", fontsize=8)
    ax = axes[1]
    xs = pinned_samples(mu, sigma, s, n, torch.Generator().manual_seed(seed))
    ax.hist(xs, bins=80, density=True, alpha=0.5, label=f"model samples, var {xs.var():.2f}")
    grid = torch.linspace(mu - 5 * sigma, mu + 5 * sigma, 300, dtype=torch.float64)
    ax.plot(grid, D.Normal(mu, sigma).log_prob(grid).exp(), "k", label=f"data, var {sigma**2:.2f}")
    ax.set_xlabel("x (one coordinate)")
    ax.legend(loc="upper right", fontsize=8)
    return axes


def pinned_explorer(mu: float, sigma: float, d: int):
    """Sliders for the encoder std t and decoder std s of Example 1.6's pinned model."""
    import ipywidgets as W

    out = W.Output()
    t = W.FloatSlider(value=1.0, min=0.05, max=1.6, step=0.05, description="encoder std t")
    s = W.FloatSlider(value=sigma, min=0.05, max=1.6 * sigma, step=0.05,
                      description="decoder std s")

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            plot_pinned(mu, sigma, t.value, s.value, d)
            plt.show()

    t.observe(redraw, names="value")
    s.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([t, s]), out])
