"""Principal component analysis and principal angles between subspaces.

    mean, components, variances = pca(x_flat, k)        # components: (k, D), orthonormal rows
    x_rec = pca_reconstruct(x_flat, mean, components)   # projection onto the k-dim subspace
    angles = principal_angles(A, B)                      # radians, between span(A) and span(B)
    basis = dct_basis(28)                                # the JPEG transform, for comparison
"""

from __future__ import annotations

import torch


def _check_matrix(x: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.is_tensor(x) or x.dim() != 2:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor (N, D); got {shape}. "
                         "Flatten images first: x.flatten(1)")
    return x


def pca(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k principal components of the rows of x, by the SVD of the centred data.

    x: (N, D) -> mean (D,), components (k, D) with orthonormal rows (largest variance
    first), variances (k,) (the variance of the data along each component).
    """
    _check_matrix(x, "x")
    n, d = x.shape
    if not 1 <= k <= min(n, d):
        raise ValueError(f"k must lie in [1, min(N, D)] = [1, {min(n, d)}], got {k}")
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, vh[:k], s[:k].pow(2) / max(n - 1, 1)


def pca_reconstruct(x: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """Project the rows of x onto mean + span(components): (N, D) -> (N, D)."""
    _check_matrix(x, "x")
    codes = (x - mean) @ components.T
    return codes @ components + mean


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spans of a and b.

    a: (D, k1), b: (D, k2), full column rank. With orthonormal bases Qa, Qb, the cosines
    of the angles are the singular values of Qa^T Qb. Returns min(k1, k2) angles; all
    zero means one span contains the other.
    """
    _check_matrix(a, "a")
    _check_matrix(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must live in the same space: {a.shape[0]} vs {b.shape[0]} rows")
    qa, _ = torch.linalg.qr(a)
    qb, _ = torch.linalg.qr(b)
    cosines = torch.linalg.svdvals(qa.T @ qb).clamp(-1.0, 1.0)
    return torch.arccos(cosines)  # svdvals are descending, so the angles ascend


def dct_basis(n: int = 28, dtype=torch.float64) -> torch.Tensor:
    """The orthonormal 2-D DCT-II basis of n x n images (the transform JPEG uses).

    Returns (n*n, n*n): row (u*n + v) is the basis image cos(pi (i + 1/2) u / n)
    cos(pi (j + 1/2) v / n), scaled to unit norm, flattened. Coefficients of flat images
    x (N, n*n) are x @ basis.T; the inverse transform is coefficients @ basis.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    i = torch.arange(n, dtype=dtype)
    c = torch.cos(torch.pi * (i[None, :] + 0.5) * i[:, None] / n) * (2 / n) ** 0.5
    c[0] /= 2**0.5                                                # (n, n): 1-D DCT-II
    return torch.einsum("ui,vj->uvij", c, c).reshape(n * n, n * n)


def dct_low_frequencies(n: int = 28, k: int = 16) -> torch.Tensor:
    """Indices (k,) into `dct_basis(n)` of the k lowest frequencies, ordered by u + v
    (then u), the zig-zag order in which JPEG keeps coefficients."""
    if not 1 <= k <= n * n:
        raise ValueError(f"k must lie in [1, {n * n}], got {k}")
    order = sorted(range(n * n), key=lambda idx: (idx // n + idx % n, idx // n))
    return torch.tensor(order[:k])
