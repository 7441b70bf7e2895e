"""Memory: every chapter's heavy calls fit Colab's T4, and chunking changes no result.

The first part measures, on fake tensors, each chapter's heaviest operations at the `gpu`
profile's sizes on the full MNIST (tests/memory_budget.py says how) and holds them to
14 GB. The second checks that splitting a call into chunks (companion.run.memory) gives the
result of the whole call, with the same random draws.
"""

from __future__ import annotations

import math
import re
import sys
from functools import cache
from pathlib import Path

import pytest
import torch

from companion.run import memory

from . import memory_budget

ROOT = Path(__file__).resolve().parents[1]


@cache
def measured() -> dict[str, list[tuple[str, float]]]:
    """chapter -> [(operation, peak GB)], each operation measured once."""
    out: dict[str, list[tuple[str, float]]] = {}
    for op, gb, _ in memory_budget.measure():
        out.setdefault(op.chapter, []).append((op.name, gb))
    return out


CHAPTERS = sorted({op.chapter for op in memory_budget.operations()})


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_heavy_call_of_the_chapter_fits_a_t4(chapter):
    for name, gb in measured()[chapter]:
        assert gb <= memory_budget.BUDGET_GB, (
            f"chapter {chapter}: {name} needs {gb:.1f} GB on fake tensors at the gpu "
            f"profile's sizes on the full MNIST, over the {memory_budget.BUDGET_GB:.0f} GB "
            "a T4 leaves; send it through companion.run.memory.map_chunks")


