"""Calibrated colour control: the image's DC comes from the requested colour alone, not from the seed's noise.

The paper's direct setting ("raw") puts the encoding z* of a flat colour in the DC of x_tilde. The UNet, though,
reads the DC of x_T = a x_tilde + b eps (a = sqrt(abar_T), b = sqrt(1 - abar_T)), and at the first step the noise's
own DC is as large as the leaked one: for SD's schedule at 25 DDIM steps b / a = 11.7, and mean_hw(eps) has standard
deviation 1 / sqrt(hw) per channel, so a 16 x 16 latent gets a random colour offset of 11.7 / 16 = 0.73 latent
units, the size of the whole colour range. Calibrated mode cancels it, per image:

    DC(x_tilde) = (1 - s) DC_style + s (z* - (b / a) (mean_hw(eps) - E[mean_hw(eps)]))

so that x_T's DC is a ((1 - s) DC_style + s z*) + (1 - s) b mean_hw(eps): at strength s = 1 exactly a z*, the
colour the model would have leaked from a clean image of that colour. E[mean_hw(eps)] is 0 for N(0, I) noise and
the style's mean for a Diffusion-in-Style model. Nothing else of x_T changes (the same eps, the same style content),
it costs one mean per image, needs no calibration run, and works for any scheduler and any model with a leak.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import LeakstyleError
from .schedule import Leak

COLOR_MODES = ("calibrated", "raw")


def check_color_mode(color_mode: str) -> str:
    """`color_mode` itself, or a LeakstyleError naming the choices."""
    if color_mode not in COLOR_MODES:
        raise LeakstyleError(f"unknown colour mode {color_mode!r}; choose one of {', '.join(COLOR_MODES)}")
    return color_mode


def noise_dc_correction(eps: torch.Tensor, leak: Leak, share: float = 1.0,
                        noise_mean: torch.Tensor | None = None) -> torch.Tensor:
    """The term added to x_tilde [B, C, 1, 1] that cancels `share` of the noise's DC in x_T = a x_tilde + b eps:
    -share (b / a) (mean_hw(eps) - noise_mean), noise_mean [C] the noise's expected channel means (0 if None).
    Video latents ([B, C, F, h, w] or [B, F, C, h, w]) get one term per frame (the mean over the last two axes)."""
    dc = eps.mean((-2, -1), keepdim=True)
    if noise_mean is not None:
        dc = dc - noise_mean.to(dc.device, dc.dtype).view(1, -1, 1, 1)
    return -share * (leak.sqrt_one_minus_abar_T / leak.sqrt_abar_T) * dc


def check_lightness(lightness) -> None:
    """CIELAB L*: a finite number from 0 (black) to 100 (white)."""
    if isinstance(lightness, bool) or not isinstance(lightness, (int, float)) or not 0.0 <= float(lightness) <= 100.0:
        raise LeakstyleError(f"brightness is CIELAB L* from 0 (black) to 100 (white), got {lightness!r}")


def with_lightness(pipe, lightness: float, style=None, color: str | None = None) -> str:
    """The '#rrggbb' colour of CIELAB lightness L* = `lightness` (0 black .. 100 white) with the hue and chroma
    (a*, b*) of `color`, else of the style's mean colour (its channel means decoded by the VAE), else neutral grey
    (a* = b* = 0). Out-of-gamut results are clipped to sRGB."""
    from skimage.color import lab2rgb

    from . import metrics
    from .encode import model_units_to_rgb, to_hex, vae_of

    check_lightness(lightness)
    if color is not None:
        lab = metrics.color_to_lab(color)
    elif style is not None:
        lab = metrics.color_to_lab(model_units_to_rgb(vae_of(pipe), style.channel_means()))
    else:
        lab = np.zeros(3)
    rgb = lab2rgb(np.array([[[float(lightness), lab[1], lab[2]]]]), channel_axis=-1)[0, 0]
    return to_hex(np.clip(rgb, 0, 1) * 255)
