import random

import numpy as np
import pytest
import torch

import companion
from companion.run.runtime import describe, get_device, seed_everything


def test_seed_everything_repeats_all_generators():
    seed_everything(123)
    a = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002 (the global one)
    seed_everything(123)
    b = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    seed_everything(124)
    assert not torch.equal(torch.rand(3), a[2])


def test_seed_must_be_non_negative_int():
    with pytest.raises(ValueError, match="non-negative"):
        seed_everything(-1)


def test_setup_prints_profile_and_device(capsys, monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "ci")
    monkeypatch.setattr(torch, "set_num_threads", lambda n: monkeypatch.setattr(
        torch, "get_num_threads", lambda: n))
    profile, device = companion.setup(seed=0, device="cpu")
    out = capsys.readouterr().out
    assert profile.name == "ci" and device == torch.device("cpu")
    assert "profile=ci" in out and "device=cpu" in out and torch.__version__ in out
    assert describe(profile, device) in out
    assert torch.get_num_threads() == 1  # one notebook per core in the test suite


def test_get_device_explicit():
    assert get_device("cpu").type == "cpu"


def test_setup_sets_threads_and_checks_them(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    companion.setup(seed=0, profile="cpu", device="cpu", threads=1)
    assert seen == [1]
    with pytest.raises(ValueError, match="at least 1"):
        companion.setup(seed=0, profile="cpu", device="cpu", threads=0)


def test_one_thread_runs_its_block_on_one_thread_and_restores_the_count():
    from companion.run.runtime import one_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with one_thread():
                assert torch.get_num_threads() == 1
                raise RuntimeError("inside")
        assert torch.get_num_threads() == 2  # restored on an error too
    finally:
        torch.set_num_threads(before)
