"""The chapter-9 U-Net: shapes, clear errors, the time embedding, presets, FLOP counts."""

import math

import pytest
import torch
from torch import nn

from companion.diffusion import Diffusion, linear_betas
from companion.models.unet import (
    PRESETS,
    Attention,
    UNet,
    UNetConfig,
    flops_per_image,
    n_params,
    preset,
    timestep_embedding,
)


def _randomize(model):
    """Zero-initialized output layers make a fresh U-Net output 0; give every weight a value."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.slow
def test_output_shape_for_every_preset():
    for name in PRESETS:
        model = UNet(preset(name)).eval()
        out = model(torch.randn(3, 1, 28, 28), torch.tensor([1, 500, 1000]))
        assert out.shape == (3, 1, 28, 28), name


def test_preset_parameter_counts_are_the_documented_ones():
    # the numbers in unet.py's PRESETS comment and the chapter-9 report
    counts = {name: n_params(UNet(preset(name))) for name in PRESETS}
    assert counts == {"tiny": 168_921, "cpu": 670_001, "gpu": 14_931_585}


@pytest.mark.slow
def test_flops_match_a_count_by_hand():
    """flop_counter against 2 * multiply-adds of every conv, linear and attention product."""
    model = UNet(preset("tiny")).eval()
    macs = []

    def conv_hook(m, inp, out):
        macs.append(out.numel() * m.in_channels // m.groups * math.prod(m.kernel_size))

    def linear_hook(m, inp, out):
        macs.append(out.numel() * m.in_features)

    def attn_hook(m, inp, out):
        B, C, H, W = inp[0].shape
        macs.append(2 * B * (H * W) ** 2 * C)  # q k^T and attention @ v, all heads

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
        elif isinstance(m, Attention):
            m.register_forward_hook(attn_hook)
    with torch.no_grad():
        model(torch.zeros(4, 1, 28, 28), torch.ones(4, dtype=torch.long))
    by_hand = 2 * sum(macs) / 4
    assert flops_per_image(model, batch=3) == pytest.approx(by_hand, rel=1e-9)


def test_time_embedding_formula():
    t = torch.tensor([0, 1, 7])
    e = timestep_embedding(t, 8)
    assert e.shape == (3, 8)
    freqs = 10_000.0 ** (-torch.arange(4) / 4)
    expected = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], 1)
    torch.testing.assert_close(e, expected.float())
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(t, 7)


@pytest.mark.slow
def test_the_network_depends_on_t_and_on_x():
    model = _randomize(UNet(preset("tiny"))).eval()
    x = torch.randn(2, 1, 28, 28)
    a = model(x, torch.tensor([1, 1]))
    b = model(x, torch.tensor([900, 900]))
    c = model(torch.randn(2, 1, 28, 28), torch.tensor([1, 1]))
    scale = a.abs().max()
    assert (a - b).abs().max() > 0.05 * scale
    assert (a - c).abs().max() > 0.05 * scale


@pytest.mark.slow
def test_images_do_not_mix_in_a_batch():
    """GroupNorm and attention act per image: a batch's outputs are the single outputs."""
    model = _randomize(UNet(preset("tiny"))).eval()
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([3, 50, 999])
    with torch.no_grad():
        together = model(x, t)
        alone = torch.cat([model(x[i:i + 1], t[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_clear_errors():
    model = UNet(preset("tiny", T=100))
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        model(torch.randn(2, 784), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        model(torch.randn(2, 1, 32, 32), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"1\.\.T = 1\.\.100"):
        model(x, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"1\.\.T = 1\.\.100"):
        model(x, torch.tensor([5, 101]))
    with pytest.raises(TypeError, match="integer"):
        model(x, torch.tensor([0.5, 0.2]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        model(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
    with pytest.raises(ValueError, match="three"):
        UNet(UNetConfig(channels=(8, 16)))


@pytest.mark.slow
def test_a_few_steps_of_algorithm_1_lower_the_loss():
    torch.manual_seed(0)
    diffusion = Diffusion(linear_betas(100, 1e-3, 0.2))
    model = UNet(preset("tiny", T=100))
    x0 = torch.zeros(8, 1, 28, 28) - 1
    x0[:, :, 8:20, 12:16] = 1  # a bar: an easy image to denoise
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def loss():
        return diffusion.simple_loss(model, x0, generator=g)

    with torch.no_grad():
        before = sum(loss().item() for _ in range(5)) / 5
    for _ in range(40):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = sum(loss().item() for _ in range(5)) / 5
    assert before == pytest.approx(1.0, abs=0.05)  # a fresh U-Net predicts eps = 0
    assert after < 0.6 * before


def test_dtype_check_lets_autocast_through():
    """Under autocast the U-Net takes bfloat16 images with float32 weights (the dtype check
    defers to autocast); outside it a mismatch is a clear error, not a matmul failure."""
    model = UNet(preset("tiny", T=10)).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 5])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x.bfloat16(), t).shape == (2, 1, 28, 28)
    with pytest.raises(TypeError, match="torch.bfloat16 but the U-Net's weights"):
        model(x.bfloat16(), t)


def test_trunk_is_the_network_below_the_embedding():
    torch.manual_seed(0)
    net = UNet(preset("tiny", T=100), num_classes=10)
    with torch.no_grad():  # zero-initialized layers would hide any difference
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t, y = torch.randn(3, 1, 28, 28), torch.tensor([1, 50, 100]), torch.tensor([0, 4, 9])
    emb = net.time_mlp(timestep_embedding(t, net.config.channels[0])) + net.label_emb(y)
    with torch.no_grad():
        assert torch.allclose(net.trunk(x, emb), net(x, t, y), atol=1e-6)
        other = net.trunk(x, emb + 1.0)  # another conditioning vector reaches the output
    assert not torch.allclose(other, net(x, t, y), atol=1e-3)
