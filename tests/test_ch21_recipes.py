"""Chapter 21's recipes: the networks at equal FLOPs, the captions a training batch sees, the
guided noise prediction, and a run that trains, stops and resumes (ci sizes)."""

from __future__ import annotations

import pytest
import torch

from companion import captions, recipes
from companion.run import checks
from companion.run.profiles import get_profile

CPU = get_profile("cpu")


@pytest.mark.slow  # torch.utils.flop_counter's first use imports torch._dynamo
def test_the_unet_gets_the_updates_of_equal_training_flops():
    steps = recipes.equal_flops_steps(2000, "unet", CPU)
    ratio = recipes.network_flops("dit-L", CPU) / recipes.network_flops("unet", CPU)
    assert steps == round(2000 * ratio) and 250 < steps < 400  # 145 against 22 MFLOPs
    assert recipes.equal_flops_steps(2000, "dit-L", CPU) == 2000
    # the page's pair: DiT-L/2, near the U-Net's FLOPs an image, sets the U-Net's updates
    near = recipes.network_flops("dit-L/2", CPU) / recipes.network_flops("unet", CPU)
    assert 0.7 < near < 0.9, near  # 117 against 145 MFLOPs
    full = recipes.dit_settings(CPU)["steps"]
    assert recipes.ch21_updates("unet", CPU) == round(full * near)
    sizes = [recipes.network_flops(f"dit-{s}", CPU) for s in recipes.DIT_SIZES]
    assert sizes == sorted(sizes) and sizes[-1] / sizes[0] > 5
    gpu = get_profile("gpu")  # there the U-Net trains about as long as in chapter 9
    unet_gpu = recipes.ch21_updates("unet", gpu)  # equal FLOPs to the page's DiT-L/2
    assert 0.5 < unet_gpu / recipes.ddpm_settings(gpu)["steps"] < 1.5


@pytest.mark.parametrize("network,cond,says", [("unet", "adaln", "reads a caption as one"),
                                               ("dit-M", "pooled", "cond='adaln'"),
                                               ("dit-XL", "label", "network must be"),
                                               ("dit-L/3", "label", "with a patch"),
                                               ("dit-L/", "label", "with a patch"),
                                               ("dit-M", "text", "cond must be")])
def test_a_network_or_condition_of_no_recipe_is_refused(network, cond, says):
    with pytest.raises(checks.ArgumentError, match=says):
        recipes.network_flops(network, CPU, cond)


def test_a_dit_names_its_patch_and_a_seed_its_file():
    net = recipes.ch21_network("dit-L/2", "label", CPU)
    assert net.config.patch == 2 and recipes.ch21_network("dit-L", "label", CPU).config.patch == 4
    assert recipes.ch21_checkpoint(CPU, network="dit-L/2").name == "ch21-dit-L-p2-label-cpu.pt"
    assert recipes.ch21_checkpoint(CPU, 500, network="unet", seed=2).name == \
        "ch21-unet-label-seed2-step500-cpu.pt"
    with pytest.raises(checks.ArgumentError, match="seed"):
        recipes.ch21_checkpoint(CPU, network="unet", seed=-1)


def test_a_label_dits_longer_run_has_its_own_file_and_twice_the_updates():
    full = recipes.ch21_updates("dit-L/2", CPU)
    assert recipes.ch21_updates("dit-L/2", CPU, long=True) == recipes.DIT_LONGER * full
    assert recipes.ch21_checkpoint(CPU, network="dit-L/2", long=True).name == \
        "ch21-dit-L-p2-label-long-cpu.pt"
    assert recipes.ch21_checkpoint(CPU, 4500, network="dit-L/2", long=True).name == \
        "ch21-dit-L-p2-label-long-step4500-cpu.pt"
    for network, cond in (("unet", "label"), ("dit-L/2", "adaln")):
        with pytest.raises(checks.ArgumentError, match="trained on labels"):
            recipes.ch21_updates(network, CPU, cond, long=True)
    with pytest.raises(checks.ArgumentError, match="long must be True"):
        recipes.ch21_checkpoint(CPU, network="dit-L/2", long="yes")


