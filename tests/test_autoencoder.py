"""Tests of companion.models.autoencoder: shapes, losses, the contractive penalty."""

import pytest
import torch
from torch import nn

from companion.models.autoencoder import (
    Autoencoder,
    ConvAutoencoder,
    contractive_loss,
    contractive_penalty,
    denoising_loss,
    encoder_jacobian,
    fit_linear_als,
    interpolate,
    jacobian_penalty_autograd,
    linear_autoencoder,
    one_hidden_layer_penalty,
    reconstruction_error,
    reconstruction_loss,
    sigmoid_layer_penalty,
)


def images(n=4, seed=0, dtype=torch.float32):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("model", [Autoencoder(), Autoencoder(8, hidden=(64, 32)),
                                   ConvAutoencoder(latent_dim=5),
                                   ConvAutoencoder(latent_dim=5, channels=(4, 8), depth=4)])
def test_shapes_and_range(model):
    x = images(3)
    z = model.encode(x)
    assert z.shape == (3, model.latent_dim)
    x_hat = model.decode(z)
    assert x_hat.shape == (3, 1, 28, 28)
    assert x_hat.min() >= 0 and x_hat.max() <= 1
    assert torch.equal(model(x), x_hat)


@pytest.mark.parametrize("depth", [2, 4])
def test_conv_autoencoder_has_depth_convolutions_per_side(depth):
    model = ConvAutoencoder(channels=(4, 8), depth=depth)
    assert sum(isinstance(m, nn.Conv2d) for m in model.encoder) == depth
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in model.decoder) == depth
    with pytest.raises(ValueError, match="depth must be 2 or 4"):
        ConvAutoencoder(depth=3)


def test_default_is_two_layer_mlp_with_16_dim_code():
    model = Autoencoder()
    assert model.latent_dim == 16
    assert len(model.encoder_linears()) == 2
    assert sum(isinstance(m, nn.Linear) for m in model.decoder) == 2


def test_linear_autoencoder_is_linear():
    model = Autoencoder(4, hidden=(), activation="identity", output="identity")
    x, y = images(2, 1), images(2, 2)
    f = lambda v: model(v) - model(torch.zeros_like(v))  # noqa: E731  (remove the offset)
    torch.testing.assert_close(f(2 * x - y), 2 * f(x) - f(y), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (torch.rand(2, 784), "flat images"),
    (torch.rand(2, 3, 28, 28), r"\(B, 1, 28, 28\)"),
    (torch.rand(1, 28, 28), r"\(B, 1, 28, 28\)"),
])
def test_encode_rejects_bad_shapes(bad, message):
    with pytest.raises(ValueError, match=message):
        Autoencoder().encode(bad)
    with pytest.raises(ValueError, match=message):
        ConvAutoencoder().encode(bad)


def test_decode_rejects_bad_codes():
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        Autoencoder().decode(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="unsqueeze"):
        Autoencoder().decode(torch.zeros(16))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="activation"):
        Autoencoder(activation="gelu-ish")
    with pytest.raises(ValueError, match="latent_dim"):
        Autoencoder(latent_dim=0)


def test_reconstruction_loss_is_mean_of_per_image_squared_error():
    model, x = Autoencoder(), images()
    expected = (model(x) - x).pow(2).sum((1, 2, 3)).mean()
    torch.testing.assert_close(reconstruction_loss(model, x), expected)
    assert reconstruction_error(model, x).shape == (4,)


class Identity(nn.Module):
    """A perfect plain autoencoder: returns its input."""

    def forward(self, x):
        return x


def test_denoising_uses_noisy_input_and_clean_target():
    x = images(64)
    ident = Identity()
    assert reconstruction_loss(ident, x) == 0
    # If the target were the noisy input, the identity would score 0. With the clean
    # target it pays for all the noise: E||delta||^2 = 784 s^2 per image.
    s = 0.3
    loss = denoising_loss(ident, x, noise_std=s, generator=torch.Generator().manual_seed(0))
    assert abs(loss.item() / (784 * s**2) - 1) < 0.02


def test_denoising_with_zero_noise_equals_plain_loss_and_differs_otherwise():
    model, x = Autoencoder(), images()
    torch.testing.assert_close(denoising_loss(model, x, noise_std=0.0),
                               reconstruction_loss(model, x))
    noisy = denoising_loss(model, x, noise_std=0.5, generator=torch.Generator().manual_seed(1))
    assert not torch.isclose(noisy, reconstruction_loss(model, x))
    with pytest.raises(ValueError, match="noise_std"):
        denoising_loss(model, x, noise_std=-1.0)


def test_denoising_target_is_clean_x():
    """The loss equals the error of model(noisy) against x, not against the noisy input."""
    model, x = Autoencoder(), images()
    g = torch.Generator().manual_seed(3)
    loss = denoising_loss(model, x, noise_std=0.4, generator=g)
    noisy = x + 0.4 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss, (model(noisy) - x).pow(2).sum((1, 2, 3)).mean())
    assert not torch.isclose(loss, (model(noisy) - noisy).pow(2).sum((1, 2, 3)).mean())


