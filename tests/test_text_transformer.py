"""Chapter 22's character transformer: causal and bidirectional, the exact autoregressive
likelihood and sampler, masked diffusion's denoiser, input errors, FLOPs."""

import itertools

import pytest
import torch
from torch import nn

from companion import masked
from companion.models import text_transformer as tt
from companion.models.dit import Attention
from companion.models.text_transformer import (
    TextConfig,
    TextTransformer,
    ar_nll,
    ar_sample,
    fim_prompt,
    fim_psm,
    flops_per_sequence,
)
from companion.run import memory
from companion.run.checks import ArgumentError

TINY = dict(width=16, depth=2, heads=2, mlp_ratio=2)  # fast, and every code path


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors


def _model(V=7, length=8, causal=False, std=None, seed=0):
    """A tiny model; std: every weight redrawn N(0, std^2), for a law far from uniform."""
    torch.manual_seed(seed)
    model = TextTransformer(vocab_size=V, length=length, causal=causal, **TINY)
    if std is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, std)
    return model


def _all_sequences(V, L):
    return torch.tensor(list(itertools.product(range(V), repeat=L)))


# --- shapes and who sees what ------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_logits_are_batch_vocabulary_positions(causal):
    model = _model(causal=causal)
    x = torch.randint(0, 7, (3, 5))
    if not causal:
        x[:, 1] = int(masked.MASK)
    out = model(x)
    assert out.shape == (3, 7, 5) and torch.isfinite(out).all()
    assert model(x[:, :1]).shape == (3, 7, 1) and model(torch.zeros(2, 8).long()).shape \
        == (2, 7, 8)


def test_causal_position_i_reads_only_the_tokens_before_it():
    model = _model(causal=True, std=0.3)
    x = torch.randint(0, 7, (2, 8))
    with torch.no_grad():
        out = model(x)
        for j in range(8):
            y = x.clone()
            y[:, j] = (y[:, j] + 3) % 7
            diff = (model(y) - out).abs().amax(dim=(0, 1))          # (L,)
            assert diff[:j + 1].max() <= 1e-6, (j, diff)               # x_j feeds i > j only
            if j < 7:
                assert diff[j + 1:].min() > 1e-4, (j, diff)


def test_bidirectional_position_reads_both_sides():
    model = _model(std=0.3)
    z = torch.randint(0, 7, (2, 8))
    z[:, 3] = int(masked.MASK)
    with torch.no_grad():
        out = model(z)[:, :, 3]
        for j in (0, 7, 3):  # left, right, and the position itself (mask -> a token)
            y = z.clone()
            y[:, j] = (y[:, j] + 2) % 7
            assert (model(y)[:, :, 3] - out).abs().max() > 1e-3, j
        for v in range(7):  # the mask has an embedding of its own, no token's
            y = z.clone()
            y[:, 3] = v
            assert (model(y) - model(z)).abs().max() > 1e-3, v


def test_causal_attention_explicit_matches_fused_and_refuses_context():
    attn = Attention(16, 2)
    nn.init.normal_(attn.out.bias)
    x = torch.randn(2, 5, 16)
    fused = attn(x, causal=True)
    explicit, w = attn(x, need_weights=True, causal=True)
    assert (explicit - fused).abs().max() < 1e-6
    assert torch.equal(w.triu(1), torch.zeros_like(w))                  # no weight on j > i
    assert (w.sum(-1) - 1).abs().max() < 1e-6
    assert (attn(x) - fused)[:, :-1].abs().max() > 1e-3                 # the mask does work
    with pytest.raises(ValueError, match="causal=True is for self-attention"):
        attn(x, torch.randn(2, 3, 16), causal=True)


# --- the exact likelihood and the sampler -------------------------------------------------------

