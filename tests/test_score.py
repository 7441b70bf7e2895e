"""companion.score and the toy's exact noisy classifier, on chapter 8's 2-D mixture where
every score is known: the implicit, sliced and denoising losses against explicit score
matching up to their constants, Tweedie's formula against a Monte Carlo posterior mean,
guidance as Bayes' rule on scores (exact at w = 1), and the errors for bad input."""

import math

import pytest
import torch

from companion import diffusion as dm
from companion import score as S
from companion import toy

pytestmark = pytest.mark.usefixtures("float64_one_thread")

Z = 4.0  # how many standard errors a Monte Carlo check allows


def chapter8_mixture(alpha_bar: float = 1.0) -> toy.GaussianMixture:
    """Chapter 8's five-component mixture, or its noised version at alpha_bar (a mixture
    again: means sqrt(alpha_bar) mu_k, variances alpha_bar s^2 + 1 - alpha_bar)."""
    a = torch.arange(5, dtype=torch.float64) * 2 * math.pi / 5 + math.pi / 2
    means = torch.stack([a.cos(), a.sin()], 1)
    return toy.GaussianMixture([0.35, 0.25, 0.18, 0.12, 0.10], math.sqrt(alpha_bar) * means,
                               math.sqrt(alpha_bar * 0.12**2 + 1 - alpha_bar))


def network(seed: int, width: int = 32) -> torch.nn.Module:
    """A fixed small MLP 2 -> width -> 2 with random weights (gain 2: Jacobian entries of
    order 1, so that a wrong trace moves the loss by many standard errors)."""
    g = torch.Generator().manual_seed(seed)
    layers = [torch.nn.Linear(2, width), torch.nn.Tanh(), torch.nn.Linear(width, 2)]
    with torch.no_grad():
        for lin in layers[::2]:
            fan_in = lin.weight.shape[1]
            lin.weight.copy_(2 * torch.randn(lin.weight.shape, generator=g) / math.sqrt(fan_in))
            lin.bias.copy_(0.5 * torch.randn(lin.bias.shape, generator=g))
    return torch.nn.Sequential(*layers).double()


def mean_and_se(values) -> tuple[float, float]:
    v = torch.tensor(values)
    return v.mean().item(), v.std().item() / math.sqrt(len(v))


def assert_zero_mean(values, what: str) -> None:
    m, se = mean_and_se(values)
    assert abs(m) < Z * se, f"{what}: {m:.4g} +- {se:.2g} (SE) is not zero"


# --- the losses on exact linear scores -------------------------------------------------------
def linear_model(D: int = 3) -> torch.nn.Linear:
    lin = torch.nn.Linear(D, D).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(D, D, generator=torch.Generator().manual_seed(1)))
    return lin


def test_implicit_loss_of_a_linear_score_and_its_gradient():
    """s(x) = M x + b: J_ISM = tr M + 1/2 mean |M x + b|^2, and its gradient in M is
    I + mean (M x + b) x^T (the trace term is in the graph)."""
    lin, x = linear_model(), torch.randn(50, 3)
    M, b = lin.weight.detach(), lin.bias.detach()
    loss = S.implicit_score_matching(lin, x)
    s = x @ M.T + b
    assert loss.item() == pytest.approx(torch.trace(M).item() + 0.5 * s.pow(2).sum(1).mean()
                                        .item(), abs=1e-12)
    loss.backward()
    assert torch.allclose(lin.weight.grad, torch.eye(3) + s.T @ x / len(x), atol=1e-12)


def test_sliced_loss_with_given_projections_on_a_linear_score():
    lin, x = linear_model(), torch.randn(50, 3)
    M = lin.weight.detach()
    s = lin(x).detach()
    v = torch.randn(4, 50, 3)
    quad = torch.einsum("pbi,ij,pbj->pb", v, M, v)
    plain = (quad + 0.5 * (v * s).sum(-1).pow(2)).mean()
    reduced = (quad + 0.5 * s.pow(2).sum(-1)).mean()
    assert S.sliced_score_matching(lin, x, projections=v).item() == pytest.approx(
        plain.item(), abs=1e-12)
    assert S.sliced_score_matching(lin, x, projections=v, variance_reduced=True).item() == \
        pytest.approx(reduced.item(), abs=1e-12)
    loss = S.sliced_score_matching(lin, x, projections=v)
    loss.backward()  # v^T J v is in the graph: d/dM mean v^T M v = mean v v^T, plus the rest
    vs = (v * s).sum(-1)
    want = torch.einsum("pbi,pbj->ij", v, v) / 200 + torch.einsum(
        "pb,pbi,bj->ij", vs, v, x) / 200
    assert torch.allclose(lin.weight.grad, want, atol=1e-12)


