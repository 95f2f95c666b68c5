"""Output folders of the commands: refused up front when unusable, created only when something is written.

A command that fails before or while writing leaves no empty folder behind: `writing_into` removes the
folders it created when the block that writes into them raises and they are still empty.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LeakstyleError


def check_folder(out: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse an output folder that is a file, or under a file, before any work starts."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise LeakstyleError(f"{p} is a file; {flag} needs a folder")
            if not os.access(p, os.W_OK):
                raise LeakstyleError(f"cannot write into {p}: the folder is not writable; choose another {flag}")
            break
    return out


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
