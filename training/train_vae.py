"""Stage 2: train the miniature AutoencoderKL (64x64 RGB <-> 4 x 16 x 16 latents).

Three resolution stages give a down-sampling factor of 4, so latents are 16 x 16: DESIGN.md's estimate
says that is the smallest size at which the signal leak still shows. The loss is
L1 + MSE + kl_weight * KL, with the KL summed over the latent and divided by the pixel count (LDM's
weighting; 1e-6 as in Stable Diffusion). The export step sets ``scaling_factor`` to 1 / std of the
latents (``latent_dist.mode()``) of training composites, as SD did, and saves an fp16 diffusers folder.

    python -m training.train_vae [--steps 6000] [--max-minutes 60]   # resumes from <run>/checkpoint.pt
    python -m training.train_vae --smoke --run /tmp/vae-smoke         # a few steps, for CI
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from training.dataset import EmojiComposites, require_data
from training.loop import LossLog, batch_indices, collate, lr_at, save_atomic

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "data" / "google"
DEFAULT_RUN = HERE / "runs" / "vae"


def vae_config(block_out_channels: tuple[int, ...] = (16, 32, 64), norm_num_groups: int = 4) -> dict:
    """AutoencoderKL config of the miniature model: 4 latent channels, factor 2**(len-1) = 4.

    Groups must hold several channels (4 at the 16-channel stage, as SD's 128/32): with one channel
    per group, GroupNorm removes each channel's spatial mean, and with it the flat background colour,
    just before the decoder's output conv (tried: 13 dB after 250 steps, greyed colours).
    """
    n = len(block_out_channels)
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
                down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                block_out_channels=tuple(block_out_channels), layers_per_block=1,
                norm_num_groups=norm_num_groups, scaling_factor=1.0)


class VAELoss:
    """L1 + MSE reconstruction plus kl_weight * KL (summed over the latent, per pixel)."""

    def __init__(self, kl_weight: float = 1e-6):
        self.kl_weight = kl_weight

    def __call__(self, vae: AutoencoderKL, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        posterior = vae.encode(x).latent_dist
        x_hat = vae.decode(posterior.sample(generator=generator)).sample
        l1, mse = (x_hat - x).abs().mean(), F.mse_loss(x_hat, x)
        kl = posterior.kl().mean() / x[0].numel()
        return {"loss": l1 + mse + self.kl_weight * kl, "l1": l1, "mse": mse, "kl": kl}


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1], computed in [0, 1] units over the whole batch."""
    mse = F.mse_loss(((x_hat.clamp(-1, 1) + 1) / 2), (x + 1) / 2).item()
    return 10 * math.log10(1 / max(mse, 1e-12))


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Decode the posterior mode of each image: [B, 3, H, W] -> [B, 3, H, W]."""
    out = [vae.decode(vae.encode(xb).latent_dist.mode()).sample for xb in x.split(batch_size)]
    return torch.cat(out)


@torch.no_grad()
def latent_std(vae: AutoencoderKL, x: torch.Tensor, batch_size: int = 64) -> float:
    """Std of the unscaled latents (posterior mode) over all elements of x's encodings."""
    z = torch.cat([vae.encode(xb).latent_dist.mode() for xb in x.split(batch_size)])
    return z.float().std().item()


def fixed_images(folder: Path, split: str, n: int, seed: int) -> torch.Tensor:
    """n composites of a split, the same on every call: [n, 3, 64, 64]."""
    ds = EmojiComposites(folder, split, seed=seed)
    ds.repeats = -(-n // len(ds.rows))  # enough rounds of the split for n images
    return torch.stack([ds[i * len(ds) // n][0] for i in range(n)])


def export(vae: AutoencoderKL, data: Path, out: Path, n_images: int = 512) -> float:
    """Set scaling_factor = 1 / std of training latents, save an fp16 diffusers folder; return it."""
    vae.eval()
    scale = 1.0 / latent_std(vae, fixed_images(data, "train", n_images, seed=12345))
    vae.register_to_config(scaling_factor=scale)
    tmp = out.with_name(out.name + ".tmp")
    half = AutoencoderKL.from_config(vae.config)
    half.load_state_dict(vae.state_dict())
    half.to(torch.float16).save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return scale


def train(run: Path, data: Path, steps: int, batch_size: int = 16, lr: float = 5e-4, warmup: int = 200,
          kl_weight: float = 1e-6, seed: int = 0, ckpt_every: int = 250, log_every: int = 10,
          max_minutes: float | None = None, config: dict | None = None) -> AutoencoderKL:
    """Train (or resume) the VAE in run/ until `steps` or `max_minutes`; checkpoint atomically."""
    ckpt_path = run / "checkpoint.pt"
    torch.manual_seed(seed)
    ckpt = torch.load(ckpt_path, weights_only=False) if ckpt_path.exists() else None
    vae = AutoencoderKL.from_config(ckpt["config"] if ckpt else (config or vae_config()))
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    step = 0
    if ckpt:
        vae.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
    ds = EmojiComposites(data, "train", seed=seed, repeats=10**6, flip=True)
    x_eval = fixed_images(data, "eval", 64, seed=999)
    loss_fn, log = VAELoss(kl_weight), LossLog(run / "loss.jsonl", step)

    def checkpoint() -> None:
        save_atomic({"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": step,
                     "config": dict(vae.config), "args": {"steps": steps, "batch_size": batch_size,
                     "lr": lr, "kl_weight": kl_weight, "seed": seed}}, ckpt_path)

    t_start = time.time()
    vae.train()
    while step < steps:
        if max_minutes is not None and time.time() - t_start > 60 * max_minutes:
            break
        t = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        x, _ = collate(ds, batch_indices(seed, step, batch_size, len(ds.rows)))
        terms = loss_fn(vae, x, torch.Generator().manual_seed(seed * 1_000_003 + step))
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % log_every == 0 or step == steps:
            row = {k: v.item() for k, v in terms.items()}
            row.update(step=step, lr=opt.param_groups[0]["lr"], sec_per_step=time.time() - t)
            if step % ckpt_every == 0 or step == steps:
                vae.eval()
                row["eval_psnr"] = psnr(reconstruct(vae, x_eval), x_eval)
                vae.train()
            log.write(**row)
        if step % ckpt_every == 0:
            checkpoint()
    checkpoint()
    vae.eval()
    return vae


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=None, help=f"run folder (default {DEFAULT_RUN.relative_to(HERE.parent)})")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and checkpoint) after this long")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="3 steps, batch 4, tiny export: for CI")
    p.add_argument("--export", type=Path, default=None, help="diffusers folder to write (default <run>/export)")
    args = p.parse_args(argv)
    if args.smoke and args.run is None:
        raise SystemExit("--smoke needs its own --run folder (the real run's checkpoint stays as it is)")
    args.run = args.run or DEFAULT_RUN
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.steps, args.batch_size, args.ckpt_every = 3, 4, 2
    require_data(args.data)
    vae = train(args.run, args.data, args.steps, args.batch_size, args.lr, kl_weight=args.kl_weight,
                seed=args.seed, ckpt_every=args.ckpt_every, max_minutes=args.max_minutes,
                warmup=2 if args.smoke else 200)
    step = torch.load(args.run / "checkpoint.pt", weights_only=False)["step"]
    if step >= args.steps:
        out = args.export or args.run / "export"
        scale = export(vae, args.data, out, n_images=16 if args.smoke else 512)
        print(f"step {step}: exported to {out} with scaling_factor {scale:.4f}")
    else:
        print(f"stopped at step {step} of {args.steps}; rerun the same command to resume")
    return 0


if __name__ == "__main__":
    sys.exit(main())
