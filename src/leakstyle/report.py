"""`leakstyle report`: how generations from pure noise and from a signal leak compare with reference images.

n images are generated from pure noise and n from the leak (a style file, or a leak fitted to the reference
images), with the same prompts and seeds (image i: prompt i of the cycled prompt list, seed + i). With
colours, each colour gets `per_color` more images from a flat colour leak, compared with the same prompts
and seeds from pure noise. The metrics (leakstyle.metrics) compare each set with the reference images:

- mean colour and brightness: per CIELAB channel, Wasserstein distance and std ratio with bootstrap intervals;
- style distance (and its colour, gradient and spectrum measures) with bootstrap intervals;
- colour control: CIEDE2000 between the requested colour and the image's border (background) colour.

Writes report.json, distributions.png, samples.png, colors.png (with colours) and report.html into a folder.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from . import __version__, metrics
from .distribution import StyleDistribution
from .encode import parse_color, to_hex
from .errors import LeakstyleError
from .images import list_images, open_image, resize_and_crop
from .outputs import check_output_folder, writing_into

# Emoji names the embedded model was trained on (captions are emoji names); used when no prompts file is given.
DEFAULT_PROMPTS = (
    "grinning face", "cat face", "dog face", "rocket", "sun with face", "slice of pizza", "ghost", "evergreen tree",
    "fire", "glowing star", "rainbow", "crescent moon", "snowflake", "four leaf clover", "red apple", "banana",
    "birthday cake", "soccer ball", "guitar", "electric light bulb", "umbrella", "airplane", "alarm clock", "crown",
    "gem stone", "mushroom", "sunflower", "turtle", "butterfly", "water wave", "party popper", "hot beverage",
)
SETS = ("reference", "pure noise", "leak")
OUTPUTS = ("report.json", "report.html", "distributions.png", "samples.png", "colors.png")


# -- inputs ------------------------------------------------------------------------------------------
def read_prompts(path: str | os.PathLike | None) -> list[str]:
    """One prompt per non-empty line of a text file; DEFAULT_PROMPTS when path is None."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LeakstyleError(f"prompts file not found: {path}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise LeakstyleError(f"cannot read prompts file {path}: {e}; give a UTF-8 text file, one prompt per line") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise LeakstyleError(f"prompts file {path} has no prompts; write one prompt per line")
    return prompts


def parse_colors(text: str | Sequence[str] | None) -> list[str]:
    """'#rrggbb,#rrggbb,...' (or a list) -> normalised '#rrggbb' strings; a one-line error for a bad one."""
    if text is None:
        return []
    items = [c.strip() for c in (text.split(",") if isinstance(text, str) else text) if c.strip()]
    if not items:
        raise LeakstyleError("--colors is empty; give colours like '#1e90ff,#202020'")
    return [to_hex(parse_color(c)) for c in items]


def check_out(out: str | os.PathLike, force: bool = False) -> Path:
    """Refuse a file, or a folder that already holds a report (without force)."""
    check_output_folder(out)
    out = Path(out)
    if (out / "report.json").exists() and not force:
        raise LeakstyleError(f"{out} already holds a report; pass --force to overwrite it or choose another --out")
    return out


def cycle(prompts: Sequence[str], n: int) -> list[str]:
    return [prompts[i % len(prompts)] for i in range(n)]


def generate_set(pipe, prompts: Sequence[str], seed: int = 0, steps: int = 25, guidance: float = 7.5,
                 batch_size: int = 8, bar=None, **kwargs) -> list[Image.Image]:
    """Image i from prompts[i] and seed + i, in batches (kwargs: style, color, ... of leakstyle.generate)."""
    from .pipeline import generate

    images = []
    for start in range(0, len(prompts), batch_size):
        part = list(prompts[start:start + batch_size])
        images += generate(pipe, part, seed=seed + start, num_inference_steps=steps, guidance_scale=guidance, **kwargs)
        if bar is not None:
            bar.update(len(part))
    return images


def load_reference(paths: Sequence[Path], width: int, height: int) -> list[Image.Image]:
    """The reference images, composited on white, resized to cover the generation size and centre-cropped."""
    return [resize_and_crop(open_image(p), width, height) for p in paths]


# -- metrics -----------------------------------------------------------------------------------------
def error_summary(errors: np.ndarray, n_boot: int, seed: int) -> dict:
    stat = lambda e: {"median": float(np.median(e)), "p90": float(np.quantile(e, 0.9))}  # noqa: E731
    return {k: v.as_dict() for k, v in metrics.bootstrap(stat, (np.asarray(errors),), n_boot, seed=seed).items()}


