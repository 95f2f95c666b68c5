"""Fitting at scale: images per second of `leakstyle.fit` with 1 and 2 processes, and the share of its wall time
spent outside the VAE encode, on 512 px JPEGs of mixed sizes through a VAE of Stable Diffusion's shape.

    python benchmarks/fit_scale.py            # prints the measurements as JSON (benchmarks/run.py makes rows of them)
    python benchmarks/fit_scale.py --quick

The 2-process run is `python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/fit_scale.py
--child ...` (gloo on the CPU); the timed span is `leakstyle.fit` itself in every case, after imports and model
construction, so that the launcher's start-up does not count. The encode time is the time spent in
`leakstyle.encode.encode`, measured by wrapping the function `leakstyle.fit` calls.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("leakstyle") is None:
    sys.path.insert(0, str(ROOT / "src"))

# Short side 512 px, the aspect ratios photo sets have, and some larger originals (resized down by fit).
SIZES = [(512, 512), (640, 480), (480, 640), (768, 512), (512, 768), (910, 512), (1024, 768), (768, 1024)]
VAE_CHANNELS = (8, 16, 32, 32)  # SD's layout (4 levels, 2 ResNets each, f = 8, 4 latent channels), 16x narrower


def write_jpegs(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` JPEGs (quality 90) of the SIZES in turn: smooth colour fields with grain, as photos compress."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        grain = rng.normal(0, 10, (h, w, 3))
        Image.fromarray(np.clip(np.asarray(coarse) + grain, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg",
                                                                                            quality=90)
    return folder


def sd_shaped_vae(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=VAE_CHANNELS, layers_per_block=2, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         norm_num_groups=8, scaling_factor=0.18215).eval()


class VAEOnly:
    """The part of a pipeline leakstyle.fit uses: a VAE."""

    def __init__(self, vae):
        self.vae = vae
        self.config = type("Config", (), {"_name_or_path": "benchmark-vae"})()


def timed_fit(folder: Path, resolution: int, workers: int, batch_size: int) -> dict:
    """One leakstyle.fit of the folder: its wall seconds and the seconds spent in the VAE encode."""
    from leakstyle.encode import encode

    fit_module = importlib.import_module("leakstyle.fit")  # the module (the package's `fit` is the function)

    spent = [0.0]

    def timed_encode(vae, pixels):
        t0 = time.perf_counter()
        out = encode(vae, pixels)
        spent[0] += time.perf_counter() - t0
        return out

    pipe = VAEOnly(sd_shaped_vae())
    fit_module.encode = timed_encode
    try:
        t0 = time.perf_counter()
        style = fit_module.fit(folder, pipe=pipe, resolution=resolution, workers=workers, batch_size=batch_size,
                               progress=False)
        wall = time.perf_counter() - t0
    finally:
        fit_module.encode = encode
    return {"wall_s": wall, "encode_s": spent[0], "images": style.image_count}


def decode_seconds(folder: Path, resolution: int) -> float:
    """Median seconds to decode one of the JPEGs and resize-crop it to the fit's size, in this process."""
    import statistics

    from leakstyle.images import open_image, resize_and_crop, to_tensor

    times = []
    for path in sorted(folder.glob("*.jpg")):
        t0 = time.perf_counter()
        to_tensor(resize_and_crop(open_image(path), resolution, resolution))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def child(args) -> None:
    """One of the torchrun processes: fit, then process 0 writes every process's timings to --result."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    result = timed_fit(Path(args.folder), args.resolution, args.workers, args.batch_size)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, result)
    if dist.get_rank() == 0:
        Path(args.result).write_text(json.dumps(everyone))
    dist.destroy_process_group()


def two_processes(folder: Path, resolution: int, workers: int, batch_size: int, threads: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
                   "--child", "--folder", str(folder), "--resolution", str(resolution), "--workers", str(workers),
                   "--batch-size", str(batch_size), "--threads", str(threads), "--result", str(result)]
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        if run.returncode != 0:
            raise RuntimeError(f"the 2-process fit failed:\n{run.stderr[-3000:]}")
        return json.loads(result.read_text())


def measure(quick: bool, threads: int = 1) -> dict:
    """Every measurement of this figure (see benchmarks/README.md, figure 4)."""
    import torch

    torch.set_num_threads(threads)
    count, resolution, batch_size = (4, 128, 2) if quick else (16, 512, 4)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_jpegs(Path(tmp) / "jpegs", count)
        runs = {"1 process, 0 workers": timed_fit(folder, resolution, 0, batch_size),
                "1 process, 1 worker": timed_fit(folder, resolution, 1, batch_size)}
        if not quick:
            ranks = two_processes(folder, resolution, 1, batch_size, threads)
            runs["2 processes, 1 worker each"] = {"wall_s": max(r["wall_s"] for r in ranks),
                                                  "encode_s": max(r["encode_s"] for r in ranks),
                                                  "images": ranks[0]["images"], "ranks": ranks}
        decode_s = decode_seconds(folder, resolution)
    encode_per_image = runs["1 process, 0 workers"]["encode_s"] / count
    return {"images": count, "resolution": resolution, "batch_size": batch_size, "vae_channels": list(VAE_CHANNELS),
            "sizes": [list(s) for s in SIZES[:count]], "threads": threads, "runs": runs,
            "decode_resize_s_per_image": decode_s, "encode_s_per_image": encode_per_image,
            "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--folder", "--result"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    for name in ("--resolution", "--workers", "--batch-size"):
        parser.add_argument(name, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    if args.child:
        child(args)
        return 0
    print(json.dumps(measure(args.quick, args.threads), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
