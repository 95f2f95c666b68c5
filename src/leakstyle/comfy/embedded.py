"""The embedded miniature model (src/leakstyle/models/mini-sd) as ComfyUI's MODEL, CLIP and VAE.

ComfyUI's checkpoint loaders only know full-size architectures, so the weights are mapped onto
ComfyUI's own classes here: its UNetModel inside a BaseModel (EPS, SD's scaled-linear schedule), its
SD1 CLIP text encoder and tokenizer with the miniature config, and its KL autoencoder. Two facts of
the miniature model differ from ComfyUI's defaults and are stated rather than guessed:
- its GroupNorm layers have 8 (UNet) and 4 (VAE) groups where ComfyUI's layer code asks for 32, so the
  layers are built with an operations class whose GroupNorm takes the model's group count (the UNet takes it as
  an argument; the VAE's layers read a module global, see vae_layers_with_groups);
- its VAE has three levels, so one latent element spans 4 pixels, not 8 (`VAE.downscale_ratio = 4`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import threading

import torch
from safetensors.torch import load_file

from ..errors import LeakstyleError
from ..loading import EMBEDDED_MODEL, EMBEDDED_NAME


def read_config(part: str) -> dict:
    path = EMBEDDED_MODEL / part / "config.json"
    if not path.exists():
        raise LeakstyleError(f"the embedded model is not installed at {EMBEDDED_MODEL}; reinstall leakstyle")
    return json.loads(path.read_text())


def read_weights(part: str, name: str) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(EMBEDDED_MODEL / part / name)).items()}


def group_norm_operations(base, num_groups: int):
    """ComfyUI's operations class `base` with every GroupNorm built for `num_groups` groups."""

    class GroupNorm(base.GroupNorm):
        def __init__(self, *args, **kwargs):  # ComfyUI passes (groups, channels, ...) or num_groups=, num_channels=
            kwargs.pop("num_groups", None)
            if "num_channels" not in kwargs:
                args = args[1:]
            super().__init__(num_groups, *args, **kwargs)

    return type(f"{base.__name__}GroupNorm{num_groups}", (base,), {"GroupNorm": GroupNorm})


_building = threading.local()  # .groups: the GroupNorm group count while this thread builds the embedded VAE
_build_lock = threading.Lock()


def thread_group_norm_operations(base):
    """ComfyUI's operations class `base` whose GroupNorm takes the group count of the embedded VAE being built in
    this thread, and is `base`'s own GroupNorm (the groups asked for) anywhere else."""

    class GroupNorm(base.GroupNorm):
        def __init__(self, *args, **kwargs):
            groups = getattr(_building, "groups", None)
            if groups is not None:
                kwargs.pop("num_groups", None)
                if "num_channels" not in kwargs:
                    args = args[1:]
                args = (groups, *args)
            super().__init__(*args, **kwargs)

    return type(f"{base.__name__}ThreadGroups", (base,), {"GroupNorm": GroupNorm})


@contextlib.contextmanager
def vae_layers_with_groups(num_groups: int):
    """While the block builds a VAE, ComfyUI's VAE layers make GroupNorms of `num_groups` groups in this thread.

    Why a module global is swapped: the Encoder and Decoder of comfy/ldm/modules/diffusionmodules/model.py build
    their norms with the module-level Normalize(), which hard-codes 32 groups and reads the module global `ops`;
    neither class takes a norm or an operations argument, and 32 groups cannot even be constructed on the
    miniature VAE's 16 channels, so building with ComfyUI's norms and replacing them after is not possible either.
    Safe as far as it can be: the swapped class behaves as ComfyUI's own in every other thread (the group count
    is thread-local), one build at a time (a lock), and `ops` is restored in `finally`."""
    import comfy.ldm.modules.diffusionmodules.model as vae_layers

    with _build_lock:
        own = vae_layers.ops
        vae_layers.ops = thread_group_norm_operations(own)
        _building.groups = num_groups
        try:
            yield
        finally:
            _building.groups = None
            vae_layers.ops = own


