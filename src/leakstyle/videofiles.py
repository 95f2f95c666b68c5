"""Writing generated videos: each frame as a PNG that carries the generation parameters, and an animated WebP."""

from __future__ import annotations

import io
from pathlib import Path

from .files import write_atomic
from .png import png_bytes

FPS = 8  # AnimateDiff's and text-to-video's usual playback rate


def frame_paths(out: Path, name: str, num_frames: int) -> list[Path]:
    return [Path(out) / f"{name}-frame{j:03d}.png" for j in range(num_frames)]


def video_paths(out: Path, name: str, num_frames: int) -> list[Path]:
    """Every file one video writes: its frames, then its animated WebP."""
    return frame_paths(out, name, num_frames) + [Path(out) / f"{name}.webp"]


def webp_bytes(frames, fps: int = FPS) -> bytes:
    """An animated, lossless, looping WebP of `frames` (PIL images) at `fps` frames per second."""
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=list(frames[1:]), duration=round(1000 / fps),
                   loop=0, lossless=True)
    return buf.getvalue()


def write_video(out: Path, name: str, frames, parameters: dict, force: bool = False) -> list[Path]:
    """Write the frames (PNGs with `parameters` and their frame index) and the WebP; the paths written."""
    paths = video_paths(out, name, len(frames))
    for j, (frame, path) in enumerate(zip(frames, paths)):
        write_atomic(path, png_bytes(frame, {**parameters, "frame": j, "num_frames": len(frames)}), force=force)
    write_atomic(paths[-1], webp_bytes(frames), force=force)
    return paths
