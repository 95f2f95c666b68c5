"""A `leakstyle finetune` output folder as inference sees it: its record (finetune.json), loading the model it
describes, and the initial latents of a model fine-tuned with Diffusion in Style.

Below both finetune.py (which writes such folders) and pipeline.py (which recognises them), so that neither imports
the other.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from . import __version__
from .color import check_color_mode, noise_dc_correction
from .denoiser import denoiser_of
from .distribution import StyleDistribution
from .errors import LeakstyleError
from .files import load, write_atomic
from .leak import check_leak_inputs, latent_shape, x_T
from .loading import load_diffusers
from .schedule import ZERO_SNR_FINETUNED_EXPLANATION, ZeroTerminalSNRWarning, leak_at_first_step

RECORD = "finetune.json"
STYLE_FILE = "style.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' format, for pipelines with load_lora_weights
PEFT_LORA_FOLDER = "transformer_lora"  # peft's adapter folder, for PixArt (diffusers has no LoRA loader for it)
FORMAT = "leakstyle-finetune"


def read_record(folder: Path) -> dict | None:
    """The finetune.json of `folder`, None when there is none; a LeakstyleError when it is not ours."""
    file = Path(folder) / RECORD
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError):
        raise LeakstyleError(f"{file} is not readable JSON; it is not a leakstyle finetune record") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("options"), dict):
        raise LeakstyleError(f"{file} is not a leakstyle finetune record")
    return record


def write_record(folder: Path, options, status: str, step: int, base_unet_sha256: str, lora_file: str = LORA_FILE) -> None:
    """Write finetune.json: what was trained (`options`, a finetune.Options), how far (`status`, `step`), from what;
    `lora_file` is where a LoRA fine-tune's adapter goes (LORA_FILE or PEFT_LORA_FOLDER)."""
    record = {"format": FORMAT, "format_version": 1, "status": status, "step": step, "base_model": options.model,
              "base_unet_sha256": base_unet_sha256,
              "method": "lora" if options.lora else "full", "noise": options.noise, "style_file": STYLE_FILE,
              "lora_file": lora_file if options.lora else None, "options": asdict(options),
              "leakstyle_version": __version__}
    write_atomic(Path(folder) / RECORD, (json.dumps(record, indent=2) + "\n").encode(), force=True)


def load_finetuned(folder: Path, record: dict, device: str | None = None, dtype: torch.dtype | None = None):
    """The pipeline a `leakstyle finetune` folder describes, with `pipe.leakstyle_noise` set to the distribution
    its initial latents come from (the style for noise="style", None = N(0, I) for noise="standard")."""
    if record.get("status") != "done":
        raise LeakstyleError(f"the fine-tune in {folder} has not finished (step {record.get('step')} of "
                             f"{record['options'].get('steps')}); continue it with leakstyle finetune ... --resume")
    if record.get("method") == "lora" and record.get("lora_file") == PEFT_LORA_FOLDER:
        pipe = load_diffusers(record.get("base_model"), device=device, dtype=dtype)
        from peft import PeftModel

        try:  # the adapter merged into the transformer: a plain PixArt pipeline again
            pipe.transformer = PeftModel.from_pretrained(pipe.transformer, str(Path(folder) / PEFT_LORA_FOLDER)).merge_and_unload()
        except Exception as e:  # peft raises many types for a bad or mismatched adapter
            raise LeakstyleError(f"cannot load the LoRA adapter in {Path(folder) / PEFT_LORA_FOLDER}: "
                                 f"{str(e).strip().splitlines()[0]}") from None
        pipe.leakstyle_lora = True
    elif record.get("method") == "lora":
        from diffusers.utils import logging as diffusers_logging

        pipe = load_diffusers(record.get("base_model"), device=device, dtype=dtype)
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # not the note that the text encoder has no LoRA keys (it has none)
        try:
            pipe.load_lora_weights(str(folder), weight_name=record.get("lora_file") or LORA_FILE)
        except Exception as e:  # diffusers/peft raise many types for a bad or mismatched file
            raise LeakstyleError(f"cannot load the LoRA weights in {folder}: {str(e).strip().splitlines()[0]}") from None
        finally:
            diffusers_logging.set_verbosity(verbosity)
        pipe.leakstyle_lora = True
    else:
        pipe = load_diffusers(folder, device=device, dtype=dtype)
    pipe.leakstyle_noise = load(Path(folder) / (record.get("style_file") or STYLE_FILE)) if record.get("noise") == "style" else None
    return pipe


def finetuned_folder_record(model: str | os.PathLike | None) -> dict | None:
    """The record of `model` when it is a fine-tune folder, else None (hub ids, plain diffusers folders)."""
    return read_record(Path(model)) if model is not None and Path(model).is_dir() else None


def style_initial_latents(pipe, noise: StyleDistribution, style: StyleDistribution | None = None, batch_size: int = 1,
                          height: int | None = None, width: int | None = None, num_inference_steps: int = 50,
                          generator: torch.Generator | None = None, color: torch.Tensor | None = None,
                          strength: float = 1.0, device=None, dtype=torch.float32,
                          color_mode: str = "calibrated") -> torch.Tensor:
    """`latents=` for a model fine-tuned with Diffusion in Style: the UNet's first input is x_T = eps_style.

    eps_style ~ N(mu_style, Sigma_style) = `noise`, drawn first from `generator`. With a leak `style` or `color`
    (see leak.initial_latents) x_T = sqrt(abar_T) x_tilde + sqrt(1 - abar_T) eps_style instead: the leak of
    x_tilde on top of the model's own noise. Returns x_T over the scheduler's input scale, [B, C, h, w].
    """
    C, h, w = latent_shape(pipe, height, width)
    if noise.channels != C:
        raise LeakstyleError(f"the fine-tune's style has {noise.channels} channels but the model's latents have {C}")
    check_leak_inputs(style, color, strength, C)
    leak = leak_at_first_step(pipe.scheduler, num_inference_steps, warn=False)
    device = device or denoiser_of(pipe).device
    eps_style = noise.sample(batch_size, h, w, generator=generator, device=device, dtype=dtype)
    if style is None and color is None:
        return eps_style / leak.input_scale
    if not leak.has_leak:
        warnings.warn(ZERO_SNR_FINETUNED_EXPLANATION, ZeroTerminalSNRWarning, stacklevel=2)
        return eps_style / leak.input_scale
    if color is not None:
        base = style if style is not None else StyleDistribution.flat(torch.zeros(C), h, w)
        style = base.with_color(torch.as_tensor(color, dtype=torch.float32), strength)
    x_tilde = style.sample(batch_size, h, w, generator=generator, device=device, dtype=dtype)
    if color is not None and check_color_mode(color_mode) == "calibrated":  # cancel eps_style's DC about its mean
        x_tilde += noise_dc_correction(eps_style, leak, strength, noise.channel_means())
    return x_T(x_tilde, eps_style, leak) / leak.input_scale
