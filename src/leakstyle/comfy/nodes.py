"""leakstyle's ComfyUI nodes (V1 node API). STYLE is a leakstyle.StyleDistribution (see units.py for its units).

KSampler + LeakstyleLeakLatent: the first model input is eps + sqrt(abar_0) x~ at sigma_max (ComfyUI keeps
eps at unit scale there), else sqrt(1 - abar_0) eps + sqrt(abar_0) x~. SamplerCustomAdvanced +
LeakstyleLeakNoise (same SIGMAS as the sampler) + the same latent: sqrt(abar_0) x~ + sqrt(1 - abar_0) eps.
"""

from __future__ import annotations

import math

import torch

from ..distribution import StyleDistribution
from ..errors import ImageError
from . import store
from .embedded import embedded_model
from .fitting import fit_folder, fit_images, raw_color, vae_factor
from .sampling import LeakNoise, abar, counts_as_sigma_max, leak_verdict, model_sampling, noise_factor, require_leak
from .units import RAW_VAE_UNITS, color_in_style_units, to_model_units

CATEGORY = "leakstyle"
LATENT_FACTOR = 8  # ComfyUI's EmptyLatentImage: latents of 1/8 the image size
FLAT_SIZE = 8  # the size a colour-only style is made at (its DC rescales exactly to any size)
SEED = ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True})
SIZE = {"default": 512, "min": 16, "max": 16384, "step": 8}


class LeakstyleLoadStyle:
    """A style from models/leakstyle (leakstyle file or official folder), or from any path.

    Both inputs are optional to ComfyUI, so that `path` alone works while models/leakstyle is still empty."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {},
                "optional": {"style": (store.style_names(),),
                             "path": ("STRING", {"default": "", "tooltip": "a leakstyle file or an official folder; wins when not empty"})}}

    RETURN_TYPES = ("STYLE",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, style=None, path=""):
        return (store.load_style(style, path),)


class LeakstyleFitStyle:
    """Fit a style to images (one IMAGE batch, or the images in a folder), encoded with the VAE."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("VAE",), "kind": (["dct", "pixel"],),
                             "components": ("INT", {"default": 3, "min": 1, "max": 4096})},
                "optional": {"images": ("IMAGE",), "folder": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("STYLE",)
    FUNCTION = "fit"
    CATEGORY = CATEGORY

    def fit(self, vae, kind="dct", components=3, images=None, folder=""):
        if images is not None:
            return (fit_images(images, vae, kind, components),)
        if folder and folder.strip():
            return (fit_folder(folder.strip(), vae, kind, components),)
        raise ImageError("connect images or give a folder of images to fit the style to")


class LeakstyleSaveStyle:
    """Save a style under models/leakstyle, where LeakstyleLoadStyle finds it (never overwrites)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"style": ("STYLE",), "filename_prefix": ("STRING", {"default": "leakstyle/style"})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY

    def save(self, style, filename_prefix="leakstyle/style"):
        path = store.save_style(style, filename_prefix)
        return {"ui": {"text": [str(path)]}}


class LeakstyleColor:
    """Set the mean colour of a style (or of a flat start) to an RGB colour, encoded with the VAE.

    The colour is the paper's: a flat image of it through the VAE. strength blends the style's low
    frequencies toward it (1: exactly that colour)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("VAE",), "color": ("STRING", {"default": "#1e90ff"}),
                             "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})},
                "optional": {"style": ("STYLE",)}}

    RETURN_TYPES = ("STYLE",)
    FUNCTION = "color"
    CATEGORY = CATEGORY

    def color(self, vae, color="#1e90ff", strength=1.0, style=None):
        raw = raw_color(vae, color)
        if style is None:
            base = StyleDistribution.flat(torch.zeros(len(raw)), FLAT_SIZE, FLAT_SIZE)
            base.metadata = {**RAW_VAE_UNITS, "image_count": ""}
            return (base.with_color(raw.float(), strength),)
        return (style.with_color(color_in_style_units(style, raw).float(), strength),)


