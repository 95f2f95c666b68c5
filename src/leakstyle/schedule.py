"""The signal leak of a noise schedule at the first inference step.

Training corrupts x_0 as x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, and at the last step abar_T
is not zero (Stable Diffusion: sqrt(abar_999) = 0.068265). Signal-leak sampling starts inference from
x_T = sqrt(abar_T) x_tilde + sqrt(1 - abar_T) eps, with T the first timestep of the inference schedule.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from dataclasses import dataclass

import torch

from .errors import LeakstyleError

# Below this abar_T the leaked signal is numerically nothing (zero-terminal-SNR schedules set it to 2**-24).
ZERO_SNR_ABAR = 1e-6


class ZeroTerminalSNRWarning(UserWarning):
    """The schedule leaks no signal at its first step, so signal-leak sampling cannot act."""


ZERO_SNR_EXPLANATION = (
    "this scheduler has zero terminal SNR (abar_T = 0: rescale_betas_zero_snr or flow matching), so no signal "
    "leaks into x_T and signal-leak sampling cannot change the image; use Diffusion in Style "
    "(leakstyle finetune), which still works, or a scheduler without rescale_betas_zero_snr"
)
ZERO_SNR_FINETUNED_EXPLANATION = (
    "this scheduler has zero terminal SNR (abar_T = 0: rescale_betas_zero_snr or flow matching), so no signal "
    "leaks into x_T and a style or colour cannot change the image; this model is fine-tuned with Diffusion in "
    "Style already: generate without a style or colour to start from its style noise, or use a scheduler "
    "without rescale_betas_zero_snr"
)


@dataclass(frozen=True)
class Leak:
    """The first inference step of a scheduler and what it means for the initial latent.

    The UNet receives `input_scale * latents` at the first step, where `latents` is what a pipeline is
    given as `latents=` (it multiplies by `init_noise_sigma`, then `scale_model_input` scales).
    """

    T: int
    abar_T: float
    input_scale: float

    @property
    def sqrt_abar_T(self) -> float:
        return math.sqrt(self.abar_T)

    @property
    def sqrt_one_minus_abar_T(self) -> float:
        return math.sqrt(1.0 - self.abar_T)

    @property
    def has_leak(self) -> bool:
        return self.abar_T > ZERO_SNR_ABAR


def betas_scaled_linear(beta_start: float = 0.00085, beta_end: float = 0.012, T: int = 1000) -> torch.Tensor:
    """Stable Diffusion's "scaled_linear" betas: linspace(sqrt(beta_start), sqrt(beta_end), T)^2."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """abar_t = prod_{s <= t} (1 - beta_s)."""
    return torch.cumprod(1.0 - betas, dim=0)


def abar_from_sigma(sigma: float) -> float:
    """Sigma schedulers keep x = x_0 + sigma eps; dividing by sqrt(sigma^2 + 1) gives abar = 1 / (1 + sigma^2)."""
    return 1.0 / (1.0 + sigma * sigma)


def no_leak(scheduler, warn: bool) -> Leak:
    """The Leak of a scheduler without alphas_cumprod (flow matching): abar_T = 0 at T = num_train_timesteps."""
    if warn:
        warnings.warn(ZERO_SNR_EXPLANATION, ZeroTerminalSNRWarning, stacklevel=3)
    return Leak(T=int(scheduler.config.get("num_train_timesteps", 1000)), abar_T=0.0,
                input_scale=float(getattr(scheduler, "init_noise_sigma", 1.0)))


def fewest_steps(scheduler) -> int:
    """PNDM with its Runge-Kutta warm-up (skip_prk_steps false) needs pndm_order (4) steps; the rest take one."""
    if hasattr(scheduler, "pndm_order") and not scheduler.config.get("skip_prk_steps", False):
        return scheduler.pndm_order
    return 1


def most_steps_bound(scheduler) -> int:
    """No more steps than training timesteps, and for LCM no more than its original_inference_steps."""
    bound = scheduler.config.num_train_timesteps
    original = scheduler.config.get("original_inference_steps")
    return min(bound, original) if original else bound


def schedule_fits(scheduler, num_inference_steps: int):
    """A copy of `scheduler` set to `num_inference_steps` steps, or None when its schedule leaves the training range.

    None when set_timesteps refuses, when a timestep of an abar_t schedule reaches num_train_timesteps ("leading"
    spacing with steps_offset 1 at 1000 steps of 1000 starts at t = 1000, past alphas_cumprod), or when the timesteps
    collapse onto one value (a step ratio of 0). Flow-matching timesteps run to num_train_timesteps by design."""
    scheduler = copy.deepcopy(scheduler)
    try:
        scheduler.set_timesteps(num_inference_steps, device="cpu")
    except (ValueError, IndexError, ZeroDivisionError):
        return None
    timesteps = scheduler.timesteps.double()
    past_the_end = hasattr(scheduler, "alphas_cumprod") and float(timesteps.max()) > len(scheduler.alphas_cumprod) - 1
    continuous = scheduler.config.get("timestep_type") == "continuous"  # SVD's EDM Euler: t = log(sigma) / 4
    if not continuous and (past_the_end or float(timesteps.min()) < 0):
        return None
    if num_inference_steps > 1 and len(torch.unique(timesteps)) < 2:
        return None
    return scheduler


