"""Reproduce the papers' claims on the embedded emoji model: bias, colour control, training-free style adaptation.

    .venv/bin/python experiments/reproduce.py [--model M] [-n 256] [--steps 25] [--out experiments/results]
    .venv/bin/python experiments/reproduce.py --model tiny-model-folder --quick      # smoke test, seconds

1. The signal-leak bias (Everaert et al., WACV 2024): images generated from pure noise have a narrower
   distribution of brightness and mean colour than the training images (Google emoji on random backgrounds);
   starting from a leak fitted to other training images restores it. Std ratios and Wasserstein distances
   per CIELAB channel, with 95% bootstrap intervals.
2. Colour control: for a grid of requested colours, the leak's low frequencies are set to the colour; CIEDE2000
   between requested and obtained background (border pixels), median and 90th percentile, against the same
   prompts and seeds from pure noise.
3. Training-free style adaptation: style distance (leakstyle.metrics) to held-out Twitter-style emoji of images
   from pure noise and from leaks (pixel and dct statistics) fitted to 20 Twitter-style emoji.

Writes README.md (tables), results.json, bias.png, colors.png and style.png into --out. Needs the emoji data
(python -m training.fetch_data) and the model: the embedded one by default (src/leakstyle/models/mini-sd).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # e.g. "input was truncated" for long captions

from leakstyle import metrics  # noqa: E402
from leakstyle.errors import LeakstyleError  # noqa: E402
from leakstyle.images import open_image, resize_and_crop  # noqa: E402

COLOR_GRID = ("#101010", "#505050", "#a0a0a0", "#f0f0f0", "#d01818", "#18a018", "#1838d0", "#e0c020",
              "#20c0c0", "#c020c0", "#f08030", "#804020", "#80c0ff", "#ffc0c0", "#305020", "#402060")
STYLE_FIT_IMAGES = 20


# -- data --------------------------------------------------------------------------------------------
def composites(folder: Path, split: str, indices, size: tuple[int, int], seed: int):
    """(images, captions) of the training data's composites (emoji on random backgrounds), resized to size (W, H)."""
    from PIL import Image

    from training.dataset import EmojiComposites

    data = EmojiComposites(folder, split=split, seed=seed)
    images, captions = [], []
    for i in indices:
        x, caption = data[int(i)]
        pil = Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8))
        images.append(resize_and_crop(pil, *size))
        captions.append(caption)
    return images, captions


def on_white(folder: Path, rows: list[dict], size: tuple[int, int]):
    """The emoji of `rows` composited on white, resized to size (W, H); and their names."""
    return [resize_and_crop(open_image(folder / r["file"]), *size) for r in rows], [r["name"] for r in rows]


