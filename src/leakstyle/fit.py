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
from . import distributed
from .images import open_image, parse_resolution
from .leak import image_size, vae_factor
from .loading import EMBEDDED_MODEL, EMBEDDED_NAME
from .moments import Moments
from .sources import Batches, ImageFiles, Inputs, Source

MIN_IMAGES = 2  # an unbiased variance needs two samples


class SkippedImagesWarning(UserWarning):
    """Some images could not be read and were left out of the fit."""


class SameImagesWarning(UserWarning):
    """Styles merged were fitted to the same images, which the merge then counts more than once."""


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


def fit_options(pipe, kind: str, components: int, resolution: int | str | tuple[int, int] | None,
                space: str | None) -> tuple[str, int, int]:
    """(space, width, height) of a fit with these options, refused in one line where they cannot be fitted;
    checked before any image is read (the CLI calls it before it lists the inputs)."""
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
    return space, width, height


def fit(images: str | os.PathLike | Sequence[str | os.PathLike], pipe=None, kind: str = "dct", components: int = 3,
        resolution: int | str | tuple[int, int] | None = None, space: str | None = None, random_crop: bool = False,
        flip: bool = False, batch_size: int = 8, seed: int = 0, strict: bool = False,
        progress: bool = True, workers: int = 0) -> StyleDistribution:
    """Fit `kind` ("pixel" or "dct" with `components`) statistics to images in the model's space.

    `images`: files, folders, `@list` files or tar shards (see sources.inputs), or a sources.Source such as
    sources.HubDataset. `workers` DataLoader processes decode images in parallel (0: this process). Under torchrun
    or accelerate launch each process fits its share and the moments are all-reduced: every process returns the
    whole set's distribution (see distributed.combine).

    `space` is "latent" (encode with the pipeline's VAE; the default for latent models) or "pixel"
    (pixels in [-1, 1]; the default for pixel-space models). `resolution` is R, "WxH" or (W, H) in pixels,
    the model's native size by default. Images are resized to cover it and cropped (centre, or random with
    `random_crop`; `flip` mirrors at random). Corrupt images are skipped with a SkippedImagesWarning
    (an ImageError with strict=True). Memory stays flat: only running float64 sums are kept.
    """
    space, width, height = fit_options(pipe, kind, components, resolution, space)
    vae = vae_of(pipe)
    if not isinstance(images, Source):
        images = Inputs([images] if isinstance(images, (str, os.PathLike)) else list(images))
    source = images.listed()
    if source.size is not None and source.size < MIN_IMAGES:
        for path in source.paths if isinstance(source, ImageFiles) else ():
            open_image(path)  # an unreadable one says that it cannot be read, not only that there are too few
        raise ImageError(f"found {source.size} image; fitting a variance needs at least {MIN_IMAGES} images")
    processes = distributed.from_env()
    distributed.join(processes, vae.device if space == "latent" else torch.device("cpu"))
    batches = Batches(source, width, height, batch_size=batch_size, random_crop=random_crop, flip=flip, seed=seed,
                      strict=strict, workers=workers, rank=processes.rank, world=processes.world_size)
    moments, error = None, None
    total = None if source.size is None else len(range(processes.rank, source.size, processes.world_size))
    with tqdm(total=total, unit="img", desc="fit", disable=not progress or not processes.is_main, leave=False) as bar:
        try:
            moments = accumulate(batches, vae if space == "latent" else None, kind, components, bar)
        except LeakstyleError as e:
            if processes.world_size == 1:
                raise
            error = e  # the other processes raise it too, instead of waiting for this one's moments
    moments, skipped = distributed.combine(moments, batches.skipped, error, kind, components, processes)
    count = 0 if moments is None else moments.count
    if count == 0 and skipped:
        raise ImageError(f"none of the {len(skipped)} images could be decoded (first: {skipped[0][0]}: {skipped[0][1]})")
    if skipped and processes.is_main:
        warnings.warn(f"skipped {len(skipped)} of {count + len(skipped)} images that could not be read "
                      f"(first: {skipped[0][0]}: {skipped[0][1]})", SkippedImagesWarning, stacklevel=2)
    if count < MIN_IMAGES:
        raise ImageError(f"only {count} readable image(s); fitting a variance needs at least {MIN_IMAGES}")
    metadata = {"space": space, "model": model_name(pipe) if pipe is not None else "",
                "resolution": f"{width}x{height}", "source_digest": source.digest({name for name, _ in skipped}),
                "leakstyle_version": __version__}
    if space == "latent":
        scaling, shift = vae_factors(vae)
        metadata.update(scaling_factor=repr(scaling), shift_factor=repr(shift))
    return StyleDistribution.from_moments(moments, metadata)


def accumulate(batches: Batches, vae, kind: str, components: int, bar=None) -> Moments | None:
    """Streaming moments of the batches, encoded with `vae` (None: the pixels as they are); None without images."""
    moments = None
    for pixels, read in batches:
        if pixels is not None:
            x = encode(vae, pixels) if vae is not None else pixels
            if moments is None:
                _, C, H, W = x.shape
                moments = Moments.for_dct(C, H, W, components) if kind == "dct" else Moments("pixel", C, H, W)
            moments.update(x)
        if bar is not None:
            bar.update(read)
    return moments


def merge(styles: Sequence[StyleDistribution]) -> StyleDistribution:
    """One distribution from several fitted apart on shards of the same image set (same type and shape)."""
    if not styles:
        raise LeakstyleError("nothing to merge")
    first = styles[0]
    digests = [s.metadata.get("source_digest", "") for s in styles]
    for j, digest in enumerate(digests):
        i = digests.index(digest)
        if digest and i < j:
            warnings.warn(f"styles {i + 1} and {j + 1} were fitted to the same images (the same source digest); "
                          f"merged, those images count twice", SameImagesWarning, stacklevel=2)
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
