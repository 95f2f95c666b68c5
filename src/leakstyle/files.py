"""Reading and writing style distributions: leakstyle's one-file format and the official folder layout.

leakstyle file: one .safetensors with the official tensor names, `lf_component_indices` [n, 2] for dct,
and string metadata (format, format_version, statistic_type, space, channels, height, width, ...).
Official folder: `stats.safetensors` + `statistic_type.txt` (`pixel` or `dct+pixel`).
Loading never runs code (safetensors only) and checks everything before returning.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from . import __version__, dct
from .distribution import StyleDistribution
from .errors import LeakstyleError, StyleFileError

FORMAT_VERSION = "1"
OFFICIAL_TYPES = {"pixel": "pixel", "dct+pixel": "dct"}
PIXEL_TENSORS = ("mean_pixels", "var_pixels")
DCT_TENSORS = ("mean_lf_components", "cov_lf_components", "mean_hf_remainder", "var_hf_remainder")


# -- writing -----------------------------------------------------------------------------------------
def write_atomic(path: Path, data: bytes, force: bool = False) -> None:
    """Write bytes to `path` through a temporary file and a rename; refuse to replace a file without force."""
    path = Path(path)
    if path.exists() and not force:
        raise LeakstyleError(f"{path} already exists; pass --force to overwrite it")
    if path.is_dir():
        raise LeakstyleError(f"{path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise LeakstyleError(f"cannot write {path}: folder {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise LeakstyleError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise LeakstyleError(f"cannot write {path}: {e.strerror}") from None


def official_tensors(style: StyleDistribution) -> dict[str, torch.Tensor]:
    """The tensors under the official names (float32, contiguous)."""
    if style.kind == "pixel":
        t = {"mean_pixels": style.mean, "var_pixels": style.var}
    else:
        t = {"mean_lf_components": style.lf_mean, "cov_lf_components": style.lf_cov,
             "mean_hf_remainder": style.mean, "var_hf_remainder": style.var}
    return {k: v.float().contiguous() for k, v in t.items()}


def save(style: StyleDistribution, path: str | os.PathLike, format: str = "leakstyle", force: bool = False) -> Path:
    """Save as one leakstyle .safetensors file, or as an official folder (`format="official"`)."""
    path = Path(path)
    if format == "official":
        return save_official(style, path, force)
    if format != "leakstyle":
        raise LeakstyleError(f"unknown format {format!r}: use 'leakstyle' or 'official'")
    tensors = official_tensors(style)
    if style.kind == "dct":
        tensors["lf_component_indices"] = style.lf_indices.to(torch.int64).contiguous()
    metadata = {**{k: str(v) for k, v in style.metadata.items()},
                "format": "leakstyle", "format_version": FORMAT_VERSION, "statistic_type": style.kind,
                "channels": str(style.channels), "height": str(style.height), "width": str(style.width),
                "leakstyle_version": __version__}
    write_atomic(path, safetensors_bytes(tensors, metadata=metadata), force)
    return path


def save_official(style: StyleDistribution, folder: Path, force: bool = False) -> Path:
    """Write `stats.safetensors` and `statistic_type.txt` into `folder` (created if missing)."""
    if style.kind == "dct" and not torch.equal(style.lf_indices, dct.low_frequency_indices(style.height, style.width, style.components)):
        raise LeakstyleError("the official format implies the n lowest DCT frequencies; these statistics use others")
    if folder.exists() and not folder.is_dir():
        raise LeakstyleError(f"{folder} is a file; the official format is a folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise LeakstyleError(f"{folder} already exists and is not empty; pass --force to overwrite it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LeakstyleError(f"cannot create {folder}: {e.strerror}") from None
    write_atomic(folder / "stats.safetensors", safetensors_bytes(official_tensors(style)), force=True)
    write_atomic(folder / "statistic_type.txt", {"pixel": b"pixel", "dct": b"dct+pixel"}[style.kind], force=True)
    return folder


# -- reading -----------------------------------------------------------------------------------------
def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file, or a one-line StyleFileError."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except FileNotFoundError:
        raise StyleFileError(f"style file not found: {path}") from None
    except IsADirectoryError:
        raise StyleFileError(f"{path} is a folder without stats.safetensors and statistic_type.txt") from None
    except Exception as e:  # safetensors raises its own error types for every malformed file
        raise StyleFileError(f"{path} is not a readable safetensors file (truncated or another format): {e}") from None


def require(tensors: dict, names: tuple[str, ...], path: Path) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise StyleFileError(f"{path} lacks the tensors {', '.join(missing)}; it is not a style statistics file")


def from_tensors(kind: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> StyleDistribution:
    """Build a distribution from official tensor names; LF indices from the file or the official rule."""
    if kind == "pixel":
        require(tensors, PIXEL_TENSORS, path)
        return StyleDistribution("pixel", tensors["mean_pixels"].float(), tensors["var_pixels"].float(), metadata=metadata)
    require(tensors, DCT_TENSORS, path)
    mean, lf_mean = tensors["mean_hf_remainder"].float(), tensors["mean_lf_components"].float()
    if mean.ndim != 3 or lf_mean.ndim != 1 or lf_mean.numel() % mean.shape[0]:
        raise StyleFileError(f"{path}: low-frequency mean of {lf_mean.numel()} values does not fit {mean.shape[0]} channels")
    indices = tensors.get("lf_component_indices")
    if indices is None:
        indices = dct.low_frequency_indices(mean.shape[1], mean.shape[2], lf_mean.numel() // mean.shape[0])
    return StyleDistribution("dct", mean, tensors["var_hf_remainder"].float(), indices.to(torch.int64), lf_mean,
                             tensors["cov_lf_components"].float(), metadata)


def load(path: str | os.PathLike) -> StyleDistribution:
    """Load a leakstyle .safetensors file or an official folder (or its stats.safetensors)."""
    path = Path(path)
    if not path.exists():
        raise StyleFileError(f"style file not found: {path}")
    folder = path if path.is_dir() else path.parent
    type_file = folder / "statistic_type.txt"
    if path.is_dir() or (path.name == "stats.safetensors" and type_file.exists()):
        if not type_file.exists() or not (folder / "stats.safetensors").exists():
            raise StyleFileError(f"{folder} is not an official statistics folder (needs stats.safetensors and statistic_type.txt)")
        official = type_file.read_text(errors="replace").strip()
        if official not in OFFICIAL_TYPES:
            raise StyleFileError(f"{type_file} says {official!r}; expected 'pixel' or 'dct+pixel'")
        tensors, metadata = read_safetensors(folder / "stats.safetensors")
        return from_tensors(OFFICIAL_TYPES[official], tensors, metadata, folder)
    tensors, metadata = read_safetensors(path)
    kind = metadata.get("statistic_type")
    if kind is None:  # a bare official stats file: tell the type from the tensor names
        kind = "pixel" if "mean_pixels" in tensors else "dct"
    if kind not in ("pixel", "dct"):
        raise StyleFileError(f"{path} has unknown statistic type {kind!r}")
    return from_tensors(kind, tensors, metadata, path)


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, force: bool = False) -> Path:
    """Convert between an official folder and a leakstyle file; the tensors are copied bit for bit."""
    return save(load(src), dst, format=to, force=force)
