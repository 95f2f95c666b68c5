"""Calibrated colour control: choose the DC of x_tilde so that the image's background comes out in the requested colour.

Setting the DC of x_tilde to the encoding z* of a flat colour (the paper's direct setting, "raw") misses: the UNet
reads the DC of x_T = sqrt(abar_T) x_tilde + sqrt(1 - abar_T) eps, in which the noise's own DC is as large as the
leaked one, and it reads it through its prior. Calibrated control fixes both, per image:

1. Noise-cancelled DC. x_tilde's channel means are set to m - (b / a) mean_hw(eps), a = sqrt(abar_T),
   b = sqrt(1 - abar_T), so that x_T's DC is exactly a m: the leak carries m, not m plus noise.
2. A per-model inverse map g (quadratic in the obtained colour, fitted once from short probes and cached) gives
   the m whose background comes out at z*: m_0 = g(z*).
3. One probe per image: the model's own ODE from the same x_T in PROBE_STEPS Euler steps predicts the background
   y_0 of the real run; the input is corrected by the map's own difference, m_1 = m_0 + g(z*) - g(y_0)
   (a Newton step with the Jacobian of g), and the real run starts from m_1.

Colours are compared in model units: the mean over the image's border (BORDER pixels, at least one latent pixel)
of the latent, against z*. The probe costs PROBE_STEPS UNet calls per image, so a 25-step generation takes
about (25 + 5) / 25 = 1.2 times as long.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .encode import encode, vae_of
from .errors import LeakstyleError
from .schedule import Leak

PROBE_STEPS = 5
BORDER = 4  # pixels, as in metrics.BORDER: the frame whose colour is the background
CALIBRATION_VERSION = "1"
CALIBRATION_SAMPLES = 192
CALIBRATION_PROMPTS = ("grinning face", "cat face", "rocket", "sun with face", "slice of pizza", "ghost",
                       "evergreen tree", "fire", "dog face", "snowman", "smiling face with sunglasses", "rainbow")
COLOR_MODES = ("calibrated", "raw")
RIDGE = 1e-3


# -- the math ----------------------------------------------------------------------------------------
def border_mean(z: torch.Tensor, width: int) -> torch.Tensor:
    """The mean over the outer `width` pixels of each side of z [B, C, h, w] -> [B, C]."""
    h, w = z.shape[-2:]
    inner = torch.zeros(h, w, dtype=torch.bool, device=z.device)
    inner[width:h - width, width:w - width] = True
    return z[..., ~inner].float().mean(-1)


def border_width(factor: int) -> int:
    """BORDER pixels in latent pixels (at least one) for a VAE that downsamples by `factor`."""
    return max(1, round(BORDER / factor))


def noise_cancelled(x_tilde: torch.Tensor, eps: torch.Tensor, leak: Leak, share: float = 1.0) -> torch.Tensor:
    """x_tilde - share (b / a) mean_hw(eps): then x_T = a x_tilde + b eps has DC a DC(x_tilde) (share 1)."""
    return x_tilde - share * (leak.sqrt_one_minus_abar_T / leak.sqrt_abar_T) * eps.mean((2, 3), keepdim=True)


def quadratic_features(y: torch.Tensor) -> torch.Tensor:
    """[N, C] -> [N, 1 + C + C (C + 1) / 2]: 1, y_i, y_i y_j (i <= j)."""
    y = y.double()
    i, j = torch.triu_indices(y.shape[1], y.shape[1])
    return torch.cat([torch.ones(len(y), 1, dtype=y.dtype), y, y[:, i] * y[:, j]], 1)


@dataclass(frozen=True)
class ColorMap:
    """g: obtained background colour y [C] (model units) -> the DC m [C] of x_tilde that gives it.

    g(y) = W^T phi((y - center) / scale), phi the quadratic features, W fitted by ridge regression."""

    weights: torch.Tensor  # [F, C]
    center: torch.Tensor  # [C]
    scale: torch.Tensor  # [C]

    @classmethod
    def fit(cls, y: torch.Tensor, m: torch.Tensor, ridge: float = RIDGE) -> "ColorMap":
        """Least squares (plus ridge * |W|^2) of m [N, C] on phi(y) [N, F]."""
        center, scale = y.double().mean(0), y.double().std(0).clamp_min(1e-6)
        phi = quadratic_features((y.double() - center) / scale)
        A = phi.T @ phi + ridge * len(y) * torch.eye(phi.shape[1], dtype=phi.dtype)
        return cls(torch.linalg.solve(A, phi.T @ m.double()), center, scale)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        y = torch.as_tensor(y).double()
        flat = y.reshape(-1, y.shape[-1])
        return (quadratic_features((flat - self.center) / self.scale) @ self.weights).reshape(y.shape).float()

    @property
    def channels(self) -> int:
        return len(self.center)

    def as_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "center": self.center.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "ColorMap":
        return cls(*(torch.tensor(d[k], dtype=torch.float64) for k in ("weights", "center", "scale")))


def corrected_input(g: ColorMap, target: torch.Tensor, probed: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """One Newton step through the calibrated inverse map: m + g(z*) - g(y) [B, C]."""
    return m + g(target) - g(probed)


# -- the probe ---------------------------------------------------------------------------------------
def probe_timesteps(T: int, steps: int = PROBE_STEPS) -> list[int]:
    """`steps` integer timesteps from T down to 1, evenly spaced (T itself first)."""
    return sorted({int(round(t)) for t in np.linspace(T, 1, steps)}, reverse=True)


def probe_scheduler(pipe, T: int, steps: int = PROBE_STEPS):
    """An Euler scheduler on the pipeline's noise schedule, with its timesteps set from T; and its UNet input scale."""
    from .schedulers import make_scheduler

    scheduler = make_scheduler("euler", pipe.scheduler.config)
    timesteps = probe_timesteps(T, steps)
    scheduler.set_timesteps(timesteps=timesteps, device="cpu")
    t0 = scheduler.timesteps[0]
    scale = float(scheduler.init_noise_sigma) * float(scheduler.scale_model_input(torch.ones(1, dtype=torch.float64), t0)[0])
    return scheduler, timesteps, scale


