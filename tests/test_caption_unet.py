"""Chapter 21's U-Net that reads captions: the zero start, the attention maps, the errors."""

import pytest
import torch

from companion import captions
from companion.models.caption_unet import CONDS, CaptionUNet, load_unet
from companion.models.unet import UNet, preset
from companion.run.checks import ArgumentError

V = len(captions.VOCAB)


def _trained_unet():
    """A U-Net whose weights are all nonzero, as a trained one's are (a fresh U-Net's zero
    output layers would make every comparison below trivially 0 = 0)."""
    torch.manual_seed(0)
    unet = UNet(preset("tiny", T=50))
    for p in unet.parameters():
        p.data.normal_(0, 0.1)
    return unet


def _inputs(n=4):
    x, t = torch.randn(n, 1, 28, 28), torch.tensor([1, 10, 30, 50][:n])
    ids = captions.tokenize(["a thick seven", "a one", "", "a thin wide two"][:n])
    return x, t, ids


@pytest.mark.parametrize("cond", CONDS)
def test_starts_as_the_unet_it_was_built_from(cond):
    unet = _trained_unet()
    model = load_unet(CaptionUNet(preset("tiny", T=50), vocab_size=V, cond=cond), unet)
    x, t, ids = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, ids), unet(x, t))
        for p in model.parameters():  # the text path opened: the caption now matters
            p.data.add_(0.05 * torch.randn_like(p))
        out = model(x, t, ids)
        assert not torch.allclose(out, model(x, t, None), atol=1e-4)
        assert torch.equal(model(x, t, None), model(x, t, torch.zeros_like(ids)))


@pytest.mark.parametrize("cond, keys", [("cross", 8), ("in_context", 49 + 8)])
def test_attention_maps_are_distributions_over_the_words(cond, keys):
    torch.manual_seed(1)
    model = CaptionUNet(preset("tiny", T=50), vocab_size=V, cond=cond)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x, t, ids = _inputs()
    maps = model.attention_maps(x, t, ids)
    assert maps.shape == (3, 4, 2, 49, keys)  # tiny: heads 2
    words = ids != 0
    mass = maps.sum(-1)
    if cond == "cross":
        assert torch.allclose(mass[:, words.any(1)], torch.ones(()), atol=1e-5)
        assert torch.equal(mass[:, 2], torch.zeros_like(mass[:, 2]))  # the empty caption
        assert (maps[..., ~words[0]][:, 0] == 0).all()  # pads get no weight
    else:
        assert torch.allclose(mass, torch.ones(()), atol=1e-5)
        assert (maps[:, 2, ..., 49:] == 0).all()  # the empty caption: only the image
    assert model._maps is None


def test_errors_say_what_was_wrong():
    cfg = preset("tiny", T=50)
    with pytest.raises(ArgumentError, match="num_classes=None"):
        CaptionUNet(preset("tiny", T=50, num_classes=10), vocab_size=V, cond="cross")
    with pytest.raises(ArgumentError, match="cond must be one of"):
        CaptionUNet(cfg, vocab_size=V, cond="adaln")
    model = CaptionUNet(cfg, vocab_size=V, cond="pooled")
    x, t, ids = _inputs()
    with pytest.raises(ArgumentError, match="ids must be int64 token ids"):
        model(x, t, ids.float())
    with pytest.raises(ArgumentError, match="ids must be int64 token ids"):
        model(x, t, ids[:2])
    with pytest.raises(ArgumentError, match="cond='cross' or 'in_context'"):
        model.attention_maps(x, t, ids)
    with pytest.raises(ArgumentError, match="does not match"):
        load_unet(model, UNet(preset("cpu", T=50)))


@pytest.mark.parametrize("bad, match", [
    (lambda ids: ids + V, rf"^ids must hold token ids \(0: pad\) in 0\.\.{V - 1}, got values"),
    (lambda ids: ids - 1, r"^ids must hold token ids .* got values in -1\.\."),
    (lambda ids: ids.to(torch.uint8), r"^ids must be an integer tensor of token ids .*uint8"),
])
def test_caption_ids_out_of_range_or_of_another_dtype_are_refused_by_name(bad, match):
    """Issue 96: IndexError "index out of range in self" named no argument; the DiT's check
    (checks.token_ids) is the text encoder's now, so every network reading captions has it."""
    model = CaptionUNet(preset("tiny", T=50), vocab_size=V, cond="cross")
    x, t, ids = _inputs()
    with pytest.raises(ArgumentError, match=match):
        model(x, t, bad(ids))
