"""The units a style's latents are in, and the model's.

A style file says how its latents were made from the VAE's raw latents z: x = (z - shift_factor) *
scaling_factor (metadata of leakstyle files; diffusers' convention). A model wants x = process_latent_in(z),
an affine map per channel for every latent format that leaks (SD 1.x/2.x/XL: z * scale_factor), which is the
same map with the latent format's scale and shift. ComfyUI's VAE Encode gives z itself, so styles fitted in
ComfyUI are put through process_latent_in and record the model's factors: a style fitted there is the file
`leakstyle fit` writes for the same images and VAE. A colour-only style made without a model stays in z and
says scaling_factor 1, shift_factor 0. Official folders carry no factors: they are in the units of the model
they were fitted for (the research code's scaled latents) and are used as they are.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..distribution import StyleDistribution
from ..errors import LeakstyleError, StyleFileError

RAW_VAE_UNITS = {"space": "latent", "scaling_factor": "1.0", "shift_factor": "0.0"}


def style_factors(style: StyleDistribution) -> tuple[float, float] | None:
    """(scaling_factor, shift_factor) the style's latents were made with, or None when it does not say."""
    if style.metadata.get("space") == "pixel":
        raise StyleFileError("this style holds pixel statistics; fit it in latent space (a VAE) for a ComfyUI model")
    scaling = style.metadata.get("scaling_factor", "")
    if scaling in ("", None):
        return None
    return float(scaling), float(style.metadata.get("shift_factor") or 0.0)


def latent_affine(model, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) [C] with process_latent_in(z) = a z + b per channel; refuses a latent format that is not affine."""
    latent_format = model.get_model_object("latent_format")
    if latent_format.latent_channels != channels:
        raise StyleFileError(f"the style has {channels} latent channels but this model's latents have "
                             f"{latent_format.latent_channels}; fit the style with this model's VAE")
    probe = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64).view(3, 1, 1, 1).expand(3, channels, 1, 1)
    z = latent_format.process_in(probe.clone()).double().view(3, channels)
    b, a = z[0], z[1] - z[0]
    if not torch.allclose(z[2], 2 * a + b, rtol=1e-6, atol=1e-9):
        raise LeakstyleError("this model's latent format is not an affine map of the VAE's latents; leakstyle cannot use it")
    return a, b


def model_units(model, channels: int) -> dict[str, str]:
    """The metadata of a style in the model's units: its latent format's (scaling_factor, shift_factor), from
    process_latent_in(z) = (z - shift) * scaling. A per-channel map (no single factor) cannot be recorded."""
    a, b = latent_affine(model, channels)
    if not torch.allclose(a, a[0].expand_as(a), rtol=1e-7, atol=0) or not torch.allclose(b, b[0].expand_as(b), rtol=1e-7, atol=1e-12):
        raise LeakstyleError("this model's latent format scales each channel differently, so a style file cannot record "
                             "its units; leakstyle styles work with SD 1.x, SD 2.x and SDXL models")
    scaling = float(a[0])
    return {"space": "latent", "scaling_factor": repr(scaling), "shift_factor": repr(float(-b[0] / a[0]) + 0.0)}


def process_in(model, z: torch.Tensor) -> torch.Tensor:
    """process_latent_in(z) [B, C, h, w] (the model's units) of raw VAE latents z, in float32."""
    return model.get_model_object("latent_format").process_in(z.float().clone())


def affine(style: StyleDistribution, a: torch.Tensor, b: torch.Tensor) -> StyleDistribution:
    """The distribution of a x + b (a, b [C] per channel) for x ~ style. The constant b is a DC offset:
    sqrt(HW) b in the DC coefficient for dct statistics, so the remainder keeps no mean colour."""
    a3, b3 = a.view(-1, 1, 1), b.view(-1, 1, 1)
    if style.kind == "pixel":
        return replace(style, mean=(style.mean.double() * a3 + b3).float(), var=(style.var.double() * a3**2).float())
    n, C = style.components, style.channels
    lf_mean = style.lf_mean.double().view(n, C) * a
    dc = [i for i, (u, v) in enumerate(style.lf_indices.tolist()) if (u, v) == (0, 0)]
    mean = style.mean.double() * a3
    if dc:
        lf_mean[dc[0]] += math.sqrt(style.height * style.width) * b
    else:
        mean = mean + b3
    scale = a.repeat(n)  # component-major, like the LF vector
    lf_cov = style.lf_cov.double() * scale[:, None] * scale[None, :]
    return replace(style, mean=mean.float(), var=(style.var.double() * a3**2).float(), lf_mean=lf_mean.flatten().float(),
                   lf_cov=lf_cov.float())


def to_model_units(style: StyleDistribution, model) -> StyleDistribution:
    """The style in the model's units, x = process_latent_in(z); a style without factors is taken as it is."""
    factors = style_factors(style)
    a, b = latent_affine(model, style.channels)
    if factors is None:
        return style
    scaling, shift = factors
    A, B = a / scaling, a * shift + b  # x_style / scaling + shift = z, then a z + b
    if torch.allclose(A, torch.ones_like(A)) and torch.allclose(B, torch.zeros_like(B)):
        return style
    converted = affine(style, A, B)
    uniform = bool(torch.allclose(a, a[0]) and torch.allclose(b, torch.zeros_like(b)))
    metadata = {**style.metadata, "scaling_factor": repr(float(a[0])) if uniform else "", "shift_factor": "0.0"}
    return replace(converted, metadata=metadata)


def color_in_style_units(style: StyleDistribution, raw_color: torch.Tensor) -> torch.Tensor:
    """A colour given as raw VAE latent means [C], in the units of `style`."""
    factors = style_factors(style)
    if factors is None:
        raise StyleFileError("this style does not record the VAE scaling of its latents (an official folder), so a "
                             "colour cannot be put in its units; fit the style in ComfyUI (LeakstyleFitStyle) or "
                             "with `leakstyle fit`")
    scaling, shift = factors
    return (raw_color.double() - shift) * scaling
