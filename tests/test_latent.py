"""Tests of companion.latent."""

import pytest
import torch

from companion.latent import (
    bilinear,
    decode_point,
    gaussian_grid,
    latent_explorer,
    lerp,
    reencode,
    vary_dimension,
)
from companion.models.vae import VAE


def test_lerp_endpoints_and_midpoint():
    z0, z1 = torch.tensor([0.0, 2.0]), torch.tensor([4.0, -2.0])
    path = lerp(z0, z1, 5)
    assert path.shape == (5, 2)
    torch.testing.assert_close(path[0], z0)
    torch.testing.assert_close(path[-1], z1)
    torch.testing.assert_close(path[2], torch.tensor([2.0, 0.0]))
    with pytest.raises(ValueError, match="steps"):
        lerp(z0, z1, 1)


def test_bilinear_corners_and_centre():
    corners = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]) * 6
    grid = bilinear(corners, 3).view(3, 3, 2)
    torch.testing.assert_close(grid[0, 0], corners[0])
    torch.testing.assert_close(grid[0, -1], corners[1])
    torch.testing.assert_close(grid[-1, 0], corners[2])
    torch.testing.assert_close(grid[-1, -1], corners[3])
    torch.testing.assert_close(grid[1, 1], corners.mean(0))
    torch.testing.assert_close(grid[0, 1], (corners[0] + corners[1]) / 2)  # along the top row
    with pytest.raises(ValueError, match="corners"):
        bilinear(torch.zeros(3, 2), 3)


def test_gaussian_grid_is_spaced_in_probability():
    grid = gaussian_grid(5, coverage=0.9)
    assert grid.shape == (25, 2)
    z1, z2 = grid[:, 0].view(5, 5), grid[:, 1].view(5, 5)
    assert (z1[:, 1:] > z1[:, :-1]).all() and (z2[1:] < z2[:-1]).all()
    cdf = torch.distributions.Normal(0.0, 1.0).cdf(z1[0])
    torch.testing.assert_close(cdf, torch.linspace(0.05, 0.95, 5), atol=1e-6, rtol=0)
    assert z1[0, 2].abs() < 1e-6  # the centre of an odd grid is the prior's mode


def test_vary_dimension_changes_one_coordinate():
    z = torch.arange(4.0)
    out = vary_dimension(z, 2, [-1.0, 0.5])
    assert out.shape == (2, 4)
    assert out[:, 2].tolist() == [-1.0, 0.5]
    assert torch.equal(out[:, [0, 1, 3]], z[[0, 1, 3]].repeat(2, 1))
    with pytest.raises(ValueError, match="dim"):
        vary_dimension(z, 4, [0.0])


def test_decode_point_and_reencode():
    torch.manual_seed(0)
    model = VAE(latent_dim=3, hidden=(16,)).eval()
    z = torch.tensor([0.5, -1.0, 2.0])
    image = decode_point(model, torch.zeros(3), dims=[0, 1, 2], values=z.tolist())
    torch.testing.assert_close(image, model.mean_image(z.unsqueeze(0))[0])
    rounds = reencode(model, z.unsqueeze(0), rounds=2)
    assert len(rounds) == 3 and rounds[0].shape == (1, 1, 28, 28)
    torch.testing.assert_close(rounds[0], model.mean_image(z.unsqueeze(0)))
    again = model.mean_image(model.encode(rounds[0])[0])
    torch.testing.assert_close(rounds[1], again)
    sampled = reencode(model, z.unsqueeze(0), rounds=1, sample=True,
                       generator=torch.Generator().manual_seed(0))
    x = model.sample_x(model.decode(z.unsqueeze(0)), torch.Generator().manual_seed(0))
    torch.testing.assert_close(sampled[1], model.mean_image(model.encode(x)[0]))


def test_latent_explorer_builds():
    pytest.importorskip("ipywidgets")
    import matplotlib
    matplotlib.use("Agg")
    model = VAE(latent_dim=3, hidden=(16,)).eval()
    box = latent_explorer(model, dims=[0, 2])
    sliders = box.children[0].children
    assert [s.description for s in sliders] == ["z[0]", "z[2]"]
