"""What ComfyUI does with a latent at the first step, and the noise that makes it the signal leak.

ComfyUI keeps x = x_0 + sigma eps and feeds the diffusion model x / sqrt(sigma^2 + 1) (EPS, V and EDM
models with sigma_data = 1), so a sigma stands for abar(sigma) = 1 / (1 + sigma^2). Its samplers start
from x = s eps + L' with L' = process_latent_in(latent) and s = sqrt(1 + sigma_0^2) when sigma_0 counts as
sigma_max (`max_denoise`), else s = sigma_0. The first model input is therefore

    eps + sqrt(abar_0) L'                      at sigma_max (KSampler at full denoise),
    sqrt(1 - abar_0) eps + sqrt(abar_0) L'     otherwise: the forward process itself.

A NOISE of sqrt(1 - abar_0) eps at sigma_max makes the first case the forward process as well.
"""

from __future__ import annotations

import math

import torch

from ..errors import LeakstyleError
from ..schedule import ZERO_SNR_ABAR

FLOW_EXPLANATION = ("this is a flow-matching model (SD3, Flux and the like): its first step ignores the latent, so no "
                    "signal leaks and a style or colour cannot act; use an SD 1.x, SD 2.x or SDXL model")
ZERO_SNR_EXPLANATION = ("this model has zero terminal SNR (abar_T = {abar:.1e}: a zsnr model or a ModelSamplingDiscrete "
                        "zsnr patch), so no signal leaks at its first step and a style or colour cannot act; use a "
                        "model without zero-SNR, or Diffusion in Style (leakstyle finetune)")
EDM_EXPLANATION = ("this model's sigmas have sigma_data = {sigma_data:g} (EDM models such as Playground 2.5), so they "
                   "do not map to abar = 1 / (1 + sigma^2) and leakstyle cannot place the leak; use an SD 1.x, SD 2.x "
                   "or SDXL model")


def abar(sigma: float) -> float:
    """abar(sigma) = 1 / (1 + sigma^2): the noise level a sigma stands for when sigma_data = 1."""
    return 1.0 / (1.0 + sigma * sigma)


def model_sampling(model):
    """The model's sampling object (with any ModelSampling* patch applied)."""
    return model.get_model_object("model_sampling")


def counts_as_sigma_max(model, sigma_0: float) -> bool:
    """ComfyUI's `max_denoise` rule (samplers.Sampler.max_denoise): within 1e-5 relative of sigma_max, or above it."""
    sigma_max = float(model_sampling(model).sigma_max)
    return math.isclose(sigma_max, sigma_0, rel_tol=1e-05) or sigma_0 > sigma_max


def leak_verdict(model) -> str | None:
    """Why the model leaks no signal that leakstyle can use (one line), or None when it does."""
    import comfy.model_sampling as ms

    sampling = model_sampling(model)
    kind = type(sampling)
    if not isinstance(sampling, ms.EPS) or kind.calculate_input is not ms.EPS.calculate_input \
            or kind.noise_scaling is not ms.EPS.noise_scaling:
        return FLOW_EXPLANATION
    sigma_data = float(getattr(sampling, "sigma_data", 1.0))
    if not math.isclose(sigma_data, 1.0, rel_tol=1e-6):
        return EDM_EXPLANATION.format(sigma_data=sigma_data)
    abar_T = abar(float(sampling.sigma_max))
    if abar_T <= ZERO_SNR_ABAR:
        return ZERO_SNR_EXPLANATION.format(abar=abar_T)
    return None


def require_leak(model) -> None:
    """Raise the one-line LeakstyleError that ComfyUI shows when the model has no usable leak."""
    verdict = leak_verdict(model)
    if verdict is not None:
        raise LeakstyleError(verdict)


def noise_factor(model, sigmas: torch.Tensor) -> float:
    """What eps is multiplied by so that the first input is sqrt(abar_0) x~ + sqrt(1 - abar_0) eps."""
    if len(sigmas) < 2:
        raise LeakstyleError("the SIGMAS are empty: connect a scheduler with at least one step")
    sigma_0 = float(sigmas[0])
    return math.sqrt(1.0 - abar(sigma_0)) if counts_as_sigma_max(model, sigma_0) else 1.0


def cancel_noise_dc(eps: torch.Tensor, share: float) -> torch.Tensor:
    """eps - share * mean_hw(eps) per sample and channel ([B, C, ..., h, w]; the mean over the last two axes): in
    a x~ + b eps this is leakstyle's calibrated x~ + share * (-(b / a) mean_hw(eps)) (see calibration.py)."""
    return eps - share * eps.mean((-2, -1), keepdim=True)


class LeakNoise:
    """A NOISE for SamplerCustomAdvanced: ComfyUI's own noise for the seed (as RandomNoise draws it, batch_index
    honoured), with `share` of its DC cancelled (calibrated colour; 0: none), times `factor` (see noise_factor)."""

    def __init__(self, seed: int, factor: float, share: float = 0.0):
        self.seed = seed
        self.factor = factor
        self.share = share

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        import comfy.sample

        eps = comfy.sample.prepare_noise(input_latent["samples"], self.seed, input_latent.get("batch_index"))
        if self.share:
            eps = cancel_noise_dc(eps, self.share)
        return eps if self.factor == 1.0 else eps.mul_(self.factor)
