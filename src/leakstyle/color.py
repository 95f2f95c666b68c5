"""Calibrated colour control: the image's DC comes from the requested colour alone, not from the seed's noise.

The paper's direct setting ("raw") puts the encoding z* of a flat colour in the DC of x_tilde. The UNet, though,
reads the DC of x_T = a x_tilde + b eps (a = sqrt(abar_T), b = sqrt(1 - abar_T)), and at the first step the noise's
own DC is as large as the leaked one: for SD's schedule at 25 DDIM steps b / a = 11.7, and mean_hw(eps) has standard
deviation 1 / sqrt(hw) per channel, so a 16 x 16 latent gets a random colour offset of 11.7 / 16 = 0.73 latent
units, the size of the whole colour range. Calibrated mode cancels it, per image:

    DC(x_tilde) = (1 - s) DC_style + s (z* - (b / a) (mean_hw(eps) - E[mean_hw(eps)]))

so that x_T's DC is a ((1 - s) DC_style + s z*) + (1 - s) b mean_hw(eps): at strength s = 1 exactly a z*, the
colour the model would have leaked from a clean image of that colour. E[mean_hw(eps)] is 0 for N(0, I) noise and
the style's mean for a Diffusion-in-Style model. Nothing else of x_T changes (the same eps, the same style content),
it costs one mean per image, needs no calibration run, and works for any scheduler and any model with a leak.

That sets what goes in, not what comes out: the model reads the leak through its own prior (greys come out green-cyan
on the embedded model). So calibrated mode also closes the loop on what the model predicts. At every denoising step
the denoiser's output is turned into its prediction x0_hat of the clean latent, and x0_hat gets a uniform shift per
image and channel,

    x0_hat <- x0_hat + (target - ring(x0_hat)),

ring(.) being the mean over the border ring of the latent (`ring_width` latent pixels wide: the background, which
in an image of an object on a background is what "the colour" means) and target the requested colour's latent
(blended with the style's mean at strength s < 1: `background_target`). The shift goes back into the model's own
parametrisation (eps, v or x0), so every scheduler and sampler takes it as the model's prediction: for eps,
eps <- eps - (sqrt(abar_t) / sqrt(1 - abar_t)) delta; for v, v <- v - delta / sqrt(1 - abar_t). Classifier-free
guidance needs nothing special: each half of the batch is shifted to the same ring mean, so their blend is too. It
costs a mean per step and needs no calibration run.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .denoiser import FRAME_MAJOR, denoiser_of, latent_channels, layout
from .encode import color_to_model_units, decoding_to_color
from .errors import LeakstyleError
from .schedule import Leak

COLOR_MODES = ("calibrated", "raw")


def check_color_mode(color_mode: str) -> str:
    """`color_mode` itself, or a LeakstyleError naming the choices."""
    if color_mode not in COLOR_MODES:
        raise LeakstyleError(f"unknown colour mode {color_mode!r}; choose one of {', '.join(COLOR_MODES)}")
    return color_mode


def color_in_model_units(pipe, color, color_mode: str):
    """A '#rrggbb' colour as the per-channel mean [C] a leak sets: in calibrated mode the latent that decodes to it
    (encode.decoding_to_color), in raw mode the paper's encoding of a flat image (encode.color_to_model_units).
    Anything else (model units, None) is returned as it is."""
    if not isinstance(color, str):
        return color
    return decoding_to_color(pipe, color) if check_color_mode(color_mode) == "calibrated" else color_to_model_units(pipe, color)


def noise_dc_correction(eps: torch.Tensor, leak: Leak, share: float = 1.0,
                        noise_mean: torch.Tensor | None = None) -> torch.Tensor:
    """The term added to x_tilde [B, C, 1, 1] that cancels `share` of the noise's DC in x_T = a x_tilde + b eps:
    -share (b / a) (mean_hw(eps) - noise_mean), noise_mean [C] the noise's expected channel means (0 if None).
    Video latents ([B, C, F, h, w] or [B, F, C, h, w]) get one term per frame (the mean over the last two axes)."""
    dc = eps.mean((-2, -1), keepdim=True)
    if noise_mean is not None:
        dc = dc - noise_mean.to(dc.device, dc.dtype).view(1, -1, 1, 1)
    return -share * (leak.sqrt_one_minus_abar_T / leak.sqrt_abar_T) * dc


def check_lightness(lightness) -> None:
    """CIELAB L*: a finite number from 0 (black) to 100 (white)."""
    if isinstance(lightness, bool) or not isinstance(lightness, (int, float)) or not 0.0 <= float(lightness) <= 100.0:
        raise LeakstyleError(f"brightness is CIELAB L* from 0 (black) to 100 (white), got {lightness!r}")


def with_lightness(pipe, lightness: float, style=None, color: str | None = None) -> str:
    """The '#rrggbb' colour of CIELAB lightness L* = `lightness` (0 black .. 100 white) with the hue and chroma
    (a*, b*) of `color`, else of the style's mean colour (its channel means decoded by the VAE), else neutral grey
    (a* = b* = 0). Out-of-gamut results are clipped to sRGB."""
    from skimage.color import lab2rgb

    from . import metrics
    from .encode import model_units_to_rgb, to_hex, vae_of

    check_lightness(lightness)
    if color is not None:
        lab = metrics.color_to_lab(color)
    elif style is not None:
        lab = metrics.color_to_lab(model_units_to_rgb(vae_of(pipe), style.channel_means()))
    else:
        lab = np.zeros(3)
    rgb = lab2rgb(np.array([[[float(lightness), lab[1], lab[2]]]]), channel_axis=-1)[0, 0]
    return to_hex(np.clip(rgb, 0, 1) * 255)


# -- the closed loop ---------------------------------------------------------------------------------
def ring_width(height: int, width: int) -> int:
    """How many latent pixels wide the border ring is: a sixteenth of the shorter side, at least 1 (1 for the
    embedded model's 16 x 16 latents, 4 for SD's 64 x 64)."""
    return max(1, round(min(height, width) / 16))


def ring_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of x [..., h, w] over its border ring of ring_width(h, w) pixels: [...]."""
    h, w = x.shape[-2:]
    r = ring_width(h, w)
    inside = x[..., r:h - r, r:w - r]
    return (x.sum((-2, -1)) - inside.sum((-2, -1))) / (h * w - inside.shape[-2] * inside.shape[-1])


