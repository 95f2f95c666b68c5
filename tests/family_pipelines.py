"""Tiny random-weight pipelines of every model family, built in memory (no downloads), with their published schedules.

The tokenizers are built offline: CLIP's character-level one from leakstyle.testing, a T5 (Unigram) tokenizer from
a vocabulary list, a BERT WordPiece tokenizer from a vocab file. Each builder takes a seed and returns a pipeline
on the CPU in float32; the scheduler configs are the ones the families publish (model cards' scheduler_config.json).
"""

from pathlib import Path

import torch

from leakstyle import testing

# The published schedules (scheduler_config.json of each family's main checkpoint), as far as they decide the leak.
SD = dict(cls="DDIMScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          num_train_timesteps=1000, steps_offset=1, clip_sample=False, set_alpha_to_one=False)
ANIMATEDIFF = dict(cls="DDIMScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                   num_train_timesteps=1000, steps_offset=1, clip_sample=False, set_alpha_to_one=False,
                   timestep_spacing="linspace")
HUNYUAN_DIT = dict(cls="DDPMScheduler", beta_start=0.00085, beta_end=0.018, beta_schedule="scaled_linear",
                   num_train_timesteps=1000, steps_offset=1, clip_sample=False, prediction_type="v_prediction",
                   variance_type="fixed_small")
PIXART = dict(cls="DPMSolverMultistepScheduler", beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
              num_train_timesteps=1000, prediction_type="epsilon", solver_order=2, algorithm_type="dpmsolver++")
SVD = dict(cls="EulerDiscreteScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
           num_train_timesteps=1000, interpolation_type="linear", prediction_type="v_prediction", sigma_max=700.0,
           sigma_min=0.002, steps_offset=1, timestep_spacing="leading", timestep_type="continuous",
           use_karras_sigmas=True)
DEEPFLOYD_IF = dict(cls="DDPMScheduler", beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000,
                    clip_sample=True, thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5,
                    prediction_type="epsilon", variance_type="learned_range")
COGVIDEOX = dict(cls="CogVideoXDDIMScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 num_train_timesteps=1000, clip_sample=False, prediction_type="v_prediction",
                 rescale_betas_zero_snr=True, set_alpha_to_one=True, snr_shift_scale=3.0, steps_offset=0,
                 timestep_spacing="trailing")
SD3 = dict(cls="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=3.0)
FLUX = dict(cls="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
            base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def scheduler(config: dict):
    import diffusers

    config = dict(config)
    return getattr(diffusers, config.pop("cls"))(**config)


def t5_tokenizer(max_length: int = 16):
    """A T5 (Unigram) tokenizer over lowercase letters and space, built from a vocabulary list."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in "abcdefghijklmnopqrstuvwxyz▁"]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def t5_encoder(d_model: int = 32, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=32, d_model=d_model, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def bert_tokenizer(folder: Path):
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz")
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"), model_max_length=77)


def bert_encoder(hidden: int = 32, seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=31, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=37, max_position_embeddings=80))


def vae(levels: int = 2, seed: int = 0, cls_name: str = "AutoencoderKL"):
    """A VAE with `levels` resolution levels (factor 2^(levels-1)), 4 latent channels."""
    import diffusers

    torch.manual_seed(seed)
    kwargs = dict(block_out_channels=(8,) * levels, in_channels=3, out_channels=3, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * levels, layers_per_block=1)
    if cls_name == "AutoencoderKL":
        kwargs.update(up_block_types=("UpDecoderBlock2D",) * levels, norm_num_groups=4, sample_size=32)
    return getattr(diffusers, cls_name)(**kwargs)


def pixart(sigma: bool = False, seed: int = 0):
    """PixArt-alpha (or -Sigma) shaped: a 1-layer PixArtTransformer2DModel on 8 x 8 latents (16 px images)."""
    from diffusers import PixArtAlphaPipeline, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=2, caption_channels=32, in_channels=4,
                                           cross_attention_dim=16, out_channels=8, norm_num_groups=4,
                                           use_additional_conditions=False)
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    return cls(tokenizer=t5_tokenizer(), text_encoder=t5_encoder(seed=seed), vae=vae(seed=seed),
               transformer=transformer, scheduler=scheduler(PIXART)).to("cpu")


def hunyuan_dit(folder: Path, seed: int = 0):
    """Hunyuan-DiT shaped: BERT + T5 text encoders, a 1-layer HunyuanDiT2DModel; its rotary embedding assumes a
    VAE factor of 8, so the VAE has four levels (64 px images, 8 x 8 latents)."""
    from diffusers import HunyuanDiT2DModel, HunyuanDiTPipeline

    torch.manual_seed(seed)
    transformer = HunyuanDiT2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                    num_attention_heads=2, cross_attention_dim=32, cross_attention_dim_t5=32,
                                    pooled_projection_dim=16, hidden_size=16, text_len=77, text_len_t5=256)
    return HunyuanDiTPipeline(vae=vae(levels=4, seed=seed), text_encoder=bert_encoder(seed=seed),
                              tokenizer=bert_tokenizer(folder), transformer=transformer,
                              scheduler=scheduler(HUNYUAN_DIT), safety_checker=None, feature_extractor=None,
                              requires_safety_checker=False, text_encoder_2=t5_encoder(seed=seed + 1),
                              tokenizer_2=t5_tokenizer()).to("cpu")


def sd_unet(seed: int = 0, in_channels: int = 4, out_channels: int = 4, cross_attention_dim: int = 32,
            sample_size: int = 8):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=sample_size, in_channels=in_channels,
                                out_channels=out_channels, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=cross_attention_dim, attention_head_dim=2, norm_num_groups=4)


def animatediff(folder: Path, seed: int = 0):
    """AnimateDiff shaped: a tiny SD UNet with a motion adapter (UNetMotionModel), latents [B, C, F, 8, 8]."""
    from diffusers import AnimateDiffPipeline, MotionAdapter, UNetMotionModel

    torch.manual_seed(seed)
    adapter = MotionAdapter(block_out_channels=(8, 16), motion_layers_per_block=1, motion_num_attention_heads=2,
                            motion_norm_num_groups=4, motion_max_seq_length=8)
    unet = UNetMotionModel.from_unet2d(sd_unet(seed), adapter)
    return AnimateDiffPipeline(vae=vae(seed=seed), text_encoder=testing.tiny_text_encoder(seed=seed),
                               tokenizer=testing.tiny_tokenizer(folder), unet=unet, motion_adapter=adapter,
                               scheduler=scheduler(ANIMATEDIFF)).to("cpu")


def text_to_video(folder: Path, seed: int = 0):
    """TextToVideoSDPipeline shaped (ModelScope): a tiny UNet3DConditionModel, latents [B, C, F, 8, 8]."""
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    torch.manual_seed(seed)
    unet = UNet3DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=4)
    return TextToVideoSDPipeline(vae=vae(seed=seed), text_encoder=testing.tiny_text_encoder(seed=seed),
                                 tokenizer=testing.tiny_tokenizer(folder), unet=unet, scheduler=scheduler(SD)).to("cpu")


def stable_video_diffusion(seed: int = 0):
    """Stable Video Diffusion shaped: UNetSpatioTemporalConditionModel (8 input channels: 4 of x_T, 4 of the
    conditioning image), a temporal-decoder VAE, a CLIP vision encoder; EDM Euler with sigma_max 700."""
    from diffusers import (AutoencoderKLTemporalDecoder, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8,
                                            in_channels=8, out_channels=4, num_frames=3,
                                            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                                            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                                            cross_attention_dim=16, num_attention_heads=(2, 4),
                                            projection_class_embeddings_input_dim=3 * 8, addition_time_embed_dim=8)
    torch.manual_seed(seed)
    autoencoder = AutoencoderKLTemporalDecoder(block_out_channels=(32, 32), in_channels=3, out_channels=3,
                                               down_block_types=("DownEncoderBlock2D",) * 2, latent_channels=4,
                                               layers_per_block=1)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, projection_dim=16, num_hidden_layers=1,
                                                                   num_attention_heads=2, image_size=224, patch_size=32,
                                                                   intermediate_size=37))
    processor = CLIPImageProcessor(crop_size=16, size={"shortest_edge": 16})
    return StableVideoDiffusionPipeline(vae=autoencoder, image_encoder=image_encoder, unet=unet,
                                        scheduler=scheduler(SVD), feature_extractor=processor).to("cpu")


def deepfloyd_if(seed: int = 0):
    """DeepFloyd IF stage I shaped: a pixel-space UNet2DConditionModel (3 channels in, 6 out: learned variance) on
    16 x 16 pixels, a T5 text encoder, the cosine schedule."""
    from diffusers import IFPipeline

    unet = sd_unet(seed, in_channels=3, out_channels=6, sample_size=16)
    return IFPipeline(tokenizer=t5_tokenizer(), text_encoder=t5_encoder(seed=seed), unet=unet,
                      scheduler=scheduler(DEEPFLOYD_IF), safety_checker=None, feature_extractor=None, watermarker=None,
                      requires_safety_checker=False).to("cpu")


def cogvideox(seed: int = 0):
    """CogVideoX shaped (zero terminal SNR): a 1-layer CogVideoXTransformer3DModel, latents [B, F, C, h, w]."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                              out_channels=4, time_embed_dim=8, text_embed_dim=32, num_layers=1,
                                              sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
                                              temporal_compression_ratio=4, max_text_seq_length=16)
    autoencoder = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, latent_channels=4,
                                         down_block_types=("CogVideoXDownBlock3D",) * 2,
                                         up_block_types=("CogVideoXUpBlock3D",) * 2, block_out_channels=(8, 8),
                                         layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    return CogVideoXPipeline(tokenizer=t5_tokenizer(), text_encoder=t5_encoder(seed=seed), vae=autoencoder,
                             transformer=transformer, scheduler=scheduler(COGVIDEOX)).to("cpu")


def sd3(seed: int = 0):
    """SD3 shaped (rectified flow): an SD3Transformer2DModel and a VAE; no text encoders (it is refused before
    any prompt is encoded)."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                        pooled_projection_dim=16, out_channels=4)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler(SD3), vae=vae(seed=seed),
                                    text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                    text_encoder_3=None, tokenizer_3=None)


def flux(seed: int = 0):
    """Flux shaped (rectified flow, packed latents): a 1-layer FluxTransformer2DModel and a VAE; no text encoders."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=16, axes_dims_rope=(2, 2, 4))
    return FluxPipeline(scheduler=scheduler(FLUX), vae=vae(seed=seed), text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
