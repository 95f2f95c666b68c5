"""What signal-leak sampling can do on a model, before anyone spends GPU time on it.

The linear-Gaussian picture of DESIGN.md: at the first inference step T the denoiser sees
x_T = sqrt(abar_T) x_0 + sqrt(1 - abar_T) eps. For unit-variance data each element carries

    SNR_element = abar_T / (1 - abar_T),

and the DC coefficient of a channel (its mean times sqrt(h w) in the orthonormal DCT), whose spread over images
is sqrt(h w) sigma_m against unit noise, carries

    SNR_DC = abar_T h w sigma_m^2 / (1 - abar_T),

with sigma_m the standard deviation over images of a channel's mean (model units) and h x w the latent size.
A deterministic sampler started from pure noise then gives channel means whose spread is sigma_m / sqrt(1 + SNR_DC)
(the predicted std ratio, pure noise vs data): the smaller the ratio, the more the leak decides the mean colour.
Verdicts: strong when SNR_DC >= 1 (ratio <= 0.71), weak when 0.25 <= SNR_DC < 1 (ratio <= 0.89), none below 0.25
(DESIGN.md's 8 x 8 example, SNR 0.15, ratio 0.93, is too weak to show) or without a leak.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .distribution import StyleDistribution
from .errors import LeakstyleError
from .schedule import leak_at_first_step, no_leak_explanation

STRONG_SNR = 1.0
WEAK_SNR = 0.25  # DESIGN.md: SNR 0.15 (8 x 8 latents, ratio 0.93) is too weak to show; 0.58 (0.80) shows
REFERENCE_IMAGES = Path(__file__).parent / "assets" / "reference"
REFERENCE_SOURCE = ("the model's own latents of the 32 bundled reference images (emoji on random backgrounds, "
                    "leakstyle/assets/reference): their mean colours vary more than photos' do, so for photo models "
                    "this overstates the effect; give --style fitted on your images for your figure")
MAX_REFERENCE_SIDE = 256  # channel means barely depend on resolution; the references are 64 px anyway


@dataclass(frozen=True)
class Probe:
    """The leak of a scheduler at a size, and what it predicts. `sigma_m` is per channel; `snr_dc` uses their
    root mean square."""

    scheduler: str
    steps: int
    T: int
    sigma_T: float | None
    abar_T: float
    sqrt_abar_T: float
    channels: int
    latent_height: int
    latent_width: int
    sigma_m: list[float] | None
    sigma_m_source: str
    snr_element: float
    snr_dc: float
    snr_dc_per_channel: list[float] | None
    predicted_std_ratio: float
    verdict: str
    explanation: str

    def to_dict(self) -> dict:
        return asdict(self)


def snr_element(abar_T: float) -> float:
    """abar_T / (1 - abar_T): the SNR of one element of unit-variance data at T."""
    return abar_T / (1.0 - abar_T)


def snr_dc(abar_T: float, h: int, w: int, sigma_m: float) -> float:
    """abar_T h w sigma_m^2 / (1 - abar_T): the SNR of a channel's DC coefficient at T."""
    return abar_T * h * w * sigma_m**2 / (1.0 - abar_T)


def predicted_std_ratio(snr: float) -> float:
    """1 / sqrt(1 + SNR_DC): the spread of channel means from pure noise over the data's."""
    return 1.0 / math.sqrt(1.0 + snr)


def verdict(snr: float, has_leak: bool = True) -> str:
    if not has_leak or snr < WEAK_SNR:
        return "none"
    return "strong" if snr >= STRONG_SNR else "weak"


def sentence(kind: str, ratio: float, snr: float) -> str:
    if kind == "strong":
        return (f"the leak decides the mean colour: from pure noise, channel means keep only {ratio:.2f} of the data's "
                f"spread (pulled toward grey), and a style or colour moves them")
    if kind == "weak":
        return (f"a small effect: from pure noise, channel means keep {ratio:.2f} of the data's spread; a style or colour "
                f"shifts colours a little (more at larger sizes or with fewer 'leading' steps)")
    return (f"too weak to show: SNR_DC {snr:.3f} leaves channel means at {ratio:.2f} of the data's spread either way; "
            f"use a larger size, fewer 'leading' steps, or Diffusion in Style (leakstyle finetune)")


