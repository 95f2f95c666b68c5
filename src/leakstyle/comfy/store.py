"""Styles in ComfyUI's models folder, `models/leakstyle/`: leakstyle files and official folders alike.

The folder is registered with folder_paths under the name "leakstyle", so extra_model_paths.yaml can add
more. An official folder is listed by its `stats.safetensors` (beside its `statistic_type.txt`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..distribution import StyleDistribution
from ..errors import LeakstyleError
from ..files import load, save

FOLDER_NAME = "leakstyle"
EXTENSIONS = {".safetensors"}


def register() -> None:
    """Add models/leakstyle to folder_paths (idempotent)."""
    import folder_paths

    path = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    if FOLDER_NAME in folder_paths.folder_names_and_paths:
        paths, extensions = folder_paths.folder_names_and_paths[FOLDER_NAME]
        if path not in paths:
            paths.insert(0, path)
        folder_paths.folder_names_and_paths[FOLDER_NAME] = (paths, set(extensions) | EXTENSIONS)
    else:
        folder_paths.folder_names_and_paths[FOLDER_NAME] = ([path], set(EXTENSIONS))


def style_names() -> list[str]:
    """The style files ComfyUI finds in its leakstyle folders (relative names, for a COMBO)."""
    import folder_paths

    register()
    return sorted(folder_paths.get_filename_list(FOLDER_NAME))


def load_style(name: str | None, path: str = "") -> StyleDistribution:
    """`path` (a leakstyle file or an official folder) when not empty, else the style called `name`."""
    import folder_paths

    if path and path.strip():
        return load(Path(path.strip()).expanduser())
    if not name:
        raise LeakstyleError("no style chosen: put a style file in models/leakstyle or give a path")
    register()
    full = folder_paths.get_full_path(FOLDER_NAME, name)
    if full is None:
        raise LeakstyleError(f"style {name!r} is not in models/leakstyle; refresh the page or give a path")
    return load(full)


def next_free(folder: Path, prefix: str) -> Path:
    """folder/prefix_00001.safetensors, or the next number not yet taken (nothing is overwritten)."""
    pattern = re.compile(re.escape(Path(prefix).name) + r"_(\d{5})\.safetensors$")
    target = folder / Path(prefix).parent
    taken = [int(m[1]) for p in (target.iterdir() if target.is_dir() else []) if (m := pattern.match(p.name))]
    return target / f"{Path(prefix).name}_{max(taken, default=0) + 1:05d}.safetensors"


def save_style(style: StyleDistribution, filename_prefix: str) -> Path:
    """Save under the first models/leakstyle folder as prefix_NNNNN.safetensors; returns the path."""
    import folder_paths

    register()
    prefix = filename_prefix.strip()
    if not prefix or Path(prefix).is_absolute() or ".." in Path(prefix).parts:
        raise LeakstyleError(f"filename_prefix {filename_prefix!r} must be a relative name inside models/leakstyle")
    folder = Path(folder_paths.get_folder_paths(FOLDER_NAME)[0])
    path = next_free(folder, prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(style, path)
