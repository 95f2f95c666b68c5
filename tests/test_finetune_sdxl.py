"""Diffusion in Style on SDXL: the prompt and size conditioning as the pipeline builds them, full and LoRA fine-tunes,
epsilon and v-prediction, resuming, and generating from the result (tiny random-weight SDXL pipelines)."""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, EulerDiscreteScheduler, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import load_file

from leakstyle import files, finetune as finetune_module, pipeline
from leakstyle.cli import main
from leakstyle.conditioning import Crop, encode_text
from leakstyle.finetune import LORA_FILE, batch_indices, crop_of, finetune, noise_schedule
from leakstyle.images import resize_and_crop
from leakstyle.pipeline import load_pipeline

from helpers import keyword_inputs, on_each_loaded_pipeline, run_error, run_whole_and_resumed

# (width, height) of the style images: square, wide and tall, so each has its own size conditions
SIZES = [(32, 32), (64, 32), (40, 100), (48, 48)]
FAST = dict(steps=2, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl-style-images")
    rng = np.random.default_rng(0)
    lines = []
    for i, (w, h) in enumerate(SIZES):
        arr = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
        lines.append(json.dumps({"file_name": f"img{i}.png", "text": f"line drawing number {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def sdxl_v_path(sdxl_path, tmp_path_factory):
    """The tiny SDXL with a v-prediction scheduler (same weights)."""
    folder = shutil.copytree(sdxl_path, tmp_path_factory.mktemp("sdxl-v") / "model")
    config = EulerDiscreteScheduler.load_config(folder / "scheduler")
    EulerDiscreteScheduler.from_config(config, prediction_type="v_prediction").save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, images, sdxl_path):
    return finetune(images, tmp_path_factory.mktemp("sdxl-runs") / "full", model=sdxl_path, **FAST)


def unet_weights(folder):
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


# -- conditioning ------------------------------------------------------------------------------------
def test_prompts_are_encoded_as_the_sdxl_pipeline_encodes_them(sdxl_path):
    pipe = load_pipeline(sdxl_path, device="cpu")
    captions = ["a cat", "line drawing of a lighthouse at night"]
    hidden, pooled = encode_text(pipe, captions)
    expected, _, expected_pooled, _ = pipe.encode_prompt(captions, device="cpu", do_classifier_free_guidance=False)
    assert hidden.shape == (2, 16, 64) and pooled.shape == (2, 32)
    torch.testing.assert_close(hidden, expected, rtol=0, atol=0)
    torch.testing.assert_close(pooled, expected_pooled, rtol=0, atol=0)


@pytest.mark.parametrize("size, target, crop", [
    ((64, 32), (32, 32), Crop(original_size=(32, 64), top_left=(0, 16))),
    ((40, 100), (32, 32), Crop(original_size=(100, 40), top_left=(24, 0))),
    ((20, 20), (40, 32), Crop(original_size=(20, 20), top_left=(4, 0))),
])
def test_crop_of_says_where_the_centre_crop_of_resize_and_crop_lies(size, target, crop):
    assert crop_of(size, *target) == crop
    # the crop taken from the image scaled to cover the target is what resize_and_crop returns
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3)).astype(np.uint8))
    scale = max(target[0] / size[0], target[1] / size[1])
    scaled = image.resize((round(size[0] * scale), round(size[1] * scale)), Image.Resampling.LANCZOS)
    top, left = crop.top_left
    expected = np.asarray(scaled.crop((left, top, left + target[0], top + target[1]))).astype(int)
    assert np.abs(np.asarray(resize_and_crop(image, *target)).astype(int) - expected).mean() < 2


def test_each_training_image_conditions_the_unet_with_its_caption_and_sizes(tmp_path, images, sdxl_path, monkeypatch):
    seen = keyword_inputs(monkeypatch, finetune_module, "unet")
    finetune(images, tmp_path / "run", model=sdxl_path, steps=2, batch_size=3, progress=False)
    reference = load_pipeline(sdxl_path, device="cpu")
    captions = [f"line drawing number {i}" for i in range(len(SIZES))]
    hidden, _, pooled, _ = reference.encode_prompt(captions, device="cpu", do_classifier_free_guidance=False)
    assert len(seen) == 2
    for k, kwargs in enumerate(seen):
        i = batch_indices(len(SIZES), 0, k, 3)
        expected_ids = torch.tensor([[*crop_of(SIZES[j], 32, 32).original_size, *crop_of(SIZES[j], 32, 32).top_left, 32, 32]
                                     for j in i.tolist()], dtype=torch.float32)
        torch.testing.assert_close(kwargs["added_cond_kwargs"]["time_ids"], expected_ids, rtol=0, atol=0)
        torch.testing.assert_close(kwargs["added_cond_kwargs"]["text_embeds"], pooled[i])
        torch.testing.assert_close(kwargs["encoder_hidden_states"], hidden[i])
    assert seen[0]["added_cond_kwargs"]["time_ids"][:, :4].tolist() != [[32, 32, 0, 0]] * 3  # not all one size


def test_a_refiner_shaped_unet_is_refused(tmp_path, images, sdxl_path, capsys):
    from diffusers import UNet2DConditionModel
    folder = shutil.copytree(sdxl_path, tmp_path / "refiner")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    config = dict(unet.config, projection_class_embeddings_input_dim=72)  # 5 size conditions (aesthetic score)
    UNet2DConditionModel.from_config(config).save_pretrained(folder / "unet")
    argv = ["finetune", str(images), "--model", str(folder), "--out", str(tmp_path / "out"), "--steps", "1", "--quiet"]
    assert "SDXL base model" in run_error(argv, capsys)
    assert not (tmp_path / "out").exists()


