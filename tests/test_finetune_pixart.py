"""Diffusion in Style on PixArt (a transformer denoiser with learned sigma and T5 text): the prompt, mask and size
conditioning as the pipelines build them, the loss on the prediction channels, a full fine-tune that loads with
from_pretrained and generates from the style, a LoRA one that loads with peft, resuming (tiny random-weight pipelines)."""

import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import DiffusionPipeline, DDPMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
from safetensors.torch import load_file

from leakstyle import files, finetune as finetune_module, pipeline
from leakstyle.cli import main
from leakstyle.finetune import batch_indices, finetune, training_loss
from leakstyle.pipeline import load_pipeline
from leakstyle.testing import SD15_SCHEDULE

import family_pipelines
from helpers import keyword_inputs, on_each_loaded_pipeline, run_whole_and_resumed
from helpers import write_images as shared_write_images

FAST = dict(steps=2, batch_size=2, progress=False)
CAPTIONS = [f"Line Drawing number {i}" for i in range(6)]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = shared_write_images(tmp_path_factory.mktemp("pixart-style-images"), n=6)
    lines = [json.dumps({"file_name": f"img{i}.png", "text": text}) for i, text in enumerate(CAPTIONS)]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module", params=[False, True], ids=["alpha", "sigma"])
def pixart_path(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pixart") / "model"
    family_pipelines.pixart(sigma=request.param).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def alpha_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pixart-alpha") / "model"
    family_pipelines.pixart().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, images, alpha_path):
    return finetune(images, tmp_path_factory.mktemp("pixart-runs") / "full", model=alpha_path, **FAST)


def transformer_weights(folder):
    return load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")


def recording(monkeypatch):
    """What the transformer receives at each training step (its keyword arguments), through finetune's loader."""
    return keyword_inputs(monkeypatch, finetune_module, "transformer")


# -- conditioning ------------------------------------------------------------------------------------
def test_each_training_image_conditions_pixart_with_its_caption_as_the_pipeline_encodes_it(tmp_path, images, pixart_path,
                                                                                         monkeypatch):
    seen = recording(monkeypatch)
    finetune(images, tmp_path / "run", model=pixart_path, steps=2, batch_size=3, progress=False)
    reference = DiffusionPipeline.from_pretrained(pixart_path)
    tokens = 120 if isinstance(reference, PixArtAlphaPipeline) else 300  # the pipelines' max_sequence_length
    hidden, mask, _, _ = reference.encode_prompt(CAPTIONS, do_classifier_free_guidance=False, device="cpu",
                                                 max_sequence_length=tokens)
    assert hidden.shape[1] == tokens and 0 < mask.sum() < mask.numel()  # padded, and the padding masked
    assert len(seen) == 2
    for k, kwargs in enumerate(seen):
        i = batch_indices(len(CAPTIONS), 0, k, 3)
        torch.testing.assert_close(kwargs["encoder_hidden_states"], hidden[i])
        assert torch.equal(kwargs["encoder_attention_mask"], mask[i])
        assert kwargs["added_cond_kwargs"] == {"resolution": None, "aspect_ratio": None}  # a 16 px model takes none


def test_captions_are_cleaned_as_the_pixart_pipeline_cleans_them_at_inference(alpha_path):
    """PixArt's __call__ cleans captions by default (URLs, HTML, case) with beautifulsoup4 and ftfy, which the
    `pixart` extra installs; without them diffusers warns and skips the cleaning."""
    from leakstyle.conditioning import encode_pixart_text

    pipe = DiffusionPipeline.from_pretrained(alpha_path)
    messy, messy_mask = encode_pixart_text(pipe, ["Line <b>Drawing</b> of a cat https://example.com/cat.png"])
    clean, clean_mask = encode_pixart_text(pipe, ["line drawing of a cat ."])  # what the pipeline's cleaning leaves
    assert pipe._text_preprocessing("Line <b>Drawing</b> of a cat https://example.com/cat.png", clean_caption=True) \
        == ["line drawing of a cat ."]
    assert torch.equal(messy_mask, clean_mask)
    torch.testing.assert_close(messy, clean, rtol=0, atol=0)


def test_a_pixart_that_takes_size_conditions_gets_those_the_pipeline_passes_at_that_size(tmp_path, images, monkeypatch):
    """PixArt-alpha at 1024 px (sample_size 128) is conditioned on (height, width) and height / width."""
    base = family_pipelines.pixart()
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(sample_size=128, num_layers=1, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=3, caption_channels=32, in_channels=4,
                                           cross_attention_dim=24, out_channels=8, norm_num_groups=4)  # width 3 x 8:
    # the size embeddings are a third of it each (height, width, aspect ratio)
    assert transformer.use_additional_conditions
    pipe = PixArtAlphaPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                               transformer=transformer, scheduler=base.scheduler)
    pipe.save_pretrained(tmp_path / "model")
    at_inference = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: at_inference.append(kw["added_cond_kwargs"]),
                                                      with_kwargs=True)
    pipe("a cat", height=16, width=32, num_inference_steps=2, guidance_scale=1.0, use_resolution_binning=False,
         output_type="latent")
    hook.remove()

    seen = recording(monkeypatch)
    finetune(images, tmp_path / "run", model=tmp_path / "model", resolution="32x16", steps=1, batch_size=2, progress=False)
    expected = {k: v.expand(2, -1) for k, v in at_inference[0].items()}
    assert expected["resolution"].tolist() == [[16.0, 32.0]] * 2 and expected["aspect_ratio"].tolist() == [[0.5]] * 2
    for name in ("resolution", "aspect_ratio"):
        torch.testing.assert_close(seen[0]["added_cond_kwargs"][name], expected[name], rtol=0, atol=0)


