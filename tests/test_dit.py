"""Chapter 21's diffusion transformer: patches, adaLN-Zero, padding, attention maps, FLOPs."""

import time

import pytest
import torch
from torch import nn

from companion.models.dit import (
    Attention,
    DiT,
    DiTBlock,
    DiTConfig,
    TextEncoder,
    flops_per_image,
    n_params,
    patchify,
    unpatchify,
)
from companion.models.unet import NO_LABEL

SMALL = dict(width=32, depth=2, heads=4, mlp_ratio=2)  # fast, and every code path
CONDS = ("adaln", "in_context", "cross")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors


def _randomize(model, std=0.1):
    """The zero-initialized layers make a fresh DiT output 0; give every weight a value."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


def _sign_steps(model, loss_fn, steps, lr=1e-2):
    """Steps p -= lr sign(grad), Adam's first step, by hand (torch.optim's first step costs
    seconds of imports). Plain SGD hardly moves the output through the chain of small
    weights that leads from a label to it (a gap of 1e-7 after 3 steps of lr 0.1)."""
    for _ in range(steps):
        model.zero_grad()
        loss_fn().backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= lr * p.grad.sign()


def _close(a, b, atol=1e-6):
    """|a - b| <= atol everywhere (torch.testing.assert_close's first call costs 2 s of
    imports)."""
    assert a.shape == b.shape and (a - b).abs().max() <= atol, (a - b).abs().max()


def _images(B=3):
    return torch.randn(B, 1, 28, 28), torch.randint(1, 1001, (B,))


def _captions():
    """Three captions of 3, 1 and 0 words (the last the empty caption), padded to 8."""
    return torch.tensor([[5, 3, 7, 0, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0, 0, 0], [0] * 8])


# --- patches -----------------------------------------------------------------------------------

def test_patchify_known_example():
    # one 4x4 image of two channels, channel 1 = -channel 0; 2x2 patches, row-major
    a = torch.arange(16.0).reshape(4, 4)
    x = torch.stack([a, -a])[None]
    tokens = patchify(x, 2)
    assert tokens.shape == (1, 4, 8)
    # token 1 is the top-right patch, its pixels (0,2), (0,3), (1,2), (1,3), channels inner
    assert tokens[0, 1].tolist() == [2, -2, 3, -3, 6, -6, 7, -7]
    assert tokens[0, 2, ::2].tolist() == [8, 9, 12, 13]  # bottom-left, channel 0


@pytest.mark.parametrize("p", [2, 4, 7, 14])
def test_unpatchify_inverts_patchify(p):
    x = torch.randn(2, 3, 28, 28)
    tokens = patchify(x, p)
    assert tokens.shape == (2, (28 // p) ** 2, p * p * 3)
    assert torch.equal(unpatchify(tokens, p, 3, 28, 28), x)


@pytest.mark.parametrize("p", [1, 3, 5, 28, 4.0, True])
def test_invalid_patch_is_refused_naming_the_valid_ones(p):
    with pytest.raises(ValueError, match=r"one of \[2, 4, 7, 14\]"):
        patchify(torch.zeros(1, 1, 28, 28), p)
    with pytest.raises(ValueError, match=r"patch .* one of \[2, 4, 7, 14\]"):
        DiTConfig(patch=p)


# --- adaLN-Zero: the identity at initialization ------------------------------------------------

@pytest.mark.parametrize("cross", [False, True])
def test_block_is_the_identity_at_init_and_not_after_one_step(cross):
    block = DiTBlock(32, 4, mlp_ratio=2, cross=cross)
    h, c, text = torch.randn(2, 9, 32), torch.randn(2, 32), torch.randn(2, 5, 32)
    pad = torch.tensor([[False, False, True, True, True], [False] * 5])
    run = lambda: block(h, c, text=text, text_pad=pad)  # noqa: E731
    assert torch.equal(run(), h)
    target = torch.randn_like(h)
    _sign_steps(block, lambda: (run() * target).sum(), steps=1)
    assert (run() - h).abs().max() > 1e-3
    if cross:  # with the adaLN gates back at zero, the cross-attention branch alone moves h
        nn.init.zeros_(block.ada[1].weight)
        nn.init.zeros_(block.ada[1].bias)
        assert (run() - h).abs().max() > 1e-3


def test_block_matches_an_independent_adaln_zero_block():
    """Chapter 21's DiTs draw at chance on the cpu budget; the pilot that asked whether
    that was a bug of ours trained an independent DiT (torch's MultiheadAttention, its own
    loop) and saw the same. What it compared is kept here: the block's equation
    (Peebles and Xie's adaLN-Zero) written out with torch's own attention, on weights
    copied from ours, gives our block's output."""
    dim, heads = 32, 4
    block = _randomize(DiTBlock(dim, heads, mlp_ratio=2))
    ref = nn.MultiheadAttention(dim, heads, batch_first=True)
    with torch.no_grad():  # torch packs q, k, v in one matrix; ours keeps q and (k, v)
        ref.in_proj_weight.copy_(torch.cat([block.attn.q.weight, block.attn.kv.weight]))
        ref.in_proj_bias.copy_(torch.cat([block.attn.q.bias, block.attn.kv.bias]))
        ref.out_proj.weight.copy_(block.attn.out.weight)
        ref.out_proj.bias.copy_(block.attn.out.bias)
    h, c = torch.randn(2, 9, dim), torch.randn(2, dim)
    w, b = block.ada[1].weight, block.ada[1].bias
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = \
        (torch.nn.functional.silu(c) @ w.T + b)[:, None].chunk(6, -1)
    norm = lambda u: torch.nn.functional.layer_norm(u, (dim,), eps=1e-6)  # noqa: E731
    u = norm(h) * (1 + scale_a) + shift_a
    out = h + gate_a * ref(u, u, u, need_weights=False)[0]
    fc1, fc2 = block.mlp[0], block.mlp[2]
    u = norm(out) * (1 + scale_m) + shift_m
    hidden = torch.nn.functional.gelu(u @ fc1.weight.T + fc1.bias, approximate="tanh")
    out = out + gate_m * (hidden @ fc2.weight.T + fc2.bias)
    with torch.no_grad():
        _close(block(h, c), out, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(num_classes=10), dict(vocab_size=20, cond="cross"),
                                dict(vocab_size=20, cond="in_context")])
