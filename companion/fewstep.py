"""Fewer steps: straight paths, distilled samplers and maps that jump (chapter 15).

Time convention as in `companion.flow`: tau in [0, 1], tau = 0 the data, tau = 1 pure noise,
the linear path x_tau = (1 - tau) x_0 + tau x_1 with x_1 ~ N(0, I), and the ODE
dx/dtau = v(x, tau) run from tau = 1 down to 0. Its solution from tau = a to tau = b is the
flow map phi_{a -> b}; a sampler wants phi_{1 -> 0}, and every method here is a way to get
close to it with few evaluations of a network:

* Straightness (Liu, Gong and Liu 2023). Along one path from x_1 to its end x_0,
  S = int_0^1 |(x_1 - x_0) - v(x_tau, tau)|^2 dtau,
  zero exactly when the path is a straight line run at constant speed, and then one Euler
  step x_0 = x_1 - v(x_1, 1) is exact.
* Reflow (the same paper): pairs (x_1, phi_{1 -> 0}(x_1)) from a teacher's ODE, and a student
  trained with the flow-matching loss on those pairs instead of independent ones.
* Progressive distillation (Salimans and Ho 2022): a student whose one step of 2h lands where
  two teacher steps of h land; the student becomes the next round's teacher.
* Consistency distillation (Song, Dhariwal, Chen and Sutskever 2023): a map f(x, tau) that is
  constant along each ODE path, f(x_tau, tau) = x_0, with f(x, 0) = x.

The exact toy: data from a Gaussian mixture (`companion.toy.GaussianMixture`, chapter 8's
toy) on the linear path, whose velocity is known in closed form (`MixturePath`); with one
component the flow map is known too, with several an accurate solver gives it (`ode_map`).

Networks here are chapter 13's: a model(x, step) trained on the grid tau = k / K as steps
k + 1, used between grid times by linear interpolation (`grid_velocity`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from . import toy
from .flow import linear_path, uniform_grid
from .run import checks
from .run.memory import map_chunks
from .sde import _value, euler, heun
from .toy import GaussianMixture

Field = Callable[[torch.Tensor, float], torch.Tensor]


# --- the exact toy: a Gaussian mixture on the linear path -------------------------------------
class MixturePath:
    """The linear path x_tau = (1 - tau) x_0 + tau x_1 with x_0 from a Gaussian mixture.

    gm: a `GaussianMixture` (weights w_k, means mu_k, standard deviations s_k). Given the
    component k, x_tau is Gaussian with mean m_k(tau) = (1 - tau) mu_k and variance
    var_k(tau) = (1 - tau)^2 s_k^2 + tau^2 per coordinate, so q_tau is again a mixture, and
    the velocity v(x, tau) = E[x_1 - x_0 | x_tau = x] is, by Gaussian conditioning,
        v(x, tau) = sum_k r_k(x, tau) [-mu_k + c_k(tau) (x - m_k(tau))],
        c_k(tau) = (tau - (1 - tau) s_k^2) / var_k(tau),
    with r_k the responsibilities of the components of q_tau at x. With one component
    (Gaussian data) the flow map is affine in closed form (`gaussian_map`).
    Everything runs in float64.
    """

    def __init__(self, gm: GaussianMixture):
        if not isinstance(gm, GaussianMixture):
            raise checks.ArgumentError(f"MixturePath takes a companion.toy.GaussianMixture, "
                                       f"got {type(gm).__name__}")
        self.gm = gm
        self.means = gm.means.to(torch.float64)
        self.stds = gm.stds.to(torch.float64)
        self.weights = gm.weights.to(torch.float64)
        self.D = gm.D

    def _check_x(self, x) -> torch.Tensor:
        checks.tensor("x", x, floating=True)
        if x.dim() != 2 or x.shape[1] != self.D or len(x) == 0:
            raise checks.ArgumentError(f"x must be points (B, {self.D}), got {tuple(x.shape)}")
        return x.to(torch.float64)

    def _times(self, tau, x) -> torch.Tensor:
        """tau as float64 (B, 1) or (1, 1): a number, or one time per point (B,)."""
        if torch.is_tensor(tau) and tau.dim() > 0:
            return checks.unit_times("tau", tau, len(x)).to(torch.float64).reshape(-1, 1)
        return torch.tensor([[checks.unit_time("tau", tau)]], dtype=torch.float64)

    def components(self, tau) -> tuple[torch.Tensor, torch.Tensor]:
        """(m_k(tau) (1, K, D), var_k(tau) (1, K)) for a number tau; (B, K, D), (B, K) for
        times (B, 1) from `_times`."""
        t = tau if torch.is_tensor(tau) else torch.tensor([[checks.unit_time("tau", tau)]],
                                                          dtype=torch.float64)
        return (1 - t)[:, :, None] * self.means, (1 - t) ** 2 * self.stds**2 + t**2

    def _log_joint(self, x, t):
        m, var = self.components(t)
        return toy._mixture_log_joint(self.gm, x, m, var)                       # (B, K)

    def log_density(self, x: torch.Tensor, tau) -> torch.Tensor:
        """log q_tau(x): x (B, D) -> (B,); tau a number or (B,)."""
        x = self._check_x(x)
        return torch.logsumexp(self._log_joint(x, self._times(tau, x)), -1)

    def velocity(self, x: torch.Tensor, tau) -> torch.Tensor:
        """v(x, tau) = E[x_1 - x_0 | x_tau = x] (the class docstring): x (B, D) -> (B, D);
        tau a number or one time per point (B,)."""
        x = self._check_x(x)
        t = self._times(tau, x)
        m, var = self.components(t)
        r = torch.softmax(self._log_joint(x, t), -1)                            # (B, K)
        c = (t - (1 - t) * self.stds**2) / var                                  # (B|1, K)
        per = -self.means + c[:, :, None] * (x[:, None, :] - m)                 # (B, K, D)
        return (r[:, :, None] * per).sum(1)

    def grid_model(self, K: int):
        """The exact velocity as a model on chapter 13's grid: (x (B, D), step (B,)) -> v at
        tau = (step - 1) / K, float32 in and out like a network's (a teacher for the toys)."""
        K = checks.grid_intervals(K)

        def model(x, step):
            return self.velocity(x, (step - 1).double() / K).to(x.dtype)
        return model

    def sample(self, n: int, tau: float = 0.0, generator: torch.Generator | None = None):
        """n draws of x_tau (float64 (n, D)): tau = 0 the data, tau = 1 N(0, I)."""
        tau = checks.unit_time("tau", tau)
        _, x0 = self.gm.sample(n, generator=generator)
        x1 = torch.randn(x0.shape, dtype=torch.float64, generator=generator)
        return (1 - tau) * x0.to(torch.float64) + tau * x1

    def gaussian_map(self, x: torch.Tensor, a: float, b: float) -> torch.Tensor:
        """phi_{a -> b}(x) for Gaussian data (one component), in closed form:
            phi_{a -> b}(x) = m(b) + sd(b) / sd(a) (x - m(a)),   sd = sqrt(var).
        Both ends are Gaussian and the map is increasing in each coordinate, which fixes it.

        Book: :eq:`ch15-gaussian-map`.
        """
        if self.gm.K != 1:
            raise checks.ArgumentError(f"the closed-form flow map is for Gaussian data (one "
                                       f"component), this mixture has {self.gm.K}: use "
                                       "ode_map(path.velocity, x, a, b)")
        x = self._check_x(x)
        (ma,), (va,) = (v[0] for v in self.components(a))
        (mb,), (vb,) = (v[0] for v in self.components(b))
        return mb + (vb / va).sqrt() * (x - ma)


