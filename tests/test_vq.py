"""Discrete latents (chapter 19): the vector quantizer (nearest code, straight-through
gradient, the two losses, EMA updates, dead-code restarts, usage), FSQ, the rate, the VQ
autoencoder, the priors over code grids, and clear errors for bad input."""

import itertools
import math

import pytest
import torch

from companion import masked as mk
from companion.kl import kl_discrete
from companion.models.code_prior import ARPrior, CodeDenoiser
from companion.models.quantizer import (
    FSQ,
    VectorQuantizer,
    code_counts,
    nearest_code,
    perplexity,
    rate_bits,
    straight_through,
    usage,
)
from companion.models.vae import VAE
from companion.models.vqvae import VQVAE, VQLoss, loss, negative_elbo
from companion.run import memory


def gen(seed):
    return torch.Generator().manual_seed(seed)


def quantizer(K=16, D=4, **kw):
    torch.manual_seed(0)
    vq = VectorQuantizer(K, D, **kw)
    with torch.no_grad():
        vq.codebook.copy_(torch.randn(K, D, generator=gen(1)))
    if vq.ema:
        vq.code_sum.copy_(vq.codebook)
    return vq


def brute_force(rows, codebook):
    return (rows[:, None] - codebook[None]).pow(2).sum(-1).argmin(1)


# --- nearest code ----------------------------------------------------------------------------
def test_nearest_code_matches_brute_force():
    z = torch.randn(500, 8, generator=gen(2), dtype=torch.float64)
    codebook = torch.randn(37, 8, generator=gen(3), dtype=torch.float64)
    assert torch.equal(nearest_code(z, codebook), brute_force(z, codebook))
    vq = quantizer().double()
    z_e = torch.randn(3, 4, 5, 6, generator=gen(4), dtype=torch.float64)
    out = vq(z_e)
    rows = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
    assert out.indices.shape == (3, 5, 6)
    assert torch.equal(out.indices.flatten(), brute_force(rows, vq.codebook.detach()))
    # z_q is the code exactly, position by position
    assert torch.equal(out.z_q.permute(0, 2, 3, 1).reshape(-1, 4),
                       vq.codebook.detach()[out.indices.flatten()])