def mean_border_hex(images: Sequence) -> str:
    """'#rrggbb' of the average border colour of a set (for swatches)."""
    rgb = [metrics.as_rgb(im) for im in images]
    return to_hex(np.mean([x[metrics.border_mask(*x.shape[:2])].mean(0) for x in rgb], 0) * 255)


def compute_metrics(sets: dict[str, list], color_runs: dict[str, dict[str, list]], n_boot: int = 1000,
                    seed: int = 0) -> dict:
    """Every number of the report, JSON-ready. sets: name -> images (SETS); color_runs: colour -> {"leak", "pure noise"}."""
    low = {name: metrics.low_frequency(images) for name, images in sets.items()}
    features = {name: metrics.style_features(images) for name, images in sets.items()}
    ref = low["reference"]
    result = {"sets": {name: {"count": len(images), "mean_rgb": low[name].rgb.mean(0).tolist(),
                              "mean_lab": low[name].lab.mean(0).tolist(), "spread": low[name].spread()}
                       for name, images in sets.items()},
              "low_frequency": {}, "style": {}, "colors": {}}
    for name in SETS[1:]:
        compared = metrics.compare_distributions(low[name].lab, ref.lab, n_boot=n_boot, seed=seed)
        result["low_frequency"][name] = {ch: {k: v.as_dict() for k, v in d.items()} for ch, d in compared.items()}
        result["style"][name] = {k: v.as_dict() for k, v in
                                 metrics.style_intervals(features[name], features["reference"], n_boot, seed).items()}
    for color, runs in color_runs.items():
        entry = {"requested_lab": metrics.color_to_lab(color).tolist()}
        for name, images in runs.items():
            border = metrics.color_errors(images, color, mask="border")
            whole = metrics.color_errors(images, color)
            obtained = np.stack([metrics.mean_lab(im, "border") for im in images]).mean(0)
            entry[name] = {"border": error_summary(border, n_boot, seed), "whole_image": error_summary(whole, n_boot, seed),
                           "border_errors": border.round(3).tolist(), "mean_border_lab": obtained.tolist(),
                           "mean_border_rgb": mean_border_hex(images)}
        result["colors"][color] = entry
    return result


# -- plots -------------------------------------------------------------------------------------------
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_distributions(sets: dict[str, list], path: Path) -> None:
    """Histograms of brightness (L*) and of mean R, G, B for each set."""
    plt = pyplot()
    low = {name: metrics.low_frequency(images) for name, images in sets.items()}
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    panels = [("brightness L*", lambda lf: lf.brightness, (0, 100))] + [
        (f"mean {c}", (lambda j: lambda lf: lf.rgb[:, j])(j), (0, 255)) for j, c in enumerate("RGB")]
    for ax, (title, values, limits) in zip(axes, panels):
        bins = np.linspace(*limits, 26)
        for name, lf in low.items():
            v = values(lf)
            ax.hist(v, bins=bins, alpha=0.45, density=True, label=f"{name} (std {v.std(ddof=1) if len(v) > 1 else 0:.1f})")
        ax.set_title(title)
        ax.set_xlim(*limits)
        ax.set_yticks([])
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_colors(result: dict, path: Path) -> None:
    """Per requested colour: swatches (requested, leak's and pure noise's mean border colour) and median CIEDE2000."""
    plt = pyplot()
    colors = list(result["colors"])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(4.0, 1.1 * len(colors) + 1.5), 4.6), height_ratios=(1, 1.3))
    for i, c in enumerate(colors):
        entry = result["colors"][c]
        for row, (label, hexcode) in enumerate([("requested", c), ("leak", entry["leak"]["mean_border_rgb"]),
                                                ("pure noise", entry["pure noise"]["mean_border_rgb"])]):
            top.add_patch(plt.Rectangle((i, 2 - row), 0.9, 0.9, color=hexcode, ec="black", lw=0.5))
    top.set_xlim(-0.1, len(colors))
    top.set_ylim(0, 3)
    top.set_yticks([2.45, 1.45, 0.45], ["requested", "leak", "pure noise"])
    top.set_xticks([])
    top.set_title("mean border colour", fontsize=9)
    x = np.arange(len(colors))
    for k, (name, offset) in enumerate([("leak", -0.2), ("pure noise", 0.2)]):
        med = [result["colors"][c][name]["border"]["median"]["estimate"] for c in colors]
        p90 = [result["colors"][c][name]["border"]["p90"]["estimate"] for c in colors]
        bar = bottom.bar(x + offset, med, width=0.38, label=f"{name}: median", color=("tab:green", "tab:gray")[k])
        bottom.scatter(x + offset, p90, marker="_", s=120, color=bar.patches[0].get_facecolor(), label=f"{name}: 90th percentile")
    bottom.set_xticks(x, colors, fontsize=7, rotation=30)
    bottom.set_ylabel("CIEDE2000 (border)")
    bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def samples_sheet(rows: list[tuple[str, list]], path: Path, cols: int = 8, cell: int = 64, label_width: int = 120) -> None:
    from .demo import grid

    grid([(label, images[:cols]) for label, images in rows], cell=cell, label_width=label_width).save(path)