MAX_TRAPEZOID_POINTS = 1_000_001  # gaussian_straightness's quadrature


def gaussian_straightness(std: float, dim: int, n: int = 20_001) -> float:
    """Liu et al.'s S for Gaussian data N(mu, std^2 I_dim), the same for every path:
        S = dim (int_0^1 sd'(tau)^2 dtau - (1 - std)^2),  sd(tau) = sqrt((1-tau)^2 std^2 + tau^2).
    (On the path x_tau = m(tau) + sd(tau) x_1, the velocity minus the chord is
    (sd'(tau) - (1 - std)) x_1, and sd(1) - sd(0) = 1 - std.) The integral by the trapezoid
    rule on n points (float64), 3 to MAX_TRAPEZOID_POINTS = 1,000,001 of them: past the
    default 20,001 the rule's error is already about 1e-9, and at a million about 1e-12,
    near the float64 rounding of its sum (a billion ended in a memory error naming nothing).
    Zero only for std = 0, a single point."""
    std = checks.real("std", std, low=0.0)
    dim = checks.count("dim", dim)
    n = checks.size("n (the trapezoid rule's points)", n, MAX_TRAPEZOID_POINTS,
                    "the default 20,001 give the integral to about 1e-9, a million to about "
                    "1e-12, near the float64 rounding of the sum", minimum=3)
    tau = torch.linspace(0, 1, n, dtype=torch.float64)
    sd = ((1 - tau) ** 2 * std**2 + tau**2).sqrt()
    d_sd = torch.where(sd > 0, (tau - (1 - tau) * std**2) / sd, 1.0)  # sd = tau if std = 0
    return dim * (torch.trapezoid(d_sd**2, tau).item() - (1 - std) ** 2)


