"""Language (chapter 22): masked diffusion against an autoregressive model on text."""

from __future__ import annotations

import math

import torch

from ..run import checks
from ..train import checkpoint_path, fit
from .common import _at_steps, _continue, _prefix, _profile
from .pixel import snapshots

# --- chapter 22: masked diffusion against an autoregressive model on text ---------------------
LM_KINDS = ("autoregressive", "masked")
FIM_RATE = 0.5  # Bavarian et al.'s default share of fill-in-the-middle sequences


# the masked model's longer run on the cpu, in multiples of the matched budget
LM_LONGER = 4


def lm_settings(profile) -> dict:
    """Chapter 22's recipe per profile: the toy text's training and test sentences, the
    transformer (one size for both kinds, so that a step costs the same), updates, batch,
    learning rate and EMA, and the updates of the English models (`english_steps`, an
    early checkpoint of the same recipe).

    ci: a pipeline check. cpu: 20,000 sentences, width 64, depth 3 (14.6 MFLOPs a
    sentence), 12,000 updates of 64 (about 6.5 minutes a model on 2 cores), trained once
    and shipped (companion.run.shipped); the English models 1,500. The masked bound's
    distance to the truth (0.528 bits a character on the test sentences) set the budget:
    1.46, 0.70 and 0.35 bits at 375, 750 and 1,500 updates, then 0.20, 0.13 and 0.087 at
    3,000, 6,000 and 12,000 (16% of the truth): a third less a doubling now, so the book's
    bar, a tenth, lies about two doublings on. The autoregressive model was within 1% of
    the truth by 1,500. gpu: 100,000 sentences, width 256, depth 6, 20,000 updates of 256
    (English too).

    `long_steps`: the masked model's longer run (`lm_model(..., long=True)`, files of its
    own, the same seed), LM_LONGER times `steps` on the cpu (48,000, the two doublings
    the trend asked for; 40 minutes on 2 cores), twice on ci and gpu. Its bound came to
    12% and 8% above the truth at 24,000 and 48,000 updates, still falling.
    """
    p = _profile(profile)
    steps = p.pick(ci=40, cpu=12_000, gpu=20_000)
    return dict(n_train=p.pick(ci=512, cpu=20_000, gpu=100_000),
                n_test=p.pick(ci=64, cpu=1_000, gpu=5_000),
                width=p.pick(ci=32, cpu=64, gpu=256), depth=p.pick(ci=2, cpu=3, gpu=6),
                heads=4, steps=steps, long_steps=p.pick(ci=2, cpu=LM_LONGER, gpu=2) * steps,
                english_steps=p.pick(ci=40, cpu=1_500, gpu=20_000),
                batch_size=p.pick(ci=32, cpu=64, gpu=256),
                lr=p.pick(ci=2e-3, cpu=1e-3, gpu=3e-4),
                ema=p.pick(ci=0.99, cpu=0.995, gpu=0.999))


def toy_text(profile) -> dict:
    """The toy English of `companion.language` as chapter 22 trains on it: sentences drawn
    with seed 0 (training) and seed 1 (test; the language is finite, so a test sentence may
    also be a training one, as in any text), one sentence a sequence, padded to the longest
    sentence the grammar writes.

    Returns {"grammar", "tokenizer", "train" (N, L) long, "test" (M, L) long,
    "test_sentences" (M strings), "characters" (the test sentences' characters, the
    denominator of bits per character)}.
    """
    from .. import language

    s = lm_settings(profile)
    grammar = language.toy_grammar()
    tokenizer = language.CharTokenizer(grammar.alphabet)
    length = grammar.max_characters()
    train = grammar.sample(s["n_train"], torch.Generator().manual_seed(0))
    test = grammar.sample(s["n_test"], torch.Generator().manual_seed(1))
    return {"grammar": grammar, "tokenizer": tokenizer,
            "train": tokenizer.encode(train, length), "test": tokenizer.encode(test, length),
            "test_sentences": test, "characters": sum(len(t) for t in test)}


ENGLISH_LENGTH = 32  # characters a window: chapter 22's real text, a little under a sentence


