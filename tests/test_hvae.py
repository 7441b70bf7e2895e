"""Tests of companion.models.hvae, each against a computation that does not use it."""

import math

import pytest
import torch
from torch import distributions as D

from companion.metrics import iw_estimate, model_iw_log_likelihood
from companion.models.hvae import (
    HierarchicalVAE,
    HierarchyLoss,
    MarkovianHVAE,
    gaussian_product,
    kl_gaussian,
)
from companion.models.vae import VAE, to_8bit_range
from companion.train import fit


def images(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, 1, 28, 28, generator=g) * 0.6, generator=g)


def test_product_of_gaussians_is_the_normalized_pointwise_product():
    """1-D quadrature: N(z; mu_p, var_p) d(z) / integral against N(z; gaussian_product(...)),
    with d(z) = N(z; mu_d, var_d) handed over as eta = mu_d / var_d, log lambda = -log var_d."""
    z = torch.linspace(-12, 12, 40001, dtype=torch.float64)
    dz = z[1] - z[0]
    for mu_p, var_p, mu_d, var_d in [(0.3, 2.0, -1.1, 0.5), (2.0, 0.05, -3.0, 4.0),
                                     (0.0, 1.0, 0.0, 1.0)]:
        log_pointwise = (D.Normal(mu_p, var_p ** 0.5).log_prob(z)
                         + D.Normal(mu_d, var_d ** 0.5).log_prob(z))
        density = torch.exp(log_pointwise - torch.logsumexp(log_pointwise, 0)) / dz
        t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        mu, logvar = gaussian_product(t(mu_p), t(math.log(var_p)), t(mu_d / var_d),
                                      t(-math.log(var_d)))
        expected = D.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).exp()
        torch.testing.assert_close(density, expected, rtol=0, atol=1e-6)
        # and the moments of the normalized product, by quadrature
        mean = (z * density).sum() * dz
        torch.testing.assert_close(mean, mu, rtol=0, atol=1e-6)
        torch.testing.assert_close(((z - mean) ** 2 * density).sum() * dz, logvar.exp(),
                                   rtol=1e-5, atol=0)


def test_kl_gaussian_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mq, lq, mp, lp = (torch.randn(4, 3, generator=g) for _ in range(4))
    expected = D.kl_divergence(D.Normal(mq, (0.5 * lq).exp()), D.Normal(mp, (0.5 * lp).exp()))
    torch.testing.assert_close(kl_gaussian(mq, lq, mp, lp), expected)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_shapes_and_layers(m):
    torch.manual_seed(0)
    dims, hidden = (6, 4, 3)[:m], (32, 16, 8)[:m]
    model = HierarchicalVAE(dims, hidden)
    x = images(4)
    t = model.elbo_terms(x, n_samples=3)
    assert t.reconstruction.shape == t.kl.shape == (4,) and t.kl_layers.shape == (4, m)
    assert [z.shape for z in t.z] == [(3, 4, d) for d in dims]
    z, log_q = model.sample_q(x, 7)
    assert log_q.shape == model.log_joint(x, z).shape == (7, 4)
    assert model.sample(5).shape == (5, 1, 28, 28)


@pytest.mark.slow
def test_per_layer_kls_sum_to_a_joint_monte_carlo_kl():
    """sum_i E KL(q(z_i | z_>i, x) || p(z_i | z_>i)) = E_q[log q(z|x) - log p(z)], z joint."""
    torch.manual_seed(0)
    model = HierarchicalVAE((3, 2, 2), (16, 8, 8)).double()
    with torch.no_grad():  # make the priors depend on the layer above (they start at N(0, I))
        for net in model.priors:
            net[-1].weight.normal_(0, 0.5)
            net[-1].bias.normal_(0, 0.3)
    x = images(3).double()
    n = 20_000
    with torch.no_grad():
        per_layer = model.elbo_terms(x, n_samples=n).kl_layers       # (B, m)
        z, log_q = model.sample_q(x, n)
        log_p = model.log_prior(z)
    mc = (log_q - log_p).mean(0)
    se = (log_q - log_p).std(0) / math.sqrt(n)
    summed = per_layer.sum(-1)
    assert (per_layer > 0).all()
    # the per-layer sum has Monte Carlo noise too (its lower layers), smaller than the joint's
    assert ((summed - mc).abs() < 6 * se).all(), (summed, mc, se)
    # the top layer alone is not the whole KL: the lower layers carry real nats here
    assert (per_layer[:, :-1].sum(-1) > 20 * se).all()