@pytest.mark.slow
def test_running_page_states_the_measured_memory():
    """book/running.md's table of GPU memory per chapter agrees with the measurement (each
    chapter's worst call, rounded up to a tenth of a GB)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "execution_status", ROOT / "book" / "_ext" / "execution_status.py")
    execution_status = importlib.util.module_from_spec(spec)
    # registered before it runs: its dataclasses look their module up in sys.modules (alone,
    # the test failed; in `make test`, test_status.py had registered it first)
    sys.modules.setdefault("execution_status", execution_status)
    spec.loader.exec_module(execution_status)
    text = (ROOT / "book" / "running.md").read_text()
    numbers = execution_status.chapter_numbers(ROOT)  # as the book numbers them
    for chapter, ops in measured().items():
        worst = math.ceil(max(gb for _, gb in ops) * 10) / 10
        n = next(v for stem, v in numbers.items() if stem.startswith(f"{chapter}_"))
        row = re.search(rf"^\| {n}\. .*?\| ([0-9.]+) GB", text, re.M)
        assert row, f"book/running.md has no memory row for chapter {n} ({chapter}_*)"
        assert float(row.group(1)) == pytest.approx(worst), (
            f"book/running.md says {row.group(1)} GB for chapter {n}, the "
            f"measurement {worst:.1f} GB (python tests/memory_budget.py)")


@pytest.mark.slow
def test_the_tracker_sees_a_tensor_born_and_freed():
    """The live-bytes tracker counts what is alive at once, not what was ever made."""
    def run():
        for _ in range(3):
            a = torch.empty(1000, 1000, device=memory_budget.DEVICE)  # 4 MB
            del a
        b = torch.empty(2000, 1000, device=memory_budget.DEVICE)      # 8 MB
        c = b + 1                                                     # 8 MB more
        return c
    peak = memory_budget.peak_bytes(run)
    assert peak == pytest.approx(16e6, rel=1e-3)


# --- chunked = whole --------------------------------------------------------------------
def _tiny_ddpm():
    from companion.diffusion import Diffusion, linear_betas
    from companion.models.unet import UNet, preset

    torch.manual_seed(0)
    model = UNet(preset("tiny", T=20)).eval()
    return model, Diffusion(linear_betas(20, 1e-3, 0.2))


def _x8(n):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g).float() / 127.5 - 1


def test_chunk_slices_cover_the_range_in_order():
    assert memory.chunk_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert memory.chunk_slices(0, 2) == []
    with pytest.raises(ValueError, match="size"):
        memory.chunk_slices(5, 0)


def test_rows_count_by_their_size_in_images():
    images, points = torch.zeros(5, 1, 28, 28), torch.zeros(5, 2)
    assert memory.rows_per_call(images) == memory.MAX_IMAGES
    assert memory.rows_per_call(images, grad=True) == memory.MAX_IMAGES_WITH_GRAD
    assert memory.rows_per_call(points) == memory.MAX_IMAGES * 784 // 2
    assert memory.rows_per_call(torch.zeros(5, 1, 56, 56)) == memory.MAX_IMAGES // 4


def test_map_chunks_refuses_tensors_of_different_lengths():
    with pytest.raises(ValueError, match="same length"):
        memory.map_chunks(lambda a, b: a, torch.zeros(3), torch.zeros(4))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["bound_monte_carlo", "bound_terms"])
def test_the_bound_in_chunks_is_the_bound_whole(method, monkeypatch):
    model, d = _tiny_ddpm()
    x = _x8(10)
    calls = []
    counting = lambda xb, t: (calls.append(len(xb)), model(xb, t))[1]  # noqa: E731

    def run():
        calls.clear()
        g = torch.Generator().manual_seed(5)
        if method == "bound_monte_carlo":
            return d.bound_monte_carlo(counting, x, draws=3, generator=g).per_image
        return d.bound_terms(counting, x, max_batch=40, generator=g, quiet=True).total

    whole = run()
    assert max(calls) > 7
    monkeypatch.setattr(memory, "MAX_IMAGES", 7)
    chunked = run()
    assert max(calls) <= 7
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-4)


def test_the_likelihood_in_chunks_is_the_likelihood_whole(monkeypatch):
    import companion.sde as sde

    w = torch.tensor([[0.3, -0.2], [0.1, 0.4]])

    def field(x, t):  # points (B, 2), or images (B, 1, 2, 2) for Hutchinson's probes
        return torch.tanh(x.reshape(-1, 2) @ w).reshape(x.shape) * (1 + t)

    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    images = torch.randn(10, 1, 2, 2, generator=torch.Generator().manual_seed(1))

    def both(f):
        exact = sde.ode_log_likelihood(f, x, rtol=1e-6, atol=1e-6)
        hutch = sde.ode_log_likelihood(f, images, probes=2, rtol=1e-6, atol=1e-6,
                                       generator=torch.Generator().manual_seed(3))
        return exact, hutch

    whole = both(field)
    # 3 rows a pass: rows of 2 and of 4 numbers, counted as "images" of that size
    monkeypatch.setattr(memory, "MAX_IMAGES_WITH_GRAD", 3)
    sizes = []
    counting = lambda x, t: (sizes.append(len(x)), field(x, t))[1]  # noqa: E731
    monkeypatch.setattr(memory, "IMAGE_NUMEL", 2)
    chunked_exact = sde.ode_log_likelihood(counting, x, rtol=1e-6, atol=1e-6)
    assert max(sizes) == 3
    monkeypatch.setattr(memory, "IMAGE_NUMEL", 4)
    sizes.clear()
    chunked_hutch = sde.ode_log_likelihood(counting, images, probes=2, rtol=1e-6, atol=1e-6,
                                           generator=torch.Generator().manual_seed(3))
    assert max(sizes) == 3
    for chunked, one in zip((chunked_exact, chunked_hutch), whole, strict=True):
        assert chunked.nfe == one.nfe  # evaluations of the batch, not of its chunks
        torch.testing.assert_close(chunked.log_p, one.log_p)


def test_knn_labels_in_chunks_equal_the_whole_distance_matrix(monkeypatch):
    from companion.metrics import knn_labels

    g = torch.Generator().manual_seed(0)
    ref, x = torch.rand(50, 1, 4, 4, generator=g), torch.rand(20, 1, 4, 4, generator=g)
    labels = torch.randint(0, 3, (50,), generator=g)
    whole = labels[torch.cdist(x.flatten(1), ref.flatten(1)).topk(
        5, largest=False).indices].mode(1).values
    monkeypatch.setattr(memory, "MAX_IMAGES", 7)
    monkeypatch.setattr(memory, "IMAGE_NUMEL", 16)  # 7 of these 4 x 4 images a block
    calls = []
    real_cdist = torch.cdist
    monkeypatch.setattr(torch, "cdist",
                        lambda a, b: (calls.append(len(a)), real_cdist(a, b))[1])
    assert torch.equal(knn_labels(x, ref, labels, k=5), whole)
    assert calls == [7, 7, 6]


@pytest.mark.slow
def test_eps_function_sends_at_most_max_images_a_call(monkeypatch):
    from companion import recipes

    model, _ = _tiny_ddpm()
    sizes = []
    counting = lambda xb, t: (sizes.append(len(xb)), model(xb, t))[1]  # noqa: E731
    x, t = _x8(10), torch.randint(1, 21, (10,))
    whole = recipes.eps_function(counting, "cpu")(x, t)
    monkeypatch.setattr(memory, "MAX_IMAGES", 4)
    sizes.clear()
    chunked = recipes.eps_function(counting, "cpu")(x, t)
    assert sizes == [4, 4, 2]
    torch.testing.assert_close(chunked, whole)
