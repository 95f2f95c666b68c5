"""What the ComfyUI node pack adds to a KSampler run on the embedded model, measured in one process.

    python benchmarks/comfy_overhead.py [--quick]      (also figure 4 of benchmarks/run.py)

Interleaved rounds of
(a) the pack's calibrated path: KSampler on the MODEL from LeakstyleCalibrateModel (a post-CFG shift of x0 at
    every step) from LeakstyleLeakLatent given KSampler's seed (x~ from a LeakstyleColor style, the noise's DC
    cancelled),
(b) the raw path: the plain MODEL from the same kind of latent without the seed,
(c) plain ComfyUI: the plain MODEL from EmptyLatentImage of the same latent size;
and the time of the pack's own nodes over many calls (with ComfyUI's VAE Decode of the sampled latent, which
every workflow runs after KSampler, for scale): LeakstyleColor (a calibrated colour's latent, the VAE
encode of a 64 px flat image refined by Gauss-Newton steps on the decoded colour, is kept per VAE and colour, so
a repeated colour is a look-up; working it out is timed apart, as the cost of a new colour), LeakstyleLeakLatent,
LeakstyleCalibrateModel, and the closed loop's shift of x0 (once per model call). Needs ComfyUI (COMFYUI_PATH or ../shared/ComfyUI)
and its requirements (pip install '.[comfyui-test]').
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # comfyui_setup: finding ComfyUI, importing it on the CPU
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

COLOR = "#1838d0"


def color_grid() -> tuple[str, ...]:
    """The 16 colours of issue 12's colour experiment (experiments/reproduce.py COLOR_GRID)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "experiments" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    return reproduce.COLOR_GRID


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def measure(quick: bool = False) -> dict:
    from comfyui_setup import comfyui_path, import_comfy

    if comfyui_path() is None:
        raise RuntimeError("ComfyUI not found: set COMFYUI_PATH or put it at ../shared/ComfyUI")
    import_comfy(Path(tempfile.mkdtemp(prefix="leakstyle-bench-comfy-")))
    import comfy.utils
    import nodes
    import torch

    from leakstyle import comfy as pack
    from leakstyle.comfy.fitting import decoded_means, encode_color, solved_color
    from leakstyle.encode import solve_decoding_to
    from leakstyle.encode import parse_color

    steps, rounds, batch, seed = (6, 3, 1, 1) if quick else (20, 9, 1, 1)
    N = pack.NODE_CLASS_MAPPINGS
    model, clip, vae = N["LeakstyleEmbeddedModel"]().load()
    positive = nodes.CLIPTextEncode().encode(clip, "a red heart")[0]
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    comfy.utils.PROGRESS_BAR_ENABLED = False

    def color_node():
        return N["LeakstyleColor"]().color(vae, COLOR, 1.0)[0]

    style = color_node()

    def latent_node():
        return N["LeakstyleLeakLatent"]().latent(model, style, 64, 64, batch, 0, vae=vae, noise_seed=seed)[0]

    def calibrate_node():
        return N["LeakstyleCalibrateModel"]().patch(model, style)[0]

    def ksampler(m, latent):
        return nodes.KSampler().sample(m, seed, steps, 5.0, "euler", "normal", positive, negative, latent)[0]

    empty = nodes.EmptyLatentImage().generate(128, 128, batch)[0]  # 1/8 of 128 px = the embedded 16 x 16 latent
    calibrated_model, leak = calibrate_node(), latent_node()
    raw_leak = N["LeakstyleLeakLatent"]().latent(model, style, 64, 64, batch, 0, vae=vae)[0]
    assert leak["samples"].shape == empty["samples"].shape
    runs = {"calibrated": lambda: ksampler(calibrated_model, leak), "raw": lambda: ksampler(model, raw_leak),
            "empty": lambda: ksampler(model, empty)}
    times = {name: [] for name in runs}
    for f in runs.values():  # warm-up
        f()
    for r in range(rounds):
        order = list(runs.items())
        for name, f in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    # The nodes take milliseconds: time them over more calls than the sampler.
    hold = calibrated_model.model_options["sampler_post_cfg_function"][-1]  # the closed loop, once per model call
    denoised = torch.randn_like(leak["samples"])
    node_times = {"color": [], "latent": [], "calibrate": [], "encode": [], "shift": [], "vae_decode": []}
    sampled = ksampler(model, empty)
    calls = {"color": color_node, "latent": latent_node, "calibrate": calibrate_node,
             "encode": lambda: solved_color(vae, parse_color(COLOR)), "shift": lambda: hold({"denoised": denoised}),
             "vae_decode": lambda: nodes.VAEDecode().decode(vae, sampled)}  # what every workflow ends with, for scale
    for _ in range(10 if quick else 50):
        for name, f in calls.items():
            t0 = time.perf_counter()
            f()
            node_times[name].append(time.perf_counter() - t0)
    node_s = {name: statistics.median(v) for name, v in node_times.items()}
    # A new colour over issue 12's 16 colours: the solve as the pack runs it (it stops within half a grey level of
    # the colour), and how far that lands from Gauss-Newton run to its end (tolerance 0: three steps, or until no
    # step helps), in decoded 8-bit levels and in latent units.
    grid = color_grid()[:4] if quick else color_grid()
    new_colour_s, new_raw_s, level_gaps, z_gaps = [], [], [], []
    for c in grid:
        rgb = parse_color(c)
        t0 = time.perf_counter()
        encode_color(vae, rgb)  # raw mode's colour: the paper's encoding of a flat image
        t1 = time.perf_counter()
        z = solved_color(vae, rgb)
        new_colour_s.append(time.perf_counter() - t1)
        new_raw_s.append(t1 - t0)
        full = solve_decoding_to(lambda q: decoded_means(vae, q), encode_color(vae, rgb), rgb, tolerance=0.0)
        levels = lambda q: ((decoded_means(vae, q[None])[0].clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
        level_gaps.append(float((levels(z) - levels(full)).abs().max()))
        z_gaps.append(float((z - full).norm()))
    shift_s = steps * node_s["shift"]  # euler: one model call (both CFG halves batched) per step
    empty_s = statistics.median(times["empty"])
    pack_nodes = node_s["color"] + node_s["latent"] + node_s["calibrate"]
    per_round = [(node_s["color"] + node_s["latent"] + node_s["calibrate"] + c) / e
                 for c, e in zip(times["calibrated"], times["empty"])]
    sampler_ratios = [c / e for c, e in zip(times["calibrated"], times["empty"])]
    raw_ratios = [r / e for r, e in zip(times["raw"], times["empty"])]
    return {"steps": steps, "rounds": rounds, "batch": batch, "latent": list(empty["samples"].shape[1:]),
            "pack_nodes_s": pack_nodes, "color_node_s": node_s["color"], "color_encode_s": node_s["encode"],
            "latent_node_s": node_s["latent"], "calibrate_node_s": node_s["calibrate"],
            "ksampler_leak_s": statistics.median(times["calibrated"]), "ksampler_raw_s": statistics.median(times["raw"]),
            "ksampler_empty_s": empty_s,
            "ratio_run": statistics.median(per_round), "ratio_run_spread": spread(per_round),
            "ratio_sampler": statistics.median(sampler_ratios), "ratio_sampler_spread": spread(sampler_ratios),
            "ratio_raw_sampler": statistics.median(raw_ratios), "ratio_raw_sampler_spread": spread(raw_ratios),
            "ratio_nodes": pack_nodes / empty_s,
            "ratio_new_colour": (node_s["encode"] + node_s["latent"] + node_s["calibrate"]) / empty_s,
            "grid_colours": len(grid), "grid_new_colour_s": statistics.median(new_colour_s),
            "grid_new_colour_max_s": max(new_colour_s),
            "ratio_grid_new_colour": (statistics.median(new_colour_s) + node_s["latent"] + node_s["calibrate"]) / empty_s,
            "grid_max_level_gap": max(level_gaps), "grid_max_z_gap": max(z_gaps),
            "grid_new_raw_colour_s": statistics.median(new_raw_s),
            "ratio_grid_new_raw_colour": (statistics.median(new_raw_s) + node_s["latent"]) / empty_s,
            "shift_s": node_s["shift"], "ratio_closed_loop": shift_s / empty_s, "vae_decode_s": node_s["vae_decode"],
            "ratio_pack_total": (pack_nodes + shift_s) / empty_s,
            "ratio_latent_node": node_s["latent"] / empty_s, "times": times, "node_times": node_times}


def main() -> int:
    import torch

    torch.set_num_threads(1)
    m = measure("--quick" in sys.argv)

    def ratio(key):
        med, lo, hi = m[f"{key}_spread"]
        return f"{med:.4f}  (median of {m['rounds']} rounds, range {lo:.4f}..{hi:.4f})"

    print(f"KSampler {m['steps']} steps, embedded model, latent {m['latent']}, CFG 5:")
    print(f"  LeakstyleColor (a colour seen before: look-up)       {1e3 * m['color_node_s']:.3f} ms")
    print(f"  a new colour (encode, Gauss-Newton on the decode)    {1e3 * m['color_encode_s']:.2f} ms")
    print(f"  LeakstyleLeakLatent (draw x~, cancel the noise DC)   {1e3 * m['latent_node_s']:.2f} ms")
    print(f"  LeakstyleCalibrateModel (clone + patch)              {1e3 * m['calibrate_node_s']:.3f} ms")
    print(f"  Calibrate Colour's shift of x0, per model call       {1e3 * m['shift_s']:.3f} ms")
    print(f"  KSampler, calibrated MODEL from the leak latent      {m['ksampler_leak_s']:.3f} s")
    print(f"  KSampler, plain MODEL from the raw leak latent       {m['ksampler_raw_s']:.3f} s")
    print(f"  KSampler, plain MODEL from EmptyLatentImage          {m['ksampler_empty_s']:.3f} s")
    print(f"  calibrated KSampler / plain                          {ratio('ratio_sampler')}")
    print(f"  raw-leak KSampler / plain                            {ratio('ratio_raw_sampler')}")
    print(f"  (nodes + calibrated KSampler) / plain KSampler       {ratio('ratio_run')}  (target < 1.01)")
    print(f"  nodes / plain KSampler                               {m['ratio_nodes']:.4f}  (target < 0.01)")
    print(f"  nodes with a new colour (encode) / plain KSampler    {m['ratio_new_colour']:.4f}")
    print(f"  a new colour, median over {m['grid_colours']} colours (max)        {1e3 * m['grid_new_colour_s']:.2f} ms "
          f"({1e3 * m['grid_new_colour_max_s']:.2f} ms)")
    print(f"  nodes with a new colour, median over the colours / plain  {m['ratio_grid_new_colour']:.4f}")
    print(f"  a new raw colour (the 64 px encode), median            {1e3 * m['grid_new_raw_colour_s']:.2f} ms")
    print(f"  nodes with a new raw colour (no Calibrate) / plain     {m['ratio_grid_new_raw_colour']:.4f}  "
          f"(once per VAE and colour)")
    print(f"  the solve against Gauss-Newton to its end: decoded colour within {m['grid_max_level_gap']:.0f} "
          f"8-bit levels, latent within {m['grid_max_z_gap']:.4f}")
    print(f"  closed loop ({m['steps']} shifts) / plain KSampler             {m['ratio_closed_loop']:.4f}")
    print(f"  for scale: ComfyUI's VAE Decode of the sampled latent    {1e3 * m['vae_decode_s']:.2f} ms")
    print(f"  nodes + closed loop / plain KSampler                 {m['ratio_pack_total']:.4f}  (target < 0.01)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
