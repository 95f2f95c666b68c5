"""Fitting a style distribution to images: images -> (VAE) -> streaming moments -> StyleDistribution."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from . import __version__
from .distribution import StyleDistribution
from .encode import encode, vae_factors, vae_of
from .errors import ImageError, LeakstyleError
from .images import ImageBatches, digest_paths, list_images, open_image, parse_resolution
from .leak import image_size, vae_factor
from .loading import EMBEDDED_MODEL, EMBEDDED_NAME
from .moments import Moments

MIN_IMAGES = 2  # an unbiased variance needs two samples


class SkippedImagesWarning(UserWarning):
    """Some images could not be read and were left out of the fit."""


def model_name(pipe) -> str:
    """The model a style is fitted for, as its file records it: the hub id or folder the pipeline was loaded from,
    or `leakstyle/mini-sd` for the embedded model (its absolute install path differs between machines)."""
    name = str(getattr(pipe, "name_or_path", None) or getattr(pipe.config, "_name_or_path", "") or "")
    if name and Path(name).resolve() == EMBEDDED_MODEL.resolve():
        return EMBEDDED_NAME
    return name


def default_resolution(pipe) -> tuple[int, int]:
    """The model's native image size (width, height) in pixels."""
    if pipe is None:
        raise LeakstyleError("give --resolution when fitting pixel statistics without a model")
    height, width = image_size(pipe)
    return width, height


def tensor_size(width: int, height: int, factor: int, components: int | None) -> tuple[int, int]:
    """(H, W) of the fitted tensors for a width x height pixel resolution; refuses sizes that cannot be fitted.

    A VAE maps f x f pixels to one latent element, so both sides must be positive multiples of f; a DCT fit
    of n components needs at least n elements per channel."""
    if width % factor or height % factor:
        lower = lambda v: max(factor, v // factor * factor)  # noqa: E731
        raise LeakstyleError(f"--resolution {width}x{height} is not a multiple of this model's VAE factor {factor}; "
                             f"use e.g. {lower(width)}x{lower(height)}")
    H, W = height // factor, width // factor
    if components is not None and not 1 <= components <= H * W:
        raise LeakstyleError(f"--components must be between 1 and {H * W} for {H}x{W} tensors "
                             f"(resolution {width}x{height}); use fewer components or a larger --resolution")
    return H, W


def fit(images: str | os.PathLike | Sequence[str | os.PathLike], pipe=None, kind: str = "dct", components: int = 3,
        resolution: int | str | tuple[int, int] | None = None, space: str | None = None, random_crop: bool = False,
        flip: bool = False, batch_size: int = 8, seed: int = 0, strict: bool = False,
        progress: bool = True) -> StyleDistribution:
    """Fit `kind` ("pixel" or "dct" with `components`) statistics to images in the model's space.

    `space` is "latent" (encode with the pipeline's VAE; the default for latent models) or "pixel"
    (pixels in [-1, 1]; the default for pixel-space models). `resolution` is R, "WxH" or (W, H) in pixels,
    the model's native size by default. Images are resized to cover it and cropped (centre, or random with
    `random_crop`; `flip` mirrors at random). Corrupt images are skipped with a SkippedImagesWarning
    (an ImageError with strict=True). Memory stays flat: only running float64 sums are kept.
    """
    if kind not in ("pixel", "dct"):
        raise LeakstyleError(f"unknown statistic type {kind!r}: use 'pixel' or 'dct'")
    vae = vae_of(pipe)
    space = space or ("latent" if vae is not None else "pixel")
    if space not in ("latent", "pixel"):
        raise LeakstyleError(f"unknown space {space!r}: use 'latent' or 'pixel'")
    if space == "latent" and vae is None:
        raise LeakstyleError("latent statistics need a model with a VAE; use --space pixel for pixel-space models")
    if resolution is None:
        width, height = default_resolution(pipe)
    elif isinstance(resolution, tuple):
        width, height = parse_resolution(f"{resolution[0]}x{resolution[1]}")
    else:
        width, height = parse_resolution(resolution)
    tensor_size(width, height, vae_factor(pipe) if space == "latent" else 1, components if kind == "dct" else None)
    paths = list_images([images] if isinstance(images, (str, os.PathLike)) else images)
    if len(paths) < MIN_IMAGES:
        for path in paths:
            open_image(path)  # an unreadable one says that it cannot be read, not only that there are too few
        raise ImageError(f"found {len(paths)} image; fitting a variance needs at least {MIN_IMAGES} images")
    batches = ImageBatches(paths, width, height, batch_size=batch_size, random_crop=random_crop, flip=flip,
                           seed=seed, strict=strict)
    moments = None
    with tqdm(total=len(paths), unit="img", desc="fit", disable=not progress, leave=False) as bar:
        for pixels in batches:
            x = encode(vae, pixels) if space == "latent" else pixels
            if moments is None:
                _, C, H, W = x.shape
                if kind == "dct":
                    moments = Moments.for_dct(C, H, W, components)
                else:
                    moments = Moments("pixel", C, H, W)
            moments.update(x)
            bar.update(len(pixels))
    if batches.skipped:
        first, reason = batches.skipped[0]
        warnings.warn(f"skipped {len(batches.skipped)} of {len(paths)} images that could not be read "
                      f"(first: {first}: {reason})", SkippedImagesWarning, stacklevel=2)
    count = 0 if moments is None else moments.count
    if count < MIN_IMAGES:
        raise ImageError(f"only {count} readable image(s); fitting a variance needs at least {MIN_IMAGES}")
    skipped = {path for path, _ in batches.skipped}
    read = [path for path in paths if path not in skipped]  # a skipped file stays skipped
    metadata = {"space": space, "model": model_name(pipe) if pipe is not None else "",
                "resolution": f"{width}x{height}", "source_digest": digest_paths(read),
                "leakstyle_version": __version__}
    if space == "latent":
        scaling, shift = vae_factors(vae)
        metadata.update(scaling_factor=repr(scaling), shift_factor=repr(shift))
    return StyleDistribution.from_moments(moments, metadata)


def merge(styles: Sequence[StyleDistribution]) -> StyleDistribution:
    """One distribution from several fitted apart on shards of the same image set (same type and shape)."""
    if not styles:
        raise LeakstyleError("nothing to merge")
    first = styles[0]
    moments = first.to_moments()
    for s in styles[1:]:
        if s.metadata.get("space") != first.metadata.get("space"):
            raise LeakstyleError("cannot merge statistics fitted in different spaces")
        try:
            moments.merge(s.to_moments())
        except ValueError as e:
            raise LeakstyleError(str(e)) from None
    metadata = {k: v for k, v in first.metadata.items() if k not in ("format", "format_version", "statistic_type")}
    metadata["source_digest"] = "+".join(s.metadata.get("source_digest", "") for s in styles)
    return StyleDistribution.from_moments(moments, metadata)