def unet_config(config: dict) -> dict:
    """ComfyUI's UNetModel arguments for a diffusers UNet2DConditionModel config of SD 1.x layout."""
    levels = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    base = config["block_out_channels"][0]
    down_attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    up_attn = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    heads = config["num_attention_heads"] or config["attention_head_dim"]  # diffusers' naming: the head count
    return {
        "image_size": config["sample_size"], "in_channels": config["in_channels"], "out_channels": config["out_channels"],
        "model_channels": base, "channel_mult": [c // base for c in config["block_out_channels"]],
        "num_res_blocks": [layers] * levels,
        "transformer_depth": [int(a) for a in down_attn for _ in range(layers)],
        "transformer_depth_output": [int(a) for a in reversed(up_attn) for _ in range(layers + 1)],  # popped from the end
        "transformer_depth_middle": 1, "context_dim": config["cross_attention_dim"], "num_heads": heads,
        "num_head_channels": -1, "use_linear_in_transformer": config["use_linear_projection"],
        "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None, "use_temporal_attention": False,
        "dtype": torch.float32,
    }


def build_model():
    """MODEL: ComfyUI's BaseModel (EPS, scaled-linear betas 0.00085..0.012) holding the miniature UNet."""
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models_base
    import comfy.utils

    config = read_config("unet")
    scheduler = json.loads((EMBEDDED_MODEL / "scheduler" / "scheduler_config.json").read_text())
    if scheduler.get("beta_schedule") != "scaled_linear" or scheduler.get("prediction_type") != "epsilon":
        raise LeakstyleError("the embedded model's schedule is not SD's scaled-linear epsilon schedule; reinstall leakstyle")
    vae = read_config("vae")

    class LatentFormat(comfy.latent_formats.LatentFormat):
        scale_factor = float(vae["scaling_factor"])
        latent_channels = config["in_channels"]

    class MiniSD(comfy.supported_models_base.BASE):
        unet_extra_config = {}
        latent_format = LatentFormat
        sampling_settings = {"beta_schedule": "linear", "linear_start": scheduler["beta_start"],
                             "linear_end": scheduler["beta_end"], "timesteps": scheduler["num_train_timesteps"]}
        custom_operations = group_norm_operations(comfy.ops.disable_weight_init, config["norm_num_groups"])
        supported_inference_dtypes = [torch.float32]

    unet = unet_config(config)
    model_config = MiniSD(unet)
    device = comfy.model_management.get_torch_device()
    model = comfy.model_base.BaseModel(model_config, comfy.model_base.ModelType.EPS, device=device)
    diffusers_to_comfy = comfy.utils.unet_to_diffusers(unet)
    weights = read_weights("unet", "diffusion_pytorch_model.safetensors")
    state = {comfy_key: weights[key] for key, comfy_key in diffusers_to_comfy.items() if key in weights}
    missing, unexpected = model.diffusion_model.load_state_dict(state, strict=False)
    if missing or len(state) != len(weights):
        raise LeakstyleError(f"the embedded UNet's weights do not map onto ComfyUI's UNetModel ({len(missing)} missing); "
                             f"this ComfyUI version is not supported")
    model.eval()
    model.leakstyle_name = EMBEDDED_NAME  # what style files fitted for it record (see fitting.model_name)
    return comfy.model_patcher.ModelPatcher(model, load_device=device,
                                            offload_device=comfy.model_management.unet_offload_device())


def build_clip():
    """CLIP: ComfyUI's SD1 text encoder and tokenizer, sized like the miniature model's (64 wide, 3 layers)."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    config = read_config("text_encoder")
    width = config["hidden_size"]
    text_config = {k: config[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                                          "hidden_act", "vocab_size", "max_position_embeddings", "layer_norm_eps",
                                          "bos_token_id", "eos_token_id", "projection_dim")}
    text_config["projection_dim"] = config.get("projection_dim", width)
    clip_model = functools.partial(comfy.sd1_clip.SDClipModel, textmodel_json_config=text_config)
    tokenizer = functools.partial(comfy.sd1_clip.SDTokenizer, tokenizer_path=str(EMBEDDED_MODEL / "tokenizer"),
                                  embedding_size=width)
    target = comfy.supported_models_base.ClipTarget(
        functools.partial(comfy.sd1_clip.SD1Tokenizer, tokenizer=tokenizer),
        functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=clip_model))
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32})
    weights = {k if k.startswith("text_model.") else f"text_model.{k}": v
               for k, v in read_weights("text_encoder", "model.safetensors").items()}
    # A plain CLIPTextModel has no projection; SD 1.x models do not use the pooled output it would project.
    weights["text_projection.weight"] = torch.eye(width)
    missing, _ = clip.cond_stage_model.clip_l.transformer.load_state_dict(weights, strict=False)
    if missing:
        raise LeakstyleError(f"the embedded text encoder's weights do not map onto ComfyUI's CLIP ({len(missing)} missing); "
                             f"this ComfyUI version is not supported")
    return clip


VAE_NAMES = {"conv_norm_out": "norm_out", "conv_shortcut": "nin_shortcut", "group_norm": "norm", "to_q": "q",
             "to_k": "k", "to_v": "v", "to_out.0": "proj_out", "downsamplers.0": "downsample", "upsamplers.0": "upsample",
             "mid_block.resnets.0": "mid.block_1", "mid_block.resnets.1": "mid.block_2", "mid_block.attentions.0": "mid.attn_1"}


def vae_key(key: str, levels: int) -> str:
    """A diffusers AutoencoderKL weight name -> ComfyUI's (LDM) name. Decoder levels count the other way round."""
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.", r"encoder.down.\1.", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.(resnets\.)?",
                 lambda m: f"decoder.up.{levels - 1 - int(m[1])}.{'block.' if m[2] else ''}", key)
    for diffusers, comfy in VAE_NAMES.items():
        key = key.replace(f".{diffusers}.", f".{comfy}.")
    return key