@pytest.mark.parametrize("likelihood", ["bernoulli", "discretized"])
def test_one_layer_is_chapter_6_vae_with_the_same_weights(likelihood):
    torch.manual_seed(0)
    vae = VAE(latent_dim=5, hidden=(24,), likelihood=likelihood)
    h = HierarchicalVAE((5,), (24,), likelihood=likelihood)
    with torch.no_grad():
        h.up[0].load_state_dict(vae.encoder.body[0].state_dict())
        h.d_heads[0].load_state_dict(vae.encoder.head.state_dict())
        h.decoder.load_state_dict(vae.decoder.state_dict())
    x = images(4)
    if likelihood == "discretized":  # 8-bit levels on [-1, 1]
        x = to_8bit_range(torch.rand(4, 1, 28, 28))
        torch.testing.assert_close(h.mean_image(torch.zeros(3, 5)),
                                   vae.mean_image(torch.zeros(3, 5)))
    torch.manual_seed(3)
    a = vae.elbo_terms(x, n_samples=4)
    torch.manual_seed(3)
    b = h.elbo_terms(x, n_samples=4)
    torch.testing.assert_close(b.reconstruction, a.reconstruction)
    torch.testing.assert_close(b.kl, a.kl)
    torch.testing.assert_close(b.elbo, a.elbo)
    z = torch.randn(6, 4, 5)
    torch.testing.assert_close(h.log_joint(x, [z]), vae.log_joint(x, z))


# --- the importance-weighted estimate on a linear Gaussian hierarchy -------------------------
class LinearGaussianHierarchy:
    """z2 ~ N(0, I_2), z1 | z2 ~ N(A z2, s1^2 I_3), x | z1 ~ N(B z1 + b, s^2 I_4).

    (z1, z2, x) is jointly Gaussian, so p(x) and p(z | x) follow by Gaussian conditioning.
    """

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        dt = torch.float64
        self.A = torch.randn(3, 2, generator=g, dtype=dt)
        self.B = torch.randn(4, 3, generator=g, dtype=dt)
        self.b = torch.randn(4, generator=g, dtype=dt)
        self.s1, self.s = 0.7, 0.5
        c2 = torch.eye(2, dtype=dt)
        c1 = self.A @ self.A.T + self.s1 ** 2 * torch.eye(3, dtype=dt)
        c12 = self.A                                       # Cov(z1, z2)
        cz = torch.cat([torch.cat([c1, c12], 1), torch.cat([c12.T, c2], 1)])   # (5, 5)
        self.cz = cz
        proj = torch.cat([self.B, torch.zeros(4, 2, dtype=dt)], 1)             # x = proj z + ...
        self.cx = proj @ cz @ proj.T + self.s ** 2 * torch.eye(4, dtype=dt)
        self.czx = cz @ proj.T                                                 # Cov(z, x)

    def log_px(self, x):
        return D.MultivariateNormal(self.b, self.cx).log_prob(x)

    def posterior(self, x):
        """p(z | x) for z = (z1, z2) stacked: batch (B,), event (5,)."""
        gain = self.czx @ torch.linalg.inv(self.cx)
        mean = (x - self.b) @ gain.T
        cov = self.cz - gain @ self.czx.T
        return D.MultivariateNormal(mean, (cov + cov.T) / 2)

    def log_joint(self, x, z):
        z1, z2 = z
        lp = D.Normal(0.0, 1.0).log_prob(z2).sum(-1)
        lp = lp + D.Normal(z2 @ self.A.T, self.s1).log_prob(z1).sum(-1)
        return lp + D.Normal(z1 @ self.B.T + self.b, self.s).log_prob(x).sum(-1)

    def sampler(self, shift=0.0, widen=1.0):
        """q(z | x) as iw_estimate takes it: the exact posterior, or a shifted, wider one."""
        def sample_q(x, k):
            p = self.posterior(x)
            q = D.MultivariateNormal(p.mean + shift, p.covariance_matrix * widen)
            z = q.sample((k,))
            return [z[..., :3], z[..., 3:]], q.log_prob(z)
        return sample_q


