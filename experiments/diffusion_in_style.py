"""Diffusion in Style on the embedded model: does fine-tuning with style noise bring generations closer to a new
style than the same fine-tuning with standard noise?

    .venv/bin/python experiments/diffusion_in_style.py [--images 32] [--steps 100,200,400,800] [--lora RANK]
    .venv/bin/python experiments/diffusion_in_style.py --quick      # smoke run on a tiny random model, seconds

The embedded mini-sd was trained on Google (Noto) emoji; Twitter (Twemoji) emoji are the new style. Both runs
fine-tune on the same --images Twitter emoji of the train split (base emoji, a seeded choice, on white, captioned
with their names), one with --noise style, one with --noise standard: same seed, lr, batch and steps. At each
step count (a run continues from its checkpoint with --resume) each model draws one image per held-out Twitter
emoji name (eval split), image i from seed + i for every row, and leakstyle.metrics.style_distance measures how
far those images are from the held-out Twitter images (1.0 is about the Google-Twitter gap, lower is closer),
with a 95% bootstrap interval over both image sets (it does not cover the fine-tuning's own seed). At each step
count, the paired difference style minus standard (negative: style noise is closer), resampling the held-out
names together for both rows, is the comparison the experiment is for.
Reference rows: the base model from pure noise and from the signal leak of the style (no training), and the
fine-tuning images themselves (how close 32 real Twitter emoji get: the floor of the measure).

Writes OUT/results.md, OUT/results.json and OUT/distance.png (OUT: --out, experiments/results/diffusion_in_style).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import leakstyle as ls  # noqa: E402
from leakstyle.finetune import checkpoints, finetune  # noqa: E402
from leakstyle.images import open_image  # noqa: E402
from leakstyle.metrics import bootstrap, features_of, style_distance, style_intervals  # noqa: E402
from leakstyle.pipeline import EMBEDDED_MODEL  # noqa: E402

DATA = ROOT / "training" / "data" / "twitter"


def load_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]


def choose(rows: list[dict], n_train: int, n_heldout: int | None, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded choice of n_train base emoji (no skin-tone variants) of the train split; held-out base emoji of eval."""
    base = [r for r in rows if r.get("unified", r["file"]) == r.get("base", r.get("unified", r["file"]))]
    train = sorted((r for r in base if r["split"] == "train"), key=lambda r: r["file"])
    heldout = sorted((r for r in base if r["split"] == "eval"), key=lambda r: r["file"])
    rng = random.Random(seed)
    train = rng.sample(train, min(n_train, len(train)))
    if n_heldout is not None:
        heldout = rng.sample(heldout, min(n_heldout, len(heldout)))
    return train, heldout


