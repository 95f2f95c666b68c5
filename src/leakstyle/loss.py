"""The denoising loss, with the noise it trains on and the timesteps it trains at as constructor arguments.

Standard fine-tuning draws eps ~ N(0, I). Diffusion in Style (Everaert et al., ICCV 2023) draws it from the
style distribution N(mu_style, Sigma_style) of the style images' latents. Nothing else differs.
Timesteps are uniform (DDPM), or drawn by log-SNR from a normal shifted toward high noise (Choi et al. 2024).
"""

from __future__ import annotations

import torch

from .distribution import StyleDistribution


class StandardNoise:
    """eps ~ N(0, I), shaped like x_0."""

    def __call__(self, x_0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(x_0.shape, generator=generator, device=x_0.device, dtype=x_0.dtype)


class StyleNoise:
    """eps_style ~ N(mu_style, Sigma_style), shaped like x_0 (the style sampled at x_0's size if it differs)."""

    def __init__(self, style: StyleDistribution):
        self.style = style
        self._on_device: dict[torch.device, StyleDistribution] = {}

    def on(self, device: torch.device) -> StyleDistribution:
        """The style with its tensors on `device`, moved once (the LF indices stay on the CPU, where they are read)."""
        if device not in self._on_device:
            s = self.style
            self._on_device[device] = StyleDistribution(
                s.kind, s.mean.to(device), s.var.to(device), s.lf_indices,
                None if s.lf_mean is None else s.lf_mean.to(device),
                None if s.lf_cov is None else s.lf_cov.to(device), dict(s.metadata))
        return self._on_device[device]

    def __call__(self, x_0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        B, _, H, W = x_0.shape
        return self.on(x_0.device).sample(B, H, W, generator=generator, device=x_0.device, dtype=x_0.dtype)


class UniformTimesteps:
    """t ~ U{0, ..., T-1}, as DDPM (and diffusers' training scripts) train."""

    def __init__(self, T: int):
        self.T = T

    def __call__(self, B: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randint(0, self.T, (B,), generator=generator, device=device)


class LogSNRTimesteps:
    """A style-friendly timestep draw (Choi et al. 2024, "Style-Friendly SNR Sampler for Style-Driven Generation").

        lambda ~ N(mean, std^2),   t = argmin_t | lambda_t - lambda |,   lambda_t = log(abar_t / (1 - abar_t))

    The log-SNR lambda_t of a 1000-step schedule spans a finite range (SD's: 7.07 at t = 0 to -5.36 at t = 999),
    so a draw beyond it trains at the end timestep it is nearest to: the nearest timestep by log-SNR is a clamp.
    `alphas_cumprod` [T] is the training schedule's abar_t.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, mean: float = -3.0, std: float = 2.0):
        if not std > 0:
            raise ValueError(f"the log-SNR std must be positive, got {std}")
        abar_t = alphas_cumprod.double()
        self.lambda_t = (abar_t.log() - (1 - abar_t).log()).float()
        self.mean, self.std = mean, std

    def __call__(self, B: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        lam = self.mean + self.std * torch.randn(B, generator=generator, device=device)
        return (self.lambda_t.to(lam.device)[None, :] - lam[:, None]).abs().argmin(dim=1)


class DenoisingLoss:
    """The DDPM training loss (Ho et al. 2020) in epsilon or v parameterisation (Salimans & Ho 2022).

        t ~ timesteps (U{0, ..., T-1} by default),  eps ~ noise,  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
        target = eps  (epsilon)   or   sqrt(abar_t) eps - sqrt(1 - abar_t) x_0  (v_prediction)
        L = mean || F(x_t, t, c)[:C] - target ||^2

    A denoiser with learned sigma (Nichol & Dhariwal 2021; PixArt, DeepFloyd IF) outputs 2C channels: the first C
    are the prediction, the last C the variance interpolation, which gets no loss here (as in diffusers' training
    scripts for such models; its output moves only through the weights it shares with the prediction).
    `noise` is StandardNoise() for ordinary fine-tuning and StyleNoise(style) for Diffusion in Style.
    `alphas_cumprod` [T] is the training schedule's abar_t, on the device x_0 will be on. `timesteps` is
    UniformTimesteps(T) (the default) or LogSNRTimesteps(alphas_cumprod, mean, std).
    """

    def __init__(self, noise, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon", timesteps=None):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction type {prediction_type!r} is not supported: use epsilon or v_prediction")
        self.noise = noise
        self.alphas_cumprod = alphas_cumprod
        self.prediction_type = prediction_type
        self.timesteps = timesteps if timesteps is not None else UniformTimesteps(len(alphas_cumprod))

    def __call__(self, denoiser, x_0: torch.Tensor, generator: torch.Generator | None = None, **cond) -> torch.Tensor:
        """x_0 [B, C, H, W] in model units; `denoiser(x_t, timestep=t, **cond)` is the UNet or transformer, `cond`
        its conditioning (encoder_hidden_states=..., SDXL's or PixArt's added_cond_kwargs=..., ...). Returns a scalar."""
        B, C = x_0.shape[:2]
        t = self.timesteps(B, generator, x_0.device)
        eps = self.noise(x_0, generator)
        abar_t = self.alphas_cumprod[t].view(B, 1, 1, 1).to(x_0.dtype)
        x_t = abar_t.sqrt() * x_0 + (1 - abar_t).sqrt() * eps
        target = eps if self.prediction_type == "epsilon" else abar_t.sqrt() * eps - (1 - abar_t).sqrt() * x_0
        F_x = denoiser(x_t, timestep=t, **cond).sample
        if F_x.shape[1] == 2 * C:  # learned sigma: the prediction is the first C channels
            F_x = F_x[:, :C]
        elif F_x.shape[1] != C:
            raise ValueError(f"the denoiser outputs {F_x.shape[1]} channels for {C}-channel latents; expected {C} or {2 * C}")
        return (F_x.float() - target.float()).square().mean()
