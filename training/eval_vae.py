"""Evaluate the miniature VAE: reconstruction PSNR on held-out emoji, and the leak it allows.

sigma_m is the standard deviation, over training composites, of each latent channel's spatial mean in
model units (posterior mode times ``scaling_factor``). DESIGN.md's linear-Gaussian picture predicts that
sampling from pure noise shrinks the spread of generated channel means by

    ratio = sqrt(1 / (1 + abar_T * H * W * sigma_m^2))

with abar_T the SD 1.x value at t = 999 (0.00466) and H x W the latent size.

    python -m training.eval_vae [--vae training/runs/vae/export | --checkpoint training/runs/vae/checkpoint.pt]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from training.dataset import require_data
from training.train_vae import DEFAULT_DATA, DEFAULT_RUN, fixed_images, latent_std, psnr, reconstruct


def abar_T(t: int = 999, beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000) -> float:
    """abar_t of SD 1.x's 'scaled_linear' schedule: prod_{s<=t} (1 - beta_s), beta = linspace(sqrt)^2."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)[t].item()


def predicted_std_ratio(sigma_m: torch.Tensor, height: int, width: int, abar: float) -> torch.Tensor:
    """sqrt(1 / (1 + SNR)), SNR = abar_T * H * W * sigma_m^2: pure-noise vs data spread of channel means."""
    return (1 / (1 + abar * height * width * sigma_m**2)).sqrt()


@torch.no_grad()
def channel_means(vae: AutoencoderKL, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Spatial mean of each latent channel in model units: [B, 3, H, W] -> [B, C]; and the latent size."""
    shift = vae.config.get("shift_factor") or 0.0
    z = torch.cat([vae.encode(xb).latent_dist.mode() for xb in x.split(batch_size)])
    return (z * vae.config.scaling_factor - shift).mean((2, 3)), z.shape[-2:]


def load_vae(folder: Path | None, checkpoint: Path | None, data: Path) -> AutoencoderKL:
    """An exported folder (fp32 on load), or a training checkpoint with scaling_factor measured now."""
    if checkpoint is None:
        return AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32).eval()
    ckpt = torch.load(checkpoint, weights_only=False)
    vae = AutoencoderKL.from_config(ckpt["config"])
    vae.load_state_dict(ckpt["model"])
    vae.eval()
    vae.register_to_config(scaling_factor=1.0 / latent_std(vae, fixed_images(data, "train", 512, seed=12345)))
    return vae


def evaluate(vae: AutoencoderKL, data: Path, per_emoji: int = 2, n_train: int = 1024) -> dict:
    """PSNR over per_emoji composites of each held-out emoji; sigma_m over n_train training composites."""
    n_eval = sum(1 for line in (data / "manifest.jsonl").read_text().splitlines() if '"eval"' in line)
    x_eval = fixed_images(data, "eval", per_emoji * n_eval, seed=2024)
    m, (h, w) = channel_means(vae, fixed_images(data, "train", n_train, seed=777))
    sigma_m = m.std(0)
    abar = abar_T()
    ratio = predicted_std_ratio(sigma_m, h, w, abar)
    return {"psnr_eval_db": psnr(reconstruct(vae, x_eval), x_eval), "n_eval_images": len(x_eval),
            "latent_size": [h, w], "scaling_factor": vae.config.scaling_factor,
            "channel_mean": m.mean(0).tolist(), "sigma_m": sigma_m.tolist(), "sigma_m_rms": sigma_m.pow(2).mean().sqrt().item(),
            "abar_T": abar, "predicted_std_ratio": ratio.tolist(),
            "predicted_std_ratio_at_rms": predicted_std_ratio(sigma_m.pow(2).mean().sqrt(), h, w, abar).item()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--vae", type=Path, default=DEFAULT_RUN / "export", help="exported diffusers folder")
    src.add_argument("--checkpoint", type=Path, help="evaluate a training checkpoint instead")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--per-emoji", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    require_data(args.data)
    r = evaluate(load_vae(args.vae, args.checkpoint, args.data), args.data, args.per_emoji)
    print(f"PSNR on {r['n_eval_images']} held-out composites: {r['psnr_eval_db']:.2f} dB")
    print(f"latent {r['latent_size'][0]}x{r['latent_size'][1]}, scaling_factor {r['scaling_factor']:.4f}")
    print("mean of channel means: " + ", ".join(f"{s:.3f}" for s in r["channel_mean"]))
    print("sigma_m per channel: " + ", ".join(f"{s:.3f}" for s in r["sigma_m"]) + f" (rms {r['sigma_m_rms']:.3f})")
    print(f"predicted std ratio (abar_T = {r['abar_T']:.5f}): "
          + ", ".join(f"{s:.3f}" for s in r["predicted_std_ratio"]) + f" (at rms {r['predicted_std_ratio_at_rms']:.3f})")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