def english_windows(profile, length: int = ENGLISH_LENGTH, download: bool | None = None
                    ) -> dict:
    """Chapter 22's real English (`language.english_text`: the Python documentation's help
    topics offline, Tiny Shakespeare where downloads are allowed), cut once at 90%: as many
    training windows of `length` characters as the toy's training sentences, at random
    offsets in the first part (seed 0), and up to the toy's test count of windows end to end
    in the last part, which no training window touches.

    Returns {"tokenizer", "train" (N, length) long, "test" (M, length) long, "source" (in
    words), "prefix" (the checkpoints' name, one per source and Python release),
    "characters"}.
    """
    import platform

    from .. import language

    s = lm_settings(profile)
    length = checks.count("length (characters a window)", length, 2)
    text, source = language.english_text(download)
    cut = int(0.9 * len(text))
    if len(text) - cut < length:
        raise checks.ArgumentError(f"the text has {len(text):,} characters: too few for a "
                                   f"held-out window of {length}")
    tokenizer = language.CharTokenizer(language.ENGLISH_ALPHABET)
    ids = tokenizer.encode([text], len(text))[0]
    starts = torch.randint(0, cut - length + 1, (s["n_train"],),
                           generator=torch.Generator().manual_seed(0))
    train = ids[starts[:, None] + torch.arange(length)]
    test = ids[cut:].unfold(0, length, length)[:s["n_test"]].clone()
    # each Python release ships its own help topics: a checkpoint trained on another's
    # (a cache made under 3.11, read under Colab's 3.13) would not load
    prefix = ("ch22-shakespeare" if source.startswith("Tiny Shakespeare")
              else f"ch22-pydocs-py{platform.python_version()}")
    return {"tokenizer": tokenizer, "train": train, "test": test, "source": source,
            "prefix": prefix, "characters": test.numel()}


def _lm_kind(kind) -> str:
    if kind not in LM_KINDS + ("fim",):
        raise checks.ArgumentError(f"kind must be one of {LM_KINDS + ('fim',)}, got {kind!r}")
    return kind


def lm_network(kind: str, profile, vocab_size: int, length: int):
    """The untrained transformer of `kind`: "masked" (bidirectional, the masked diffusion
    denoiser), "autoregressive" (the same network with a causal mask) or "fim" (causal,
    for `fim_psm`'s sequences: three more ids, the sentinels, and three more positions)."""
    from ..models.text_transformer import TextTransformer

    s = lm_settings(profile)
    extra = 3 if _lm_kind(kind) == "fim" else 0
    return TextTransformer(vocab_size=vocab_size + extra, length=length + extra,
                           width=s["width"], depth=s["depth"], heads=s["heads"],
                           causal=kind != "masked")


def lm_checkpoint(profile, steps: int | None = None, prefix: str = "ch22", *,
                  kind: str = "masked", long: bool = False):
    """The checkpoint file of chapter 22's model of `kind` trained for `steps` (None: the
    full run), of the longer run if `long`."""
    name = f"{_prefix(prefix)}-{_lm_kind(kind)}" + ("-long" if _long(long) else "")
    return checkpoint_path(_at_steps(name, steps), profile)


def _long(long) -> bool:
    if not isinstance(long, bool):
        raise checks.ArgumentError(f"long must be True (the longer run, lm_settings' "
                                   f"long_steps) or False (the matched budget), got {long!r}")
    return long


