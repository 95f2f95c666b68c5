"""What every training stage shares: deterministic batches, atomic checkpoints, the loss log.

A run is a pure function of its seed and step count: the batch at step s is fixed by (seed, s), so a run
resumed from a checkpoint takes exactly the steps it would have taken without the interruption.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> list[int]:
    """Dataset indices of the batch at `step`: epochs are seeded permutations of the n emoji.

    The index returned for emoji k in epoch e is e * n + k, so a dataset item (seed, index) gives the
    same emoji a new background in every epoch.
    """
    out = []
    for p in range(step * batch_size, (step + 1) * batch_size):
        epoch, j = divmod(p, n)
        k = int(np.random.default_rng([seed, epoch, 7]).permutation(n)[j])
        out.append(epoch * n + k)
    return out


def collate(ds: Dataset, indices: list[int]) -> tuple[torch.Tensor, list[str]]:
    """[B, 3, H, W] images and B captions."""
    items = [ds[i] for i in indices]
    return torch.stack([x for x, _ in items]), [c for _, c in items]


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up to peak, then cosine decay to floor * peak at step total."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def save_atomic(obj: object, path: Path) -> None:
    """torch.save to a temporary file, then os.replace: a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class LossLog:
    """Append-only JSONL loss curve; on resume, lines beyond the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if path.exists() and resume_step > 0:
            kept = [l for l in path.read_text().splitlines() if l and json.loads(l)["step"] <= resume_step]
        path.write_text("".join(l + "\n" for l in kept))
        self.t0 = time.time()

    def write(self, **row: float) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}) + "\n")
