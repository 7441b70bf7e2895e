"""tools/pilot.py's diffusers peer: judged on its own chain, with the book's steps mapped."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]


def _pilot():
    spec = importlib.util.spec_from_file_location("pilot", ROOT / "tools" / "pilot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakePeer(torch.nn.Module):
    """UNet2DModel's call: (x (B, 1, 32, 32), t (B,) from 0) -> .sample; records both."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, t):
        self.calls.append((x.detach().clone(), t.clone()))
        return SimpleNamespace(sample=x * 0 + self.w)


def test_peer_sampler_pads_crops_and_counts_steps_from_zero():
    peer = FakePeer()
    sample = _pilot()._peer_sampler(peer, None, torch.device("cpu"))
    z = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = sample(z, torch.Generator().manual_seed(1))
    assert x.shape == (3, 1, 28, 28) and torch.isfinite(x).all()
    assert len(peer.calls) == 100  # 100 respaced steps, as chapter 9's DDPM is judged
    first, last = peer.calls[0], peer.calls[-1]
    assert first[0].shape == (3, 1, 32, 32)
    assert (first[0][..., :2, :] == -1).all() and (first[0][..., :, 30:] == -1).all()
    torch.testing.assert_close(first[0][..., 2:30, 2:30], z)  # x_T goes in unchanged
    assert first[1].tolist() == [999] * 3 and last[1].tolist() == [0] * 3  # T..1 -> 999..0


def test_a_dit_pilot_trains_the_patch_it_is_given():
    from companion.recipes import transformers
    from companion.run.profiles import get_profile

    pilot = _pilot()
    for patch in (2, 4, 7):
        name = pilot._network("dit", "L", patch)
        assert transformers.dit_patch(name) == patch
        net = transformers.ch21_network(name, "label", get_profile("ci"))
        assert net.config.patch == patch
    assert pilot._network("unet-label", "L", 2) == "unet"


def test_a_pilot_of_one_count_or_a_seed_it_cannot_use_is_refused_before_it_trains():
    import pytest

    pilot = _pilot()
    with pytest.raises(SystemExit, match="at least two counts"):
        pilot.main(["ddpm", "--updates", "4500"])
    with pytest.raises(SystemExit, match="seeds its run itself"):
        pilot.main(["flow", "--seed", "1", "--updates", "900", "1800"])
    with pytest.raises(SystemExit, match="a word for a file name"):
        pilot.main(["vdm", "--tag", "../long", "--updates", "900", "1800"])
    with pytest.raises(SystemExit, match="chapter 19's recipe"):
        pilot.main(["prior-ar", "--lr", "1e-3", "--updates", "24000", "48000"])