def test_a_transformer_denoiser_other_than_pixart_is_refused_in_one_line(tmp_path, images, capsys):
    from family_pipelines import hunyuan_dit
    folder = tmp_path / "hunyuan"
    hunyuan_dit(tmp_path / "bert").save_pretrained(folder)
    argv = ["finetune", str(images), "--model", str(folder), "--out", str(tmp_path / "out"), "--steps", "1", "--quiet"]
    message = run_error(argv, capsys)
    assert "HunyuanDiT2DModel" in message and "PixArt" in message
    assert not (tmp_path / "out").exists()


def test_a_unet_conditioned_on_t5_text_is_refused_in_one_line(tmp_path, images, capsys):
    from family_pipelines import deepfloyd_if
    folder = tmp_path / "if"
    deepfloyd_if().save_pretrained(folder)
    argv = ["finetune", str(images), "--model", str(folder), "--out", str(tmp_path / "out"), "--steps", "1", "--quiet"]
    assert "T5EncoderModel" in run_error(argv, capsys)
    assert not (tmp_path / "out").exists()


# -- full and LoRA, epsilon and v --------------------------------------------------------------------
def test_a_full_sdxl_finetune_loads_with_a_plain_from_pretrained(full_run, sdxl_path):
    pipe = DiffusionPipeline.from_pretrained(full_run)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    trained, base = unet_weights(full_run), unet_weights(sdxl_path)
    assert trained.keys() == base.keys() and any(not torch.equal(trained[k], base[k]) for k in base)
    record = json.loads((full_run / "finetune.json").read_text())
    assert (record["status"], record["method"], record["noise"]) == ("done", "full", "style")
    assert files.load(full_run / "style.safetensors").image_count == len(SIZES)


def unet_output(pipe):
    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    c = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(1))
    added = {"text_embeds": torch.randn(1, 32, generator=torch.Generator().manual_seed(2)),
             "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]])}
    with torch.no_grad():
        return pipe.unet(x, t, c, added_cond_kwargs=added).sample


def test_a_lora_sdxl_finetune_loads_with_load_lora_weights_on_the_base(tmp_path, images, sdxl_path):
    out = finetune(images, tmp_path / "lora", model=sdxl_path, lora=2, **FAST)
    assert (out / LORA_FILE).is_file() and not (out / "model_index.json").exists()
    base = StableDiffusionXLPipeline.from_pretrained(sdxl_path)
    before = unet_output(base)
    base.load_lora_weights(str(out), weight_name=LORA_FILE)
    assert not torch.allclose(unet_output(base), before)
    torch.testing.assert_close(unet_output(load_pipeline(out, device="cpu")), unet_output(base))


def test_v_prediction_sdxl_trains_on_the_v_target(tmp_path, images, sdxl_path, sdxl_v_path):
    assert noise_schedule(load_pipeline(sdxl_v_path, device="cpu")).config.prediction_type == "v_prediction"
    losses = {}
    for name, model in (("epsilon", sdxl_path), ("v", sdxl_v_path)):
        finetune(images, tmp_path / name, model=model, steps=1, batch_size=2, progress=False,
                 callback=lambda step, loss, name=name: losses.setdefault(name, loss))
    # same weights, batch, t and noise: only the target differs (eps for one, v for the other)
    assert losses["epsilon"] != losses["v"]
    assert DiffusionPipeline.from_pretrained(tmp_path / "v").scheduler.config.prediction_type == "v_prediction"


# -- resuming ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("lora", [None, 2])
def test_a_resumed_sdxl_run_gives_the_same_weights_as_an_uninterrupted_one(tmp_path, images, sdxl_path, lora):
    run_whole_and_resumed(images, tmp_path, model=sdxl_path, steps=4, batch_size=2, grad_accum=2, checkpoint_every=2,
                          lora=lora, progress=False)
    if lora:
        whole, cut = load_file(tmp_path / "whole" / LORA_FILE), load_file(tmp_path / "cut" / LORA_FILE)
    else:
        whole, cut = unet_weights(tmp_path / "whole"), unet_weights(tmp_path / "cut")
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)


# -- generating --------------------------------------------------------------------------------------
def test_cli_finetune_then_generate_draws_sdxl_x_T_from_the_style(tmp_path, images, sdxl_path, monkeypatch,
                                                                   first_unet_input):
    out = tmp_path / "cli"
    assert main(["finetune", str(images), "--model", str(sdxl_path), "--out", str(out), "--steps", "1",
                 "--batch-size", "2", "--quiet"]) == 0
    hooks = on_each_loaded_pipeline(monkeypatch, pipeline, lambda pipe: first_unet_input(pipe.unet))
    assert main(["generate", "--model", str(out), "--prompt", "a cat", "--seed", "4", "--steps", "2", "--guidance", "1",
                 "--scheduler", "ddim", "--out", str(tmp_path / "gen"), "--quiet"]) == 0
    eps_style = files.load(out / "style.safetensors").sample(1, 16, 16, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(hooks[0].sample, eps_style, rtol=1e-4, atol=1e-4)
    assert (tmp_path / "gen" / "0000-seed4.png").is_file()
