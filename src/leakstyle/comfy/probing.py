"""LeakstyleProbe's text: the leak of the first sigma, each sampler path's first input, and leakstyle.probe's verdict.

leakstyle.probe's picture, with abar_0 = 1 / (1 + sigma_0^2) read from ComfyUI's sigmas instead of a diffusers
scheduler: SNR_DC = abar_0 h w sigma_m^2 / (1 - abar_0), sigma_m [C] the spread over images of a channel's mean in
the model's units, from a dct style or from the bundled reference images encoded with the VAE.
"""

from __future__ import annotations

import math

import torch

from ..images import list_images
from ..probe import MAX_REFERENCE_SIDE, REFERENCE_IMAGES, REFERENCE_SOURCE, assess, sigma_m_of_style, snr_element
from ..sources import Batches, ImageFiles
from .fitting import vae_factor
from .sampling import abar, counts_as_sigma_max, leak_verdict, model_sampling
from .units import process_in, to_model_units

LATENT_FACTOR = 8  # ComfyUI's EmptyLatentImage: latents of 1/8 the image size


@torch.no_grad()
def sigma_m_of_references(vae, model, height: int, width: int) -> torch.Tensor:
    """sigma_m [C] of the bundled reference images, encoded with `vae` at the probe's longer side (at most 256 px, a
    multiple of 8 times the VAE's factor) and put in the model's units."""
    step = 8 * vae_factor(vae)
    size = max(step, min(MAX_REFERENCE_SIDE, max(height, width)) // step * step)
    means = []
    for pixels in Batches(ImageFiles(list_images([REFERENCE_IMAGES])), size, size).pixels():
        z = vae.encode(((pixels + 1) / 2).movedim(1, -1))
        means.append(process_in(model, z).double().mean((2, 3)).cpu())
    return torch.cat(means).std(0)


def sigma_m_and_source(model, style, vae, height: int, width: int) -> tuple[torch.Tensor | None, str]:
    """sigma_m [C] and where it comes from: a dct style's DC covariance, else the reference images through the VAE;
    (None, why) when neither can give it."""
    if style is not None and style.kind == "dct" and [0, 0] in style.lf_indices.tolist():
        return sigma_m_of_style(to_model_units(style, model)), "the style's DC covariance"
    if vae is not None:
        return sigma_m_of_references(vae, model, height, width), REFERENCE_SOURCE
    if style is not None:
        return None, ("not known: this style has no DC covariance (fit it with kind dct), and no VAE is connected to "
                      "encode the reference images")
    return None, "not known: connect a dct style fitted for this model, or a VAE (to encode the reference images)"


def probe_text(model, steps: int, scheduler: str, width: int, height: int, style=None, vae=None) -> str:
    """The probe as lines of text; "leak: none (why)" for a model without a usable leak."""
    import comfy.samplers

    why = leak_verdict(model)
    if why is not None:
        return f"leak: none ({why})\nverdict:    none"
    sigmas = comfy.samplers.calculate_sigmas(model_sampling(model), scheduler, steps)
    sigma_0 = float(sigmas[0])
    a0 = abar(sigma_0)
    r, n = math.sqrt(a0), math.sqrt(1 - a0)
    ksampler_eps = 1.0 if counts_as_sigma_max(model, sigma_0) else n
    f = vae_factor(vae) if vae is not None else LATENT_FACTOR
    h, w = height // f, width // f
    lines = [f"leak: sqrt(abar_0) = {r:.6f} at sigma_0 = {sigma_0:.4f} ({scheduler}, {steps} steps)",
             f"KSampler + LeakLatent: first input = {ksampler_eps:.6f} eps + {r:.6f} x~"
             + (" (sigma_0 counts as sigma_max: ComfyUI keeps eps at unit scale)" if ksampler_eps == 1.0 else ""),
             f"SamplerCustomAdvanced + LeakNoise: first input = {n:.6f} eps + {r:.6f} x~",
             f"latents:    {h} x {w} (1/{f} of {width} x {height})"]
    if style is not None:
        means = to_model_units(style, model).channel_means().tolist()
        lines.append("style channel means " + ", ".join(f"{m:+.3f}" for m in means)
                     + " leak as " + ", ".join(f"{r * m:+.4f}" for m in means))
    sigma_m, source = sigma_m_and_source(model, style, vae, height, width)
    if sigma_m is None:
        lines += [f"sigma_m:    {source}", f"SNR:        per element {snr_element(a0):.3g}, DC not known",
                  "verdict:    not known without sigma_m"]
        return "\n".join(lines)
    a = assess(a0, h, w, sigma_m)
    lines += [f"sigma_m:    [{', '.join(f'{s:.3f}' for s in sigma_m.tolist())}] from {source}",
              f"SNR:        per element {snr_element(a0):.3g}, DC {a.snr_dc:.3g} (per channel "
              + ", ".join(f"{s:.3g}" for s in a.snr_dc_per_channel) + ")",
              f"predicted:  pure-noise / data std of channel means = {a.predicted_std_ratio:.2f}",
              f"verdict:    {a.verdict}: {a.explanation}"]
    return "\n".join(lines)
