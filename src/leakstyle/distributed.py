"""Fitting on several processes: which process this is, and the all-reduce of the fit's float64 moments.

`torchrun --nproc_per_node N` and `accelerate launch` start the processes and say who is who through the
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Each process encodes its share of the
images (sources.Share); the running sums of moments.Moments add up, so one all-reduce (SUM) gives every
process the moments of the whole set. Process 0 writes the result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import ImageError, LeakstyleError
from .moments import Moments


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of one run (rank 0 of 1 when not started by a launcher)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise LeakstyleError(f"environment variable {name}={value!r} is not a number; start the processes with "
                             "torchrun or accelerate launch, or unset it") from None


def from_env() -> Processes:
    """Rank, world size and local rank as torchrun and accelerate launch set them."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise LeakstyleError(f"RANK={rank} and WORLD_SIZE={world} do not fit together; start the processes with "
                             "torchrun or accelerate launch")
    return Processes(rank, world, _env_int("LOCAL_RANK", rank))


def process_device(name: str | None, processes: Processes) -> str | None:
    """The device a process uses when --device names none or only `cuda`: its own GPU, cuda:LOCAL_RANK."""
    if processes.world_size > 1 and name in (None, "cuda") and torch.cuda.is_available():
        return f"cuda:{processes.local_rank % torch.cuda.device_count()}"
    return name


def join(processes: Processes, device: torch.device) -> None:
    """Join the process group (NCCL when this process computes on a GPU, else gloo) unless already in one."""
    import torch.distributed as dist

    if processes.world_size == 1 or dist.is_initialized():
        return
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise LeakstyleError("WORLD_SIZE > 1 but MASTER_ADDR or MASTER_PORT is not set; start the processes with "
                             "torchrun or accelerate launch")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=processes.rank, world_size=processes.world_size, device_id=device)
    else:
        dist.init_process_group("gloo", rank=processes.rank, world_size=processes.world_size)


def leave() -> None:
    """Leave the process group, if this process is in one."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class SharedError(LeakstyleError):
    """A user error that one process met and every process raises, so that none waits forever for the others."""


class SharedImageError(SharedError, ImageError):
    """An ImageError that one process met, raised by every process."""


@dataclass
class Report:
    """What one process tells the others after encoding its share."""

    error: tuple[bool, str] | None  # (is an ImageError, message)
    shape: tuple[int, int, int] | None  # [C, H, W] of its tensors; None when it fitted none
    skipped: list[tuple[str, str]]  # (name, reason) of the images it could not read


def _flat(m: Moments) -> torch.Tensor:
    parts = [torch.tensor([float(m.count)], dtype=torch.float64), m.sum_x.flatten(), m.sum_x2.flatten()]
    if m.kind == "dct":
        parts += [m.sum_lf, m.sum_lf_outer.flatten()]
    return torch.cat(parts)


def _unflat(m: Moments, flat: torch.Tensor) -> Moments:
    sizes = [1, m.sum_x.numel(), m.sum_x2.numel()] + ([m.sum_lf.numel(), m.sum_lf_outer.numel()] if m.kind == "dct" else [])
    parts = flat.cpu().split(sizes)
    m.count = int(round(float(parts[0])))
    m.sum_x, m.sum_x2 = parts[1].view_as(m.sum_x).clone(), parts[2].view_as(m.sum_x2).clone()
    if m.kind == "dct":
        m.sum_lf, m.sum_lf_outer = parts[3].clone(), parts[4].view_as(m.sum_lf_outer).clone()
    return m


def all_reduce_moments(moments: Moments) -> Moments:
    """The sums of every process's moments, in place, in every process (one all-reduce of one float64 vector)."""
    import torch.distributed as dist

    flat = _flat(moments)
    if dist.get_backend() == "nccl":
        flat = flat.cuda()
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return _unflat(moments, flat)


def combine(moments: Moments | None, skipped: list[tuple[str, str]], error: LeakstyleError | None, kind: str,
            components: int, processes: Processes) -> tuple[Moments | None, list[tuple[str, str]]]:
    """The moments of all processes' images, and every process's skipped images (name, reason), sorted by name.

    Every process takes part, one that fitted no image too (it adds zeros). A user error met by any process is
    raised by all (SharedError, or SharedImageError for image errors), before the all-reduce."""
    if processes.world_size == 1:
        if error is not None:
            raise error
        return moments, skipped
    import torch.distributed as dist

    shape = None if moments is None else (moments.channels, moments.height, moments.width)
    mine = Report(None if error is None else (isinstance(error, ImageError), str(error)), shape, skipped)
    reports: list[Report] = [None] * processes.world_size  # type: ignore[list-item]
    dist.all_gather_object(reports, mine)
    failed = next((r.error for r in reports if r.error is not None), None)
    if failed is not None:
        is_image_error, message = failed
        raise (SharedImageError if is_image_error else SharedError)(message)
    skipped = sorted(s for r in reports for s in r.skipped)
    shapes = {r.shape for r in reports if r.shape is not None}
    if not shapes:
        return None, skipped
    if len(shapes) > 1:
        raise SharedError(f"the processes fitted tensors of different shapes {sorted(shapes)}; run them with the same "
                          "options")
    if moments is None:
        C, H, W = shapes.pop()
        moments = Moments.for_dct(C, H, W, components) if kind == "dct" else Moments("pixel", C, H, W)
    return all_reduce_moments(moments), skipped
