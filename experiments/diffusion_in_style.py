"""Diffusion in Style on the embedded model, over fine-tuning seeds: does fine-tuning with style noise bring
generations closer to a new style than the same fine-tuning with standard noise, and does a style-friendly
timestep draw add to it?

    .venv/bin/python experiments/diffusion_in_style.py [--styles twitter,lineart] [--seeds 0,1,2,3,4]
        [--steps 300,800] [--timesteps uniform,logsnr] [--lr 1e-4] [--inference-steps 20] [--images 32]
    .venv/bin/python experiments/diffusion_in_style.py --quick      # smoke run on a tiny random model, seconds
    .venv/bin/python experiments/diffusion_in_style.py ... --report # tables from the cached cells only, no training

The embedded mini-sd was trained on Google (Noto) emoji. Two new styles:
- twitter: Twitter (Twemoji) emoji, which differ from Noto mostly in fine detail;
- lineart: the Noto emoji's edges, dark lines on white (made here, see `line_art`), which differ from them in
  their low frequencies, as the paper's anime sketches differ from Stable Diffusion's images.
For each style, fine-tuning seed s and configuration (noise style|standard x timesteps uniform|logsnr), one run
fine-tunes the base model on --images emoji of the style's train split (base emoji, a draw seeded by s, captioned
with their names); s also seeds the run's noise, timesteps and batch order. All other settings are shared.
At each step count (a run continues from its checkpoint) each model draws one image per held-out emoji name
(the eval split, the same for every seed), image i from seed i in every row, and leakstyle.metrics.style_distance
measures how far they are from the style's held-out images (1.0 is about the Google-Twitter gap; lower is closer).

Intervals (95%): per seed, a bootstrap over the held-out images (the old experiment's rows, which do not cover
the fine-tuning's own randomness). Over seeds, the mean of the seeds' values with a two-level bootstrap: seeds
drawn with replacement, then within each the held-out names (shared by that seed's rows: paired), and the
reference images. Contrasts: style minus standard noise (for each timestep draw), logsnr minus uniform (for each
noise) and the interaction (style-minus-standard under logsnr minus the same under uniform: 0 if the two ideas
simply add up). Reference rows: the base model from pure noise and from the signal leak of each seed's style,
and the fine-tuning images themselves (the measure's floor).

Everything is cached under OUT (--out, default experiments/results/diffusion_in_style_seeds): fine-tunes in
runs/KEY/STYLE/seed-S/NOISE-TIMESTEPS/ (resumable), the features of each row's images in
cells/KEY/STYLE/seed-S/ROW.npz (KEY: a digest of the other settings, so that other settings never mix).
A killed run restarts where it stopped; rerunning with more seeds or steps adds only the new cells. The cells
are small (about 30 kB each, compressed) and committed; the runs are not (a later session retrains only unfinished cells).
--report trains and generates nothing: it reports the cells that exist, each contrast over the seeds that have
all its cells, and lists the missing ones.
Writes OUT/results.md, OUT/results.json and OUT/distance-STYLE.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import leakstyle as ls  # noqa: E402
from leakstyle.finetune import checkpoints, finetune  # noqa: E402
from leakstyle.images import open_image  # noqa: E402
from leakstyle.metrics import Interval, StyleFeatures, features_of, style_distance, style_intervals  # noqa: E402
from leakstyle.pipeline import EMBEDDED_MODEL  # noqa: E402

DATA = ROOT / "training" / "data"  # python -m training.fetch_data writes DATA/google and DATA/twitter
STYLES = {"twitter": "twitter", "lineart": "google"}  # style -> the emoji set its images come from
NOISES, TIMESTEPS = ("style", "standard"), ("uniform", "logsnr")
LINE_THRESHOLD = 24  # grey levels of the Laplacian above which a pixel is a line


# -- data --------------------------------------------------------------------------------------------
def load_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]


def base_emoji(rows: list[dict], split: str) -> list[dict]:
    """The base emoji (no skin-tone variants) of a split, in file order."""
    return sorted((r for r in rows if r["split"] == split and r.get("unified", r["file"]) == r.get("base", r.get("unified", r["file"]))),
                  key=lambda r: r["file"])


def train_draw(rows: list[dict], n: int, seed: int) -> list[dict]:
    """The fine-tuning images of seed `seed`: a seeded draw of n base emoji of the train split."""
    train = base_emoji(rows, "train")
    return random.Random(seed).sample(train, min(n, len(train)))


def heldout_rows(rows: list[dict], n: int | None) -> list[dict]:
    """The held-out base emoji of the eval split (all, or a fixed draw of n): the same for every seed."""
    heldout = base_emoji(rows, "eval")
    return heldout if n is None else random.Random(0).sample(heldout, min(n, len(heldout)))


def line_art(image) -> "Image.Image":
    """An image's edges as dark lines on white: the positive part of the Laplacian of its grey levels
    (8 x centre - the 8 neighbours, edges padded), a line where it exceeds LINE_THRESHOLD."""
    from PIL import Image, ImageOps

    grey = np.asarray(ImageOps.grayscale(image), dtype=np.float64)
    p = np.pad(grey, 1, mode="edge")
    H, W = grey.shape
    neighbours = sum(p[1 + dy:1 + dy + H, 1 + dx:1 + dx + W] for dy in (-1, 0, 1) for dx in (-1, 0, 1)) - grey
    laplacian = 8 * grey - neighbours
    return Image.fromarray(np.where(laplacian > LINE_THRESHOLD, 0, 255).astype(np.uint8)).convert("RGB")


def style_data(style: str, data: Path, out: Path) -> Path:
    """A folder with manifest.jsonl of the style's images: the emoji set itself, or its line art (made once)."""
    source = data / STYLES[style]
    if not (source / "manifest.jsonl").is_file():
        sys.exit(f"no manifest.jsonl in {source}: run `python -m training.fetch_data`, or pass --data")
    if style != "lineart":
        return source
    folder = out / "lineart-data"
    if (folder / "manifest.jsonl").is_file():
        return folder
    rows = load_rows(source)
    tmp = out / ".lineart-data.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for r in rows:
        target = tmp / r["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        line_art(open_image(source / r["file"])).save(target)
    (tmp / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, folder)
    return folder


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
    """A data folder with google/ and twitter/ sets of coloured discs on transparency, for --quick without the real data."""
    from PIL import Image, ImageDraw

    for set_name, seed in (("google", 0), ("twitter", 1)):
        (folder / set_name / "img").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        rows = []
        for i in range(n):
            image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
            ImageDraw.Draw(image).ellipse((8, 8, 56, 56), fill=tuple(int(c) for c in rng.integers(0, 256, 3)) + (255,))
            image.save(folder / set_name / "img" / f"{i:04x}.png")
            rows.append({"file": f"img/{i:04x}.png", "name": f"disc {i}", "category": "symbols", "unified": f"{i:04X}",
                         "base": f"{i:04X}", "split": "eval" if i % 3 == 0 else "train"})
        (folder / set_name / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# -- cells: the features of one row's images, computed once ------------------------------------------
def cached(file: Path, make) -> StyleFeatures | None:
    """The StyleFeatures stored in `file`, or features_of(make()) stored there first (written atomically);
    None when the file does not exist and `make` is None."""
    if file.is_file():
        with np.load(file) as z:
            return StyleFeatures(z["colour"], z["gradient"], z["spectrum"], z["bandwidth"])
    if make is None:
        return None
    features = features_of(make())
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.stem + ".tmp.npz")
    np.savez_compressed(tmp, **asdict(features))  # mostly empty histograms: a tenth of the size
    os.replace(tmp, file)
    return features


def settings_key(args, style: str) -> str:
    """A short digest of the settings a style's cells depend on (all but seeds, steps and timestep draws): the
    options, and the content of the emoji set the style comes from (its manifest), not the folder it lies in."""
    import hashlib

    keys = ("model", "images", "heldout", "lr", "batch_size", "lora", "inference_steps", "guidance", "scheduler")
    settings = {k: str(getattr(args, k)) for k in keys}
    settings["data"] = hashlib.sha256((args.data / STYLES[style] / "manifest.jsonl").read_bytes()).hexdigest()
    if style == "lineart":
        settings["line_threshold"] = LINE_THRESHOLD
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def generate_for(pipe, names: list[str], args, **kwargs) -> list:
    """One image per name, image i from seed i (the same seeds for every row and fine-tuning seed), 16 at a time."""
    images = []
    for start in range(0, len(names), 16):
        images += ls.generate(pipe, names[start:start + 16], seed=start, num_inference_steps=args.inference_steps,
                              guidance_scale=args.guidance, scheduler=args.scheduler, **kwargs)
    return images


def train_to(run: Path, images: Path, steps: int, **options) -> None:
    """Fine-tune `run` to `steps`, continuing from its last checkpoint; started over when it has none usable."""
    done = [s for s, _ in checkpoints(run)]
    resume = bool(done) and done[-1] <= steps
    finetune(images, run, steps=steps, resume=resume, force=run.exists() and not resume, **options)


# -- intervals over seeds ----------------------------------------------------------------------------
def recentred(estimate: float, values: list[float], level: float = 0.95) -> Interval:
    """The central `level` range of bootstrap values, recentred on the estimate (as leakstyle.metrics.bootstrap)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2]) + (estimate - values.mean())
    return Interval(float(estimate), float(low), float(high), level)


def over_seeds(features: dict[str, list[StyleFeatures]], reference: StyleFeatures, contrasts: dict[str, dict[str, float]],
               n_boot: int, seed: int = 0) -> dict[str, Interval]:
    """Each contrast sum_c w_c d_c (d_c: style distance of row c to the reference) averaged over seeds, with a
    two-level bootstrap: seeds with replacement, then each drawn seed's held-out names (one draw for all its rows,
    which generated the same names with the same seeds), and the reference images; all contrasts share the draws.
    `features[row][s]` are seed s's images of that row, image i from held-out name i."""
    rows = sorted({c for weights in contrasts.values() for c in weights})
    S, n, m = len(features[rows[0]]), len(features[rows[0]][0]), len(reference)

    def value(d: dict[str, np.ndarray]) -> dict[str, float]:  # d[row][k]: distance of the k-th drawn seed
        return {name: float(np.mean(sum(w * d[c] for c, w in weights.items()))) for name, weights in contrasts.items()}

    estimate = value({c: np.array([style_distance(features[c][s], reference) for s in range(S)]) for c in rows})
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        seeds, ref = rng.integers(0, S, S), reference[rng.integers(0, m, m)]
        draws = [(s, rng.integers(0, n, n)) for s in seeds]
        reps.append(value({c: np.array([style_distance(features[c][s][i], ref) for s, i in draws]) for c in rows}))
    return {name: recentred(estimate[name], [r[name] for r in reps]) for name in contrasts}