@torch.no_grad()
def probe(pipe, x_T: torch.Tensor, T: int, prompts: list[str], guidance_scale: float,
          negative_prompt: str | None = None, steps: int = PROBE_STEPS) -> torch.Tensor:
    """The background colour [B, C] (model units) the model's ODE reaches from x_T [B, C, h, w], in `steps` steps.

    x_T is what the UNet receives at the first step (sqrt(abar_T) x_tilde + sqrt(1 - abar_T) eps) at timestep T."""
    from .leak import vae_factor

    scheduler, timesteps, scale = probe_scheduler(pipe, T, steps)
    own = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        z = pipe(prompt=prompts, negative_prompt=[negative_prompt] * len(prompts) if negative_prompt else None,
                 timesteps=timesteps, guidance_scale=guidance_scale, latents=x_T / scale, output_type="latent",
                 height=x_T.shape[-2] * vae_factor(pipe), width=x_T.shape[-1] * vae_factor(pipe)).images
    finally:
        pipe.scheduler = own
    return border_mean(z, border_width(vae_factor(pipe)))



# -- calibration and its cache -----------------------------------------------------------------------
def cache_dir() -> Path:
    """Where calibrations live: $LEAKSTYLE_CACHE, else $XDG_CACHE_HOME/leakstyle, else ~/.cache/leakstyle."""
    if os.environ.get("LEAKSTYLE_CACHE"):
        return Path(os.environ["LEAKSTYLE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "leakstyle"


def module_fingerprint(module) -> str:
    """sha256 of a module's config and of every tensor's name, shape, dtype and 16 evenly spaced values.

    Any fine-tune, LoRA merge or retraining changes most values of the tensors it touches, so it changes the
    fingerprint; reading 16 values per tensor costs milliseconds even for SD-size weights."""
    h = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None:
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        config = {k: v for k, v in config.items() if k not in ("_name_or_path", "_commit_hash", "transformers_version")}
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in module.state_dict().items():
        flat = t.detach().reshape(-1)
        idx = torch.linspace(0, max(flat.numel() - 1, 0), min(flat.numel(), 16), device=flat.device).long()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(flat[idx].double().cpu().numpy().tobytes())
    return h.hexdigest()


def weights_fingerprint(pipe) -> str:
    """The fingerprint of the components that decide an image's colour: UNet, VAE, text encoders (and tokenizer size)."""
    h = hashlib.sha256()
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            h.update(name.encode() + module_fingerprint(module).encode())
    for name in ("tokenizer", "tokenizer_2"):
        tok = getattr(pipe, name, None)
        if tok is not None:
            h.update(f"{name}{len(tok)}".encode())
    return h.hexdigest()


def calibration_fields(pipe, T: int, guidance_scale: float, height: int, width: int,
                       samples: int = CALIBRATION_SAMPLES) -> dict:
    """What a calibration depends on, and so its cache key: the weights, the first timestep T (scheduler and step
    count act only through it), guidance, the latent size, the probe and the calibration set. Style, strength,
    seed, negative prompt and prompt are not in it: the per-image probe corrects for them."""
    return {"version": CALIBRATION_VERSION, "weights": weights_fingerprint(pipe), "T": int(T),
            "guidance": float(guidance_scale), "latent_height": int(height), "latent_width": int(width),
            "probe_steps": PROBE_STEPS, "samples": int(samples), "prompts": list(CALIBRATION_PROMPTS),
            "dtype": str(pipe.unet.dtype)}


def calibration_path(fields: dict) -> Path:
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / "colour" / f"{key}.json"


def calibration_colors(n: int, seed: int = 0) -> np.ndarray:
    """n RGB colours [n, 3] in 0..255: uniform over the cube, a fifth of them near black or near white."""
    rng = np.random.default_rng(seed)
    rgb = rng.random((n, 3))
    extreme = rng.random(n) < 0.2
    dark = rng.random(n) < 0.5
    rgb[extreme & dark] = rng.uniform(0.0, 0.08, (int((extreme & dark).sum()), 3))
    rgb[extreme & ~dark] = rng.uniform(0.92, 1.0, (int((extreme & ~dark).sum()), 3))
    return rgb * 255.0


def flat_colors_to_model_units(pipe, rgb: np.ndarray, size: int = 64) -> torch.Tensor:
    """Per-channel means [n, C] of flat images of the colours rgb [n, 3] (0..255), encoded with the VAE."""
    pixels = torch.as_tensor(np.asarray(rgb), dtype=torch.float32) / 127.5 - 1.0
    vae = vae_of(pipe)
    if vae is None:
        return pixels
    out = [encode(vae, p.view(-1, 3, 1, 1).expand(-1, 3, size, size)).float().mean((2, 3)).cpu()
           for p in pixels.split(16)]
    return torch.cat(out)


@torch.no_grad()
def calibrate(pipe, leak: Leak, guidance_scale: float, height: int, width: int, samples: int = CALIBRATION_SAMPLES,
              batch_size: int = 8, seed: int = 0, progress: bool = False) -> ColorMap:
    """Fit the inverse colour map g of a model (latents of height x width) from `samples` probes.

    Input DCs m spread around the encodings z of random colours, m = mean(z) + s (z - mean(z)) with s in [0.8, 2.2],
    reach beyond the encodings of the extremes (the model's prior pulls toward the middle), with noise-cancelled
    DCs and the calibration prompts; g is the ridge fit of m on the probed background colours y."""
    from tqdm.auto import tqdm

    device, dtype = pipe.unet.device, pipe.unet.dtype
    C = pipe.unet.config.in_channels
    rng = np.random.default_rng(seed)
    z = flat_colors_to_model_units(pipe, calibration_colors(samples, seed))
    s = torch.as_tensor(rng.uniform(0.8, 2.2, (samples, 1)), dtype=torch.float32)
    m = z.mean(0) + s * (z - z.mean(0))
    prompts = [CALIBRATION_PROMPTS[i % len(CALIBRATION_PROMPTS)] for i in range(samples)]
    y = []
    for start in tqdm(range(0, samples, batch_size), desc="calibrate colour", disable=not progress, leave=False):
        part = slice(start, start + batch_size)
        n = len(prompts[part])
        g = torch.Generator(device).manual_seed(seed + 7919 + start)
        eps = torch.randn((n, C, height, width), generator=g, device=device, dtype=dtype)
        x_tilde = noise_cancelled(m[part].to(device, dtype)[:, :, None, None].expand(n, C, height, width), eps, leak)
        x_T = leak.sqrt_abar_T * x_tilde + leak.sqrt_one_minus_abar_T * eps
        y.append(probe(pipe, x_T, leak.T, prompts[part], guidance_scale).cpu())
    return ColorMap.fit(torch.cat(y), m)


def calibration(pipe, leak: Leak, guidance_scale: float, height: int, width: int, samples: int | None = None,
                progress: bool = False) -> ColorMap:
    """The model's colour map for latents of height x width at this T and guidance: from the cache
    (cache_dir()/colour/<key>.json), else calibrated now and written there. A file whose fields differ from
    this model's (another model, another version of leakstyle) is never used."""
    samples = samples or CALIBRATION_SAMPLES
    fields = calibration_fields(pipe, leak.T, guidance_scale, height, width, samples)
    path = calibration_path(fields)
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("fields") == fields:
                return ColorMap.from_dict(stored["map"])
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: calibrate again and replace it (the cache is ours, not the user's)
    g = calibrate(pipe, leak, guidance_scale, height, width, samples, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"fields": fields, "map": g.as_dict()}))
    tmp.replace(path)
    return g


# -- initial latents ---------------------------------------------------------------------------------
def target_color(color: torch.Tensor, style, strength: float) -> torch.Tensor:
    """The background colour aimed at [C] (model units): (1 - s) (the style's mean colour, or 0) + s z*."""
    base = style.channel_means() if style is not None else torch.zeros_like(color)
    return (1 - strength) * base.float() + strength * color.float()


@torch.no_grad()
def calibrated_initial_latents(pipe, prompts: list[str], color: torch.Tensor, generators: list[torch.Generator],
                               leak: Leak, guidance_scale: float, height: int, width: int, style=None,
                               strength: float = 1.0, negative_prompt: str | None = None, colormap: ColorMap | None = None,
                               progress: bool = False) -> torch.Tensor:
    """The `latents=` [B, C, h, w] whose images have their background at `color` [C] (model units), image i
    drawn from generators[i] (eps, then the style's x_tilde, as in leak.initial_latents).

    x_tilde keeps the style's non-DC content (its low frequencies weighted by 1 - strength, as in raw mode); its DC
    is m_1 = m_0 + g(t) - g(y_0), m_0 = g(t), t = target_color(...), y_0 the probe of the x_T from m_0, with the
    noise's DC cancelled (see the module docstring). height, width: latent size."""
    from .distribution import StyleDistribution

    if not leak.has_leak:
        raise LeakstyleError("calibrated colour needs a signal leak, and this scheduler has zero terminal SNR")
    device, dtype = pipe.unet.device, pipe.unet.dtype
    C = pipe.unet.config.in_channels
    g = colormap or calibration(pipe, leak, guidance_scale, height, width, progress=progress)
    if g.channels != C:
        raise LeakstyleError(f"the colour calibration has {g.channels} channels but the model has {C}")
    t = target_color(torch.as_tensor(color, dtype=torch.float32), style, strength)
    base = style if style is not None else StyleDistribution.flat(torch.zeros(C), height, width)
    textured = base.with_color(torch.zeros(C), strength)
    eps, x_tilde = [], []
    for gen in generators:
        eps.append(torch.randn((1, C, height, width), generator=gen, device=device, dtype=dtype))
        x_tilde.append(textured.sample(1, height, width, generator=gen, device=device, dtype=dtype))
    eps, x_tilde = torch.cat(eps), torch.cat(x_tilde)
    x_tilde = x_tilde - x_tilde.mean((2, 3), keepdim=True)  # the style's content without its DC
    m0 = g(t).to(device, dtype).expand(len(generators), C)
    x_T0 = leak.sqrt_abar_T * noise_cancelled(x_tilde + m0[:, :, None, None], eps, leak) + leak.sqrt_one_minus_abar_T * eps
    y0 = probe(pipe, x_T0, leak.T, list(prompts), guidance_scale, negative_prompt).to(device)
    m1 = corrected_input(g, t.to(device).expand_as(y0), y0, m0.float()).to(dtype)
    x_T1 = x_T0 + leak.sqrt_abar_T * (m1 - m0)[:, :, None, None]
    return x_T1 / leak.input_scale


def check_color_mode(color_mode: str) -> str:
    if color_mode not in COLOR_MODES:
        raise LeakstyleError(f"unknown colour mode {color_mode!r}; choose one of {', '.join(COLOR_MODES)}")
    return color_mode


def seeded_calibrated_latents(pipe, prompts: list[str], color: torch.Tensor, seeds: list[int], num_inference_steps: int,
                              guidance_scale: float, height: int | None = None, width: int | None = None, style=None,
                              strength: float = 1.0, negative_prompt: str | None = None, scheduler=None,
                              progress: bool = False) -> torch.Tensor:
    """calibrated_initial_latents for the pipeline's scheduler at `num_inference_steps`, image i from seeds[i]
    (height, width in pixels: the model's native size if None). Refuses models the method cannot serve."""
    from .leak import latent_shape
    from .schedule import ZERO_SNR_EXPLANATION, leak_at_first_step

    if vae_of(pipe) is None or getattr(pipe, "text_encoder", None) is None:
        raise LeakstyleError("calibrated colour needs a latent text-to-image pipeline; use color_mode='raw' "
                             "(--color-mode raw) for pixel-space models")
    if getattr(pipe, "leakstyle_noise", None) is not None:
        raise LeakstyleError("calibrated colour is not available for Diffusion-in-Style models yet; "
                             "use color_mode='raw' (--color-mode raw)")
    leak = leak_at_first_step(scheduler or pipe.scheduler, num_inference_steps, warn=False)
    if not leak.has_leak:
        raise LeakstyleError(ZERO_SNR_EXPLANATION)
    _, h, w = latent_shape(pipe, height, width)
    device = pipe.unet.device
    generators = [torch.Generator(device).manual_seed(s) for s in seeds]
    return calibrated_initial_latents(pipe, prompts, color, generators, leak, guidance_scale, h, w, style=style,
                                      strength=strength, negative_prompt=negative_prompt, progress=progress)


def with_lightness(pipe, lightness: float, style=None, color: str | None = None) -> str:
    """The '#rrggbb' colour of CIELAB lightness L* = `lightness` (0 black .. 100 white) with the hue and chroma
    (a*, b*) of `color`, else of the style's mean colour (its channel means decoded by the VAE), else neutral grey
    (a* = b* = 0). Out-of-gamut results are clipped to sRGB."""
    from skimage.color import lab2rgb

    from . import metrics
    from .encode import model_units_to_rgb, to_hex

    if not 0.0 <= float(lightness) <= 100.0:
        raise LeakstyleError(f"brightness is CIELAB L* between 0 and 100, got {lightness}")
    if color is not None:
        lab = metrics.color_to_lab(color)
    elif style is not None:
        lab = metrics.color_to_lab(model_units_to_rgb(vae_of(pipe), style.channel_means()))
    else:
        lab = np.zeros(3)
    rgb = lab2rgb(np.array([[[float(lightness), lab[1], lab[2]]]]), channel_axis=-1)[0, 0]
    return to_hex(np.clip(rgb, 0, 1) * 255)
