"""Principal component analysis and principal angles between subspaces.

    mean, components, variances = pca(x_flat, k)        # components: (k, D), orthonormal rows
    x_rec = pca_reconstruct(x_flat, mean, components)   # projection onto the k-dim subspace
    angles = principal_angles(A, B)                      # radians, between span(A) and span(B)
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
