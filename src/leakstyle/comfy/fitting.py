"""Styles and colours from ComfyUI inputs: images encoded with a ComfyUI VAE.

ComfyUI's IMAGE is [B, H, W, 3] in [0, 1]; VAE.encode gives the raw latents z [B, C, h, w] (the mode). A fitted
style holds x = process_latent_in(z), the model's units, and records the model's factors (see units.py), so it
is what `leakstyle fit` writes for the same images and VAE. A colour is the raw latent means of a flat image.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path

import torch

from .. import __version__
from ..distribution import StyleDistribution
from ..encode import parse_color, solve_decoding_to
from ..errors import ImageError, LeakstyleError
from ..images import digest_paths, list_images, open_image
from ..moments import Moments
from ..sources import Batches, ImageFiles
from .units import model_units, process_in

MIN_IMAGES = 2  # an unbiased variance needs two samples
BATCH = 8


def vae_factor(vae) -> int:
    """How many pixels one latent element spans per side for a ComfyUI VAE."""
    return int(vae.spacial_compression_encode())


def new_moments(kind: str, components: int, z: torch.Tensor) -> Moments:
    _, C, H, W = z.shape
    if kind == "pixel":
        return Moments("pixel", C, H, W)
    if kind != "dct":
        raise LeakstyleError(f"unknown statistic type {kind!r}: use 'dct' or 'pixel'")
    if not 1 <= components <= H * W:
        raise LeakstyleError(f"components must be between 1 and {H * W} for {H}x{W} latents")
    return Moments.for_dct(C, H, W, components)


@torch.no_grad()
def fit_batches(batches, vae, model, kind: str, components: int, source: dict[str, str]) -> StyleDistribution:
    """Fit `kind` statistics to ComfyUI IMAGE batches [B, H, W, 3] in [0, 1], encoded with `vae`, in the units of
    `model` (x = process_latent_in(z))."""
    moments, units = None, None
    for images in batches:
        z = vae.encode(images[..., :3])
        if moments is None:
            units = model_units(model, z.shape[1])  # refuses before the first update if the units cannot be recorded
            moments = new_moments(kind, components, z)
        moments.update(process_in(model, z))
    count = 0 if moments is None else moments.count
    if count < MIN_IMAGES:
        raise ImageError(f"{count} image(s) given; fitting a variance needs at least {MIN_IMAGES}")
    return StyleDistribution.from_moments(moments, {**units, "model": model_name(model), "leakstyle_version": __version__,
                                                    **source})


def model_name(model) -> str:
    """What a style file says it was fitted for, as `leakstyle fit` names it: leakstyle/mini-sd for the embedded
    model, else nothing (a ComfyUI MODEL does not know its checkpoint's name or folder)."""
    return getattr(getattr(model, "model", None), "leakstyle_name", "")


def fit_images(images: torch.Tensor, vae, model, kind: str = "dct", components: int = 3) -> StyleDistribution:
    """A style from one IMAGE batch [B, H, W, 3] (all images the same size, as ComfyUI batches are)."""
    B, H, W, _ = images.shape
    batches = (images[i:i + BATCH] for i in range(0, B, BATCH))
    return fit_batches(batches, vae, model, kind, components, {"resolution": f"{W}x{H}", "source": "ComfyUI IMAGE"})


def fit_folder(folder: str | os.PathLike, vae, model, kind: str = "dct", components: int = 3) -> StyleDistribution:
    """A style from the images in `folder`, resized and centre-cropped to the first image's size (rounded down
    to a multiple of the VAE's factor)."""
    paths = list_images([Path(folder).expanduser()])
    if len(paths) < MIN_IMAGES:
        raise ImageError(f"found {len(paths)} image in {folder}; fitting a variance needs at least {MIN_IMAGES}")
    f = vae_factor(vae)
    width, height = open_image(paths[0]).size
    width, height = width // f * f, height // f * f
    if width == 0 or height == 0:
        raise ImageError(f"{paths[0]} is smaller than {f} pixels; use larger images")
    pixels = Batches(ImageFiles(paths), width, height, batch_size=BATCH).pixels()  # corrupt images skipped
    batches = ((p.movedim(1, -1) + 1) / 2 for p in pixels)  # [-1, 1] channels-first -> ComfyUI's [0, 1] channels-last
    return fit_batches(batches, vae, model, kind, components, {"resolution": f"{width}x{height}",
                                                        "source_digest": digest_paths(paths)})


COLOR_SIZE = 64  # as leakstyle.encode.color_to_model_units: the VAE's borders shift small images' means
_colors: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()
_colors_lock = threading.Lock()


@torch.no_grad()
def encode_color(vae, rgb: tuple[int, int, int], size: int = COLOR_SIZE) -> torch.Tensor:
    """The raw latent means [C] (float64) of a flat size x size image of `rgb` (0..255) encoded with `vae`."""
    pixels = torch.tensor(rgb, dtype=torch.float32) / 255.0
    flat = pixels.view(1, 1, 1, 3).expand(1, size, size, 3).contiguous()
    return vae.encode(flat).double().mean((0, 2, 3)).cpu()


def cached(vae, key: tuple, compute) -> torch.Tensor:
    """compute() once per (VAE object, key), kept while the VAE object lives; a copy each time."""
    with _colors_lock:
        value = _colors.get(vae, {}).get(key)
    if value is None:
        value = compute()
        with _colors_lock:
            _colors.setdefault(vae, {})[key] = value
    return value.clone()


def raw_color(vae, color: str, size: int = COLOR_SIZE) -> torch.Tensor:
    """The raw latent means [C] (float64) of a flat image of `color` ('#rrggbb') encoded with `vae` (the paper's
    colour, and `leakstyle.encode.color_to_model_units` before the model's scaling).

    Encoded once per (VAE object, colour, size): the flat image's latent is not flat near the borders (the
    miniature VAE's mean moves by up to 1 latent unit between 16 and 64 px), so a smaller image would give another
    colour, and the encode is most of what the colour node costs."""
    rgb = parse_color(color)
    return cached(vae, ("encoded", rgb, size), lambda: encode_color(vae, rgb, size))


@torch.no_grad()
def decoded_means(vae, z: torch.Tensor) -> torch.Tensor:
    """The mean pixel [N, 3] in [-1, 1] that `vae` decodes flat latents of the raw means z [N, C] to (8 x 8)."""
    flat = z.float().view(*z.shape, 1, 1).expand(*z.shape, 8, 8).contiguous()
    return vae.decode(flat).double().mean((1, 2)).cpu()[..., :3] * 2 - 1


def solved_color(vae, rgb: tuple[int, int, int], start: torch.Tensor | None = None) -> torch.Tensor:
    """The raw latent means [C] (float64) whose flat latent `vae` decodes to `rgb` (the library's
    encode.decoding_to_color with a ComfyUI VAE), worked out anew: encode.solve_decoding_to from `start`, the 64 px
    flat image's encoding (encode_color, computed here when not given)."""
    start = encode_color(vae, rgb) if start is None else start
    return solve_decoding_to(lambda z: decoded_means(vae, z), start, rgb)


def decoding_color(vae, color: str) -> torch.Tensor:
    """Calibrated colour's target, solved_color, once per (VAE object, colour); it starts from raw_color, so the
    colour's 64 px encode is shared with raw mode (one encode per VAE and colour, whichever mode asks first)."""
    rgb = parse_color(color)
    return cached(vae, ("decoding", rgb), lambda: solved_color(vae, rgb, raw_color(vae, color)))