def test_denoising_loss_is_chapter8s_epsilon_loss_rescaled():
    """With x~ = sqrt(ab) x + sqrt(1 - ab) e and eps_hat = -sqrt(1 - ab) s (chapter 8's
    identity, through Diffusion.eps_from_score): J_DSM = E|eps_hat - e|^2 / (2 (1 - ab))."""
    d = dm.Diffusion(dm.linear_betas(20, 0.01, 0.3))
    t = 7
    ab = d.alphas_bar[t - 1].item()  # alphas_bar holds steps 1..T
    net, x, e = network(3), torch.randn(64, 2), torch.randn(64, 2)
    x_t = d.q_sample(x, t, e)
    eps_hat = d.eps_from_score(x_t, t, net(x_t))
    eps_loss = (eps_hat - e).pow(2).sum(1).mean()
    dsm = S.denoising_score_matching(net, x, math.sqrt(1 - ab), alpha=math.sqrt(ab), noise=e)
    assert dsm.item() == pytest.approx(eps_loss.item() / (2 * (1 - ab)), rel=1e-12)


# --- equal to explicit score matching up to constants, on the mixture -----------------------
def batches(gm, n: int = 40_000, size: int = 500, seed: int = 0):
    _, x = gm.sample(n, generator=torch.Generator().manual_seed(seed))
    return x.split(size)


