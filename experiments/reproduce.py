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


# 16 prompts, some of large objects that cover most of the image, and the 16 colours of COLOR_GRID. Calibrated
# mode fits nothing to them; its two design choices (the ring's width, steering at every step) were picked on
# COLOR_GRID[::2] x COLOR_PROMPTS[::2], so the README also reports the other half, COLOR_GRID[1::2] x COLOR_PROMPTS[1::2].
COLOR_PROMPTS = ("full moon", "red apple", "globe showing americas", "black large square", "white large square",
                 "large blue circle", "sunflower", "basketball", "hot beverage", "house", "pile of poo", "crown",
                 "alien", "four leaf clover", "soccer ball", "face with tears of joy")
IMG2IMG_STRENGTHS = (0.9, 0.95, 1.0)


def img2img_steps(strength: float, steps: int) -> int:
    """The num_inference_steps at which img2img at `strength` runs exactly `steps` denoising steps."""
    n = next(n for n in range(steps, 10 * steps) if int(n * strength) >= steps)
    if int(n * strength) != steps:
        raise ValueError(f"no step count runs exactly {steps} steps at strength {strength}")
    return n


def flat_img2img(pipe, prompts, rgb: str, strength: float, seed: int, steps: int, guidance: float):
    """What ComfyUI users do today: encode a flat image of the colour and denoise it at `strength`, image i from
    seed + i, with `steps` denoising steps actually run."""
    from diffusers import AutoPipelineForImage2Image
    from PIL import Image

    from leakstyle.encode import parse_color

    from leakstyle.leak import image_size

    i2i = AutoPipelineForImage2Image.from_pipe(pipe)
    i2i.set_progress_bar_config(disable=True)
    height, width = image_size(pipe)
    flat = Image.new("RGB", (width, height), parse_color(rgb))
    gens = [torch.Generator(pipe.unet.device).manual_seed(seed + i) for i in range(len(prompts))]
    return i2i(prompt=list(prompts), image=[flat] * len(prompts), strength=strength, guidance_scale=guidance,
               num_inference_steps=img2img_steps(strength, steps), generator=gens).images