# -- html --------------------------------------------------------------------------------------------
def fmt(d: dict, spec: str = ".2f") -> str:
    return format(metrics.Interval(d["estimate"], d["low"], d["high"], d.get("level", 0.95)), spec)


def summary_lines(result: dict) -> list[str]:
    """The report's findings in a few sentences."""
    lf, st = result["low_frequency"], result["style"]
    lines = []
    for name in ("pure noise", "leak"):
        r = lf[name]["L*"]["std_ratio"]
        lines.append(f"{name}: brightness spread {r['estimate']:.2f}x the reference's ({fmt(r)}), "
                     f"Wasserstein {fmt(lf[name]['L*']['wasserstein'], '.1f')} L*; style distance {fmt(st[name]['style'])}.")
    for c, entry in result["colors"].items():
        lines.append(f"colour {c}: median CIEDE2000 of the border {entry['leak']['border']['median']['estimate']:.1f} "
                     f"with the leak, {entry['pure noise']['border']['median']['estimate']:.1f} from pure noise.")
    return lines


def write_html(out: Path, result: dict) -> Path:
    cfg = result["config"]
    esc = html.escape
    lf_rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{esc(ch)}</td><td>{fmt(d['std_ratio'])}</td><td>{fmt(d['wasserstein'], '.1f')}</td></tr>"
        for name, chans in result["low_frequency"].items() for ch, d in chans.items())
    st_rows = "".join(
        f"<tr><td>{esc(name)}</td>" + "".join(f"<td>{fmt(d[k], '.3f')}</td>" for k in ("style", *metrics.MEASURES)) + "</tr>"
        for name, d in result["style"].items())
    color_html = ""
    if result["colors"]:
        rows = "".join(
            f"<tr><td><span style='background:{c};padding:0 1.5em;border:1px solid #000'></span> {c}</td>"
            f"<td>{fmt(e['leak']['border']['median'], '.1f')}</td><td>{fmt(e['leak']['border']['p90'], '.1f')}</td>"
            f"<td>{fmt(e['pure noise']['border']['median'], '.1f')}</td><td>{fmt(e['pure noise']['border']['p90'], '.1f')}</td></tr>"
            for c, e in result["colors"].items())
        color_html = f"""<h2>Colour control</h2><img src="colors.png" alt="requested and obtained colours">
<p>CIEDE2000 between the requested colour and the mean colour of each image's {metrics.BORDER}-pixel border (where the
background shows); about 1 is just noticeable, above 10 a different colour. {cfg['per_color']} images per colour from the
leak with the colour in calibrated mode (the noise's own mean cancelled, the predicted background steered to the colour), the same prompts and seeds from pure noise for
comparison.</p>
<table><tr><th>colour</th><th>leak median</th><th>leak 90th pct</th><th>pure noise median</th><th>pure noise 90th pct</th></tr>{rows}</table>"""
    findings = "".join(f"<li>{esc(line)}</li>" for line in summary_lines(result))
    path = out / "report.html"
    path.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>leakstyle report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}} img{{max-width:100%}}
