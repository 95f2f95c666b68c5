"""What a UNet is conditioned on while it is fine-tuned, per training image, encoded as its pipeline encodes it.

- Stable Diffusion 1.x/2.x: the text encoder's last hidden states, `encoder_hidden_states` [N, L, D].
- SDXL (Podell et al. 2023): both text encoders' penultimate hidden states, concatenated, [N, L, D_1 + D_2];
  the second encoder's pooled, projected embedding `text_embeds` [N, P]; and the micro-conditioning
  `time_ids` [N, 6] = (original height, original width, crop top, crop left, target height, target width),
  with the crop offset in the pixels of the image resized to cover the target (section 2.2 of the paper).
- PixArt-alpha/-Sigma (Chen et al. 2023, 2024), a transformer: the T5 encoder's last hidden states of the
  caption padded to the pipeline's `max_sequence_length` (alpha 120, Sigma 300 tokens) with their attention mask
  `encoder_attention_mask` [N, L], both from the pipeline's own `encode_prompt`; and, for a transformer that takes
  them (PixArt-alpha at 1024 px: `use_additional_conditions`), `resolution` [N, 2] = (height, width) and
  `aspect_ratio` [N, 1] = height / width of the training size, which is what the pipeline passes for an image
  generated at that size.
- Unconditional (pixel-space) models: nothing.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import torch

from .denoiser import denoiser_of
from .errors import LeakstyleError

SIZE_CONDITIONS = 6  # original (h, w), crop top-left (top, left), target (h, w)
TRANSFORMERS = ("PixArtTransformer2DModel",)  # the transformer denoisers finetune trains


@dataclass(frozen=True)
class Crop:
    """Where a training image came from: its size before resizing and the top-left of the crop taken from it
    after resizing, both (height, width)-ordered in pixels, as SDXL's add_time_ids take them."""

    original_size: tuple[int, int]
    top_left: tuple[int, int]


@dataclass
class Conditioning:
    """The denoiser's conditioning inputs of N training images; `batch(i)` gives the keyword arguments for images i."""

    encoder_hidden_states: torch.Tensor | None = None  # [N, L, D]
    text_embeds: torch.Tensor | None = None  # [N, P], SDXL
    time_ids: torch.Tensor | None = None  # [N, 6], SDXL
    encoder_attention_mask: torch.Tensor | None = None  # [N, L], PixArt (1 for tokens, 0 for padding)
    resolution: torch.Tensor | None = None  # [N, 2], PixArt-alpha at 1024 px
    aspect_ratio: torch.Tensor | None = None  # [N, 1], PixArt-alpha at 1024 px
    pixart: bool = False  # PixArt takes added_cond_kwargs={"resolution", "aspect_ratio"} even when they are None

    def to(self, device) -> "Conditioning":
        move = (lambda x: None if x is None else x.to(device))
        return Conditioning(move(self.encoder_hidden_states), move(self.text_embeds), move(self.time_ids),
                            move(self.encoder_attention_mask), move(self.resolution), move(self.aspect_ratio), self.pixart)

    def batch(self, i: torch.Tensor) -> dict:
        pick = (lambda x: None if x is None else x[i])
        cond = {}
        if self.encoder_hidden_states is not None:
            cond["encoder_hidden_states"] = self.encoder_hidden_states[i]
        if self.encoder_attention_mask is not None:
            cond["encoder_attention_mask"] = self.encoder_attention_mask[i]
        if self.time_ids is not None:
            cond["added_cond_kwargs"] = {"text_embeds": self.text_embeds[i], "time_ids": self.time_ids[i]}
        if self.pixart:
            cond["added_cond_kwargs"] = {"resolution": pick(self.resolution), "aspect_ratio": pick(self.aspect_ratio)}
        return cond


def is_sdxl(pipe) -> bool:
    """Whether the UNet takes SDXL's added conditioning (pooled text and size embeddings, "text_time")."""
    config = getattr(getattr(pipe, "unet", None), "config", None)
    return config is not None and config.get("addition_embed_type") == "text_time"


def is_pixart(pipe) -> bool:
    """Whether the denoiser is a PixArt transformer (T5 text with its attention mask, learned sigma)."""
    return type(getattr(pipe, "transformer", None)).__name__ == "PixArtTransformer2DModel"