def test_ar_nll_is_the_sum_over_prefixes():
    """Position i's term by brute force: the model run on x_<=i alone (its last logits read
    x_<i), so a future token leaking into the full run would show."""
    model = _model(causal=True, std=0.3)
    x = torch.randint(0, 7, (3, 6))
    with torch.no_grad():
        brute = sum(-model(x[:, :i + 1])[:, :, i].log_softmax(1)
                    .gather(1, x[:, i:i + 1]).squeeze(1) for i in range(6))
        nll = ar_nll(model, x)
    assert nll.shape == (3,) and (nll - brute).abs().max() < 1e-4


def test_ar_nll_is_a_normalized_law_and_chunks_alike(monkeypatch):
    model = _model(V=2, length=3, causal=True, std=0.3)
    x = _all_sequences(2, 3)
    with torch.no_grad():
        nll = ar_nll(model, x).double()
        total = (-nll).exp().sum()
        monkeypatch.setattr(memory, "MAX_IMAGES", 3)
        chunked = ar_nll(model, x).double()
    assert abs(total - 1) < 1e-5, total
    assert (-nll).exp().max() > 0.25  # far from uniform, else the sampler test is weak
    assert (chunked - nll).abs().max() < 1e-6




def test_ar_nll_among_the_first_ids_is_the_law_conditioned_on_no_other_id():
    """V = 3, L = 2: over the 4 sequences of ids {0, 1}, among=2 sums to one, and each is
    the brute-force softmax over the first two logits; an id outside them is refused."""
    model = _model(V=3, length=2, causal=True, std=0.3)
    x = _all_sequences(2, 2)
    with torch.no_grad():
        nll = ar_nll(model, x, among=2).double()
        logits = model(x)[:, :2]
        brute = -logits.log_softmax(1).gather(1, x[:, None]).squeeze(1).sum(1)
    assert abs((-nll).exp().sum() - 1) < 1e-5
    assert (nll - brute.double()).abs().max() < 1e-5
    assert ((ar_nll(model, x).double() - nll) > 0).all()  # the third id had some mass
    with pytest.raises(ArgumentError, match="outside the first among=2"):
        ar_nll(model, torch.tensor([[0, 2]]), among=2)
def test_ar_sample_draws_the_models_law(monkeypatch):
    """Empirical frequencies of all 8 sequences (V = 2, L = 3) against exp(-ar_nll): a
    chi-square statistic of 7 degrees of freedom, below 24.3 with probability 0.999."""
    model = _model(V=2, length=3, causal=True, std=0.3)
    x = _all_sequences(2, 3)
    with torch.no_grad():
        p = (-ar_nll(model, x)).exp().double()
    n = 4000
    monkeypatch.setattr(memory, "MAX_IMAGES", 1500)  # the chunked loop too
    s = ar_sample(model, n, 3, generator=torch.Generator().manual_seed(0))
    assert s.shape == (n, 3) and s.dtype == torch.long
    counts = torch.bincount(s[:, 0] * 4 + s[:, 1] * 2 + s[:, 2], minlength=8).double()
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 24.3, (chi2, counts / n, p)
    again = ar_sample(model, n, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, again)


