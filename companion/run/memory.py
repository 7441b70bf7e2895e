"""How many images one network call may see: the rule that keeps every chapter within a T4.

Colab's free T4 has about 15 GB, and Colab downloads the full MNIST (60,000 / 10,000
digits). An operation whose input grows with the data or with the number of Monte Carlo
draws (the diffusion bound and its terms, the likelihood's field and its divergence, the
Fréchet features, the k-NN distances, whole-test-set ELBOs) therefore never sends all of it
through a network at once: it goes through `map_chunks`, at most `MAX_IMAGES` images a
call, or `MAX_IMAGES_WITH_GRAD` when the call keeps its activations for a backward pass.
Rows that are not 28 x 28 images count by their size: a call takes as many rows as hold the
numbers of that many images (a toy's 2-D points go 50,000 and more at once, a latent code
of 32 numbers 24,500). The random draws are made before the split, so a chunked result is
the unchunked one up to the order of floating-point sums.

Chapter 9's 15M U-Net on 28 x 28 images in float32 keeps about 2.6 MB an image alive in a
forward pass without gradients, and about 35 MB an image when chapter 13's likelihood takes
input gradients through its field (two network passes an image, interpolated between two
steps of the chain), so the two limits cost at most about 2.6 and 4.5 GB
(tests/memory_budget.py measures every chapter's heavy calls on fake tensors; `make test`
holds each chapter to 14 GB).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import checks

MAX_IMAGES = 1000
MAX_IMAGES_WITH_GRAD = 128
IMAGE_NUMEL = 28 * 28


def rows_per_call(x: torch.Tensor, grad: bool = False) -> int:
    """How many rows of x (N, ...) one call may take: as many as hold the numbers of
    MAX_IMAGES (grad: MAX_IMAGES_WITH_GRAD) MNIST images, at least one."""
    images = MAX_IMAGES_WITH_GRAD if grad else MAX_IMAGES
    per_row = max(1, x[0].numel()) if len(x) else 1
    return max(1, images * IMAGE_NUMEL // per_row)


def chunk_slices(n: int, size: int) -> list[slice]:
    """Consecutive slices covering range(n), each of at most `size`."""
    n = checks.count("n", n, minimum=0)
    size = checks.count("size", size)
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def map_chunks(fn: Callable, *xs: torch.Tensor, grad: bool = False):
    """fn applied to aligned chunks of xs along dim 0, results concatenated along dim 0.

    xs: tensors with the same first dimension N; fn returns a tensor (or a tuple of
    tensors) whose first dimension is the chunk's. At most rows_per_call(xs[0], grad) rows
    a call (grad: fn keeps its activations for a backward pass).
    """
    if not xs:
        raise checks.ArgumentError("map_chunks needs at least one tensor to split")
    n = len(xs[0])
    for x in xs[1:]:
        if len(x) != n:
            raise checks.ArgumentError(
                f"map_chunks splits its tensors together along dim 0, so they need the same "
                f"length; got {[tuple(x.shape) for x in xs]}")
    slices = chunk_slices(n, rows_per_call(xs[0], grad))
    if len(slices) <= 1:
        return fn(*xs)
    parts = [fn(*(x[s] for x in xs)) for s in slices]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p) for p in zip(*parts, strict=True))
    return torch.cat(parts)
