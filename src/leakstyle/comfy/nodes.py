"""leakstyle's ComfyUI nodes (V1 node API). STYLE is a leakstyle.StyleDistribution (see units.py for its units).

KSampler + LeakstyleLeakLatent: the first model input is eps + sqrt(abar_0) x~ at sigma_max (ComfyUI keeps
eps at unit scale there), else sqrt(1 - abar_0) eps + sqrt(abar_0) x~. SamplerCustomAdvanced +
LeakstyleLeakNoise (same SIGMAS as the sampler) + the same latent: sqrt(abar_0) x~ + sqrt(1 - abar_0) eps.
Calibrated colour (the default of LeakstyleColor): see calibration.py.
"""

from __future__ import annotations

import torch

from ..color import COLOR_MODES, check_color_mode
from ..distribution import StyleDistribution
from ..errors import ImageError
from . import store
from .calibration import calibrated_model, calibrated_share, latent_dc_correction, tagged
from .embedded import embedded_model
from .fitting import decoding_color, fit_folder, fit_images, raw_color, vae_factor
from .probing import LATENT_FACTOR, probe_text
from .sampling import LeakNoise, noise_factor, require_leak
from .units import RAW_VAE_UNITS, color_in_style_units, to_model_units

CATEGORY = "leakstyle"
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
    """Fit a style to images (one IMAGE batch, or the images in a folder), encoded with the VAE, in the model's
    units (process_latent_in): the style `leakstyle fit` makes from the same images with the same VAE."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("VAE",), "model": ("MODEL", {"tooltip": "the model the style is for: its latent units"}),
                             "kind": (["dct", "pixel"],),
                             "components": ("INT", {"default": 3, "min": 1, "max": 4096})},
                "optional": {"images": ("IMAGE",), "folder": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("STYLE",)
    FUNCTION = "fit"
    CATEGORY = CATEGORY

    def fit(self, vae, model, kind="dct", components=3, images=None, folder=""):
        if images is not None:
            return (fit_images(images, vae, model, kind, components),)
        if folder and folder.strip():
            return (fit_folder(folder.strip(), vae, model, kind, components),)
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

    mode "raw" is the paper's colour: a flat 64 px image of it through the VAE. mode "calibrated" (the default)
    takes the latent the VAE decodes to the colour (Gauss-Newton from that encoding, as the library does), asks
    the nodes downstream to cancel the noise's own DC (Signal-Leak Noise; Signal-Leak Latent given KSampler's
    seed) and lets Calibrate Colour hold the background at it. Each colour is worked out once per VAE. strength
    blends the style's low frequencies toward it (1: exactly that colour)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("VAE",), "color": ("STRING", {"default": "#1e90ff"}),
                             "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                             "mode": (list(COLOR_MODES), {"default": "calibrated"})},
                "optional": {"style": ("STYLE",), "model": ("MODEL", {"tooltip": "gives the STYLE in this model's units"})}}

    RETURN_TYPES = ("STYLE",)
    FUNCTION = "color"
    CATEGORY = CATEGORY

    def color(self, vae, color="#1e90ff", strength=1.0, mode="calibrated", style=None, model=None):
        check_color_mode(mode)
        raw = decoding_color(vae, color) if mode == "calibrated" else raw_color(vae, color)
        if style is None:
            base = StyleDistribution.flat(torch.zeros(len(raw)), FLAT_SIZE, FLAT_SIZE)
            base.metadata = {**RAW_VAE_UNITS, "image_count": ""}
            colored = base.with_color(raw.float(), strength)
        else:
            colored = style.with_color(color_in_style_units(style, raw).float(), strength)
        if model is not None:
            require_leak(model)
            colored = to_model_units(colored, model)
        return (tagged(colored, color, mode, strength),)


class LeakstyleLeakLatent:
    """A LATENT holding x~ drawn from the style, for KSampler (or SamplerCustomAdvanced with LeakstyleLeakNoise)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "style": ("STYLE",), "width": ("INT", SIZE), "height": ("INT", SIZE),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}), "seed": SEED},
                "optional": {"vae": ("VAE", {"tooltip": "latent size from this VAE's factor (else 1/8, as EmptyLatentImage)"}),
                             "noise_seed": ("INT", {"forceInput": True, "tooltip": (
                                 "KSampler's seed, for a calibrated colour: cancels the DC of the noise KSampler draws "
                                 "(full denoise only; leave unconnected with Signal-Leak Noise, which cancels it itself)")})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "latent"
    CATEGORY = CATEGORY

    def latent(self, model, style, width=512, height=512, batch_size=1, seed=0, vae=None, noise_seed=None):
        require_leak(model)
        share = calibrated_share(style)
        style = to_model_units(style, model)
        f = vae_factor(vae) if vae is not None else LATENT_FACTOR
        x_tilde = style.sample(batch_size, height // f, width // f, generator=torch.Generator().manual_seed(seed))
        if share and noise_seed is not None:
            x_tilde += latent_dc_correction(model, x_tilde, noise_seed, share)
        return ({"samples": model.get_model_object("latent_format").process_out(x_tilde)},)


class LeakstyleLeakNoise:
    """A NOISE for SamplerCustomAdvanced that makes the first input sqrt(abar_0) x~ + sqrt(1 - abar_0) eps.

    Give it the SIGMAS the sampler gets: it cannot check that they are the same. With the style of a calibrated
    colour it cancels that share of the noise's own DC (exactly leakstyle's calibrated start)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "sigmas": ("SIGMAS",), "noise_seed": SEED},
                "optional": {"style": ("STYLE", {"tooltip": "the style of the latent: a calibrated colour cancels the noise's DC"})}}

    RETURN_TYPES = ("NOISE",)
    FUNCTION = "noise"
    CATEGORY = CATEGORY

    def noise(self, model, sigmas, noise_seed=0, style=None):
        require_leak(model)
        return (LeakNoise(noise_seed, noise_factor(model, sigmas), calibrated_share(style)),)


class LeakstyleCalibrateModel:
    """The MODEL with a calibrated colour's closed loop: at every step the x0 prediction is shifted, uniformly per
    channel, so that the mean of its border ring is the colour's latent (leakstyle.color.background_shift)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "style": ("STYLE", {"tooltip": "from Style Colour in calibrated mode"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY

    def patch(self, model, style):
        require_leak(model)
        return (calibrated_model(model, style),)


class LeakstyleProbe:
    """The model's signal leak at the first step of a run, as text: leakstyle.probe's SNR and verdict."""

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {"required": {"model": ("MODEL",), "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                             "scheduler": (comfy.samplers.KSampler.SCHEDULERS,), "width": ("INT", SIZE),
                             "height": ("INT", SIZE)},
                "optional": {"style": ("STYLE",),
                             "vae": ("VAE", {"tooltip": "latent size from its factor; encodes the reference images when no dct style is given"})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "probe"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY

    def probe(self, model, steps=20, scheduler="normal", width=512, height=512, style=None, vae=None):
        text = probe_text(model, steps, scheduler, width, height, style, vae)
        return {"ui": {"text": [text]}, "result": (text,)}


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
    LeakstyleLeakNoise, LeakstyleCalibrateModel, LeakstyleProbe, LeakstyleEmbeddedModel)}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LeakstyleLoadStyle": "Load Style (leakstyle)", "LeakstyleFitStyle": "Fit Style (leakstyle)",
    "LeakstyleSaveStyle": "Save Style (leakstyle)", "LeakstyleColor": "Style Colour (leakstyle)",
    "LeakstyleLeakLatent": "Signal-Leak Latent (leakstyle)", "LeakstyleLeakNoise": "Signal-Leak Noise (leakstyle)",
    "LeakstyleCalibrateModel": "Calibrate Colour (leakstyle)",
    "LeakstyleProbe": "Probe Signal Leak (leakstyle)", "LeakstyleEmbeddedModel": "Embedded Mini Model (leakstyle)"}
