"""The low-frequency part of the orthonormal 2-D DCT-II, as n basis images.

Only the n lowest-frequency coefficients are ever needed, so instead of a full transform we project
onto n basis images: coefficient_k = <x, B_k> and the inverse is x_LF = sum_k coefficient_k B_k, both O(nCHW).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch


def dct_matrix(N: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix D [N, N]: D[k, n] = c_k sqrt(2/N) cos(pi (2n + 1) k / 2N), c_0 = 1/sqrt(2)."""
    n = torch.arange(N, dtype=torch.float64)
    k = n[:, None]
    D = math.sqrt(2.0 / N) * torch.cos(math.pi * (2 * n[None, :] + 1) * k / (2 * N))
    D[0] /= math.sqrt(2.0)
    return D


def low_frequency_indices(height: int, width: int, n: int) -> torch.Tensor:
    """The n (u, v) frequency pairs with the smallest radial index sqrt(u^2 + v^2), as [n, 2] int64.

    u indexes height and v width. Ties keep the row-major order of the flattened H x W grid (a stable
    sort), so (0, 1) comes before (1, 0): the order of the official statistics files, whose component 1
    has the near-zero mean a horizontal frequency has over left-right symmetric photos. (numpy's default
    argsort breaks ties differently on different CPUs, so it is not used.)
    """
    if not 1 <= n <= height * width:
        raise ValueError(f"components must be between 1 and {height * width}, got {n}")
    u, v = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    order = np.argsort(np.sqrt(u**2 + v**2).flatten(), kind="stable")[:n]
    return torch.from_numpy(np.stack([order // width, order % width], axis=1).astype(np.int64))


@functools.lru_cache(maxsize=32)
def _basis(height: int, width: int, indices: tuple[tuple[int, int], ...]) -> torch.Tensor:
    Dh, Dw = dct_matrix(height), dct_matrix(width)
    return torch.stack([torch.outer(Dh[u], Dw[v]) for u, v in indices])


def basis_images(height: int, width: int, indices: torch.Tensor, dtype=torch.float32, device=None) -> torch.Tensor:
    """Basis images B [n, H, W] of the DCT coefficients at `indices` [n, 2]; orthonormal."""
    key = tuple((int(u), int(v)) for u, v in indices.tolist())
    return _basis(height, width, key).to(dtype=dtype, device=device)


def project(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Low-frequency coefficients of x [B, C, H, W] on basis [n, H, W], as [B, n, C] (component-major)."""
    return torch.einsum("bchw,khw->bkc", x, basis)


def reconstruct(lf: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Inverse of `project` restricted to the low frequencies: lf [B, n, C] -> x_LF [B, C, H, W]."""
    return torch.einsum("bkc,khw->bchw", lf, basis)