def test_ties_go_to_the_lowest_index():
    codebook = torch.tensor([[5.0, 5.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    z = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [3.0, 4.0]])
    # (0, 0) is halfway between codes 1 and 2; (-1, 0) is codes 1 and 3 (a duplicate); (3, 4)
    # is nearest to code 0
    assert nearest_code(z, codebook).tolist() == [1, 1, 0]


# --- the straight-through gradient -----------------------------------------------------------
def test_straight_through_jacobian_is_the_identity():
    vq = quantizer().double()
    z_e = torch.randn(1, 4, 2, 2, generator=gen(5), dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda z: vq(z).z_q, z_e)     # (1,4,2,2,1,4,2,2)
    assert torch.equal(jac.reshape(16, 16), torch.eye(16, dtype=torch.float64))


def test_the_true_map_is_piecewise_constant_and_the_gradient_is_copied_through():
    vq = quantizer().double()
    z_e = torch.randn(2, 4, 3, 3, generator=gen(6), dtype=torch.float64)
    out = vq(z_e)
    # a finite difference of the quantizer's value: zero inside a cell (the derivative the
    # estimator replaces by the identity)
    h = 1e-6 * torch.randn(z_e.shape, generator=gen(7), dtype=torch.float64)
    assert torch.equal(vq(z_e + h).z_q, out.z_q)
    # the gradient of a loss at z_q reaches z_e unchanged: dL/dz_e = dL/dz_q at z_q = e_k
    w = torch.randn(z_e.shape, generator=gen(8), dtype=torch.float64)
    z = z_e.clone().requires_grad_(True)
    (w * vq(z).z_q.pow(2)).sum().backward()
    assert torch.allclose(z.grad, 2 * w * out.z_q, rtol=1e-12)
    assert vq.codebook.grad is None                   # z_q sends nothing to the codebook
    z = torch.zeros(3, requires_grad=True)
    value = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    straight_through(value, z).sum().backward()
    assert torch.equal(z.grad, torch.ones(3)) and value.grad is None


def test_codebook_and_commitment_losses_and_where_their_gradients_go():
    vq = quantizer(beta=0.25).double()
    z_e = torch.randn(2, 4, 3, 3, generator=gen(9), dtype=torch.float64, requires_grad=True)
    out = vq(z_e)
    sq = (z_e - out.z_q).pow(2).flatten(1).sum(1)
    assert torch.allclose(out.codebook_loss, sq) and torch.allclose(out.commitment_loss,
                                                                    0.25 * sq)
    out.codebook_loss.sum().backward(retain_graph=True)
    assert z_e.grad is None and vq.codebook.grad.abs().sum() > 0        # codebook only
    vq.codebook.grad = None
    out.commitment_loss.sum().backward()
    assert vq.codebook.grad is None and z_e.grad.abs().sum() > 0         # encoder only


# --- EMA updates -----------------------------------------------------------------------------
def test_ema_counts_follow_the_ema_of_the_batch_sizes():
    vq = quantizer(K=16, ema=True, decay=0.9).train()
    expected = 16.0                                   # each code starts with a count of 1
    for step, B in enumerate([5, 1, 8, 3, 8, 2]):
        vq(torch.randn(B, 4, 2, 3, generator=gen(10 + step)))
        expected = 0.9 * expected + 0.1 * B * 6       # positions in the batch
        assert math.isclose(vq.cluster_size.sum().item(), expected, rel_tol=1e-5)
        assert math.isclose(vq.smoothed_counts().sum().item(), expected, rel_tol=1e-5)
    assert not list(vq.parameters())                  # the codebook is not trained by gradient
    assert not vq(torch.randn(1, 4, 2, 3)).codebook_loss.requires_grad


def test_ema_step_is_the_documented_formula():
    vq = quantizer(K=6, ema=True, decay=0.8, eps=1e-3).double().train()
    z_e = torch.randn(3, 4, 2, 2, generator=gen(20), dtype=torch.float64)
    N, m = vq.cluster_size.clone(), vq.code_sum.clone()
    rows = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
    k = brute_force(rows, vq.codebook.clone())
    out = vq(z_e)
    assert torch.equal(out.indices.flatten(), k)       # quantized with the codebook as it was
    n = torch.bincount(k, minlength=6).double()
    sums = torch.stack([rows[k == i].sum(0) for i in range(6)])
    N, m = 0.8 * N + 0.2 * n, 0.8 * m + 0.2 * sums
    smoothed = (N + 1e-3) / (N.sum() + 6e-3) * N.sum()
    assert torch.allclose(vq.cluster_size, N) and torch.allclose(vq.code_sum, m)
    assert torch.allclose(vq.codebook, m / smoothed[:, None], rtol=1e-12)
    vq.eval()
    before = vq.codebook.clone()
    vq(z_e)
    assert torch.equal(vq.codebook, before)            # no update in evaluation mode


# --- dead codes ------------------------------------------------------------------------------
def test_dead_codes_are_restarted_from_the_batch_deterministically():
    for ema in (False, True):
        vq = quantizer(K=8, ema=ema).train()
        with torch.no_grad():
            vq.codebook[4:] = 100.0                    # far from the data: never chosen
            if ema:
                vq.code_sum[4:] = 100.0
        z_e = torch.randn(2, 4, 3, 3, generator=gen(30))
        for _ in range(2):
            vq(z_e)
        assert vq.restart_dead_codes(z_e, 3).numel() == 0        # unused for 2 steps only
        vq(z_e)
        total = vq.cluster_size.sum().item() if ema else None
        state = {k: v.clone() for k, v in vq.state_dict().items()}
        dead = vq.restart_dead_codes(z_e, 3, generator=gen(31))
        assert dead.tolist() == [4, 5, 6, 7] and vq.unused_steps[4:].eq(0).all()
        rows = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
        new = vq.codebook.detach()[4:].clone()
        assert all(bool((rows == c).all(1).any()) for c in new)           # encoder outputs
        assert len({tuple(c.tolist()) for c in new}) == 4                  # distinct ones
        if ema:
            assert math.isclose(vq.cluster_size.sum().item(), total)       # counts kept
            assert torch.allclose(vq.code_sum / vq.smoothed_counts()[:, None], vq.codebook)
        vq.load_state_dict(state)
        vq.restart_dead_codes(z_e, 3, generator=gen(31))
        assert torch.equal(vq.codebook.detach()[4:], new)                  # same generator
        vq.load_state_dict(state)
        vq.restart_dead_codes(z_e, 3, generator=gen(32))
        assert not torch.equal(vq.codebook.detach()[4:], new)


# --- usage and rate --------------------------------------------------------------------------
def test_usage_and_perplexity():
    assert float(usage(torch.zeros(10, dtype=torch.long), 4)) == 0.25
    assert math.isclose(float(perplexity(torch.zeros(10, dtype=torch.long), 4)), 1.0)
    every = torch.arange(8).repeat(5)
    assert float(usage(every, 8)) == 1.0
    assert math.isclose(float(perplexity(every, 8)), 8.0, rel_tol=1e-12)
    k = torch.tensor([[0, 0], [1, 2]])                 # frequencies 1/2, 1/4, 1/4, 0
    assert math.isclose(float(perplexity(k, 4)), 2 ** 1.5, rel_tol=1e-12)
    assert code_counts(k, 4).tolist() == [2, 1, 1, 0]


def test_rate_is_the_kl_of_a_one_hot_posterior_against_the_uniform_prior():
    for K in (2, 5, 512):
        q = torch.zeros(K, dtype=torch.float64)
        q[K // 3] = 1.0
        kl_bits = float(kl_discrete(q, torch.full((K,), 1 / K, dtype=torch.float64))) / \
            math.log(2)
        assert math.isclose(rate_bits(K), kl_bits, rel_tol=1e-12)
        assert math.isclose(rate_bits(K, positions=49), 49 * kl_bits, rel_tol=1e-12)
    assert rate_bits(512) == 9.0


# --- FSQ -------------------------------------------------------------------------------------
def test_fsq_levels_code_count_and_grid_values():
    fsq = FSQ((8, 5, 5, 5))
    assert fsq.K == 1000 and fsq.D == 4
    sweep = torch.linspace(-6, 6, 4001).view(1, 1, 1, -1).expand(1, 4, 1, 4001)
    z_q = fsq(sweep.contiguous()).z_q
    assert sorted(set(z_q[0, 0, 0].tolist())) == [k / 4 for k in range(-4, 4)]     # L = 8
    assert sorted(set(z_q[0, 1, 0].tolist())) == [-1.0, -0.5, 0.0, 0.5, 1.0]       # L = 5
    assert torch.equal(fsq(torch.zeros(1, 4, 1, 1)).z_q, torch.zeros(1, 4, 1, 1))  # f(0) = 0
    odd_even = FSQ((3, 4, 2))
    grid = odd_even.grid()
    assert odd_even.K == 24 and grid.shape == (24, 3)
    assert len({tuple(r) for r in grid.tolist()}) == 24
    assert sorted(set(grid[:, 1].tolist())) == [-1.0, -0.5, 0.0, 0.5]
    assert sorted(set(grid[:, 2].tolist())) == [-1.0, 0.0]


def test_fsq_indices_round_trip_in_mixed_radix():
    fsq = FSQ((8, 5, 5, 5))
    k = torch.arange(1000).view(10, 10, 10)
    assert torch.equal(fsq.codes_to_indices(fsq.indices_to_codes(k)), k)
    out = fsq(torch.randn(4, 4, 3, 3, generator=gen(40)) * 2)
    assert torch.equal(fsq.indices_to_codes(out.indices), out.z_q)
    # digits (d0, d1, d2, d3) -> d0 + 8 d1 + 40 d2 + 200 d3, channel 0 the lowest digit
    code = torch.tensor([3 / 4, -1.0, 0.5, 0.0]).view(1, 4, 1, 1)    # digits 7, 0, 3, 2
    assert fsq.codes_to_indices(code).item() == 7 + 0 * 8 + 3 * 40 + 2 * 200


def test_fsq_gradient_is_the_bound_s_derivative_over_the_half_width():
    fsq = FSQ((8, 5)).double()
    z = torch.randn(2, 2, 2, 2, generator=gen(41), dtype=torch.float64, requires_grad=True)
    fsq(z).z_q.sum().backward()
    half_l = torch.tensor([3.5, 2.0], dtype=torch.float64).view(1, 2, 1, 1) * (1 - 1e-3)
    shift = torch.atanh(torch.tensor([0.5, 0.0], dtype=torch.float64).view(1, 2, 1, 1)
                        / half_l)
    width = torch.tensor([4.0, 2.0], dtype=torch.float64).view(1, 2, 1, 1)
    expected = (1 - torch.tanh(z.detach() + shift) ** 2) * half_l / width
    assert torch.allclose(z.grad, expected, rtol=1e-6)


# --- the VQ autoencoder ----------------------------------------------------------------------
def test_vq_autoencoder_terms_bound_and_gradients(monkeypatch):
    torch.manual_seed(0)
    model = VQVAE(K=32, D=8)
    x = torch.bernoulli(torch.rand(4, 1, 28, 28, generator=gen(50)), generator=gen(51))
    terms = model(x)
    assert terms.indices.shape == (4, 7, 7) and terms.z_e.shape == (4, 8, 7, 7)
    assert (terms.reconstruction <= 0).all() and (terms.codebook >= 0).all()
    assert torch.allclose(terms.commitment, 0.25 * terms.codebook)
    z_q = model.quantizer(terms.z_e).z_q
    assert torch.equal(model.decode_indices(terms.indices), model.decode(z_q))
    bound = negative_elbo(model, x)
    assert torch.allclose(bound, -terms.reconstruction.double() + 49 * math.log(32))
    total, logs = loss(model, x)
    assert math.isclose(total.item(), (-terms.reconstruction + 1.25 * terms.codebook).mean()
                        .item(), rel_tol=1e-6)
    assert math.isclose(float(logs["usage"]), len(terms.indices.unique()) / 32)
    prior = ARPrior(32, width=16, depth=1, heads=2)
    whole = negative_elbo(model, x, lambda c: -prior.log_prob(c))
    monkeypatch.setattr(memory, "MAX_IMAGES", 1)      # one image, 16 grids a call
    assert torch.allclose(negative_elbo(model, x, lambda c: -prior.log_prob(c)), whole)
    assert torch.allclose(whole - bound, -prior.log_prob(terms.indices).double()
                          - 49 * math.log(32), atol=1e-4)
    # the reconstruction term alone reaches the encoder, straight through the quantizer
    (-terms.reconstruction.sum()).backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert model.quantizer.codebook.grad is None
    fsq = VQVAE(quantizer="fsq", levels=(5, 4, 3))
    assert fsq.K == 60 and fsq.D == 3 and float(fsq(x).codebook.abs().sum()) == 0
    with pytest.raises(ValueError, match="FSQ has no codes to restart"):
        VQLoss(restart_after=3)(fsq, x)


def test_vq_autoencoder_loss_falls_in_a_few_steps():
    torch.manual_seed(0)
    model = VQVAE(K=16, D=8, ema=True, channels=(8, 16))
    x = torch.rand(16, 1, 28, 28, generator=gen(52)) ** 3
    loss_fn = VQLoss(restart_after=2, generator=gen(53))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss, logs = loss_fn(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-2:]) < 0.95 * sum(losses[:2]), losses
    assert set(logs) == {"reconstruction", "codebook", "commitment", "usage", "perplexity",
                         "restarted"}


def test_chapter_6s_conv_vae_keeps_its_layers():
    keys = list(VAE(4, arch="conv").state_dict())
    assert keys == ["encoder.body.0.weight", "encoder.body.0.bias", "encoder.body.2.weight",
                    "encoder.body.2.bias", "encoder.body.5.weight", "encoder.body.5.bias",
                    "encoder.head.weight", "encoder.head.bias", "decoder.fc.0.weight",
                    "decoder.fc.0.bias", "decoder.fc.2.weight", "decoder.fc.2.bias",
                    "decoder.deconv.0.weight", "decoder.deconv.0.bias",
                    "decoder.deconv.2.weight", "decoder.deconv.2.bias"]


# --- priors over code grids ------------------------------------------------------------------
def peaked_prior():
    torch.manual_seed(0)
    prior = ARPrior(3, (2, 2), width=16, depth=2, heads=2).double()
    with torch.no_grad():
        prior.head.weight.mul_(8)                     # far from uniform
    return prior


ALL_GRIDS = torch.tensor(list(itertools.product(range(3), repeat=4))).view(81, 2, 2)


def test_autoregressive_prior_is_exactly_normalized_and_causal():
    prior = peaked_prior()
    p = prior.log_prob(ALL_GRIDS).exp()
    assert math.isclose(p.sum().item(), 1.0, rel_tol=1e-12)
    assert p.max() > 0.1                               # not the uniform 1/81
    codes = ALL_GRIDS[[5, 40]]
    base = prior(codes).flatten(2)
    for j in range(4):
        other = codes.flatten(1).clone()
        other[:, j] = (other[:, j] + 1) % 3
        changed = (prior(other.view(2, 2, 2)).flatten(2) - base).abs().amax((0, 1))
        assert (changed[:j + 1] == 0).all()            # positions up to j do not see it
        assert j == 3 or (changed[j + 1:] > 0).any()


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_autoregressive_sampler_draws_the_prior_s_distribution():
    prior = peaked_prior()
    x = prior.sample(8000, generator=gen(60))
    freq = torch.bincount((x.flatten(1) * torch.tensor([27, 9, 3, 1])).sum(1),
                          minlength=81).double() / 8000
    p = prior.log_prob(ALL_GRIDS).exp()
    assert 0.5 * (freq - p).abs().sum() < 0.05


def test_code_denoiser_sees_every_position_and_plugs_into_masked_diffusion():
    torch.manual_seed(0)
    den = CodeDenoiser(5, (2, 3), width=16, depth=1, heads=2)
    z = torch.tensor([[0, 1, mk.MASK, 3, mk.MASK, 4]]).long().view(1, 2, 3)
    other = z.clone()
    other[0, 1, 2] = 2                                 # the last position
    assert (den(other)[0, :, 0, 0] != den(z)[0, :, 0, 0]).any()
    codes = torch.randint(5, (6, 2, 3), generator=gen(61))
    loss = mk.loss(den, codes, categories=5, generator=gen(62))
    loss.backward()
    assert math.isfinite(loss.item()) and den.head.weight.grad.abs().sum() > 0
    x = mk.sample(den, (3, 2, 3), 3, order="confidence", categories=5, generator=gen(63))
    assert x.shape == (3, 2, 3) and bool(((x >= 0) & (x < 5)).all())


# --- bad input -------------------------------------------------------------------------------
def test_fewer_than_two_codes_are_refused():
    for make in (lambda: VectorQuantizer(1, 4), lambda: ARPrior(1), lambda: CodeDenoiser(0),
                 lambda: VQVAE(K=1), lambda: rate_bits(1)):
        with pytest.raises(ValueError, match=r"K \(the number of codes\) must be a whole "
                                             r"number >= 2"):
            make()
    with pytest.raises(ValueError, match=r"levels\[1\]"):
        FSQ((8, 1, 5))


def test_encoder_outputs_of_the_wrong_shape_or_not_finite_are_refused():
    vq = quantizer(D=4)
    with pytest.raises(ValueError, match=r"z_e must be encoder outputs \(B, D, H, W\).*"
                                         r"channels last\?"):
        vq(torch.randn(2, 3, 3, 4))
    with pytest.raises(ValueError, match=r"z_e must be encoder outputs"):
        vq(torch.randn(2, 4, 3))
    bad = torch.randn(2, 4, 3, 3)
    bad[1, 2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"z_e holds 1 NaN or infinite value"):
        vq(bad)
    with pytest.raises(ValueError, match=r"z holds 1 NaN"):
        FSQ((3, 3, 3, 3))(bad)
    with pytest.raises(ValueError, match=r"after"):
        vq.restart_dead_codes(torch.randn(2, 4, 3, 3), 0)


def test_codes_out_of_range_or_of_the_wrong_shape_are_refused():
    torch.manual_seed(0)
    model = VQVAE(K=8, D=4)
    prior = ARPrior(8, width=16, depth=1, heads=2)
    with pytest.raises(ValueError, match=r"indices must hold codes 0\.\.7.*\[8, 8\]"):
        model.decode_indices(torch.full((2, 7, 7), 8))
    with pytest.raises(ValueError, match=r"codes must hold codes 0\.\.7"):
        prior.log_prob(torch.full((2, 7, 7), -1))
    with pytest.raises(ValueError, match=r"codes must be a batch of code grids \(B, 7, 7\), "
                                         r"got shape \(2, 49\)"):
        prior.log_prob(torch.zeros(2, 49, dtype=torch.long))
    with pytest.raises(ValueError, match=r"indices.*unsqueeze\(0\)"):
        model.decode_indices(torch.zeros(7, 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"integer tensor"):
        model.decode_indices(torch.zeros(2, 7, 7))
    with pytest.raises(ValueError, match=r"indices must hold codes 0\.\.59"):
        FSQ((5, 4, 3)).indices_to_codes(torch.full((1, 2, 2), 60))
    with pytest.raises(ValueError, match=r"indices must hold codes 0\.\.3"):
        usage(torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match=r"z must hold masked states"):
        CodeDenoiser(4, (2, 2), width=8, depth=1, heads=2)(torch.full((1, 2, 2), 4))
    with pytest.raises(ValueError, match=r"code_nll must return one value per point"):
        negative_elbo(model, torch.zeros(3, 1, 28, 28), lambda c: torch.zeros(len(c), 1))
    with pytest.raises(ValueError, match=r"binarize"):
        negative_elbo(model, torch.full((3, 1, 28, 28), 0.5))


# --- issue 96, case 9: the previous pass's silent ones ---------------------------------------
def test_nearest_code_refuses_a_nan_row_or_code():
    """A NaN row's distances are all NaN, and argmin called it code 0."""
    codebook = torch.randn(4, 2, generator=gen(70))
    z = torch.randn(3, 2, generator=gen(71))
    z[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^z holds 1 NaN or infinite value \(of 6\): a NaN "
                                         r"row has no nearest code"):
        nearest_code(z, codebook)
    codebook[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"^codebook holds 1 NaN or infinite value"):
        nearest_code(z.nan_to_num(), codebook)


def test_negative_elbo_refuses_a_log_probability_for_code_nll():
    """-log p(k) of a discrete code is >= 0; prior.log_prob passed as it is made the bound
    smaller than the uniform prior's by twice the codes' information."""
    torch.manual_seed(0)
    model = VQVAE(K=8, D=4)
    prior = ARPrior(8, width=16, depth=1, heads=2)
    x = (torch.rand(3, 1, 28, 28, generator=gen(72)) > 0.5).float()
    with pytest.raises(ValueError, match=r"^code_nll must return -log p\(k\) >= 0 in nats "
                                         r"\(a discrete code's probability is at most 1\), "
                                         r"got 3 of 3 values below 0 or NaN, e.g. -\d.*negate"):
        negative_elbo(model, x, prior.log_prob)
    with pytest.raises(ValueError, match=r"got 1 of 3 values below 0 or NaN, e.g. nan"):
        negative_elbo(model, x, lambda c: torch.tensor([1.0, float("nan"), 2.0]))
    whole = negative_elbo(model, x, lambda c: -prior.log_prob(c))
    assert bool((whole > negative_elbo(model, x, lambda c: torch.zeros(len(c)))).all())


def test_vqvae_fsq_refuses_a_k_or_d_its_levels_contradict():
    with pytest.raises(ValueError, match=r"^K=512 contradicts levels=\(2, 2\): FSQ's K = "
                                         r"prod\(levels\) = 4 codes of D = len\(levels\) = 2 "
                                         r"dimensions; leave K and D out"):
        VQVAE(K=512, D=16, quantizer="fsq", levels=(2, 2))
    with pytest.raises(ValueError, match=r"^D=16 contradicts levels=\(2, 2\)"):
        VQVAE(D=16, quantizer="fsq", levels=(2, 2))
    with pytest.raises(ValueError, match=r"^levels=\(2, 2\) is FSQ's: pass quantizer='fsq'"):
        VQVAE(K=8, D=4, levels=(2, 2))
    fsq = VQVAE(K=4, D=2, quantizer="fsq", levels=(2, 2))  # agreeing: taken
    assert (fsq.K, fsq.D) == (4, 2) and (VQVAE().K, VQVAE().D) == (64, 16)
    assert (VQVAE(quantizer="fsq").K, VQVAE(quantizer="fsq").D) == (1000, 4)