def check_conditioning(pipe, model) -> None:
    """One-line errors for denoisers whose conditioning fine-tuning cannot build: other transformers, other added
    inputs."""
    denoiser = denoiser_of(pipe)
    name = type(denoiser).__name__
    if name in TRANSFORMERS:
        if getattr(pipe, "text_encoder", None) is None or not hasattr(pipe, "encode_prompt"):
            raise LeakstyleError(f"{model or 'the model'} has a {name} but no T5 text encoder; fine-tune a PixArt "
                                 f"text-to-image pipeline")
        return
    unet = getattr(pipe, "unet", None)
    if unet is None or name not in ("UNet2DConditionModel", "UNet2DModel"):
        raise LeakstyleError(f"finetune trains the denoisers of Stable Diffusion 1.x/2.x, SDXL, PixArt and pixel-space "
                             f"models; {model or 'the model'} has a {name} ({type(pipe).__name__}), which it cannot "
                             f"fine-tune yet")
    encoder = type(getattr(pipe, "text_encoder", None)).__name__
    if encoder.startswith("T5"):  # DeepFloyd IF: T5 text with an attention mask, built here only for PixArt
        raise LeakstyleError(f"{model or 'the model'} conditions its UNet on a {encoder} (DeepFloyd IF?); finetune "
                             f"encodes CLIP text for UNets (SD 1.x/2.x, SDXL) and T5 text only for PixArt")
    kind = unet.config.get("addition_embed_type")
    if kind not in (None, "text_time"):
        raise LeakstyleError(f"{model or 'the model'}'s UNet takes {kind!r} added conditioning; finetune supports "
                             f"Stable Diffusion 1.x/2.x, SDXL and pixel-space UNets")
    if kind == "text_time":
        if getattr(pipe, "text_encoder_2", None) is None:
            raise LeakstyleError(f"{model or 'the model'} takes SDXL conditioning but has no text_encoder_2 (a refiner?); "
                                 f"fine-tune an SDXL base model")
        expected = pipe.unet.add_embedding.linear_1.in_features
        given = pipe.unet.config.addition_time_embed_dim * SIZE_CONDITIONS + pipe.text_encoder_2.config.projection_dim
        if expected != given:
            raise LeakstyleError(f"{model or 'the model'}'s UNet expects {expected} added conditioning features, not the "
                                 f"{given} of SDXL's six size conditions and pooled text (a refiner?); fine-tune an SDXL base model")


def token_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    """[N, L] token ids padded and truncated to the tokenizer's model_max_length, as the pipelines tokenize."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def max_sequence_length(pipe) -> int:
    """The token count the pipeline pads prompts to by default (its __call__'s max_sequence_length)."""
    parameter = inspect.signature(type(pipe).__call__).parameters.get("max_sequence_length")
    if parameter is None or not isinstance(parameter.default, int):
        raise LeakstyleError(f"{type(pipe).__name__} does not say how many tokens it encodes; fine-tune a PixArt pipeline")
    return parameter.default


@torch.no_grad()
def encode_pixart_text(pipe, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The captions' T5 embeddings [N, L, D] and attention masks [N, L] from the pipeline's own encode_prompt, with
    the token count and caption cleaning its __call__ uses by default. In chunks of 16 captions."""
    parameters = inspect.signature(type(pipe).__call__).parameters
    clean = parameters["clean_caption"].default if "clean_caption" in parameters else False
    hidden, masks = [], []
    for start in range(0, len(captions), 16):
        embeds, mask, _, _ = pipe.encode_prompt(captions[start:start + 16], do_classifier_free_guidance=False,
                                                device=pipe.text_encoder.device, clean_caption=clean,
                                                max_sequence_length=max_sequence_length(pipe))
        hidden.append(embeds.float())
        masks.append(mask)
    return torch.cat(hidden), torch.cat(masks)


@torch.no_grad()
def encode_text(pipe, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The captions' prompt embeddings [N, L, D] and, for SDXL, their pooled embeddings [N, P], as the pipeline
    encodes them: SD's text encoder's last hidden states; SDXL's two encoders' penultimate hidden states,
    concatenated, and the pooled output of the one with a projection. In chunks of 16 captions.
    (PixArt: encode_pixart_text.)"""
    if not is_sdxl(pipe):
        ids = token_ids(pipe.tokenizer, captions)
        return torch.cat([pipe.text_encoder(chunk.to(pipe.text_encoder.device))[0] for chunk in ids.split(16)]).float(), None
    hidden, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        if encoder is None:  # SDXL pipelines may leave out the first encoder
            continue
        outputs = [encoder(chunk.to(encoder.device), output_hidden_states=True) for chunk in token_ids(tokenizer, captions).split(16)]
        hidden.append(torch.cat([o.hidden_states[-2] for o in outputs]).float())
        if outputs[0][0].ndim == 2:  # CLIPTextModelWithProjection: its first output is the pooled, projected text
            pooled = torch.cat([o[0] for o in outputs]).float()
    return torch.cat(hidden, dim=-1), pooled


def size_conditions(crops: Sequence[Crop], target_size: tuple[int, int]) -> torch.Tensor:
    """SDXL's add_time_ids [N, 6]: original_size + crop top-left + target_size, each (height, width)."""
    return torch.tensor([[*c.original_size, *c.top_left, *target_size] for c in crops], dtype=torch.float32)


def training_conditioning(pipe, captions: list[str] | None, crops: Sequence[Crop],
                          target_size: tuple[int, int]) -> Conditioning:
    """The conditioning of each training image: its caption encoded, for SDXL its size conditions, for PixArt the
    text's attention mask and (where the transformer takes them) the training size and aspect ratio.
    `target_size` is the training (height, width) in pixels."""
    if getattr(pipe, "text_encoder", None) is None and getattr(pipe, "text_encoder_2", None) is None:
        return Conditioning()
    if is_pixart(pipe):
        hidden, mask = encode_pixart_text(pipe, captions)
        resolution = aspect_ratio = None
        if pipe.transformer.use_additional_conditions:
            height, width = target_size
            resolution = torch.tensor([[float(height), float(width)]]).repeat(len(captions), 1)
            aspect_ratio = torch.tensor([[height / width]]).repeat(len(captions), 1)
        return Conditioning(encoder_hidden_states=hidden, encoder_attention_mask=mask, resolution=resolution,
                            aspect_ratio=aspect_ratio, pixart=True)
    hidden, pooled = encode_text(pipe, captions)
    if not is_sdxl(pipe):
        return Conditioning(encoder_hidden_states=hidden)
    return Conditioning(hidden, pooled, size_conditions(crops, target_size))
