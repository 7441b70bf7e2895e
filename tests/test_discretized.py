"""The discretized decoder: a probability over the 256 levels of every pixel."""

import pytest
import torch

from companion.models.vae import VAE, quantize_8bit, to_8bit_range

LEVELS = torch.arange(256) / 127.5 - 1  # -1 + 2k/255


def test_to_8bit_range_maps_levels_exactly():
    x01 = torch.arange(256).float().view(1, 1, 16, 16) / 255
    x = to_8bit_range(x01)
    assert torch.equal(x.flatten(), LEVELS.float())
    assert torch.equal(quantize_8bit(x + 0.3 / 255), x)  # nearest level


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_pixel_probabilities_sum_to_one_over_the_levels(arch):
    """sum_k P(x_pixel = level_k | z) = 1 for every pixel, whatever the decoder outputs."""
    torch.manual_seed(0)
    model = VAE(4, arch=arch, likelihood="discretized", hidden=(32,), channels=(4, 8))
    out = model.decode(torch.randn(1, 4)) * 3  # means far and near, scales large and small
    assert out.shape == (1, 2, 28, 28)
    total = torch.zeros(1, 1, 28, 28, dtype=torch.float64)
    for level in LEVELS:
        x = torch.full((1, 1, 28, 28), float(level))
        # log_likelihood sums over pixels; per pixel: one pixel image at a time is slow,
        # so read per-pixel terms from an image whose pixels all sit at this level
        ll = model.log_likelihood(x, out)  # (1,)
        per_pixel = _per_pixel(model, x, out)
        assert torch.allclose(per_pixel.sum(), ll[0].double(), rtol=1e-5)
        total += per_pixel.exp()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


def _per_pixel(model, x, out):
    from companion.diffusion import discretized_gaussian_log_likelihood
    from companion.models.vae import MIN_LOG_SCALE

    mean, log_scale = out[:, :1], out[:, 1:].clamp_min(MIN_LOG_SCALE)
    return discretized_gaussian_log_likelihood(x, mean, log_scale).double()


def test_sharp_decoder_on_the_data_costs_nothing_and_off_by_one_level_a_lot():
    """Mean on the pixel's level, tiny scale: P = 1 (0 bits); one level off: P ~ 0."""
    model = VAE(2, likelihood="discretized", hidden=(8,))
    x = to_8bit_range(torch.randint(0, 256, (1, 1, 28, 28)) / 255.0)
    out = torch.cat([x, torch.full_like(x, -7.0)], dim=1)
    assert float(model.log_likelihood(x, out)) > -0.02  # tails beyond 4.3 std: 2e-5 a pixel
    shifted = torch.cat([x + 2 / 255, torch.full_like(x, -7.0)], dim=1)
    inner = (x > -1) & (x < 1)
    # the mean sits 4.3 standard deviations beyond the bin's edge: about -11 nats a pixel
    assert float(model.log_likelihood(x, shifted)) < -10 * float(inner.sum())


def test_samples_lie_on_the_levels():
    model = VAE(3, likelihood="discretized", hidden=(16,))
    x = model.sample(5, mean=False, generator=torch.Generator().manual_seed(0))
    k = (x + 1) * 127.5
    assert x.shape == (5, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert torch.allclose(k, k.round(), atol=1e-4)