# --- accurate flow maps and the straightness measure -------------------------------------------
def ode_map(field: Field, x: torch.Tensor, a: float = 1.0, b: float = 0.0, *,
            rtol: float = 1e-9, atol: float = 1e-9, max_evals: int = 100_000) -> torch.Tensor:
    """phi_{a -> b}(x): the ODE dx/dtau = field(x, tau) solved from a to b to a tolerance.

    scipy's DOP853 (an eighth-order Runge-Kutta method with step control), all points as one
    system, in float64. For the toys (a cheap field); the reference every few-step method is
    measured against. x: (B, D) -> (B, D) float64. A field value that is NaN or infinite (a
    diverged network) is an error naming the time; so is a solve that needs more than
    `max_evals` evaluations of the field (a stiff or exploding field: the toys' take about
    500 at the default tolerances).
    """
    import numpy as np
    from scipy.integrate import solve_ivp

    checks.batch("x", x, min_dims=2)
    a, b = checks.unit_time("a", a), checks.unit_time("b", b)
    for name, tol in (("rtol", rtol), ("atol", atol)):
        checks.real(name, tol, low=0.0, open_low=True)
    max_evals = checks.count("max_evals", max_evals)
    if a == b:
        return x.to(torch.float64).clone()
    shape, evals = x.shape, [0]

    def rhs(t, y):
        if evals[0] >= max_evals:
            raise _TooManyEvaluations(t)
        evals[0] += 1
        xt = torch.from_numpy(y).reshape(shape)
        out = _value(field, xt, float(t)).double().numpy().ravel()
        bad = int((~np.isfinite(out)).sum())
        if bad:
            raise checks.ArgumentError(
                f"the field returned {bad} non-finite values (NaN or inf) at tau = {t:.6g} "
                f"({bad} of {out.size}, evaluation {evals[0]}): a diverged network or a "
                "field undefined there; check the model on finite inputs, or stop the solve "
                "before that time")
        return out

    y0 = x.detach().to(torch.float64).cpu().numpy().ravel()
    try:
        sol = solve_ivp(rhs, (a, b), y0, method="DOP853", rtol=rtol, atol=atol)
    except _TooManyEvaluations as stop:
        raise RuntimeError(
            f"the ODE solve from tau = {a:g} to {b:g} stopped after {max_evals} evaluations "
            f"of the field, at tau = {stop.args[0]:.6g}: the field is stiff or grows without "
            f"bound there; check it, loosen rtol/atol (now {rtol:g}/{atol:g}), or raise "
            "max_evals") from None
    if not sol.success:
        raise RuntimeError(f"the ODE solver failed: {sol.message}")
    return torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).reshape(shape)


class _TooManyEvaluations(Exception):
    """ode_map's bound on field evaluations reached (caught there, reworded)."""