def test_the_whole_model_outputs_zero_at_init(kw):
    x, t = _images()
    y = _captions() if "vocab_size" in kw else torch.tensor([0, 9, NO_LABEL])
    assert torch.equal(DiT(**SMALL, **kw)(x, t, y), torch.zeros_like(x))


@pytest.mark.parametrize("kw", [dict(), dict(num_classes=10), dict(patch=7)]
                         + [dict(vocab_size=20, cond=c) for c in CONDS])
def test_output_shape(kw):
    model = _randomize(DiT(**SMALL, **kw))
    x, t = _images()
    y = _captions() if "vocab_size" in kw else torch.tensor([0, 9, NO_LABEL]) \
        if "num_classes" in kw else None
    out = model(x, t, y)
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().mean() > 1e-2


# --- captions: padding changes nothing -----------------------------------------------------------

def test_text_encoder_pads():
    enc = _randomize(TextEncoder(vocab_size=20, dim=32, length=8, depth=2, heads=4))
    ids = _captions()
    tokens, pad, pooled = enc(ids)
    assert tokens.shape == (3, 8, 32) and torch.equal(pad, ids == 0)
    assert torch.equal(pooled[2], torch.zeros(32))  # the empty caption
    assert torch.equal(tokens[pad], torch.zeros(int(pad.sum()), 32))
    assert pooled[0].abs().max() > 1e-2
    short_tokens, _, short_pooled = enc(ids[:, :3])  # the same captions without 5 pads
    _close(short_tokens, tokens[:, :3], atol=1e-5)
    _close(short_pooled, pooled, atol=1e-5)
    # pooled is the mean over words: caption 1 has one word
    _close(pooled[1], tokens[1, 0])
    with pytest.raises(ValueError, match="L <= length = 8"):
        enc(torch.ones(3, 9, dtype=torch.long))


@pytest.mark.parametrize("cond", CONDS)
def test_appending_pads_leaves_the_output_unchanged(cond):
    model = _randomize(DiT(**SMALL, vocab_size=20, cond=cond))
    x, t = _images()
    ids = _captions()
    out = model(x, t, ids)
    _close(model(x, t, ids[:, :3]), out, atol=1e-5)
    _close(model(x, t, None), model(x, t, torch.zeros_like(ids)), atol=0)
    # and the caption is read: other words, another prediction (else the above is vacuous)
    other = ids.clone()
    other[0, 1] = 11
    assert (model(x, t, other) - out)[0].abs().max() > 1e-3