def test_ar_sample_temperature_sharpens_the_law():
    """At temperature T each conditional is softmax(logits / T): the same chi-square test
    against the law that this tempering gives, and T -> 0 draws the likeliest path."""
    model = _model(V=2, length=3, causal=True, std=0.3)
    x = _all_sequences(2, 3)
    T = 0.5
    with torch.no_grad():  # the tempered law, conditional by conditional
        logits = model(x)[:, :, :3].double() / T                 # (8, V, L)
        logp = logits.log_softmax(1).gather(1, x[:, None]).squeeze(1).sum(1)
    p = logp.exp()
    n = 4000
    s = ar_sample(model, n, 3, temperature=T, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(s[:, 0] * 4 + s[:, 1] * 2 + s[:, 2], minlength=8).double()
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 24.3, (chi2, counts / n, p)
    cold = ar_sample(model, 50, 3, temperature=1e-4, generator=torch.Generator().manual_seed(2))
    assert (cold == cold[0]).all()  # one path, the greedy one
    with pytest.raises(ValueError, match="temperature"):
        ar_sample(model, 2, 3, temperature=0.0)


def test_ar_sample_keeps_a_prompt_and_draws_the_rest_from_its_conditional():
    """With a prompt of two ids the third is drawn from softmax(logits_3(prompt)): a
    chi-square test of its V = 2 frequencies (1 df, below 10.8 with probability 0.999)."""
    model = _model(V=2, length=3, causal=True, std=0.3)
    prompt = torch.tensor([1, 0])
    with torch.no_grad():
        p = model(torch.tensor([[1, 0, 0]]))[0, :, 2].double().softmax(0)
    n = 4000
    s = ar_sample(model, n, 3, prompt=prompt, generator=torch.Generator().manual_seed(3))
    assert (s[:, :2] == prompt).all()
    counts = torch.bincount(s[:, 2], minlength=2).double()
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 10.8, (chi2, counts / n, p)
    with pytest.raises(ValueError, match="prompt must be"):
        ar_sample(model, 4, 3, prompt=torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="prompt"):
        ar_sample(model, 4, 3, prompt=torch.tensor([1, 5]))


def test_fim_psm_moves_the_middle_to_the_end_and_keeps_every_id():
    pad = 9
    x = torch.tensor([[1, 2, 3, 4, 5, pad, pad], [6, 7, pad, pad, pad, pad, pad],
                      [pad] * 7])
    out = fim_psm(x, pad, rate=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 10)
    pre, suf, mid = pad + 1, pad + 2, pad + 3
    for row, orig in zip(out.tolist(), x.tolist(), strict=True):
        n = orig.index(pad)
        assert row[0] == pre and row.count(suf) == 1 and row.count(mid) == 1
        a, b = row.index(suf), row.index(mid)
        prefix, suffix, middle = row[1:a], row[a + 1:b], row[b + 1:n + 3]
        assert prefix + middle + suffix == orig[:n]  # the text, in PSM order
        assert row[n + 3:] == [pad] * (len(row) - n - 3)
    cut = fim_psm(x.repeat(200, 1), pad, rate=1.0,
                  generator=torch.Generator().manual_seed(1))[::3]
    assert len({tuple(r) for r in cut.tolist()}) > 5  # the cuts vary
    same = fim_psm(x, pad, rate=0.0)
    assert torch.equal(same[:, :7], x) and (same[:, 7:] == pad).all()
    half = fim_psm(x[:1].repeat(2000, 1), pad, rate=0.5,
                   generator=torch.Generator().manual_seed(2))
    share = (half[:, 0] == pre).double().mean().item()
    assert abs(share - 0.5) < 0.05, share
    with pytest.raises(ValueError, match="rate"):
        fim_psm(x, pad, rate=1.5)


def test_fim_prompt_is_the_psm_order_up_to_the_middle():
    p = fim_prompt(torch.tensor([1, 2]), torch.tensor([5]), pad=9)
    assert p.tolist() == [10, 1, 2, 11, 5, 12]


# --- masked diffusion's denoiser ----------------------------------------------------------------

def test_masked_loss_and_sample_run_on_the_bidirectional_model():
    model = _model(V=5)
    x0 = torch.randint(0, 5, (4, 8))
    loss = masked.loss(model, x0, categories=5, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.tok.weight.grad.abs().max() > 0 and model.pos.grad.abs().max() > 0
    s = masked.sample(model, (3, 8), 8, categories=5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, 8) and s.dtype == torch.long and s.min() >= 0 and s.max() <= 4


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(width=30, heads=4), "multiple of heads"),
    (dict(depth=0), "depth must be a whole number"),
    (dict(vocab_size=1), "vocab_size"),
    (dict(length=2.0), "length"),
    (dict(causal=1), "causal must be True or False"),
])
def test_config_errors(kw, match):
    base = dict(vocab_size=7, length=8, **TINY)
    with pytest.raises(ValueError, match=match):
        TextConfig(**{**base, **kw})
    with pytest.raises(ValueError, match=match):
        TextTransformer(**{**base, **kw})


