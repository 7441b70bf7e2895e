"""companion.flow: the linear path and its velocity, the affine maps between eps and velocity
(and from a VP diffusion's probability-flow ODE to the velocity ODE), the exact velocity of
Gaussian data transporting noise to data, and the flow-matching loss."""

import math

import pytest
import torch

from companion import flow as F
from companion import sde as S
from companion.models.unet import UNet, preset

pytestmark = pytest.mark.usefixtures("float64_one_thread")


M, SD = -0.3, 0.5  # data N(M, SD^2) per dimension


def gauss_velocity(x, tau):
    """E[eps - x_0 | x_tau = x] for data N(M, SD^2) on the linear path (jointly Gaussian)."""
    var = (1 - tau) ** 2 * SD**2 + tau**2
    mean = (1 - tau) * M
    e_eps = tau * (x - mean) / var              # Cov(eps, x_tau) = tau
    e_x0 = M + (1 - tau) * SD**2 * (x - mean) / var
    return e_eps - e_x0


def test_the_path_moves_with_velocity_eps_minus_x0():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    assert torch.equal(F.linear_path(x0, eps, 0.0), x0)
    assert torch.equal(F.linear_path(x0, eps, 1.0), eps)
    h, tau = 1e-6, 0.37
    slope = (F.linear_path(x0, eps, tau + h) - F.linear_path(x0, eps, tau - h)) / (2 * h)
    assert torch.allclose(slope, eps - x0, atol=1e-8)
    taus = torch.rand(5, generator=g)
    assert torch.allclose(F.linear_path(x0, eps, taus),
                          (1 - taus[:, None]) * x0 + taus[:, None] * eps)


def test_eps_and_velocity_are_affine_in_each_other():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    tau = 0.6
    x = F.linear_path(x0, eps, tau)
    v = F.velocity_from_eps(eps, x, tau)  # the true eps gives the true velocity
    assert torch.allclose(v, eps - x0)
    assert torch.allclose(F.eps_from_velocity(v, x, tau), eps)
    assert torch.allclose(x - tau * v, x0)


def test_vp_points_are_the_linear_path_rescaled():
    vp = S.VPSDE()
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    for t in (0.05, 0.5, 0.95):
        a, s = math.sqrt(vp.alpha_bar(t)), vp.sigma(t)
        tau, scale = F.vp_to_linear(a, s)
        assert torch.allclose((a * x0 + s * eps) / scale, F.linear_path(x0, eps, tau))


def test_probability_flow_ode_of_a_vp_diffusion_is_the_velocity_ode():
    """d/dtau of x_t / (alpha + sigma), with dx/dt the VP ODE, is (eps_hat - y) / (1 - tau)."""
    vp = S.VPSDE()

    def eps_hat(x, t):  # the exact eps for data N(M, SD^2) under the VP SDE
        a = vp.alpha_bar(t)
        return math.sqrt(1 - a) * (x - math.sqrt(a) * M) / (a * SD**2 + 1 - a)

    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(3))
    t, h = 0.3, 1e-6

    def y_tau(t):
        a, s = math.sqrt(vp.alpha_bar(t)), vp.sigma(t)
        return F.vp_to_linear(a, s)

    (tau, scale), (tau2, _), (tau1, _) = y_tau(t), y_tau(t + h), y_tau(t - h)
    dtau_dt = (tau2 - tau1) / (2 * h)
    dscale_dt = (y_tau(t + h)[1] - y_tau(t - h)[1]) / (2 * h)
    dx_dt = vp.ode_drift(vp.score_from_eps(eps_hat))(x, t)
    dy_dtau = (dx_dt / scale - x * dscale_dt / scale**2) / dtau_dt
    y = x / scale
    assert torch.allclose(dy_dtau, F.velocity_from_eps(eps_hat(x, t), y, tau), atol=1e-6)
    # and that velocity is the exact one of the linear path
    assert torch.allclose(dy_dtau, gauss_velocity(y, tau), atol=1e-6)


def test_the_exact_velocity_carries_noise_to_the_data():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(20_000, 1, generator=g)
    x = S.heun(gauss_velocity, z, F.uniform_grid(200))
    assert abs(x.mean().item() - M) < 0.02 and abs(x.std().item() - SD) < 0.02


def test_flow_matching_loss_is_the_regression_on_eps_minus_x0():
    K = 10
    x0 = torch.randn(40_000, 1, generator=torch.Generator().manual_seed(5)) * SD + M

    def exact(x, step):  # the optimal velocity: the loss keeps only what x_tau cannot tell
        return gauss_velocity(x, (step - 1).to(x.dtype)[:, None] / K)

    def zero(x, step):
        return torch.zeros_like(x)

    g1, g2 = (torch.Generator().manual_seed(6) for _ in range(2))
    best = F.flow_matching_loss(exact, x0, K, g1)
    none = F.flow_matching_loss(zero, x0, K, g2)
    # E|eps - x0|^2 = 1 + mean x0^2 for a zero velocity, against the optimum's remainder
    assert none.item() == pytest.approx(1 + x0.pow(2).mean().item(), rel=0.05)
    # the optimum keeps Var[eps - x_0 | x_tau] = 1 + SD^2 - Cov^2 / Var, averaged over the grid
    taus = torch.arange(K + 1) / K
    cov, var = taus - (1 - taus) * SD**2, (1 - taus) ** 2 * SD**2 + taus**2
    assert best.item() == pytest.approx((1 + SD**2 - cov**2 / var).mean().item(), rel=0.05)


def test_velocity_field_calls_the_grid_steps():
    K, seen = 50, []

    def model(x, step):
        seen.append(sorted(set(step.tolist())))
        return torch.zeros_like(x)

    field = F.velocity_field(model, K)
    field(torch.ones(2, 1), 0.2)
    field(torch.ones(2, 1), 0.0)
    field(torch.ones(2, 1), 0.205)
    assert seen == [[11], [1], [11, 12]]
    assert F.uniform_grid(4) == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_bad_input_gets_clear_errors():
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    net = UNet(preset("tiny", T=11))
    with pytest.raises(ValueError, match="T=21"):
        F.flow_matching_loss(net.double(), x, 20)
    with pytest.raises(ValueError, match="shaped like x"):
        F.flow_matching_loss(lambda x, s: x[:, :, :4], x, 10)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        F.linear_path(x, x, 1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        F.linear_path(x, x, torch.tensor([0.5, -0.1]))
    with pytest.raises(ValueError, match="same shape"):
        F.linear_path(x, x[:, :, :3], 0.5)
    with pytest.raises(ValueError, match="tau < 1"):
        F.velocity_from_eps(x, x, 1.0)
    with pytest.raises(ValueError, match="positive int"):
        F.velocity_field(net, 0)
    with pytest.raises(ValueError, match="positive int"):
        F.uniform_grid(0)