OBJECTIVES = {
    "implicit": lambda net, x, g: S.implicit_score_matching(net, x),
    "sliced": lambda net, x, g: S.sliced_score_matching(
        net, x, generator=torch.Generator().manual_seed(g)),
    "sliced, variance-reduced": lambda net, x, g: S.sliced_score_matching(
        net, x, variance_reduced=True, generator=torch.Generator().manual_seed(g)),
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_implicit_and_sliced_equal_explicit_up_to_a_constant(name):
    """For two fixed networks A and B, J(A) - J(B) = J_ESM(A) - J_ESM(B), and
    J(A) - J_ESM(A) = -1/2 E|grad log p|^2, within the Monte Carlo error of 80 batches (the
    noised mixture at alpha_bar = 0.5, whose score is exact and of moderate size)."""
    gm = chapter8_mixture(0.5)
    A, B = network(1), network(2)
    objective = OBJECTIVES[name]
    d_esm, d_diff, const = [], [], []
    for i, x in enumerate(batches(gm)):
        true = toy.diffused_score(gm, x, 1.0)
        esm = [S.explicit_score_matching(n, x, true).item() for n in (A, B)]
        obj = [objective(n, x, i).item() for n in (A, B)]
        d_esm.append(esm[0] - esm[1])
        d_diff.append((obj[0] - obj[1]) - (esm[0] - esm[1]))
        const.append(obj[0] - esm[0] + 0.5 * true.pow(2).sum(1).mean().item())
    m, se = mean_and_se(d_esm)
    assert abs(m) > 20 * se, "the two networks must differ for the check to mean anything"
    assert_zero_mean(d_diff, f"{name}: J(A) - J(B) - (J_ESM(A) - J_ESM(B))")
    assert_zero_mean(const, f"{name}: J(A) - J_ESM(A) + 1/2 E|grad log p|^2")


def test_denoising_equals_explicit_on_the_noised_density_up_to_a_constant():
    """x from chapter 8's mixture, x~ = sqrt(ab) x + sqrt(1 - ab) e at ab = 0.5: J_DSM(A) -
    J_DSM(B) equals J_ESM(A; q) - J_ESM(B; q) on the noised density q, and J_DSM - J_ESM(q)
    is D / (2 sigma^2) - 1/2 E_q|grad log q|^2."""
    gm, ab = chapter8_mixture(), 0.5
    alpha, sigma = math.sqrt(ab), math.sqrt(1 - ab)
    A, B = network(1), network(2)
    g = torch.Generator().manual_seed(5)
    d_esm, d_diff, const = [], [], []
    for x in batches(gm):
        e = torch.randn(x.shape, generator=g)
        x_noisy = alpha * x + sigma * e
        true = toy.diffused_score(gm, x_noisy, ab)
        esm = [S.explicit_score_matching(n, x_noisy, true).item() for n in (A, B)]
        dsm = [S.denoising_score_matching(n, x, sigma, alpha=alpha, noise=e).item()
               for n in (A, B)]
        d_esm.append(esm[0] - esm[1])
        d_diff.append((dsm[0] - dsm[1]) - (esm[0] - esm[1]))
        const.append(dsm[0] - esm[0] - (2 / (2 * sigma**2)
                                        - 0.5 * true.pow(2).sum(1).mean().item()))
    m, se = mean_and_se(d_esm)
    assert abs(m) > 20 * se
    assert_zero_mean(d_diff, "J_DSM(A) - J_DSM(B) - (J_ESM(A; q) - J_ESM(B; q))")
    assert_zero_mean(const, "J_DSM - J_ESM(q) - C")


def test_denoising_draws_its_noise_from_the_generator():
    net, x = network(1), torch.randn(8, 2)
    one = S.denoising_score_matching(net, x, 0.3, generator=torch.Generator().manual_seed(4))
    two = S.denoising_score_matching(net, x, 0.3, generator=torch.Generator().manual_seed(4))
    e = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    assert one.item() == two.item()
    assert one.item() == S.denoising_score_matching(net, x, 0.3, noise=e).item()


# --- Tweedie ---------------------------------------------------------------------------------
def test_tweedie_is_the_monte_carlo_posterior_mean_on_the_mixture():
    """E[x_0 | x_t] by self-normalized importance sampling (x_0 ~ p, weights q(x_t | x_0))
    against Tweedie's formula with the exact score, within 4 of its standard errors; and
    against the closed-form posterior mean of the mixture to 1e-12."""
    gm, ab = chapter8_mixture(), 0.3
    x_t = torch.tensor([[0.0, 0.0], [0.5, 0.3], [-0.4, -0.6], [1.0, 1.0]])
    got = S.tweedie(x_t, toy.diffused_score(gm, x_t, ab), ab)
    _, x0 = gm.sample(400_000, generator=torch.Generator().manual_seed(0))
    for x, want in zip(x_t, got, strict=True):
        logw = -(x - math.sqrt(ab) * x0).pow(2).sum(1) / (2 * (1 - ab))
        w = torch.softmax(logw, 0)
        mc = (w[:, None] * x0).sum(0)
        se = (w[:, None].pow(2) * (x0 - mc).pow(2)).sum(0).sqrt()
        assert ((mc - want).abs() < Z * se).all(), (mc, want, se)
        assert (want - mc).abs().max() > 0  # an estimate, not the same computation
    # closed form: each component's Gaussian posterior mean, weighted by responsibilities
    r = toy.diffused_log_posterior(gm, x_t, ab).exp()
    s2, v = gm.stds**2, ab * gm.stds**2 + 1 - ab
    post = gm.means[None] + (math.sqrt(ab) * s2 / v)[None, :, None] * (
        x_t[:, None] - math.sqrt(ab) * gm.means[None])
    assert torch.allclose(got, (r[:, :, None] * post).sum(1), atol=1e-12)
    assert torch.allclose(got, toy.diffused_posterior_mean(gm, x_t, ab), atol=1e-12)


@pytest.mark.parametrize("ab", [1.0, 0.6, 0.1])
def test_diffused_posterior_mean_is_tweedie_for_both_mixtures(ab):
    """companion.toy's closed form against Tweedie with the exact score, for shared and
    unequal widths, one noise level for all points or one per point; at alpha_bar = 1 it is
    x itself."""
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(3))
    for gm in (chapter8_mixture(), toy.GaussianMixture(
            [0.2, 0.3, 0.5], [[0.0, 1.0], [1.0, -0.5], [-1.0, 0.0]], [0.1, 0.4, 0.2])):
        got = toy.diffused_posterior_mean(gm, x, ab)
        assert torch.allclose(got, S.tweedie(x, toy.diffused_score(gm, x, ab), ab),
                              atol=1e-12)
        per_point = toy.diffused_posterior_mean(gm, x, torch.full((30,), ab,
                                                                  dtype=torch.float64))
        assert torch.allclose(per_point, got, atol=1e-14)
    if ab == 1.0:
        assert torch.allclose(got, x, atol=1e-14)


