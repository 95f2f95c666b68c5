"""PNG files that carry their generation parameters, for the CLI and the web UI alike."""

from __future__ import annotations

import io
import json


def png_bytes(image, parameters: dict) -> bytes:
    """PNG with the generation parameters in text chunks: `parameters` (A1111-style) and `leakstyle` (JSON)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    a1111 = (f"{parameters['prompt']}\nNegative prompt: {parameters.get('negative_prompt') or ''}\n"
             f"Steps: {parameters['steps']}, Sampler: {parameters['scheduler']}, CFG scale: {parameters['guidance']}, "
             f"Seed: {parameters['seed']}, Size: {parameters['width']}x{parameters['height']}, Model: {parameters['model']}")
    info.add_text("parameters", a1111)
    info.add_text("leakstyle", json.dumps(parameters, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
