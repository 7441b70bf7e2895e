"""Chapter 16's guidance on the digits: the noise-aware classifier, classifier guidance as
a noise prediction (exact on the toy mixture, where it must give the conditional score's
noise at w = 1), the class-conditional U-Net and classifier-free guidance through it,
diffusion posterior sampling (its gradient against a finite difference, and the ancestral
sampler at zeta = 0), and the errors for bad input."""

import math

import pytest
import torch

from companion import diffusion as dm
from companion import inpainting, recipes, toy
from companion import score as S
from companion.latent_diffusion import conditional_loss, guided_eps
from companion.models.classifier import NoisyClassifier, noisy_classification_loss
from companion.models.unet import NO_LABEL, UNet, preset
from companion.run import memory

pytestmark = pytest.mark.usefixtures("float64_one_thread")


def mixture() -> toy.GaussianMixture:
    a = torch.arange(5, dtype=torch.float64) * 2 * math.pi / 5 + math.pi / 2
    return toy.GaussianMixture([0.35, 0.25, 0.18, 0.12, 0.10],
                               torch.stack([a.cos(), a.sin()], 1), 0.12)


def random_unet(T: int = 10, **changes) -> UNet:
    """The tiny U-Net with every weight random (its zero-initialized output layers too, so
    that eps depends on x and on the label)."""
    torch.manual_seed(0)
    net = UNet(preset("tiny", T=T, **changes))
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and not p.abs().sum():
                p.normal_(0, 0.05)
    return net.eval()


# --- classifier guidance ---------------------------------------------------------------------
def test_classifier_guided_eps_with_the_exact_classifier_is_the_conditional_noise():
    """On the mixture, with the exact noisy classifier as logits: the log-probability's
    gradient is the toy's closed form, and the guided noise at w = 1 is -sigma_t times the
    conditional score; at w = 0 the unguided noise, at w = 3 eps - 3 sigma_t g."""
    gm, diff = mixture(), dm.Diffusion(dm.linear_betas(50))
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    t = torch.randint(1, 51, (64,), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(2))
    abar = diff.alphas_bar_[t]
    sigma = (1 - abar).sqrt()[:, None]

    def logits(x, t):
        return toy.diffused_log_posterior(gm, x, diff.alphas_bar_[t])

    def eps(x, t):
        return -(1 - diff.alphas_bar_[t][:, None]).sqrt() * toy.diffused_score(
            gm, x, diff.alphas_bar_[t])

    g = S.classifier_log_prob_grad(logits, y, num_classes=5)
    exact = toy.diffused_log_posterior_grad(gm, x, y, abar)
    assert (g(x, t).double() - exact).abs().max().item() < 1e-5  # float32 gradient
    cond = toy.diffused_conditional_score(gm, x, y, abar)
    guided = S.classifier_guided_eps(diff, eps, g, 1.0)(x, t)
    assert (guided - (-sigma * cond)).abs().max().item() < 1e-5
    assert torch.equal(S.classifier_guided_eps(diff, eps, g, 0.0)(x, t), eps(x, t))
    three = S.classifier_guided_eps(diff, eps, g, 3.0)(x, t)
    assert torch.allclose(three, eps(x, t) - 3 * sigma * g(x, t), atol=1e-10)


@pytest.mark.slow
def test_noisy_classifier_takes_the_step_and_learns_from_its_loss():
    """The step changes the logits; a few Adam steps on the noisy loss lower it on a
    fixed batch (the time layers get gradients)."""
    diff = recipes.ddpm_diffusion(_ci(), "cpu")
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    model = NoisyClassifier(T=diff.T).train()
    x = torch.rand(32, 1, 28, 28)
    y = torch.arange(32) % 10
    model.eval()
    a = model(x * 2 - 1, torch.full((32,), 1))
    b = model(x * 2 - 1, torch.full((32,), diff.T))
    assert a.shape == (32, 10) and (a - b).abs().max() > 1e-4
    model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(3)
    first = None
    for _ in range(30):
        gen.manual_seed(3)  # the same noise and steps every time
        loss, logs = noisy_classification_loss(model, diff, (x, y), generator=gen)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        assert model.time_bias[0].weight.grad.abs().sum() > 0
        opt.step()
    assert loss.item() < 0.8 * first and 0 <= logs["accuracy"] <= 1


def _ci():
    from companion.run.profiles import get_profile

    return get_profile("ci")