def straightness(field: Field, x1: torch.Tensor, n_steps: int) -> tuple[torch.Tensor,
                                                                        torch.Tensor]:
    """Liu et al.'s straightness of the paths from x1 (tau = 1) to their ends x0 (tau = 0):
        S = int_0^1 |(x_1 - x_0) - v(x_tau, tau)|^2 dtau   (squared norm summed over dims),
    along Euler's path with n_steps even steps, the integral by the same left Riemann sum
    (the velocities Euler uses). x1: (B, ...) -> (x0 (B, ...), S (B,)); S = 0 for straight
    paths run at constant speed. No gradients; at most MAX_IMAGES points a network call;
    n_steps at most checks.MAX_GRID_STEPS = 100,000 (chapter 15 takes 1,000).

    Book: :eq:`ch15-straightness`.
    """
    checks.batch("x1", x1, min_dims=2)
    ts = uniform_grid(checks.grid_steps("n_steps", n_steps))

    def paths(x1):
        x, vs = x1, []
        for a, b in zip(ts[:-1], ts[1:], strict=True):
            v = _value(field, x, a)
            vs.append(v)
            x = x + (b - a) * v
        chord = x1 - x
        s = sum((chord - v).pow(2).reshape(len(x), -1).sum(1) for v in vs) / n_steps
        return x, s

    with torch.no_grad():
        return map_chunks(paths, x1)


# --- networks on chapter 13's grid ---------------------------------------------------------------
def _on_grid(w: torch.Tensor) -> bool:
    """Whether every time is a grid time (w = 0; one host sync): one network call, not two."""
    return bool((w < 1e-9).all())


def grid_velocity(model, x: torch.Tensor, tau: torch.Tensor, K: int) -> torch.Tensor:
    """v(x, tau) with one time per point from a model of the grid steps k + 1, tau = k / K,
    linear between grid times (as `companion.sde.interpolate_steps`, per point).

    model: (x (B, ...), step int64 (B,)) -> like x. x: (B, ...), tau: (B,) in [0, 1].
    One network call on B points when every tau is on the grid, else one on 2B.
    """
    K = checks.grid_intervals(K, model)
    checks.batch("x", x, min_dims=2)
    checks.unit_times("tau", tau, len(x))
    s = tau.double() * K
    lo = (s + 1e-9).floor().clamp(0, K)
    w = (s - lo).clamp(min=0).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    lo = lo.long()
    if _on_grid(w):
        return _value(model, x, lo + 1, "the model")
    hi = (lo + 1).clamp(max=K)
    out = _value(model, torch.cat([x, x]), torch.cat([lo + 1, hi + 1]), "the model")
    return (1 - w) * out[:len(x)] + w * out[len(x):]


def grid_field(model, K: int) -> Field:
    """The field v(x, tau) (tau a float) of a model on the grid: the solvers' input."""
    K = checks.grid_intervals(K, model)

    def field(x, tau):
        tau = checks.unit_time("tau", tau)
        return grid_velocity(model, x, torch.full((len(x),), tau, dtype=torch.float64,
                                                  device=x.device), K)
    return field


def jump_map(field: Field) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """A map to the data from a velocity-shaped network u: f(x, tau) = x - tau u(x, tau).

    The parameterization of the consistency map (and of the flow map phi_{tau -> 0} by its
    average velocity u over [0, tau]): f(x, 0) = x holds by construction, the boundary
    condition of Song et al. (2023); started from a teacher's velocity, f is the teacher's
    one Euler step to tau = 0.
    """
    def f(x, tau):
        tau = checks.unit_time("tau", tau)
        return x - tau * _value(field, x, tau)
    return f


# --- samplers -----------------------------------------------------------------------------------
def ode_sample(field: Field, x1: torch.Tensor, n_steps: int, *,
               solver: str = "euler") -> torch.Tensor:
    """x0 from x1 by Euler (n_steps evaluations) or Heun (2 n_steps) on the uniform grid from
    tau = 1 to 0. x1: (B, ...) -> (B, ...); no gradients, at most MAX_IMAGES a call;
    n_steps at most checks.MAX_GRID_STEPS = 100,000 (chapter 15 takes up to 64)."""
    checks.batch("x1", x1, min_dims=2)
    solve = {"euler": euler, "heun": heun}.get(solver)
    if solve is None:
        raise checks.ArgumentError(f"solver must be 'euler' or 'heun', got {solver!r}")
    ts = uniform_grid(checks.grid_steps("n_steps", n_steps))
    with torch.no_grad():
        return map_chunks(lambda x: solve(field, x, ts), x1)