def write_style_folder(data: Path, rows: list[dict], folder: Path) -> Path:
    """The fine-tuning images in the diffusers ImageFolder layout: the PNGs and a metadata.jsonl of their names."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    lines = []
    for i, r in enumerate(rows):
        name = f"{i:03d}-{Path(r['file']).name}"
        shutil.copyfile(data / r["file"], folder / name)
        lines.append(json.dumps({"file_name": name, "text": r["name"]}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def synthetic_data(folder: Path, n: int = 12) -> Path:
    """A manifest.jsonl folder of coloured discs on transparency, for --quick without the real data."""
    from PIL import Image, ImageDraw

    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        ImageDraw.Draw(image).ellipse((8, 8, 56, 56), fill=tuple(int(c) for c in rng.integers(0, 256, 3)) + (255,))
        image.save(folder / "img" / f"{i:04x}.png")
        rows.append({"file": f"img/{i:04x}.png", "name": f"disc {i}", "category": "symbols", "unified": f"{i:04X}",
                     "base": f"{i:04X}", "split": "eval" if i % 3 == 0 else "train"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def generate_for(pipe, names: list[str], args, **kwargs) -> list:
    """One image per name, image i from seed + i (the same seeds for every row), in chunks of 16."""
    images = []
    for start in range(0, len(names), 16):
        images += ls.generate(pipe, names[start:start + 16], seed=args.seed + start, num_inference_steps=args.inference_steps,
                              guidance_scale=args.guidance, scheduler=args.scheduler, **kwargs)
    return images


def paired_difference(a, b, reference, n_boot: int, seed: int):
    """style_distance(a, ref) - style_distance(b, ref) with a bootstrap interval that resamples the pairs
    (a[i], b[i]) together and the reference independently: a and b drew the same prompts with the same seeds."""
    def statistic(index, ref):
        return style_distance(a[index], ref) - style_distance(b[index], ref)
    return bootstrap(statistic, (np.arange(len(a)), reference), n_boot, seed=seed)


def plot(results: list[dict], file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for noise, colour in (("style", "tab:red"), ("standard", "tab:blue")):
        rows = [r for r in results if r.get("noise") == noise]
        steps, d = [r["steps"] for r in rows], np.array([r["distance"] for r in rows])
        error = [d - [r["low"] for r in rows], [r["high"] for r in rows] - d]
        ax.errorbar(steps, d, yerr=error, fmt="o-", capsize=3, color=colour, label=f"{noise} noise (95% interval)")
    for r, style in zip([r for r in results if "noise" not in r and "difference" not in r], (":", "--", "-.")):
        ax.axhline(r["distance"], color="grey", linestyle=style, label=r["row"])
    ax.set_xlabel("fine-tuning steps")
    ax.set_ylabel("style distance to held-out Twitter emoji")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(file)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="base model (default: the embedded mini-sd)")
    p.add_argument("--data", type=Path, default=None, help=f"Twitter emoji with manifest.jsonl (default {DATA})")
    p.add_argument("--images", type=int, default=32, help="fine-tuning images (default 32)")
    p.add_argument("--heldout", type=int, default=None, help="held-out emoji to draw (default: all held-out base emoji)")
    p.add_argument("--steps", default="100,200,400,800", help="step counts to measure at (default 100,200,400,800)")
    p.add_argument("--lr", type=float, default=None, help="default: finetune's (1e-5 full, 1e-4 LoRA)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lora", type=int, default=None, metavar="RANK")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inference-steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--scheduler", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "diffusion_in_style")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the images (default 1000)")
    p.add_argument("--quick", action="store_true", help="smoke run: a tiny random model, 4 images, 1-2 steps")
    args = p.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        from leakstyle.testing import tiny_sd

        args.images, args.heldout, args.steps, args.batch_size, args.inference_steps = 4, args.heldout or 3, "1,2", 2, 2
        args.n_boot = 20
        if args.model is None:
            args.model = str(tiny_sd(out / "tiny-sd"))
        if args.data is None and not DATA.is_dir():
            args.data = synthetic_data(out / "synthetic-data")
    elif args.model is None and not (EMBEDDED_MODEL / "model_index.json").exists():
        sys.exit(f"the embedded model is not at {EMBEDDED_MODEL} yet; pass --model, or --quick for a smoke run")
    data = args.data or DATA
    if not (data / "manifest.jsonl").is_file():
        sys.exit(f"no manifest.jsonl in {data}: run `python -m training.fetch_data`, or pass --data")
    step_counts = sorted({int(s) for s in args.steps.split(",")})

    start = time.perf_counter()
    train, heldout = choose(load_rows(data), args.images, args.heldout, args.seed)
    images = write_style_folder(data, train, out / "style-images")
    reference = [open_image(data / r["file"]) for r in heldout]
    names = [r["name"] for r in heldout]
    print(f"fine-tuning on {len(train)} Twitter emoji, measuring on {len(heldout)} held-out ones; steps {step_counts}")

    results = []

    reference = features_of(reference)
    features = {}  # row name -> features of its generated images (image i: held-out name i, seed + i)

    def record(row: dict, generated) -> None:
        features[row["row"]] = generated = features_of(generated)
        interval = style_intervals(generated, reference, n_boot=args.n_boot, seed=args.seed)["style"]
        row.update(distance=interval.estimate, low=interval.low, high=interval.high)
        results.append(row)
        print(f"{row['row']:<52} {row['distance']:.3f} [{row['low']:.2f}, {row['high']:.2f}]   "
              f"({time.perf_counter() - start:.0f} s)", flush=True)

    record({"row": "the fine-tuning images themselves"}, [open_image(data / r["file"]) for r in train])
    options = dict(model=args.model, batch_size=args.batch_size, lr=args.lr, lora=args.lora, seed=args.seed,
                   checkpoint_every=0, device=args.device, progress=not args.quick)
    runs = {noise: out / "runs" / noise for noise in ("style", "standard")}
    for steps in step_counts:
        for noise, run in runs.items():
            resume = bool(checkpoints(run))
            finetune(images, run, steps=steps, noise=noise, resume=resume, **options)
            pipe = ls.load_pipeline(run, device=args.device)
            record({"row": f"{noise} noise, {steps} steps", "noise": noise, "steps": steps},
                   generate_for(pipe, names, args))
        if steps == step_counts[0]:  # the base model, and its signal leak of the style the runs fitted
            base = ls.load_pipeline(args.model, device=args.device)
            style = ls.load(runs["style"] / "style.safetensors")
            record({"row": "base model, pure noise"}, generate_for(base, names, args))
            record({"row": "base model, signal leak of the style (no training)"}, generate_for(base, names, args, style=style))

    for steps in step_counts:  # style minus standard, paired: both drew the same names with the same seeds
        d = paired_difference(features[f"style noise, {steps} steps"], features[f"standard noise, {steps} steps"],
                              reference, args.n_boot, args.seed)
        results.append({"row": f"style minus standard noise, {steps} steps", "difference": True, "steps": steps,
                        "distance": d.estimate, "low": d.low, "high": d.high})
    results.sort(key=lambda r: ("noise" in r or "difference" in r, r.get("steps", 0), r.get("noise") != "style"))
    lines = ["| row | style distance to held-out Twitter emoji [95% bootstrap interval] |", "|---|---|"]
    lines += [f"| {r['row']} | {r['distance']:.3f} [{r['low']:.2f}, {r['high']:.2f}] |" for r in results]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (out / "results.md").write_text("\n".join(lines) + "\n\n" + json.dumps(settings) + "\n")
    (out / "results.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
    plot(results, out / "distance.png")
    print("\n".join(lines))
    print(f"wrote {out / 'results.md'}, results.json and distance.png in {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