def colour_control(pipe, colors, prompts, gen, n_boot: int, seed: int, steps: int, guidance: float, out: Path,
                   img2img_prompts: int | None = None, only: set[str] | None = None):
    """CIEDE2000 between each requested colour and the border (and whole-image mean) of images made for it by each
    method, over the prompt/seed pairs (prompt i, seed + i); pooled medians and 90th percentiles with bootstrap intervals."""
    from leakstyle.report import mean_border_hex

    methods = {"calibrated": lambda c: gen(prompts, color=c, color_mode="calibrated"),
               "raw": lambda c: gen(prompts, color=c, color_mode="raw")}
    noise_images = []
    methods["pure noise"] = lambda c: noise_images or noise_images.extend(gen(prompts)) or noise_images
    k = img2img_prompts or len(prompts)
    for s in IMG2IMG_STRENGTHS:
        methods[f"flat-colour img2img {s:g}"] = (
            lambda c, s=s: flat_img2img(pipe, prompts[:k], c, s, seed, steps, guidance))
    if only:
        methods = {m: make for m, make in methods.items() if m in only or m.rsplit(" ", 1)[0] in only}
    rows = {c: {} for c in colors}
    pooled = {m: {"border": [], "whole": []} for m in methods}
    for m, make in methods.items():
        started = time.perf_counter()
        for c in colors:
            images = make(c)
            border, whole = metrics.color_errors(images, c, "border"), metrics.color_errors(images, c)
            pooled[m]["border"].append(border)
            pooled[m]["whole"].append(whole)
            rows[c][m] = {"obtained": mean_border_hex(images), "border": border.tolist(), "whole": whole.tolist(),
                          "median": metrics.bootstrap(np.median, (border,), n_boot, seed=seed)}
        b, w = np.concatenate(pooled[m]["border"]), np.concatenate(pooled[m]["whole"])
        print(f"[colour: {m}, {time.perf_counter() - started:.0f} s: border median {np.median(b):.1f} p90 "
              f"{np.quantile(b, 0.9):.1f}, whole-image median {np.median(w):.1f} p90 {np.quantile(w, 0.9):.1f}; per colour "
              + ", ".join(f"{c} {rows[c][m]['obtained']} {np.median(rows[c][m]['border']):.1f}" for c in colors) + "]",
              file=sys.stderr, flush=True)
    stat = lambda e: {"median": float(np.median(e)), "p90": float(np.quantile(e, 0.9))}  # noqa: E731
    summary = {m: {where: metrics.bootstrap(stat, (np.concatenate(parts[where]),), n_boot, seed=seed)
                   for where in ("border", "whole")} for m, parts in pooled.items()}
    plot_colour_grid(rows, list(methods), out / "colors.png")
    n_i2i = f"{k} prompts" if k != len(prompts) else "the same prompts"
    lines = ["## 2. Colour control", "",
             f"{len(colors)} requested colours x {len(prompts)} prompt/seed pairs (prompt i with seed {seed} + i), prompts and "
             f"colours as in the comment above COLOR_PROMPTS. CIEDE2000 between the requested colour and the mean colour of each "
             f"image's {metrics.BORDER}-pixel border (the background), and of the whole image. *calibrated*: "
             f"`color_mode=\"calibrated\"` (leakstyle.color: the noise's own DC cancelled in x_T and the model's predicted "
             f"background steered to the colour at every step); *raw*: the DC of x~ set to the encoding of the colour "
             f"(the paper); *pure noise*: the same prompts and seeds without a leak; *flat-colour img2img s*: a flat "
             f"image of the colour encoded and denoised at strength s with {steps} denoising steps run ({n_i2i}).", "",
             "| method | border median | border p90 | whole-image median | whole-image p90 |", "|---|---|---|---|---|"]
    for m in methods:
        b, w = summary[m]["border"], summary[m]["whole"]
        lines.append(f"| {m} | {cell(b['median'], '.1f')} | {cell(b['p90'], '.1f')} | {cell(w['median'], '.1f')} | "
                     f"{cell(w['p90'], '.1f')} |")
    held_out = {m: held_out_half(rows, m, len(prompts)) for m in methods}
    if all(e.size for e in held_out.values()):
        lines += ["", f"The half not seen while choosing calibrated mode's design ({len(colors[1::2])} colours x "
                  f"{len(prompts[1::2])} prompt/seed pairs: COLOR_GRID[1::2] x COLOR_PROMPTS[1::2]), border CIEDE2000:", "",
                  "| method | border median | border p90 |", "|---|---|---|"]
        for m, e in held_out.items():
            b = metrics.bootstrap(stat, (e,), n_boot, seed=seed)
            lines.append(f"| {m} | {cell(b['median'], '.1f')} | {cell(b['p90'], '.1f')} |")
    lines += ["", "| requested | " + " | ".join(f"{m}: obtained, median" for m in methods) + " |",
              "|---|" + "---|" * len(methods)]
    for c, r in rows.items():
        lines.append(f"| {c} | " + " | ".join(f"{r[m]['obtained']} {r[m]['median'].estimate:.1f}" for m in methods) + " |")
    lines += ["", "![requested and obtained colours per method](colors.png)", ""]
    return {"summary": summary, "colors": rows, "prompts": list(prompts)}, lines


def held_out_half(rows: dict, method: str, n_prompts: int) -> np.ndarray:
    """The border errors of colours 1, 3, 5, ... x prompts 1, 3, 5, ... (the img2img rows may have fewer prompts)."""
    errors = [rows[c][method]["border"][1::2] for c in list(rows)[1::2]]
    return np.concatenate(errors) if errors and len(rows[list(rows)[0]][method]["border"]) == n_prompts else np.array([])