@dataclass(frozen=True)
class Assessment:
    """What a leak abar_T predicts on h x w latents whose channel means spread by sigma_m [C] (see the module)."""

    snr_dc_per_channel: list[float]
    snr_dc: float
    predicted_std_ratio: float
    verdict: str
    explanation: str


def assess(abar_T: float, h: int, w: int, sigma_m: torch.Tensor) -> Assessment:
    """SNR_DC per channel and at the channels' root-mean-square sigma_m, the predicted std ratio and the verdict of a
    leak abar_T > 0 (used by probe_schedule and by the ComfyUI probe node, which reads abar_0 from its sigmas)."""
    per_channel = [snr_dc(abar_T, h, w, float(s)) for s in sigma_m]
    snr = snr_dc(abar_T, h, w, float(sigma_m.double().pow(2).mean().sqrt()))
    ratio = predicted_std_ratio(snr)
    kind = verdict(snr)
    return Assessment(per_channel, snr, ratio, kind, sentence(kind, ratio, snr))


def sigma_m_of_style(style: StyleDistribution) -> torch.Tensor:
    """sigma_m [C] of a dct style: its DC component's variance is h w var(channel mean) (orthonormal DCT).

    A pixel style has no covariance between elements, so the spread of its channel means is not known."""
    if style.kind != "dct":
        raise LeakstyleError("a pixel-type style has no covariance, so it cannot give sigma_m; fit the style with "
                             "--type dct, or leave out --style")
    dc = [k for k, (u, v) in enumerate(style.lf_indices.tolist()) if u == 0 and v == 0]
    if not dc:
        raise LeakstyleError("the style's low frequencies do not include the DC component; fit it with --type dct")
    C = style.channels
    var_dc = torch.diagonal(style.lf_cov.double())[dc[0] * C:(dc[0] + 1) * C]
    return (var_dc / (style.height * style.width)).clamp_min(0).sqrt()