def t_interval(values: list[float], level: float = 0.95) -> dict[str, float]:
    """mean +- t_{S-1} sd / sqrt(S) over the seeds' values: a cross-check of the bootstrap, whose percentile
    intervals are too narrow with as few as 5 seeds (it treats the seeds' spread as known); {} for one seed."""
    from scipy import stats

    if len(values) < 2:
        return {}
    v = np.asarray(values, dtype=np.float64)
    half = stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return {"t_low": float(v.mean() - half), "t_high": float(v.mean() + half)}


def contrasts_at(steps: int) -> dict[str, dict[str, float]]:
    """The rows and differences reported over seeds at a step count, as weights on per-config distances."""
    cell = {(n, t): f"{n}-{t}-{steps}" for n in NOISES for t in TIMESTEPS}
    out = {f"{n} noise, {t} t": {cell[n, t]: 1.0} for n in NOISES for t in TIMESTEPS}
    for t in TIMESTEPS:
        out[f"style minus standard noise, {t} t"] = {cell["style", t]: 1.0, cell["standard", t]: -1.0}
    for n in NOISES:
        out[f"logsnr minus uniform t, {n} noise"] = {cell[n, "logsnr"]: 1.0, cell[n, "uniform"]: -1.0}
    out["interaction (style - standard under logsnr) - (under uniform)"] = {
        cell["style", "logsnr"]: 1.0, cell["standard", "logsnr"]: -1.0, cell["style", "uniform"]: -1.0,
        cell["standard", "uniform"]: 1.0}
    return out