def plot_colour_grid(rows: dict, methods: list[str], path: Path) -> None:
    """Top: the requested colour and the mean border colour each method obtained. Bottom: median CIEDE2000 per
    colour and method with its 95% bootstrap interval."""
    from leakstyle.report import pyplot

    plt = pyplot()
    colors = list(rows)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.7 * len(colors) + 2.5), 2.2 + 0.45 * len(methods) + 2.6),
                                      height_ratios=(0.45 * (len(methods) + 1), 2.6))
    labels = ["requested"] + methods
    for i, c in enumerate(colors):
        for j, label in enumerate(labels):
            fill = c if label == "requested" else rows[c][label]["obtained"]
            top.add_patch(plt.Rectangle((i, len(labels) - 1 - j), 0.9, 0.9, color=fill, ec="black", lw=0.5))
    top.set_xlim(-0.1, len(colors))
    top.set_ylim(-0.1, len(labels))
    top.set_yticks([len(labels) - 1 - j + 0.45 for j in range(len(labels))], labels, fontsize=7)
    top.set_xticks([])
    top.set_title("requested colour and mean border colour obtained", fontsize=8)
    x = np.arange(len(colors))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        med = np.array([rows[c][m]["median"].estimate for c in colors])
        lo = np.array([rows[c][m]["median"].low for c in colors])
        hi = np.array([rows[c][m]["median"].high for c in colors])
        bottom.errorbar(x - 0.4 + (j + 0.5) * width, med, yerr=[med - lo, hi - med], fmt="o", ms=3, capsize=2, label=m)
    bottom.axhline(10, color="gray", lw=0.5, ls="--")
    bottom.set_xticks(x, colors, fontsize=7, rotation=30)
    bottom.set_ylabel("median CIEDE2000 (border)", fontsize=8)
    bottom.legend(fontsize=6, ncol=3)
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
    p.add_argument("--experiments", default="bias,colour,style",
                   help="which to run, comma-separated (default all three; colour alone needs no emoji data)")
    p.add_argument("--color-pairs", type=int, default=len(COLOR_PROMPTS), help="prompt/seed pairs per colour (default 16)")
    p.add_argument("--color-methods", default=None, help="only these rows of the colour experiment, comma-separated: "
                   "calibrated, raw, pure noise, flat-colour img2img (default all)")
    p.add_argument("--img2img-pairs", type=int, default=None, help="prompt/seed pairs per colour for the img2img rows "
                   "(default: --color-pairs)")
    args = p.parse_args(argv)
    wanted = set(args.experiments.split(","))
    if not wanted <= {"bias", "colour", "style"}:
        print("reproduce: --experiments takes bias, colour and style", file=sys.stderr)
        return 2
    if args.quick:
        args.n, args.steps, args.n_boot = min(args.n, 4), min(args.steps, 1), min(args.n_boot, 100)
    colors = COLOR_GRID[:2] if args.quick else COLOR_GRID
    color_prompts = COLOR_PROMPTS[:2] if args.quick else COLOR_PROMPTS[:args.color_pairs]
    out = args.out or ROOT / "experiments" / "results" / ("quick" if args.quick else "")
    for s in ("google", "twitter") if wanted & {"bias", "style"} else ():
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
    results, lines = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if "bias" in wanted:
            results["bias"], part, *_ = bias(pipe, args.data, args.n, size, gen, args.n_boot, args.seed, out, workdir)
            print("\n".join(part), flush=True)
            lines += part
        if "colour" in wanted:
            results["colour_control"], part = colour_control(pipe, colors, color_prompts, gen, args.n_boot, args.seed,
                                                             args.steps, args.guidance, out, args.img2img_pairs,
                                                             set(args.color_methods.split(",")) if args.color_methods else None)
            print("\n".join(part), flush=True)
            lines += part
        if "style" in wanted:
            results["style_adaptation"], part = style_adaptation(pipe, args.data, args.n, size, gen, args.n_boot, args.seed,
                                                                 out, workdir)
            print("\n".join(part), flush=True)
            lines += part
    minutes = (time.perf_counter() - start) / 60
    header = ["# Reproducing the papers' claims on the embedded model", "",
              f"Model `{model}`, {width}x{height} px, {args.steps} steps ({type(pipe.scheduler).__name__}), guidance "
              f"{args.guidance}, seed {args.seed}; intervals are 95% bootstrap intervals ({args.n_boot} resamples). "
              f"Made by `experiments/reproduce.py {' '.join(sys.argv[1:] if argv is None else argv)}` in {minutes:.1f} min.", ""]
    name = "README.md" if wanted == {"bias", "colour", "style"} else f"README-{'-'.join(sorted(wanted))}.md"
    (out / name).write_text("\n".join(header + lines))
    config = dict(model=model, n=args.n, steps=args.steps, guidance=args.guidance, seed=args.seed, n_boot=args.n_boot,
                  quick=args.quick, width=width, height=height, colors=list(colors), color_prompts=list(color_prompts),
                  experiments=sorted(wanted))
    json_name = "results.json" if name == "README.md" else name.replace("README", "results").replace(".md", ".json")
    (out / json_name).write_text(json.dumps(as_json({"config": config, **results}), indent=1))
    print(f"wrote {out / name} in {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
