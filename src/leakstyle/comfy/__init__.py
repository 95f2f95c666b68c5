"""leakstyle's ComfyUI node pack: signal-leak sampling with styles fitted from images and colours.

Runs inside ComfyUI (needs `comfy` importable). `NODE_CLASS_MAPPINGS` and `NODE_DISPLAY_NAME_MAPPINGS`
are what ComfyUI reads; the nodes are in nodes.py, the arithmetic in sampling.py.
"""

from . import store
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

store.register()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
