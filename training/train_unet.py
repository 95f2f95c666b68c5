"""Stage 3: train the miniature text encoder and UNet on VAE latents, and export the SD 1.x pipeline.

A small CLIPTextModel (the real CLIP vocabulary, 77 positions) and a UNet2DConditionModel on 4 x 16 x 16
latents are trained together with Stable Diffusion's epsilon loss on SD 1.5's exact schedule
(scaled_linear 0.00085..0.012, 1000 steps), so the model learns to read the background colour from the
signal leak sqrt(abar_t) z0 at large t, as SD does. 10% of captions are replaced by "" for
classifier-free guidance. The export is a StableDiffusionPipeline folder (DDIM, steps_offset 1,
clip_sample False) that loads with a plain ``StableDiffusionPipeline.from_pretrained(folder)``.

    python -m training.train_unet [--steps N] [--max-minutes M]   # resumes from <run>/checkpoint.pt
    python -m training.train_unet --init src/leakstyle/models/mini-sd --run R --steps N   # continue the shipped model
    python -m training.train_unet --smoke --run /tmp/unet-smoke    # a few steps, for CI
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from torch.utils.data import Dataset
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from training.dataset import EmojiComposites, require_data
from training.loop import LossLog, batch_indices, collate, lr_at, save_atomic
from training.train_vae import vae_config

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "data" / "google"
DEFAULT_RUN = HERE / "runs" / "unet"
DEFAULT_VAE = HERE / "runs" / "vae" / "export"
DEFAULT_TOKENIZER = HERE / "runs" / "tokenizer"

SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     steps_offset=1, prediction_type="epsilon")


def text_encoder_config(hidden: int = 64, layers: int = 3, heads: int = 4) -> CLIPTextConfig:
    """A small CLIP text transformer over the full 49408-token vocabulary, 77 positions."""
    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
                          num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=hidden)


def unet_config(block_out_channels: tuple[int, ...] = (64, 128, 128), cross_attention_dim: int = 64) -> dict:
    """UNet2DConditionModel for 4 x 16 x 16 latents; 8 channels per norm group (see vae_config)."""
    return dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=tuple(block_out_channels),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                layers_per_block=1, cross_attention_dim=cross_attention_dim, attention_head_dim=4,
                norm_num_groups=8)


class EpsilonLoss:
    """Stable Diffusion's loss: || eps - eps_theta(sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, t, c) ||^2.

    t and eps are drawn on the CPU from `generator` and then moved to z0's device, so a run draws the same
    noise on any device."""

    def __init__(self, scheduler: DDPMScheduler):
        self.abar = scheduler.alphas_cumprod
        self.T = scheduler.config.num_train_timesteps

    def __call__(self, unet: UNet2DConditionModel, z0: torch.Tensor, cond: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        t = torch.randint(0, self.T, (z0.shape[0],), generator=generator)
        eps = torch.randn(z0.shape, generator=generator).to(z0.device)
        abar_t = self.abar[t].view(-1, 1, 1, 1).to(z0.device, z0.dtype)
        x_t = abar_t.sqrt() * z0 + (1 - abar_t).sqrt() * eps
        return F.mse_loss(unet(x_t, t.to(z0.device), encoder_hidden_states=cond).sample, eps)


def drop_captions(captions: list[str], rng: np.random.Generator, p: float = 0.1) -> list[str]:
    """Replace a share p of captions by "" (the unconditional prompt of classifier-free guidance)."""
    return ["" if rng.random() < p else c for c in captions]


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """[B, 77] token ids, padded as StableDiffusionPipeline pads them."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encode_text(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """[B, 77, D] last hidden states, as StableDiffusionPipeline computes them."""
    return text_encoder(tokenize(tokenizer, captions))[0]


def load_vae(folder: Path, allow_untrained: bool) -> AutoencoderKL:
    """The exported VAE (frozen); an untrained one only for smoke runs without stage 2's output."""
    if (folder / "config.json").exists():
        vae = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32)
    elif allow_untrained:
        vae = AutoencoderKL.from_config(vae_config())
    else:
        raise SystemExit(f"no VAE in {folder}: run `python -m training.train_vae` first (or pass --vae)")
    return vae.eval().requires_grad_(False)


class Batches(Dataset):
    """Item s is the whole batch of step s: images [B, 3, 64, 64] and token ids [B, 77], captions dropped.

    A pure function of (seed, s), so DataLoader workers can build batches ahead in any order."""

    def __init__(self, ds: EmojiComposites, tokenizer: CLIPTokenizer, batch_size: int, seed: int):
        self.ds, self.tokenizer, self.batch_size, self.seed = ds, tokenizer, batch_size, seed

    def __len__(self) -> int:
        return 10**12

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, captions = collate(self.ds, batch_indices(self.seed, step, self.batch_size, len(self.ds.rows)))
        return x, tokenize(self.tokenizer, drop_captions(captions, np.random.default_rng([self.seed, step, 11])))