def test_iw_is_exact_with_the_true_posterior_of_a_linear_gaussian_hierarchy():
    lg = LinearGaussianHierarchy()
    torch.manual_seed(0)
    x = torch.randn(6, 4, dtype=torch.float64) * 2
    for k in (1, 5):
        est = iw_estimate(lg.sampler(), lg.log_joint, x, k)
        torch.testing.assert_close(est.log_px, lg.log_px(x), rtol=0, atol=1e-9)


@pytest.mark.slow
def test_iw_is_above_the_elbo_and_grows_with_k():
    lg = LinearGaussianHierarchy()
    torch.manual_seed(0)
    x = torch.randn(4, 4, dtype=torch.float64).repeat(300, 1)   # 300 runs per example
    log_px = lg.log_px(x).mean().item()
    means, errors = {}, {}
    for k in (1, 4, 32):
        est = iw_estimate(lg.sampler(shift=0.3, widen=1.8), lg.log_joint, x, k,
                          batch_size=1200)
        assert (est.log_px >= est.elbo - 1e-12).all()
        means[k] = est.log_px.mean().item()
        errors[k] = est.log_px.std().item() / math.sqrt(len(x))
    assert log_px - means[1] > 0.3                                     # a real gap
    assert means[1] < means[4] - 3 * (errors[1] + errors[4])
    assert means[4] < means[32] - 3 * (errors[4] + errors[32])
    assert means[32] < log_px + 3 * errors[32]


@pytest.mark.parametrize("make", [lambda: HierarchicalVAE((4, 2), (16, 8)),
                                  lambda: MarkovianHVAE(T=3, latent_dim=3, hidden=16,
                                                        step_hidden=8)],
                         ids=["hierarchical", "markovian"])
@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_model_iw_bound_is_above_its_elbo(make):
    torch.manual_seed(0)  # the weights too: built at collection, they hung on test order
    model = make()
    x = images(3)
    with torch.no_grad():
        elbo = model.elbo_terms(x, n_samples=2000).elbo
    est = model_iw_log_likelihood(model, x, k=2000)
    # the same samples' mean log weight is the ELBO: two estimates of one number
    torch.testing.assert_close(est.elbo.float(), elbo, rtol=0, atol=0.5)
    assert (est.log_px > elbo + 1).all()


def test_markovian_elbo_is_log_joint_minus_log_q():
    """elbo_terms' terms recombine into the mean of log p(x, z) - log q(z | x)."""
    torch.manual_seed(0)
    model = MarkovianHVAE(T=3, latent_dim=2, hidden=16, step_hidden=8)
    x = images(2)
    torch.manual_seed(1)
    t = model.elbo_terms(x, n_samples=50)
    torch.manual_seed(1)
    z, log_q = model.sample_q(x, 50)
    torch.testing.assert_close(t.elbo, (model.log_joint(x, z) - log_q).mean(0))


