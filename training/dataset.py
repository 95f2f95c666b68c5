"""The training images: emoji composited onto backgrounds whose colour varies widely.

The model must learn the background colour from the signal leak alone, so captions name only the
emoji ("grinning face" or "grinning face, smileys & emotion"), never the background. Backgrounds are
solid colours or linear gradients between two colours; colours are uniform over the RGB cube, with a
share of very dark and very bright ones so the extremes are well covered. Each item is a pure function
of (seed, index): the same seed gives the same image and caption bit for bit, and an index beyond the
number of emoji (``repeats`` > 1) reuses the emoji on a new background.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

SIZE = 64


def require_data(*folders: Path) -> None:
    """One line and exit when a data folder has no manifest.jsonl (the training scripts' --data)."""
    for folder in folders:
        if not (Path(folder) / "manifest.jsonl").is_file():
            raise SystemExit(f"no manifest.jsonl in {folder}: run `python -m training.fetch_data` first, or pass --data")


def load_manifest(folder: Path, split: str | None = None) -> list[dict]:
    """Rows of <folder>/manifest.jsonl (see fetch_data.py), optionally only one split."""
    rows = [json.loads(line) for line in (Path(folder) / "manifest.jsonl").read_text().splitlines()]
    return [r for r in rows if split is None or r["split"] == split]


def random_colour(rng: np.random.Generator, extreme_share: float = 0.2) -> np.ndarray:
    """An RGB colour in [0, 1]^3: uniform over the cube, or (extreme_share) near black or near white."""
    u = rng.random()
    if u < extreme_share / 2:
        return rng.uniform(0.0, 0.08, 3)
    if u < extreme_share:
        return rng.uniform(0.92, 1.0, 3)
    return rng.random(3)


def background(rng: np.random.Generator, size: int = SIZE, gradient_share: float = 0.5) -> np.ndarray:
    """[size, size, 3] float32 in [0, 1]: a solid colour, or a linear gradient c0 -> c1 at a random angle."""
    c0 = random_colour(rng)
    if rng.random() >= gradient_share:
        return np.broadcast_to(c0, (size, size, 3)).astype(np.float32)
    c1 = random_colour(rng)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    t = xx * np.cos(theta) + yy * np.sin(theta)
    t = (t - t.min()) / (t.max() - t.min())
    return ((1 - t)[..., None] * c0 + t[..., None] * c1).astype(np.float32)


def composite(rgba: Image.Image, bg: np.ndarray, emoji_size: int) -> np.ndarray:
    """Alpha-blend rgba, resized to emoji_size and centred, over bg; [H, W, 3] float32 in [0, 1]."""
    size = bg.shape[0]
    if emoji_size != rgba.width:
        rgba = rgba.resize((emoji_size, emoji_size), Image.Resampling.LANCZOS)  # premultiplied by Pillow
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    offset = (size - emoji_size) // 2
    canvas.paste(rgba, (offset, offset))
    fg = np.asarray(canvas, dtype=np.float32) / 255.0
    alpha = fg[..., 3:]
    return fg[..., :3] * alpha + bg * (1 - alpha)


def caption(row: dict, rng: np.random.Generator, category_share: float = 0.5) -> str:
    """The emoji's name, followed (category_share of the time) by its category."""
    return f"{row['name']}, {row['category']}" if rng.random() < category_share else row["name"]


class EmojiComposites(Dataset):
    """(image [3, 64, 64] in [-1, 1], caption) pairs; item i is a pure function of (seed, i).

    folder holds manifest.jsonl and the PNGs (fetch_data.py); split is 'train', 'eval' or None (all).
    emoji_sizes is the inclusive range of the emoji's side in pixels; flip mirrors half the items.
    """

    def __init__(self, folder: str | Path, split: str | None = "train", seed: int = 0, repeats: int = 1,
                 emoji_sizes: tuple[int, int] = (40, 56), flip: bool = False):
        self.folder, self.seed, self.repeats = Path(folder), seed, repeats
        self.emoji_sizes, self.flip = emoji_sizes, flip
        self.rows = load_manifest(self.folder, split)
        if not self.rows:
            raise ValueError(f"no {split!r} images in {self.folder}/manifest.jsonl")
        self.images = [Image.open(self.folder / r["file"]).convert("RGBA") for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows) * self.repeats

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        rng = np.random.default_rng([self.seed, index])
        k = index % len(self.rows)
        bg = background(rng)
        emoji_size = int(rng.integers(self.emoji_sizes[0], self.emoji_sizes[1] + 1))
        x = composite(self.images[k], bg, emoji_size)
        if self.flip and rng.random() < 0.5:
            x = x[:, ::-1]
        text = caption(self.rows[k], rng)
        return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1) * 2 - 1, text
