"""The cost of calibrated colour control (leakstyle.color), as ratios measured in one process.

    python benchmarks/color.py [--quick]      # also run by benchmarks/run.py (figure "color")

4a. A calibrated generation (noise-cancelled DC + one probe of PROBE_STEPS steps per image) against the same
    generation in raw mode, interleaved, one image at 25 steps on the embedded model (target <= 1.5).
4b. The one-time calibration of a model against one uncalibrated single-image generation (target <= 200).
4c. The fingerprint that keys the calibration cache: its time on the embedded model, per tensor, and extrapolated
    to Stable Diffusion 1.5 (about 1,900 tensors in UNet, VAE and text encoder).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SD15_TENSORS = 1900  # state_dict entries of SD 1.5's UNet (686 parameters + buffers), VAE and CLIP text encoder, rounded up


def figure_color(quick: bool):
    import torch

    from leakstyle import color
    from leakstyle.pipeline import generate, load_pipeline
    from leakstyle.testing import tiny_sd
    from run import Row, interleaved, median, ms, paired_ratio, ratio_spread

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LEAKSTYLE_CACHE"] = tmp  # a fresh cache: 4b times a real calibration
        if quick:
            pipe, what, steps, samples = load_pipeline(tiny_sd(Path(tmp) / "sd"), device="cpu"), "tiny random SD", 10, 16
        else:
            pipe, what, steps, samples = load_pipeline(None, device="cpu"), "embedded mini-sd, 64 px", 25, None
        prompt, rgb = "grinning face", "#505050"

        def gen(mode):
            return lambda: generate(pipe, prompt, color=rgb, color_mode=mode, seed=0, num_inference_steps=steps)

        # 4b first: the calibration this process then reuses for 4a.
        single = interleaved({"raw": gen("raw")}, rounds=3 if quick else 5, warmup=1)["raw"]
        from leakstyle.leak import latent_shape
        from leakstyle.schedule import leak_at_first_step

        _, h, w = latent_shape(pipe, None, None)
        leak = leak_at_first_step(pipe.scheduler, steps, warn=False)
        t0 = time.perf_counter()
        color.calibration(pipe, leak, 7.5, h, w, samples=samples)
        calibration_s = time.perf_counter() - t0
        n_cal = samples or color.CALIBRATION_SAMPLES
        t = interleaved({"raw": gen("raw"), "calibrated": gen("calibrated")}, rounds=4 if quick else 15)
        fingerprint = interleaved({"fp": lambda: color.weights_fingerprint(pipe)}, rounds=3 if quick else 10)["fp"]
        tensors = sum(len(getattr(pipe, n).state_dict()) for n in ("unet", "vae", "text_encoder", "text_encoder_2")
                      if getattr(pipe, n, None) is not None)
        del os.environ["LEAKSTYLE_CACHE"]

    ratio = paired_ratio(t["calibrated"], t["raw"])
    low, high = ratio_spread(t["calibrated"], t["raw"])
    cal_ratio = calibration_s / statistics.median(single)
    per_tensor = median(fingerprint) / tensors
    rows = [
        Row(f"4a. calibrated colour / raw colour generation, wall ({what}, 1 image, {steps} steps)",
            f"{median(t['calibrated']):.3g} s", f"{median(t['raw']):.3g} s", ratio, f"<= 1.5 (IQR {low:.3g}-{high:.3g})",
            ratio <= 1.5),
        Row(f"4b. one-time calibration ({n_cal} probes) / one raw single-image generation", f"{calibration_s:.3g} s",
            f"{statistics.median(single):.3g} s", cal_ratio, "<= 200", cal_ratio <= 200),
        Row(f"4c. weights fingerprint (cache key), {tensors} tensors", ms(median(fingerprint)),
            f"SD 1.5 (~{SD15_TENSORS} tensors): ~{ms(per_tensor * SD15_TENSORS)}", None, "-", None),
    ]
    details = {"model": what, "steps": steps, "calibration_samples": n_cal, "calibration_s": calibration_s,
               "single_generation_s": single, "wall_s": t, "fingerprint_s": fingerprint, "tensors": tensors}
    return rows, details


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
