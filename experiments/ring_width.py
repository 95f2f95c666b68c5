"""Calibrated colour's ring width at two latent sizes on the embedded model: is a sixteenth of the side right?

    .venv/bin/python experiments/ring_width.py [--widths 1,2,3,4] [--sizes 64,128] [--out experiments/results]
    .venv/bin/python experiments/ring_width.py --quick        # two colours, two prompts, a few steps: runs at all

Calibrated mode (leakstyle.color) holds the mean of the x0 prediction's border ring at the colour's latent at every
step. The ring is `color.ring_width(h, w)` = round(min(h, w) / 16) latent pixels wide: 1 for the embedded model's
16 x 16 latents (64 px images), 2 at 128 px. The sixteenth was chosen at 64 px only (issue 12, on
COLOR_GRID[::2] x COLOR_PROMPTS[::2]); this runs the other prompts (COLOR_PROMPTS[1::2], prompt i with seed i;
`--prompts selection`: the half it was chosen on) for all 16 colours of experiments/reproduce.py at each image
size with each ring width, and reports the CIEDE2000 between the requested colour and the image's border. The
border is measured in two widths, a sixteenth of the side (4 px at 64, 8 px at 128: where the rule puts the ring)
and a fixed 4 px, so that neither favours one ring. The embedded model was trained at 64 px; at 128 px it still draws an object on a background, larger than at 64 px.

Writes ring_width.md and ring_width.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "experiments"))

import reproduce  # noqa: E402  (COLOR_GRID, COLOR_PROMPTS)
from leakstyle import color, metrics  # noqa: E402
from leakstyle.leak import vae_factor  # noqa: E402
from leakstyle.pipeline import load_pipeline  # noqa: E402
from leakstyle.report import generate_set  # noqa: E402


def border_errors(images, requested: str, border: int) -> np.ndarray:
    """CIEDE2000 [N] between `requested` and the mean colour of each image's outer `border` pixels."""
    h, w = np.asarray(images[0]).shape[:2]
    return metrics.color_errors(images, requested, metrics.border_mask(h, w, border))


def run(pipe, sizes, widths, colors, prompts, steps: int, guidance: float, n_boot: int) -> dict:
    """{size: {ring width: {border name: [errors over colours x prompts]}}} and the timings."""
    results = {}
    for size in sizes:
        borders = {"a sixteenth": max(1, round(size / 16)), "4 px": 4}
        results[size] = {}
        for ring in widths:
            started = time.perf_counter()
            errors = {name: [] for name in borders}
            with mock.patch.object(color, "ring_width", lambda h, w, ring=ring: ring):  # color.ring_mean reads it
                for c in colors:
                    images = generate_set(pipe, prompts, seed=0, steps=steps, guidance=guidance, color=c,
                                          color_mode="calibrated", height=size, width=size)
                    for name, b in borders.items():
                        errors[name].append(border_errors(images, c, b))
            cell = {}
            for name, parts in errors.items():
                e = np.concatenate(parts)
                cell[name] = {"errors": e.tolist(), "border_px": borders[name],
                              "median": metrics.bootstrap(np.median, (e,), n_boot, seed=0).as_dict()}
            cell["seconds"] = time.perf_counter() - started
            results[size][ring] = cell
            print(f"[{size} px, ring {ring}: " + ", ".join(f"border {n} median {c['median']['estimate']:.2f}"
                                                        for n, c in cell.items() if n != "seconds")
                  + f", {cell['seconds']:.0f} s]", file=sys.stderr, flush=True)
    return results


def table(results: dict, factor: int) -> list[str]:
    lines = ["| image | latent | ring width (latent px) | rule's width | border CIEDE2000, a sixteenth: median [95%] |"
             " border CIEDE2000, 4 px: median [95%] |", "|---|---|---|---|---|---|"]
    for size, rings in results.items():
        rule = color.ring_width(size // factor, size // factor)
        for ring, cell in rings.items():
            cells = [f"{m['estimate']:.2f} [{m['low']:.2f}, {m['high']:.2f}]"
                     for m in (cell["a sixteenth"]["median"], cell["4 px"]["median"])]
            lines.append(f"| {size} px | {size // factor} x {size // factor} | {ring} | {'**rule**' if ring == rule else ''}"
                         f" | {cells[0]} | {cells[1]} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="64,128", help="image sizes in pixels, comma-separated")
    p.add_argument("--widths", default="1,2,3,4", help="ring widths in latent pixels, comma-separated")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--prompts", choices=["held-out", "selection"], default="held-out",
                   help="COLOR_PROMPTS[1::2], not used when the width was chosen (default), or [::2], the half it was "
                        "chosen on")
    p.add_argument("--quick", action="store_true", help="two colours, two prompts, 3 steps: checks that it runs")
    p.add_argument("--out", type=Path, default=None, help="default experiments/results (results/quick with --quick)")
    args = p.parse_args(argv)
    colors = list(reproduce.COLOR_GRID)
    prompts = list(reproduce.COLOR_PROMPTS[1::2] if args.prompts == "held-out" else reproduce.COLOR_PROMPTS[::2])
    steps, n_boot = args.steps, args.n_boot
    if args.quick:
        colors, prompts, steps, n_boot = colors[:2], prompts[:2], 3, 50
    out = args.out or ROOT / "experiments" / "results" / ("quick" if args.quick else "")
    sizes = [int(s) for s in args.sizes.split(",")]
    widths = [int(w) for w in args.widths.split(",")]
    pipe = load_pipeline(None, device="cpu")
    factor = vae_factor(pipe)
    started = time.perf_counter()
    results = run(pipe, sizes, widths, colors, prompts, steps, args.guidance, n_boot)
    minutes = (time.perf_counter() - started) / 60
    lines = ["# Calibrated colour's ring width at two sizes (embedded model)", "",
             f"`python experiments/ring_width.py{' --quick' if args.quick else ''} --prompts {args.prompts}`: "
             f"{len(colors)} colours x {len(prompts)} {args.prompts} prompts (prompt i with seed i: "
             f"{', '.join(prompts)}), {steps} DDIM steps, guidance "
             f"{args.guidance:g}, calibrated mode at strength 1, {minutes:.0f} min on the CPU. The ring is what the "
             f"closed loop holds at the colour; the rule is `leakstyle.color.ring_width`, a sixteenth of the shorter "
             f"latent side. Medians over the {len(colors) * len(prompts)} images with 95% bootstrap intervals "
             f"({n_boot} resamples).", "", *table(results, factor), ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "ring_width.md").write_text("\n".join(lines))
    (out / "ring_width.json").write_text(json.dumps({"colors": colors, "prompts": prompts, "steps": steps,
                                                      "results": results}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