td,th{{padding:2px 10px;text-align:left}} table{{border-collapse:collapse}} tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>leakstyle report</h1>
<p>Model <code>{esc(cfg['model'])}</code>, {cfg['n']} images per set, {cfg['steps']} steps, seeds {cfg['seed']}..{cfg['seed'] + cfg['n'] - 1},
leak: {esc(cfg['style'])}; reference: {result['sets']['reference']['count']} images. Pure-noise and leak images share prompts and seeds.
Intervals are 95% bootstrap intervals ({cfg['n_boot']} resamples).</p>
<h2>In short</h2><ul>{findings}</ul>
<p>Std ratio: the spread of the per-image mean over the set, relative to the reference; below 1 means images squeezed toward
medium, greyish values (the signal-leak bias); 1 is the reference's spread. Wasserstein: how far the whole distribution of the
per-image mean is from the reference's (L* 0..100). Style distance: 0 for identical sets, 1 about the gap between Google's and
Twitter's emoji styles.</p>
<h2>Samples</h2><img src="samples.png" alt="sample images">
<h2>Mean colour and brightness</h2><img src="distributions.png" alt="histograms of mean colour and brightness">
<table><tr><th>set</th><th>channel</th><th>std ratio vs reference</th><th>Wasserstein to reference</th></tr>{lf_rows}</table>
<h2>Style distance to the reference</h2>
<table><tr><th>set</th><th>style</th>{''.join(f'<th>{k}</th>' for k in metrics.MEASURES)}</tr>{st_rows}</table>
{color_html}
<p>All numbers: <a href="report.json">report.json</a>. leakstyle {__version__}.</p>
</body></html>
""")
    return path


# -- the report --------------------------------------------------------------------------------------
def run_report(pipe, reference: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike,
               style: StyleDistribution | None = None, style_name: str | None = None, prompts: Sequence[str] | None = None,
               n: int = 256, colors: Sequence[str] = (), per_color: int = 32, steps: int = 25, guidance: float = 7.5,
               seed: int = 0, n_boot: int = 1000, batch_size: int = 8, model_name: str = "", force: bool = False,
               progress: bool = True) -> Path:
    """Generate, measure and write the report into `out`; returns the path of report.html.

    Without `style` the leak is fitted (dct, 3 components) to the reference images. Colours are '#rrggbb'.
    """
    from .fit import fit
    from .leak import image_size, latent_shape
    from .schedule import ZERO_SNR_EXPLANATION, leak_at_first_step

    out = check_out(out, force)
    if n < 2:
        raise LeakstyleError(f"-n must be at least 2 (a spread needs two images), got {n}")
    if per_color < 1 or steps < 1:
        raise LeakstyleError("--per-color and --steps must be at least 1")
    colors = parse_colors(list(colors)) if colors else []
    prompts = list(prompts) if prompts else list(DEFAULT_PROMPTS)
    paths = list_images([reference] if isinstance(reference, (str, os.PathLike)) else reference)
    if len(paths) < 2:
        raise LeakstyleError(f"found {len(paths)} reference image; give at least 2")
    if not leak_at_first_step(pipe.scheduler, steps, warn=False).has_leak:
        raise LeakstyleError(ZERO_SNR_EXPLANATION)
    channels = latent_shape(pipe, None, None)[0]
    if style is not None and style.channels != channels:
        raise LeakstyleError(f"the style has {style.channels} channels but this model's latents have {channels}; fit it with this model")
    height, width = image_size(pipe)
    per_color = min(per_color, n)

    bar = tqdm(total=2 * n + len(colors) * per_color, unit="img", desc="report", disable=not progress)
    if style is None:
        style = fit(paths, pipe=pipe, kind="dct", components=3, progress=False)
        style_name = f"dct statistics (3 components) fitted to the {len(paths)} reference images"
    cycled = cycle(prompts, n)
    common = dict(seed=seed, steps=steps, guidance=guidance, batch_size=batch_size, bar=bar)
    noise_images = generate_set(pipe, cycled, noise=None, **common)  # N(0, I), even for a fine-tuned model
    leak_images = generate_set(pipe, cycled, style=style, **common)
    color_runs = {c: {"leak": generate_set(pipe, cycled[:per_color], style=style, color=c, color_mode="calibrated", **common),
                      "pure noise": noise_images[:per_color]}
                  for c in colors}
    bar.close()

    sets = {"reference": load_reference(paths, width, height), "pure noise": noise_images, "leak": leak_images}
    result = {"config": {"model": model_name or str(getattr(pipe, "name_or_path", "")), "n": n, "steps": steps,
                         "guidance": guidance, "seed": seed, "n_boot": n_boot, "per_color": per_color,
                         "color_mode": "calibrated", "style": style_name or "given style", "prompts": prompts, "height": height, "width": width,
                         "reference": [str(p) for p in paths[:1000]], "leakstyle_version": __version__},
              **compute_metrics(sets, color_runs, n_boot, seed)}
    rows = [(name, images) for name, images in sets.items()] + [(f"colour {c}", r["leak"]) for c, r in color_runs.items()]
    with writing_into(out):  # created only now: a failed report leaves no empty folder
        return write_report(out, result, sets, rows, bool(colors))


def write_report(out: Path, result: dict, sets: dict, rows: list, colors: bool) -> Path:
    """The report's files, written first into a hidden folder inside `out` and moved into place only when all are
    written, report.json (what marks a folder as holding a report) last: a failure leaves `out` as it was."""
    import shutil
    import tempfile

    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
        plot_distributions(sets, staging / "distributions.png")
        samples_sheet(rows, staging / "samples.png")
        if colors:
            plot_colors(result, staging / "colors.png")
        write_html(staging, result)
        (staging / "report.json").write_text(json.dumps(result, indent=1))
        for name in ["distributions.png", "samples.png"] + ["colors.png"] * colors + ["report.html", "report.json"]:
            os.replace(staging / name, out / name)
    except OSError as e:
        raise LeakstyleError(f"cannot write the report into {out}: {e.strerror or e}") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return out / "report.html"