# --- the class-conditional U-Net and classifier-free guidance -------------------------------
def test_conditional_unet_labels_and_no_label():
    net = random_unet(num_classes=10)
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([1, 3, 5, 10])
    y = torch.tensor([0, 3, 7, 9])
    with torch.no_grad():
        none, given = net(x, t), net(x, t, y)
        dropped = net(x, t, torch.full((4,), NO_LABEL))
    assert torch.equal(none, dropped) and (none - given).abs().max() > 1e-6
    plain = random_unet()
    # an unconditional U-Net keeps chapter 9's parameters (its checkpoints still load)
    assert set(net.state_dict()) - set(plain.state_dict()) == {"label_emb.weight"}
    assert not plain.conditional and net.conditional


def test_classifier_free_eps_is_the_formula_and_chunking_does_not_change_it(monkeypatch):
    net = random_unet(num_classes=10)
    x, t = torch.randn(6, 1, 28, 28), torch.tensor([1, 2, 3, 4, 5, 6])
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        cond, uncond = net(x, t, y), net(x, t)
        whole = guided_eps(net, y, 2.0)(x, t)
        assert torch.allclose(whole, 3 * cond - 2 * uncond, atol=1e-10)
        assert torch.equal(guided_eps(net, y, 0.0)(x, t), cond)
        monkeypatch.setattr(memory, "MAX_IMAGES", 1)  # one image a call
        assert torch.allclose(guided_eps(net, y, 2.0)(x, t), whole, atol=1e-10)
        f = recipes.guided_eps_function(net, y, 2.0, "cpu")
        assert torch.allclose(f(x, t).double(), whole, atol=1e-10)


