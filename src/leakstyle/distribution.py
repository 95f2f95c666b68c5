"""Style distributions: the Gaussian x_tilde is drawn from.

- pixel: x_tilde = mu + sigma * eps, a diagonal Gaussian per element.
- dct:   x_tilde = IDCT(LF) + mu_HF + sigma_HF * eps, with LF ~ N(mu_LF, Sigma_LF) over the n lowest
         DCT frequencies of every channel (component-major vector) and a diagonal high-frequency remainder.

All randomness comes from one `torch.Generator`: first eps [B, C, H, W], then z [B, nC] for the LF.
Reading and writing them is leakstyle.files' business (`leakstyle.save(style, path)`, `leakstyle.load(path)`).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from . import dct
from .errors import StyleFileError
from .moments import Moments

# Latents and pixels of real models stay within a few units (SD latents within about +-5, pixels in [-1, 1]).
# Means and standard deviations beyond this are no style of any real model, and in sampling they overflow
# float16 arithmetic (and near 3e38 float32), so images come out black: they are refused.
MAX_MODEL_UNITS = 1e4


def covariance_factor(Sigma: torch.Tensor) -> torch.Tensor:
    """A factor L with L L^T = Sigma: Cholesky, or eigh when Sigma is rank-deficient (fewer images than dimensions)."""
    Sigma = Sigma.double()
    L, info = torch.linalg.cholesky_ex(Sigma)
    if int(info) == 0:
        return L
    lam, V = torch.linalg.eigh(Sigma)
    return V * lam.clamp_min(0.0).sqrt()


def resize_map(m: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a per-element map [C, H, W] (bilinear, antialiased when shrinking)."""
    if tuple(m.shape[1:]) == (height, width):
        return m
    return F.interpolate(m[None].float(), size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]