def allowed_steps(scheduler) -> tuple[int, int]:
    """(fewest, most) inference steps `scheduler` can take with its config (spacing, offset, training timesteps)."""
    lo, hi = fewest_steps(scheduler), most_steps_bound(scheduler)
    while hi > lo and schedule_fits(scheduler, hi) is None:
        hi -= 1
    return lo, hi


def scheduled(scheduler, num_inference_steps: int):
    """A copy of `scheduler` with its timesteps set for `num_inference_steps` steps (the caller's is untouched).

    A step count it cannot take is a LeakstyleError that gives the range it can."""
    n = num_inference_steps
    fits = None
    whole = isinstance(n, numbers.Integral) and not isinstance(n, bool)
    if whole and fewest_steps(scheduler) <= n <= most_steps_bound(scheduler):
        fits = schedule_fits(scheduler, int(n))
    if fits is None:
        lo, hi = allowed_steps(scheduler)
        config = scheduler.config
        raise LeakstyleError(f"{type(scheduler).__name__} cannot take {n!r} steps with this model's schedule "
                             f"({config.num_train_timesteps} training timesteps, spacing "
                             f"{config.get('timestep_spacing', 'leading')}, steps_offset {config.get('steps_offset', 0)}); "
                             f"choose from {lo} to {hi} steps")
    return fits


def leak_at_first_step(scheduler, num_inference_steps: int, warn: bool = True) -> Leak:
    """Find T, abar_T and the UNet input scale of `scheduler` run for `num_inference_steps` steps.

    Works on a copy, so the caller's scheduler is untouched. VP schedulers (DDIM, PNDM, DDPM, UniPC, LCM)
    read abar_T = alphas_cumprod[T]; schedulers that keep sigmas (Euler, LMS, Heun, DPM-Solver) read it from
    sigma_T, which is what their update uses (the two agree wherever T is an integer timestep).
    A step count the scheduler cannot take is a LeakstyleError (see `scheduled`).
    """
    if not hasattr(scheduler, "alphas_cumprod"):  # flow matching: x_1 is pure noise by construction
        # (asked before set_timesteps, which Flux's dynamically shifted schedule cannot run without its `mu`)
        return no_leak(scheduler, warn)
    scheduler = scheduled(scheduler, num_inference_steps)
    t0 = scheduler.timesteps[0]
    T = int(round(float(t0)))
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) > 0 and hasattr(scheduler, "alphas_cumprod"):
        abar_T = abar_from_sigma(float(sigmas[0]))
    else:
        abar_T = float(scheduler.alphas_cumprod[T])
    input_scale = float(getattr(scheduler, "init_noise_sigma", 1.0))
    if hasattr(scheduler, "scale_model_input"):
        input_scale *= float(scheduler.scale_model_input(torch.ones(1, dtype=torch.float64), t0).reshape(-1)[0])
    leak = Leak(T=T, abar_T=abar_T, input_scale=input_scale)
    if warn and not leak.has_leak:
        warnings.warn(no_leak_explanation(scheduler, leak), ZeroTerminalSNRWarning, stacklevel=2)
    return leak


def no_leak_explanation(scheduler, leak: Leak) -> str:
    """Why `scheduler` leaks nothing at its first step, naming the cause: flow matching or rescale_betas_zero_snr
    (ZERO_SNR_EXPLANATION), or a schedule such as DeepFloyd IF's cosine one that is nearly pure noise at T."""
    config = getattr(scheduler, "config", {})
    if not hasattr(scheduler, "alphas_cumprod") or config.get("rescale_betas_zero_snr"):
        return ZERO_SNR_EXPLANATION
    name = config.get("beta_schedule", "this")
    cause = "its cosine schedule (squaredcos_cap_v2)" if name == "squaredcos_cap_v2" else f"its {name} schedule"
    return (f"no signal leaks at this scheduler's first step: {cause} has sqrt(abar_T) = {leak.sqrt_abar_T:.1e} at "
            f"T = {leak.T}, not rescale_betas_zero_snr; start later in the schedule (fewer steps with 'leading' "
            f"spacing: see leakstyle probe), or use Diffusion in Style (leakstyle finetune)")
