"""Imagen-like cascades (DeepFloyd IF): stage I started from a signal leak.

IFPipeline takes no `latents=`: it draws its own noise. So leakstyle runs stage I's loop itself, as IFPipeline
does (text embeddings, classifier-free guidance on the noise half of a learned-variance output, the scheduler's
step), from x_T = sqrt(abar_T) x_tilde + sqrt(1 - abar_T) eps in pixels. The later stages upscale the 64 px result
and are not touched.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


def is_cascade(pipe) -> bool:
    """A text-conditioned pipeline whose __call__ takes no `latents=` (IFPipeline and its kind)."""
    import inspect

    return (getattr(pipe, "text_encoder", None) is not None
            and "latents" not in inspect.signature(pipe.__call__).parameters)


@torch.no_grad()
def run_stage_one(pipe, latents: torch.Tensor, prompts: list[str], negative_prompt: str | None = None,
                  num_inference_steps: int = 100, guidance_scale: float = 7.0, generator=None,
                  progress: bool = False) -> list:
    """IF's stage I from `latents` [B, 3, H, W] (pipeline units: times init_noise_sigma is x_T); PIL images."""
    device = latents.device
    guided = guidance_scale > 1.0
    embeds, negative_embeds = pipe.encode_prompt(prompts, guided, num_images_per_prompt=1, device=device,
                                                 negative_prompt=[negative_prompt or ""] * len(prompts),
                                                 clean_caption=False)
    if guided:
        embeds = torch.cat([negative_embeds, embeds])
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_inference_steps, device=device)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    step_kwargs = pipe.prepare_extra_step_kwargs(generator, 0.0)
    x = latents * scheduler.init_noise_sigma
    for t in tqdm(scheduler.timesteps, desc="stage I", disable=not progress, leave=False):
        model_input = scheduler.scale_model_input(torch.cat([x] * 2) if guided else x, t)
        output = pipe.unet(model_input, t, encoder_hidden_states=embeds.to(model_input.dtype), return_dict=False)[0]
        C = model_input.shape[1]
        if guided:
            uncond, cond = output.chunk(2)
            eps_uncond, eps_cond, variance = uncond[:, :C], cond[:, :C], cond[:, C:]
            output = torch.cat([eps_uncond + guidance_scale * (eps_cond - eps_uncond), variance], dim=1)
        if scheduler.config.variance_type not in ("learned", "learned_range"):
            output = output[:, :C]
        x = scheduler.step(output, t, x, **step_kwargs, return_dict=False)[0]
    image = (x / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    if getattr(pipe, "safety_checker", None) is not None:
        image, _, _ = pipe.run_safety_checker(image, device, embeds.dtype)
    images = pipe.numpy_to_pil(image)
    if getattr(pipe, "watermarker", None) is not None:
        images = pipe.watermarker.apply_watermark(images, pipe.unet.config.sample_size)
    return images