def test_markovian_step_terms_are_log_q_minus_log_p_of_their_own_layer():
    """Layer t's term is E[log q(z_t | z_{t-1}) - log p(z_t | z_{t+1})] (p(z_T) = N(0, I)),
    recomputed here with torch.distributions from the same draws."""
    torch.manual_seed(0)
    model = MarkovianHVAE(T=3, latent_dim=2, hidden=16, step_hidden=8)
    x = images(2)
    n = 40
    torch.manual_seed(1)
    t = model.elbo_terms(x, n_samples=n)
    torch.manual_seed(1)
    normal = lambda mu, logvar: D.Independent(D.Normal(mu, (0.5 * logvar).exp()), 1)  # noqa: E731
    mu, logvar = model.encoder(x.flatten(1)).chunk(2, -1)
    q = [normal(mu, logvar)]
    z = [q[0].mean + q[0].stddev * torch.randn(n, *mu.shape)]
    for step in model.q_steps:
        mu, logvar = step(z[-1]).chunk(2, -1)
        q.append(normal(mu, logvar))
        z.append(mu + (0.5 * logvar).exp() * torch.randn(mu.shape))
    p = [normal(*net(z[i + 1]).chunk(2, -1)) for i, net in enumerate(model.p_steps)]
    p.append(normal(torch.zeros_like(z[-1]), torch.zeros_like(z[-1])))
    expected = torch.stack([(qi.log_prob(zi) - pi.log_prob(zi)).mean(0)
                            for qi, pi, zi in zip(q, p, z, strict=True)], -1)
    torch.testing.assert_close(t.kl_layers, expected)


def test_free_bits_and_warmup_in_the_loss():
    torch.manual_seed(0)
    model = HierarchicalVAE((4, 2), (16, 8))
    x = images(8)
    loss = HierarchyLoss(warmup_steps=10, free_bits=0.0, binarize=False)
    torch.manual_seed(0)
    at0, logs = loss(model, x, step=0)
    torch.testing.assert_close(at0, -logs["reconstruction"])                # beta = 0
    torch.manual_seed(0)
    done, logs = loss(model, x, step=10)
    torch.testing.assert_close(done, -logs["elbo"])                          # beta = 1
    huge = HierarchyLoss(free_bits=100.0, binarize=False)
    torch.manual_seed(0)
    free, logs = huge(model, x, step=50)
    # every layer's rate sits below its allowance: the loss sees the allowance instead
    torch.testing.assert_close(free, -logs["reconstruction"] + 100.0 * (4 + 2))


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_a_resumed_fit_continues_the_hierarchy_warmup(tmp_path):
    x = images(16)
    ck = tmp_path / "h.pt"
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        def stop_at_6(model, batch, step):
            if step == 6:
                raise KeyboardInterrupt
            return HierarchyLoss(warmup_steps=10)(model, batch, step=step)
        fit(HierarchicalVAE((3, 2), (8, 4)), stop_at_6, x, steps=12, batch_size=8,
            checkpoint=ck, quiet=True)
    resumed = fit(HierarchicalVAE((3, 2), (8, 4)), HierarchyLoss(warmup_steps=10), x,
                  steps=12, batch_size=8, checkpoint=ck, quiet=True)
    assert resumed.resumed_at == 6
    assert resumed.history["beta"] == pytest.approx([s / 10 for s in range(6)]
                                                    + [0.6, 0.7, 0.8, 0.9, 1.0, 1.0])


def test_errors_are_clear():
    with pytest.raises(ValueError, match="latent_dims"):
        HierarchicalVAE((), ())
    with pytest.raises(ValueError, match="hidden must give one size per"):
        HierarchicalVAE((4, 2), (16,))
    with pytest.raises(ValueError, match="prior_hidden"):
        HierarchicalVAE((4, 2, 2), (16, 8, 8), prior_hidden=(8,))
    with pytest.raises(ValueError, match="T must be"):
        MarkovianHVAE(T=0)
    model = HierarchicalVAE((4, 2), (16, 8))
    with pytest.raises(ValueError, match="28"):
        model.elbo_terms(torch.zeros(2, 784))
    with pytest.raises(ValueError, match="noise for each"):
        model.generate([torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="warmup_steps"):
        HierarchyLoss(warmup_steps=-1)
