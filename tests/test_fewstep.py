"""companion.fewstep: each identity on the exact toy, and bad input."""

import math

import pytest
import torch

from companion import fewstep
from companion.flow import flow_matching_loss
from companion.sde import euler
from companion.toy import GaussianMixture

F64 = torch.float64


def gaussian(mean=(0.5, -1.0), std=0.3):
    return fewstep.MixturePath(GaussianMixture([1.0], [list(mean)], std))


def mixture():
    angles = torch.arange(5, dtype=F64) * 2 * math.pi / 5 + math.pi / 2
    return fewstep.MixturePath(GaussianMixture([0.35, 0.25, 0.18, 0.12, 0.10],
                                               torch.stack([angles.cos(), angles.sin()], 1),
                                               0.12))


def test_velocity_is_the_conditional_mean_by_monte_carlo():
    """v(x, tau) = E[x_1 - x_0 | x_tau = x]: regress x_1 - x_0 on x_tau by least squares for
    Gaussian data (the regression is linear there) and compare."""
    path, gen = gaussian(), torch.Generator().manual_seed(0)
    n, tau = 400_000, 0.4
    _, x0 = path.gm.sample(n, generator=gen)
    x1 = torch.randn(n, 2, generator=gen, dtype=F64)
    xt = (1 - tau) * x0 + tau * x1
    design = torch.cat([xt, torch.ones(n, 1, dtype=F64)], 1)
    coef = torch.linalg.lstsq(design, x1 - x0).solution
    probe = torch.tensor([[0.0, 0.0], [0.8, -1.2]], dtype=F64)
    fitted = torch.cat([probe, torch.ones(2, 1, dtype=F64)], 1) @ coef
    assert torch.allclose(fitted, path.velocity(probe, tau), atol=0.01)


def test_mixture_velocity_moves_the_density_continuity_equation():
    """d/dtau log q + div v + v . grad log q = 0 (the continuity equation) on the mixture."""
    path = mixture()
    x = torch.tensor([[0.3, 0.7], [-0.5, -0.2], [1.1, 0.0]], dtype=F64)
    tau, h = 0.35, 1e-5
    dlogq = (path.log_density(x, tau + h) - path.log_density(x, tau - h)) / (2 * h)
    xg = x.clone().requires_grad_(True)
    v = path.velocity(xg, tau)
    div = sum(torch.autograd.grad(v[:, i].sum(), xg, retain_graph=True)[0][:, i]
              for i in range(2))
    xg2 = x.clone().requires_grad_(True)
    grad_logq, = torch.autograd.grad(path.log_density(xg2, tau).sum(), xg2)
    residual = dlogq + div + (v * grad_logq).sum(1)
    assert residual.abs().max() < 1e-6


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_gaussian_map_is_the_ode_solution_and_composes():
    path = gaussian()
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    exact = path.gaussian_map(x, 1.0, 0.0)
    solved = fewstep.ode_map(path.velocity, x, 1.0, 0.0)
    assert torch.allclose(exact, solved, atol=1e-7)
    two = path.gaussian_map(path.gaussian_map(x, 1.0, 0.4), 0.4, 0.0)
    assert torch.allclose(two, exact, atol=1e-12)
    # the end is the data: mean and standard deviation of N(mean, std^2)
    big = path.gaussian_map(torch.randn(200_000, 2, generator=torch.Generator().manual_seed(2),
                                        dtype=F64), 1.0, 0.0)
    assert torch.allclose(big.mean(0), path.means[0], atol=0.01)
    assert torch.allclose(big.std(0), torch.full((2,), 0.3, dtype=F64), atol=0.01)