def test_input_errors():
    den, ar = _model(), _model(causal=True)
    cases = [
        (den, torch.tensor([[0, 7]]), r"z \(masked states\) must hold token ids 0\.\.V-1 or "
                                      r"MASK .* 0\.\.7"),
        (den, torch.tensor([[0, -2]]), r"z \(masked states\) .* -2\.\.0"),
        (den, torch.zeros(2, 9).long(), r"L <= length = 8"),
        (den, torch.zeros(2, 3), r"z \(masked states\) must be an integer tensor.*float32"),
        (den, torch.zeros(2, 3).bool(), "integer tensor"),
        (den, torch.zeros(6).long(), r"shape \(B, L\)"),
        (ar, torch.tensor([[0, -1]]), r"x \(text\) must hold token ids 0\.\.V-1 \(a causal "
                                      "model takes text: no MASK"),
        (ar, torch.zeros(1, 9).long(), r"x \(text\) .* L <= length = 8"),
        (ar, [[0, 1]], r"x \(text\) must be a torch tensor"),
    ]
    for model, x, match in cases:
        with pytest.raises(ValueError, match=match):
            model(x)
    with pytest.raises(ValueError, match=r"model: ar_nll needs an autoregressive .* "
                                         r"bidirectional"):
        ar_nll(den, torch.zeros(1, 3).long())
    with pytest.raises(ValueError, match="ar_sample needs an autoregressive"):
        ar_sample(lambda x: x, 2, 3)
    with pytest.raises(ValueError, match=r"length must be a whole number in 1\.\.8"):
        ar_sample(ar, 2, 9)
    with pytest.raises(ValueError, match=r"n \(the number of samples\) must be at most"):
        ar_sample(ar, tt.MAX_SAMPLES + 1, 3)
    with pytest.raises(ValueError, match="x \\(text\\) must hold token ids"):
        ar_nll(ar, torch.tensor([[0, 7]]))


# --- cost ---------------------------------------------------------------------------------------

@pytest.mark.slow  # flop_counter's first use imports torch._dynamo (seconds)
def test_flops_match_a_count_by_hand():
    """2 x the multiply-adds of every Linear and of both attention products, full L x L."""
    model = _model(causal=True)
    W, L, V, r, depth = 16, 8, 7, 2, 2
    per_block = 2 * (4 * L * W * W + 2 * L * r * W * W + 2 * L * L * W)
    assert flops_per_sequence(model) == pytest.approx(depth * per_block + 2 * L * W * V)
    assert flops_per_sequence(model, 4) < flops_per_sequence(model) / 2 + 1
    assert not any(m.explicit for m in model.modules() if isinstance(m, Attention))


# --- issue 96: sizes bounded, one rule for non-finite logits, uint8 ids, no sequences ------------

@pytest.mark.parametrize("kw, match", [
    (dict(depth=10**6), r"^depth must be at most 1,000, got 1,000,000: each block"),
    (dict(vocab_size=10**10), r"^vocab_size must be at most 1,048,576, got 10,000,000,000"),
    (dict(width=2**20, heads=1), r"^width must be at most 16,384, got 1,048,576"),
    (dict(length=10**9), r"^length must be at most 65,536"),
    (dict(width=2**14, depth=1000, heads=1), r"builds [\d,]+ weights, more than MAX_PARAMS = "
                                             r"2,147,483,648 .*lower depth, width"),
])
def test_a_config_too_large_to_build_is_refused_before_anything_is_allocated(kw, match):
    import time

    began = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        TextTransformer(**{**dict(vocab_size=7, length=8, **TINY), **kw})
    assert time.perf_counter() - began < 0.5  # refused, not built


