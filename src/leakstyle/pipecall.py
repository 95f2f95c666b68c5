"""How each family's pipeline is called with a leak's `latents=`, and what it gives back.

Text-to-image pipelines (SD, SDXL, PixArt, Hunyuan-DiT) take a prompt and give images. Video pipelines take
`num_frames` and give frames: AnimateDiff and text-to-video a prompt, Stable Video Diffusion an image to animate
(its guidance is the top of its per-frame guidance ramp, `max_guidance_scale`). Pipelines with resolution binning
(PixArt, Hunyuan-DiT) are called with `use_resolution_binning=False`: the leak is drawn at the size asked for, so
the pipeline must denoise at that size, not at the nearest size of its aspect-ratio table.
"""

from __future__ import annotations

import inspect

from .denoiser import is_video
from .errors import LeakstyleError


def parameters(pipe) -> set[str]:
    return set(inspect.signature(pipe.__call__).parameters)


def default_call_size(pipe) -> tuple[int, int] | None:
    """(height, width) when the pipeline's __call__ defaults both to numbers (SVD: 576, 1024), else None."""
    own = inspect.signature(pipe.__call__).parameters
    defaults = [own[n].default if n in own else None for n in ("height", "width")]
    return tuple(defaults) if all(isinstance(d, int) and not isinstance(d, bool) for d in defaults) else None


DEFAULT_GUIDANCE = 7.5  # for pipelines whose __call__ gives no default guidance


def default_guidance(pipe) -> float:
    """The guidance scale the pipeline uses when given none: its __call__'s default for `guidance_scale`, or for
    Stable Video Diffusion `max_guidance_scale` (the top of its per-frame ramp, 3.0); else DEFAULT_GUIDANCE."""
    name = "max_guidance_scale" if animates_an_image(pipe) else "guidance_scale"
    parameter = inspect.signature(pipe.__call__).parameters.get(name)
    default = None if parameter is None else parameter.default
    return float(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else DEFAULT_GUIDANCE


def takes_latents(pipe) -> bool:
    return "latents" in parameters(pipe)


def animates_an_image(pipe) -> bool:
    """Image-to-video pipelines (Stable Video Diffusion): conditioned on an image, not a prompt."""
    return "image" in parameters(pipe) and "prompt" not in parameters(pipe)


def check_conditioning(pipe, prompt, image) -> None:
    """One-line errors, before any sampling, for a prompt or an image the pipeline does not take or lacks."""
    if animates_an_image(pipe):
        if image is None:
            raise LeakstyleError(f"{type(pipe).__name__} animates an image: give image= (a PIL image; --image FILE)")
        if prompt is not None:
            raise LeakstyleError(f"{type(pipe).__name__} takes an image, not a prompt")
    elif image is not None:
        raise LeakstyleError(f"{type(pipe).__name__} takes a prompt, not an image; leave out --image")


def call_pipeline(pipe, latents, prompts: list[str] | None, negative_prompt: str | None, num_inference_steps: int,
                  guidance_scale: float, height: int, width: int, generator, num_frames: int | None = None,
                  image=None) -> list:
    """Run `pipe` from `latents`; a list of PIL images, or for video pipelines a list of videos (lists of frames)."""
    names = parameters(pipe)
    call = dict(num_inference_steps=num_inference_steps, latents=latents, height=height, width=width,
                generator=generator)
    if "use_resolution_binning" in names:
        call["use_resolution_binning"] = False
    batch = latents.shape[0]
    check_conditioning(pipe, prompts, image)
    if animates_an_image(pipe):
        call.update(image=image, num_videos_per_prompt=batch, max_guidance_scale=guidance_scale,
                    min_guidance_scale=min(1.0, guidance_scale))
    else:
        if prompts is None:
            raise LeakstyleError("this model is text-to-image: give a prompt")
        call.update(prompt=prompts, guidance_scale=guidance_scale)
        if negative_prompt:  # else the pipeline's own default (PixArt's is "", not None)
            call["negative_prompt"] = [negative_prompt] * len(prompts)
    if is_video(pipe):
        call.update(num_frames=num_frames, output_type="pil")
        return list(pipe(**call).frames)
    return pipe(**call).images
