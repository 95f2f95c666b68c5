"""Tiny random-weight diffusers pipelines built in code, for tests and benchmarks (no downloads).

Each builder writes a pipeline folder with `save_pretrained`, ready for `from_pretrained`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SD15_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                     steps_offset=1)


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def tiny_tokenizer(folder: Path, max_length: int = 16):
    """A CLIPTokenizer with a character-level vocabulary (no merges): 514 tokens."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)


def tiny_text_encoder(projection: bool = False, hidden: int = 32, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=514, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, projection_dim=hidden,
                            bos_token_id=512, eos_token_id=513, pad_token_id=513)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def tiny_vae(seed: int = 0, scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, sample_size=32, scaling_factor=scaling_factor)


def tiny_sd(folder: str | Path, prediction_type: str = "epsilon", seed: int = 0, sample_size: int = 16) -> Path:
    """A Stable-Diffusion-1.x-shaped pipeline (SD 2.x-style with prediction_type="v_prediction") at 32 px."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=sample_size, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=2, norm_num_groups=4)
    scheduler = DDIMScheduler(**SD15_SCHEDULE, clip_sample=False, set_alpha_to_one=False, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=tiny_vae(seed), text_encoder=tiny_text_encoder(seed=seed),
                                   tokenizer=tiny_tokenizer(folder / "_tok"), unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def tiny_sdxl(folder: str | Path, seed: int = 0) -> Path:
    """A Stable-Diffusion-XL-shaped pipeline (two text encoders, text_time conditioning) at 32 px."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
                                cross_attention_dim=64, norm_num_groups=4)
    scheduler = EulerDiscreteScheduler(**SD15_SCHEDULE, timestep_spacing="leading")
    tokenizer = tiny_tokenizer(folder / "_tok")
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(seed, scaling_factor=0.13025), text_encoder=tiny_text_encoder(seed=seed),
                                     text_encoder_2=tiny_text_encoder(projection=True, seed=seed + 1), tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(folder)
    return folder


def tiny_pixel(folder: str | Path, seed: int = 0, sample_size: int = 16) -> Path:
    """An unconditional pixel-space model: UNet2DModel + DDPM scheduler (SD 1.5's schedule), 3 x 16 x 16."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=sample_size, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    scheduler = DDPMScheduler(**SD15_SCHEDULE, clip_sample=False)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder
