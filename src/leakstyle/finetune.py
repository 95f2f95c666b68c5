"""Diffusion in Style (Everaert et al., ICCV 2023): fine-tune a denoiser with noise drawn from a style distribution.

style images (+ captions) -> N(mu_style, Sigma_style) of their latents (leakstyle.fit), cached latents x_0 and the
denoiser's conditioning (leakstyle.conditioning: SD's text; SDXL's two encoders, pooled text and size conditions;
PixArt's T5 text and mask) -> DenoisingLoss(StyleNoise(style), timesteps) steps on accelerate (full or LoRA) on the
UNet or PixArt transformer -> a folder that load_pipeline reads:

    OUT/finetune.json                      what was trained: base model, method, noise, options, status, step
    OUT/style.safetensors                  the style distribution; inference starts from x_T ~ N(mu_style, Sigma_style)
    OUT/model_index.json, unet/, ...       full fine-tune: a diffusers pipeline folder (plain from_pretrained loads it)
    OUT/pytorch_lora_weights.safetensors   LoRA: the UNet's adapter, applied to the base model named in finetune.json
    OUT/transformer_lora/                  LoRA of PixArt: a peft adapter folder (PeftModel.from_pretrained on the base
                                           transformer; diffusers' PixArt pipelines have no load_lora_weights)
    OUT/checkpoints/step-000250/           the last checkpoint (accelerate save_state into a temp folder, then renamed)

Every random draw of a training step comes from a generator seeded by (seed, micro-step, process), and batch k is a
pure function of (seed, k), so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from . import distributed
from .conditioning import Conditioning, Crop, check_conditioning, is_pixart, training_conditioning
from .denoiser import denoiser_of
from .devices import resolve_device
from .distribution import StyleDistribution
from .encode import encode, vae_of
from .errors import ImageError, LeakstyleError
from .files import load, save
from .finetuned import LORA_FILE, PEFT_LORA_FOLDER, STYLE_FILE, read_record, write_record
from .finetuned import load_finetuned, style_initial_latents  # noqa: F401  (where callers of finetune.py found them)
from .fit import MIN_IMAGES, fit
from .images import digest_paths, list_images, open_image, parse_resolution, resize_and_crop, to_tensor
from .leak import image_size, latent_shape
from .loss import DenoisingLoss, LogSNRTimesteps, StandardNoise, StyleNoise, UniformTimesteps
from .pipeline import load_pipeline

CAPTIONS = "metadata.jsonl"
CHECKPOINTS = "checkpoints"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the UNet's attention projections
MAX_GRAD_NORM = 1.0
# Options that do not change what is learned: a run may be resumed with other values.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "gradient_checkpointing")
# What a record written before an option existed means by its absence (runs made then still --resume).
RECORDED_BEFORE = {"timestep_sampling": "uniform", "logsnr_mean": None, "logsnr_std": None}
# Default log-SNR draw of --timestep-sampling logsnr: Choi et al.'s std; a mean that shifts SD's steps toward high
# noise (85% of draws in the noisier half of the schedule, against 50% for uniform t) while only 12% fall beyond
# its noisiest step t = 999 (log-SNR -5.36) and train there; the paper's mean, -6, lies beyond it (62% would).
LOGSNR_MEAN, LOGSNR_STD = -3.0, 2.0


@dataclass
class Options:
    """Training options, recorded in finetune.json; a resumed run must match all but RESUMABLE_CHANGES."""

    model: str | None
    images: str  # digest of the image files (names and sizes)
    captions: str  # digest of the captions, in image order ("" for unconditional models)
    steps: int
    lr: float
    batch_size: int
    grad_accum: int
    resolution: str | None  # "WxH" in pixels, the model's native size if None
    mixed_precision: str
    gradient_checkpointing: bool
    seed: int
    lora: int | None  # LoRA rank, None for a full fine-tune
    noise: str  # "style" (Diffusion in Style) or "standard" (N(0, I), for comparison)
    kind: str  # statistic type of the style distribution: "dct" or "pixel"
    components: int
    checkpoint_every: int
    timestep_sampling: str  # "uniform" (DDPM) or "logsnr" (Choi et al. 2024)
    logsnr_mean: float | None  # the log-SNR normal of "logsnr", None for "uniform"
    logsnr_std: float | None


# -- inputs ------------------------------------------------------------------------------------------
def read_captions(file: Path) -> dict[Path, str]:
    """Captions from a diffusers ImageFolder `metadata.jsonl`: {"file_name": ..., "text": ...} per line."""
    captions = {}
    for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise ImageError(f"{file} line {number} is not JSON; write one {{\"file_name\": ..., \"text\": ...}} per line") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) or not isinstance(entry.get("text"), str):
            raise ImageError(f"{file} line {number} needs a \"file_name\" and a \"text\" string")
        path = Path(os.path.abspath(file.parent / entry["file_name"]))
        if not path.is_file():
            raise ImageError(f"{file} line {number} names {entry['file_name']}, which does not exist; fix or remove the line")
        captions[path] = entry["text"]
    return captions


def training_images(images: str | os.PathLike | Sequence[str | os.PathLike], prompt: str | None) -> tuple[list[Path], list[str] | None]:
    """The image paths and their captions: `prompt` for all, else from metadata.jsonl in the given folders.

    Captions are None when there is neither (fine for unconditional models; a text-to-image model refuses it)."""
    given = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    paths = list_images(given)
    if len(paths) < MIN_IMAGES:
        raise ImageError(f"found {len(paths)} image; the style distribution needs at least {MIN_IMAGES} images")
    if prompt is not None:
        return paths, [prompt] * len(paths)
    captions: dict[Path, str] = {}
    files = [Path(g) / CAPTIONS for g in given if (Path(g) / CAPTIONS).is_file()]
    for f in files:
        captions.update(read_captions(f))
    if not files:
        return paths, None
    missing = [p for p in paths if p not in captions]
    if missing:
        raise ImageError(f"{missing[0]} has no caption in {files[0]}; add a line for it, or pass --prompt for all images")
    return paths, [captions[p] for p in paths]


def digest_captions(captions: list[str] | None) -> str:
    return "" if captions is None else hashlib.sha256(json.dumps(captions).encode()).hexdigest()[:16]


def check_options(o: Options) -> None:
    """One-line errors for values that cannot train."""
    for name in ("steps", "batch_size", "grad_accum", "components"):
        if getattr(o, name) < 1:
            raise LeakstyleError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(o, name)}")
    if not o.lr > 0:
        raise LeakstyleError(f"--lr must be positive, got {o.lr}")
    if o.lora is not None and o.lora < 1:
        raise LeakstyleError(f"--lora RANK must be at least 1, got {o.lora}")
    if o.checkpoint_every < 0:
        raise LeakstyleError(f"--checkpoint-every must be 0 (only at the end) or more, got {o.checkpoint_every}")
    if o.timestep_sampling == "logsnr" and not o.logsnr_std > 0:
        raise LeakstyleError(f"--logsnr-std must be positive, got {o.logsnr_std}")
    if o.timestep_sampling == "uniform" and (o.logsnr_mean, o.logsnr_std) != (None, None):
        raise LeakstyleError("--logsnr-mean and --logsnr-std shape the logsnr draw; add --timestep-sampling logsnr")
    for name, allowed in (("noise", ("style", "standard")), ("mixed_precision", ("no", "fp16", "bf16")), ("kind", ("pixel", "dct")),
                          ("timestep_sampling", ("uniform", "logsnr"))):
        if getattr(o, name) not in allowed:
            flag = {"kind": "type"}.get(name, name).replace("_", "-")
            raise LeakstyleError(f"--{flag} must be one of {', '.join(allowed)}, got {getattr(o, name)!r}")


# -- the output folder -------------------------------------------------------------------------------
def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's weights (names, shapes, dtypes, values): which weights a fine-tune started from."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}\n".encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (step, path), oldest first. Temp folders of an interrupted save are not listed."""
    found = []
    for p in (folder / CHECKPOINTS).glob("step-*"):
        if p.is_dir() and (p / "progress.json").is_file() and p.name[5:].isdigit():
            found.append((int(p.name[5:]), p))
    return sorted(found)