def test_training_captions_drop_attributes_and_whole_captions_at_their_rates():
    torch.manual_seed(0)
    n = 4000
    level = {a: torch.full((n,), 2) for a in captions.ATTRIBUTES}  # every word present
    texts = captions.words(recipes.caption_batch(torch.full((n,), 7), level))
    empty = sum(t == "" for t in texts) / n
    thick = sum("thick" in t for t in texts) / n
    assert abs(empty - recipes.CAPTION_P_UNCOND) < 0.02
    kept = (1 - recipes.CAPTION_P_UNCOND) * (1 - recipes.ATTRIBUTE_P_DROP)
    assert abs(thick - kept) < 0.03
    assert all(t == "" or "seven" in t for t in texts)  # the digit is never dropped


@pytest.mark.parametrize("cond", ["label", "cross"])
def test_guidance_is_the_weighted_difference_of_two_predictions(cond):
    from companion.models.dit import DiT
    from companion.models.unet import NO_LABEL

    torch.manual_seed(0)
    model = (DiT(width=16, depth=1, heads=2, T=50, num_classes=10) if cond == "label" else
             DiT(width=16, depth=1, heads=2, T=50, vocab_size=len(captions.VOCAB),
                 cond="cross"))
    for p in model.parameters():  # away from the zero start, so that the halves differ
        p.data.add_(0.3 * torch.randn_like(p))
    model.eval()
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([5, 20, 49])
    c = (torch.tensor([1, 4, 7]) if cond == "label" else
         captions.tokenize(["a thick seven", "an eight upright", "a one"]))
    none = torch.full_like(c, NO_LABEL) if cond == "label" else torch.zeros_like(c)
    with torch.no_grad():
        want = 3 * model(x, t, c) - 2 * model(x, t, none)
        got = recipes.ch21_eps_function(model, c, 2.0, "cpu")(x, t)
        plain = recipes.ch21_eps_function(model, c, 0.0, "cpu")(x, t)
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(plain, model(x, t, c))
    assert not torch.allclose(got, plain, atol=1e-3)
    with pytest.raises(checks.ArgumentError, match="one condition per image"):
        recipes.ch21_eps_function(model, c, 1.0, "cpu")(x[:2], t[:2])


def _bars(n: int) -> torch.Tensor:
    """n images of bars of random widths, heights and places (their attributes vary)."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 1, 28, 28)
    for i, (w, h, c) in enumerate(torch.randint(2, 14, (n, 3), generator=g).tolist()):
        x[i, 0, 4:4 + h + 6, c:c + w] = 1.0
    return x


@pytest.mark.slow
@pytest.mark.parametrize("cond", ["label", "in_context"])
def test_a_run_trains_and_an_early_checkpoint_resumes_into_it(tmp_path, monkeypatch, cond):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    ci = get_profile("ci")
    x, y = _bars(64), torch.arange(64) % 10
    early, _ = recipes.ch21_model(x, y, ci, "cpu", network="dit-S", cond=cond, steps=20)
    path = recipes.ch21_checkpoint(ci, 20, network="dit-S", cond=cond)
    full, run = recipes.ch21_model(x, y, ci, "cpu", network="dit-S", cond=cond,
                                   resume_from=path)
    assert run.steps == recipes.ch21_updates("dit-S", ci, cond)  # captions: caption_steps
    assert run.resumed_at == 20  # the early run's updates were not trained again
    assert any(not torch.equal(a, b) for a, b in zip(early.state_dict().values(),
                                                      full.state_dict().values(), strict=True))


@pytest.mark.slow
def test_a_unet_reading_captions_starts_from_chapter_9s_and_trains_its_own_updates(tmp_path,
                                                                                monkeypatch):
    """ci: the caption-reading U-Net loads (or trains) chapter 9's network first and trains
    caption_steps updates of its own, from that network's weights."""
    from companion.models.caption_unet import CaptionUNet

    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    ci = get_profile("ci")
    x, y = _bars(64), torch.arange(64) % 10
    model, run = recipes.ch21_model(x, y, ci, "cpu", network="unet", cond="pooled")
    assert isinstance(model, CaptionUNet) and model.cond == "pooled"
    assert run.steps == recipes.dit_settings(ci)["caption_steps"]
    base = recipes.ddpm(x, ci, "cpu")[0]  # loaded from the file the recipe wrote
    assert (tmp_path / "checkpoints" / "ch9-ddpm-ci.pt").exists()
    near = [torch.allclose(a, model.state_dict()[k], atol=0.1)
            for k, a in base.state_dict().items()]
    assert sum(near) > 0.9 * len(near)  # a few hundred small updates away, not a new network