def vae_weights(levels: int) -> dict[str, torch.Tensor]:
    """The embedded VAE's weights under ComfyUI's names; attention projections become 1x1 convolutions."""
    weights = {}
    for key, value in read_weights("vae", "diffusion_pytorch_model.safetensors").items():
        key = vae_key(key, levels)
        if re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", key) and value.ndim == 2:
            value = value[:, :, None, None]
        weights[key] = value
    return weights


def build_vae():
    """VAE: ComfyUI's KL autoencoder with the miniature layout (16/32/64 channels, 4 GroupNorm groups, factor 4)."""
    import comfy.sd

    config = read_config("vae")
    base = config["block_out_channels"][0]
    ddconfig = {"double_z": True, "z_channels": config["latent_channels"], "resolution": config["sample_size"],
                "in_channels": config["in_channels"], "out_ch": config["out_channels"], "ch": base,
                "ch_mult": [c // base for c in config["block_out_channels"]], "num_res_blocks": config["layers_per_block"],
                "attn_resolutions": [], "dropout": 0.0}
    weights = vae_weights(len(config["block_out_channels"]))
    with vae_layers_with_groups(config["norm_num_groups"]):
        vae = comfy.sd.VAE(sd=weights, config={"params": {"ddconfig": ddconfig, "embed_dim": config["latent_channels"]}},
                           dtype=torch.float32)
    missing, unexpected = vae.first_stage_model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise LeakstyleError(f"the embedded VAE's weights do not map onto ComfyUI's autoencoder ({len(missing)} missing, "
                             f"{len(unexpected)} unknown); this ComfyUI version is not supported")
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    vae.downscale_ratio = vae.upscale_ratio = factor
    return vae


@functools.lru_cache(maxsize=1)
def embedded_model():
    """(MODEL, CLIP, VAE) of the embedded model, built once per process."""
    return build_model(), build_clip(), build_vae()
