"""Signal-leak initial latents for any diffusers pipeline and scheduler.

The UNet must receive x_T = sqrt(abar_T) x_tilde + sqrt(1 - abar_T) eps at the first step. A pipeline
multiplies `latents=` by init_noise_sigma and the scheduler scales the model input, so the latents we
hand over are x_T divided by that input scale (for sigma schedulers: x_tilde + sigma_T eps, over init_noise_sigma).
"""

from __future__ import annotations

import warnings

import torch

from .denoiser import (denoiser_of, latent_channels, latent_tensor_shape, layout, native_latent_size, num_frames_of,
                       vae_factor)
from .distribution import StyleDistribution
from .errors import LeakstyleError
from .schedule import Leak, ZeroTerminalSNRWarning, leak_at_first_step, no_leak_explanation
from .video import check_frames, video_x_tilde


def x_T(x_tilde: torch.Tensor, eps: torch.Tensor, leak: Leak, scale: float = 1.0) -> torch.Tensor:
    """x_T = sqrt(abar_T) x_tilde + sqrt(1 - abar_T) eps, divided by `scale`.

    Computed in place in x_tilde (one pass, no new tensor: fresh memory is what costs time here)."""
    return x_tilde.mul_(leak.sqrt_abar_T / scale).add_(eps, alpha=leak.sqrt_one_minus_abar_T / scale)


def image_size(pipe, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """(height, width) in pixels: as given, or the model's native size."""
    sample_size = native_latent_size(pipe)
    return height or sample_size[0] * vae_factor(pipe), width or sample_size[1] * vae_factor(pipe)


def latent_shape(pipe, height: int | None, width: int | None) -> tuple[int, int, int]:
    """(C, h, w) of the initial latent for an image of height x width pixels (the model's default size if None)."""
    factor = vae_factor(pipe)
    height, width = image_size(pipe, height, width)
    if height % factor or width % factor:
        raise LeakstyleError(f"height and width must be multiples of {factor} for this model, got {height}x{width}")
    return latent_channels(pipe), height // factor, width // factor


def noise(shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def initial_latents(pipe, style: StyleDistribution | None, batch_size: int = 1, height: int | None = None,
                    width: int | None = None, num_inference_steps: int = 50,
                    generator: torch.Generator | None = None, scheduler=None,
                    color: torch.Tensor | None = None, strength: float = 1.0,
                    device=None, dtype=torch.float32, num_frames: int | None = None,
                    frames: str = "shared") -> torch.Tensor:
    """The `latents=` to pass to `pipe` so that its first step starts from the signal leak of `style`.

    Draws eps [B, C, h, w] first, then x_tilde, from `generator`. `color` [C] (model units) with `strength`
    sets the low frequencies (see StyleDistribution.with_color). With neither style nor colour, returns eps:
    the pipeline's own pure-noise start. Returns [B, C, h, w] with h, w = height, width / VAE factor.
    Warns (ZeroTerminalSNRWarning) and returns pure noise when the scheduler leaks nothing.

    Video pipelines (see denoiser.layout) get [B, C, F, h, w] or [B, F, C, h, w] with F = `num_frames` (the
    model's default if None): eps independent per frame, x_tilde shared by a clip's frames or, with
    frames="independent", one per frame (see video.video_x_tilde).
    """
    scheduler = scheduler or pipe.scheduler
    check_frames(frames)
    C, h, w = latent_shape(pipe, height, width)
    F = num_frames_of(pipe, num_frames)
    device = device or denoiser_of(pipe).device
    eps = noise(latent_tensor_shape(pipe, batch_size, C, h, w, F), generator, device, dtype)
    if style is None and color is None:
        return eps
    if style is not None and style.channels != C:
        raise LeakstyleError(f"the style has {style.channels} channels but the model's latents have {C}; "
                             f"fit the style with this model")
    leak = leak_at_first_step(scheduler, num_inference_steps, warn=False)
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
    return x_T(x_tilde, eps, leak, scale=leak.input_scale)
