"""Streaming first and second moments of tensors [B, C, H, W], in float64, mergeable across shards.

Memory does not grow with the number of images: only running sums are kept.
- pixel: count, sum x, sum x^2 per element.
- dct: count, sum and sum of outer products of the low-frequency vector (component-major), and
  sum r, sum r^2 per element of the high-frequency remainder r = x - IDCT(LF only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import dct


@dataclass
class Moments:
    kind: str  # "pixel" or "dct"
    channels: int
    height: int
    width: int
    lf_indices: torch.Tensor | None = None  # [n, 2] for dct
    count: int = 0
    sum_x: torch.Tensor = field(init=False)  # pixel: x; dct: HF remainder r
    sum_x2: torch.Tensor = field(init=False)
    sum_lf: torch.Tensor | None = field(init=False, default=None)  # [nC]
    sum_lf_outer: torch.Tensor | None = field(init=False, default=None)  # [nC, nC]

    def __post_init__(self):
        if self.kind not in ("pixel", "dct"):
            raise ValueError(f"unknown statistic type {self.kind!r}: use 'pixel' or 'dct'")
        shape = (self.channels, self.height, self.width)
        self.sum_x = torch.zeros(shape, dtype=torch.float64)
        self.sum_x2 = torch.zeros(shape, dtype=torch.float64)
        if self.kind == "dct":
            if self.lf_indices is None:
                raise ValueError("dct moments need lf_indices")
            nC = len(self.lf_indices) * self.channels
            self.sum_lf = torch.zeros(nC, dtype=torch.float64)
            self.sum_lf_outer = torch.zeros(nC, nC, dtype=torch.float64)
            self._basis = dct.basis_images(self.height, self.width, self.lf_indices, dtype=torch.float64)

    @classmethod
    def for_dct(cls, channels: int, height: int, width: int, components: int) -> "Moments":
        return cls("dct", channels, height, width, dct.low_frequency_indices(height, width, components))

    def update(self, x: torch.Tensor) -> None:
        """Add a batch x [B, C, H, W] (any float dtype or device)."""
        if tuple(x.shape[1:]) != (self.channels, self.height, self.width):
            raise ValueError(f"expected tensors [B, {self.channels}, {self.height}, {self.width}], got {list(x.shape)}")
        x = x.detach().to("cpu", torch.float64)
        if self.kind == "dct":
            lf = dct.project(x, self._basis)  # [B, n, C]
            x = x - dct.reconstruct(lf, self._basis)
            v = lf.flatten(1)  # component-major [B, nC]
            self.sum_lf += v.sum(0)
            self.sum_lf_outer += v.T @ v
        self.sum_x += x.sum(0)
        self.sum_x2 += (x * x).sum(0)
        self.count += x.shape[0]

    def merge(self, other: "Moments") -> "Moments":
        """Combine with moments of another shard fitted the same way (in place; returns self)."""
        same = (self.kind, self.channels, self.height, self.width) == (other.kind, other.channels, other.height, other.width)
        if self.kind == "dct":
            same = same and torch.equal(self.lf_indices, other.lf_indices)
        if not same:
            raise ValueError("cannot merge moments of different statistic type, shape or components")
        self.count += other.count
        self.sum_x += other.sum_x
        self.sum_x2 += other.sum_x2
        if self.kind == "dct":
            self.sum_lf += other.sum_lf
            self.sum_lf_outer += other.sum_lf_outer
        return self

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-element mean and unbiased variance [C, H, W] (of x, or of the HF remainder for dct)."""
        n = self.count
        mean = self.sum_x / n
        var = ((self.sum_x2 - n * mean * mean) / (n - 1)).clamp_min(0.0)
        return mean, var

    def lf_mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [nC] and unbiased covariance [nC, nC] of the low-frequency vector."""
        n = self.count
        mu = self.sum_lf / n
        cov = (self.sum_lf_outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu, (cov + cov.T) / 2

    @classmethod
    def from_statistics(cls, kind, count, mean, var, lf_indices=None, lf_mean=None, lf_cov=None) -> "Moments":
        """Rebuild running sums from a fitted mean, variance (and LF mean, covariance), e.g. to merge files."""
        C, H, W = mean.shape
        m = cls(kind, C, H, W, lf_indices)
        m.count = count
        mean, var = mean.double(), var.double()
        m.sum_x = count * mean
        m.sum_x2 = (count - 1) * var + count * mean * mean
        if kind == "dct":
            mu = lf_mean.double()
            m.sum_lf = count * mu
            m.sum_lf_outer = (count - 1) * lf_cov.double() + count * torch.outer(mu, mu)
        return m