def jump_sample(f, x1: torch.Tensor, n_steps: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Song et al.'s multistep consistency sampling on the uniform grid, n_steps evaluations:
        x = f(x_1, 1);  for tau = (n-1)/n, ..., 1/n:  x = f((1 - tau) x + tau z, tau),
    z ~ N(0, I) fresh each step (the jump to the data, then back onto the path at tau).
    f: (x, tau) -> like x (`jump_map`). x1: (B, ...) -> (B, ...). The fresh noise is drawn
    before the chunks, so the result does not depend on MAX_IMAGES. n_steps at most
    checks.MAX_GRID_STEPS = 100,000.
    """
    checks.batch("x1", x1, min_dims=2)
    ts = uniform_grid(checks.grid_steps("n_steps", n_steps))[1:-1]
    z = torch.randn((len(x1), max(len(ts), 1), *x1.shape[1:]), dtype=x1.dtype,
                    device=x1.device, generator=generator)

    def run(x1, z):
        x = _value(f, x1, 1.0, "the map")
        for i, tau in enumerate(ts):
            x = f((1 - tau) * x + tau * z[:, i], tau)
        return x

    with torch.no_grad():
        return map_chunks(run, x1, z)


# --- reflow --------------------------------------------------------------------------------------
def reflow_pairs(field: Field, x1: torch.Tensor, n_steps: int, *,
                 solver: str = "heun") -> torch.Tensor:
    """The teacher's ends x0 = phi_{1 -> 0}(x1) of the noise x1, the couplings reflow trains on.

    By `ode_sample`: Heun with n_steps steps (2 n_steps teacher evaluations a pair) unless
    solver='euler'. x1: (B, ...) -> x0 (B, ...).
    """
    return ode_sample(field, x1, n_steps, solver=solver)


def _check_pairs(x0, x1):
    checks.same_shape("x0 and x1 (pairs)", checks.batch("x0", x0, min_dims=2), x1)


def coupled_flow_matching_loss(model, x0: torch.Tensor, x1: torch.Tensor, K: int,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """Reflow's loss: E |v(x_tau, tau) - (x_1 - x_0)|^2 over the given pairs (x_0, x_1),
    x_tau = (1 - tau) x_0 + tau x_1, tau = k / K with k uniform on 0..K, per element mean.

    Chapter 13's flow-matching loss with the pairs coupled (the teacher's ODE ends) instead of
    independent: its minimum is 0 when the straight lines between pairs never cross.
    model: as `companion.flow.flow_matching_loss`. x0, x1: (B, ...).

    Book: :eq:`ch15-reflow`.
    """
    K = checks.grid_intervals(K, model)
    _check_pairs(x0, x1)
    k = torch.randint(0, K + 1, (len(x0),), device=x0.device, generator=generator)
    x_tau = linear_path(x0, x1, k.to(x0.dtype) / K)
    v = _value(model, x_tau, k + 1, "the model")
    return (v.float() - (x1 - x0).float()).pow(2).mean()


# --- progressive distillation --------------------------------------------------------------------
def progressive_distillation_loss(student, teacher, x0: torch.Tensor, n_student: int, K: int,
                                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Salimans and Ho's loss on the linear path: one student step of 2h = 1 / n_student
    lands where two teacher Euler steps of h land (DDIM is Euler on this path).

    tau_a = j / n_student with j uniform on 1..n_student, x_a = (1 - tau_a) x_0 + tau_a x_1,
        x_m = x_a - h v_T(x_a, tau_a),  x_c = x_m - h v_T(x_m, tau_a - h),
        v* = (x_a - x_c) / 2h,           loss = E |v_S(x_a, tau_a) - v*|^2
    (the endpoint error |x_c^S - x_c|^2 divided by (2h)^2; per element mean). student,
    teacher: models on the grid of K (`grid_velocity`); x0: (B, ...) data.

    Book: :eq:`ch15-pd`.
    """
    n = checks.count("n_student", n_student)
    K = checks.grid_intervals(K, student, teacher, who=("the student", "the teacher"))
    checks.batch("x0", x0, min_dims=2)
    j = torch.randint(1, n + 1, (len(x0),), device=x0.device, generator=generator)
    tau = j.double() / n
    x1 = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
    x_a = linear_path(x0, x1, tau.to(x0.dtype))
    h = 0.5 / n
    with torch.no_grad():
        x_m = x_a - h * grid_velocity(teacher, x_a, tau, K).to(x0.dtype)
        x_c = x_m - h * grid_velocity(teacher, x_m, tau - h, K).to(x0.dtype)
        target = (x_a - x_c) / (2 * h)
    v = grid_velocity(student, x_a, tau, K)
    return (v.float() - target.float()).pow(2).mean()


