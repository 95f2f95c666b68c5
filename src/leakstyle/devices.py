"""Which torch device a `--device` name means, refused in one line when this torch cannot use it; how much memory a
device has, and refusing work that cannot fit in it."""

from __future__ import annotations

import os

import torch

from .errors import LeakstyleError


def available_devices() -> list[str]:
    """The device names this torch can use here: cpu, then cuda:0 .. cuda:N-1 and mps where present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The torch.device called `name`; None: cuda when available, else cpu.

    A name torch does not know (`gpu0`), a device this build or machine lacks (`cuda` on a CPU build, `cuda:3`
    on a one-GPU machine) is a LeakstyleError that lists what is available."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise LeakstyleError(f"unknown device {name!r}; available here: {', '.join(available)}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LeakstyleError(f"device {name!r} needs CUDA, which this torch or machine lacks; available here: "
                                 f"{', '.join(available)}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LeakstyleError(f"there is no device {name!r} (this machine has {torch.cuda.device_count()} CUDA "
                                 f"device(s)); available here: {', '.join(available)}")
        return device
    if device.type == "mps" and "mps" in available:
        return device
    raise LeakstyleError(f"device {name!r} is not available here; available here: {', '.join(available)}")


def total_memory(device: str | torch.device = "cpu") -> int | None:
    """The memory in bytes that `device` has in all (a CUDA device's own, else the machine's RAM); None where this
    platform does not say (MPS, systems without sysconf)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    if device.type != "cpu":
        return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def gib(n: float) -> str:
    """Bytes in GiB, TiB from 1000 GiB on, PiB from 1000 TiB on."""
    for unit in ("GiB", "TiB"):
        if n < 1000 * 2 ** 30:
            return f"{n / 2 ** 30:.3g} {unit}"
        n /= 2 ** 10
    return f"{n / 2 ** 30:.3g} PiB"


def check_fits(need: int, what: str, advice: str, device: str | torch.device = "cpu") -> None:
    """Refuse, in one line, work that needs more than `device` has in all (`need` bytes, a lower bound): such work
    can only fail, and on Linux a process that takes more than the RAM is killed without a message."""
    total = total_memory(device)
    if total is not None and need > total:
        where = "this machine's RAM" if torch.device(device).type == "cpu" else str(torch.device(device))
        raise LeakstyleError(f"{what} need at least {gib(need)}, more than the {gib(total)} of {where}; {advice}")