@dataclass(eq=False)
class StyleDistribution:
    """A fitted distribution of x_tilde in a model's space (VAE latents or pixels in [-1, 1]).

    mean, var: [C, H, W], of x itself (pixel) or of the high-frequency remainder (dct).
    lf_indices [n, 2], lf_mean [nC], lf_cov [nC, nC]: the low frequencies (dct only).
    metadata: string facts about the fit (space, image count, model, ...), saved with the file.
    """

    kind: str
    mean: torch.Tensor
    var: torch.Tensor
    lf_indices: torch.Tensor | None = None
    lf_mean: torch.Tensor | None = None
    lf_cov: torch.Tensor | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    # -- facts -------------------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return self.mean.shape[0]

    @property
    def height(self) -> int:
        return self.mean.shape[1]

    @property
    def width(self) -> int:
        return self.mean.shape[2]

    @property
    def components(self) -> int:
        return 0 if self.lf_indices is None else len(self.lf_indices)

    @property
    def image_count(self) -> int | None:
        count = self.metadata.get("image_count")
        return int(count) if count not in (None, "") else None

    def channel_means(self) -> torch.Tensor:
        """The expected per-channel mean of x_tilde [C] (the mean colour, in model units)."""
        if self.kind == "pixel":
            return self.mean.double().mean((1, 2)).float()
        B = dct.basis_images(self.height, self.width, self.lf_indices, dtype=torch.float64)
        lf = self.lf_mean.double().view(1, self.components, self.channels)
        return (dct.reconstruct(lf, B)[0] + self.mean.double()).mean((1, 2)).float()

    def validate(self) -> None:
        """Raise StyleFileError unless shapes agree, every value is finite and within MAX_MODEL_UNITS (variances >= 0)
        and the image count, if known, is a whole number."""
        if self.kind not in ("pixel", "dct"):
            raise StyleFileError(f"unknown statistic type {self.kind!r}: expected 'pixel' or 'dct'")
        if self.mean.ndim != 3 or self.mean.shape != self.var.shape:
            raise StyleFileError(f"mean and variance must both be [C, H, W], got {list(self.mean.shape)} and {list(self.var.shape)}")
        if 0 in self.mean.shape:
            raise StyleFileError(f"mean and variance are {list(self.mean.shape)}: a style needs at least one channel, row and column")
        tensors = {"mean": self.mean, "variance": self.var}
        if self.kind == "dct":
            if self.lf_indices is None or self.lf_mean is None or self.lf_cov is None:
                raise StyleFileError("dct statistics need low-frequency indices, mean and covariance")
            nC = self.components * self.channels
            if self.lf_mean.shape != (nC,) or self.lf_cov.shape != (nC, nC):
                raise StyleFileError(
                    f"low-frequency mean {list(self.lf_mean.shape)} and covariance {list(self.lf_cov.shape)} "
                    f"do not match {self.components} components x {self.channels} channels"
                )
            if self.lf_indices.ndim != 2 or self.lf_indices.shape[1] != 2:
                raise StyleFileError(f"low-frequency indices must be [n, 2], got {list(self.lf_indices.shape)}")
            u, v = self.lf_indices[:, 0], self.lf_indices[:, 1]
            if ((u < 0) | (u >= self.height) | (v < 0) | (v >= self.width)).any():
                raise StyleFileError(f"low-frequency indices lie outside the {self.height}x{self.width} frequency grid")
            tensors.update({"low-frequency mean": self.lf_mean, "low-frequency covariance": self.lf_cov})
        for name, t in tensors.items():
            if not torch.isfinite(t).all():
                raise StyleFileError(f"the style's {name} holds NaN or Inf values; refit it from the images")
        if (self.var < 0).any():
            raise StyleFileError("the style's variance has negative values; the file is corrupt")
        self.check_magnitudes()
        count = self.metadata.get("image_count")
        if count not in (None, "") and not re.fullmatch(r"[0-9]+", str(count)):
            raise StyleFileError(f"the style's image_count {count!r} is not a non-negative whole number; the file is corrupt")

    def check_magnitudes(self) -> None:
        """Refuse values beyond MAX_MODEL_UNITS per element: |mean|, sqrt(var) and, for the low frequencies
        (ortho DCT coefficients, which carry sqrt(HW) times a channel mean), |mu_LF| / sqrt(HW) and
        sqrt(|Sigma_LF|) / sqrt(HW)."""
        root_hw = math.sqrt(self.height * self.width)
        sizes = {"mean": self.mean.abs(), "standard deviation": self.var.sqrt()}
        if self.kind == "dct":
            sizes.update({"low-frequency mean": self.lf_mean.abs() / root_hw,
                          "low-frequency covariance (square root)": self.lf_cov.abs().sqrt() / root_hw})
        for name, t in sizes.items():
            largest = float(t.max()) if t.numel() else 0.0
            if largest > MAX_MODEL_UNITS:
                raise StyleFileError(f"the style's {name} reaches {largest:.3g} model units, beyond {MAX_MODEL_UNITS:g}: "
                                     f"not a style of any real model; refit it from the images")

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_moments(cls, moments: Moments, metadata: dict[str, str] | None = None) -> "StyleDistribution":
        mean, var = moments.mean_var()
        metadata = {**(metadata or {}), "image_count": str(moments.count)}
        if moments.kind == "pixel":
            return cls("pixel", mean.float(), var.float(), metadata=metadata)
        lf_mean, lf_cov = moments.lf_mean_cov()
        return cls("dct", mean.float(), var.float(), moments.lf_indices.clone(), lf_mean.float(), lf_cov.float(), metadata)

    def to_moments(self) -> Moments:
        """Running sums that reproduce this fit, to merge it with another shard's."""
        if self.image_count is None:
            raise StyleFileError("the style file does not say how many images it was fitted on, so it cannot be merged")
        return Moments.from_statistics(self.kind, self.image_count, self.mean, self.var, self.lf_indices, self.lf_mean, self.lf_cov)

    @classmethod
    def flat(cls, channel_means: torch.Tensor, height: int, width: int) -> "StyleDistribution":
        """The constant image of the given per-channel means [C], with no randomness (colour control alone)."""
        C = len(channel_means)
        zeros = torch.zeros(C, height, width)
        lf_mean = math.sqrt(height * width) * channel_means.float()
        return cls("dct", zeros, zeros.clone(), torch.zeros(1, 2, dtype=torch.int64), lf_mean, torch.zeros(C, C),
                   {"space": "", "image_count": ""})

    def as_dct(self) -> "StyleDistribution":
        """A pixel statistic rewritten with its DC component split off (n = 1), so its mean colour can be set.

        x = mu + sigma eps = IDCT(DC) + (mu - mean(mu)) + sigma eps with DC = sqrt(HW) mean(mu) fixed: an exact
        rewrite. The DC keeps zero covariance because sigma eps, sampled as the remainder, already carries
        the DC variance mean(sigma^2); giving the DC that variance as well would count it twice."""
        if self.kind == "dct":
            return self
        mean = self.mean.double()
        channel_mean = mean.mean((1, 2))
        lf_mean = math.sqrt(self.height * self.width) * channel_mean
        lf_cov = torch.zeros(self.channels, self.channels)
        hf_mean = mean - channel_mean[:, None, None]
        return StyleDistribution("dct", hf_mean.float(), self.var.clone(), torch.zeros(1, 2, dtype=torch.int64),
                                 lf_mean.float(), lf_cov.float(), dict(self.metadata))

    # -- transformations ---------------------------------------------------------------------------
    def at_size(self, height: int, width: int) -> "StyleDistribution":
        """The same statistics for x_tilde of another size (non-square too).

        Per-element maps are resized; ortho DCT coefficients of smooth content scale by sqrt(H'W' / HW)."""
        if (height, width) == (self.height, self.width):
            return self
        mean, var = resize_map(self.mean, height, width), resize_map(self.var, height, width).clamp_min(0)
        if self.kind == "pixel":
            return replace(self, mean=mean, var=var)
        if (self.lf_indices[:, 0] >= height).any() or (self.lf_indices[:, 1] >= width).any():
            raise StyleFileError(f"{self.components} DCT components do not fit in {height}x{width}")
        scale = math.sqrt(height * width / (self.height * self.width))
        return replace(self, mean=mean, var=var, lf_mean=self.lf_mean * scale, lf_cov=self.lf_cov * scale**2)

    def with_color(self, channel_means: torch.Tensor, strength: float = 1.0) -> "StyleDistribution":
        """Low-frequency control: blend the LF toward a flat image of `channel_means` [C] (model units).

        LF = (1 - s) LF_fitted + s LF_fixed, so mu_LF -> (1 - s) mu_LF + s mu_fixed and
        Sigma_LF -> (1 - s)^2 Sigma_LF. The fixed LF has the DC set to the colour and every other component 0."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        if len(channel_means) != self.channels:
            raise StyleFileError(f"the colour has {len(channel_means)} channels but the style has {self.channels}")
        d = self.as_dct()
        if d.lf_indices[0].tolist() != [0, 0]:
            raise StyleFileError("the style's first low-frequency component is not the DC component")
        fixed = torch.zeros(d.components, d.channels)
        fixed[0] = math.sqrt(d.height * d.width) * channel_means.float()
        s = float(strength)
        return replace(d, lf_mean=(1 - s) * d.lf_mean + s * fixed.flatten(), lf_cov=(1 - s) ** 2 * d.lf_cov)

    # -- sampling ----------------------------------------------------------------------------------
    @functools.cached_property
    def _std(self) -> torch.Tensor:
        return self.var.sqrt()

    @functools.cached_property
    def _lf_factor(self) -> torch.Tensor:
        return covariance_factor(self.lf_cov).float()

    def sample(self, num: int, height: int | None = None, width: int | None = None,
               generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
        """Draw x_tilde [num, C, H, W]; at the fitted size unless height/width (model units) say otherwise."""
        style = self.at_size(height or self.height, width or self.width)
        device = torch.device("cpu") if device is None else torch.device(device)
        C, H, W = style.channels, style.height, style.width
        x = torch.randn((num, C, H, W), generator=generator, device=device, dtype=dtype)
        torch.addcmul(style.mean.to(device, dtype), x, style._std.to(device, dtype), out=x)  # x = mu + sigma eps, in place
        if style.kind == "pixel":
            return x
        n = style.components
        z = torch.randn((num, n * C), generator=generator, device=device, dtype=dtype)
        lf = torch.addmm(style.lf_mean.to(device, dtype), z, style._lf_factor.to(device, dtype).T)  # [num, nC]
        basis = dct.basis_images(H, W, style.lf_indices, dtype=dtype, device=device).view(1, n, H * W)
        # x += IDCT(LF) = coefficients [num, C, n] @ basis [n, HW], in place (batched: faster than addmm for small n).
        x.view(num, C, H * W).baddbmm_(lf.view(num, n, C).transpose(1, 2), basis.expand(num, n, H * W))
        return x
