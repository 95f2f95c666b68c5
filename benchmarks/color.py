"""The cost of calibrated colour control (leakstyle.color), as ratios measured in one process.

    python benchmarks/color.py [--quick]      # also run by benchmarks/run.py (figure 5, "color")

5a. A generation with --color in calibrated mode against the same generation in raw mode, interleaved (target <= 1.5):
    the embedded model, one image at 25 steps (--quick: a tiny random model at 4 steps).
5b. The initial latent alone, calibrated / raw: what the noise-DC correction adds (one mean per image).
Calibrated mode has no per-model calibration run, so there is nothing to cache and no calibration time to bound.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def figure_color(quick: bool):
    import torch

    from leakstyle.encode import color_to_model_units
    from leakstyle.leak import initial_latents
    from leakstyle.pipeline import generate, load_pipeline
    from leakstyle.testing import tiny_sd
    from run import Row, interleaved, median, ms, paired_ratio, ratio_spread

    with tempfile.TemporaryDirectory() as tmp:
        if quick:
            pipe, what, steps = load_pipeline(tiny_sd(Path(tmp) / "sd"), device="cpu"), "tiny random SD", 4
        else:
            pipe, what, steps = load_pipeline(None, device="cpu"), "embedded mini-sd, 64 px", 25

    def gen(mode):
        return lambda: generate(pipe, "grinning face", color="#505050", color_mode=mode, seed=0, num_inference_steps=steps)

    z = color_to_model_units(pipe, "#505050")

    def start(mode):
        return lambda: initial_latents(pipe, None, num_inference_steps=steps, color=z, color_mode=mode,
                                       generator=torch.Generator().manual_seed(0))

    t = interleaved({"raw": gen("raw"), "calibrated": gen("calibrated")}, rounds=4 if quick else 15)
    init = interleaved({"raw": start("raw"), "calibrated": start("calibrated")}, rounds=50 if quick else 300)
    ratio = paired_ratio(t["calibrated"], t["raw"])
    low, high = ratio_spread(t["calibrated"], t["raw"])
    rows = [
        Row(f"5a. generate --color calibrated / raw, wall ({what}, 1 image, {steps} steps)",
            f"{median(t['calibrated']):.3g} s", f"{median(t['raw']):.3g} s", ratio,
            f"<= 1.5 (IQR {low:.3g}-{high:.3g})", ratio <= 1.5),
        Row("5b. initial latent with a colour, calibrated / raw", ms(median(init["calibrated"])), ms(median(init["raw"])),
            paired_ratio(init["calibrated"], init["raw"]), "-", None),
    ]
    return rows, {"model": what, "steps": steps, "wall_s": t, "initial_latent_s": init}


def main(argv=None) -> int:
    import argparse

    import torch

    from run import print_table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, _ = figure_color(args.quick)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