class LeakstyleLeakLatent:
    """A LATENT holding x~ drawn from the style, for KSampler (or SamplerCustomAdvanced with LeakstyleLeakNoise)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "style": ("STYLE",), "width": ("INT", SIZE), "height": ("INT", SIZE),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}), "seed": SEED},
                "optional": {"vae": ("VAE", {"tooltip": "latent size from this VAE's factor (else 1/8, as EmptyLatentImage)"})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "latent"
    CATEGORY = CATEGORY

    def latent(self, model, style, width=512, height=512, batch_size=1, seed=0, vae=None):
        require_leak(model)
        style = to_model_units(style, model)
        f = vae_factor(vae) if vae is not None else LATENT_FACTOR
        x_tilde = style.sample(batch_size, height // f, width // f, generator=torch.Generator().manual_seed(seed))
        return ({"samples": model.get_model_object("latent_format").process_out(x_tilde)},)


class LeakstyleLeakNoise:
    """A NOISE for SamplerCustomAdvanced that makes the first input sqrt(abar_0) x~ + sqrt(1 - abar_0) eps.

    Give it the SIGMAS the sampler gets: it cannot check that they are the same."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "sigmas": ("SIGMAS",), "noise_seed": SEED}}

    RETURN_TYPES = ("NOISE",)
    FUNCTION = "noise"
    CATEGORY = CATEGORY

    def noise(self, model, sigmas, noise_seed=0):
        require_leak(model)
        return (LeakNoise(noise_seed, noise_factor(model, sigmas)),)


class LeakstyleProbe:
    """The model's signal leak at the first step of a run, as text."""

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {"required": {"model": ("MODEL",), "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                             "scheduler": (comfy.samplers.KSampler.SCHEDULERS,), "width": ("INT", SIZE),
                             "height": ("INT", SIZE)},
                "optional": {"style": ("STYLE",)}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "probe"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY

    def probe(self, model, steps=20, scheduler="normal", width=512, height=512, style=None):
        text = probe_text(model, steps, scheduler, width, height, style)
        return {"ui": {"text": [text]}, "result": (text,)}


def probe_text(model, steps: int, scheduler: str, width: int, height: int, style=None) -> str:
    """sqrt(abar_0) of the first sigma for these steps and scheduler, the first input of each sampler path,
    and with a style its leaked mean colour and DC signal-to-noise ratio abar_0 * Var(DC)."""
    import comfy.samplers

    verdict = leak_verdict(model)
    if verdict is not None:
        return f"leak: none ({verdict})"
    sigmas = comfy.samplers.calculate_sigmas(model_sampling(model), scheduler, steps)
    sigma_0 = float(sigmas[0])
    a0 = abar(sigma_0)
    r, n = math.sqrt(a0), math.sqrt(1 - a0)
    ksampler_eps = 1.0 if counts_as_sigma_max(model, sigma_0) else n
    lines = [f"leak: sqrt(abar_0) = {r:.6f} at sigma_0 = {sigma_0:.4f} ({scheduler}, {steps} steps)",
             f"KSampler + LeakLatent: first input = {ksampler_eps:.6f} eps + {r:.6f} x~"
             + (" (sigma_0 counts as sigma_max: ComfyUI keeps eps at unit scale)" if ksampler_eps == 1.0 else ""),
             f"SamplerCustomAdvanced + LeakNoise: first input = {n:.6f} eps + {r:.6f} x~"]
    if style is not None:
        h, w = height // LATENT_FACTOR, width // LATENT_FACTOR
        s = to_model_units(style, model).at_size(h, w)
        means = s.channel_means().tolist()
        lines.append("style channel means " + ", ".join(f"{m:+.3f}" for m in means)
                     + " leak as " + ", ".join(f"{r * m:+.4f}" for m in means))
        if s.kind == "dct" and s.lf_indices[0].tolist() == [0, 0]:
            snr = [a0 * float(s.lf_cov[c, c]) for c in range(s.channels)]
            lines.append(f"DC signal-to-noise at {h}x{w} latents: " + ", ".join(f"{v:.3f}" for v in snr))
    return "\n".join(lines)


class LeakstyleEmbeddedModel:
    """The embedded miniature model (64 px images, latents of 1/4 the image size) as MODEL, CLIP and VAE."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self):
        return embedded_model()


NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in (
    LeakstyleLoadStyle, LeakstyleFitStyle, LeakstyleSaveStyle, LeakstyleColor, LeakstyleLeakLatent,
    LeakstyleLeakNoise, LeakstyleProbe, LeakstyleEmbeddedModel)}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LeakstyleLoadStyle": "Load Style (leakstyle)", "LeakstyleFitStyle": "Fit Style (leakstyle)",
    "LeakstyleSaveStyle": "Save Style (leakstyle)", "LeakstyleColor": "Style Colour (leakstyle)",
    "LeakstyleLeakLatent": "Signal-Leak Latent (leakstyle)", "LeakstyleLeakNoise": "Signal-Leak Noise (leakstyle)",
    "LeakstyleProbe": "Probe Signal Leak (leakstyle)", "LeakstyleEmbeddedModel": "Embedded Mini Model (leakstyle)"}
