"""Loading diffusers pipelines (local folders, hub ids, the embedded model) onto a device this torch can use."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .devices import resolve_device
from .errors import LeakstyleError

EMBEDDED_MODEL = Path(__file__).parent / "models" / "mini-sd"
EMBEDDED_NAME = "leakstyle/mini-sd"  # how files and PNGs name the embedded model, whatever its install path


def load_diffusers(model: str | os.PathLike | None = None, device: str | None = None, dtype: torch.dtype | None = None):
    """A diffusers pipeline from a local folder or a hub id (None: the embedded model); no fine-tune record is read.

    On CUDA the default dtype is float16, elsewhere float32. Raises LeakstyleError with one line when the device
    cannot be used, the folder is missing or not a diffusers pipeline, or the hub cannot be reached."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    device = resolve_device(device)
    if model is None:
        if not (EMBEDDED_MODEL / "model_index.json").exists():
            raise LeakstyleError(f"the embedded model is not installed at {EMBEDDED_MODEL}; pass --model FOLDER_OR_HUB_ID")
        model = EMBEDDED_MODEL
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    local = Path(model)
    if local.exists():
        if not (local / "model_index.json").exists():
            raise LeakstyleError(f"{local} is not a diffusers pipeline folder (no model_index.json)")
    elif str(model).startswith((".", "/", "~")) or str(model).count("/") != 1:
        raise LeakstyleError(f"no model folder {model}; give a local diffusers folder or a hub id like org/name")
    try:
        pipe = DiffusionPipeline.from_pretrained(str(model), dtype=dtype)
    except Exception as e:  # diffusers/hub raise many types; the user needs the one line
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "not fully cached locally" in first_line or "outgoing traffic has been disabled" in first_line:
            raise LeakstyleError(f"cannot load model {model}: it is not downloaded yet and the hub cannot be reached; "
                                 f"connect to the internet once to download it, or pass a local diffusers folder") from None
        # diffusers repeats "Cannot load model M:" and points to a stack trace the user never sees
        first_line = first_line.removeprefix(f"Cannot load model {model}: ")
        first_line = first_line.split(" Please check out the root cause")[0]
        raise LeakstyleError(f"cannot load model {model}: {first_line}") from None
    if (getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is None) or not hasattr(pipe, "scheduler"):
        raise LeakstyleError(f"{model} has no UNet or transformer and scheduler; leakstyle needs a diffusion pipeline")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def read_model_index(model: str | os.PathLike | None = None) -> dict | None:
    """The model_index.json of a local pipeline folder (None: the embedded model); None for hub ids and folders
    without a readable one (load_diffusers then says what is wrong)."""
    try:
        index = json.loads(((EMBEDDED_MODEL if model is None else Path(model)) / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) else None


def read_scheduler(model: str | os.PathLike | None = None):
    """The scheduler of a local pipeline folder (None: the embedded model) from its config alone, without loading
    the model; None where it cannot be read this way (hub ids; load_diffusers then reports what is wrong)."""
    try:
        _, class_name = read_model_index(model)["scheduler"]
        import diffusers

        return getattr(diffusers, class_name).from_pretrained(str(EMBEDDED_MODEL if model is None else model),
                                                              subfolder="scheduler")
    except Exception:  # not a readable local pipeline folder: nothing to check before the full load
        return None
