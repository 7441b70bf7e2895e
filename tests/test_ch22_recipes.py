"""Chapter 22's recipes: the toy text as the models see it, one network for both kinds, and
a run that trains, stops and resumes (ci sizes)."""

from __future__ import annotations

import math
import platform

import pytest
import torch

from companion import recipes
from companion.models.text_transformer import ar_nll
from companion.run import checks
from companion.run.profiles import get_profile

CI, CPU = get_profile("ci"), get_profile("cpu")


def test_settings_grow_with_the_profile_and_refuse_a_name():
    ci, cpu, gpu = (recipes.lm_settings(get_profile(p)) for p in ("ci", "cpu", "gpu"))
    for key in ("n_train", "width", "steps", "batch_size"):
        assert ci[key] <= cpu[key] <= gpu[key], key
    with pytest.raises(checks.ArgumentError, match="get_profile"):
        recipes.lm_settings("cpu")


def test_toy_text_is_sentences_padded_to_the_longest():
    text = recipes.toy_text(CI)
    s, g, tok = recipes.lm_settings(CI), text["grammar"], text["tokenizer"]
    assert text["train"].shape == (s["n_train"], g.max_characters())
    assert text["test"].shape == (s["n_test"], g.max_characters())
    assert tok.decode(text["test"]) == text["test_sentences"]
    assert text["characters"] == sum(len(t) for t in text["test_sentences"])
    assert all(g.log2_prob(t) > -math.inf for t in tok.decode(text["train"][:50]))
    again = recipes.toy_text(CI)  # seeded: the same sentences every run
    assert torch.equal(again["train"], text["train"])
    assert not torch.equal(text["train"][:len(text["test"])], text["test"])


@pytest.mark.parametrize("kind,causal", [("masked", False), ("autoregressive", True)])
def test_one_network_both_kinds(kind, causal):
    net = recipes.lm_network(kind, CPU, 26, 44)
    assert net.config.causal is causal and net.config.width == recipes.lm_settings(CPU)["width"]
    with pytest.raises(checks.ArgumentError, match="kind must be one of"):
        recipes.lm_network("diffusion", CPU, 26, 44)


def test_bits_are_the_exact_nll_or_the_bound_in_bits():
    torch.manual_seed(0)
    text = recipes.toy_text(CI)
    x, V = text["test"][:6], text["tokenizer"].vocab_size
    ar = recipes.lm_network("autoregressive", CI, V, x.shape[1]).eval()
    with torch.no_grad():
        assert torch.allclose(recipes.lm_bits(ar, x), ar_nll(ar, x) / math.log(2))
    den = recipes.lm_network("masked", CI, V, x.shape[1]).eval()
    bits = recipes.lm_bits(den, x, n_t=8, generator=torch.Generator().manual_seed(0))
    assert bits.shape == (6,) and torch.isfinite(bits).all() and (bits > 0).all()
    with pytest.raises(checks.ArgumentError, match="TextTransformers"):
        recipes.lm_bits(torch.nn.Linear(2, 2), x)


