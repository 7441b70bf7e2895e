"""Walking in a latent space: grids, interpolation, editing, re-encoding, an explorer widget.

Every function returns latent codes or images; the notebooks draw them with
`companion.plot.image_grid`. Codes are (N, D) tensors; images (N, 1, 28, 28).
"""

from __future__ import annotations

import torch
from torch import distributions as D


def lerp(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    """Straight line from z0 to z1: (D,), (D,) -> (steps, D), endpoints included."""
    if z0.shape != z1.shape or z0.dim() != 1:
        raise ValueError(f"z0 and z1 must be two codes of the same shape (D,), got "
                         f"{tuple(z0.shape)} and {tuple(z1.shape)}")
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (the two endpoints), got {steps}")
    t = torch.linspace(0, 1, steps, dtype=z0.dtype, device=z0.device).unsqueeze(1)
    return (1 - t) * z0 + t * z1


def bilinear(corners: torch.Tensor, n: int) -> torch.Tensor:
    """An n x n grid of codes blending four corner codes bilinearly.

    corners: (4, D) in the order top-left, top-right, bottom-left, bottom-right.
    Returns (n * n, D), row by row: row 0 runs from top-left to top-right.
    """
    if corners.dim() != 2 or len(corners) != 4:
        raise ValueError(f"corners must be (4, D): top-left, top-right, bottom-left, "
                         f"bottom-right; got shape {tuple(corners.shape)}")
    t = torch.linspace(0, 1, n, dtype=corners.dtype, device=corners.device)
    v, u = torch.meshgrid(t, t, indexing="ij")  # v: down the rows, u: along a row
    v, u = v.reshape(-1, 1), u.reshape(-1, 1)
    tl, tr, bl, br = corners
    return (1 - v) * ((1 - u) * tl + u * tr) + v * ((1 - u) * bl + u * br)


def gaussian_grid(n: int, coverage: float = 0.9, dtype=torch.float32) -> torch.Tensor:
    """An n x n grid over a 2-D standard normal latent, evenly spaced in probability.

    The coordinates are the normal quantiles of n evenly spaced levels covering the central
    `coverage` of each axis, so every cell holds about the same prior mass. Returns
    (n * n, 2), row by row from the top: z2 decreases down the rows, z1 increases along them.
    """
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must lie in (0, 1), got {coverage}")
    levels = torch.linspace((1 - coverage) / 2, (1 + coverage) / 2, n, dtype=torch.float64)
    q = D.Normal(0.0, 1.0).icdf(levels).to(dtype)
    z2, z1 = torch.meshgrid(q.flip(0), q, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], 1)


def vary_dimension(z: torch.Tensor, dim: int, values) -> torch.Tensor:
    """Copies of one code z (D,) with coordinate `dim` set to each of `values` -> (len, D)."""
    if z.dim() != 1:
        raise ValueError(f"z must be one code of shape (D,), got {tuple(z.shape)}")
    if not 0 <= dim < len(z):
        raise ValueError(f"dim must be in [0, {len(z)}), got {dim}")
    values = torch.as_tensor(values, dtype=z.dtype, device=z.device)
    out = z.repeat(len(values), 1)
    out[:, dim] = values
    return out


@torch.no_grad()
def reencode(model, z: torch.Tensor, rounds: int, sample: bool = False,
             generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Decode, encode, decode again, `rounds` times; returns the decoder means of every round.

    z: (N, D) -> a list of rounds + 1 image batches (N, 1, 28, 28): entry 0 is the decoding
    of z, entry r the decoding after r trips through the encoder (its mean). What the encoder
    sees is the decoded mean image, or with sample=True a draw x ~ p(x|z) (binary for a
    Bernoulli decoder: the kind of image the encoder was trained on).
    """
    images = [model.mean_image(z)]
    for _ in range(rounds):
        x = model.sample_x(model.decode(z), generator) if sample else images[-1]
        z = model.encode(x)[0]
        images.append(model.mean_image(z))
    return images


@torch.no_grad()
def decode_point(model, z_base: torch.Tensor, dims, values) -> torch.Tensor:
    """The mean image of z_base (D,) with the coordinates `dims` set to `values`: (1, 28, 28)."""
    z = z_base.clone()
    for d, v in zip(dims, values, strict=True):
        z[d] = float(v)
    return model.mean_image(z.unsqueeze(0))[0]


def latent_explorer(model, dims, z_base: torch.Tensor | None = None, span: float = 3.0):
    """Sliders for the latent coordinates `dims` (other coordinates stay at z_base, default 0);
    shows the decoded mean image. Needs ipywidgets and a live kernel."""
    import ipywidgets as W
    import matplotlib.pyplot as plt

    device = next(model.parameters()).device
    z_base = torch.zeros(model.latent_dim, device=device) if z_base is None else z_base
    sliders = [W.FloatSlider(value=float(z_base[d]), min=-span, max=span, step=0.05,
                             description=f"z[{d}]") for d in dims]
    out = W.Output()

    def redraw(_=None):
        image = decode_point(model, z_base, dims, [s.value for s in sliders])
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(2.5, 2.5))
            ax.imshow(image[0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            plt.show()

    for s in sliders:
        s.observe(redraw, names="value")
    redraw()
    return W.HBox([W.VBox(sliders), out])
