"""What a Diffusion-in-Style training step costs against a standard one (target: at most 2% more).

    .venv/bin/python benchmarks/finetune_step.py [--reps 20] [--batch-size 2] [--latent 32] [--width 32] [--device cpu|cuda]

Both steps are the same DenoisingLoss + backward + AdamW step on the same UNet and batch; only the noise source
differs (StandardNoise vs StyleNoise of a dct, 3-component style). The UNet is Stable-Diffusion-shaped
(cross-attention, two layers per block) at (32, 64, 128) channels and 32 x 32 latents (--width 64 doubles
them): a small fraction of SD 1.5, so noise sampling takes a larger share of the step here than in real
fine-tuning, never a smaller one. Repetitions are interleaved
(standard, style, style, standard, ...) so that load on the machine falls on both alike; medians are reported,
with the noise draws alone timed the same way. On the CPU the clock is the process's CPU time with one torch
thread, which other jobs on a shared machine disturb far less than wall time; on a GPU, wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from leakstyle.distribution import StyleDistribution
from leakstyle.loss import DenoisingLoss, StandardNoise, StyleNoise
from leakstyle.moments import Moments
from leakstyle.testing import SD15_SCHEDULE


def make_unet(latent: int, width: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=latent, in_channels=4, out_channels=4, block_out_channels=(width, 2 * width, 4 * width),
                                layers_per_block=2, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=128, attention_head_dim=8, norm_num_groups=32)


def make_style(latent: int) -> StyleDistribution:
    """A dct style (3 components) fitted to 32 smooth random latents."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.randn(32, 4, 4, 4, generator=g), size=latent, mode="bilinear")
    moments = Moments.for_dct(4, latent, latent, 3)
    moments.update(x + 0.3 * torch.randn(x.shape, generator=g))
    return StyleDistribution.from_moments(moments)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    """Seconds `fn` takes: CPU time of this process on the CPU (what other jobs on the machine disturb least),
    wall time between synchronisations on a GPU."""
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    sync(device)
    start = clock()
    fn()
    sync(device)
    return clock() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=20, help="timed steps of each kind (default 20)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--latent", type=int, default=32, help="latent height and width (default 32)")
    p.add_argument("--width", type=int, default=32, help="channels of the first UNet block (default 32; SD 1.5: 320)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: CPU time is then stable)")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    from diffusers import DDPMScheduler

    unet = make_unet(args.latent, args.width).to(device).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-6)
    abar = DDPMScheduler(**SD15_SCHEDULE).alphas_cumprod.to(device)
    losses = {"standard": DenoisingLoss(StandardNoise(), abar), "style": DenoisingLoss(StyleNoise(make_style(args.latent)), abar)}
    x_0 = torch.randn(args.batch_size, 4, args.latent, args.latent, device=device)
    text = torch.randn(args.batch_size, 77, 128, device=device)

    def step(kind, rep):
        loss = losses[kind](unet, x_0, torch.Generator(device).manual_seed(rep), encoder_hidden_states=text)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def draw(kind, rep):
        losses[kind].noise(x_0, torch.Generator(device).manual_seed(rep))

    for kind in losses:  # warm up: allocator, kernels, the style's cached factor
        step(kind, 0)
        draw(kind, 0)
    steps = {k: [] for k in losses}
    draws = {k: [] for k in losses}
    for rep in range(args.reps):
        order = ("standard", "style") if rep % 2 == 0 else ("style", "standard")
        for kind in order:
            steps[kind].append(timed(lambda: step(kind, rep + 1), device))
        for kind in order:
            draws[kind].append(min(timed(lambda: draw(kind, rep + 1), device) for _ in range(20)))

    params = sum(q.numel() for q in unet.parameters()) / 1e6
    clock = "process CPU time" if device.type == "cpu" else "wall time"
    print(f"device {device}, UNet {params:.1f}M parameters, batch {args.batch_size} x 4 x {args.latent} x {args.latent}, "
          f"{args.reps} interleaved repetitions, torch threads {torch.get_num_threads()}, {clock}")
    print(f"{'':<22}{'standard':>12}{'style':>12}{'ratio':>9}")
    s, t = statistics.median(steps["standard"]), statistics.median(steps["style"])
    paired = statistics.median(b / a for a, b in zip(steps["standard"], steps["style"]))
    print(f"{'training step (ms)':<22}{1e3 * s:>12.1f}{1e3 * t:>12.1f}{t / s:>9.3f}   (median of paired ratios {paired:.3f})")
    a, b = statistics.median(draws["standard"]), statistics.median(draws["style"])
    print(f"{'noise draw (ms)':<22}{1e3 * a:>12.3f}{1e3 * b:>12.3f}{b / a:>9.2f}")
    print(f"style-noise overhead: {100 * (b - a) / s:+.4f}% of a step from the draw alone; "
          f"{100 * (t / s - 1):+.2f}% measured (target: at most +2%)")


if __name__ == "__main__":
    main()
