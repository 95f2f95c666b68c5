"""x_tilde for video latents: statistics fitted on images, drawn once per clip or once per frame.

By default one x_tilde is drawn per video and shared by all its frames: the leak then sets the clip's colour and
style consistently, where independent draws would flicker. `frames="independent"` draws one per frame. The noise
eps is independent per frame either way, as the pipeline's own noise is.
"""

from __future__ import annotations

import torch

from .denoiser import frames_to_layout
from .distribution import StyleDistribution
from .errors import LeakstyleError

FRAMES = ("shared", "independent")


def check_frames(frames: str) -> None:
    if frames not in FRAMES:
        raise LeakstyleError(f"unknown frames mode {frames!r}; choose one of {', '.join(FRAMES)}")


def video_x_tilde(style: StyleDistribution, batch_size: int, num_frames: int, height: int, width: int, kind: str,
                  frames: str = "shared", generator: torch.Generator | None = None, device=None,
                  dtype=torch.float32) -> torch.Tensor:
    """x_tilde for `batch_size` clips of `num_frames` frames, in the layout `kind` ([B, C, F, h, w] or [B, F, C, h, w]).

    shared: x_tilde [B, C, h, w] repeated over the frames; independent: B * F draws, frame f of clip b being draw
    b * F + f."""
    check_frames(frames)
    if frames == "shared":
        x = style.sample(batch_size, height, width, generator=generator, device=device, dtype=dtype)
        x = x[:, None].expand(-1, num_frames, -1, -1, -1)
    else:
        x = style.sample(batch_size * num_frames, height, width, generator=generator, device=device, dtype=dtype)
        x = x.view(batch_size, num_frames, *x.shape[1:])
    return frames_to_layout(x, kind).contiguous()
