"""Masked diffusion over K categories (companion.masked with categories=K, chapter 19): at
K = 2 it is chapter 14's binary case on the same inputs and network; on an exact toy over
short code sequences the bound with the exact denoiser is the exact NLL; the samplers; and
clear errors for bad input."""

import math

import pytest
import torch

from companion import masked as mk
from companion.toy import BinaryTable, CategoricalTable

PROTOTYPES = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 1], [1, 0, 0, 2], [0, 0, 1, 1]])
BINARY = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 1]])


@pytest.fixture(scope="module")
def toy():
    return CategoricalTable.from_prototypes(PROTOTYPES, [3, 2, 2, 1], flip=0.2, K=3)


@pytest.fixture(scope="module")
def table(toy):
    return mk.masked_ce_table(toy.denoiser, toy.states, categories=3)


def gen(seed):
    return torch.Generator().manual_seed(seed)


class BernoulliNet(torch.nn.Module):
    """A small untrained network from binary states (B, 6) to one Bernoulli logit a pixel,
    and the same network read as K = 2 logits (0, l) of integer states."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.Tanh(),
                                       torch.nn.Linear(32, 6))

    def forward(self, z):
        masked = (z == mk.MASK).to(torch.float32)
        values = torch.where(z == mk.MASK, torch.zeros_like(z), z).to(torch.float32)
        return (3 * self.net(torch.cat([values, masked], 1))).to(z.dtype)

    def two_logits(self, z):
        l = self(z.to(torch.float32)).to(torch.float64)
        return torch.stack([torch.zeros_like(l), l], dim=1)


# --- K = 2 is chapter 14's binary case -------------------------------------------------------
def test_two_categories_give_the_binary_bound_on_the_same_inputs_and_network():
    net = BernoulliNet()
    x = BinaryTable.from_prototypes(BINARY.double(), [1, 1, 1], 0.1).sample(64, gen(0))
    xf, xl = x.float(), x.long()                      # the same digits, as pixels and as codes
    z = mk.forward_sample(xf, 0.6, generator=gen(1))
    zl = mk.forward_sample(xl, 0.6, categories=2, generator=gen(1))
    assert torch.equal(zl, z.long())                  # the same draws of the masks
    ce_bin = mk.masked_cross_entropy(net(z).double(), x, z.double())
    ce_cat = mk.masked_cross_entropy(net.two_logits(zl), xl, zl, categories=2)
    assert torch.allclose(ce_cat, ce_bin, rtol=1e-12, atol=1e-12) and ce_bin.sum() > 10
    # the Monte Carlo bounds, drawn with one generator seed each
    b = mk.negative_elbo(net, xf, "cosine", n_t=3, generator=gen(2))
    c = mk.negative_elbo(net.two_logits, xl, "cosine", n_t=3, categories=2, generator=gen(2))
    assert torch.allclose(c, b, rtol=1e-5)
    b = mk.step_bound(net, xf, 4, generator=gen(3))
    c = mk.step_bound(net.two_logits, xl, 4, categories=2, generator=gen(3))
    assert torch.allclose(c, b, rtol=1e-5)
    b = mk.loss(net, xf, generator=gen(4))
    c = mk.loss(net.two_logits, xl, categories=2, generator=gen(4))
    assert math.isclose(c.item(), b.item(), rel_tol=1e-5)
    # the exact tables, every mask
    tb = mk.masked_ce_table(net, x)
    tc = mk.masked_ce_table(net.two_logits, xl, categories=2)
    assert torch.allclose(tc, tb, rtol=1e-12, atol=1e-12)
    # the process: marginal and posterior over (0, 1, MASK)
    assert torch.allclose(mk.marginal(xl, 0.3, categories=2), mk.marginal(xf, 0.3))
    zt = mk.forward_sample(xl, 0.7, categories=2, generator=gen(5))
    assert torch.allclose(mk.posterior(zt, xl, 0.2, 0.7, categories=2),
                          mk.posterior(zt.float(), xf, 0.2, 0.7))


@pytest.mark.parametrize("order", mk.ORDERS)
def test_two_categories_sample_what_the_binary_sampler_samples(order):
    net = BernoulliNet()
    for steps in (1, 3, 6):
        b = mk.sample(net, (200, 6), steps, order=order, generator=gen(6))
        c = mk.sample(net.two_logits, (200, 6), steps, order=order, categories=2,
                      generator=gen(6))
        assert c.dtype == torch.long and torch.equal(c.float(), b)


def test_the_categorical_toy_at_two_values_is_the_binary_toy():
    b = BinaryTable.from_prototypes(BINARY.double(), [3, 2, 1], 0.1)
    c = CategoricalTable.from_prototypes(BINARY, [3, 2, 1], 0.1, K=2)
    assert torch.allclose(c.probs, b.probs, rtol=1e-12, atol=0)
    assert torch.equal(c.states, b.states.long())
    z = mk.forward_sample(c.states, 0.5, categories=2, generator=gen(7))
    logits, masked = c.denoiser(z), z == mk.MASK
    assert torch.allclose((logits[:, 1] - logits[:, 0])[masked], b.denoiser(z.double())[masked],
                          atol=1e-12)


# --- the forward process ---------------------------------------------------------------------
def test_marginal_and_posterior_match_sampling():
    x0 = torch.tensor([[0, 2, 4, 1]]).expand(40_000, 4).contiguous()
    z = mk.forward_sample(x0, 0.3, "cosine", categories=5, generator=gen(8))
    q = mk.marginal(x0[:1], 0.3, "cosine", categories=5)[0]          # (4, 6): 0..4, MASK
    freq = torch.stack([(z == v).double().mean(0) for v in [0, 1, 2, 3, 4, mk.MASK]], -1)
    assert q.shape == (4, 6) and torch.allclose(freq, q.double(), atol=0.01)
    z_s = mk.forward_sample(x0, 0.3, categories=5, generator=gen(9))
    z_t = mk.forward_step(z_s, 0.3, 0.7, categories=5, generator=gen(10))
    masked = z_t == mk.MASK
    assert torch.equal(z_s[~masked], z_t[~masked])                    # carry-over
    post = mk.posterior(z_t, x0, 0.3, 0.7, categories=5)              # (N, 4, 6)
    r = float(mk.reveal_probability(0.3, 0.7))
    assert abs((z_s[masked] != mk.MASK).double().mean().item() - r) < 0.01
    assert torch.allclose(post.sum(-1), torch.ones(40_000, 4))
    assert torch.allclose(post[masked][:, -1], torch.full((int(masked.sum()),), 1 - r))
    revealed = post[~masked]                                          # a one-hot on z_t
    assert torch.equal(revealed.argmax(-1), z_t[~masked]) and bool((revealed.max(-1).values
                                                                     == 1).all())


# --- the exact toy ---------------------------------------------------------------------------
def test_exact_denoiser_is_the_conditional(toy):
    z = torch.tensor([[2, mk.MASK, mk.MASK, 1]]).long()
    logits = toy.denoiser(z)[0, :, 1]                                 # position 1, 3 values
    keep = (toy.states[:, 0] == 2) & (toy.states[:, 3] == 1)
    p = torch.stack([toy.probs[keep & (toy.states[:, 1] == k)].sum() for k in range(3)])
    assert torch.allclose(torch.softmax(logits, 0), p / p.sum(), rtol=1e-12)


def test_elbo_with_exact_denoiser_is_the_exact_nll(toy, table):
    nll = -toy.log_prob(toy.states)
    assert table.shape == (81, 16)
    assert torch.allclose(mk.exact_negative_elbo(table), nll, atol=1e-10, rtol=0)
    for name in ("linear", "cosine"):  # the integral over t, numerically, any schedule
        quad = mk.quadrature_negative_elbo(table, name, nodes=64)
        assert torch.allclose(quad, nll, atol=1e-9, rtol=0)


def test_a_denoiser_that_ignores_the_context_pays_the_marginal_entropies(toy):
    onehot = torch.nn.functional.one_hot(toy.states, 3).double()     # (81, 4, 3)
    p = torch.einsum("n,ndk->kd", toy.probs, onehot)                  # (3, 4) marginals
    bound = mk.exact_negative_elbo(mk.masked_ce_table(
        lambda z: p.log().expand(len(z), 3, 4).clone(), toy.states, categories=3))
    gap = float(toy.probs @ bound) - toy.entropy()
    marginals = float(-(p * p.log()).sum())
    assert math.isclose(gap, marginals - toy.entropy(), rel_tol=1e-9) and gap > 0.3


def test_finite_step_bounds_tighten_to_the_nll(toy, table):
    gaps = [float(toy.probs @ mk.exact_step_bound(table, K)) - toy.entropy()
            for K in (1, 2, 4, 64)]
    assert all(a > b > 0 for a, b in zip(gaps[:-1], gaps[1:], strict=True))
    assert gaps[-1] < 0.02


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_monte_carlo_bound_and_loss_agree_with_the_closed_form(toy, table):
    rows = [5, 40, 77]
    x = toy.states[rows].repeat(600, 1)
    est = mk.negative_elbo(toy.denoiser, x, "cosine", n_t=4, categories=3, generator=gen(11))
    d = (est - mk.exact_negative_elbo(table[rows]).repeat(600)).view(600, 3)
    assert (d.mean(0).abs() < 4 * d.std(0) / math.sqrt(600)).all()
    losses = torch.tensor([float(mk.loss(toy.denoiser, x[:300], categories=3,
                                         generator=gen(12 + i))) for i in range(40)])
    target = float(mk.exact_negative_elbo(table[rows]).mean())
    assert abs(losses.mean().item() - target) < 4 * losses.std().item() / math.sqrt(40)


# --- sampling --------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_position_a_step_samples_the_distribution_and_one_step_does_not(toy):
    n, tv = 20_000, {}
    for steps in (1, 4):
        x = mk.sample(toy.denoiser, (n, 4), steps, categories=3, generator=gen(13))
        freq = torch.bincount(toy.index(x), minlength=81).double() / n
        tv[steps] = 0.5 * (freq - toy.probs).abs().sum().item()
    assert tv[4] < 0.04 < 0.15 < tv[1]


def test_confidence_order_reveals_every_position_with_a_code(toy):
    x = mk.sample(toy.denoiser, (64, 4), 2, order="confidence", categories=3,
                  generator=gen(14))
    assert x.dtype == torch.long and bool(((x >= 0) & (x < 3)).all())


def test_draw_values_follows_the_softmax():
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))[None, :, None].expand(50_000, 4, 2)
    values, confidence = mk.draw_values(logits, generator=gen(15))
    freq = torch.bincount(values.flatten(), minlength=4).double() / values.numel()
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64),
                          atol=0.01)
    assert torch.allclose(confidence, torch.tensor([0.1, 0.2, 0.3, 0.4])[values])


# --- bad input -------------------------------------------------------------------------------
def test_fewer_than_two_categories_are_refused():
    x = torch.zeros(2, 4, dtype=torch.long)
    for bad in (1, 0, 2.0):
        with pytest.raises(ValueError, match="categories"):
            mk.forward_sample(x, 0.5, categories=bad)


def test_codes_out_of_range_are_refused_naming_the_argument():
    den = lambda z: torch.zeros(len(z), 3, 4)  # noqa: E731
    with pytest.raises(ValueError, match=r"x0 must hold codes 0\.\.2.*\[0, 3\]"):
        mk.negative_elbo(den, torch.tensor([[0, 1, 2, 3]]), categories=3)
    with pytest.raises(ValueError, match=r"x0 must hold codes.*MASK"):
        mk.loss(den, torch.tensor([[0, 1, 2, -1]]), categories=3)
    with pytest.raises(ValueError, match=r"x0 must be an integer tensor of codes"):
        mk.loss(den, torch.zeros(2, 4), categories=3)
    with pytest.raises(ValueError, match=r"z must hold masked states"):
        mk.masked_cross_entropy(torch.zeros(1, 3, 4), torch.zeros(1, 4).long(),
                                torch.tensor([[0, -2, 1, 1]]), categories=3)


def test_a_denoiser_or_logits_of_the_wrong_shape_are_refused():
    x = torch.zeros(5, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(B, K, \.\.\.\) = \(5, 3, 4\)"):
        mk.negative_elbo(lambda z: torch.zeros(len(z), 4, 3), x, categories=3)
    with pytest.raises(ValueError, match=r"\(B, K, \.\.\.\) = \(2, 3, 4\)"):
        mk.sample(lambda z: torch.zeros(len(z), 4), (2, 4), 2, categories=3)
    with pytest.raises(ValueError, match=r"logits must be \(B, K, \.\.\.\)"):
        mk.masked_cross_entropy(torch.zeros(5, 4), x, x, categories=3)


def test_non_finite_logits_at_masked_positions_are_refused():
    with pytest.raises(ValueError, match=r"non-finite logits.*step 1 of 2: 8 of 8"):
        mk.sample(lambda z: torch.full((len(z), 3, 4), float("nan")), (2, 4), 2,
                  categories=3)


def test_infilling_from_a_given_state_draws_the_exact_conditional(toy):
    # exact denoiser, one position a step in random order: the filled positions follow
    # p(x_masked | x_revealed) of the toy's law, and the revealed ones are kept
    seq = PROTOTYPES[1].clone()
    given = seq.clone()
    given[[1, 3]] = -1                      # mask positions 1 and 3 of (2, 2, 1, 1)
    n = 6000
    out = mk.sample(toy.denoiser, (n, 4), 2, categories=3, generator=gen(4),
                    given=given.expand(n, 4))
    assert torch.equal(out[:, [0, 2]], given[[0, 2]].expand(n, 2))
    keep = (toy.states[:, 0] == seq[0]) & (toy.states[:, 2] == seq[2])
    law = toy.probs[keep] / toy.probs[keep].sum()          # over the rows that match
    codes = toy.states[keep][:, 1] * 3 + toy.states[keep][:, 3]
    seen = torch.bincount(out[:, 1] * 3 + out[:, 3], minlength=9).double() / n
    want = torch.zeros(9, dtype=torch.float64).index_add_(0, codes, law.double())
    assert (seen - want).abs().max() < 4 * math.sqrt(0.25 / n)


def test_a_given_state_of_another_shape_or_uneven_gaps_is_refused(toy):
    given = torch.tensor([[0, -1, 1, -1], [0, 1, -1, 2]])
    with pytest.raises(ValueError, match="same number"):
        mk.sample(toy.denoiser, (2, 4), 1, categories=3, given=given)
    with pytest.raises(ValueError, match="at least 1"):
        mk.sample(toy.denoiser, (1, 4), 1, categories=3, given=torch.tensor([[0, 1, 1, 2]]))
    with pytest.raises(ValueError, match="samples' shape"):
        mk.sample(toy.denoiser, (2, 4), 1, categories=3, given=given[:1])
    with pytest.raises(ValueError, match="K <= 2"):
        mk.sample(toy.denoiser, (1, 4), 3, categories=3, given=given[:1])


@pytest.mark.parametrize("order", mk.ORDERS)
def test_blocks_fill_left_to_right(toy, order):
    seen = []

    def recording(z):
        seen.append((z != -1).clone())
        return toy.denoiser(z)

    out = mk.sample(recording, (50, 4), 4, order=order, categories=3, blocks=2,
                    generator=gen(6))
    assert (out >= 0).all()
    # before step 3 exactly the first block is revealed; before step 2, one of its two
    assert not seen[0].any()
    assert (seen[1][:, :2].sum(1) == 1).all() and not seen[1][:, 2:].any()
    assert seen[2][:, :2].all() and not seen[2][:, 2:].any()
    prefix = []
    mk.sample(lambda z: prefix.append((z != -1).clone()) or toy.denoiser(z), (20, 4), 4,
              order=order, categories=3, blocks=4, generator=gen(7))
    for k, revealed in enumerate(prefix):  # one position a block: strictly left to right
        assert revealed[:, :k].all() and not revealed[:, k:].any()


def test_blocks_that_do_not_fit_are_refused(toy):
    with pytest.raises(ValueError, match="divide K"):
        mk.sample(toy.denoiser, (2, 4), 3, categories=3, blocks=2)
    with pytest.raises(ValueError, match="at most the 4 positions"):
        mk.sample(toy.denoiser, (2, 4), 4, categories=3, blocks=8)
    with pytest.raises(ValueError, match="given"):
        mk.sample(toy.denoiser, (1, 4), 2, categories=3, blocks=2,
                  given=torch.tensor([[0, -1, 1, -1]]))


# --- one fixed order: the exact likelihood of an autoregressive model -----------------------
@pytest.mark.parametrize("order", [None, [2, 0, 3, 1]])
def test_an_exact_denoiser_in_any_fixed_order_gives_the_exact_nll(toy, order):
    nll = mk.ordered_nll(toy.denoiser, toy.states, 3, order=order)
    assert torch.allclose(nll, -toy.log_prob(toy.states), atol=1e-10, rtol=0)


def test_the_ordered_nll_of_a_network_is_a_likelihood_and_refuses_bad_orders(toy):
    net = torch.nn.Sequential(torch.nn.Linear(4, 12))  # logits from the states, any network

    def den(z):
        return net(z.double().float()).double().reshape(len(z), 3, 4)

    torch.manual_seed(0)
    nll = mk.ordered_nll(den, toy.states, 3, order=[3, 1, 0, 2])
    assert torch.allclose(torch.exp(-nll).sum(), torch.tensor(1.0, dtype=torch.float64),
                          atol=1e-5)  # a distribution over the 81 sequences
    with pytest.raises(mk.checks.ArgumentError, match="permutation of the 4 positions"):
        mk.ordered_nll(den, toy.states, 3, order=[0, 1, 1, 2])
    with pytest.raises(mk.checks.ArgumentError, match="needs categories"):
        mk.ordered_nll(den, toy.states, None)


# --- issue 96: orders of floats, unsigned codes, bounds on a diverged denoiser ------------------
def test_an_order_of_floats_is_refused_by_name_not_at_the_index(toy):
    """[0.0, 1, 2, 3] passed the permutation check (0.0 == 0), then failed as an index."""
    with pytest.raises(mk.checks.ArgumentError, match=r"^every entry of order \(a position\) "
                                                      r"must be a whole number in 0\.\.3, got "
                                                      r"0\.0"):
        mk.ordered_nll(toy.denoiser, toy.states, 3, order=[0.0, 1, 2, 3])
    with pytest.raises(mk.checks.ArgumentError, match=r"^order must be a sequence"):
        mk.ordered_nll(toy.denoiser, toy.states, 3, order=3)
    nll = mk.ordered_nll(toy.denoiser, toy.states, 3, order=torch.tensor([2, 0, 3, 1]))
    assert torch.allclose(nll, -toy.log_prob(toy.states), atol=1e-10, rtol=0)


def test_unsigned_codes_that_cannot_hold_mask_are_refused_by_name(toy):
    x = toy.states[:4].to(torch.uint8)
    for call in (lambda: mk.ordered_nll(toy.denoiser, x, 3),
                 lambda: mk.negative_elbo(toy.denoiser, x, categories=3),
                 lambda: mk.loss(toy.denoiser, x, categories=3)):
        with pytest.raises(mk.checks.ArgumentError, match=r"^x0 must be a signed integer "
                                                          r"tensor \(torch.long\), got "
                                                          r"torch.uint8, which cannot hold MASK"):
            call()


def test_the_bounds_refuse_non_finite_logits_where_they_read_them_only(toy):
    """NaN at the revealed positions is never read (the bound adds nothing there): allowed;
    at a masked one: refused, as the samplers refuse it."""
    def revealed_nan(z):
        logits = toy.denoiser(z)
        return torch.where((z != mk.MASK)[:, None], float("nan"), logits)

    x, g = toy.states[:20], torch.Generator().manual_seed(0)
    assert mk.negative_elbo(revealed_nan, x, n_t=3, categories=3, generator=g).isfinite().all()
    assert mk.step_bound(revealed_nan, x, 2, categories=3, generator=g).isfinite().all()

    def masked_nan(z):
        return torch.where((z == mk.MASK)[:, None], float("nan"), toy.denoiser(z))

    rule = r"^the denoiser returned non-finite logits \(NaN or inf\) at "
    with pytest.raises(mk.checks.ArgumentError, match=rule + r"step [12] of 2: \d+ of \d+ masked "
                                                             r"positions"):
        mk.step_bound(masked_nan, x, 2, categories=3, generator=g)
    with pytest.raises(mk.checks.ArgumentError, match=rule + "time"):
        mk.negative_elbo(masked_nan, x, n_t=3, categories=3, generator=g)
