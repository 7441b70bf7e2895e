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
    _rows_of("x", x)
    images = MAX_IMAGES_WITH_GRAD if grad else MAX_IMAGES
    per_row = max(1, x[0].numel()) if len(x) else 1
    return max(1, images * IMAGE_NUMEL // per_row)


def _rows_of(name: str, x) -> None:
    """x, a tensor with a first dimension to split (N, ...)."""
    checks.tensor(name, x)
    if x.dim() == 0:
        raise checks.ArgumentError(f"{name} must have rows to split (N, ...), got a 0-dim "
                                   "tensor: pass x.reshape(1) for one value")


def chunk_slices(n: int, size: int) -> list[slice]:
    """Consecutive slices covering range(n), each of at most `size`."""
    n = checks.count("n", n, minimum=0)
    size = checks.count("size", size)
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def map_chunks(fn: Callable, *xs: torch.Tensor, grad: bool = False):
    """fn applied to aligned chunks of xs along dim 0, results concatenated along dim 0.

    xs: tensors with the same first dimension N; fn returns a tensor (or a tuple of
    tensors) whose first dimension is the chunk's: one row out per row in, checked (a
    function that reduces over its input would give a result that depends on the chunk
    size). At most rows_per_call(xs[0], grad) rows a call (grad: fn keeps its activations
    for a backward pass). Running out of memory in a chunk says which limit to lower.
    """
    if not xs:
        raise checks.ArgumentError("map_chunks needs at least one tensor to split")
    for i, x in enumerate(xs):
        _rows_of(f"map_chunks' tensor {i}", x)
    n = len(xs[0])
    for x in xs[1:]:
        if len(x) != n:
            raise checks.ArgumentError(
                f"map_chunks splits its tensors together along dim 0, so they need the same "
                f"length; got {[tuple(x.shape) for x in xs]}")
    size = rows_per_call(xs[0], grad)
    slices = chunk_slices(n, size)
    if len(slices) <= 1:
        return _rows(_call(fn, xs, n, grad), n, fn)
    parts = [_rows(_call(fn, [x[s] for x in xs], s.stop - s.start, grad), s.stop - s.start,
                   fn) for s in slices]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p) for p in zip(*parts, strict=True))
    return torch.cat(parts)


def _call(fn: Callable, xs, rows: int, grad: bool):
    """fn(*xs); out of memory reworded to say which limit to lower (the same error type, so
    that a caller catching it still does)."""
    try:
        return fn(*xs)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
        text = str(e)
        if not isinstance(e, torch.cuda.OutOfMemoryError) and "out of memory" not in text \
                and "can't allocate memory" not in text:
            raise
        name = "MAX_IMAGES_WITH_GRAD" if grad else "MAX_IMAGES"
        now = MAX_IMAGES_WITH_GRAD if grad else MAX_IMAGES
        message = (f"out of memory in a chunk of {rows} rows (companion.run.memory.{name} = "
                   f"{now} images a call): lower it before the call, e.g. "
                   f"companion.run.memory.{name} = {max(1, now // 2)}, and run again (the "
                   f"results do not depend on it). {text}")
        try:
            error = type(e)(message)
        except Exception:  # an error type that takes other arguments
            error = RuntimeError(message)
        raise error from e


def _rows(out, rows: int, fn: Callable):
    """`out` if it is a tensor, or a tuple of tensors, each with `rows` rows (dim 0)."""
    name = getattr(fn, "__qualname__", type(fn).__name__)
    for i, o in enumerate(out if isinstance(out, tuple) else (out,)):
        which = f"output {i + 1} of " if isinstance(out, tuple) else ""
        if not torch.is_tensor(o):
            raise checks.ArgumentError(
                f"map_chunks: {which}the function {name} returned a {type(o).__name__}; it "
                "must return a tensor (or a tuple of tensors) with one row per input row")
        if o.dim() == 0 or len(o) != rows:
            got = "a 0-dim tensor" if o.dim() == 0 else f"{len(o)} rows"
            raise checks.ArgumentError(
                f"map_chunks: {which}the function {name} returned {got} for a chunk of "
                f"{rows} rows (shape {tuple(o.shape)}); it must return one row per input "
                "row, else the result depends on the chunk size (MAX_IMAGES): reduce over "
                "the rows after map_chunks, not inside the function")
    return out