# -- one style ---------------------------------------------------------------------------------------
def run_style(style: str, args, seeds: list[int], step_counts: list[int], timesteps: list[str],
              start: float) -> tuple[list[dict], list[str]]:
    """The style's rows (per seed, then over seeds) and the rows whose cells are missing (--report)."""
    out = args.out
    data = style_data(style, args.data, out)
    rows = load_rows(data)
    heldout = heldout_rows(rows, args.heldout)
    names = [r["name"] for r in heldout]
    key = settings_key(args, style)  # cells and runs of other settings live apart
    cells_root, runs_root = out / "cells" / key / style, out / "runs" / key / style
    reference = cached(cells_root / "reference.npz", lambda: [open_image(data / r["file"]) for r in heldout])
    if args.report and not (cells_root / "base.npz").is_file():
        print(f"[{style}] no cells of these settings (key {key}) in {cells_root.parent}", flush=True)
    print(f"[{style}] {len(heldout)} held-out images; seeds {seeds}, steps {step_counts}, timesteps {timesteps}", flush=True)
    results, features, missing = [], {}, []

    def record(row: dict, seed: int | None, file: Path, make) -> None:
        f = cached(file, None if args.report else make)
        if f is None:
            missing.append(f"seed {seed}: {row['row']}")
            return
        features.setdefault(row["cell"], {})[seed] = f
        interval = style_intervals(f, reference, n_boot=args.n_boot, seed=0)["style"]
        row.update(style=style, seed=seed, distance=interval.estimate, low=interval.low, high=interval.high)
        results.append(row)
        print(f"[{style}] seed {seed}  {row['row']:<44} {row['distance']:.3f} [{row['low']:.2f}, {row['high']:.2f}]  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)

    base = None

    def base_pipe():
        nonlocal base
        base = base or ls.load_pipeline(args.model, device=args.device)
        return base

    record({"row": "base model, pure noise", "cell": "base"}, None, cells_root / "base.npz",
           lambda: generate_for(base_pipe(), names, args))

    for seed in seeds:
        cells = cells_root / f"seed-{seed}"
        train = train_draw(rows, args.images, seed)
        images = None if args.report else write_style_folder(data, train, out / "style-images" / style / f"seed-{seed}")
        record({"row": "the fine-tuning images themselves", "cell": "train"}, seed, cells / "train.npz",
               lambda: [open_image(data / r["file"]) for r in train])
        options = dict(model=args.model, batch_size=args.batch_size, lr=args.lr, lora=args.lora, seed=seed,
                       checkpoint_every=args.checkpoint_every, device=args.device, progress=not args.quick)
        runs = {(n, t): runs_root / f"seed-{seed}" / f"{n}-{t}" for t in timesteps for n in NOISES}
        for steps in step_counts:
            for (noise, t), run in runs.items():
                def make(run=run, noise=noise, t=t, steps=steps):
                    train_to(run, images, steps, noise=noise, timestep_sampling=t, **options)
                    return generate_for(ls.load_pipeline(run, device=args.device), names, args)
                record({"row": f"{noise} noise, {t} t, {steps} steps", "cell": f"{noise}-{t}-{steps}", "noise": noise,
                        "timesteps": t, "steps": steps}, seed, cells / f"{noise}-{t}-{steps}.npz", make)
        def seed_style(run=runs[("style", timesteps[0])], images=images):
            """The style distribution the seed's fine-tunes drew from: their file, or (runs are not committed) the
            same fit finetune makes (its defaults: dct, 3 components, the model's native size)."""
            file = run / "style.safetensors"
            return ls.load(file) if file.is_file() else ls.fit(images, pipe=base_pipe(), strict=True, progress=False)

        record({"row": "base model, signal leak of the style (no training)", "cell": "leak"}, seed, cells / "leak.npz",
               lambda: generate_for(base_pipe(), names, args, style=seed_style()))

    summary = []  # over seeds: each contrast over the seeds that have all its cells

    def summarise(name: str, weights: dict[str, float], **row) -> None:
        have = [s for s in seeds if all(s in features.get(c, {}) for c in weights)]
        if not have:
            return
        per_cell = {c: [features[c][s] for s in have] for c in weights}
        interval = over_seeds(per_cell, reference, {name: weights}, args.n_boot)[name]
        values = [sum(w * style_distance(features[c][s], reference) for c, w in weights.items()) for s in have]
        summary.append({"row": name, "style": style, "over_seeds": have, "distance": interval.estimate,
                        "low": interval.low, "high": interval.high, **t_interval(values), **row})

    for steps in step_counts:
        for name, weights in contrasts_at(steps).items():
            if all(c.split("-")[1] in timesteps for c in weights):
                summarise(f"{name}, {steps} steps", weights, steps=steps, difference=len(weights) > 1)
                if len(weights) == 2:  # per seed too: the paired difference, interval over held-out images only
                    for seed in (s for s in seeds if all(s in features.get(c, {}) for c in weights)):
                        one = over_seeds({c: [features[c][seed]] for c in weights}, reference, {name: weights}, args.n_boot)[name]
                        results.append({"row": f"{name}, {steps} steps", "style": style, "seed": seed, "steps": steps,
                                        "difference": True, "distance": one.estimate, "low": one.low, "high": one.high})
    summarise("the fine-tuning images themselves", {"train": 1.0})
    summarise("base model, signal leak of the style (no training)", {"leak": 1.0})
    if missing:
        print(f"[{style}] not run yet: " + "; ".join(missing), flush=True)
    return results + summary, missing


# -- reporting ---------------------------------------------------------------------------------------
def plot(results: list[dict], style: str, file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=120)
    colours = {("style", "uniform"): "tab:red", ("standard", "uniform"): "tab:blue",
               ("style", "logsnr"): "tab:orange", ("standard", "logsnr"): "tab:cyan"}
    for (noise, t), colour in colours.items():
        rows = [r for r in results if r["style"] == style and r["row"].startswith(f"{noise} noise, {t} t,") and "over_seeds" in r]
        if not rows:
            continue
        steps, d = [r["steps"] for r in rows], np.array([r["distance"] for r in rows])
        error = [d - [r["low"] for r in rows], [r["high"] for r in rows] - d]
        ax.errorbar(steps, d, yerr=error, fmt="o-", capsize=3, color=colour, label=f"{noise} noise, {t} t")
        per_seed = [r for r in results if r["style"] == style and r.get("noise") == noise and r.get("timesteps") == t]
        ax.scatter([r["steps"] for r in per_seed], [r["distance"] for r in per_seed], color=colour, s=8, alpha=0.4)
    for r, line in zip([r for r in results if r["style"] == style and r.get("cell") == "base"], (":",)):
        ax.axhline(r["distance"], color="grey", linestyle=line, label=r["row"])
    ax.set_xlabel("fine-tuning steps")
    ax.set_ylabel(f"style distance to held-out {style} images")
    ax.set_title("mean over seeds (95% interval over seeds and images); dots: seeds", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(file)
    plt.close(fig)


def tables(results: list[dict], missing: dict[str, list[str]]) -> list[str]:
    lines = []
    for style in dict.fromkeys(r["style"] for r in results):
        mine = [r for r in results if r["style"] == style]
        lines += [f"## {style}: over seeds (mean; 95% interval: two-level bootstrap over seeds and held-out images, "
                  f"and mean +- t sd/sqrt(S) over the seeds' values)", "",
                  "| row | seeds | style distance [bootstrap 95%] | [t 95%] |", "|---|---|---|---|"]
        t_text = (lambda r: f"[{r['t_low']:.2f}, {r['t_high']:.2f}]" if "t_low" in r else "-")
        lines += [f"| {r['row']} | {','.join(map(str, r['over_seeds']))} | {r['distance']:.3f} [{r['low']:.2f}, {r['high']:.2f}] "
                  f"| {t_text(r)} |" for r in mine if "over_seeds" in r]
        lines += ["", f"## {style}: per seed (95% bootstrap interval over held-out images only)", "",
                  "| seed | row | style distance [95% interval] |", "|---|---|---|"]
        lines += [f"| {'-' if r['seed'] is None else r['seed']} | {r['row']} | {r['distance']:.3f} [{r['low']:.2f}, {r['high']:.2f}] |"
                  for r in sorted((r for r in mine if "seed" in r), key=lambda r: -1 if r["seed"] is None else r["seed"])]
        lines += ["", f"Not run yet ({style}): " + ("; ".join(missing.get(style, [])) or "none"), ""]
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="base model (default: the embedded mini-sd)")
    p.add_argument("--data", type=Path, default=None, help=f"emoji data with google/ and twitter/ (default {DATA})")
    p.add_argument("--styles", default="twitter,lineart", help="styles to fine-tune on (default twitter,lineart)")
    p.add_argument("--seeds", default="0,1,2,3,4", help="fine-tuning seeds (default 0,1,2,3,4)")
    p.add_argument("--timesteps", default="uniform,logsnr", help="timestep draws (default uniform,logsnr)")
    p.add_argument("--images", type=int, default=32, help="fine-tuning images per seed (default 32)")
    p.add_argument("--heldout", type=int, default=None, help="held-out emoji to draw (default: all held-out base emoji)")
    p.add_argument("--steps", default="300,800", help="step counts to measure at (default 300,800)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lora", type=int, default=None, metavar="RANK")
    p.add_argument("--inference-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--scheduler", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--checkpoint-every", type=int, default=100, help="fine-tuning checkpoints (default 100 steps)")
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "diffusion_in_style_seeds")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--quick", action="store_true", help="smoke run: a tiny random model, 2 seeds, 4 images, 2 steps")
    p.add_argument("--report", action="store_true", help="train and generate nothing: report the cached cells")
    args = p.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        from leakstyle.testing import tiny_sd

        args.images, args.heldout, args.steps, args.batch_size, args.inference_steps = 4, args.heldout or 3, "2", 2, 2
        args.seeds, args.n_boot, args.checkpoint_every = "0,1", 20, 0
        if args.model is None:
            args.model = str(tiny_sd(out / "tiny-sd"))
        if args.data is None and not (DATA / "twitter").is_dir():
            args.data = synthetic_data(out / "synthetic-data")
    elif args.model is None and not (EMBEDDED_MODEL / "model_index.json").exists():
        sys.exit(f"the embedded model is not at {EMBEDDED_MODEL} yet; pass --model, or --quick for a smoke run")
    args.data = args.data or DATA
    styles = [s for s in args.styles.split(",") if s]
    timesteps = [t for t in args.timesteps.split(",") if t]
    if not styles or set(styles) - set(STYLES):
        sys.exit(f"--styles takes {', '.join(STYLES)}, got {args.styles!r}")
    if not timesteps or set(timesteps) - set(TIMESTEPS):
        sys.exit(f"--timesteps takes {', '.join(TIMESTEPS)}, got {args.timesteps!r}")
    seeds = sorted({int(s) for s in args.seeds.split(",")})
    step_counts = sorted({int(s) for s in args.steps.split(",")})

    start = time.perf_counter()
    results, missing = [], {}
    for style in styles:
        rows, missing[style] = run_style(style, args, seeds, step_counts, timesteps, start)
        results += rows
    lines = tables(results, missing)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (out / "results.md").write_text("\n".join(lines) + "\n" + json.dumps(settings) + "\n")
    (out / "results.json").write_text(json.dumps({"settings": settings, "results": results, "missing": missing}, indent=2) + "\n")
    for style in styles:
        plot(results, style, out / f"distance-{style}.png")
    print("\n".join(lines))
    print(f"wrote {out / 'results.md'}, results.json and distance-*.png in {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