def background_shift(x0: torch.Tensor, target: torch.Tensor, channel_axis: int = 1) -> torch.Tensor:
    """delta = target - ring_mean(x0) per sample and channel, shaped to broadcast against x0 (x0 [..., h, w] with
    its channels on `channel_axis`, target [C] in the same units)."""
    shape = [1] * (x0.dim() - 2)
    shape[channel_axis] = -1
    return target.to(x0.device, x0.dtype).view(shape + [1, 1]) - ring_mean(x0)[..., None, None]


def background_target(color: torch.Tensor, strength: float = 1.0, style=None) -> torch.Tensor:
    """What the background ring is steered to [C] (model units): the colour at strength 1, else the blend
    (1 - s) m + s color, m the style's channel means (0 without a style, as in raw mode's blend)."""
    color = torch.as_tensor(color, dtype=torch.float32)
    base = style.channel_means().float() if style is not None else torch.zeros_like(color)
    return (1.0 - strength) * base + strength * color


def abar_at(scheduler, timestep: torch.Tensor) -> torch.Tensor:
    """abar at each of the denoiser's timesteps [B]: from the scheduler's alphas_cumprod (interpolated for
    fractional timesteps), or abar = 1 / (1 + sigma^2) with sigma = exp(4 t) for schedulers whose timesteps are
    continuous (Stable Video Diffusion's EDM-style Euler)."""
    t = timestep.detach().double().flatten()
    if scheduler.config.get("timestep_type") == "continuous":
        return 1.0 / (1.0 + torch.exp(8.0 * t))
    table = getattr(scheduler, "alphas_cumprod", None)
    if table is None:
        raise LeakstyleError(f"{type(scheduler).__name__} has no alphas_cumprod, so calibrated colour cannot read the "
                             f"model's prediction; use color_mode='raw' (--color-mode raw)")
    table = table.detach().double().cpu()
    t = t.cpu().clamp(0, len(table) - 1)
    low = t.floor().long()
    high = (low + 1).clamp(max=len(table) - 1)
    return table[low] + (t - low) * (table[high] - table[low])