def test_no_label_gives_another_prediction_after_training():
    model = DiT(**SMALL, num_classes=10)
    x, t = _images(4)
    y = torch.tensor([3, 3, NO_LABEL, 5])
    target = torch.randn_like(x)
    step = lambda: ((model(x, t, y) - target) ** 2).mean()  # noqa: E731

    def gap():
        with torch.no_grad():
            return (model(x[:1], t[:1], torch.tensor([3]))
                    - model(x[:1], t[:1], torch.tensor([NO_LABEL]))).abs().max()

    # the zero last layer passes no gradient upstream on the first step, so the label
    # reaches the output only from the second step on
    _sign_steps(model, step, steps=1)
    assert gap() == 0
    _sign_steps(model, step, steps=2)
    assert gap() > 1e-4


@pytest.mark.parametrize("cond", CONDS)
def test_a_caption_dit_started_from_a_label_dit_draws_as_it_does_without_a_label(cond):
    """load_label_dit: "adaln" and "cross" compute the label DiT's unconditional prediction
    for every caption, "in_context" for the empty caption only (the words join its attention
    at once); and the caption is read once the text path trains."""
    from companion.models.dit import load_label_dit

    labelled = _randomize(DiT(**SMALL, num_classes=10))
    x, t = _images()
    plain = labelled(x, t, torch.full((3,), NO_LABEL))
    model = load_label_dit(DiT(**SMALL, vocab_size=20, cond=cond), labelled)
    ids = _captions()
    _close(model(x, t, torch.zeros_like(ids)), plain, atol=1e-5)
    gap = (model(x[:1], t[:1], ids[:1]) - plain[:1]).abs().max()
    assert (gap > 1e-3) if cond == "in_context" else (gap < 1e-5), gap
    # without the folded "no label" vector the start differs (else the above is vacuous)
    assert (labelled(x, t, torch.zeros(3, dtype=torch.long)) - plain).abs().max() > 1e-3
    target = torch.randn_like(x)
    _sign_steps(model, lambda: ((model(x, t, ids) - target) ** 2).mean(), steps=3)
    with torch.no_grad():
        other = ids.clone()
        other[0, 1] = 11
        assert (model(x[:1], t[:1], other[:1]) - model(x[:1], t[:1], ids[:1])).abs().max() \
            > 1e-4


@pytest.mark.parametrize("kw", [dict(width=64), dict(patch=7), dict(num_classes=10)])
def test_load_label_dit_refuses_another_shape_or_a_second_label_dit(kw):
    from companion.models.dit import load_label_dit

    labelled = DiT(**SMALL, num_classes=10)
    caption = DiT(**{**SMALL, **kw}) if "num_classes" in kw else \
        DiT(**{**SMALL, **kw}, vocab_size=20)
    with pytest.raises(ValueError, match="of one shape"):
        load_label_dit(caption, labelled)


# --- attention ----------------------------------------------------------------------------------

def test_explicit_attention_matches_the_fused_one():
    attn = Attention(32, 4)
    x, ctx = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    pad = torch.tensor([[False, True, False, True, True], [True] * 5])
    fused = attn(x, ctx, pad)
    explicit, w = attn(x, ctx, pad, need_weights=True)
    _close(explicit, fused)
    assert w.shape == (2, 4, 6, 5)
    assert torch.equal(fused[1], torch.zeros(6, 32))  # all keys padding: nothing added
    _close(attn(x), attn(x, x), atol=0)  # no context: self-attention


def test_attention_maps():
    model = _randomize(DiT(**SMALL, vocab_size=20, cond="cross"))
    x, t = _images()
    ids = _captions()
    maps = model.attention_maps(x, t, ids)
    assert maps.shape == (2, 3, 4, 49, 8)  # depth, B, heads, N, L
    pad = (ids == 0)[None, :, None, None, :].expand_as(maps)
    assert torch.equal(maps[pad], torch.zeros(int(pad.sum())))
    sums = maps.sum(-1)
    _close(sums[:, :2], torch.ones_like(sums[:, :2]))
    assert torch.equal(sums[:, 2], torch.zeros_like(sums[:, 2]))  # the empty caption
    assert maps[:, 0].std() > 1e-3  # not uniform: the maps depend on the words
    with pytest.raises(ValueError, match="cond='cross'"):
        DiT(**SMALL, vocab_size=20).attention_maps(x, t, ids)


