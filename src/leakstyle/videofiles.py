"""Writing generated videos: each frame as a PNG that carries the generation parameters, and an animated WebP.

Video i of an output folder is NNNN-seedS-frameJJJ.png (numbered like images, see outputs.py) and NNNN-seedS.webp,
its baseline NNNN-seedS-baseline-frameJJJ.png and NNNN-seedS-baseline.webp.
"""

from __future__ import annotations

import io
from pathlib import Path

from .files import write_atomic
from .png import png_bytes

FPS = 8  # AnimateDiff's and text-to-video's usual playback rate


def frame_suffix(suffix: str, j: int) -> str:
    return f"{suffix}-frame{j:03d}"


def frame_pngs(frames, parameters: dict, suffix: str = "") -> dict[str, bytes]:
    """{name suffix: PNG bytes} for the frames of one video, each PNG with `parameters`, its frame index and count."""
    return {frame_suffix(suffix, j): png_bytes(frame, {**parameters, "frame": j, "num_frames": len(frames)})
            for j, frame in enumerate(frames)}


def webp_bytes(frames, fps: int = FPS) -> bytes:
    """An animated, lossless, looping WebP of `frames` (PIL images) at `fps` frames per second."""
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=list(frames[1:]), duration=round(1000 / fps),
                   loop=0, lossless=True)
    return buf.getvalue()


def write_webps(folder: Path, index: int, seed: int, videos: dict[str, list]) -> list[Path]:
    """NNNN-seedS{suffix}.webp for each {suffix: frames} of `videos`, created exclusively; the paths written."""
    paths = []
    for suffix, frames in videos.items():
        path = Path(folder) / f"{index:04d}-seed{seed}{suffix}.webp"
        write_atomic(path, webp_bytes(frames), force=False)
        paths.append(path)
    return paths
