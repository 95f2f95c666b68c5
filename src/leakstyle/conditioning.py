"""What a UNet is conditioned on while it is fine-tuned, per training image, encoded as its pipeline encodes it.

- Stable Diffusion 1.x/2.x: the text encoder's last hidden states, `encoder_hidden_states` [N, L, D].
- SDXL (Podell et al. 2023): both text encoders' penultimate hidden states, concatenated, [N, L, D_1 + D_2];
  the second encoder's pooled, projected embedding `text_embeds` [N, P]; and the micro-conditioning
  `time_ids` [N, 6] = (original height, original width, crop top, crop left, target height, target width),
  with the crop offset in the pixels of the image resized to cover the target (section 2.2 of the paper).
- Unconditional (pixel-space) models: nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import LeakstyleError

SIZE_CONDITIONS = 6  # original (h, w), crop top-left (top, left), target (h, w)


@dataclass(frozen=True)
class Crop:
    """Where a training image came from: its size before resizing and the top-left of the crop taken from it
    after resizing, both (height, width)-ordered in pixels, as SDXL's add_time_ids take them."""

    original_size: tuple[int, int]
    top_left: tuple[int, int]


@dataclass
class Conditioning:
    """The UNet's conditioning inputs of N training images; `batch(i)` gives the keyword arguments for images i."""

    encoder_hidden_states: torch.Tensor | None = None  # [N, L, D]
    text_embeds: torch.Tensor | None = None  # [N, P], SDXL
    time_ids: torch.Tensor | None = None  # [N, 6], SDXL

    def to(self, device) -> "Conditioning":
        move = (lambda x: None if x is None else x.to(device))
        return Conditioning(move(self.encoder_hidden_states), move(self.text_embeds), move(self.time_ids))

    def batch(self, i: torch.Tensor) -> dict:
        cond = {}
        if self.encoder_hidden_states is not None:
            cond["encoder_hidden_states"] = self.encoder_hidden_states[i]
        if self.time_ids is not None:
            cond["added_cond_kwargs"] = {"text_embeds": self.text_embeds[i], "time_ids": self.time_ids[i]}
        return cond


def is_sdxl(pipe) -> bool:
    """Whether the UNet takes SDXL's added conditioning (pooled text and size embeddings, "text_time")."""
    config = getattr(getattr(pipe, "unet", None), "config", None)
    return config is not None and config.get("addition_embed_type") == "text_time"


def check_conditioning(pipe, model) -> None:
    """One-line errors for denoisers whose conditioning fine-tuning cannot build: transformers, other added inputs."""
    unet = getattr(pipe, "unet", None)
    if unet is None or type(unet).__name__ not in ("UNet2DConditionModel", "UNet2DModel"):
        denoiser = unet if unet is not None else getattr(pipe, "transformer", None)
        raise LeakstyleError(f"finetune trains the UNets of Stable Diffusion 1.x/2.x, SDXL and pixel-space models; "
                             f"{model or 'the model'} has a {type(denoiser).__name__} ({type(pipe).__name__}), "
                             f"which it cannot fine-tune yet")
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


@torch.no_grad()
def encode_text(pipe, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The captions' prompt embeddings [N, L, D] and, for SDXL, their pooled embeddings [N, P], as the pipeline
    encodes them: SD's text encoder's last hidden states; SDXL's two encoders' penultimate hidden states,
    concatenated, and the pooled output of the one with a projection. In chunks of 16 captions."""
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
    """The conditioning of each training image: its caption encoded, and for SDXL its size conditions.
    `target_size` is the training (height, width) in pixels."""
    if getattr(pipe, "text_encoder", None) is None and getattr(pipe, "text_encoder_2", None) is None:
        return Conditioning()
    hidden, pooled = encode_text(pipe, captions)
    if not is_sdxl(pipe):
        return Conditioning(encoder_hidden_states=hidden)
    return Conditioning(hidden, pooled, size_conditions(crops, target_size))
