"""What a pipeline's denoiser is, whatever the family: a UNet or a transformer, and the latents it works on.

Signal-leak sampling needs only the shape of x_T and where the denoiser lives; this module answers that for
image pipelines (latents [B, C, h, w]), channel-major video pipelines (AnimateDiff, text-to-video: [B, C, F, h, w])
and frame-major ones (Stable Video Diffusion, CogVideoX: [B, F, C, h, w]). The latent channel count comes from
the VAE (`latent_channels`), not the denoiser's input: SVD's UNet takes 8 channels (4 are the conditioning
image), an inpainting UNet 9.
"""

from __future__ import annotations

from .errors import LeakstyleError

IMAGE, CHANNEL_MAJOR, FRAME_MAJOR = "BCHW", "BCFHW", "BFCHW"

# Denoisers of video pipelines by class name, and the layout of their latents (pipelines' prepare_latents).
VIDEO_LAYOUTS = {
    "UNetMotionModel": CHANNEL_MAJOR,  # AnimateDiff
    "UNet3DConditionModel": CHANNEL_MAJOR,  # TextToVideoSDPipeline (ModelScope / Zeroscope)
    "UNetSpatioTemporalConditionModel": FRAME_MAJOR,  # Stable Video Diffusion
    "CogVideoXTransformer3DModel": FRAME_MAJOR,
}
# Denoisers whose pipelines pack 2 x 2 latent patches into tokens ([B, h w / 4, 4 C]); x_T cannot be handed over as
# [B, C, h, w]. Flux is also flow matching, so it has no leak to start from anyway.
PACKED = {"FluxTransformer2DModel"}
DEFAULT_NUM_FRAMES = 16  # AnimateDiffPipeline's and TextToVideoSDPipeline's own default


def denoiser_of(pipe):
    """The network that predicts the noise: `pipe.unet` or `pipe.transformer`."""
    for name in ("unet", "transformer"):
        model = getattr(pipe, name, None)
        if model is not None:
            return model
    raise LeakstyleError(f"{type(pipe).__name__} has no unet or transformer; leakstyle needs a diffusion pipeline "
                         f"with a denoiser and a scheduler")


def vae_factor(pipe) -> int:
    """How many pixels one latent element spans per side (1 for pixel-space models)."""
    vae = getattr(pipe, "vae", None)
    return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1


def latent_channels(pipe) -> int:
    """C of x_T: the VAE's `latent_channels` for latent models, the denoiser's input channels for pixel models."""
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        return int(vae.config.latent_channels)
    return int(denoiser_of(pipe).config.in_channels)


def native_latent_size(pipe) -> tuple[int, int]:
    """(h, w) of the latents at the model's native image size: the denoiser's `sample_size` (CogVideoX's
    `sample_height` and `sample_width`), else the pipeline's `default_sample_size` (Flux)."""
    config = denoiser_of(pipe).config
    sample_size = (config.get("sample_size") or getattr(pipe, "default_sample_size", None)
                   or (config.get("sample_height"), config.get("sample_width")))
    if None in (sample_size if isinstance(sample_size, (tuple, list)) else (sample_size,)):
        raise LeakstyleError(f"{type(denoiser_of(pipe)).__name__} does not say its native size; give height and width")
    return tuple(sample_size) if isinstance(sample_size, (tuple, list)) else (sample_size, sample_size)


def layout(pipe) -> str:
    """IMAGE [B, C, h, w], CHANNEL_MAJOR [B, C, F, h, w] or FRAME_MAJOR [B, F, C, h, w]; a LeakstyleError for
    pipelines that pack their latents (Flux)."""
    name = type(denoiser_of(pipe)).__name__
    if name in PACKED:
        raise LeakstyleError(f"{type(pipe).__name__} packs its latents into tokens and is a flow-matching model: no "
                             f"signal leaks into x_T, so leakstyle cannot start it from one (leakstyle probe says why)")
    return VIDEO_LAYOUTS.get(name, IMAGE)


def is_video(pipe) -> bool:
    return layout(pipe) != IMAGE


def num_frames_of(pipe, num_frames: int | None) -> int | None:
    """The frame count of a video model's latents (its config's `num_frames`, else 16, when None); None for images.

    Raises LeakstyleError when frames are asked of an image model, or fewer than one."""
    if not is_video(pipe):
        if num_frames is not None:
            raise LeakstyleError(f"{type(pipe).__name__} makes images, not videos; leave out --num-frames")
        return None
    if num_frames is None:
        num_frames = getattr(denoiser_of(pipe).config, "num_frames", None) or DEFAULT_NUM_FRAMES
    if num_frames < 1:
        raise LeakstyleError(f"--num-frames must be at least 1, got {num_frames}")
    return int(num_frames)


def latent_tensor_shape(pipe, batch_size: int, channels: int, height: int, width: int,
                        num_frames: int | None) -> tuple[int, ...]:
    """The shape of `latents=` in the pipeline's layout."""
    kind = layout(pipe)
    if kind == CHANNEL_MAJOR:
        return batch_size, channels, num_frames, height, width
    if kind == FRAME_MAJOR:
        return batch_size, num_frames, channels, height, width
    return batch_size, channels, height, width


def frames_to_layout(x, kind: str):
    """x [B, F, C, h, w] (frame-major) in the layout `kind` (IMAGE: F must be 1 and is dropped)."""
    if kind == FRAME_MAJOR:
        return x
    if kind == CHANNEL_MAJOR:
        return x.permute(0, 2, 1, 3, 4)
    return x[:, 0]
