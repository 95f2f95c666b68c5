"""ComfyUI entry point: this repository, put into ComfyUI/custom_nodes, loads leakstyle's node pack.

It runs the repository's own sources (src/ goes first on the path). With leakstyle installed by pip
instead, a one-line file in custom_nodes does the same:
    from leakstyle.comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
ComfyUI has imported its `folder_paths` module before it loads custom nodes. Anywhere else (pytest
imports this file because it makes the repository a package) the file defines no nodes and imports nothing.
"""

import os
import sys

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

if "folder_paths" in sys.modules:
    _SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
    if _SRC not in sys.path:
        sys.path.insert(0, _SRC)
    from leakstyle.comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402,F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
