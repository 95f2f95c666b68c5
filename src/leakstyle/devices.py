"""Which torch device a `--device` name means, refused in one line when this torch cannot use it."""

from __future__ import annotations

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