def test_sigmoid_layer_closed_form_matches_autograd_jacobian():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 30, generator=g, dtype=torch.float64)
    w = torch.randn(7, 30, generator=g, dtype=torch.float64) / 3
    b = torch.randn(7, generator=g, dtype=torch.float64)
    closed = sigmoid_layer_penalty(x, w, b)
    jac = torch.func.vmap(torch.func.jacrev(lambda v: torch.sigmoid(w @ v + b)))(x)  # (5, 7, 30)
    torch.testing.assert_close(closed, jac.pow(2).sum((1, 2)), atol=1e-6, rtol=0)
    autograd = jacobian_penalty_autograd(lambda v: torch.sigmoid(v @ w.T + b), x)
    torch.testing.assert_close(closed, autograd, atol=1e-6, rtol=0)


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh"])
def test_chain_rule_jacobian_matches_autograd(activation):
    model = Autoencoder(5, hidden=(20, 12), activation=activation).double()
    x = images(3, dtype=torch.float64)
    jac = encoder_jacobian(model, x)
    assert jac.shape == (3, 5, 784)
    reference = torch.stack([torch.autograd.functional.jacobian(
        lambda v: model.encode(v.view(1, 1, 28, 28)).squeeze(0), xi.flatten()) for xi in x])
    torch.testing.assert_close(jac, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(contractive_penalty(model, x, method="chain"),
                               contractive_penalty(model, x, method="autograd"),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_one_hidden_layer_closed_form_matches_autograd(activation):
    model = Autoencoder(6, hidden=(40,), activation=activation).double()
    x = images(4, dtype=torch.float64)
    closed = one_hidden_layer_penalty(model, x)
    torch.testing.assert_close(closed, jacobian_penalty_autograd(model.encode, x),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(contractive_penalty(model, x), closed.mean())
    with pytest.raises(TypeError, match="hidden"):
        one_hidden_layer_penalty(Autoencoder(6, hidden=(8, 8)), images(1))


def test_contractive_penalty_trains_the_encoder():
    model = Autoencoder(4, hidden=(16,), activation="sigmoid")
    x = images(8)
    penalty = contractive_penalty(model, x)
    penalty.backward()
    grad = model.encoder_linears()[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    loss, logged = contractive_loss(model, x, weight=0.1)
    torch.testing.assert_close(loss, logged["recon"] + 0.1 * logged["penalty"])


def test_interpolate_runs_from_one_reconstruction_to_the_other():
    model = Autoencoder()
    a, b = images(1, 1), images(1, 2)
    path = interpolate(model, a, b, steps=5)
    assert path.shape == (5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(path[0], model(a)[0])
        torch.testing.assert_close(path[-1], model(b)[0])


@pytest.mark.slow
def test_linear_als_reaches_the_pca_subspace_and_loss():
    from companion.pca import pca, pca_reconstruct, principal_angles

    g = torch.Generator().manual_seed(0)
    # 300 images whose variance is concentrated in 5 directions, plus a little noise
    basis = torch.linalg.qr(torch.randn(784, 5, generator=g))[0]
    scales = torch.tensor([3.0, 2.5, 2.0, 1.5, 1.0])
    x = (torch.randn(300, 5, generator=g) * scales) @ basis.T + 0.05 * torch.randn(300, 784,
                                                                                   generator=g)
    x = (x + 0.5).view(-1, 1, 28, 28)
    model = linear_autoencoder(3)
    losses = fit_linear_als(model, x, iters=30)
    assert all(b <= a + 1e-9 for a, b in zip(losses, losses[1:], strict=False))
    mean, comps, _ = pca(x.flatten(1), 3)
    pca_loss = (pca_reconstruct(x.flatten(1), mean, comps) - x.flatten(1)).pow(2).sum(1).mean()
    assert abs(reconstruction_loss(model, x).item() / pca_loss.item() - 1) < 1e-4
    angles = principal_angles(model.decoder[0].weight.detach(), comps.T)
    assert angles.max() < 1e-3
    with pytest.raises(TypeError, match="linear"):
        fit_linear_als(Autoencoder(), x)


@pytest.mark.slow
def test_chapter1_recipe_loads_its_checkpoint_under_its_prefix(tmp_path, monkeypatch):
    from companion.recipes import chapter1_autoencoder
    from companion.run.profiles import get_profile

    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    x, ci = images(64), get_profile("ci")
    first, run = chapter1_autoencoder("ae", x, ci, "cpu", prefix="chX")
    assert (tmp_path / "checkpoints" / "chX-ae-ci.pt").exists()
    assert run.steps == 15 * 1 and run.resumed_at == 0        # 15 epochs of one batch
    again, rerun = chapter1_autoencoder("ae", x, ci, "cpu", prefix="chX")
    assert rerun.resumed_at == rerun.steps                      # loaded, not retrained
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                   again.state_dict().values(), strict=True))


def test_worst_perturbation_stays_in_the_ball_and_beats_random_ones():
    from companion.models.autoencoder import adversarial_loss, worst_perturbation

    torch.manual_seed(0)
    model, x = Autoencoder(8, hidden=(32,)), images(5)
    delta = worst_perturbation(model, x, radius=2.0, steps=3)
    assert (delta.flatten(1).norm(dim=1) <= 2.0 + 1e-5).all()
    worst = reconstruction_error(model, x + delta, target=x)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        rand = torch.randn(x.shape, generator=g)
        rand = 2.0 * rand / rand.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        assert (worst > reconstruction_error(model, x + rand, target=x)).all()
    torch.testing.assert_close(adversarial_loss(model, x, radius=0.0),
                               reconstruction_error(model, x).mean())