def test_tweedie_agrees_with_the_chains_parameterizations():
    """x0_from_eps(eps_from_score(s)) of chapter 8's Diffusion at a step = tweedie there."""
    d = dm.Diffusion(dm.linear_betas(30, 0.01, 0.2))
    x, s = torch.randn(6, 2), torch.randn(6, 2)
    t = 11
    chain = d.x0_from_eps(x, t, d.eps_from_score(x, t, s))
    assert torch.allclose(S.tweedie(x, s, d.alphas_bar[t - 1].item()), chain, atol=1e-12)


# --- the exact noisy classifier and guidance -------------------------------------------------
GRID = torch.cartesian_prod(torch.linspace(-2, 2, 9), torch.linspace(-2, 2, 9))
LEVELS = [1.0, 0.6, 0.1, 0.01]


def mixtures() -> list[toy.GaussianMixture]:
    """Chapter 8's mixture (one shared width) and the same with unequal widths."""
    gm = chapter8_mixture()
    return [gm, toy.GaussianMixture(gm.weights, gm.means, [0.1, 0.3, 0.2, 0.5, 0.15])]


def classes() -> list[tuple[toy.GaussianMixture, int]]:
    """(mixture, class) for every class of both mixtures."""
    return [(gm, y) for gm in mixtures() for y in range(gm.K)]


def test_noisy_classifier_is_bayes_rule_and_the_clean_posterior_at_alpha_bar_1():
    gm = chapter8_mixture()
    assert torch.allclose(toy.diffused_log_posterior(gm, GRID, 1.0), gm.log_posterior(GRID),
                          atol=1e-12)
    for ab in LEVELS:
        noisy = chapter8_mixture(ab)  # the noised mixture built directly
        assert torch.allclose(toy.diffused_log_posterior(gm, GRID, ab),
                              noisy.log_posterior(GRID), atol=1e-12)


@pytest.mark.parametrize("ab", LEVELS)
def test_classifier_gradient_against_finite_differences(ab):
    h, x = 1e-6, GRID[::4]
    for gm, y in classes():
        grad = toy.diffused_log_posterior_grad(gm, x, y, ab)
        fd = torch.stack([(toy.diffused_log_posterior(gm, x + h * e, ab)[:, y]
                           - toy.diffused_log_posterior(gm, x - h * e, ab)[:, y]) / (2 * h)
                          for e in torch.eye(2)], 1)
        assert torch.allclose(grad, fd, rtol=1e-6, atol=1e-6 * (1 + grad.abs().max()))


@pytest.mark.parametrize("ab", LEVELS)
def test_conditional_score_is_the_noised_components_score(ab):
    for gm, y in classes():
        one = toy.GaussianMixture([1.0], gm.means[y:y + 1], gm.stds[y:y + 1])
        assert torch.allclose(toy.diffused_conditional_score(gm, GRID, y, ab),
                              toy.diffused_score(one, GRID, ab), atol=1e-12)


@pytest.mark.parametrize("ab", LEVELS)
def test_guided_score_with_the_exact_classifier_at_w1_is_the_conditional_score(ab):
    for gm, y in classes():
        guided = S.classifier_guided_score(
            lambda x, gm=gm: toy.diffused_score(gm, x, ab),
            lambda x, gm=gm, y=y: toy.diffused_log_posterior_grad(gm, x, y, ab), 1.0)
        cond = toy.diffused_conditional_score(gm, GRID, y, ab)
        assert (guided(GRID) - cond).abs().max().item() < 1e-10
    # w = 0 is the unconditional score
    assert torch.equal(S.classifier_guided_score(
        lambda x: toy.diffused_score(gm, x, ab),
        lambda x: toy.diffused_log_posterior_grad(gm, x, 0, ab), 0.0)(GRID),
        toy.diffused_score(gm, GRID, ab))