def reference_size(pipe, height: int, width: int) -> int:
    """The square size in pixels the reference images are encoded at: the probe's longer side, at most 256 px,
    a multiple of 8 times the VAE factor."""
    from .denoiser import vae_factor

    step = 8 * vae_factor(pipe)
    return max(step, min(MAX_REFERENCE_SIDE, max(height, width)) // step * step)


@torch.no_grad()
def sigma_m_of_references(pipe, height: int, width: int, folder: Path = REFERENCE_IMAGES) -> torch.Tensor:
    """sigma_m [C]: the standard deviation over the reference images of each channel's mean, in model units."""
    from .encode import encode, vae_of
    from .images import list_images
    from .sources import Batches, ImageFiles

    vae = vae_of(pipe)
    size = reference_size(pipe, height, width)
    means = []
    for pixels in Batches(ImageFiles(list_images([folder])), size, size).pixels():
        x = encode(vae, pixels) if vae is not None else pixels
        means.append(x.double().mean((2, 3)).cpu())
    return torch.cat(means).std(0)


def probe_schedule(scheduler, steps: int, latent_height: int, latent_width: int, sigma_m: torch.Tensor | None,
                   sigma_m_source: str = "given") -> Probe:
    """The Probe of `scheduler` run for `steps` steps on latents of latent_height x latent_width with sigma_m [C]."""
    from .schedulers import scheduler_name

    leak = leak_at_first_step(scheduler, steps, warn=False)
    sigma_T = None
    if hasattr(scheduler, "alphas_cumprod") and getattr(scheduler, "sigmas", None) is not None:
        sigma_T = math.sqrt(1.0 / leak.abar_T - 1.0) if leak.abar_T > 0 else math.inf
    if leak.has_leak and sigma_m is not None:
        a = assess(leak.abar_T, latent_height, latent_width, sigma_m)
        per_channel, snr, ratio, kind, explanation = (a.snr_dc_per_channel, a.snr_dc, a.predicted_std_ratio, a.verdict,
                                                      a.explanation)
    else:
        per_channel, snr = None, 0.0
        ratio = predicted_std_ratio(snr)
        kind = verdict(snr, leak.has_leak)
        explanation = sentence(kind, ratio, snr) if leak.has_leak else no_leak_explanation(scheduler, leak)
    return Probe(scheduler=scheduler_name(scheduler), steps=steps, T=leak.T, sigma_T=sigma_T, abar_T=leak.abar_T,
                 sqrt_abar_T=leak.sqrt_abar_T, channels=len(sigma_m) if sigma_m is not None else 0,
                 latent_height=latent_height, latent_width=latent_width,
                 sigma_m=[float(s) for s in sigma_m] if sigma_m is not None else None,
                 sigma_m_source=sigma_m_source if sigma_m is not None else "not needed: no leak",
                 snr_element=snr_element(leak.abar_T), snr_dc=snr, snr_dc_per_channel=per_channel,
                 predicted_std_ratio=ratio, verdict=kind, explanation=explanation)


def probe(pipe, scheduler: str | None = None, steps: int = 25, height: int | None = None, width: int | None = None,
          style: StyleDistribution | None = None, timestep_spacing: str | None = None) -> Probe:
    """Probe `pipe` with its scheduler (or the one called `scheduler`, with `timestep_spacing` if given: "leading",
    "trailing" or "linspace") at height x width pixels (native if None).

    sigma_m comes from `style` (a dct style fitted with this model) or else from the bundled reference images
    encoded by the model's VAE (see REFERENCE_SOURCE)."""
    from .leak import image_size, latent_shape
    from .schedulers import make_scheduler, respace

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise LeakstyleError(f"--steps must be a whole number of at least 1, got {steps!r}")
    if scheduler:
        sched = make_scheduler(scheduler, pipe.scheduler.config, timestep_spacing=timestep_spacing)
    else:
        sched = respace(pipe.scheduler, timestep_spacing) if timestep_spacing else pipe.scheduler
    C, h, w = latent_shape(pipe, height, width)
    leak = leak_at_first_step(sched, steps, warn=False)
    if not leak.has_leak:
        return probe_schedule(sched, steps, h, w, None)
    if style is not None:
        if style.channels != C:
            raise LeakstyleError(f"the style has {style.channels} channels but the model's latents have {C}; "
                                 f"fit the style with this model")
        sigma_m, source = sigma_m_of_style(style), "the style file's DC covariance"
    else:
        sigma_m, source = sigma_m_of_references(pipe, *image_size(pipe, height, width)), REFERENCE_SOURCE
    return probe_schedule(sched, steps, h, w, sigma_m, source)


def format_probe(p: Probe, model_name: str = "") -> str:
    """The probe as a few lines of text (the CLI's output)."""
    sigma = f", sigma_T = {p.sigma_T:.4g}" if p.sigma_T is not None else ""
    lines = [f"model:      {model_name}"] if model_name else []
    lines += [f"scheduler:  {p.scheduler}, {p.steps} steps: T = {p.T}{sigma}, sqrt(abar_T) = {p.sqrt_abar_T:.4g}",
              f"latents:    {p.latent_height} x {p.latent_width}"]
    if p.sigma_m is not None:
        lines += [f"sigma_m:    [{', '.join(f'{s:.3f}' for s in p.sigma_m)}] from {p.sigma_m_source}"]
    lines += [f"SNR:        per element {p.snr_element:.3g}, DC {p.snr_dc:.3g}"
              + (f" (per channel {', '.join(f'{s:.3g}' for s in p.snr_dc_per_channel)})" if p.snr_dc_per_channel else ""),
              f"predicted:  pure-noise / data std of channel means = {p.predicted_std_ratio:.2f}",
              f"verdict:    {p.verdict}: {p.explanation}"]
    return "\n".join(lines)


def verdict_line(pipe, steps: int = 25) -> str:
    """One line for the UI under the model's name: the verdict at the native size with the pipeline's scheduler."""
    p = probe(pipe, steps=steps)
    return f"signal leak at {steps} steps: {p.verdict} (sqrt(abar_T) = {p.sqrt_abar_T:.3g}, SNR_DC {p.snr_dc:.2g})"
