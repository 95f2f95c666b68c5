"""`leakstyle demo`: the whole method on one page, offline, in about a minute on a CPU.

Writes to a folder (created only when the results are ready, each file atomically): a grid (the same prompts and seeds from pure noise, from a leak fitted to a few
Twitter-style emoji, and with several colours), a plot of mean-colour distributions (reference images,
pure noise, leak fitted to the reference images), and an index.html that explains them.
"""

from __future__ import annotations

import html
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from .errors import LeakstyleError
from .files import write_atomic
from .fit import fit
from .images import list_images, open_image, resize_and_crop
from .outputs import check_output_folder, writing_into
from .pipeline import generate

ASSETS = Path(__file__).parent / "assets"
PROMPTS = ("grinning face", "green heart", "cat face", "rocket", "sun with face", "slice of pizza", "ghost", "evergreen tree")
OUTPUTS = ("grid.png", "mean-colors.png", "index.html")
COLORS = {"dark": "#141414", "bright": "#f0f0f0", "red": "#d01818", "blue": "#1838d0"}


def mean_colors(images: list[Image.Image]) -> np.ndarray:
    """Mean RGB of each image, [N, 3] in 0..255."""
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.float64).mean((0, 1)) for im in images])


def grid(rows: list[tuple[str, list[Image.Image]]], cell: int = 96, label_width: int = 170) -> Image.Image:
    """Rows of images with a label on the left of each row."""
    cols = max(len(images) for _, images in rows)
    sheet = Image.new("RGB", (label_width + cols * cell, len(rows) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, images) in enumerate(rows):
        draw.text((8, r * cell + cell // 2 - 6), label, fill="black")
        for c, im in enumerate(images):
            sheet.paste(im.convert("RGB").resize((cell, cell), Image.Resampling.LANCZOS), (label_width + c * cell, r * cell))
    return sheet


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def plot_distributions(sets: dict[str, np.ndarray]) -> tuple[bytes, dict[str, float]]:
    """Histograms of brightness (mean of R, G, B) per set: the plot as PNG bytes, and each set's brightness std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    bins = np.linspace(0, 255, 26)
    stds = {}
    for name, colors in sets.items():
        brightness = colors.mean(1)
        stds[name] = float(brightness.std())
        axes[0].hist(brightness, bins=bins, alpha=0.45, label=f"{name} (std {brightness.std():.1f})", density=True)
        for ch, ax in enumerate(axes[1:]):
            ax.hist(colors[:, ch], bins=bins, alpha=0.45, density=True, label=name)
    axes[0].set_title("brightness (mean of R, G, B)")
    for ch, ax in zip("RGB", axes[1:]):
        ax.set_title(f"mean {ch}")
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.set_xlim(0, 255)
        ax.set_yticks([])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue(), stds


def page(stds: dict[str, float], n: int, n_reference: int, model: str) -> str:
    """index.html: the grid and the plot, with a sentence on each."""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.1f}</td></tr>" for k, v in stds.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>leakstyle demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}} img{{max-width:100%}}
td{{padding:2px 12px}}</style></head><body>
<h1>leakstyle demo</h1>
<p>Model: <code>{html.escape(model)}</code>. Every image in a column has the same prompt and seed; only the start of sampling differs.</p>
<h2>Style, brightness and colour from the initial noise</h2>
<img src="grid.png" alt="grid of generated images">
<p>The first row starts from pure noise as usual; the second starts from a signal leak fitted to a few Twitter-style emoji
(no training), and the other rows set the mean colour of the leak to dark, bright, red and blue.</p>
<h2>The signal-leak bias</h2>
<img src="mean-colors.png" alt="histograms of mean colour">
<p>Histograms of the mean colour of {n_reference} reference images, of {n} images generated from pure noise, and of {n} generated from
a leak fitted to the reference images: pure noise squeezes the colours toward medium values, the leak restores their spread.</p>
<table><tr><th>set</th><th>std of brightness</th></tr>{rows}</table>
</body></html>
"""


def check_demo(out: str | Path, n: int, steps: int, force: bool = False, assets: Path = ASSETS) -> Path:
    """Refuse what would make the demo fail, before any work: a file as `out`, a demo there (without force),
    fewer than 2 images per set, no steps, missing assets."""
    check_output_folder(out)
    out = Path(out)
    if n < 2:
        raise LeakstyleError(f"-n must be at least 2 (a spread needs two images per set), got {n}")
    if steps < 1:
        raise LeakstyleError(f"--steps must be at least 1, got {steps}")
    if any((out / name).exists() for name in OUTPUTS) and not force:
        raise LeakstyleError(f"{out} already holds a demo; pass --force to overwrite it or choose another --out")
    for folder in (assets / "twemoji", assets / "reference"):
        if not folder.is_dir():
            raise LeakstyleError(f"demo assets missing: {folder}; reinstall leakstyle")
    return out


@torch.no_grad()
def run_demo(pipe, out: Path, model_name: str, steps: int = 20, n: int = 48, prompts=PROMPTS, assets: Path = ASSETS,
             force: bool = False, progress: bool = True) -> Path:
    """Write grid.png, mean-colors.png and index.html into `out`; returns the index.html path.

    Everything is checked before the first image is drawn; `out` is created when the results are ready and each
    file is written atomically, so a failure (a full disk) leaves no partial file and no empty folder."""
    out = check_demo(out, n, steps, force, assets)
    twemoji, reference = assets / "twemoji", assets / "reference"

    bar = tqdm(total=len(prompts) * (2 + len(COLORS)) + 2 * n, unit="img", desc="demo", disable=not progress)
    twitter = fit(twemoji, pipe=pipe, kind="dct", components=3, progress=False)
    ref_style = fit(reference, pipe=pipe, kind="dct", components=3, progress=False)

    def batch(prompt_list, seed0, chunk=8, **kw):
        images = []
        for start in range(0, len(prompt_list), chunk):
            part = list(prompt_list[start:start + chunk])
            images += generate(pipe, part, seed=seed0 + start, num_inference_steps=steps, **kw)
            bar.update(len(part))
        return images

    rows = [("pure noise", batch(prompts, 0)), ("leak: Twitter style", batch(prompts, 0, style=twitter))]
    rows += [(f"colour: {name} {hexcode}", batch(prompts, 0, color=hexcode)) for name, hexcode in COLORS.items()]
    cycled = [prompts[i % len(prompts)] for i in range(n)]
    noise_colors = mean_colors(batch(cycled, 100))
    leak_colors = mean_colors(batch(cycled, 100, style=ref_style))
    bar.close()
    size = rows[0][1][0].size
    ref_images = [resize_and_crop(open_image(p), *size) for p in list_images([reference])]
    plot, stds = plot_distributions({"reference": mean_colors(ref_images), "pure noise": noise_colors,
                                     "leak": leak_colors})
    with writing_into(out):
        write_atomic(out / "grid.png", png(grid(rows)), force=force)
        write_atomic(out / "mean-colors.png", plot, force=force)
        write_atomic(out / "index.html", page(stds, n, len(ref_images), model_name).encode("utf-8"), force=force)
    return out / "index.html"