def test_classifier_free_guidance_with_exact_scores():
    """w = 0: the conditional score. w > 0: s(x|y) + w (s(x|y) - s(x)), which is classifier
    guidance with the exact noisy classifier at scale 1 + w. Extra arguments (a time) pass
    through to both scores."""
    gm = chapter8_mixture()
    y = 2

    def cond(x, ab):
        return toy.diffused_conditional_score(gm, x, y, ab)

    def uncond(x, ab):
        return toy.diffused_score(gm, x, ab)

    def classifier(x, ab):
        return toy.diffused_log_posterior_grad(gm, x, y, ab)

    for ab in LEVELS:
        c, u = cond(GRID, ab), uncond(GRID, ab)
        assert torch.equal(S.classifier_free_score(cond, uncond, 0.0)(GRID, ab), c)
        for w in (0.5, 3.0):
            cfg = S.classifier_free_score(cond, uncond, w)(GRID, ab)
            assert torch.allclose(cfg, c + w * (c - u), atol=1e-12)
            cg = S.classifier_guided_score(uncond, classifier, 1 + w)(GRID, ab)
            assert (cfg - cg).abs().max().item() < 1e-10
            assert (cfg - c).abs().max().item() > 0.01  # guidance moves the score


# --- bad input -------------------------------------------------------------------------------
def _net(x):
    return -x


def test_bad_input_gets_clear_errors():
    gm, x = chapter8_mixture(), torch.randn(4, 2)
    score, cls = (lambda x: toy.diffused_score(gm, x, 0.5)), (lambda x: x)
    with pytest.raises(ValueError, match=r"w \(the guidance weight, >= 0\).*-1"):
        S.classifier_guided_score(score, cls, -1.0)
    with pytest.raises(ValueError, match="guidance weight"):
        S.classifier_free_score(score, score, -0.5)
    with pytest.raises(ValueError, match="finite"):
        S.classifier_free_score(score, score, float("nan"))
    with pytest.raises(TypeError, match="cond_score must be a function"):
        S.classifier_free_score(None, score, 1.0)
    with pytest.raises(ValueError, match=r"uncond_score\(x\) returned shape \(4, 1\)"):
        S.classifier_free_score(score, lambda x: x[:, :1], 1.0)(x)
    with pytest.raises(ValueError, match=r"y must be a class of the mixture, in 0..4.*5..5"):
        toy.diffused_conditional_score(gm, x, torch.full((4,), 5), 0.5)
    with pytest.raises(ValueError, match=r"y .*in 0..4, got 5"):
        toy.diffused_log_posterior_grad(gm, x, 5, 0.5)
    with pytest.raises(ValueError, match=r"in 0..4, got -1"):
        toy.diffused_log_posterior_grad(gm, x, -1, 0.5)
    with pytest.raises(ValueError, match=r"one per point \(4,\).*\(3,\)"):
        toy.diffused_conditional_score(gm, x, torch.tensor([0, 1, 2]), 0.5)
    with pytest.raises(ValueError, match="integer class"):
        toy.diffused_conditional_score(gm, x, torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match="alpha_bar must lie in"):
        toy.diffused_log_posterior(gm, x, 0.0)
    with pytest.raises(ValueError, match="exact trace is for points; for images use sliced"):
        S.implicit_score_matching(_net, torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"score\(x\) returned shape \(4, 1\)"):
        S.implicit_score_matching(lambda x: x[:, :1], x)
    with pytest.raises(ValueError, match=r"projections must be \(P, \*x.shape\) = \(P, 4, 2\)"):
        S.sliced_score_matching(_net, x, projections=torch.randn(4, 2))
    with pytest.raises(ValueError, match="n_projections must be a whole number >= 1"):
        S.sliced_score_matching(_net, x, 0)
    with pytest.raises(ValueError, match=r"sigma \(the noise's standard deviation\)"):
        S.denoising_score_matching(_net, x, 0.0)
    with pytest.raises(ValueError, match="x and noise must be tensors of the same shape"):
        S.denoising_score_matching(_net, x, 0.5, noise=torch.randn(4, 3))
    with pytest.raises(ValueError, match="x and target must be tensors of the same shape"):
        S.explicit_score_matching(_net, x, torch.randn(4))
    with pytest.raises(ValueError, match=r"alpha_bar must be a number in \(0, 1\]"):
        S.tweedie(x, x, 0.0)
    with pytest.raises(ValueError, match="x_t and score must be tensors of the same shape"):
        S.tweedie(x, x[:1], 0.5)
