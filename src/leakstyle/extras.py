"""Optional dependencies: the core (statistics, files, ComfyUI nodes) needs torch, numpy, safetensors, pillow
and tqdm; pipelines, fine-tuning, the UI and the plots come with extras (see pyproject.toml)."""

from __future__ import annotations

from .errors import LeakstyleError

# top-level module -> the extra that installs it
EXTRA_OF = {"diffusers": "diffusers", "transformers": "diffusers", "accelerate": "diffusers", "peft": "finetune",
            "gradio": "ui", "matplotlib": "report", "skimage": "report", "datasets": "scale", "webdataset": "scale",
            "braceexpand": "scale"}


def missing_extra(error: ModuleNotFoundError) -> LeakstyleError | None:
    """The one-line error for a module that one of leakstyle's extras installs, or None for any other module."""
    module = (error.name or "").split(".")[0]
    extra = EXTRA_OF.get(module)
    if extra is None:
        return None
    return LeakstyleError(f"{module} is not installed; this needs pip install 'leakstyle[{extra}]'")
