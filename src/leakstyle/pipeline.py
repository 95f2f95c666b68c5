"""Loading pipelines and generating images that start from a signal leak.

Pipelines that take `latents=` (Stable Diffusion 1.x/2.x, SDXL, PixArt, Hunyuan-DiT, the video pipelines) are
called as they are (see pipecall). Pixel-space models (UNet2DModel + scheduler) and DeepFloyd IF's stage I take no
`latents=`, so leakstyle runs their loop (run_pixel_model, cascade.run_stage_one).
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
import warnings
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .cascade import is_cascade, run_stage_one
from .denoiser import denoiser_of, num_frames_of
from .distribution import StyleDistribution
from .color import background_target, check_color_mode, color_in_model_units, steered_background
from .encode import parse_color
from .errors import LeakstyleError
from .finetuned import finetuned_folder_record, load_finetuned, style_initial_latents
from .leak import check_leak_inputs, check_strength, image_size, initial_latents, latent_shape
from .loading import EMBEDDED_MODEL, load_diffusers, read_model_index, read_scheduler  # noqa: F401  (EMBEDDED_MODEL: this module's API)
from .pipecall import call_pipeline, check_conditioning, default_guidance, takes_latents
from .schedule import ZERO_SNR_FINETUNED_EXPLANATION, ZeroTerminalSNRWarning, leak_at_first_step, no_leak_explanation
from .schedulers import SCHEDULERS, SPACINGS, choose_scheduler
from .seeds import resolve_seed, sampler_seed
from .video import check_frames

NO_LEAK_ACTIONS = ("warn", "raise")


def load_pipeline(model: str | os.PathLike | None = None, device: str | None = None, dtype: torch.dtype | None = None):
    """A diffusers pipeline from a local folder or a hub id; None loads the embedded miniature model.

    On CUDA the default dtype is float16, on CPU float32. Raises LeakstyleError with one line when the device
    cannot be used here, the folder is missing or not a diffusers pipeline, or the hub cannot be reached.
    A `leakstyle finetune` output folder loads as its fine-tuned model (a full pipeline, or the base model with
    the LoRA weights), with `pipe.leakstyle_noise` set to the style distribution x_T is drawn from (see generate).
    """
    record = finetuned_folder_record(model)
    if record is not None:
        return load_finetuned(model, record, device=device, dtype=dtype)
    return load_diffusers(model, device=device, dtype=dtype)


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
def swapped_scheduler(pipe, scheduler):
    """pipe.scheduler is `scheduler` inside the block and the pipeline's own again after it."""
    own = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        yield
    finally:
        pipe.scheduler = own