def test_a_dit_reading_captions_starts_from_itself_trained_on_labels(tmp_path, monkeypatch):
    """ci: a caption DiT loads (or trains) the same DiT on labels first, then trains
    caption_steps updates of its own from those weights."""
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    ci = get_profile("ci")
    x, y = _bars(64), torch.arange(64) % 10
    model, run = recipes.ch21_model(x, y, ci, "cpu", network="dit-S", cond="cross")
    assert model.config.cond == "cross" and model.config.vocab_size is not None
    assert run.steps == recipes.dit_settings(ci)["caption_steps"]
    base = recipes.ch21_model(x, y, ci, "cpu", network="dit-S")[0]  # loaded, not trained
    assert (tmp_path / "checkpoints" / "ch21-dit-S-label-ci.pt").exists()
    shared = [k for k in base.state_dict() if k in model.state_dict()
              and not k.startswith("time_mlp")]
    near = [torch.allclose(base.state_dict()[k], model.state_dict()[k], atol=0.1)
            for k in shared]
    assert len(shared) > 20 and sum(near) > 0.9 * len(near)


# --- issue 96: arguments checked before anything trains -------------------------------------------

def _no_training(monkeypatch, tmp_path):
    """BOOK_CACHE in tmp_path and chapter 9's recipe and fit made to fail: a refusal must
    come before either runs."""
    from companion.recipes import transformers

    def trains(*args, **kwargs):
        raise AssertionError("trained before refusing")

    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    monkeypatch.setattr(transformers, "ddpm", trains)
    monkeypatch.setattr(transformers, "fit", trains)


@pytest.mark.parametrize("kw, match", [
    (dict(network="unet", cond="adaln"), r"the U-Net reads a caption as one of .* got "
                                         r"cond='adaln': a DiT reads it with 'adaln'"),
    (dict(network="unet", cond="cross", prefix=None), r"^prefix must be a non-empty string"),
    (dict(network="dit-S", steps=10**12), r"^steps \(the updates of an early run, or None for "
                                          r"the full run\) must be at most 60, got "
                                          r"1,000,000,000,000: an early run stops partway"),
    (dict(network="dit-S", cond="cross", steps=31), r"must be at most 30, got 31"),
    (dict(network="unet", cond="pooled", steps=31), r"must be at most 30, got 31"),
])
def test_ch21_model_refuses_its_arguments_before_training_anything(monkeypatch, tmp_path, kw,
                                                                  match):
    """network='unet' with cond='adaln' refused only after chapter 9's DDPM had trained
    (10-15 minutes); steps=10**12 trained until the process was killed."""
    _no_training(monkeypatch, tmp_path)
    x, y = _bars(8), torch.arange(8) % 10
    with pytest.raises(checks.ArgumentError, match=match):
        recipes.ch21_model(x, y, get_profile("ci"), "cpu", **kw)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("kw, says", [
    ({"p_drop": 1.5}, r"^p_drop \(each attribute's words dropped this often\) must be a "
                      r"number in \[0, 1\], got 1.5"),
    ({"p_uncond": float("nan")}, r"^p_uncond \(the whole caption dropped this often\) must "
                                 r"be a finite number in \[0, 1\], got nan"),
    ({"p_drop": "0.3"}, r"^p_drop .* must be a real number in \[0, 1\], got '0.3'"),
])
def test_caption_batch_refuses_a_probability_outside_0_1(kw, says):
    """Issue 96, case 8: 1.5 dropped every attribute and NaN none, silently."""
    level = {a: torch.full((4,), 2) for a in captions.ATTRIBUTES}
    with pytest.raises(checks.ArgumentError, match=says):
        recipes.caption_batch(torch.full((4,), 7), level, **kw)
