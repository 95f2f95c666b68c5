"""Signal-leak initial latents for any diffusers pipeline and scheduler.

The UNet must receive x_T = sqrt(abar_T) x_tilde + sqrt(1 - abar_T) eps at the first step. A pipeline
multiplies `latents=` by init_noise_sigma and the scheduler scales the model input, so the latents we
hand over are x_T divided by that input scale (for sigma schedulers: x_tilde + sigma_T eps, over init_noise_sigma).
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch

from .color import check_color_mode, color_in_model_units, noise_dc_correction
from .denoiser import (denoiser_of, latent_channels, latent_tensor_shape, layout, native_latent_size, num_frames_of,
                       vae_factor)
from .distribution import StyleDistribution
from .errors import LeakstyleError
from .pipecall import default_call_size
from .schedule import Leak, ZeroTerminalSNRWarning, leak_at_first_step, no_leak_explanation
from .video import check_frames, video_x_tilde


def x_T(x_tilde: torch.Tensor, eps: torch.Tensor, leak: Leak, scale: float = 1.0) -> torch.Tensor:
    """x_T = sqrt(abar_T) x_tilde + sqrt(1 - abar_T) eps, divided by `scale`.

    Computed in place in x_tilde (one pass, no new tensor: fresh memory is what costs time here)."""
    return x_tilde.mul_(leak.sqrt_abar_T / scale).add_(eps, alpha=leak.sqrt_one_minus_abar_T / scale)


def size_multiple(pipe) -> int:
    """What height and width in pixels must be multiples of.

    Text-to-image pipelines (SD, SDXL) check multiples of 8 whatever the VAE, and the latent must divide evenly:
    lcm(8, VAE factor). A UNet2DModel downsamples len(down_block_types) - 1 times without padding, so its input
    needs multiples of 2^(that) (times the VAE factor where there is a VAE). A transformer (PixArt, Hunyuan-DiT)
    cuts the latent into patch_size x patch_size patches: lcm(8, VAE factor * patch_size)."""
    factor = vae_factor(pipe)
    denoiser = denoiser_of(pipe)
    factor *= int(denoiser.config.get("patch_size") or 1)
    if getattr(pipe, "text_encoder", None) is not None:
        return math.lcm(8, factor)
    if type(denoiser).__name__ == "UNet2DModel":
        return factor * 2 ** (len(denoiser.config.down_block_types) - 1)
    return factor


def native_size(pipe) -> tuple[int, int]:
    """The model's own (height, width) in pixels: the pipeline's own default where its __call__ has one (Stable
    Video Diffusion: 576 x 1024), else the denoiser's sample size times the VAE factor."""
    own = default_call_size(pipe)
    if own is not None:
        return own
    sample_size = native_latent_size(pipe)
    return sample_size[0] * vae_factor(pipe), sample_size[1] * vae_factor(pipe)