def lm_model(x, vocab_size: int, profile, device, *, kind: str = "masked",
             steps: int | None = None, resume_from=None, prefix: str = "ch22",
             long: bool = False):
    """Chapter 22's language models, load-or-train on token sequences x (N, L): the masked
    diffusion model on chapter 14's bound (`masked.loss` with categories = vocab_size,
    nats a sequence), the autoregressive model on its exact negative log-likelihood
    (`ar_nll`), or ("fim") an autoregressive model on fill-in-the-middle sequences
    (`fim_psm`, FIM_RATE of each batch rewritten afresh at every update; vocab_size is the
    tokenizer's, whose last id is the padding); Adam, gradients clipped at 1, EMA. Same
    network, batch and updates for all.
    steps: None (the profile's updates) or fewer (an early checkpoint in its own file,
    `lm_snapshots`); more are refused before anything trains (`checks.early_steps`).
    long: False (default) for the profile's `steps`, True for the longer run of its
    `long_steps` (files of their own; up to `steps` updates it repeats the matched run).

    Returns (EMA model in eval mode, FitResult).
    """
    from .. import masked
    from ..models.text_transformer import ar_nll, fim_psm
    from ..run.precision import default_optimizer

    s = lm_settings(profile)
    x = checks.index_tensor("x (token sequences (N, L))", x)
    if x.dim() != 2 or len(x) < 1:
        raise checks.ArgumentError(f"x must be token ids (N, L), an integer tensor, got "
                                   f"{x.dtype} of shape {tuple(x.shape)}")
    vocab_size = checks.count("vocab_size", vocab_size, 2)
    checks.token_ids("x (token sequences (N, L))", x, 0, vocab_size - 1,
                     fix="pass the tokenizer's vocab_size, which counts the padding id")
    full = s["long_steps" if _long(long) else "steps"]
    total = checks.early_steps(steps, full)
    torch.manual_seed(0)
    model = lm_network(kind, profile, vocab_size, x.shape[1]).to(device)
    optimizer = default_optimizer(model.parameters(), s["lr"], device)
    config = dict(profile=profile.name, kind=kind, vocab_size=vocab_size, length=x.shape[1],
                  lr=s["lr"], batch_size=s["batch_size"], ema=s["ema"], clip=1.0,
                  n_train=len(x), total=full)
    if kind == "fim":
        config["fim_rate"] = FIM_RATE

    def loss_fn(model, batch):
        if kind == "fim":
            return ar_nll(model, fim_psm(batch, vocab_size - 1, rate=FIM_RATE)).mean()
        if kind == "autoregressive":
            return ar_nll(model, batch).mean()
        return masked.loss(model, batch, categories=vocab_size)

    path = lm_checkpoint(profile, steps, prefix, kind=kind, long=long)
    _continue(path, resume_from, model, config, x, optimizer, s, total)
    result = fit(model, loss_fn, x, steps=total, batch_size=s["batch_size"],
                 optimizer=optimizer, clip=1.0, ema=s["ema"], checkpoint=path, config=config,
                 desc=f"{kind}" + (", longer" if long else "")
                 + ("" if steps is None else f", {steps} steps"))
    return result.ema.model.eval(), result


def lm_snapshots(x, vocab_size: int, profile, device, *, kind: str,
                 fractions=(0.25, 0.5), prefix: str = "ch22", long: bool = False) -> dict:
    """One run of `lm_model` (the longer one if `long`) kept at fractions of its updates,
    {updates: (model, FitResult)}: chapter 22's budget trend at no extra training."""
    def recipe(x, profile, device, **stage):
        return lm_model(x, vocab_size, profile, device, kind=kind, prefix=prefix,
                        long=long, **stage)

    def checkpoint(profile, steps):
        return lm_checkpoint(profile, steps, prefix, kind=kind, long=long)

    return snapshots(recipe, checkpoint, x, profile, device, fractions=fractions,
                     total=lm_settings(profile)["long_steps" if _long(long) else "steps"])


@torch.no_grad()
def lm_bits(model, x, *, n_t: int = 32, generator: torch.Generator | None = None,
            among: int | None = None) -> torch.Tensor:
    """Bits of each sequence of x (B, L) under `model`: the autoregressive model's exact
    -log2 p(x), or the masked diffusion model's bound (chapter 14's, by stratified Monte
    Carlo over n_t times, at most masked.MAX_TIMES = 10,000), an upper bound on its
    -log2 p(x). Divide their sum by the sequences' characters for bits per character. A
    model whose logits are NaN or infinite is refused (`checks.finite_logits`), as the
    samplers refuse it. among: a causal model's softmax over its first `among` ids only
    (`ar_nll`: the fill-in-the-middle model read on plain text, its sentinels out)."""
    from .. import masked
    from ..models.text_transformer import TextTransformer, ar_nll

    if not isinstance(model, TextTransformer):
        raise checks.ArgumentError("model must be one of chapter 22's TextTransformers "
                                   f"(lm_model), got {checks._got(model)}")
    if among is not None and not model.config.causal:
        raise checks.ArgumentError("among is for a causal model's exact likelihood; the "
                                   "masked model's bound runs over all its ids")
    nats = (ar_nll(model, x, among=among) if model.config.causal else
            masked.negative_elbo(model, x, n_t=n_t, categories=model.config.vocab_size,
                                 generator=generator))
    return nats / math.log(2)
