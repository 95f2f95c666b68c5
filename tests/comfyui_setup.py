"""Finding and importing ComfyUI for the node-pack tests (in-process: CPU, folders in a temporary directory).

COMFYUI_PATH names a checkout; otherwise ../shared/ComfyUI beside the repository. Tests skip without one."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STAND_INS = Path(__file__).resolve().parent / "stand_ins"


def comfyui_path() -> Path | None:
    path = Path(os.environ.get("COMFYUI_PATH") or REPO.parent / "shared" / "ComfyUI")
    return path if (path / "comfy" / "samplers.py").exists() else None


def torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # a CUDA wheel beside a CPU torch fails with several error types
        sys.modules.pop("torchvision", None)
        return False
    return True


def python_path_entries(root: Path) -> list[str]:
    """What a ComfyUI process needs on its path: ComfyUI itself, and the torchvision stand-in when the real one fails."""
    entries = [str(root)]
    if not torchvision_importable():
        entries.append(str(STAND_INS))
    return entries


# Everything the tests use, imported while the torchvision stand-in is on the path (see import_comfy).
COMFY_MODULES = ("comfy.model_management", "comfy.sd", "comfy.samplers", "comfy.sample", "comfy.model_base",
                 "comfy.supported_models", "comfy.model_patcher", "comfy.utils", "comfy_extras.nodes_custom_sampler", "comfy_extras.nodes_model_advanced",
                 "folder_paths", "nodes")


def import_comfy(base_directory: Path):
    """Import ComfyUI in this process on the CPU with its folders under `base_directory`; returns folder_paths.

    A torchvision stand-in is on sys.path only while ComfyUI's modules are imported, and only when the real
    one fails; it is taken off again so that diffusers, imported by other tests, still sees no torchvision."""
    root = comfyui_path()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    stand_in = not torchvision_importable()
    for name in ("transformers", "diffusers"):  # they note torchvision's absence when first imported: before the stand-in
        if has_module(name):
            importlib.import_module(name)
    if stand_in:
        sys.path.insert(0, str(STAND_INS))
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        comfy.cli_args.args.disable_smart_memory = True
        for name in COMFY_MODULES:  # comfy.model_management needs args.cpu on a CPU torch
            importlib.import_module(name)
    finally:
        if stand_in:
            sys.path.remove(str(STAND_INS))
            for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[name]
    import folder_paths

    base_directory.mkdir(parents=True, exist_ok=True)
    folder_paths.base_path = str(base_directory)
    folder_paths.models_dir = str(base_directory / "models")
    folder_paths.output_directory = str(base_directory / "output")
    folder_paths.temp_directory = str(base_directory / "temp")
    folder_paths.input_directory = str(base_directory / "input")
    for name, (paths, extensions) in list(folder_paths.folder_names_and_paths.items()):
        folder_paths.folder_names_and_paths[name] = ([str(base_directory / "models" / Path(p).name) for p in paths], extensions)
    return folder_paths


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def tiny_unet(context_dim: int, adm: int | None = None) -> dict:
    """UNetModel arguments of a one-level model; with `adm`, SDXL's vector conditioning (num_classes "sequential",
    as ComfyUI's model detection sets it for SDXL)."""
    return {"num_classes": "sequential" if adm is not None else None,"image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1],
            "num_res_blocks": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1],
            "transformer_depth_middle": 1, "context_dim": context_dim, "use_linear_in_transformer": adm is not None,
            "use_spatial_transformer": True, "legacy": False, "adm_in_channels": adm, "use_temporal_attention": False,
            "dtype": torch.float32}


def tiny_model(family: str):
    """(ModelPatcher, positive conditioning) of a tiny random-weight model of `family`."""
    import comfy.model_base as model_base
    import comfy.model_patcher
    import comfy.supported_models as supported

    heads = {"unet_extra_config": {"num_heads": 4, "num_head_channels": -1}}
    if family == "sd1":
        config = type("TinySD15", (supported.SD15,), heads)(tiny_unet(16))
        model = model_base.BaseModel(config, model_base.ModelType.EPS)
        cond = [[torch.randn(1, 4, 16), {}]]
    elif family == "sd2-v":
        config = type("TinySD20", (supported.SD20,), heads)(tiny_unet(24))
        model = model_base.BaseModel(config, model_base.ModelType.V_PREDICTION)
        cond = [[torch.randn(1, 4, 24), {}]]
    else:
        config = type("TinySDXL", (supported.SDXL,), heads)(tiny_unet(32, adm=2816))
        model = model_base.SDXL(config, model_base.ModelType.EPS)
        cond = [[torch.randn(1, 4, 32), {"pooled_output": torch.randn(1, 1280), "width": 64, "height": 64}]]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    return patcher, cond