# --- configuration and input errors ------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(width=30), "multiple of heads"),
    (dict(width=42, heads=6), "of 4"),
    (dict(depth=0), "depth must be a whole number"),
    (dict(cond="film"), "cond must be one of"),
    (dict(cond="cross"), "give vocab_size"),
    (dict(num_classes=10, vocab_size=20), "not both"),
    (dict(num_classes=1), "num_classes"),
    (dict(vocab_size=1), "vocab_size"),
    (dict(image_size=30, patch=4), r"one of \[2, 3, 5, 6, 10, 15\]"),
    (dict(T=0), "T must be"),
    (dict(text_length=2.0, vocab_size=9), "text_length"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        DiTConfig(**kw)
    with pytest.raises(ValueError, match=match):
        DiT(**kw)


@pytest.mark.parametrize("kw, match", [  # issue 96: bounded as TextConfig is
    (dict(depth=10**6), r"^depth must be at most 1,000, got 1,000,000: each block"),
    (dict(width=2**20, heads=1), r"^width must be at most 16,384, got 1,048,576"),
    (dict(vocab_size=10**10), r"^vocab_size \(or None\) must be at most 1,048,576"),
    (dict(num_classes=10**10), r"^num_classes \(or None\) must be at most 1,048,576, got "
                               r"10,000,000,000: the label embedding"),
    (dict(vocab_size=9, text_length=10**9), r"^text_length must be at most 65,536"),
    (dict(vocab_size=9, text_depth=10**6), r"^text_depth must be at most 1,000"),
    (dict(image_size=10**9), r"^image_size must be at most 4,096, got 1,000,000,000"),
    (dict(image_size=4096, patch=2), r"^\(image_size / patch\)\^2 \(the image's tokens\) "
                                     r"must be at most 65,536, got 4,194,304: attention"),
    (dict(width=2**14, depth=1000, heads=1), r"^this DiTConfig builds [\d,]+ weights, more "
                                             r"than MAX_PARAMS = 2,147,483,648 .*lower depth"),
])
def test_a_config_too_large_to_build_is_refused_before_anything_is_allocated(kw, match):
    began = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        DiTConfig(**kw)
    assert time.perf_counter() - began < 0.5  # refused, not built


@pytest.mark.parametrize("kw", [dict(), dict(num_classes=10), dict(vocab_size=32),
                                dict(vocab_size=32, cond="cross", text_depth=2),
                                dict(vocab_size=32, cond="in_context"),
                                dict(width=48, depth=3, heads=3, mlp_ratio=2, patch=7,
                                     in_channels=3)])
def test_config_n_params_counts_the_built_weights(kw):
    model = DiT(**kw)
    assert model.config.n_params() == n_params(model)


def test_input_errors():
    x, t = _images(2)
    labels = DiT(**SMALL, num_classes=10)
    words = DiT(**SMALL, vocab_size=20, text_length=4)
    cases = [
        (labels, (x[:, :, :14], t, None), r"x must be images \(B, 1, 28, 28\)"),
        (labels, (x.double(), t, None), "x is torch.float64"),
        (labels, (x, t.float(), None), "t must be an int64 tensor"),
        (labels, (x, torch.tensor([0, 5]), None), r"1\.\.T = 1\.\.1000"),
        (labels, (x, t, torch.tensor([10, 0])), r"labels .* in -1\.\.9"),
        (labels, (x, t, torch.tensor([[1], [2]])), r"shape \(2,\)"),
        (words, (x, t, torch.ones(2, 5, dtype=torch.long)), "L <= 4"),
        (words, (x, t, torch.tensor([[1, 20], [0, 0]])), r"token ids .* in 0\.\.19"),
        (DiT(**SMALL), (x, t, torch.tensor([1, 2])), "unconditional"),
    ]
    for model, args, match in cases:
        with pytest.raises(ValueError, match=match):
            model(*args)


# --- cost ---------------------------------------------------------------------------------------

@pytest.mark.slow  # flop_counter's first use imports torch._dynamo (seconds)
def test_flops_match_a_count_by_hand():
    """flop_counter against 2 * multiply-adds of every Linear and attention product."""
    model = DiT(**SMALL, vocab_size=20, cond="cross")
    macs = []

    def linear_hook(m, inp, out):
        macs.append(out.numel() * m.in_features)

    def attn_hook(m, args, out):
        x, ctx = args[0], args[1] if len(args) > 1 and args[1] is not None else args[0]
        macs.append(2 * x.shape[0] * x.shape[1] * ctx.shape[1] * x.shape[2])  # qk^T, w v

    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
        elif isinstance(m, Attention):
            m.register_forward_hook(attn_hook)
    with torch.no_grad():
        model(torch.zeros(4, 1, 28, 28), torch.ones(4, dtype=torch.long))
    by_hand = 2 * sum(macs) / 4  # before flops_per_image's own call adds to macs
    assert flops_per_image(model, batch=3) == pytest.approx(by_hand, rel=1e-9)
    assert not any(m.explicit for m in model.modules() if isinstance(m, Attention))


@pytest.mark.slow  # flop_counter's first use imports torch._dynamo (seconds)
def test_flops_grow_about_4x_when_the_patch_halves():
    # 49 -> 196 tokens: the blocks' Linears cost 4x, attention (q k^T, weights @ v) 16x, the
    # patch embedding and the last layer the same (N p^2 C width); measured at width 64 and
    # depth 4: 22.16 -> 116.84 MFLOPs, 5.27x, as attention is 11% of the cost at p = 4
    f4, f2 = flops_per_image(DiT(patch=4)), flops_per_image(DiT(patch=2))
    assert 5.2 < f2 / f4 < 5.35
    assert n_params(DiT(patch=2)) < n_params(DiT(patch=4))  # smaller patches, smaller in/out


@pytest.mark.slow
def test_a_tiny_model_overfits_eight_images():
    """The noise-prediction loss on one fixed batch (8 images, one step t, one noise draw)
    falls below half its start in 200 Adam steps: 1.01 -> 0.05 here, in 4-6 s on the shared
    2-core machine (one thread), hence slow. (With 7x7 patches it stalls near 0.14: 32
    channels cannot make a patch's 49 independent noise values.)"""
    model = DiT(width=32, depth=2, heads=4, mlp_ratio=2, patch=4)
    x0 = torch.rand(8, 1, 28, 28) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.full((8,), 200)
    ab = 0.75  # x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps at the fixed step
    xt = ab ** 0.5 * x0 + (1 - ab) ** 0.5 * eps
    loss = lambda: ((model(xt, t) - eps) ** 2).mean()  # noqa: E731
    start = loss().item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    for _ in range(200):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < start / 2, (start, loss().item(), time.perf_counter() - t0)


# --- issue 96: the id-range check, one for the DiT, its TextEncoder and the CaptionUNet ----------

@pytest.mark.parametrize("ids, match", [
    (torch.tensor([[1, 20], [0, 0]]), r"^ids must hold token ids \(0: pad\) in 0\.\.19, got "
                                      r"values in 0\.\.20: encode the text"),
    (torch.tensor([[-1, 2]]), r"^ids must hold token ids .* got values in -1\.\.2"),
    (torch.tensor([[1, 2]], dtype=torch.uint8), r"^ids must be an integer tensor of token ids "
                                                r"\(0: pad\) \(torch.long\), got torch.uint8"),
])
def test_the_text_encoder_checks_its_ids_as_the_dit_does(ids, match):
    """IndexError: index out of range in self, and a uint8 failure deep in the embedding,
    named no argument."""
    with pytest.raises(ValueError, match=match):
        TextEncoder(20, 16, 4, 1, 2)(ids)


def test_the_dit_refuses_uint8_labels_and_ids_by_name():
    x, t = _images(2)
    with pytest.raises(ValueError, match=r"^y must be an integer tensor of labels .*uint8"):
        DiT(**SMALL, num_classes=10)(x, t, torch.tensor([1, 2], dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"^y must be an integer tensor of token ids .*uint8"):
        DiT(**SMALL, vocab_size=20, text_length=4)(x, t, torch.ones(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"^y must hold labels \(-1: NO_LABEL\) in -1\.\.9, got "
                                         r"values in 0\.\.10: digits 0\.\.9, or NO_LABEL"):
        DiT(**SMALL, num_classes=10)(x, t, torch.tensor([10, 0]))
    assert DiT(**SMALL, num_classes=10)(x, t, torch.tensor([1, 2], dtype=torch.int32)).shape \
        == x.shape