def test_one_euler_step_lands_at_the_data_mean():
    """x_1 says nothing about x_0, so v(x, 1) = x - E[x_0]: one step gives E[x_0] always."""
    path = mixture()
    x1 = torch.randn(7, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    one = euler(path.velocity, x1, [1.0, 0.0])
    mean = (path.weights[:, None] * path.means).sum(0)
    assert torch.allclose(one, mean.expand(7, 2), atol=1e-12)


@pytest.mark.slow
def test_euler_converges_to_the_accurate_map_on_the_mixture():
    path = mixture()
    x1 = torch.randn(40, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    exact = fewstep.ode_map(path.velocity, x1, rtol=1e-7, atol=1e-7)
    err = [(fewstep.ode_sample(path.velocity, x1, n) - exact).pow(2).sum(1).mean().sqrt()
           for n in (1, 4, 16, 64)]
    assert all(b < a for a, b in zip(err, err[1:], strict=False))
    assert err[-1] < err[0] / 10


@pytest.mark.slow
def test_straightness_matches_the_gaussian_closed_form_and_vanishes_for_a_point():
    path = gaussian(std=0.3)
    x1 = torch.randn(100, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    x0, s = fewstep.straightness(path.velocity, x1, 500)
    assert torch.allclose(x0, path.gaussian_map(x1, 1.0, 0.0), atol=5e-3)
    exact = fewstep.gaussian_straightness(0.3, 2)
    # the same for every path: x_1's squared norm averages to dim
    per_path = s / x1.pow(2).sum(1)
    assert torch.allclose(per_path, torch.full_like(per_path, exact / 2), rtol=1e-2)
    assert exact > 0.1
    # data a (nearly) single point: the paths are straight lines
    point = gaussian(std=1e-4)
    _, s0 = fewstep.straightness(point.velocity, x1, 200)
    assert s0.max() < 1e-5 and fewstep.gaussian_straightness(0.0, 2) == pytest.approx(0, abs=1e-9)


@pytest.mark.slow
def test_reflow_pairs_are_the_teachers_ends_and_straighten_to_zero_loss():
    """With the exact map of Gaussian data, the straight lines between pairs never cross:
    the coupled loss's minimizer (here written down) reaches 0, the independent loss cannot."""
    path = gaussian(mean=(0.5,), std=0.3)
    x1 = torch.randn(256, 1, generator=torch.Generator().manual_seed(6), dtype=F64)
    x0 = fewstep.reflow_pairs(path.velocity, x1, 1000)
    assert torch.allclose(x0, path.gaussian_map(x1, 1.0, 0.0), atol=1e-5)
    slope, shift = 0.3, 0.5  # phi(x_1) = 0.3 x_1 + 0.5
    K = 50

    def rectified(x, step):  # x_1 from x_tau, then its straight velocity x_1 - phi(x_1)
        tau = ((step - 1).to(F64) / K)[:, None]
        z1 = (x - (1 - tau) * shift) / ((1 - tau) * slope + tau)
        return z1 - (slope * z1 + shift)

    x0 = path.gaussian_map(x1, 1.0, 0.0)
    assert fewstep.coupled_flow_matching_loss(rectified, x0, x1, K) < 1e-20
    indep = flow_matching_loss(rectified, x0, K, torch.Generator().manual_seed(7))
    assert indep > 0.01


def test_grid_velocity_interpolates_per_point():
    K = 10

    def model(x, step):  # the velocity is the step itself
        return step.to(x.dtype)[:, None].expand_as(x)

    x = torch.zeros(3, 2)
    out = fewstep.grid_velocity(model, x, torch.tensor([0.0, 0.25, 1.0]), K)
    assert torch.allclose(out[:, 0], torch.tensor([1.0, 3.5, 11.0]))


def test_progressive_distillation_loss_is_zero_for_a_linear_teacher():
    """With a teacher whose velocity is constant in x and tau, two Euler steps are one step
    of twice the size, so the teacher itself is a perfect student."""
    def const(x, step):
        return torch.full_like(x, 0.7)

    x0 = torch.randn(64, 3)
    assert fewstep.progressive_distillation_loss(const, const, x0, 4, 8) < 1e-12


def test_progressive_distillation_target_is_two_teacher_steps():
    path = gaussian(mean=(0.5, -1.0))
    K = 16

    def teacher(x, step):
        tau = (step[0].item() - 1) / K
        return path.velocity(x, tau)

    def student(x, step):
        return torch.zeros_like(x)

    x0 = path.sample(64, generator=torch.Generator().manual_seed(8))
    gen = torch.Generator().manual_seed(9)
    loss = fewstep.progressive_distillation_loss(student, teacher, x0, 1, K, gen)
    # n_student = 1: tau_a = 1, the target is (x_1 - two Euler steps) / 1
    gen = torch.Generator().manual_seed(9)
    torch.randint(1, 2, (64,), generator=gen)
    x1 = torch.randn(x0.shape, dtype=F64, generator=gen)
    two = euler(path.velocity, x1, [1.0, 0.5, 0.0])
    assert loss.item() == pytest.approx((x1 - two).pow(2).mean().item(), rel=1e-6)


def per_point(fn, K):
    """A model(x, step) from fn(x, tau) with tau a float: one call per distinct step."""
    def model(x, step):
        out = torch.empty_like(x)
        for s in step.unique():
            rows = step == s
            out[rows] = fn(x[rows], (s.item() - 1) / K)
        return out
    return model


@pytest.mark.slow
def test_consistency_loss_of_the_exact_map_is_the_teachers_step_error():
    """f(x, tau) = phi_{tau -> 0}(x) is constant along the exact paths: its loss is only the
    teacher's Euler step error, O(1/N^2) per interval, while a wrong map's stays O(1)."""
    path = gaussian()
    K = 64

    def average_velocity(x, tau):  # u = (x - phi_{tau -> 0}(x)) / tau, v at tau = 0
        return path.velocity(x, 0.0) if tau == 0 else (x - path.gaussian_map(x, tau, 0.0)) / tau

    u_exact = per_point(average_velocity, K)
    teacher = per_point(path.velocity, K)
    x0 = path.sample(2048, generator=torch.Generator().manual_seed(10))

    def loss_of(u, N, solver="euler"):
        return fewstep.consistency_distillation_loss(u, teacher, x0, N, K,
                                                     torch.Generator().manual_seed(11),
                                                     solver=solver)

    exact16, exact64 = loss_of(u_exact, 16), loss_of(u_exact, 64)
    wrong = loss_of(teacher, 16)  # the teacher's own one-step jump: not consistent
    assert exact64 < exact16 / 8
    assert wrong > 20 * exact16
    assert loss_of(u_exact, 16, "heun") < exact16 / 10  # a second-order teacher step


def test_consistency_residual_vanishes_for_the_exact_map_by_jvp():
    path = gaussian()
    m, s = path.means[0], path.stds[0]

    def f(x, t):  # phi_{t -> 0}(x) with t a tensor, so jvp can differentiate in t
        sd_t = ((1 - t) ** 2 * s**2 + t**2).sqrt()
        return m + s / sd_t * (x - (1 - t) * m)

    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(12), dtype=F64)
    res = fewstep.consistency_residual(f, path.velocity, x, 0.6)
    assert res.abs().max() < 1e-12
    res_euler = fewstep.consistency_residual(  # the one-step Euler jump is not consistent
        lambda x, t: x - t * (x - m), path.velocity, x, 0.6)
    assert res_euler.abs().max() > 0.1


def test_jump_sample_with_the_exact_map_draws_the_data():
    path = gaussian()
    jump = fewstep.jump_map(lambda x, tau: path.velocity(x, 0.0) if tau == 0 else
                            (x - path.gaussian_map(x, tau, 0.0)) / tau)
    x1 = torch.randn(100_000, 2, generator=torch.Generator().manual_seed(13), dtype=F64)
    for n in (1, 4):
        x = fewstep.jump_sample(jump, x1, n, torch.Generator().manual_seed(14))
        assert torch.allclose(x.mean(0), path.means[0], atol=0.01)
        assert torch.allclose(x.std(0), torch.full((2,), 0.3, dtype=F64), atol=0.01)
    one = fewstep.jump_sample(jump, x1[:5], 1)
    assert torch.allclose(one, path.gaussian_map(x1[:5], 1.0, 0.0), atol=1e-12)


def test_samplers_chunk_without_changing_the_result(monkeypatch):
    path = mixture()
    x1 = torch.randn(9, 2, generator=torch.Generator().manual_seed(15), dtype=F64)
    whole = fewstep.ode_sample(path.velocity, x1, 3)
    jump = fewstep.jump_map(path.velocity)
    j_whole = fewstep.jump_sample(jump, x1, 3, torch.Generator().manual_seed(1))
    import companion.run.memory as memory
    calls = []
    monkeypatch.setattr(memory, "rows_per_call", lambda x, grad=False: calls.append(1) or 4)
    assert torch.allclose(fewstep.ode_sample(path.velocity, x1, 3), whole, atol=1e-12)
    j_chunk = fewstep.jump_sample(jump, x1, 3, torch.Generator().manual_seed(1))
    assert torch.allclose(j_chunk, j_whole, atol=1e-12)
    assert len(calls) == 2  # both split (9 rows, 4 a call)


@pytest.mark.parametrize("call, match", [
    (lambda: fewstep.MixturePath("not a mixture"), "GaussianMixture"),
    (lambda: mixture().gaussian_map(torch.zeros(1, 2, dtype=F64), 1.0, 0.0), "one component"),
    (lambda: mixture().velocity(torch.zeros(3, 3, dtype=F64), 0.5), r"\(B, 2\)"),
    (lambda: mixture().velocity(torch.zeros(3, 2, dtype=F64), 1.5), r"\[0, 1\]"),
    (lambda: fewstep.straightness(lambda x, t: x, torch.zeros(2, 2), 0), "n_steps"),
    (lambda: fewstep.ode_sample(lambda x, t: x, torch.zeros(2, 2), 2, solver="rk4"), "solver"),
    (lambda: fewstep.ode_map(lambda x, t: x, torch.zeros(2, 2), rtol=0.0), "rtol"),
    (lambda: fewstep.coupled_flow_matching_loss(lambda x, s: x, torch.zeros(4, 2),
                                                torch.zeros(4, 3), 10), "pairs"),
    (lambda: fewstep.progressive_distillation_loss(lambda x, s: x, lambda x, s: x,
                                                   torch.zeros(4, 2), 0, 10), "n_student"),
    (lambda: fewstep.consistency_distillation_loss(lambda x, s: x, lambda x, s: x,
                                                   torch.zeros(4, 2), 4, 0), "K"),
    (lambda: fewstep.consistency_distillation_loss(lambda x, s: x, lambda x, s: x,
                                                   torch.zeros(4, 2), 4, 8, solver="rk"),
     "solver"),
    (lambda: fewstep.grid_velocity(lambda x, s: x, torch.zeros(2, 2), torch.tensor([0, 1]), 4),
     "real times"),
    (lambda: fewstep.grid_velocity(lambda x, s: x, torch.zeros(2, 2),
                                   torch.tensor([0.0, 1.5]), 4), r"\[0, 1\]"),
    (lambda: fewstep.grid_velocity(lambda x, s: x[:1], torch.zeros(2, 2),
                                   torch.tensor([0.0, 0.5]), 4), "shaped like x"),
    (lambda: fewstep.jump_sample(lambda x, t: x, torch.zeros(0, 2), 2), "empty batch"),
    (lambda: fewstep.gaussian_straightness(-1.0, 2), "std"),
])
def test_bad_input_gets_a_clear_error(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_velocity_takes_one_time_per_point():
    path = mixture()
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(16), dtype=F64)
    tau = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=F64)
    each = torch.cat([path.velocity(x[i:i + 1], tau[i].item()) for i in range(4)])
    assert torch.allclose(path.velocity(x, tau), each, atol=1e-14)
    model = path.grid_model(10)
    out = model(x.float(), torch.tensor([1, 4, 8, 11]))
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), path.velocity(x.float().double(), tau), atol=1e-5)


@pytest.mark.parametrize("name", ["ci", "cpu", "gpu"])
def test_chapter_15_students_are_called_on_grid_times(name):
    """recipes.fewstep_settings: the couplings' Heun steps and consistency distillation's
    intervals divide the teacher's grid, so the students cost one network call a time."""
    from companion import recipes
    from companion.run.profiles import get_profile

    profile = get_profile(name)
    K = recipes.ddpm_settings(profile)["T"]
    f = recipes.fewstep_settings(profile)
    assert K % f["pair_steps"] == 0 and K % f["cd_N"] == 0
    assert f["rounds_from"] & (f["rounds_from"] - 1) == 0  # halved down to one step