class EMA:
    """Exponential moving average of weights, the copy that is exported (as in LDM and SD training).

    decay warms up as (1 + n) / (10 + n) so the average is not dominated by the random initialisation."""

    def __init__(self, params: list[torch.Tensor], decay: float, state: dict | None = None):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]
        self.n = 0
        if state is not None:
            for s, v in zip(self.shadow, state["shadow"]):
                s.copy_(v)
            self.n = state["n"]

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)
        self.n += 1

    def state_dict(self) -> dict:
        return {"shadow": [s.cpu() for s in self.shadow], "n": self.n}


def named_ema(module: torch.nn.Module, shadow: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """module.state_dict() with its parameters replaced by their averages (buffers as they are)."""
    sd = {k: v.cpu() for k, v in module.state_dict().items()}
    for (name, _), s in zip(module.named_parameters(), shadow):
        sd[name] = s.cpu()
    return sd


def steps_for_budget(step: int, rate: float, seconds_left: float, margin: float = 0.97) -> int:
    """Total step count that the measured rate (steps/s) reaches within the seconds left."""
    return step + max(1, int(margin * rate * seconds_left))


def train(run: Path, data: Path, vae: AutoencoderKL, tokenizer: CLIPTokenizer, steps: int, batch_size: int = 32,
          lr: float = 3e-4, warmup: int = 200, seed: int = 0, ckpt_every: int = 250, log_every: int = 10,
          max_minutes: float | None = None, budget_minutes: float | None = None, ema_decay: float = 0.999,
          device: str = "cpu", workers: int = 0, init: Path | None = None) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Train (or resume) text encoder + UNet in run/ until `steps` or `max_minutes`.

    A new run starts from random weights, or from those of the pipeline folder `init` (the shipped model,
    say); a run with a checkpoint resumes from it and ignores `init`.

    budget_minutes instead fixes `steps` from the speed measured over the first steps (still inside the
    warm-up, whose learning rate does not depend on the total), so that the cosine schedule ends when the
    budget does; the total is stored in the checkpoint and a resumed run keeps it."""
    ckpt_path = run / "checkpoint.pt"
    torch.manual_seed(seed)
    ckpt = torch.load(ckpt_path, weights_only=False, map_location="cpu") if ckpt_path.exists() else None
    unet = UNet2DConditionModel.from_config(ckpt["unet_config"] if ckpt else unet_config())
    text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(ckpt["text_config"]) if ckpt else text_encoder_config())
    step = 0
    if ckpt:
        unet.load_state_dict(ckpt["unet"])
        text_encoder.load_state_dict(ckpt["text_encoder"])
        step = ckpt["step"]
    elif init is not None:  # a new run (step 0, its own schedule) from the weights of an exported pipeline
        unet = UNet2DConditionModel.from_pretrained(init / "unet", torch_dtype=torch.float32)
        text_encoder = CLIPTextModel.from_pretrained(init / "text_encoder", dtype=torch.float32)
    unet.to(device), text_encoder.to(device), vae.to(device)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=device.startswith("cuda"))
    rewarm_from = None
    if ckpt and "optimizer" in ckpt:
        opt.load_state_dict(ckpt["optimizer"])
    elif ckpt:  # a slim checkpoint (export_model --slim) has none: Adam restarts, so warm up again
        rewarm_from = step
    ema = EMA(params, ema_decay, ckpt.get("ema") if ckpt else None)
    probe, budget_total = None, ckpt.get("total_steps") if ckpt else None
    if budget_total:
        steps = budget_total
    elif budget_minutes:
        n = max(1, min(100, warmup // 2))
        probe_from, probe, steps = step + n // 5, step + n, 10**12
    loss_fn = EpsilonLoss(DDPMScheduler(**SD15_SCHEDULE, clip_sample=False))
    log = LossLog(run / "loss.jsonl", step)
    batches = torch.utils.data.DataLoader(
        Batches(EmojiComposites(data, "train", seed=seed, repeats=10**6), tokenizer, batch_size, seed),
        batch_size=None, sampler=range(step, 10**12), num_workers=workers,
        prefetch_factor=4 if workers else None, pin_memory=device.startswith("cuda"))

    def checkpoint() -> None:
        save_atomic({"unet": {k: v.cpu() for k, v in unet.state_dict().items()},
                     "text_encoder": {k: v.cpu() for k, v in text_encoder.state_dict().items()},
                     "optimizer": opt.state_dict(), "ema": ema.state_dict(), "step": step,
                     "total_steps": budget_total, "unet_config": dict(unet.config),
                     "text_config": text_encoder.config.to_dict()}, ckpt_path)

    t_start = time.time()
    t_probe = None
    unet.train(), text_encoder.train()
    for x, ids in batches:
        if step >= steps or (max_minutes is not None and time.time() - t_start > 60 * max_minutes):
            break
        if probe is not None and step == probe_from:
            t_probe = time.time()
        if probe is not None and step == probe:
            rate = (probe - probe_from) / (time.time() - t_probe)
            steps = budget_total = steps_for_budget(step, rate, 60 * budget_minutes - (time.time() - t_start))
            probe = None
            print(f"{rate:.1f} steps/s: {steps} steps fit in {budget_minutes} minutes", flush=True)
        t = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup) * (min(1.0, (step - rewarm_from + 1) / warmup) if rewarm_from is not None else 1.0)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        x, ids = x.to(device, non_blocking=True), ids.to(device, non_blocking=True)
        with torch.no_grad():
            z0 = vae.encode(x).latent_dist.sample(generator=generator) * vae.config.scaling_factor
        loss = loss_fn(unet, z0, text_encoder(ids)[0], generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update()
        step += 1
        if step % log_every == 0 or step == steps:
            log.write(step=step, loss=loss.item(), lr=opt.param_groups[0]["lr"], sec_per_step=time.time() - t)
        if step % ckpt_every == 0:
            checkpoint()
    checkpoint()
    n = len(list(unet.parameters()))
    unet.load_state_dict(named_ema(unet, ema.shadow[:n]))
    text_encoder.load_state_dict(named_ema(text_encoder, ema.shadow[n:]))
    vae.cpu()
    return unet.cpu().eval(), text_encoder.cpu().eval()


def export_pipeline(vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                    unet: UNet2DConditionModel, out: Path, dtype: torch.dtype = torch.float16) -> Path:
    """Save a StableDiffusionPipeline folder (DDIM with SD 1.5's schedule, no safety checker).

    clip_sample must be False in the saved config (SD 1.5's has it too): schedulers built from it with
    from_config (DDIM, DDPM) would otherwise clamp the predicted latent to [-1, 1] and grey every colour."""
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SD15_SCHEDULE, clip_sample=False, set_alpha_to_one=False),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.to(dtype).save_pretrained(tmp)
    pipe.to(torch.float32)
    # transformers records the saved weights' dtype in the text encoder's config and loads it so, beside the other
    # components' float32: ask for float32, so that a plain from_pretrained gives one dtype for every component.
    config = tmp / "text_encoder" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "dtype": "float32"}, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return out


def time_sampling(folder: Path, steps: int = 25, batch: int = 1, repeats: int = 2) -> float:
    """Seconds for one pipeline call (64x64, `steps` steps, CFG) loaded with a plain from_pretrained."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    best = float("inf")
    for r in range(repeats):
        t = time.time()
        pipe(["grinning face"] * batch, num_inference_steps=steps, height=64, width=64,
             generator=torch.Generator().manual_seed(r))
        best = min(best, time.time() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=None, help=f"run folder (default {DEFAULT_RUN.relative_to(HERE.parent)})")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--vae", type=Path, default=DEFAULT_VAE)
    p.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this long")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="instead of --steps: as many steps as the measured speed fits into this long")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes that build batches ahead")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--init", type=Path, default=None,
                   help="start a new run from this pipeline folder's UNet and text encoder (e.g. src/leakstyle/models/mini-sd)")
    p.add_argument("--smoke", action="store_true", help="3 steps, batch 4, 2 sampling steps: for CI")
    p.add_argument("--export", type=Path, default=None, help="pipeline folder (default <run>/pipeline)")
    args = p.parse_args(argv)
    if args.smoke and args.run is None:
        raise SystemExit("--smoke needs its own --run folder (the real run's checkpoint stays as it is)")
    args.run = args.run or DEFAULT_RUN
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.steps, args.batch_size, args.ckpt_every = 3, 4, 2
    if args.init is not None and not (args.init / "unet" / "config.json").is_file():
        raise SystemExit(f"--init {args.init} is not a pipeline folder with a unet/ (e.g. src/leakstyle/models/mini-sd)")
    require_data(args.data)
    if not (args.tokenizer / "tokenizer_config.json").exists():
        raise SystemExit(f"no tokenizer in {args.tokenizer}: run `python -m training.build_tokenizer` first")
    tokenizer = CLIPTokenizer.from_pretrained(args.tokenizer)
    vae = load_vae(args.vae, allow_untrained=args.smoke)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    unet, text_encoder = train(args.run, args.data, vae, tokenizer, args.steps, args.batch_size, args.lr,
                               warmup=2 if args.smoke else args.warmup, seed=args.seed, ckpt_every=args.ckpt_every,
                               max_minutes=args.max_minutes, budget_minutes=args.budget_minutes,
                               ema_decay=args.ema_decay, device=args.device, workers=args.workers, init=args.init)
    ckpt = torch.load(args.run / "checkpoint.pt", weights_only=False)
    step, total = ckpt["step"], ckpt.get("total_steps") or args.steps
    if step < total:
        print(f"stopped at step {step} of {total}; rerun the same command to resume")
        return 0
    out = export_pipeline(vae, text_encoder, tokenizer, unet, args.export or args.run / "pipeline")
    n_steps = 2 if args.smoke else 25
    print(f"step {step}: exported to {out}; one 64x64 image, {n_steps} steps: "
          f"{time_sampling(out, n_steps, repeats=1 if args.smoke else 2):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
