"""Tests of companion.pca."""

import math

import pytest
import torch

from companion.pca import pca, pca_reconstruct, principal_angles


def test_pca_finds_a_planted_subspace_and_variances():
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(10, 2, generator=g, dtype=torch.float64))
    codes = torch.randn(5000, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 2.0],
                                                                                  dtype=torch.float64)
    x = codes @ basis.T + 1.5
    mean, comps, var = pca(x, 2)
    assert principal_angles(comps.T, basis).max() < 1e-6
    assert var.tolist() == pytest.approx([9.0, 4.0], rel=0.1)
    torch.testing.assert_close(pca_reconstruct(x, mean, comps), x)


def test_principal_angles_known_values():
    e = torch.eye(3, dtype=torch.float64)
    assert principal_angles(e[:, :2], e[:, :2]).abs().max() < 1e-7
    tilted = torch.stack([e[:, 0], math.cos(0.3) * e[:, 1] + math.sin(0.3) * e[:, 2]], 1)
    angles = principal_angles(e[:, :2], tilted)
    assert angles.tolist() == pytest.approx([0.0, 0.3], abs=1e-7)
    assert principal_angles(e[:, :1], e[:, 1:2]).item() == pytest.approx(math.pi / 2)


def test_bad_shapes():
    with pytest.raises(ValueError, match="2-D"):
        pca(torch.rand(4, 1, 28, 28), 2)
    with pytest.raises(ValueError, match="k must"):
        pca(torch.rand(4, 5), 6)
    with pytest.raises(ValueError, match="same space"):
        principal_angles(torch.rand(4, 2), torch.rand(5, 2))


def test_dct_basis_is_orthonormal_and_matches_scipy():
    from companion.pca import dct_basis, dct_low_frequencies

    basis = dct_basis(6)
    torch.testing.assert_close(basis @ basis.T, torch.eye(36, dtype=torch.float64))
    img = torch.rand(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fft = pytest.importorskip("scipy.fft")
    expected = torch.from_numpy(fft.dctn(img.numpy(), type=2, norm="ortho")).flatten()
    torch.testing.assert_close(img.flatten() @ basis.T, expected)
    assert dct_low_frequencies(6, 3).tolist() == [0, 1, 6]     # (0,0), (0,1), (1,0)
