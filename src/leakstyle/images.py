"""Image inputs: user paths -> decoded RGB images -> pixels in [-1, 1] (sources.Batches batches them for fitting)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import struct
import warnings
import zlib
from collections.abc import Sequence
from typing import BinaryIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from leakstyle.errors import ImageError

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})

_SUFFIX_LIST = ", ".join(sorted(IMAGE_SUFFIXES))
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class CorruptImageError(ImageError):
    """An image file that cannot be decoded; skipped unless strict, so ``path`` and ``reason`` are kept."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot decode image {path}: {reason}; replace or remove the file")
        self.path = path
        self.reason = reason


def parse_resolution(value: str | int) -> tuple[int, int]:
    """Parse ``64`` or ``'64'`` into (64, 64) and ``'96x64'`` into (width=96, height=64)."""
    if isinstance(value, int) and not isinstance(value, bool):
        width = height = value
    elif isinstance(value, str) and (match := re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", value)):
        width = int(match[1])
        height = int(match[2]) if match[2] is not None else width
    else:
        raise ImageError(f"invalid resolution {value!r}: give a size like 64 or WIDTHxHEIGHT like 96x64")
    if width <= 0 or height <= 0:
        raise ImageError(f"invalid resolution {value!r}: width and height must be positive")
    return width, height


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _images_in_folder(folder: Path) -> list[Path]:
    """All image files under ``folder``, recursively, skipping hidden files and folders."""
    files: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [Path(root, n) for n in names if not n.startswith(".")]
    if not files:
        raise ImageError(f"folder {folder} is empty; put images in it or pass another folder")
    images = [f for f in files if _is_image(f)]
    if not images:
        raise ImageError(f"no images ({_SUFFIX_LIST}) in folder {folder}; add some or pass another folder")
    return images


def list_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted, de-duplicated list of absolute image paths."""
    found: set[Path] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found.update(_images_in_folder(path))
        elif path.is_file():
            if not _is_image(path):
                raise ImageError(f"{path} is not an image: use files ending in {_SUFFIX_LIST}")
            found.add(path)
        elif path.exists():
            raise ImageError(f"{path} is neither a file nor a folder; pass image files or folders")
        else:
            raise ImageError(f"no such file or folder: {path}")
    if not found:
        raise ImageError("no images given; pass image files or folders")
    return sorted({Path(os.path.abspath(p)) for p in found})


def digest_paths(paths: Sequence[Path]) -> str:
    """Short sha256 hex digest of the sorted (file name, size) pairs, to record which images were used."""
    try:
        entries = sorted((Path(p).name, Path(p).stat().st_size) for p in paths)
    except OSError as exc:
        raise ImageError(f"cannot read the size of an image: {exc}") from exc
    text = "".join(f"{name}\t{size}\n" for name, size in entries)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """Scale a 16-bit greyscale image (0..65535) to 8 bits (0..255) by rounding v / 257."""
    values = np.asarray(image).astype(np.float64).clip(0, 65535)
    grey = np.rint(values / 257.0).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any decoded image to 8-bit RGB; transparent parts are composited on white."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _bomb_error(path: Path, exc: Exception) -> ImageError:
    match = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(match[1]):,} pixels" if match else str(exc)
    return ImageError(
        f"image {path} is too large ({size}, PIL's limit is {Image.MAX_IMAGE_PIXELS:,}) and may be a "
        "decompression bomb; shrink it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
    )


def open_image(path: Path) -> Image.Image:
    """Open and fully decode one image as 8-bit RGB, upright (EXIF orientation applied).

    Uses ``warnings.catch_warnings``, which is process-global: call it from one thread at a time.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise CorruptImageError(path, "a symbolic link to nothing (broken, or a loop)")
    return decode_image(path, path)


def decode_image(file: Path | BinaryIO, path: Path | str) -> Image.Image:
    """open_image for a file path or an open binary file (a tar member, a dataset's bytes); `path` names it in errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with (open(file, "rb") if isinstance(file, Path) else contextlib.nullcontext(file)) as opened, \
                    Image.open(opened) as image:
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(path, exc) from exc
    except UnidentifiedImageError as exc:
        raise CorruptImageError(path, "not an image in a format Pillow can read") from exc
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(path, str(exc) or type(exc).__name__) from exc


def resize_and_crop(
    image: Image.Image,
    width: int,
    height: int,
    random_crop: bool = False,
    flip: bool = False,
    rng: random.Random | None = None,
) -> Image.Image:
    """Resize (Lanczos) to cover width x height keeping the aspect ratio, then crop to exactly that size.

    The crop is centred, or at a uniformly random offset with ``random_crop``; ``flip`` mirrors
    horizontally with probability 0.5. Both draw from ``rng`` (``random.Random(0)`` when None).
    """
    rng = rng if rng is not None else random.Random(0)
    scale = max(width / image.width, height / image.height)
    crop_w, crop_h = min(width / scale, image.width), min(height / scale, image.height)
    spare_w, spare_h = image.width - crop_w, image.height - crop_h
    if random_crop:
        left, top = rng.uniform(0, spare_w), rng.uniform(0, spare_h)
    else:
        left, top = spare_w / 2, spare_h / 2
    box = (left, top, left + crop_w, top + crop_h)
    out = image.resize((width, height), Image.Resampling.LANCZOS, box=box)
    if flip and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB uint8 image -> float32 tensor [3, H, W] in [-1, 1], as x / 127.5 - 1."""
    if image.mode != "RGB":
        raise ValueError(f"to_tensor expects an RGB image, got mode {image.mode!r}")
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    return pixels.permute(2, 0, 1).float().div(127.5).sub(1.0).contiguous()


def image_rng(seed: int, index: int) -> random.Random:
    """The random source of image `index`'s crop and flip: keyed by the image's place in the whole input list,
    so that a seed gives every image the same crop however the list is batched, skipped or split across processes."""
    return random.Random(f"{seed}/{index}")

