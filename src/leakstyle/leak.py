"""Signal-leak initial latents for any diffusers pipeline and scheduler.

The UNet must receive x_T = sqrt(abar_T) x_tilde + sqrt(1 - abar_T) eps at the first step. A pipeline
multiplies `latents=` by init_noise_sigma and the scheduler scales the model input, so the latents we
hand over are x_T divided by that input scale (for sigma schedulers: x_tilde + sigma_T eps, over init_noise_sigma).
"""

from __future__ import annotations

import warnings

import torch

from .distribution import StyleDistribution
from .errors import LeakstyleError
from .schedule import ZERO_SNR_EXPLANATION, Leak, ZeroTerminalSNRWarning, leak_at_first_step


def x_T(x_tilde: torch.Tensor, eps: torch.Tensor, leak: Leak, scale: float = 1.0) -> torch.Tensor:
    """x_T = sqrt(abar_T) x_tilde + sqrt(1 - abar_T) eps, divided by `scale`.

    Computed in place in x_tilde (one pass, no new tensor: fresh memory is what costs time here)."""
    return x_tilde.mul_(leak.sqrt_abar_T / scale).add_(eps, alpha=leak.sqrt_one_minus_abar_T / scale)


def vae_factor(pipe) -> int:
    """How many pixels one latent element spans per side (1 for pixel-space models)."""
    vae = getattr(pipe, "vae", None)
    return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1


def image_size(pipe, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """(height, width) in pixels: as given, or the model's native size."""
    sample_size = pipe.unet.config.sample_size
    sample_size = sample_size if isinstance(sample_size, (tuple, list)) else (sample_size, sample_size)
    return height or sample_size[0] * vae_factor(pipe), width or sample_size[1] * vae_factor(pipe)


def latent_shape(pipe, height: int | None, width: int | None) -> tuple[int, int, int]:
    """(C, h, w) of the initial latent for an image of height x width pixels (the model's default size if None)."""
    factor = vae_factor(pipe)
    height, width = image_size(pipe, height, width)
    if height % factor or width % factor:
        raise LeakstyleError(f"height and width must be multiples of {factor} for this model, got {height}x{width}")
    return pipe.unet.config.in_channels, height // factor, width // factor


def noise(shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def initial_latents(pipe, style: StyleDistribution | None, batch_size: int = 1, height: int | None = None,
                    width: int | None = None, num_inference_steps: int = 50,
                    generator: torch.Generator | None = None, scheduler=None,
                    color: torch.Tensor | None = None, strength: float = 1.0,
                    device=None, dtype=torch.float32) -> torch.Tensor:
    """The `latents=` to pass to `pipe` so that its first step starts from the signal leak of `style`.

    Draws eps [B, C, h, w] first, then x_tilde, from `generator`. `color` [C] (model units) with `strength`
    sets the low frequencies (see StyleDistribution.with_color). With neither style nor colour, returns eps:
    the pipeline's own pure-noise start. Returns [B, C, h, w] with h, w = height, width / VAE factor.
    Warns (ZeroTerminalSNRWarning) and returns pure noise when the scheduler leaks nothing.
    """
    scheduler = scheduler or pipe.scheduler
    C, h, w = latent_shape(pipe, height, width)
    device = device or pipe.unet.device
    eps = noise((batch_size, C, h, w), generator, device, dtype)
    if style is None and color is None:
        return eps
    if style is not None and style.channels != C:
        raise LeakstyleError(f"the style has {style.channels} channels but the model's latents have {C}; "
                             f"fit the style with this model")
    leak = leak_at_first_step(scheduler, num_inference_steps, warn=False)
    if not leak.has_leak:
        warnings.warn(ZERO_SNR_EXPLANATION, ZeroTerminalSNRWarning, stacklevel=2)
        return eps
    if color is not None:
        base = style if style is not None else StyleDistribution.flat(torch.zeros(C), h, w)
        style = base.with_color(torch.as_tensor(color, dtype=torch.float32), strength)
    x_tilde = style.sample(batch_size, h, w, generator=generator, device=device, dtype=dtype)
    return x_T(x_tilde, eps, leak, scale=leak.input_scale)