def shifted_prediction(output: torch.Tensor, delta: torch.Tensor, abar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The model output whose x0 prediction is the old one + delta, at noise level abar (broadcast to output)."""
    if prediction_type == "epsilon":
        return output - (abar.sqrt() / (1 - abar).sqrt()) * delta
    if prediction_type == "v_prediction":
        return output - delta / (1 - abar).sqrt()
    if prediction_type == "sample":
        return output + delta
    raise LeakstyleError(f"calibrated colour does not know the prediction type {prediction_type!r}; use color_mode='raw'")


def predicted_x0(z: torch.Tensor, output: torch.Tensor, abar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """x0_hat from the denoiser's input z = sqrt(abar) x0 + sqrt(1 - abar) eps and its output."""
    if prediction_type == "epsilon":
        return (z - (1 - abar).sqrt() * output) / abar.sqrt()
    if prediction_type == "v_prediction":
        return abar.sqrt() * z - (1 - abar).sqrt() * output
    if prediction_type == "sample":
        return output
    raise LeakstyleError(f"calibrated colour does not know the prediction type {prediction_type!r}; use color_mode='raw'")


@contextlib.contextmanager
def steered_background(pipe, target: torch.Tensor | str, scheduler=None):
    """Inside the block every call of the pipeline's denoiser has its x0 prediction's border ring steered to
    `target` ('#rrggbb', or [C] in model units): the closed loop of calibrated colour (see the module's docstring).
    For a pipeline called by hand with `latents=initial_latents(..., color_mode="calibrated")`:

        with steered_background(pipe, "#1e90ff"):
            images = pipe(prompt, latents=latents).images

    The denoiser's input is read as sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (what every diffusers scheduler's
    scale_model_input gives), its first C channels as the latents (SVD appends its image's latents; C from the
    VAE) and the first C channels of its output as the prediction (learned-variance models append C more)."""
    target = color_in_model_units(pipe, target, "calibrated")
    scheduler = scheduler or pipe.scheduler
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    abar_at(scheduler, torch.zeros(1))  # refuse, before any sampling, what the loop could not read
    shifted_prediction(torch.zeros(1), torch.zeros(1), torch.full((1,), 0.5), prediction_type)
    channel_axis = 2 if layout(pipe) == FRAME_MAJOR else 1
    C = latent_channels(pipe)

    def steer(module, args, kwargs, output):
        z = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        packed = isinstance(output, tuple) or not hasattr(output, "sample")
        out = output[0] if isinstance(output, tuple) else (output if packed else output.sample)
        z, prediction = z.narrow(channel_axis, 0, C), out.narrow(channel_axis, 0, C)
        abar = abar_at(scheduler, torch.as_tensor(timestep)).to(z.device, torch.float32)
        abar = (abar if abar.numel() == z.shape[0] else abar[:1].expand(z.shape[0])).view([-1] + [1] * (z.dim() - 1))
        x0 = predicted_x0(z.float(), prediction.float(), abar, prediction_type)
        steered = shifted_prediction(prediction.float(), background_shift(x0, target, channel_axis), abar,
                                     prediction_type).to(out.dtype)
        new = torch.cat([steered, out.narrow(channel_axis, C, out.shape[channel_axis] - C)], channel_axis) \
            if out.shape[channel_axis] > C else steered
        if isinstance(output, tuple):
            return (new,) + tuple(output[1:])
        if packed:
            return new
        output.sample = new
        return output

    handle = denoiser_of(pipe).register_forward_hook(steer, with_kwargs=True, prepend=True)  # before any observer
    try:
        yield
    finally:
        handle.remove()