def differing(recorded: dict, options: Options) -> list[str]:
    now = asdict(options)
    then = {k: recorded.get(k, RECORDED_BEFORE.get(k)) for k in now}
    return [f"{k} {then[k]!r} there, {now[k]!r} here" for k in now if k not in RESUMABLE_CHANGES and then[k] != now[k]]


def plan_output(out: Path, options: Options, resume: bool, force: bool) -> tuple[int, bool]:
    """Decide, before any work, what to do with `out`: (step to resume from, 0 to start; whether to clear it first).

    A folder that holds anything but a leakstyle finetune run is refused (and never deleted, even with force);
    a run with other options too (force starts it over). An existing run of this command needs --resume or --force.
    """
    if out.exists() and not out.is_dir():
        raise LeakstyleError(f"{out} is a file; --out needs a folder")
    if not out.exists() or not any(out.iterdir()):
        if resume:
            raise LeakstyleError(f"nothing to resume: {out} holds no fine-tune run; run without --resume")
        return 0, False
    record = read_record(out)
    if record is None:
        raise LeakstyleError(f"{out} already holds other files; give --out an empty or new folder")
    if force:
        return 0, True
    diff = differing(record["options"], options)
    if diff:
        raise LeakstyleError(f"{out} holds a fine-tune run with other options ({'; '.join(diff[:3])}); "
                             f"use another --out, the same options, or --force to start over")
    done = checkpoints(out)
    if not resume:
        where = f"stopped at step {done[-1][0]}" if done else "stopped before its first checkpoint"
        raise LeakstyleError(f"{out} holds a run of this command {where}; pass --resume to continue it or --force to start over")
    if not done:
        raise LeakstyleError(f"nothing to resume: {out} has no checkpoint yet (the run stopped before its first); "
                             f"pass --force instead of --resume to start over")
    if done[-1][0] > options.steps:
        raise LeakstyleError(f"{out} is already trained for {done[-1][0]} steps, more than --steps {options.steps}")
    return done[-1][0], False


def fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def save_checkpoint(accelerator, out: Path, step: int) -> None:
    """accelerate's save_state into a temp folder, then one rename: a crash leaves the last complete checkpoint."""
    folder = out / CHECKPOINTS / f"step-{step:06d}"
    if folder.exists():  # the same step saved before (a resumed run at its end): identical, keep it
        return
    tmp = out / CHECKPOINTS / f".step-{step:06d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "progress.json").write_text(json.dumps({"step": step}))
        fsync_tree(tmp)
        os.replace(tmp, folder)
        for old_step, old in checkpoints(out):
            if old_step != step:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def remove_temp_checkpoints(out: Path) -> None:
    for tmp in (out / CHECKPOINTS).glob(".step-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


# -- data --------------------------------------------------------------------------------------------
def derived_seed(*keys) -> int:
    """A 63-bit seed from (seed, purpose, counters...): independent streams that need no saved state."""
    return int.from_bytes(hashlib.blake2b("/".join(map(str, keys)).encode(), digest_size=8).digest(), "big") >> 1


@functools.lru_cache(maxsize=8)
def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, "order", epoch)))


def batch_indices(n: int, seed: int, micro_step: int, batch_size: int, processes: int = 1, process: int = 0) -> torch.Tensor:
    """Image indices of one process's micro-batch `micro_step`: epochs are seeded permutations read in order."""
    start = (micro_step * processes + process) * batch_size
    positions = range(start, start + batch_size)
    return torch.stack([epoch_order(n, seed, p // n)[p % n] for p in positions])


def crop_of(original: tuple[int, int], width: int, height: int) -> Crop:
    """Where images.resize_and_crop's centre crop of an image of `original` (width, height) lies: the image scaled
    to cover width x height, the crop's top-left in the scaled image's pixels (SDXL's crops_coords_top_left)."""
    W, H = original
    scale = max(width / W, height / H)
    return Crop(original_size=(H, W), top_left=(round((H * scale - height) / 2), round((W * scale - width) / 2)))


@torch.no_grad()
def encode_images(pipe, paths: list[Path], width: int, height: int) -> tuple[torch.Tensor, list[Crop]]:
    """x_0 [N, C, h, w] and each image's Crop. x_0: VAE latents in model units (the mode, as `fit` uses) or pixels
    in [-1, 1], of the images resized and centre-cropped to width x height as `fit` does; 8 images at a time."""
    vae = vae_of(pipe)
    device = denoiser_of(pipe).device
    x_0, crops = [], []
    for start in range(0, len(paths), 8):
        pixels = []
        for path in paths[start:start + 8]:
            image = open_image(path)
            crops.append(crop_of(image.size, width, height))
            pixels.append(to_tensor(resize_and_crop(image, width, height)))
        batch = torch.stack(pixels)
        x_0.append(encode(vae, batch) if vae is not None else batch.to(device))
    return torch.cat(x_0).float(), crops


def check_model(pipe, captions: list[str] | None, lora: int | None, model) -> None:
    check_conditioning(pipe, model)
    text_model = getattr(pipe, "text_encoder", None) is not None or getattr(pipe, "text_encoder_2", None) is not None
    if text_model and captions is None:
        raise LeakstyleError("no captions: put a metadata.jsonl ({\"file_name\": ..., \"text\": ...} per line) in the "
                             "image folder, or pass --prompt for all images")
    denoiser = denoiser_of(pipe)
    if lora and not is_pixart(pipe) and not (hasattr(denoiser, "add_adapter") and hasattr(pipe, "load_lora_weights")):
        raise LeakstyleError(f"--lora writes adapters that load with diffusers' load_lora_weights, which "
                             f"{type(pipe).__name__} ({type(denoiser).__name__}) does not have; fine-tune it fully "
                             f"(leave out --lora)")
    if getattr(pipe, "leakstyle_lora", False):
        raise LeakstyleError(f"{model} is a LoRA fine-tune; fine-tune its base model instead")


# -- training ----------------------------------------------------------------------------------------
def finetune(images, out: str | os.PathLike, model: str | os.PathLike | None = None, prompt: str | None = None, *,
             steps: int = 500, lr: float | None = None, batch_size: int = 4, grad_accum: int = 1,
             resolution: int | str | None = None, mixed_precision: str = "no", gradient_checkpointing: bool = False,
             seed: int = 0, lora: int | None = None, noise: str = "style", kind: str = "dct", components: int = 3,
             checkpoint_every: int = 250, timestep_sampling: str = "uniform", logsnr_mean: float | None = None,
             logsnr_std: float | None = None, resume: bool = False, force: bool = False, device: str | None = None,
             progress: bool = True, callback: Callable[[int, float], None] | None = None) -> Path:
    """Fine-tune `model` on `images` with Diffusion in Style (noise="style") or standard noise; write `out`.

    Captions come from `prompt` or the folders' metadata.jsonl. `lr` defaults to 1e-5 (full) or 1e-4 (`lora` rank).
    The style distribution is `kind` ("dct" with `components`, or "pixel") statistics of the images' latents at `resolution`.
    Timesteps are drawn uniformly, or with timestep_sampling="logsnr" by log-SNR from N(logsnr_mean, logsnr_std^2)
    (default N(-3, 2^2), see LOGSNR_MEAN; loss.LogSNRTimesteps). SDXL models get their size conditions from each
    image's original size and crop. A checkpoint is written every `checkpoint_every` steps and at the end;
    `resume` continues from the last one.
    `callback(step, loss)` runs after each optimizer step. All user errors are raised before training starts.
    """
    out = Path(out)
    paths, captions = training_images(images, prompt)
    resolution = "x".join(map(str, parse_resolution(resolution))) if resolution is not None else None
    base = model if model is None or not Path(model).exists() else os.path.abspath(model)
    if timestep_sampling == "logsnr":
        logsnr_mean = LOGSNR_MEAN if logsnr_mean is None else float(logsnr_mean)
        logsnr_std = LOGSNR_STD if logsnr_std is None else float(logsnr_std)
    options = Options(model=None if base is None else str(base), images=digest_paths(paths),
                      captions=digest_captions(captions), steps=steps, lr=lr if lr is not None else (1e-4 if lora else 1e-5),
                      batch_size=batch_size, grad_accum=grad_accum, resolution=resolution, mixed_precision=mixed_precision,
                      gradient_checkpointing=gradient_checkpointing, seed=seed, lora=lora, noise=noise, kind=kind,
                      components=components, checkpoint_every=checkpoint_every, timestep_sampling=timestep_sampling,
                      logsnr_mean=logsnr_mean, logsnr_std=logsnr_std)
    check_options(options)
    start, clear = plan_output(out, options, resume, force)
    if start == steps and read_record(out)["status"] == "done":
        return out  # resumed a finished run: nothing left to do

    from accelerate import Accelerator

    wanted = resolve_device(device) if device is not None else None
    # Several processes without a GPU: accelerate runs them as one group only when told cpu=True; otherwise each
    # would train alone as "process 0 of 1" on all images and all would write --out at once.
    cpu_processes = distributed.from_env().world_size > 1 and not torch.cuda.is_available()
    try:
        accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                                  cpu=cpu_processes or (wanted is not None and wanted.type == "cpu"))
    except (ValueError, RuntimeError) as e:
        raise LeakstyleError(f"cannot train with --mixed-precision {mixed_precision} here: {str(e).splitlines()[0]}") from None
    check_accelerator_device(wanted, accelerator.device)
    main = accelerator.is_main_process

    pipe = load_pipeline(model, device=str(accelerator.device), dtype=torch.float32)
    check_model(pipe, captions, lora, model)
    base_digest = weights_digest(denoiser_of(pipe))
    recorded_digest = read_record(out).get("base_unet_sha256") if start > 0 else None
    if recorded_digest is not None and recorded_digest != base_digest:
        raise LeakstyleError(f"{out} was fine-tuned from other weights than {model or 'the embedded model'} has now "
                             f"(the base UNet changed); use another --out, or --force to start over")
    width, height = parse_resolution(resolution) if resolution else image_size(pipe)[::-1]
    latent_shape(pipe, height, width)  # refuses sizes the VAE cannot encode
    schedule = noise_schedule(pipe)

    if start > 0:
        style = load(out / STYLE_FILE)
    else:
        style = fit(paths, pipe=pipe, kind=kind, components=components, resolution=(width, height),
                    strict=True, progress=progress and main)
    x_0, crops = encode_images(pipe, paths, width, height)
    cond = training_conditioning(pipe, captions, crops, target_size=(height, width)).to(accelerator.device)
    for frozen in (vae_of(pipe), getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)):
        if frozen is not None:
            frozen.requires_grad_(False).to("cpu")

    unet, params = trainable_unet(pipe, options, accelerator)
    optimizer = torch.optim.AdamW(params, lr=options.lr)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    register_checkpoint_hooks(accelerator)

    accelerator.wait_for_everyone()  # every process has checked `out` before the first write
    if main:
        if clear:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        remove_temp_checkpoints(out)
        if start == 0:
            save(style, out / STYLE_FILE, force=True)
        write_record(out, options, "training", start, base_digest, lora_file(pipe))
    accelerator.wait_for_everyone()
    if start > 0:
        accelerator.load_state(str(checkpoints(out)[-1][1]))

    loss_fn = training_loss(noise, style, schedule, accelerator.device, timestep_draw(options, schedule))
    run_steps(accelerator, unet, optimizer, loss_fn, x_0, cond, options, start, out, progress and main, callback)

    if main:
        export(pipe, accelerator.unwrap_model(unet), out, bool(lora))
        write_record(out, options, "done", steps, base_digest, lora_file(pipe))
    accelerator.wait_for_everyone()
    return out


def check_accelerator_device(wanted, device) -> None:
    """accelerate chooses each process's device (cuda:<local rank>): a --device naming another one is refused
    rather than ignored."""
    if wanted is None:
        return
    if wanted.type != device.type or (wanted.index is not None and wanted.index != (device.index or 0)):
        raise LeakstyleError(f"finetune would run on {device}, not {wanted}: accelerate picks the device of each "
                             f"process; choose the GPU with CUDA_VISIBLE_DEVICES (or accelerate launch) instead")


def noise_schedule(pipe):
    """The training schedule (a DDPMScheduler with the model's betas and prediction type), as diffusers trains."""
    from diffusers import DDPMScheduler

    if not hasattr(pipe.scheduler, "alphas_cumprod"):
        raise LeakstyleError(f"the model's {type(pipe.scheduler).__name__} has no abar_t schedule (flow matching?); "
                             f"finetune trains DDPM-style models")
    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    if schedule.config.prediction_type not in ("epsilon", "v_prediction"):
        raise LeakstyleError(f"prediction type {schedule.config.prediction_type!r} is not supported: epsilon or v_prediction")
    return schedule


def timestep_draw(options: Options, schedule):
    """Uniform timesteps, or the log-SNR draw of --timestep-sampling logsnr on the training schedule."""
    if options.timestep_sampling == "logsnr":
        return LogSNRTimesteps(schedule.alphas_cumprod, options.logsnr_mean, options.logsnr_std)
    return UniformTimesteps(len(schedule.alphas_cumprod))


def training_loss(noise: str, style: StyleDistribution, schedule, device, timesteps=None) -> DenoisingLoss:
    """Diffusion in Style (noise="style") or standard fine-tuning (noise="standard"): the same loss, other noise.
    `timesteps` is a loss.UniformTimesteps (the default) or loss.LogSNRTimesteps."""
    source = StyleNoise(style) if noise == "style" else StandardNoise()
    return DenoisingLoss(source, schedule.alphas_cumprod.to(device), schedule.config.prediction_type, timesteps)


def trainable_unet(pipe, options: Options, accelerator):
    """The denoiser (UNet or PixArt transformer) set up for training and its trainable parameters: all of them, or
    LoRA adapters on its attention projections (a UNet's own add_adapter; PixArt's transformer wrapped by peft)."""
    unet = denoiser_of(pipe)
    if options.lora:
        from peft import LoraConfig

        unet.requires_grad_(False)
        torch.manual_seed(derived_seed(options.seed, "lora-init"))
        config = LoraConfig(r=options.lora, lora_alpha=options.lora, init_lora_weights="gaussian",
                            target_modules=LORA_TARGETS)
        if hasattr(unet, "add_adapter"):
            unet.add_adapter(config)
        else:  # PixArt's transformer has no diffusers adapter methods: peft wraps it (a PeftModel)
            from peft import get_peft_model

            unet = get_peft_model(unet, config)
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
        for p in unet.parameters():  # frozen weights in the compute dtype, adapters in float32
            p.data = p.data.to(torch.float32 if p.requires_grad else weight_dtype)
    else:
        unet.requires_grad_(True)
    if options.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    return unet, [p for p in unet.parameters() if p.requires_grad]


def run_steps(accelerator, unet, optimizer, loss_fn, x_0, cond: Conditioning, options: Options, start: int, out: Path,
              progress: bool, callback) -> None:
    """Optimizer steps start+1 .. options.steps, each of grad_accum micro-batches per process."""
    o = options
    n, P, p = len(x_0), accelerator.num_processes, accelerator.process_index
    device = accelerator.device
    params = [q for q in unet.parameters() if q.requires_grad]
    with tqdm(total=o.steps, initial=start, desc="finetune", unit="step", disable=not progress) as bar:
        for step in range(start + 1, o.steps + 1):
            losses = []
            for k in range((step - 1) * o.grad_accum, step * o.grad_accum):
                i = batch_indices(n, o.seed, k, o.batch_size, P, p).to(device)
                generator = torch.Generator(device).manual_seed(derived_seed(o.seed, "noise", k, p))
                with accelerator.accumulate(unet):
                    loss = loss_fn(unet, x_0[i], generator, **cond.batch(i))
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(params, MAX_GRAD_NORM)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                losses.append(loss.detach())
            value = float(accelerator.reduce(torch.stack(losses).mean(), "mean"))
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            if step == o.steps or (o.checkpoint_every and step % o.checkpoint_every == 0):
                save_checkpoint(accelerator, out, step)
            if callback is not None:
                callback(step, value)


def register_checkpoint_hooks(accelerator) -> None:
    """Checkpoints hold only the trainable parameters (all of a full fine-tune, the adapters of a LoRA one)."""
    from safetensors.torch import load_file

    def save_trainable(models, weights, output_dir):
        for i, m in enumerate(models):
            weights[i] = {k: v.detach() for k, v in accelerator.unwrap_model(m).named_parameters() if v.requires_grad}

    def load_trainable(models, input_dir):
        while models:
            m = accelerator.unwrap_model(models.pop())
            state = load_file(os.path.join(input_dir, "model.safetensors"))  # load_state_dict copies to the device
            expected = {k for k, v in m.named_parameters() if v.requires_grad}
            if set(state) != expected:
                raise LeakstyleError(f"the checkpoint in {input_dir} does not match this model; use --force to start over")
            m.load_state_dict(state, strict=False)

    accelerator.register_save_state_pre_hook(save_trainable)
    accelerator.register_load_state_pre_hook(load_trainable)


def lora_file(pipe) -> str:
    """Where a LoRA fine-tune of this pipeline goes: diffusers' file, or a peft folder where diffusers has no loader."""
    return LORA_FILE if hasattr(pipe, "load_lora_weights") else PEFT_LORA_FOLDER


def export(pipe, unet, out: Path, lora: bool) -> None:
    """Write the fine-tuned model: a full pipeline folder, or the UNet's LoRA weights for the base model (PixArt:
    the transformer's peft adapter folder)."""
    if lora and lora_file(pipe) == PEFT_LORA_FOLDER:
        unet.save_pretrained(str(out / PEFT_LORA_FOLDER), safe_serialization=True)
    elif lora:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        type(pipe).save_lora_weights(str(out), unet_lora_layers=layers, weight_name=LORA_FILE, safe_serialization=True)
    else:
        setattr(pipe, "transformer" if getattr(pipe, "transformer", None) is not None else "unet", unet)
        pipe.save_pretrained(str(out))