def check_side(name: str, value, multiple: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1 or value % multiple:
        raise LeakstyleError(f"{name} must be one of the positive multiples of {multiple} px for this model "
                             f"({multiple}, {2 * multiple}, {3 * multiple}, ...), got {value!r}")


def image_size(pipe, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """(height, width) in pixels: as given (None: the model's native size), checked to be positive multiples of
    size_multiple(pipe); 0 is refused, not taken for the default."""
    native = native_size(pipe)
    height = native[0] if height is None else height
    width = native[1] if width is None else width
    multiple = size_multiple(pipe)
    check_side("height", height, multiple)
    check_side("width", width, multiple)
    return height, width


def latent_shape(pipe, height: int | None, width: int | None) -> tuple[int, int, int]:
    """(C, h, w) of the initial latent for an image of height x width pixels (the model's default size if None)."""
    factor = vae_factor(pipe)
    height, width = image_size(pipe, height, width)
    return latent_channels(pipe), height // factor, width // factor


def check_strength(strength) -> None:
    """strength blends the fitted low frequencies toward the colour's: a finite number in [0, 1]."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 <= strength <= 1.0:
        raise LeakstyleError(f"strength must be a number from 0 to 1, got {strength!r}")


def check_leak_inputs(style: StyleDistribution | None, color, strength: float, channels: int) -> None:
    """One-line errors for a style or colour (model units [C]) that cannot make a leak for latents of `channels`."""
    check_strength(strength)
    if style is not None and style.channels != channels:
        raise LeakstyleError(f"the style has {style.channels} channels but the model's latents have {channels}; "
                             f"fit the style with this model")
    if color is not None:
        color = torch.as_tensor(color, dtype=torch.float32).reshape(-1)
        if len(color) != channels or not bool(torch.isfinite(color).all()):
            raise LeakstyleError(f"the colour in model units must be {channels} finite numbers (one per latent "
                                 f"channel), got {color.tolist()}; or give '#rrggbb'")


def noise(shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def initial_latents(pipe, style: StyleDistribution | None, batch_size: int = 1, height: int | None = None,
                    width: int | None = None, num_inference_steps: int = 50,
                    generator: torch.Generator | None = None, scheduler=None,
                    color: torch.Tensor | None = None, strength: float = 1.0,
                    device=None, dtype=torch.float32, num_frames: int | None = None,
                    frames: str = "shared", color_mode: str = "raw") -> torch.Tensor:
    """The `latents=` to pass to `pipe` so that its first step starts from the signal leak of `style`.

    Draws eps [B, C, h, w] first, then x_tilde, from `generator`. `color` ('#rrggbb', or [C] in model units) with
    `strength` sets the low frequencies (see StyleDistribution.with_color); `color_mode` "raw" (the default here: the
    paper's math) does no more, "calibrated" also cancels the noise's own DC and takes a '#rrggbb' colour as
    the latent that decodes to it (leakstyle.color; generate's default; call the pipeline inside
    color.steered_background for the closed loop). With neither style nor colour, returns eps:
    the pipeline's own pure-noise start. Returns [B, C, h, w] with h, w = height, width / VAE factor.
    Warns (ZeroTerminalSNRWarning) and returns pure noise when the scheduler leaks nothing.
    A size, step count, strength, style or colour that cannot work is a LeakstyleError, raised before any draw.

    Video pipelines (see denoiser.layout) get [B, C, F, h, w] or [B, F, C, h, w] with F = `num_frames` (the
    model's default if None): eps independent per frame, x_tilde shared by a clip's frames or, with
    frames="independent", one per frame (see video.video_x_tilde).
    """
    scheduler = scheduler or pipe.scheduler
    check_frames(frames)
    C, h, w = latent_shape(pipe, height, width)
    color = color_in_model_units(pipe, color, check_color_mode(color_mode))
    check_leak_inputs(style, color, strength, C)
    leak = leak_at_first_step(scheduler, num_inference_steps, warn=False)
    F = num_frames_of(pipe, num_frames)
    device = device or denoiser_of(pipe).device
    eps = noise(latent_tensor_shape(pipe, batch_size, C, h, w, F), generator, device, dtype)
    if style is None and color is None:
        return eps
    if not leak.has_leak:
        warnings.warn(no_leak_explanation(scheduler, leak), ZeroTerminalSNRWarning, stacklevel=2)
        return eps
    if color is not None:
        base = style if style is not None else StyleDistribution.flat(torch.zeros(C), h, w)
        style = base.with_color(torch.as_tensor(color, dtype=torch.float32), strength)
    if F is None:
        x_tilde = style.sample(batch_size, h, w, generator=generator, device=device, dtype=dtype)
    else:
        x_tilde = video_x_tilde(style, batch_size, F, h, w, layout(pipe), frames, generator, device, dtype)
    if color is not None and color_mode == "calibrated":
        x_tilde += noise_dc_correction(eps, leak, strength)
    return x_T(x_tilde, eps, leak, scale=leak.input_scale)
