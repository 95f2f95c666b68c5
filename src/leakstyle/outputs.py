"""Output folders: refused up front when unusable, created only when something is written.

Generated images are NNNN-seedS.png, each beside its NNNN-seedS-baseline.png. New images are numbered after those
already in the folder (the next free index, as A1111 and ComfyUI do), and every file is created exclusively, so
that nothing is ever overwritten, not even by a run writing alongside. Commands that write a fixed set of files
(demo, report) write inside `writing_into`, so that a failure leaves no empty folder behind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LeakstyleError
from .files import write_atomic

NUMBERED = re.compile(r"(\d+)-.*\.png")
BASELINE = "-baseline"


def image_name(index: int, seed: int, suffix: str = "") -> str:
    return f"{index:04d}-seed{seed}{suffix}.png"


def next_index(folder: Path) -> int:
    """One more than the highest NNNN of the NNNN-*.png files in `folder`; 0 when it has none (or does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := NUMBERED.fullmatch(p.name))]
    return max(numbers, default=-1) + 1


def check_output_folder(folder: Path) -> None:
    """Refuse, before any work, an output folder that is a file or cannot be created or written. Creates nothing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LeakstyleError(f"{folder} is a file; --out needs a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise LeakstyleError(f"cannot create {folder}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LeakstyleError(f"cannot write into {existing}; choose another --out")


def write_numbered(folder: Path, index: int, seed: int, pngs: dict[str, bytes]) -> tuple[int, list[Path]]:
    """Write `pngs` ({suffix: PNG bytes}, "" for the image, "-baseline" for its baseline) as image `index` of
    `folder`, or under the next free index when another file holds that one. Creates the folder when needed.

    Returns the index used and the paths written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LeakstyleError(f"cannot create {folder}: {e.strerror}") from None
    while True:
        paths = [folder / image_name(index, seed, suffix) for suffix in pngs]
        if any(p.exists() for p in paths):
            index = max(index + 1, next_index(folder))
            continue
        written = []
        try:
            for path, data in zip(paths, pngs.values()):
                write_atomic(path, data, force=False)  # refuses a path that exists, even one made meanwhile
                written.append(path)
        except LeakstyleError:
            if not paths[len(written)].exists():
                raise  # not a name taken by another writer: a real write error
            for path in written:  # the pair is split: take a free index for both
                path.unlink()
            index = max(index + 1, next_index(folder))
            continue
        return index, paths


@contextmanager
def writing_into(folder: str | os.PathLike) -> Iterator[Path]:
    """Create `folder` (and missing parents) for the block; if the block raises, remove those still empty."""
    folder = Path(folder)
    created = []  # innermost first
    p = folder
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LeakstyleError(f"cannot create {folder}: {e.strerror}") from None
    try:
        yield folder
    except BaseException:
        for p in created:
            try:
                p.rmdir()  # only empty folders go
            except OSError:
                break
        raise
