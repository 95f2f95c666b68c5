"""Calibrated colour in ComfyUI (leakstyle.color): the noise's own DC cancelled, and the background held at the colour.

A STYLE from LeakstyleColor says in its metadata which colour mode it asks for and with what strength s
(`color_mode`, `color_strength`). Two parts make "calibrated":

- Open loop: the first model input is a x~ + b eps (a = sqrt(abar_0), b = sqrt(1 - abar_0)), and the noise's DC,
  b mean_hw(eps), is as large as the leaked colour. leakstyle adds -s (b / a) mean_hw(eps) to x~'s DC, so that
  the input's DC is a DC(x~) + (1 - s) b mean_hw(eps). In ComfyUI:
  * LeakstyleLeakNoise (SamplerCustomAdvanced) returns b (eps - s mean_hw(eps)): a x~ + b eps - s b mean_hw(eps),
    the same input exactly (sampling.cancel_noise_dc);
  * LeakstyleLeakLatent (KSampler) adds -s mean_hw(eps) / a to x~ with eps = prepare_noise(latent, noise_seed)
    and a = sqrt(abar(sigma_max)): KSampler's first input at sigma_max is eps + a x~ (unit noise), so its DC
    becomes a DC(x~) + (1 - s) mean_hw(eps), exact when noise_seed is KSampler's seed and sigma_0 counts as
    sigma_max (full denoise, every scheduler but ddim_uniform at most step counts). Below sigma_max KSampler's
    input is b eps + a_0 x~ with a_0 > a: the term then cancels s (a_0 / a) mean_hw(eps) of b mean_hw(eps), too
    much (denoise < 1) or a little too much (ddim_uniform): leave noise_seed unconnected there.
- Closed loop: at every step the model's x0 prediction gets a uniform per-channel shift so that the mean of its
  border ring is the colour's latent (leakstyle.color.background_shift): a post-CFG function on the MODEL
  (LeakstyleCalibrateModel), in the units of ComfyUI's `denoised` (process_latent_in units), the target being
  the coloured style's channel means there: (1 - s) m + s z*, m the style's means, z* the colour's latent.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..color import background_shift, check_color_mode
from ..distribution import StyleDistribution
from ..errors import LeakstyleError
from .sampling import abar, model_sampling
from .units import to_model_units

MODE_KEY, STRENGTH_KEY, COLOR_KEY = "color_mode", "color_strength", "color"


def tagged(style: StyleDistribution, color: str, mode: str, strength: float) -> StyleDistribution:
    """The style with its colour, colour mode and strength in its metadata (a new metadata dict)."""
    check_color_mode(mode)
    return replace(style, metadata={**style.metadata, COLOR_KEY: color, MODE_KEY: mode, STRENGTH_KEY: repr(float(strength))})


def calibrated_share(style: StyleDistribution | None) -> float:
    """s, the share of the noise's DC to cancel: the colour's strength for a calibrated colour, else 0."""
    if style is None or style.metadata.get(MODE_KEY) != "calibrated":
        return 0.0
    return float(style.metadata.get(STRENGTH_KEY, "1.0"))


def latent_dc_correction(model, x_tilde: torch.Tensor, noise_seed: int, share: float) -> torch.Tensor:
    """What LeakstyleLeakLatent adds to x~ [B, C, h, w] for KSampler: -share mean_hw(eps) / sqrt(abar(sigma_max)),
    eps being the noise KSampler draws from `noise_seed` for a latent of this shape (no batch_index)."""
    import comfy.sample

    eps = comfy.sample.prepare_noise(x_tilde, noise_seed)
    a = math.sqrt(abar(float(model_sampling(model).sigma_max)))
    return -share / a * eps.to(x_tilde.dtype).mean((-2, -1), keepdim=True)


class HoldBackground:
    """A post-CFG function (ComfyUI's `sampler_post_cfg_function`): denoised + background_shift(denoised, target)."""

    def __init__(self, target: torch.Tensor):
        self.target = target

    def __call__(self, args: dict) -> torch.Tensor:
        denoised = args["denoised"]
        return denoised + background_shift(denoised, self.target, channel_axis=1)


def background_target(style: StyleDistribution, model) -> torch.Tensor:
    """The ring's target [C] in the model's units: the coloured style's channel means, (1 - s) m + s z*."""
    return to_model_units(style, model).channel_means().float()


def calibrated_model(model, style: StyleDistribution):
    """A clone of `model` whose x0 prediction's border ring is held at the style's colour at every step."""
    mode = style.metadata.get(MODE_KEY)
    if mode is None:
        raise LeakstyleError("this style has no colour; connect a Style Colour (leakstyle) node in calibrated mode")
    if mode != "calibrated":
        raise LeakstyleError(f"the colour is in {mode} mode (the paper's setting); set Style Colour's mode to calibrated "
                             f"or leave this node out")
    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(HoldBackground(background_target(style, model)))
    return patched

