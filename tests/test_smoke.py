"""The smoke run's cut (companion.run.smoke): a slow trained network repeats its output, the
loops around it run whole, and nothing else about the model changes."""

import copy
import time

import pytest
import torch
from torch import nn

from companion.run import smoke
from companion.run.checkpoint import identity
from companion.train import fit


class Slow(nn.Module):
    """x (B, 2) -> (B, 2), counting its computed calls; `pause` seconds each."""

    def __init__(self, pause: float):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.pause, self.calls = pause, 0

    def forward(self, x, t=None):
        self.calls += 1
        time.sleep(self.pause)
        return self.lin(x)


def train(model, monkeypatch, ema=None):
    monkeypatch.setenv("BOOK_SMOKE", "1")
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    return fit(model, lambda m, b: m(b).pow(2).mean(), x, steps=50, batch_size=8,
               quiet=True, ema=ema)


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_a_slow_network_repeats_its_output_after_one_call_per_shape(monkeypatch):
    model = Slow(smoke.SLOW * 1.5)
    result = train(model, monkeypatch, ema=0.9)
    assert result.steps == 2  # the smoke run's two optimizer steps
    assert smoke.SMOKE_CALLS == 1
    model.calls = 0
    x = torch.randn(4, 2)
    with torch.no_grad():
        outs = [model(x + i) for i in range(5)]
    assert model.calls == 1  # computed once, then that output again
    assert all(torch.equal(o, outs[0]) for o in outs[1:])
    assert not torch.equal(outs[0], model.lin(x + 4))  # the repeat is not the true output
    model(torch.randn(3, 2))  # a new shape is computed
    assert model.calls == 2
    # autograd through a repeated output still works (zero gradient, right shape)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).sum(), xg)
    assert g.shape == x.shape and model.calls == 2
    model.train()  # training always computes
    model(x)
    assert model.calls == 3
    # the average is cut too
    avg = result.ema.model
    avg.calls = 0
    with torch.no_grad():
        for _ in range(4):
            avg(x)
    assert avg.calls == 1


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_only_the_smoke_run_and_only_slow_networks_are_cut(monkeypatch):
    fast = Slow(0.0)
    train(fast, monkeypatch)
    fast.calls = 0
    for _ in range(5):
        fast(torch.randn(4, 2))
    assert fast.calls == 5
    slow = Slow(smoke.SLOW * 1.5)
    train(slow, monkeypatch)
    monkeypatch.setenv("BOOK_SMOKE", "0")
    slow.calls = 0
    for _ in range(4):
        slow(torch.randn(4, 2))
    assert slow.calls == 4
    monkeypatch.delenv("BOOK_SMOKE")
    plain = Slow(smoke.SLOW * 1.5)
    fit(plain, lambda m, b: m(b).pow(2).mean(), torch.randn(16, 2), steps=3, batch_size=8,
        quiet=True)
    assert type(plain) is Slow and plain.calls == 3  # outside the smoke run: untouched


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_the_cut_keeps_the_models_name_and_a_copy_trains_again(monkeypatch):
    model = Slow(smoke.SLOW * 1.5)
    before = identity(model, {"a": 1})
    train(model, monkeypatch)
    assert type(model).__qualname__ == "Slow" and isinstance(model, Slow)
    assert identity(model, {"a": 1}) == before
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 2))
    student = copy.deepcopy(model)  # chapter 15's students start as copies of the teacher
    w = student.lin.weight.detach().clone()
    train(student, monkeypatch)
    assert not torch.equal(student.lin.weight, w)  # its training computed real gradients
    assert student._smoke_calls == {}  # and what it repeats starts afresh


def test_a_network_returning_a_tuple_computes_every_call(monkeypatch):
    class Pair(Slow):
        def forward(self, x, t=None):
            y = super().forward(x)
            return y, -y

    model = Pair(smoke.SLOW * 1.5)
    monkeypatch.setenv("BOOK_SMOKE", "1")
    fit(model, lambda m, b: m(b)[0].pow(2).mean(), torch.randn(16, 2), steps=5,
        batch_size=8, quiet=True)
    model.calls = 0
    for _ in range(3):
        model(torch.randn(4, 2))
    assert model.calls == 3


def test_a_smoke_step_sees_a_few_examples_of_the_batch_it_drew(monkeypatch):
    """The cost of a smoke run's step is SMOKE_BATCH examples, whatever the profile's batch;
    outside the smoke run every step sees the whole batch."""
    from companion.run import profiles

    def seen(smoke_on: bool) -> list[int]:
        monkeypatch.setenv("BOOK_SMOKE", "1" if smoke_on else "0")
        sizes = []

        def loss(m, b):
            sizes.append(len(b))
            return m(b).pow(2).mean()

        fit(Slow(0.0), loss, torch.randn(64, 2), steps=3, batch_size=32, quiet=True)
        return sizes

    assert seen(True) == [profiles.SMOKE_BATCH] * profiles.SMOKE_STEPS
    assert seen(False) == [32, 32, 32]


@pytest.mark.slow  # over 0.7 s: make test, not check-fast
def test_chapter_18s_unet_is_cut_where_the_chapter_calls_it(monkeypatch, tmp_path):
    """Chapter 18 calls the U-Net inside recipes.vdm's DiffusionModel directly
    (recipes.vdm_eps_function): the smoke run must cut that network too, or its samplers
    run a gpu-sized U-Net at every step (the smoke run of chapter 18 timed out)."""
    from companion import recipes
    from companion.run.profiles import get_profile

    monkeypatch.setenv("BOOK_SMOKE", "1")
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    x = torch.randint(0, 256, (16, 1, 28, 28),
                      generator=torch.Generator().manual_seed(0)) / 255
    model, _ = recipes.vdm(x, get_profile("ci"), "cpu")
    assert isinstance(model, smoke._Repeats)
    assert isinstance(model.eps_model.model, smoke._Repeats)
