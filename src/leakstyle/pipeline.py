"""Loading pipelines and generating images that start from a signal leak.

Text-to-image pipelines (Stable Diffusion 1.x/2.x, SDXL, and anything that takes `latents=`) are called
as they are. Pixel-space models (UNet2DModel + scheduler) take no `latents=`, so leakstyle runs their loop.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .distribution import StyleDistribution
from .encode import color_to_model_units
from .errors import LeakstyleError
from .finetune import style_initial_latents
from .leak import image_size, initial_latents
from .schedulers import make_scheduler

EMBEDDED_MODEL = Path(__file__).parent / "models" / "mini-sd"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(model: str | os.PathLike | None = None, device: str | None = None, dtype: torch.dtype | None = None):
    """A diffusers pipeline from a local folder or a hub id; None loads the embedded miniature model.

    On CUDA the default dtype is float16, on CPU float32. Raises LeakstyleError with one line when the
    folder is missing or not a diffusers pipeline, or the hub cannot be reached.
    A `leakstyle finetune` output folder loads as its fine-tuned model (a full pipeline, or the base model with
    the LoRA weights), with `pipe.leakstyle_noise` set to the style distribution x_T is drawn from (see generate).
    """
    from .finetune import load_finetuned, read_record

    record = read_record(Path(model)) if model is not None and Path(model).is_dir() else None
    if record is not None:
        return load_finetuned(Path(model), record, device=device, dtype=dtype)
    return load_diffusers(model, device=device, dtype=dtype)


def load_diffusers(model: str | os.PathLike | None = None, device: str | None = None, dtype: torch.dtype | None = None):
    """load_pipeline for plain diffusers folders and hub ids (no fine-tune record is read)."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    if model is None:
        if not (EMBEDDED_MODEL / "model_index.json").exists():
            raise LeakstyleError(f"the embedded model is not installed at {EMBEDDED_MODEL}; pass --model FOLDER_OR_HUB_ID")
        model = EMBEDDED_MODEL
    device = device or default_device()
    dtype = dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)
    local = Path(model)
    if local.exists():
        if not (local / "model_index.json").exists():
            raise LeakstyleError(f"{local} is not a diffusers pipeline folder (no model_index.json)")
    elif str(model).startswith((".", "/", "~")) or str(model).count("/") != 1:
        raise LeakstyleError(f"no model folder {model}; give a local diffusers folder or a hub id like org/name")
    try:
        pipe = DiffusionPipeline.from_pretrained(str(model), dtype=dtype)
    except Exception as e:  # diffusers/hub raise many types; the user needs the one line
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LeakstyleError(f"cannot load model {model}: {first_line}") from None
    if not hasattr(pipe, "unet") or not hasattr(pipe, "scheduler"):
        raise LeakstyleError(f"{model} has no UNet and scheduler; leakstyle needs a UNet diffusion pipeline")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def is_text_to_image(pipe) -> bool:
    return getattr(pipe, "text_encoder", None) is not None


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """Pixels [B, 3, H, W] in [-1, 1] -> PIL images."""
    arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


@torch.no_grad()
def run_pixel_model(pipe, latents: torch.Tensor, num_inference_steps: int, generator=None, progress: bool = False) -> list[Image.Image]:
    """The sampling loop of an unconditional pixel-space model, started from `latents` (pipeline units)."""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    x = latents * scheduler.init_noise_sigma
    for t in tqdm(scheduler.timesteps, desc="denoise", disable=not progress, leave=False):
        model_output = pipe.unet(scheduler.scale_model_input(x, t), t).sample
        x = scheduler.step(model_output, t, x, generator=generator).prev_sample
    return to_pil(x)


def noise_name(pipe, baseline: bool = False) -> str:
    """What x_T's noise was drawn from, as recorded in PNGs: "style" for a Diffusion-in-Style model (unless it
    is a pure-noise baseline), else "standard" (N(0, I))."""
    return "style" if getattr(pipe, "leakstyle_noise", None) is not None and not baseline else "standard"


@contextlib.contextmanager
def using_scheduler(pipe, name: str | None):
    """pipe.scheduler replaced by the scheduler called `name` (None: kept) inside the block, restored after it."""
    own = pipe.scheduler
    if name is not None:
        pipe.scheduler = make_scheduler(name, own.config)
    try:
        yield
    finally:
        pipe.scheduler = own


def generate(pipe, prompt: str | list[str] | None = None, style: StyleDistribution | None = None, color=None,
             strength: float = 1.0, seed: int = 0, num_images: int = 1, num_inference_steps: int = 25,
             guidance_scale: float = 7.5, negative_prompt: str | None = None, height: int | None = None,
             width: int | None = None, scheduler: str | None = None, progress: bool = False,
             noise: StyleDistribution | None | str = "auto") -> list[Image.Image]:
    """Generate `num_images` images, image i from seed `seed + i`, starting from the leak of `style`/`color`.

    `prompt` may be a list: one image per prompt (then num_images is its length), image i from prompt i.

    `color` is '#rrggbb' or per-channel model units [C]; `scheduler` a name from schedulers.SCHEDULERS
    (the pipeline's own scheduler if None). With neither style nor colour this is plain pure-noise sampling.

    `noise` is the distribution of the noise the model was trained with: "auto" takes a fine-tuned folder's
    (`pipe.leakstyle_noise`, set by load_pipeline), None means N(0, I). A Diffusion-in-Style model starts from
    x_T = eps_style; `style`/`color` then add their leak: x_T = sqrt(abar_T) x_tilde + sqrt(1 - abar_T) eps_style.
    `scheduler` applies to this call only: `pipe.scheduler` is the same object afterwards.
    """
    with using_scheduler(pipe, scheduler):
        prompts = list(prompt) if isinstance(prompt, (list, tuple)) else None
        if prompts is not None:
            num_images = len(prompts)
        if isinstance(color, str):
            color = color_to_model_units(pipe, color)
        device, dtype = pipe.unet.device, pipe.unet.dtype
        if isinstance(noise, str):
            noise = getattr(pipe, "leakstyle_noise", None)
        start = initial_latents if noise is None else functools.partial(style_initial_latents, noise=noise)
        latents = torch.cat([
            start(pipe, style=style, batch_size=1, height=height, width=width, num_inference_steps=num_inference_steps,
                  generator=torch.Generator(device).manual_seed(seed + i), color=color, strength=strength, device=device,
                  dtype=dtype)
            for i in range(num_images)])
        # Independent generators for the sampler's own noise (ancestral schedulers), the same with and without a style.
        generators = [torch.Generator(device).manual_seed(seed + i + 1_000_003) for i in range(num_images)]
        if not is_text_to_image(pipe):
            return run_pixel_model(pipe, latents, num_inference_steps, generators, progress)
        if prompt is None:
            raise LeakstyleError("this model is text-to-image: give a prompt")
        pipe.set_progress_bar_config(disable=not progress, leave=False)
        height, width = image_size(pipe, height, width)
        return pipe(prompt=prompts or [prompt] * num_images, negative_prompt=[negative_prompt] * num_images if negative_prompt else None,
                    num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, latents=latents,
                    height=height, width=width, generator=generators).images
