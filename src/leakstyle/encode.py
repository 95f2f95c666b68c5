"""Between pixels and the model's own space: VAE latents for latent models, pixels in [-1, 1] otherwise.

Latents follow the diffusers convention: z = (latent_dist.mode() - shift_factor) * scaling_factor
(shift_factor only where the VAE config has one, e.g. SD3/Flux).
"""

from __future__ import annotations

import contextlib
import inspect
import re

import torch

from .errors import LeakstyleError


def vae_of(pipe):
    """The pipeline's VAE, or None for pixel-space models (UNet2DModel + scheduler)."""
    return getattr(pipe, "vae", None) if pipe is not None else None


def vae_factors(vae) -> tuple[float, float]:
    """(scaling_factor, shift_factor) of a VAE config (shift 0 where the config has none)."""
    return float(vae.config.scaling_factor), float(getattr(vae.config, "shift_factor", None) or 0.0)


@contextlib.contextmanager
def upcast(vae):
    """The VAE in float32 inside the block where it is float16 and its config sets `force_upcast` (the SDXL VAE
    overflows to NaN in float16); as it was after the block. Yields the dtype to compute in."""
    if vae.dtype != torch.float16 or not getattr(vae.config, "force_upcast", False):
        yield vae.dtype
        return
    vae.to(torch.float32)
    try:
        yield torch.float32
    finally:
        vae.to(torch.float16)


@torch.no_grad()
def encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels [B, 3, H, W] in [-1, 1] -> latents [B, C, H/f, W/f] in model units (no sampling: the mode), in the
    VAE's dtype (computed in float32 where the VAE config asks for it, see upcast)."""
    scaling, shift = vae_factors(vae)
    dtype = vae.dtype
    with upcast(vae) as compute:
        pixels = pixels.to(device=vae.device, dtype=compute)
        return ((vae.encode(pixels).latent_dist.mode() - shift) * scaling).to(dtype)


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents [B, C, h, w] in model units -> pixels [B, 3, H, W] in [-1, 1] (clamped), in the VAE's dtype
    (computed in float32 where the VAE config asks for it, see upcast)."""
    scaling, shift = vae_factors(vae)
    dtype = vae.dtype
    with upcast(vae) as compute:
        latents = latents.to(device=vae.device, dtype=compute)
        # A temporal decoder (Stable Video Diffusion's) takes the frames as its batch and asks how many there are.
        frames = {"num_frames": len(latents)} if "num_frames" in inspect.signature(vae.decode).parameters else {}
        return vae.decode(latents / scaling + shift, **frames).sample.clamp(-1, 1).to(dtype)


def parse_color(color: str) -> tuple[int, int, int]:
    """'#rrggbb' (or 'rrggbb', '#rgb') -> (r, g, b) in 0..255."""
    m = re.fullmatch(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})", color.strip())
    if not m:
        raise LeakstyleError(f"colour {color!r} is not of the form '#rrggbb'")
    h = m.group(1)
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    return tuple(int(h[i:i + 2], 16) for i in (0, 2, 4))


def to_hex(rgb) -> str:
    return "#" + "".join(f"{int(round(min(max(float(c), 0), 255))):02x}" for c in rgb)


def color_to_model_units(pipe, color: str | tuple[int, int, int], size: int = 64) -> torch.Tensor:
    """The per-channel mean [C] that a flat image of `color` has in the model's space.

    Latent models: encode a flat size x size image of that colour and average the latent."""
    rgb = parse_color(color) if isinstance(color, str) else tuple(color)
    pixels = torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1.0
    vae = vae_of(pipe)
    if vae is None:
        return pixels
    flat = pixels.view(1, 3, 1, 1).expand(1, 3, size, size)
    return encode(vae, flat).float().mean((0, 2, 3)).cpu()


def model_units_to_rgb(vae, channel_means: torch.Tensor, size: int = 8) -> tuple[int, int, int]:
    """The mean RGB colour (0..255) a flat latent of `channel_means` [C] decodes to (pixels as-is without VAE)."""
    if vae is None:
        pixels = channel_means.float().view(-1)[:3]
    else:
        flat = channel_means.float().view(1, -1, 1, 1).expand(1, -1, size, size)
        pixels = decode(vae, flat).float().mean((0, 2, 3)).cpu()
    return tuple(int(round(v)) for v in ((pixels.clamp(-1, 1) + 1) * 127.5).tolist())


def solve_decoding_to(decoded, z: torch.Tensor, rgb: tuple[int, int, int], iterations: int = 3, step: float = 0.05,
                      damping: float = 1e-4, tolerance: float = 0.5) -> torch.Tensor:
    """The per-channel means [C] near `z` whose flat latent decodes to `rgb`, `decoded` mapping means [N, C] to the
    decoded mean pixels [N, 3] in [-1, 1] (float64) of their flat latents.

    Damped Gauss-Newton on the decoded mean colour d(z), its Jacobian J [3, C] by forward differences of `step`:
    z <- z + J^T (J J^T + damping I)^-1 (rgb - d(z)) (the smallest change: C unknowns for 3 equations), or the half
    or quarter step when the full one does not decode closer (tried in that order, one decode each). It stops when
    the decoded colour is within `tolerance` grey levels (0..255, Euclidean over R, G, B) of rgb, after
    `iterations` steps, or when no step helps, so a VAE that cannot make the colour (random weights) keeps z.
    Typically one step: C + 1 decodes for the Jacobian and one for the step."""
    want = torch.tensor(rgb, dtype=torch.float64) / 127.5 - 1.0
    shifts = step * torch.eye(len(z), dtype=z.dtype)
    close_enough = tolerance / 127.5
    out = decoded(torch.cat([z[None], z[None] + shifts]))
    at_z = out[0]
    for i in range(iterations):
        r = want - at_z
        if r.norm() <= close_enough:
            break
        if i > 0:
            out = torch.cat([at_z[None], decoded(z[None] + shifts)])
        J = ((out[1:] - out[0]) / step).T  # [3, C]
        dz = (J.T @ torch.linalg.solve(J @ J.T + damping * torch.eye(3, dtype=J.dtype), r)).to(z.dtype)
        for f in (1.0, 0.5, 0.25):
            at_try = decoded((z + f * dz)[None])[0]
            if (want - at_try).norm() < r.norm():
                z, at_z = z + f * dz, at_try
                break
        else:
            break
    return z


def decoding_to_color(pipe, color: str | tuple[int, int, int]) -> torch.Tensor:
    """The per-channel mean [C] (model units) whose flat latent the pipeline's VAE decodes to `color`.

    The encoding of a flat image (color_to_model_units) does not decode back to the colour exactly (a flat #505050
    comes back as #574e54 from the embedded model's VAE); solve_decoding_to corrects it, starting there.
    Pixel-space models: the colour's pixels."""
    rgb = parse_color(color) if isinstance(color, str) else tuple(color)
    z = color_to_model_units(pipe, rgb)
    vae = vae_of(pipe)
    if vae is None:
        return z

    def decoded(latents: torch.Tensor) -> torch.Tensor:  # [N, C] -> mean pixels [N, 3]
        flat = latents.float().view(*latents.shape, 1, 1).expand(*latents.shape, 8, 8)
        return decode(vae, flat).double().mean((2, 3)).cpu()

    return solve_decoding_to(decoded, z, rgb)