# -- the loss ----------------------------------------------------------------------------------------
def test_with_learned_sigma_the_loss_is_on_the_prediction_channels_only():
    schedule = DDPMScheduler(**SD15_SCHEDULE)
    loss = training_loss("standard", None, schedule, "cpu")
    x_0 = torch.randn(3, 4, 8, 8)

    def denoiser(channels, variance):
        def forward(x_t, timestep, **cond):
            out = torch.zeros(x_t.shape[0], channels, *x_t.shape[2:])
            out[:, 4:] = variance  # the variance channels, whatever they hold
            return SimpleNamespace(sample=out)
        return forward

    plain = loss(denoiser(4, 0.0), x_0, torch.Generator().manual_seed(0))
    learned_sigma = loss(denoiser(8, 1e6), x_0, torch.Generator().manual_seed(0))
    assert plain > 0 and learned_sigma == plain
    with pytest.raises(ValueError, match="6 channels"):
        loss(denoiser(6, 0.0), x_0, torch.Generator().manual_seed(0))


# -- full fine-tune, resume, LoRA --------------------------------------------------------------------
def test_a_full_pixart_finetune_loads_with_a_plain_from_pretrained(full_run, alpha_path):
    pipe = DiffusionPipeline.from_pretrained(full_run)
    assert type(pipe).__name__ == "PixArtAlphaPipeline"
    trained, base = transformer_weights(full_run), transformer_weights(alpha_path)
    assert trained.keys() == base.keys() and any(not torch.equal(trained[k], base[k]) for k in base)
    record = json.loads((full_run / "finetune.json").read_text())
    assert (record["status"], record["method"], record["noise"]) == ("done", "full", "style")
    assert files.load(full_run / "style.safetensors").image_count == len(CAPTIONS)


def transformer_output(transformer):
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        return transformer(x, encoder_hidden_states=c, timestep=torch.tensor([500]),
                           added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample


def test_a_lora_pixart_finetune_is_a_peft_adapter_that_loads_on_the_base_transformer(tmp_path, images, alpha_path):
    from peft import PeftModel

    out = finetune(images, tmp_path / "lora", model=alpha_path, lora=2, **FAST)
    assert (out / "transformer_lora" / "adapter_config.json").is_file() and not (out / "model_index.json").exists()
    record = json.loads((out / "finetune.json").read_text())
    assert (record["method"], record["lora_file"]) == ("lora", "transformer_lora")
    base = DiffusionPipeline.from_pretrained(alpha_path)
    before = transformer_output(base.transformer)
    adapted = PeftModel.from_pretrained(base.transformer, str(out / "transformer_lora"))
    assert not torch.allclose(transformer_output(adapted), before)
    torch.testing.assert_close(transformer_output(load_pipeline(out, device="cpu").transformer), transformer_output(adapted))


@pytest.mark.parametrize("lora", [None, 2])
def test_a_resumed_pixart_run_gives_the_same_weights_as_an_uninterrupted_one(tmp_path, images, alpha_path, lora):
    run_whole_and_resumed(images, tmp_path, model=alpha_path, steps=4, batch_size=2, grad_accum=2, checkpoint_every=2,
                          lora=lora, progress=False)
    if lora:
        whole, cut = (load_file(tmp_path / run / "transformer_lora" / "adapter_model.safetensors") for run in ("whole", "cut"))
    else:
        whole, cut = transformer_weights(tmp_path / "whole"), transformer_weights(tmp_path / "cut")
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)


# -- generating --------------------------------------------------------------------------------------
def test_cli_generate_from_a_pixart_finetune_draws_x_T_from_the_style(tmp_path, full_run, monkeypatch, first_unet_input):
    hooks = on_each_loaded_pipeline(monkeypatch, pipeline, lambda pipe: first_unet_input(pipe.transformer))
    assert main(["generate", "--model", str(full_run), "--prompt", "a cat", "--seed", "4", "--steps", "2",
                 "--guidance", "1", "--out", str(tmp_path / "gen"), "--quiet"]) == 0
    eps_style = files.load(full_run / "style.safetensors").sample(1, 8, 8, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(hooks[0].sample, eps_style, rtol=1e-4, atol=1e-4)
    assert (tmp_path / "gen" / "0000-seed4.png").is_file()