# --- consistency distillation --------------------------------------------------------------------
def consistency_distillation_loss(student, teacher, x0: torch.Tensor, N: int, K: int,
                                  generator: torch.Generator | None = None, *,
                                  solver: str = "heun") -> torch.Tensor:
    """Song et al.'s consistency distillation on the linear path, N intervals of h = 1 / N:
    n uniform on 1..N, tau_a = n / N, tau_b = (n - 1) / N, x_a = (1 - tau_a) x_0 + tau_a x_1,
        x_b = x_a - h v_T(x_a, tau_a)                          (solver='euler'), or Heun's
        x_b = x_a - h/2 [v_T(x_a, tau_a) + v_T(x_a - h v_T(x_a, tau_a), tau_b)]  (default,
              as Song et al. with Karras et al.'s sampler: two teacher evaluations),
        loss = E |f_S(x_a, tau_a) - sg[f_S(x_b, tau_b)]|^2,  f(x, tau) = x - tau u(x, tau),
    sg the stop-gradient: the target network is the student itself (EMA rate 0, Song and
    Dhariwal 2023). At tau_b = 0 the target is x_b itself, by f's boundary condition.
    Per element mean. student (u), teacher (v): models on the grid of K; x0: (B, ...).

    Book: :eq:`ch15-cd`.
    """
    N = checks.count("N", N)
    K = checks.grid_intervals(K, student, teacher, who=("the student", "the teacher"))
    checks.batch("x0", x0, min_dims=2)
    if solver not in ("euler", "heun"):
        raise checks.ArgumentError(f"solver must be 'euler' or 'heun', got {solver!r}")
    n = torch.randint(1, N + 1, (len(x0),), device=x0.device, generator=generator)
    tau_a, tau_b = n.double() / N, (n - 1).double() / N
    x1 = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
    shape = (-1, *([1] * (x0.dim() - 1)))
    x_a = linear_path(x0, x1, tau_a.to(x0.dtype))
    with torch.no_grad():
        v_a = grid_velocity(teacher, x_a, tau_a, K).to(x0.dtype)
        x_b = x_a - v_a / N
        if solver == "heun":
            x_b = x_a - (v_a + grid_velocity(teacher, x_b, tau_b, K).to(x0.dtype)) / (2 * N)
        f_b = x_b - tau_b.to(x0.dtype).reshape(shape) * grid_velocity(student, x_b, tau_b, K)
    f_a = x_a - tau_a.to(x0.dtype).reshape(shape) * grid_velocity(student, x_a, tau_a, K)
    return (f_a.float() - f_b.float()).pow(2).mean()


def consistency_residual(f: Callable, field: Field, x: torch.Tensor, tau: float) -> torch.Tensor:
    """d/dtau f(x_tau, tau) along the ODE dx/dtau = v: the consistency property says it is 0,
        d/dtau f(x_tau, tau) = df/dtau + (df/dx) v(x_tau, tau),
    one Jacobian-vector product (torch.func.jvp) in the direction (v, 1).
    f: (x (B, D), tau 0-dim tensor) -> (B, D), differentiable in both; x: (B, D) -> (B, D).

    Book: :eq:`ch15-consistency-pde`.
    """
    checks.batch("x", x, min_dims=2)
    tau = checks.unit_time("tau", tau)
    t = torch.tensor(tau, dtype=x.dtype, device=x.device)
    v = _value(field, x, tau).detach()
    with warnings.catch_warnings():
        # torch's first jvp scripts its own decompositions with the deprecated torch.jit
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        _, out = torch.func.jvp(f, (x, t), (v, torch.ones_like(t)))
    return out
