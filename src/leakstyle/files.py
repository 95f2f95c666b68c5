"""Reading and writing style distributions: leakstyle's one-file format and the official folder layout.

leakstyle file: one .safetensors with the official tensor names, `lf_component_indices` [n, 2] for dct,
and string metadata (format, format_version, statistic_type, space, channels, height, width, ...).
Official folder: `stats.safetensors` + `statistic_type.txt` (`pixel` or `dct+pixel`). The official loader
reads only those two (tensors by name), so leakstyle records the order of the low-frequency components in
the metadata of `stats.safetensors` (`lf_component_indices`, "u,v;u,v;..."), where it is ignored.

Reading never runs code (safetensors only) and checks everything before returning:
- Statistic tensors must be floating point: float16, bfloat16 and float64 are cast to float32 (what every
  computation uses); integer, bool and other types are refused. Component indices must be integers.
- Metadata must agree with the tensors (statistic_type, channels, height, width, space); values beyond
  `distribution.MAX_MODEL_UNITS` are refused as not a style of any real model.
- An official folder with n >= 2 components and no recorded order is read in the order of the published
  reference files, (0,0), (0,1), (1,0), ..., with a LowFrequencyOrderWarning, since the official code orders
  tied frequencies with numpy's unstable argsort, which differs between machines; `lf_order` gives another.

Writing is atomic and never replaces anything without `force`:
- A file is written to a temporary file beside it and hard-linked into place (exclusive: of two writers
  without force, the second gets "already exists"), or renamed over the old file with force.
- A folder is written complete beside the target and renamed into place; with force the old folder is
  replaced only after the new one is complete.
- New files follow the umask (0666 & ~umask, folders 0777 & ~umask) like any program's outputs; a replaced
  file or folder keeps its permission bits.
- The bytes are deterministic: equal statistics and metadata give equal files (see safetensors_bytes).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from . import __version__, dct
from .distribution import StyleDistribution
from .errors import LeakstyleError, StyleFileError

FORMAT_VERSION = "1"
OFFICIAL_TYPES = {"pixel": "pixel", "dct+pixel": "dct"}
PIXEL_TENSORS = ("mean_pixels", "var_pixels")
DCT_TENSORS = ("mean_lf_components", "cov_lf_components", "mean_hf_remainder", "var_hf_remainder")
ORDER_KEY = "lf_component_indices"  # the tensor in leakstyle files, the metadata entry in official folders
FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTEGER_TYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


class LowFrequencyOrderWarning(UserWarning):
    """An official folder does not record the order of its low-frequency components, so one is assumed."""


# -- writing -----------------------------------------------------------------------------------------
def beside(path: Path, suffix: str) -> Path:
    """A hidden name in path's folder that nothing else uses (`.name.<random>.suffix`)."""
    return path.parent / f".{path.name}.{secrets.token_hex(6)}.{suffix}"


def write_new_file(path: Path, data: bytes, mode: int | None = None) -> None:
    """Create `path` (it must not exist) with `data`, flushed to disk; mode None follows the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if mode is not None:
        os.chmod(path, mode)


def permissions(path: Path) -> int | None:
    """The permission bits of an existing file or folder (None if there is none)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


def link_exclusive(tmp: Path, path: Path) -> None:
    """Put the finished `tmp` at `path` only if nothing is there: a hard link, which fails if `path` exists.

    On filesystems without hard links (FAT, some network shares) `path` is claimed with O_EXCL first and the
    finished file renamed over that claim: still exclusive, but an empty file is visible for a moment."""
    try:
        os.link(tmp, path)
    except OSError as e:
        if e.errno not in NO_HARD_LINKS:
            raise
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            os.replace(tmp, path)
        except OSError:
            path.unlink(missing_ok=True)
            raise