@pytest.mark.slow
@pytest.mark.parametrize("kind", recipes.LM_KINDS + ("fim",))
def test_a_run_trains_and_an_early_checkpoint_resumes_into_it(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    text = recipes.toy_text(CI)
    x, V = text["train"], text["tokenizer"].vocab_size
    early, _ = recipes.lm_model(x, V, CI, "cpu", kind=kind, steps=10)
    path = recipes.lm_checkpoint(CI, 10, kind=kind)
    full, run = recipes.lm_model(x, V, CI, "cpu", kind=kind, resume_from=path)
    assert run.steps == recipes.lm_settings(CI)["steps"] and run.resumed_at == 10
    assert run.history["loss"][-1] < run.history["loss"][0]
    assert any(not torch.equal(a, b) for a, b in zip(early.state_dict().values(),
                                                      full.state_dict().values(), strict=True))
    again, rerun = recipes.lm_model(x, V, CI, "cpu", kind=kind)  # loads: nothing trained
    assert rerun.seconds < run.seconds and all(
        torch.equal(a, b) for a, b in zip(full.state_dict().values(),
                                          again.state_dict().values(), strict=True))
    with pytest.raises(checks.ArgumentError, match="token ids"):
        recipes.lm_model(x.float(), V, CI, "cpu", kind=kind)


def test_the_longer_run_starts_with_the_shared_run_in_files_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    for p in (CI, CPU, get_profile("gpu")):
        s = recipes.lm_settings(p)
        assert s["long_steps"] >= 2 * s["steps"]
    assert recipes.lm_settings(CPU)["long_steps"] == recipes.LM_LONGER * 12_000 == 48_000
    assert recipes.lm_checkpoint(CI, long=True) != recipes.lm_checkpoint(CI)
    text = recipes.toy_text(CI)
    x, V, steps = text["train"], text["tokenizer"].vocab_size, recipes.lm_settings(CI)["steps"]
    shared, _ = recipes.lm_model(x, V, CI, "cpu", kind="masked")
    kept = recipes.lm_snapshots(x, V, CI, "cpu", kind="masked", long=True, fractions=(0.5,))
    assert sorted(kept) == [steps, recipes.lm_settings(CI)["long_steps"]]
    first = kept[steps][0]  # the same seed and recipe: its first updates are the shared run
    assert all(torch.equal(a, b) for a, b in zip(shared.state_dict().values(),
                                                  first.state_dict().values(), strict=True))
    with pytest.raises(checks.ArgumentError, match="long must be True"):
        recipes.lm_model(x, V, CI, "cpu", kind="masked", long="yes")


def test_english_windows_hold_out_the_last_tenth(monkeypatch):
    from companion import language

    text = "".join(f"word{i % 7} and more words, " for i in range(400))
    text = language.normalize(text.replace("0", "o").replace("1", "i"))
    text = "".join(c if c.isalpha() or c in " ,.'" else "x" for c in text)
    monkeypatch.setattr(language, "english_text", lambda download=None: (text, "a test"))
    e = recipes.english_windows(CI, length=16)
    s, cut = recipes.lm_settings(CI), int(0.9 * len(text))
    assert e["train"].shape == (s["n_train"], 16) and e["test"].shape[1] == 16
    assert e["characters"] == e["test"].numel()
    assert e["prefix"] == f"ch22-pydocs-py{platform.python_version()}"
    held = e["tokenizer"].decode(e["test"])
    assert "".join(held) == text[cut:cut + 16 * len(held)]  # end to end, from the cut
    train = e["tokenizer"].decode(e["train"][:200])
    assert all(w in text[:cut] for w in train)  # every training window before the cut
    monkeypatch.setattr(language, "english_text", lambda download=None: ("too short", "x"))
    with pytest.raises(checks.ArgumentError, match="too few for a held-out window"):
        recipes.english_windows(CI, length=16)


# --- issue 96: sizes bounded and arguments checked before anything trains ------------------------

def test_lm_model_refuses_its_arguments_before_training_anything(monkeypatch, tmp_path):
    from companion.recipes import language as recipe

    def trains(*args, **kwargs):
        raise AssertionError("trained before refusing")

    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    monkeypatch.setattr(recipe, "fit", trains)
    x = torch.arange(96).reshape(16, 6) % 5
    cases = [
        (dict(steps=10**12), r"^steps \(the updates of an early run, or None for the full "
                             r"run\) must be at most 40, got 1,000,000,000,000: an early run"),
        (dict(steps=41, kind="autoregressive"), r"must be at most 40, got 41"),
    ]
    for kw, match in cases:
        with pytest.raises(checks.ArgumentError, match=match):
            recipes.lm_model(x, 5, CI, "cpu", **kw)
    with pytest.raises(checks.ArgumentError, match=r"^x \(token sequences \(N, L\)\) must be an "
                                                   r"integer tensor of token ids .*uint8"):
        recipes.lm_model(x.to(torch.uint8), 5, CI, "cpu")
    with pytest.raises(checks.ArgumentError, match=r"^x \(token sequences \(N, L\)\) must hold "
                                                   r"token ids in 0\.\.3, got values in 0\.\.4: "
                                                   r"pass the tokenizer's vocab_size"):
        recipes.lm_model(x, 4, CI, "cpu")
    assert not (tmp_path / "checkpoints").exists()


def test_lm_bits_bounds_n_t_and_refuses_a_diverged_model():
    import time

    den = recipes.lm_network("masked", CI, 5, 6).eval()
    x = torch.randint(0, 5, (4, 6))
    began = time.perf_counter()
    with pytest.raises(checks.ArgumentError, match=r"^n_t \(the times each sequence or image "
                                                   r"gets\) must be at most 10,000, got "
                                                   r"1,000,000,000: each time runs"):
        recipes.lm_bits(den, x, n_t=10**9)
    assert time.perf_counter() - began < 0.5
    for kind in recipes.LM_KINDS:
        model = recipes.lm_network(kind, CI, 5, 6).eval()
        with torch.no_grad():
            model.head.bias.fill_(float("nan"))
        with pytest.raises(checks.ArgumentError, match=r"^the (model|denoiser) returned "
                                                       r"non-finite logits \(NaN or inf\)"):
            recipes.lm_bits(model, x, n_t=2)