def check_number(name: str, value, at_least: int | None = None) -> None:
    """A whole number (at least `at_least`) or, with at_least None, any finite real number."""
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if at_least is not None:
        if not whole or value < at_least:
            raise LeakstyleError(f"{name} must be a whole number of at least {at_least}, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise LeakstyleError(f"{name} must be a finite number, got {value!r}")


def check_generate_options(*, seed: int | None = 0, num_images: int = 1, num_inference_steps: int = 25,
                           guidance_scale: float | None = None, strength: float = 1.0, batch_size: int | None = None,
                           height: int | None = None, width: int | None = None, color=None,
                           scheduler: str | None = None, timestep_spacing: str | None = None,
                           on_no_leak: str = "warn") -> int:
    """The checks of generate that need no model, so a caller can make them before loading one.

    Returns the first seed: `seed`, or a random one for None or -1 (see seeds.resolve_seed)."""
    check_number("the number of images", num_images, at_least=1)
    check_number("the number of steps", num_inference_steps, at_least=1)
    if batch_size is not None:
        check_number("the batch size", batch_size, at_least=1)
    if guidance_scale is not None:
        check_number("the guidance scale", guidance_scale)
    check_strength(strength)
    for name, side in (("height", height), ("width", width)):
        if side is not None:
            check_number(name, side, at_least=1)
    if isinstance(color, str):
        parse_color(color)
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise LeakstyleError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if timestep_spacing is not None and timestep_spacing not in SPACINGS:
        raise LeakstyleError(f"unknown timestep spacing {timestep_spacing!r}; choose one of {', '.join(SPACINGS)}")
    if on_no_leak not in NO_LEAK_ACTIONS:
        raise LeakstyleError(f"on_no_leak must be one of {', '.join(NO_LEAK_ACTIONS)}, got {on_no_leak!r}")
    return resolve_seed(seed, num_images)


def check_before_loading(model: str | os.PathLike | None, prompt: str | list[str] | None, num_inference_steps: int,
                         scheduler: str | None = None, timestep_spacing: str | None = None) -> None:
    """What generate would refuse that the configs of a local model (or fine-tune) folder tell before it is loaded:
    no prompt for a text-to-image model, a step count its scheduler cannot take. Hub models are checked by
    generate once loaded."""
    record = finetuned_folder_record(model)
    folder = record.get("base_model") if record and record.get("method") == "lora" else model
    index = read_model_index(folder)
    if index is None:
        return
    text_encoder = index.get("text_encoder")
    if prompt is None and isinstance(text_encoder, list) and text_encoder and text_encoder[-1] is not None:
        raise LeakstyleError("this model is text-to-image: give a prompt")
    own = read_scheduler(folder)
    if own is not None:
        leak_at_first_step(choose_scheduler(own, scheduler, timestep_spacing), num_inference_steps, warn=False)


def sample_batch(pipe, start, seeds: list[int], prompts: list[str] | None, style, color, strength: float,
                 negative_prompt: str | None, num_inference_steps: int, guidance_scale: float, height: int, width: int,
                 progress: bool, num_frames: int | None = None, image: Image.Image | None = None,
                 color_mode: str = "calibrated") -> list:
    """One image (or video of `num_frames` frames) per seed through pipe (checked inputs): x_T from `start`
    (initial_latents or style_initial_latents) with a generator seeded by the image's seed, the sampler's own noise
    from sampler_seed(seed). `image`: the image Stable Video Diffusion animates. A colour in calibrated mode also
    steers the model's predicted background to it at every step (color.steered_background)."""
    device, dtype = denoiser_of(pipe).device, denoiser_of(pipe).dtype
    latents = torch.cat([start(pipe, style=style, batch_size=1, height=height, width=width,
                               num_inference_steps=num_inference_steps, generator=torch.Generator(device).manual_seed(s),
                               color=color, strength=strength, device=device, dtype=dtype, color_mode=color_mode)
                         for s in seeds])
    # The sampler's own noise (ancestral schedulers) from generators of its own, the same with and without a style.
    generators = [torch.Generator(device).manual_seed(sampler_seed(s)) for s in seeds]
    steering = (steered_background(pipe, background_target(color, strength, style))
                if color is not None and color_mode == "calibrated" else contextlib.nullcontext())
    with steering:
        return run_sampler(pipe, latents, prompts, negative_prompt, num_inference_steps, guidance_scale, height, width,
                           generators, progress, num_frames, image)


def run_sampler(pipe, latents, prompts, negative_prompt, num_inference_steps, guidance_scale, height, width, generators,
                progress, num_frames, image) -> list:
    """The pipeline (or leakstyle's loop, for models that take no latents=) from `latents`."""
    if is_cascade(pipe):  # DeepFloyd IF: no latents=, leakstyle runs its stage I
        return run_stage_one(pipe, latents, prompts, negative_prompt, num_inference_steps, guidance_scale, generators,
                             progress)
    if not is_text_to_image(pipe) and not takes_latents(pipe):
        return run_pixel_model(pipe, latents, num_inference_steps, generators, progress)
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    return call_pipeline(pipe, latents, prompts, negative_prompt, num_inference_steps, guidance_scale, height, width,
                         generators, num_frames=num_frames, image=image)


def iter_generate(pipe, prompt: str | list[str] | None = None, style: StyleDistribution | None = None, color=None,
                  strength: float = 1.0, seed: int | None = 0, num_images: int = 1, num_inference_steps: int = 25,
                  guidance_scale: float | None = None, negative_prompt: str | None = None, height: int | None = None,
                  width: int | None = None, scheduler: str | None = None, timestep_spacing: str | None = None,
                  batch_size: int | None = 4, progress: bool = False, noise: StyleDistribution | None | str = "auto",
                  on_no_leak: str = "warn", num_frames: int | None = None, frames: str = "shared",
                  image: Image.Image | None = None, color_mode: str = "calibrated") -> Iterator[tuple[int, int, Image.Image]]:
    """generate, one batch of `batch_size` images at a time: yields (index, seed, image) as each batch finishes.
    For video pipelines `image` is a video: a list of frames (each with its seed in `info`).

    Every input is checked when this is called, before any sampling; the images come as the iterator is read.
    Image i comes from seed + i alone, so it is the same whatever the batch size. See generate for the rest.
    """
    prompts = list(prompt) if isinstance(prompt, (list, tuple)) else None
    if prompts is not None:
        num_images = len(prompts)
    seed = check_generate_options(seed=seed, num_images=num_images, num_inference_steps=num_inference_steps,
                                  guidance_scale=guidance_scale, strength=strength, batch_size=batch_size,
                                  height=height, width=width, color=color, scheduler=scheduler,
                                  timestep_spacing=timestep_spacing, on_no_leak=on_no_leak)
    if is_text_to_image(pipe) and (prompt is None or (prompts is not None and not prompts)):
        raise LeakstyleError("this model is text-to-image: give a prompt")
    check_frames(frames)
    check_conditioning(pipe, prompt, image)
    guidance_scale = default_guidance(pipe) if guidance_scale is None else guidance_scale
    num_frames = num_frames_of(pipe, num_frames)
    run_scheduler = choose_scheduler(pipe.scheduler, scheduler, timestep_spacing)
    height, width = image_size(pipe, height, width)
    C = latent_shape(pipe, height, width)[0]
    leak = leak_at_first_step(run_scheduler, num_inference_steps, warn=False)  # refuses steps it cannot take
    if isinstance(noise, str):
        noise = getattr(pipe, "leakstyle_noise", None)
    if noise is not None and num_frames is not None:
        raise LeakstyleError("Diffusion in Style noise is for image models; this is a video pipeline")
    color = color_in_model_units(pipe, color, check_color_mode(color_mode))
    check_leak_inputs(style, color, strength, C)
    if (style is not None or color is not None) and not leak.has_leak:
        explanation = no_leak_explanation(run_scheduler, leak) if noise is None else ZERO_SNR_FINETUNED_EXPLANATION
        if on_no_leak == "raise":
            raise LeakstyleError(explanation)
        warnings.warn(explanation, ZeroTerminalSNRWarning, stacklevel=2)
        style = color = None  # what the leak would give: the pure-noise (or style-noise) start
    start = (functools.partial(initial_latents, num_frames=num_frames, frames=frames) if noise is None
             else functools.partial(style_initial_latents, noise=noise))
    label = "leak images" if style is not None or color is not None else (
        "pure-noise images" if noise is None else "style-noise images")
    batch_size = batch_size or num_images
    prompts = prompts or ([prompt] * num_images if prompt is not None else None)

    def batches():
        with tqdm(total=num_images, desc=label, unit="image", disable=not progress) as bar:
            for first in range(0, num_images, batch_size):
                indices = range(first, min(first + batch_size, num_images))
                seeds = [seed + i for i in indices]
                with swapped_scheduler(pipe, run_scheduler):
                    images = sample_batch(pipe, start, seeds, prompts and prompts[first:first + len(seeds)],
                                          style=style, color=color, strength=strength, negative_prompt=negative_prompt,
                                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                          height=height, width=width, progress=progress, num_frames=num_frames,
                                          image=image, color_mode=color_mode)
                bar.update(len(seeds))
                for i, s, result in zip(indices, seeds, images):
                    for frame in (result if num_frames is not None else [result]):
                        frame.info["seed"] = s
                    yield i, s, result

    return batches()


def generate(pipe, prompt: str | list[str] | None = None, style: StyleDistribution | None = None, color=None,
             strength: float = 1.0, seed: int | None = 0, num_images: int = 1, num_inference_steps: int = 25,
             guidance_scale: float | None = None, negative_prompt: str | None = None, height: int | None = None,
             width: int | None = None, scheduler: str | None = None, timestep_spacing: str | None = None,
             batch_size: int | None = None, progress: bool = False, noise: StyleDistribution | None | str = "auto",
             on_no_leak: str = "warn", num_frames: int | None = None, frames: str = "shared",
             image: Image.Image | None = None, color_mode: str = "calibrated") -> list:
    """Generate `num_images` images, image i from seed `seed + i`, starting from the leak of `style`/`color`.

    `seed` None or -1 draws a random first seed; each image's seed is in `image.info["seed"]`.
    `guidance_scale` None is the pipeline's own default (pipecall.default_guidance: 7.5 for SD 1.x/2.x, 5 for
    SDXL, 4.5 for PixArt; for Stable Video Diffusion, whose guidance ramps over the frames, its top, 3).
    `prompt` may be a list: one image per prompt (then num_images is its length), image i from prompt i.

    `color` is '#rrggbb' or per-channel model units [C]; `strength` in [0, 1] blends the style's low frequencies
    toward it. `color_mode` "calibrated" cancels the noise's own DC, so that the colour alone sets x_T's DC
    (leakstyle.color); "raw" leaves it (the paper's setting). `scheduler` is a name from schedulers.SCHEDULERS (the pipeline's own scheduler if None) and
    `timestep_spacing` "leading", "trailing" or "linspace" (None: the scheduler config's); both apply to this call
    only: `pipe.scheduler` is the same object afterwards. With neither style nor colour this is plain pure-noise
    sampling. `batch_size` images go through the pipeline at a time (None: all at once); see iter_generate.

    `noise` is the distribution of the noise the model was trained with: "auto" takes a fine-tuned folder's
    (`pipe.leakstyle_noise`, set by load_pipeline), None means N(0, I). A Diffusion-in-Style model starts from
    x_T = eps_style; `style`/`color` then add their leak: x_T = sqrt(abar_T) x_tilde + sqrt(1 - abar_T) eps_style.

    A scheduler with zero terminal SNR leaks nothing: with a style or colour that is a ZeroTerminalSNRWarning and
    the pure-noise result (`on_no_leak="warn"`), or a LeakstyleError (`on_no_leak="raise"`). Every input that
    cannot work (steps the scheduler cannot take, sizes, seeds, non-finite numbers) is a LeakstyleError raised
    before any sampling.

    Video pipelines (AnimateDiff, text-to-video, Stable Video Diffusion) make `num_images` videos of `num_frames`
    frames and return a list of videos, each a list of frames; `frames` is "shared" (one x_tilde per video) or
    "independent" (see leak.initial_latents). Stable Video Diffusion animates `image` and takes no prompt.
    DeepFloyd IF (no `latents=`) runs stage I from the leak (see cascade.run_stage_one) and returns 64 px images.
    """
    return [image for _, _, image in iter_generate(
        pipe, prompt, style=style, color=color, strength=strength, seed=seed, num_images=num_images,
        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, negative_prompt=negative_prompt,
        height=height, width=width, scheduler=scheduler, timestep_spacing=timestep_spacing, batch_size=batch_size,
        progress=progress, noise=noise, on_no_leak=on_no_leak, num_frames=num_frames, frames=frames, image=image,
        color_mode=color_mode)]