def save_pngs(images, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        im.save(folder / f"{i:05d}.png")
    return folder


# -- formatting --------------------------------------------------------------------------------------
def cell(interval: metrics.Interval, spec: str = ".2f") -> str:
    return format(interval, spec)


def as_json(x):
    if isinstance(x, metrics.Interval):
        return x.as_dict()
    if isinstance(x, dict):
        return {k: as_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [as_json(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


# -- the three experiments ---------------------------------------------------------------------------
def bias(pipe, data: Path, n: int, size, gen, n_boot: int, seed: int, out: Path, workdir: Path):
    from leakstyle import fit
    from leakstyle.report import plot_distributions

    google = data / "google"
    from training.dataset import load_manifest

    order = np.random.default_rng(seed).permutation(len(load_manifest(google, "train")))
    images, captions = composites(google, "train", order[:2 * n], size, seed)
    reference, captions, fit_images = images[:n], captions[:n], images[n:]
    style = fit([save_pngs(fit_images, workdir / "bias-fit")], pipe=pipe, kind="dct", components=3, progress=False)
    noise_images = gen(captions)
    leak_images = gen(captions, style=style)
    low = {name: metrics.low_frequency(images) for name, images in
           (("training images", reference), ("pure noise", noise_images), ("leak", leak_images))}
    result = {name: metrics.compare_distributions(low[name].lab, low["training images"].lab, n_boot=n_boot, seed=seed)
              for name in ("pure noise", "leak")}
    result["spread"] = {name: lf.spread() for name, lf in low.items()}
    plot_distributions({"training images": reference, "pure noise": noise_images, "leak": leak_images}, out / "bias.png")
    lines = ["## 1. The signal-leak bias", "",
             f"{n} Google emoji on random training backgrounds; {n} images from pure noise and {n} from a leak (dct, "
             f"3 components) fitted to {n} other training images, with the same captions and seeds.", "",
             "| set | channel | std ratio vs training | Wasserstein to training |", "|---|---|---|---|"]
    for name in ("pure noise", "leak"):
        for ch, d in result[name].items():
            lines.append(f"| {name} | {ch} | {cell(d['std_ratio'])} | {cell(d['wasserstein'], '.1f')} |")
    lines += ["", "![brightness and mean colour](bias.png)", ""]
    return result, lines, style, captions, noise_images


def colour_control(pipe, colors, per_color: int, captions, noise_images, style, gen, n_boot: int, seed: int, out: Path):
    from leakstyle.report import mean_border_hex

    prompts, baseline = captions[:per_color], noise_images[:per_color]
    rows, pooled = {}, {"leak": [], "pure noise": []}
    for c in colors:
        images = gen(prompts, style=style, color=c)
        errors = {"leak": metrics.color_errors(images, c, "border"), "pure noise": metrics.color_errors(baseline, c, "border")}
        for k, e in errors.items():
            pooled[k].append(e)
        rows[c] = {k: {"median": float(np.median(e)), "p90": float(np.quantile(e, 0.9))} for k, e in errors.items()}
        rows[c]["obtained"] = mean_border_hex(images)
    summary = {}
    for k, parts in pooled.items():
        stat = lambda e: {"median": float(np.median(e)), "p90": float(np.quantile(e, 0.9))}  # noqa: E731
        summary[k] = metrics.bootstrap(stat, (np.concatenate(parts),), n_boot, seed=seed)
    plot_colour_grid(rows, out / "colors.png")
    lines = ["## 2. Colour control", "",
             f"{len(colors)} requested colours x {per_color} images: the leak of experiment 1 with its low frequencies set "
             f"to the colour, against the same captions and seeds from pure noise. CIEDE2000 between the requested colour "
             f"and the mean colour of each image's {metrics.BORDER}-pixel border (the background).", "",
             "| start | median CIEDE2000 | 90th percentile |", "|---|---|---|"]
    for k in ("leak", "pure noise"):
        lines.append(f"| {k} | {cell(summary[k]['median'], '.1f')} | {cell(summary[k]['p90'], '.1f')} |")
    lines += ["", "| requested | obtained (leak) | leak median | leak p90 | pure noise median | pure noise p90 |",
              "|---|---|---|---|---|---|"]
    for c, r in rows.items():
        lines.append(f"| {c} | {r['obtained']} | {r['leak']['median']:.1f} | {r['leak']['p90']:.1f} | "
                     f"{r['pure noise']['median']:.1f} | {r['pure noise']['p90']:.1f} |")
    lines += ["", "![requested and obtained colours](colors.png)", ""]
    return {"summary": summary, "colors": rows}, lines


def plot_colour_grid(rows: dict, path: Path) -> None:
    from leakstyle.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(rows) + 1.5), 2.2))
    for i, (c, r) in enumerate(rows.items()):
        ax.add_patch(plt.Rectangle((i, 1), 0.9, 0.9, color=c, ec="black", lw=0.5))
        ax.add_patch(plt.Rectangle((i, 0), 0.9, 0.9, color=r["obtained"], ec="black", lw=0.5))
        ax.text(i + 0.45, -0.3, f"{r['leak']['median']:.0f}", ha="center", fontsize=7)
    ax.set_xlim(-0.1, len(rows))
    ax.set_ylim(-0.5, 2)
    ax.set_yticks([1.45, 0.45], ["requested", "obtained"])
    ax.set_xticks([])
    ax.set_title("requested vs mean border colour from the leak (numbers: median CIEDE2000)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def style_adaptation(pipe, data: Path, n: int, size, gen, n_boot: int, seed: int, out: Path, workdir: Path):
    from leakstyle import fit
    from leakstyle.report import samples_sheet
    from training.dataset import load_manifest

    twitter, google = data / "twitter", data / "google"
    held_out, names = on_white(twitter, load_manifest(twitter, "eval"), size)
    google_same, _ = on_white(google, load_manifest(google, "eval"), size)
    train_rows = load_manifest(twitter, "train")
    pick = np.random.default_rng(seed).choice(len(train_rows), STYLE_FIT_IMAGES, replace=False)
    few, _ = on_white(twitter, [train_rows[i] for i in sorted(pick)], size)
    folder = save_pngs(few, workdir / "twitter-20")
    prompts = [names[i % len(names)] for i in range(n)]
    sets = {"pure noise": gen(prompts)}
    for kind in ("pixel", "dct"):
        style = fit([folder], pipe=pipe, kind=kind, components=3, progress=False)
        sets[f"leak ({kind}, {STYLE_FIT_IMAGES} Twitter emoji)"] = gen(prompts, style=style)
    sets["Google emoji, same names (on white)"] = google_same
    sets[f"the {STYLE_FIT_IMAGES} Twitter emoji themselves"] = few
    target = metrics.style_features(held_out)
    result = {name: metrics.style_intervals(metrics.style_features(images), target, n_boot, seed) for name, images in sets.items()}
    samples_sheet([("held-out Twitter", held_out)] + [(k, v) for k, v in sets.items() if "themselves" not in k], out / "style.png",
                  label_width=230)
    lines = ["## 3. Training-free style adaptation", "",
             f"Style distance (leakstyle.metrics.style_distance: 0 identical sets, 1 about the Google-vs-Twitter gap) to "
             f"{len(held_out)} held-out Twitter emoji on white; {n} generated images per row with the held-out names as "
             f"prompts and the same seeds.", "",
             "| images | style distance | colour | gradient | spectrum (dB) |", "|---|---|---|---|---|"]
    for name, d in result.items():
        lines.append(f"| {name} | {cell(d['style'])} | {cell(d['colour'])} | {cell(d['gradient'], '.3f')} | {cell(d['spectrum'])} |")
    lines += ["", "![held-out Twitter emoji and generations](style.png)", ""]
    return result, lines


# -- main --------------------------------------------------------------------------------------------
@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="diffusers folder or hub id (default: the embedded mini-sd)")
    p.add_argument("--quick", action="store_true", help="a few images and steps: checks that everything runs")
    p.add_argument("-n", type=int, default=256, help="images per set (default 256)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--device", default=None)
    p.add_argument("--data", type=Path, default=ROOT / "training" / "data")
    p.add_argument("--out", type=Path, default=None, help="default experiments/results (experiments/results/quick with --quick)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.n_boot = min(args.n, 4), min(args.steps, 1), min(args.n_boot, 100)
    colors = COLOR_GRID[:2] if args.quick else COLOR_GRID
    per_color = 2 if args.quick else max(2, args.n // len(COLOR_GRID))
    out = args.out or ROOT / "experiments" / "results" / ("quick" if args.quick else "")
    for s in ("google", "twitter"):
        if not (args.data / s / "manifest.jsonl").exists():
            print(f"reproduce: no emoji data at {args.data / s}; run: python -m training.fetch_data", file=sys.stderr)
            return 2


    from leakstyle.leak import image_size
    from leakstyle.pipeline import load_pipeline
    from leakstyle.report import generate_set

    try:
        pipe = load_pipeline(args.model, device=args.device)
    except LeakstyleError as e:
        print(f"reproduce: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    height, width = image_size(pipe)
    size = (width, height)
    start = time.perf_counter()

    def gen(prompts, **kw):
        return generate_set(pipe, prompts, seed=args.seed, steps=args.steps, guidance=args.guidance, **kw)

    model = args.model or "leakstyle mini-sd (embedded)"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        r1, l1, style, captions, noise_images = bias(pipe, args.data, args.n, size, gen, args.n_boot, args.seed, out, workdir)
        print("\n".join(l1), flush=True)
        r2, l2 = colour_control(pipe, colors, per_color, captions, noise_images, style, gen, args.n_boot, args.seed, out)
        print("\n".join(l2), flush=True)
        r3, l3 = style_adaptation(pipe, args.data, args.n, size, gen, args.n_boot, args.seed, out, workdir)
        print("\n".join(l3), flush=True)
    minutes = (time.perf_counter() - start) / 60
    header = ["# Reproducing the papers' claims on the embedded model", "",
              f"Model `{model}`, {width}x{height} px, {args.steps} steps ({type(pipe.scheduler).__name__}), guidance "
              f"{args.guidance}, seed {args.seed}; intervals are 95% bootstrap intervals ({args.n_boot} resamples). "
              f"Made by `experiments/reproduce.py{' --quick' if args.quick else ''}` in {minutes:.1f} min.", ""]
    (out / "README.md").write_text("\n".join(header + l1 + l2 + l3))
    config = dict(model=model, n=args.n, steps=args.steps, guidance=args.guidance, seed=args.seed, n_boot=args.n_boot,
                  quick=args.quick, width=width, height=height, colors=list(colors), per_color=per_color)
    (out / "results.json").write_text(json.dumps(as_json({"config": config, "bias": r1, "colour_control": r2,
                                                          "style_adaptation": r3}), indent=1))
    print(f"wrote {out / 'README.md'} in {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
