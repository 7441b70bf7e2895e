"""How many images one network call may see: the rule that keeps every chapter within a T4.

Colab's free T4 has about 15 GB, and Colab downloads the full MNIST (60,000 / 10,000
digits). An operation whose input grows with the data or with the number of Monte Carlo
draws (the diffusion bound and its terms, the likelihood's field and its divergence, the
Fréchet features, the k-NN distances, whole-test-set ELBOs) therefore never sends all of it
through a network at once: it goes through `map_chunks`, at most `MAX_IMAGES` images a
call. The random draws are made before the split, so a chunked result is the unchunked one
up to the order of floating-point sums.

`MAX_IMAGES` = 500: chapter 9's 15M U-Net then needs about 1.3 GB for a forward pass
without gradients and about 8 GB with input gradients (chapter 13's Hutchinson term), both
in float32 (tests/test_memory.py measures every chapter's heavy calls on fake tensors).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import checks

MAX_IMAGES = 500


def chunk_slices(n: int, size: int | None = None) -> list[slice]:
    """Consecutive slices covering range(n), each of at most `size` (default MAX_IMAGES)."""
    n = checks.count("n", n, minimum=0)
    size = MAX_IMAGES if size is None else checks.count("size", size)
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def map_chunks(fn: Callable, *xs: torch.Tensor, size: int | None = None):
    """fn applied to aligned chunks of xs along dim 0, results concatenated along dim 0.

    xs: tensors with the same first dimension N; fn returns a tensor (or a tuple of
    tensors) whose first dimension is the chunk's. At most `size` rows a call.
    """
    if not xs:
        raise checks.ArgumentError("map_chunks needs at least one tensor to split")
    n = len(xs[0])
    for x in xs[1:]:
        if len(x) != n:
            raise checks.ArgumentError(
                f"map_chunks splits its tensors together along dim 0, so they need the same "
                f"length; got {[tuple(x.shape) for x in xs]}")
    slices = chunk_slices(n, size)
    if len(slices) <= 1:
        return fn(*xs)
    parts = [fn(*(x[s] for x in xs)) for s in slices]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p) for p in zip(*parts, strict=True))
    return torch.cat(parts)
