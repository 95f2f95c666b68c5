"""PNG files that carry their generation parameters, for the CLI and the web UI alike.

Two text chunks: `parameters`, in the format of A1111's PNG Info (which A1111, ComfyUI add-ons and image
viewers read), and `leakstyle`, the same parameters as JSON.
"""

from __future__ import annotations

import io
import json
from pathlib import PurePath

# leakstyle's scheduler names -> (A1111's sampler name, A1111's "Schedule type" or None)
A1111_SAMPLERS = {
    "ddim": ("DDIM", None),
    "pndm": ("PLMS", None),
    "ddpm": ("DDPM", None),
    "euler": ("Euler", None),
    "euler-a": ("Euler a", None),
    "lms": ("LMS", None),
    "heun": ("Heun", None),
    "dpm++2m": ("DPM++ 2M", None),
    "dpm++2m-karras": ("DPM++ 2M", "Karras"),
    "unipc": ("UniPC", None),
    "lcm": ("LCM", None),
}
HASH_LENGTH = 10  # A1111 writes short hashes: the first 10 hex digits of the sha256


def quote(value) -> str:
    """A value as A1111 writes it in a `Key: value` list: JSON-quoted when it holds a comma, colon or newline."""
    text = str(value)
    return json.dumps(text) if any(c in text for c in ",:\n\"") else text


def leak_fields(parameters: dict) -> dict:
    """The leak's settings as extra A1111 fields, so that a leak image and its pure-noise baseline read apart."""
    if parameters.get("baseline"):
        return {"Leak": "none (pure-noise baseline)"}
    fields = {}
    if parameters.get("style"):
        fields["Leak style"] = PurePath(str(parameters["style"])).name
        if parameters.get("style_sha256"):
            fields["Leak style hash"] = parameters["style_sha256"][:HASH_LENGTH]
    if parameters.get("color"):
        fields["Leak colour"] = parameters["color"]
        if parameters.get("color_mode"):
            fields["Leak colour mode"] = parameters["color_mode"]
        if parameters.get("brightness") is not None:
            fields["Leak brightness"] = parameters["brightness"]
    if fields and parameters.get("strength") is not None:
        fields["Leak strength"] = parameters["strength"]
    return fields or {"Leak": "none (pure noise)"}


def a1111_parameters(parameters: dict) -> str:
    """The `parameters` text of A1111's PNG Info: prompt, `Negative prompt:` line (only when there is one), then
    `Key: value` fields with A1111's sampler names, and the leak's settings."""
    sampler, schedule_type = A1111_SAMPLERS.get(parameters["scheduler"], (parameters["scheduler"], None))
    fields = {"Steps": parameters["steps"], "Sampler": sampler}
    if schedule_type:
        fields["Schedule type"] = schedule_type
    fields.update({"CFG scale": parameters["guidance"], "Seed": parameters["seed"],
                   "Size": f"{parameters['width']}x{parameters['height']}", "Model": parameters["model"]})
    if parameters.get("noise") == "style":
        fields["Noise"] = "style (Diffusion in Style)"
    fields.update(leak_fields(parameters))
    lines = [parameters.get("prompt") or ""]
    if parameters.get("negative_prompt"):
        lines.append(f"Negative prompt: {parameters['negative_prompt']}")
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in fields.items()))
    return "\n".join(lines)


def png_bytes(image, parameters: dict) -> bytes:
    """PNG with the generation parameters in text chunks: `parameters` (A1111-style) and `leakstyle` (JSON).

    `parameters` holds prompt, negative_prompt, steps, scheduler (leakstyle's name), guidance, seed, width, height,
    model, and where known noise, baseline, style (file name), style_sha256, color, color_mode ("calibrated" or
    "raw"), brightness (the L* asked for) and strength."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", a1111_parameters(parameters))
    info.add_text("leakstyle", json.dumps(parameters, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
