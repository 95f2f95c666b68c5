"""What the ComfyUI node pack adds to a KSampler run on the embedded model, measured in one process.

    python benchmarks/comfy_overhead.py [--quick]      (also figure 4 of benchmarks/run.py)

Interleaved rounds of (a) KSampler from LeakstyleLeakLatent (its x~ drawn from a LeakstyleColor style) and
(b) the same KSampler from EmptyLatentImage of the same latent size; plus the time of the pack's own nodes
(LeakstyleColor: one VAE encode of a flat image; LeakstyleLeakLatent: drawing x~). Needs ComfyUI
(COMFYUI_PATH or ../shared/ComfyUI) and its requirements (pip install '.[comfyui-test]').
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


def measure(quick: bool = False) -> dict:
    from comfyui_setup import comfyui_path, import_comfy

    if comfyui_path() is None:
        raise RuntimeError("ComfyUI not found: set COMFYUI_PATH or put it at ../shared/ComfyUI")
    import_comfy(Path(tempfile.mkdtemp(prefix="leakstyle-bench-comfy-")))
    import nodes

    from leakstyle import comfy as pack

    steps, rounds, batch = (6, 3, 1) if quick else (20, 7, 1)
    N = pack.NODE_CLASS_MAPPINGS
    model, clip, vae = N["LeakstyleEmbeddedModel"]().load()
    positive = nodes.CLIPTextEncode().encode(clip, "a red heart")[0]
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]

    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    style = N["LeakstyleColor"]().color(vae, "#1838d0", 1.0)[0]

    def color_node():
        return N["LeakstyleColor"]().color(vae, "#1838d0", 1.0)[0]

    def latent_node():
        return N["LeakstyleLeakLatent"]().latent(model, style, 64, 64, batch, 0, vae=vae)[0]

    def pack_nodes():
        return N["LeakstyleLeakLatent"]().latent(model, color_node(), 64, 64, batch, 0, vae=vae)[0]

    def ksampler(latent):
        return nodes.KSampler().sample(model, 1, steps, 5.0, "euler", "normal", positive, negative, latent)[0]

    empty = nodes.EmptyLatentImage().generate(128, 128, batch)[0]  # 1/8 of 128 px = the embedded 16 x 16 latent
    leak = pack_nodes()
    assert leak["samples"].shape == empty["samples"].shape
    times = {"pack nodes": [], "ksampler leak": [], "ksampler empty": []}
    for f in (pack_nodes, lambda: ksampler(leak), lambda: ksampler(empty)):  # warm-up
        f()
    for r in range(rounds):
        order = [("pack nodes", pack_nodes), ("ksampler leak", lambda: ksampler(leak)), ("ksampler empty", lambda: ksampler(empty))]
        for name, f in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    # The nodes take milliseconds: time them over more calls than the sampler.
    node_times = {"color": [], "latent": []}
    for _ in range(10 if quick else 50):
        for name, f in (("color", color_node), ("latent", latent_node)):
            t0 = time.perf_counter()
            f()
            node_times[name].append(time.perf_counter() - t0)
    extra = [c + l for c, l in zip(node_times["color"], node_times["latent"])]
    empty_s = statistics.median(times["ksampler empty"])
    run_with_pack = [p + k for p, k in zip(times["pack nodes"], times["ksampler leak"])]
    return {"steps": steps, "rounds": rounds, "batch": batch, "latent": list(empty["samples"].shape[1:]),
            "pack_nodes_s": statistics.median(extra), "color_node_s": statistics.median(node_times["color"]),
            "latent_node_s": statistics.median(node_times["latent"]),
            "ksampler_leak_s": statistics.median(times["ksampler leak"]), "ksampler_empty_s": empty_s,
            "ratio_run": statistics.median(a / b for a, b in zip(run_with_pack, times["ksampler empty"])),
            "ratio_sampler": statistics.median(a / b for a, b in zip(times["ksampler leak"], times["ksampler empty"])),
            "ratio_nodes": statistics.median(extra) / empty_s,
            "ratio_latent_node": statistics.median(node_times["latent"]) / empty_s, "times": times, "node_times": node_times}


def main() -> int:
    import torch

    torch.set_num_threads(1)
    m = measure("--quick" in sys.argv)
    print(f"KSampler {m['steps']} steps, embedded model, latent {m['latent']}, CFG 5:")
    print(f"  LeakstyleColor (one VAE encode)            {1e3 * m['color_node_s']:.2f} ms")
    print(f"  LeakstyleLeakLatent (draw x~)              {1e3 * m['latent_node_s']:.2f} ms")
    print(f"  KSampler from the leak latent              {m['ksampler_leak_s']:.3f} s")
    print(f"  KSampler from EmptyLatentImage             {m['ksampler_empty_s']:.3f} s")
    print(f"  KSampler leak / empty                      {m['ratio_sampler']:.4f}  (per-round median)")
    print(f"  (both nodes + KSampler) / KSampler         {m['ratio_run']:.4f}  (per-round median)")
    print(f"  both nodes / KSampler                      {m['ratio_nodes']:.4f}  (target < 0.01)")
    print(f"  LeakLatent alone / KSampler                {m['ratio_latent_node']:.4f}  (a re-queue: ComfyUI caches the colour)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