def write_atomic(path: str | os.PathLike, data: bytes, force: bool = False) -> None:
    """Write bytes to `path` complete or not at all; refuse to replace a file without force.

    The final step is exclusive without force (two writers: the second gets "already exists"). A new file
    follows the umask; a replaced one keeps its permission bits."""
    path = Path(path)
    if path.is_dir():
        raise LeakstyleError(f"{path} is a folder; give a file name")
    if path.exists() and not force:
        raise LeakstyleError(f"{path} already exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise LeakstyleError(f"cannot write {path}: folder {path.parent} does not exist")
    tmp = beside(path, "tmp")
    try:
        write_new_file(tmp, data, mode=permissions(path) if force else None)
        if force:
            os.replace(tmp, path)
        else:
            link_exclusive(tmp, path)
    except FileExistsError:
        raise LeakstyleError(f"{path} already exists (written meanwhile by another process); pass --force to "
                             f"overwrite it") from None
    except OSError as e:
        raise LeakstyleError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_folder_atomic(folder: str | os.PathLike, contents: dict[str, bytes], force: bool = False) -> None:
    """Write the folder `folder` holding `contents` {file name: bytes}, complete or not at all.

    The folder is written beside the target and renamed into place (an empty existing folder is taken
    over). With force a folder of the same file names is replaced, only once the new one is complete,
    and keeps its permission bits; a folder holding other files is never replaced."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LeakstyleError(f"{folder} is a file; give a folder name")
    old = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if old and not force:
        raise LeakstyleError(f"{folder} already exists and is not empty; pass --force to overwrite it")
    others = [name for name in old if name not in contents]
    if others:
        raise LeakstyleError(f"{folder} holds other files ({', '.join(others[:3])}); --force replaces only a folder "
                             f"of {' and '.join(contents)}: choose another folder")
    if not folder.parent.is_dir():
        raise LeakstyleError(f"cannot write {folder}: folder {folder.parent} does not exist")
    tmp = beside(folder, "tmp")
    try:
        os.mkdir(tmp, 0o777)
        if old:
            os.chmod(tmp, permissions(folder))
        for name, data in contents.items():
            write_new_file(tmp / name, data, mode=permissions(folder / name))
        if old:
            replace_folder(tmp, folder)
        else:
            os.rename(tmp, folder)  # fails if another writer has filled `folder` meanwhile
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise LeakstyleError(f"{folder} already exists (written meanwhile by another process); pass --force to "
                                 f"overwrite it") from None
        raise LeakstyleError(f"cannot write {folder}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(new: Path, folder: Path) -> None:
    """Swap the complete folder `new` in for `folder`: move the old one aside, rename, then delete the old one."""
    aside = beside(folder, "old")
    os.rename(folder, aside)
    try:
        os.rename(new, folder)
    except OSError:
        os.rename(aside, folder)
        raise
    try:
        shutil.rmtree(aside)
    except OSError as e:
        raise LeakstyleError(f"wrote {folder}, but could not remove the old copy at {aside}: {e.strerror}") from None


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors serialization of `tensors` and `metadata`, the same bytes for the same input.

    safetensors' writer keeps metadata in a Rust HashMap, whose order is random at every call, while its
    tensor entries come in a fixed order. So the tensors are serialized without metadata and the JSON
    header is rewritten with `__metadata__` first, keys sorted (padded with spaces to 8 bytes, as safetensors does)."""
    raw = safetensors_save(tensors)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    if metadata:
        header = {"__metadata__": dict(sorted(metadata.items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


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
        tensors[ORDER_KEY] = style.lf_indices.to(torch.int64).contiguous()
    metadata = {**{k: str(v) for k, v in style.metadata.items()},
                "format": "leakstyle", "format_version": FORMAT_VERSION, "statistic_type": style.kind,
                "channels": str(style.channels), "height": str(style.height), "width": str(style.width),
                "leakstyle_version": __version__}
    write_atomic(path, safetensors_bytes(tensors, metadata), force)
    return path


def save_official(style: StyleDistribution, folder: Path, force: bool = False) -> Path:
    """Write the folder `folder` with `stats.safetensors` and `statistic_type.txt` (its parent must exist)."""
    metadata = None
    if style.kind == "dct":
        check_official_order(style.lf_indices, style.height, style.width, "these statistics")
        metadata = {ORDER_KEY: format_lf_order(style.lf_indices)}
    write_folder_atomic(folder, {"stats.safetensors": safetensors_bytes(official_tensors(style), metadata),
                                 "statistic_type.txt": {"pixel": b"pixel", "dct": b"dct+pixel"}[style.kind]}, force)
    return folder


# -- the order of low-frequency components ------------------------------------------------------------
def parse_lf_order(text: str) -> torch.Tensor:
    """'0,0;1,0;0,1' -> [[0, 0], [1, 0], [0, 1]] as [n, 2] int64: (u, v) pairs, u along the height."""
    pairs = [p.strip() for p in str(text).split(";") if p.strip()]
    if not pairs or not all(re.fullmatch(r"\d+\s*,\s*\d+", p) for p in pairs):
        raise LeakstyleError(f"low-frequency order {text!r} is not a list of u,v pairs like '0,0;1,0;0,1'")
    return torch.tensor([[int(x) for x in p.split(",")] for p in pairs], dtype=torch.int64)


def format_lf_order(indices: torch.Tensor) -> str:
    """[n, 2] -> 'u,v;u,v;...', the syntax parse_lf_order reads."""
    return ";".join(f"{u},{v}" for u, v in indices.tolist())


def as_lf_order(order: str | Sequence[Sequence[int]] | torch.Tensor) -> torch.Tensor:
    """An order given as 'u,v;...', a list of (u, v) pairs or a tensor, as [n, 2] int64."""
    if isinstance(order, str):
        return parse_lf_order(order)
    t = torch.as_tensor(order)
    if t.ndim != 2 or t.shape[1] != 2 or t.dtype not in INTEGER_TYPES:
        raise LeakstyleError(f"low-frequency order must be a list of (u, v) integer pairs, got {order!r}")
    return t.to(torch.int64)


def check_official_order(indices: torch.Tensor, height: int, width: int, what: str) -> None:
    """Official statistics hold the n lowest frequencies by radius, ties in some order: refuse anything else."""
    n = len(indices)
    pairs = {tuple(p) for p in indices.tolist()}
    u, v = indices[:, 0], indices[:, 1]
    if len(pairs) != n or ((u < 0) | (u >= height) | (v < 0) | (v >= width)).any():
        raise StyleFileError(f"{what}: low-frequency order {format_lf_order(indices)} must name {n} different "
                             f"(u, v) pairs inside the {height}x{width} grid")
    lowest = dct.low_frequency_indices(height, width, n).double()
    if not torch.equal(indices.double().norm(dim=1).sort().values, lowest.norm(dim=1).sort().values):
        raise StyleFileError(f"{what}: low-frequency order {format_lf_order(indices)} is not the {n} lowest "
                             f"frequencies, which the official format implies")


def official_order(n: int, height: int, width: int, metadata: dict[str, str], lf_order, path: Path) -> torch.Tensor:
    """The component order of official statistics: recorded by leakstyle, given, or assumed with a warning."""
    if ORDER_KEY in metadata:
        indices = parse_lf_order(metadata[ORDER_KEY])
        if lf_order is not None and not torch.equal(as_lf_order(lf_order), indices):
            raise StyleFileError(f"{path} records its component order {format_lf_order(indices)}; a given order "
                                 f"applies only to official statistics that record none")
    elif lf_order is not None:
        indices = as_lf_order(lf_order)
    else:
        indices = dct.low_frequency_indices(height, width, n)
        if n >= 2:
            radius = np.sqrt(np.add.outer(np.arange(height) ** 2, np.arange(width) ** 2)).flatten()
            here = np.argsort(radius)[:n]  # what the official code writes on this machine
            numpy_order = format_lf_order(torch.from_numpy(np.stack([here // width, here % width], axis=1)))
            note = "" if numpy_order == format_lf_order(indices) else f"; numpy's argsort gives {numpy_order} here"
            warnings.warn(f"{path} does not record the order of its {n} low-frequency components: assuming "
                          f"{format_lf_order(indices)}, the published reference files' order (the official code "
                          f"orders ties with numpy's argsort, which differs between machines{note}); give another "
                          f"with --lf-order 'u,v;u,v;...' (API: lf_order=)", LowFrequencyOrderWarning, stacklevel=5)
    if len(indices) != n:
        raise StyleFileError(f"{path} has {n} low-frequency components, but the order names {len(indices)}")
    check_official_order(indices, height, width, str(path))
    return indices


# -- reading -----------------------------------------------------------------------------------------
def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file, or a one-line StyleFileError."""
    if path.is_dir():
        raise StyleFileError(f"{path} is a folder; expected a safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except FileNotFoundError:
        raise StyleFileError(f"style file not found: {path}") from None
    except Exception as e:  # safetensors raises its own error types for every malformed file
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StyleFileError(f"{path} is not a readable safetensors file (truncated or another format): {first_line}") from None


def require(tensors: dict, names: tuple[str, ...], path: Path) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise StyleFileError(f"{path} lacks the tensors {', '.join(missing)}; it is not a style statistics file")


def statistic(tensors: dict[str, torch.Tensor], name: str, path: Path) -> torch.Tensor:
    """A statistic tensor as float32: float16/bfloat16/float64 are cast, other types refused."""
    t = tensors[name]
    if t.dtype not in FLOAT_TYPES:
        raise StyleFileError(f"{path}: {name} holds {str(t.dtype).removeprefix('torch.')} values; style statistics "
                             f"are float16, bfloat16, float32 or float64")
    return t.float()


def check_metadata(metadata: dict[str, str], style: StyleDistribution, path: Path) -> None:
    """Refuse metadata that contradicts the tensors, or a leakstyle format newer than this version reads."""
    version = metadata.get("format_version")
    if metadata.get("format") == "leakstyle" and version is not None and (not version.isdigit() or int(version) > int(FORMAT_VERSION)):
        raise StyleFileError(f"{path} has format version {version!r}; this leakstyle reads version {FORMAT_VERSION}: "
                             f"upgrade leakstyle")
    for key, actual in (("channels", style.channels), ("height", style.height), ("width", style.width)):
        if key in metadata and metadata[key] != str(actual):
            raise StyleFileError(f"{path} says {key} {metadata[key]!r} but its tensors have {actual}; the file is corrupt")
    space = metadata.get("space", "")
    if space not in ("", "latent", "pixel"):
        raise StyleFileError(f"{path} says space {space!r}; expected 'latent' or 'pixel'")
    if space == "pixel" and style.channels != 3:
        raise StyleFileError(f"{path} says space 'pixel' (RGB) but its tensors have {style.channels} channels; "
                             f"the file is corrupt")


def from_tensors(kind: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path,
                 lf_order=None) -> StyleDistribution:
    """Build a distribution from official tensor names; LF order from the file's own record, or as official_order says."""
    held = "pixel" if all(n in tensors for n in PIXEL_TENSORS) else "dct" if all(n in tensors for n in DCT_TENSORS) else None
    if held is not None and held != kind:
        raise StyleFileError(f"{path} says statistic type {kind!r} but holds {held} tensors; the file is corrupt")
    if kind == "pixel":
        require(tensors, PIXEL_TENSORS, path)
        if lf_order is not None:
            raise StyleFileError(f"{path} holds pixel statistics, which have no low-frequency components: drop the order")
        return distribution(path, "pixel", statistic(tensors, "mean_pixels", path), statistic(tensors, "var_pixels", path),
                            metadata=metadata)
    require(tensors, DCT_TENSORS, path)
    mean, var = statistic(tensors, "mean_hf_remainder", path), statistic(tensors, "var_hf_remainder", path)
    lf_mean, lf_cov = statistic(tensors, "mean_lf_components", path), statistic(tensors, "cov_lf_components", path)
    if mean.ndim != 3 or 0 in mean.shape:
        raise StyleFileError(f"{path}: mean_hf_remainder is {list(mean.shape)}, not [C, H, W] with C, H, W >= 1")
    C, H, W = mean.shape
    if lf_mean.ndim != 1 or lf_mean.numel() == 0 or lf_mean.numel() % C:
        raise StyleFileError(f"{path}: low-frequency mean of {lf_mean.numel()} values does not fit {C} channels")
    n = lf_mean.numel() // C
    if ORDER_KEY in tensors:  # leakstyle's own file
        indices = tensors[ORDER_KEY]
        if indices.dtype not in INTEGER_TYPES:
            raise StyleFileError(f"{path}: {ORDER_KEY} holds {str(indices.dtype).removeprefix('torch.')} values, not integers")
        indices = indices.to(torch.int64)
        if lf_order is not None and not torch.equal(as_lf_order(lf_order), indices):
            raise StyleFileError(f"{path} records its component order {format_lf_order(indices)}; a given order "
                                 f"applies only to official statistics that record none")
    else:
        if n > H * W:
            raise StyleFileError(f"{path}: {n} low-frequency components do not fit a {H}x{W} grid; the file is corrupt")
        indices = official_order(n, H, W, metadata, lf_order, path)
        metadata = {k: v for k, v in metadata.items() if k != ORDER_KEY}
    return distribution(path, "dct", mean, var, indices, lf_mean, lf_cov, metadata)


def distribution(path: Path, *args, **kwargs) -> StyleDistribution:
    """StyleDistribution(*args, **kwargs), with the path in front of its complaints."""
    try:
        return StyleDistribution(*args, **kwargs)
    except StyleFileError as e:
        raise StyleFileError(f"{path}: {e}") from None


def read_type_file(type_file: Path) -> str:
    """The statistic type an official folder's statistic_type.txt names ('pixel' or 'dct')."""
    try:
        with open(type_file, "rb") as f:
            text = f.read(64).decode("utf-8", errors="replace").strip()
    except OSError as e:
        raise StyleFileError(f"cannot read {type_file}: {e.strerror}") from None
    if text not in OFFICIAL_TYPES:
        raise StyleFileError(f"{type_file} says {text!r}; expected 'pixel' or 'dct+pixel'")
    return OFFICIAL_TYPES[text]


def load(path: str | os.PathLike, lf_order: str | Sequence[Sequence[int]] | None = None) -> StyleDistribution:
    """Load a leakstyle .safetensors file or an official folder (or its stats.safetensors).

    `lf_order` (official statistics only): the (u, v) order of the low-frequency components, e.g.
    [(0, 0), (1, 0), (0, 1)] or '0,0;1,0;0,1', when the folder was written with another than the assumed one."""
    path = Path(path)
    if not path.exists():
        raise StyleFileError(f"style file not found: {path}")
    folder = path if path.is_dir() else path.parent
    type_file = folder / "statistic_type.txt"
    if path.is_dir() or (path.name == "stats.safetensors" and type_file.exists()):
        if not type_file.exists() or not (folder / "stats.safetensors").exists():
            raise StyleFileError(f"{folder} is not an official statistics folder (needs stats.safetensors and statistic_type.txt)")
        kind = read_type_file(type_file)
        tensors, metadata = read_safetensors(folder / "stats.safetensors")
        return checked(kind, tensors, metadata, folder, lf_order)
    tensors, metadata = read_safetensors(path)
    kind = metadata.get("statistic_type")
    if kind is None:  # a bare official stats file: tell the type from the tensor names
        kind = "pixel" if "mean_pixels" in tensors else "dct"
    if kind not in ("pixel", "dct"):
        raise StyleFileError(f"{path} has unknown statistic type {kind!r}")
    return checked(kind, tensors, metadata, path, lf_order)


def checked(kind: str, tensors, metadata, path: Path, lf_order) -> StyleDistribution:
    """from_tensors, then check_metadata."""
    style = from_tensors(kind, tensors, metadata, path, lf_order)
    check_metadata(style.metadata, style, path)
    return style


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, force: bool = False,
            lf_order: str | Sequence[Sequence[int]] | None = None) -> Path:
    """Convert between an official folder and a leakstyle file; the float32 tensors are copied bit for bit."""
    return save(load(src, lf_order=lf_order), dst, format=to, force=force)
