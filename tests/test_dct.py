"""Specification of leakstyle.dct: the low-frequency part of the orthonormal 2-D DCT-II as n basis images."""

from __future__ import annotations

import math

import pytest
import scipy.fft
import torch

from leakstyle import dct

# float64 round-off of sums over at most a few hundred products of numbers of order 1
EXACT = dict(rtol=0.0, atol=1e-12)

SHAPES = [(8, 8), (6, 10), (5, 3), (1, 7)]


def random_batch(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """x [2, 3, H, W] in float64."""
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("N", [1, 2, 7, 16])
def test_dct_matrix_is_orthonormal(N: int) -> None:
    D = dct.dct_matrix(N)
    torch.testing.assert_close(D @ D.T, torch.eye(N, dtype=torch.float64), **EXACT)


@pytest.mark.parametrize(("height", "width"), SHAPES)
def test_basis_images_are_orthonormal(height: int, width: int) -> None:
    indices = dct.low_frequency_indices(height, width, height * width)
    B = dct.basis_images(height, width, indices, dtype=torch.float64).flatten(1)
    torch.testing.assert_close(B @ B.T, torch.eye(height * width, dtype=torch.float64), **EXACT)


@pytest.mark.parametrize(("height", "width"), SHAPES)
def test_projection_equals_scipy_orthonormal_dct_coefficients_at_the_indices(height: int, width: int) -> None:
    x = random_batch(height, width)
    n = min(6, height * width)
    indices = dct.low_frequency_indices(height, width, n)
    lf = dct.project(x, dct.basis_images(height, width, indices, dtype=torch.float64))  # [B, n, C]
    X = torch.from_numpy(scipy.fft.dctn(x.numpy(), type=2, axes=(-2, -1), norm="ortho"))
    expected = X[:, :, indices[:, 0], indices[:, 1]].transpose(1, 2)  # [B, C, n] -> [B, n, C]
    torch.testing.assert_close(lf, expected, **EXACT)


@pytest.mark.parametrize(("height", "width"), SHAPES)
def test_reconstruct_of_all_components_returns_the_input(height: int, width: int) -> None:
    x = random_batch(height, width)
    B = dct.basis_images(height, width, dct.low_frequency_indices(height, width, height * width), dtype=torch.float64)
    torch.testing.assert_close(dct.reconstruct(dct.project(x, B), B), x, **EXACT)


def test_reconstruct_of_few_components_is_the_inverse_dct_of_the_truncated_spectrum() -> None:
    x = random_batch(6, 10)
    indices = dct.low_frequency_indices(6, 10, 3)
    B = dct.basis_images(6, 10, indices, dtype=torch.float64)
    X = scipy.fft.dctn(x.numpy(), type=2, axes=(-2, -1), norm="ortho")
    kept = torch.zeros(X.shape, dtype=torch.float64)
    kept[:, :, indices[:, 0], indices[:, 1]] = torch.from_numpy(X)[:, :, indices[:, 0], indices[:, 1]]
    expected = torch.from_numpy(scipy.fft.idctn(kept.numpy(), type=2, axes=(-2, -1), norm="ortho"))
    torch.testing.assert_close(dct.reconstruct(dct.project(x, B), B), expected, **EXACT)


def test_dc_basis_image_is_constant_one_over_sqrt_of_area() -> None:
    B = dct.basis_images(6, 10, dct.low_frequency_indices(6, 10, 1), dtype=torch.float64)
    torch.testing.assert_close(B[0], torch.full((6, 10), 1 / math.sqrt(60), dtype=torch.float64), **EXACT)


@pytest.mark.parametrize(("height", "width"), [(8, 8), (64, 64), (96, 96), (6, 10), (10, 6)])
def test_first_three_indices_are_dc_then_horizontal_then_vertical(height: int, width: int) -> None:
    assert dct.low_frequency_indices(height, width, 3).tolist() == [[0, 0], [0, 1], [1, 0]]


def test_indices_of_a_non_square_grid_follow_radius_then_row_major_order() -> None:
    # radii on 2 x 3: (0,0) 0, (0,1) 1, (0,2) 2, (1,0) 1, (1,1) 1.41, (1,2) 2.24
    expected = [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [1, 2]]
    assert dct.low_frequency_indices(2, 3, 6).tolist() == expected
    assert dct.low_frequency_indices(3, 2, 6).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]]


@pytest.mark.parametrize(("height", "width"), [(2, 10), (10, 2), (5, 7), (1, 4)])
def test_indices_are_the_distinct_lowest_radii_inside_the_grid(height: int, width: int) -> None:
    for n in range(1, height * width + 1):
        indices = dct.low_frequency_indices(height, width, n)
        assert indices.shape == (n, 2) and indices.dtype == torch.int64
        u, v = indices[:, 0], indices[:, 1]
        assert ((0 <= u) & (u < height) & (0 <= v) & (v < width)).all()
        assert len({(int(a), int(b)) for a, b in indices}) == n
        radius = (u**2 + v**2).double()
        assert (radius[1:] >= radius[:-1]).all()
        row_major = u * width + v
        ties = radius[1:] == radius[:-1]
        assert (row_major[1:][ties] > row_major[:-1][ties]).all()
        assert torch.equal(indices, dct.low_frequency_indices(height, width, height * width)[:n])


@pytest.mark.parametrize("n", [0, -1, 65])
def test_indices_reject_a_count_outside_the_grid(n: int) -> None:
    with pytest.raises(ValueError, match="components"):
        dct.low_frequency_indices(8, 8, n)
