"""Stage 5: what the model card reports: a grid of 16 prompts, sampling time, size, and the leak's strength.

    python -m training.eval_model [--model src/leakstyle/models/mini-sd] [--out training/artifacts/eval] [-n 256]

- grid.png: 16 prompts (12 training emoji, 4 held-out), one seed each, 25 DDIM steps, guidance 7.5.
- seeds.png: the 12 training prompts with 6 seeds each (100..105), to see that a prompt is drawn consistently.
- Sampling time: 16 images x 25 DDIM steps in one call (best of 2), on this machine's CPU.
- The bias in model units: std over n images of each latent channel's mean, for training composites,
  generations from pure noise, and generations from a leak fitted to other training composites; the
  ratio pure-noise / training against DESIGN.md's prediction 1 / sqrt(1 + abar_T H W sigma_m^2).
  (experiments/reproduce.py measures the same effect in CIELAB with bootstrap intervals.)
Writes eval.json, grid.png and seeds.png into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

import leakstyle as ls
from leakstyle.encode import encode
from leakstyle.moments import Moments
from leakstyle.distribution import StyleDistribution
from training.dataset import EmojiComposites, load_manifest, require_data

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parent / "src" / "leakstyle" / "models" / "mini-sd"
TRAIN_PROMPTS = ["grinning face", "cat face", "rocket", "sun with face", "slice of pizza", "ghost", "evergreen tree",
                 "fire", "dog face", "snowman", "smiling face with sunglasses", "rainbow"]


def held_out_prompts(data: Path, k: int = 4) -> list[str]:
    rows = [r for r in load_manifest(data / "google", "eval") if r["base"] == r["unified"]]
    return [rows[i]["name"] for i in np.linspace(0, len(rows) - 1, k).astype(int)]


def channel_means_of(latents: torch.Tensor) -> torch.Tensor:
    return latents.float().mean((2, 3))


@torch.no_grad()
def generate_latents(pipe, prompts: list[str], style, seed: int, steps: int, batch: int = 32) -> torch.Tensor:
    """Final latents (model units) of one image per prompt, image i from seed + i."""
    out = []
    for start in range(0, len(prompts), batch):
        part = prompts[start:start + batch]
        lat = torch.cat([ls.initial_latents(pipe, style, 1, num_inference_steps=steps,
                                            generator=torch.Generator().manual_seed(seed + start + i)) for i in range(len(part))])
        out.append(pipe(part, num_inference_steps=steps, latents=lat, output_type="latent").images)
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--data", type=Path, default=HERE / "data")
    p.add_argument("--out", type=Path, default=HERE / "artifacts" / "eval")
    p.add_argument("-n", type=int, default=256)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    require_data(args.data / "google")
    if not (args.model / "model_index.json").is_file():
        raise SystemExit(f"{args.model} is not a pipeline folder (no model_index.json)")
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    result: dict = {"model": str(args.model)}

    prompts = TRAIN_PROMPTS + held_out_prompts(args.data)
    best = float("inf")
    for r in range(2):
        t = time.perf_counter()
        images = pipe(prompts, num_inference_steps=25, generator=[torch.Generator().manual_seed(i) for i in range(16)]).images
        best = min(best, time.perf_counter() - t)
    result["seconds_16_images_25_ddim_steps"] = round(best, 2)
    from leakstyle.demo import grid
    grid([(f"{i * 4}-{i * 4 + 3}", images[i * 4:(i + 1) * 4]) for i in range(4)], cell=96, label_width=40).save(args.out / "grid.png")
    result["grid_prompts"] = prompts
    rows = [(prompt[:14], pipe([prompt] * 6, num_inference_steps=25,
                               generator=[torch.Generator().manual_seed(100 + i) for i in range(6)]).images)
            for prompt in TRAIN_PROMPTS]
    grid(rows, cell=64, label_width=110).save(args.out / "seeds.png")
    result["weights_mb"] = round(sum(f.stat().st_size for f in args.model.rglob("*.safetensors")) / 2**20, 2)

    # The bias, in model units.
    ds = EmojiComposites(args.data / "google", "train", seed=4242)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(ds), 2 * args.n, replace=False)
    items = [ds[int(i)] for i in idx]
    x = torch.stack([im for im, _ in items])
    captions = [c for _, c in items]
    z = torch.cat([encode(pipe.vae, xb) for xb in x.split(64)])
    train_means = channel_means_of(z[:args.n])
    moments = Moments.for_dct(4, 16, 16, 3)
    moments.update(z[args.n:])
    leak = StyleDistribution.from_moments(moments)
    noise_means = channel_means_of(generate_latents(pipe, captions[:args.n], None, 0, args.steps))
    leak_means = channel_means_of(generate_latents(pipe, captions[:args.n], leak, 0, args.steps))
    sigma_m = train_means.std(0)
    abar = float(pipe.scheduler.alphas_cumprod[999])
    result["bias"] = {
        "n": args.n, "sigma_m_training": sigma_m.tolist(),
        "std_ratio_pure_noise": (noise_means.std(0) / sigma_m).tolist(),
        "std_ratio_leak": (leak_means.std(0) / sigma_m).tolist(),
        "predicted_std_ratio_pure_noise": (1 / torch.sqrt(1 + abar * 256 * sigma_m**2)).tolist(),
        "mean_training": train_means.mean(0).tolist(), "mean_pure_noise": noise_means.mean(0).tolist(),
        "mean_leak": leak_means.mean(0).tolist(),
    }
    (args.out / "eval.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