def test_n_params_counts_the_built_weights_and_keeps_valid_configs():
    for causal in (False, True):
        model = _model(causal=causal)
        assert model.config.n_params() == tt.n_params(model)
    gpu = TextConfig(vocab_size=31, length=44, width=256, depth=6, heads=4)
    assert 4_000_000 < gpu.n_params() < 6_000_000  # "the book's largest: about 5 million"


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.complex64])
def test_token_ids_of_a_dtype_the_embedding_cannot_take_are_refused_by_name(dtype):
    den, ar = _model(), _model(causal=True)
    x = torch.zeros(2, 3).to(dtype)
    with pytest.raises(ValueError, match=rf"^z \(masked states\) must be an integer tensor of "
                                         rf"token ids \(torch.long\), got {dtype}: convert"):
        den(x)
    with pytest.raises(ValueError, match=rf"^x \(text\) must be an integer tensor .*{dtype}"):
        ar_nll(ar, x)
    ok = torch.zeros(2, 3, dtype=torch.long)
    assert ar(ok).shape == (2, 7, 3) and ar(ok.int()).shape == (2, 7, 3)  # int32: taken


def _diverged(value, causal=True):
    model = _model(causal=causal)
    with torch.no_grad():
        model.head.bias[2] = value  # one logit a position: NaN or inf
    return model.eval()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_every_reader_of_the_logits_refuses_non_finite_ones_alike(value):
    """ar_nll and ordered_nll returned NaN where ar_sample and masked.sample refused: one rule
    (checks.finite_logits), one message, naming where and how many."""
    ar, den, x = _diverged(value), _diverged(value, causal=False), torch.randint(7, (3, 5))
    rule = r"^the (model|denoiser) returned non-finite logits \(NaN or inf\) "
    with pytest.raises(ValueError, match=rule + r"for sequences 0\.\.2 of x: 15 of 105 logits"):
        ar_nll(ar, x)
    with pytest.raises(ValueError, match=rule + r"at position 1 of 4: 2 of 14 logits"):
        ar_sample(ar, 2, 4)
    with pytest.raises(ValueError, match=rule + r"at position 0 \(step 1 of 5\): 3 of 21"):
        masked.ordered_nll(den, x, 7)
    with pytest.raises(ValueError, match=rule + r"at time [12] of n_t = 2: \d+ of \d+ "
                                                r"masked positions"):
        masked.negative_elbo(den, torch.randint(7, (50, 5)), n_t=2, categories=7,
                             generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=rule + r"at step 1 of 2: 10 of 10 masked pixels"):
        masked.sample(den, (2, 5), 2, categories=7)


def test_a_training_loss_leaves_non_finite_logits_to_fit():
    """Under grad (a training loss) ar_nll checks nothing: fit refuses the non-finite loss
    itself, without a device sync a step."""
    ar = _diverged(float("nan")).train()
    assert ar_nll(ar, torch.randint(7, (2, 5))).isnan().all()


def test_no_sequences_give_no_values():
    ar, den, x = _model(causal=True), _model(), torch.zeros(0, 5, dtype=torch.long)
    assert ar_nll(ar, x).shape == (0,)
    assert masked.ordered_nll(den, x, 7).shape == (0,)
    assert masked.negative_elbo(den, x, n_t=2, categories=7).shape == (0,)


@pytest.mark.parametrize("batch, match", [
    (0, r"^batch \(the examples the FLOP count runs at once\) must be a whole number >= 1, "
        r"got 0"),
    (-1, r"got -1"),
    (2.5, r"must be a whole number >= 1, got 2\.5"),
    (10**12, r"must be at most 1,000, got 1,000,000,000,000: the count is per example"),
])
def test_flops_refuse_a_batch_of_no_or_too_many_examples(batch, match):
    from companion.models import dit, unet

    with pytest.raises(ValueError, match=match):
        flops_per_sequence(_model(causal=True), batch=batch)
    with pytest.raises(ValueError, match=match):
        dit.flops_per_image(dit.DiT(width=16, depth=1, heads=2), batch=batch)
    with pytest.raises(ValueError, match=match):
        unet.flops_per_image(unet.UNet(unet.preset("tiny", T=10)), batch=batch)