def test_conditional_loss_trains_both_halves():
    """Label dropout: with p_uncond = 1 the loss is the unconditional one; the training
    loss is finite and reaches the label embedding."""
    net = random_unet(num_classes=10).train()
    diff = dm.Diffusion(dm.linear_betas(10))
    x0 = torch.rand(8, 1, 28, 28) * 2 - 1
    y = torch.arange(8)
    loss = conditional_loss(diff, net, x0, y, 0.5, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(loss.item()) and net.label_emb.weight.grad.abs().sum() > 0
    net.zero_grad()
    a = conditional_loss(diff, net, x0, y, 0.999999, generator=torch.Generator().manual_seed(1))
    b = diff.simple_loss(net, x0, generator=_after_drop(8))
    assert torch.allclose(a, b, atol=1e-10)


def _after_drop(n):
    """A generator in the state conditional_loss leaves after drawing n label drops."""
    g = torch.Generator().manual_seed(1)
    torch.rand((n,), generator=g)
    return g


# --- diffusion posterior sampling ------------------------------------------------------------
def test_dps_gradient_against_a_finite_difference():
    """g = grad |m * (y - x0_hat(x_t))| through the network, against central differences of
    the norm along random directions, per image."""
    net = random_unet(T=10).double()
    diff = dm.Diffusion(dm.linear_betas(10))
    gen = torch.Generator().manual_seed(4)
    y = torch.rand(3, 1, 28, 28, generator=gen, dtype=torch.float64) * 2 - 1
    mask = inpainting.make_mask("centre", 3).double()
    x_t = torch.randn(3, 1, 28, 28, generator=gen, dtype=torch.float64)
    t = 6
    g, x0, eps, norm = inpainting.dps_gradient(diff, net, x_t, t, y, mask)
    abar = diff.alphas_bar[t - 1].item()

    def f(x):
        with torch.no_grad():
            e = net(x, torch.full((len(x),), t))
            x0 = (x - math.sqrt(1 - abar) * e) / math.sqrt(abar)
            return (mask * (y - x0)).flatten(1).norm(dim=1)

    assert torch.allclose(norm, f(x_t), atol=1e-12)
    assert torch.allclose(x0, diff.x0_from_eps(x_t, torch.full((3,), t), eps), atol=1e-12)
    h = 1e-5
    for seed in range(3):
        v = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
        fd = (f(x_t + h * v) - f(x_t - h * v)) / (2 * h)
        assert torch.allclose((g * v).flatten(1).sum(1), fd, rtol=1e-6, atol=1e-8)
    # chunking (one image a backward pass) gives the same gradient
    old = memory.MAX_IMAGES_WITH_GRAD
    try:
        memory.MAX_IMAGES_WITH_GRAD = 1
        g1 = inpainting.dps_gradient(diff, net, x_t, t, y, mask)[0]
    finally:
        memory.MAX_IMAGES_WITH_GRAD = old
    assert torch.allclose(g1, g, atol=1e-12)


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_dps_at_zeta_zero_is_the_ancestral_sampler_and_guidance_pulls_the_known_pixels():
    net = random_unet(T=10).double()
    diff = dm.Diffusion(dm.linear_betas(10))
    y = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(5),
                   dtype=torch.float64) * 2 - 1
    mask = inpainting.make_mask("left", 4).double()
    x_T = torch.randn(y.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    plain = inpainting.dps(diff, net, y, mask, zeta=0.0, n_steps=5, x_T=x_T,
                           generator=torch.Generator().manual_seed(7), quiet=True)
    ref = diff.sample(net, y.shape, n_steps=5, x_T=x_T,
                      generator=torch.Generator().manual_seed(7), quiet=True)
    assert torch.allclose(plain, ref, atol=1e-10)
    guided = inpainting.dps(diff, net, y, mask, zeta=1.0, n_steps=5, x_T=x_T,
                            generator=torch.Generator().manual_seed(7), quiet=True)
    err = [inpainting.region_rmse((z + 1) / 2, (y + 1) / 2, mask).mean()
           for z in (plain, guided)]
    assert err[1] < err[0]


# --- bad input -------------------------------------------------------------------------------
def test_bad_input_gets_clear_errors():
    diff = dm.Diffusion(dm.linear_betas(10))
    net = random_unet(T=10)
    cls = NoisyClassifier(T=10).eval()
    x = torch.randn(2, 1, 28, 28)
    y = torch.tensor([1, 2])
    grad = S.classifier_log_prob_grad(cls, y)
    with pytest.raises(ValueError, match=r"w \(the guidance weight, >= 0\).*-1"):
        S.classifier_guided_eps(diff, net, grad, -1.0)
    with pytest.raises(ValueError, match="guidance weight w must be finite and >= 0"):
        guided_eps(random_unet(T=10, num_classes=10), y, -0.5)
    with pytest.raises(ValueError, match="needs a class-conditional denoiser"):
        guided_eps(net, y, 1.0)
    with pytest.raises(ValueError, match=r"the classifier has 10 classes but the labels are "
                                         r"5 classes"):
        S.classifier_log_prob_grad(cls, y, num_classes=5)
    with pytest.raises(ValueError, match=r"returned logits of shape \(2, 3\); guidance needs "
                                         r"\(2, 10\)"):
        S.classifier_log_prob_grad(lambda x, t: x.flatten(1)[:, :3], y)(x, torch.ones(2).long())
    with pytest.raises(ValueError, match=r"labels must be digits 0..9, got values in \[1, 10\]"):
        S.classifier_log_prob_grad(cls, torch.tensor([1, 10]))
    with pytest.raises(ValueError, match=r"t must lie in 1..T = 1..10 .* got values in 0..1"):
        cls(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"t must lie in 1..T = 1..10 .* got values in 1..11"):
        grad(x, torch.tensor([1, 11]))
    with pytest.raises(ValueError, match="built for T = 10 steps but the diffusion has 20"):
        noisy_classification_loss(cls, dm.Diffusion(dm.linear_betas(20)),
                                  (torch.rand(2, 1, 28, 28), y))
    with pytest.raises(ValueError, match=r"labels must lie in 0..9 .* got values in \[0, 12\]"):
        random_unet(T=10, num_classes=10)(x, torch.tensor([1, 2]), torch.tensor([0, 12]))
    with pytest.raises(ValueError, match="this U-Net is unconditional"):
        net(x, torch.tensor([1, 2]), y)
    with pytest.raises(ValueError, match="num_classes must be None"):
        UNet(preset("tiny", num_classes=1))
    ym = torch.zeros(2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"mask has shape \(1, 14, 14\) but y has shape"):
        inpainting.dps(diff, net, ym, torch.ones(1, 14, 14), n_steps=2)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 28, 28\) but y has shape"):
        inpainting.dps_gradient(diff, net, x, 3, ym, torch.ones(2, 28, 28))
    with pytest.raises(ValueError, match=r"t \(a step of the chain, 1..T = 1..10\)"):
        inpainting.dps_gradient(diff, net, x, 0, ym, torch.ones(1, 28, 28))
    with pytest.raises(ValueError, match=r"t \(a step of the chain, 1..T = 1..10\)"):
        inpainting.dps_gradient(diff, net, x, 11, ym, torch.ones(1, 28, 28))
    with pytest.raises(ValueError, match=r"zeta \(DPS's step size, >= 0\)"):
        inpainting.dps(diff, net, ym, torch.ones(1, 28, 28), zeta=-1.0, n_steps=2)
    with pytest.raises(ValueError, match="one label per image"):
        recipes.ddpm_cond(torch.rand(3, 1, 28, 28), torch.tensor([1, 2]), _ci(), "cpu")
