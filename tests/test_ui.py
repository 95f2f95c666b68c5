"""The web UI's callbacks on a tiny model, without a browser: what Generate makes, and errors as page messages."""

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from leakstyle import metrics, testing, ui
from leakstyle.cli import main
from leakstyle.distribution import StyleDistribution
from leakstyle.encode import to_hex
from leakstyle.errors import LeakstyleError
from leakstyle.files import save
from leakstyle.pipeline import generate

FAST = dict(steps=2, guidance=7.5)


def write_images(folder, n=4, size=32, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
        paths.append(str(folder / f"img{i}.png"))
    return paths


@pytest.fixture(scope="module")
def model(sd_path):
    return ui.open_model(sd_path, device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("ui-imgs"))


def page(model, **kw):
    """on_generate with the page's defaults, overridden by `kw`."""
    args = dict(source="none", images=None, style_file=None, kind="dct", components=3, prompt="a cat",
                negative_prompt="", seed=0, steps=2, scheduler="ddim", guidance=7.5, num_images=1, width=None,
                height=None, use_color=False, color="#1e90ff", strength=1.0, cached=None)
    return ui.on_generate(model, **{**args, **kw})


def pixels(image):
    return np.asarray(image, dtype=np.float64)


def test_run_returns_a_leak_and_a_pure_noise_image_per_seed(model, tmp_path):
    result = ui.run(model, "a cat", seed=5, num_images=2, color="#ff0000", out=tmp_path, **FAST)
    assert result.seeds == [5, 6]
    assert len(result.leak) == len(result.baseline) == 2
    assert {im.size for im in result.leak + result.baseline} == {(32, 32)}  # the model's native size
    assert sorted(p.name for p in result.files) == ["0000-seed5-baseline.png", "0000-seed5.png",
                                                    "0001-seed6-baseline.png", "0001-seed6.png"]


def test_the_baseline_is_generate_without_a_style_for_the_same_seed(model):
    result = ui.run(model, "a cat", seed=3, num_images=2, color="#00ff00", **FAST)
    expected = generate(model.pipe, "a cat", style=None, seed=3, num_images=2, num_inference_steps=2)  # one batch, as the UI
    for got, want in zip(result.baseline, expected, strict=True):
        assert np.array_equal(pixels(got), pixels(want))


def test_a_colour_changes_the_image_from_the_leak(model):
    result = ui.run(model, "a cat", seed=0, color="#ff0000", **FAST)
    assert np.abs(pixels(result.leak[0]) - pixels(result.baseline[0])).mean() > 0.1


def test_pngs_carry_their_parameters(model, tmp_path):
    result = ui.run(model, "a cat", negative_prompt="blurry", seed=7, scheduler="euler", color="#FF0000",
                    strength=0.5, out=tmp_path, **FAST)
    leak = json.loads(Image.open(tmp_path / "0000-seed7.png").text["leakstyle"])
    assert (leak["prompt"], leak["negative_prompt"], leak["seed"], leak["steps"]) == ("a cat", "blurry", 7, 2)
    assert (leak["scheduler"], leak["color"], leak["strength"], leak["baseline"]) == ("euler", "#ff0000", 0.5, False)
    assert leak["model"] == model.name and (leak["width"], leak["height"]) == (32, 32)
    baseline = json.loads(Image.open(tmp_path / "0000-seed7-baseline.png").text["leakstyle"])
    assert baseline["baseline"] is True and baseline["color"] is None and baseline["seed"] == 7
    assert "Seed: 7" in Image.open(tmp_path / "0000-seed7.png").text["parameters"]
    assert len(result.files) == 2


def test_each_run_builds_the_scheduler_from_the_models_own(model):
    ui.run(model, "a cat", scheduler="dpm++2m-karras", **FAST)
    ui.run(model, "a cat", scheduler="euler", **FAST)
    assert type(model.pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert not model.pipe.scheduler.config.get("use_karras_sigmas")  # not carried over from the previous run
    ui.run(model, "a cat", scheduler=None, **FAST)
    assert model.pipe.scheduler is model.scheduler


def test_the_size_can_be_chosen(model):
    result = ui.run(model, "a cat", width=48, height=24, **FAST)
    assert result.leak[0].size == result.baseline[0].size == (48, 24)


def test_the_size_sliders_offer_every_multiple_of_8(model):
    assert ui.size_step(model.pipe) == 8
    result = ui.run(model, "a cat", width=72, height=40, **FAST)  # a step of 16 refused these
    assert result.leak[0].size == (72, 40)


def test_the_page_shows_each_image_with_the_colour_the_report_measures(model):
    text, table, files, _ = page(model, seed=2, num_images=2, use_color=True, color="#d01818")
    assert text.startswith("2 images from the leak and 2 from pure noise (seeds 2–3)")
    assert table.count('<img class="leak') == 2 and table.count('<img class="baseline') == 2
    assert "requested" in table and "#d01818" in table and "4-pixel border" in table
    result = ui.run(model, "a cat", seed=2, num_images=2, color="#d01818", **FAST)  # the same images again
    for image in result.leak + result.baseline:  # the report's colour-control measure: the mean border colour
        rgb = metrics.as_rgb(image)
        assert to_hex(rgb[metrics.border_mask(*rgb.shape[:2])].mean(0) * 255) in table
    for error in metrics.color_errors(result.leak, "#d01818", mask="border"):
        assert f"ΔE {error:.1f}" in table
    assert len(files) == 4 and all(f.endswith(".png") for f in files)


def test_the_page_shows_the_png_files_that_carry_the_parameters(model):
    _, table, files, _ = page(model, seed=4, use_color=True, color="#d01818")
    sources = [unquote(src.removeprefix("gradio_api/file=")) for src in re.findall(r'<img[^>]* src="([^"]+)"', table)]
    assert sorted(sources) == sorted(files)  # not arrays: the files themselves
    params = json.loads(Image.open(sources[0]).text["leakstyle"])
    assert params["seed"] == 4 and params["color"] == "#d01818"


def test_the_pages_progress_says_what_is_running(model, images):
    seen = []
    page(model, source="fit images", images=images, num_images=2, progress=lambda f, text: seen.append((f, text)))
    texts = [text for _, text in seen]
    assert texts[0] == "fitting dct statistics to 4 images"
    assert texts[1:7] == ["leak images 0/2", "leak images 1/2", "leak images 2/2",
                          "pure-noise images 0/2", "pure-noise images 1/2", "pure-noise images 2/2"]
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_a_single_unreadable_upload_says_it_cannot_be_read(model, tmp_path):
    (tmp_path / "one.png").write_bytes(b"not a png")
    text = error_text(model, source="fit images", images=[str(tmp_path / "one.png")])
    assert "cannot decode image" in text and "one.png" in text and "at least 2" not in text


def test_uploads_show_as_thumbnails_with_their_count(images):
    shown = ui.uploads_html(images)
    assert "4 style images uploaded" in shown and shown.count("<img ") == 4
    assert all(ui.file_url(p) in shown for p in images)
    assert "1 style image uploaded" in ui.uploads_html(images[:1])
    assert "No style images" in ui.uploads_html(None)


def test_without_style_or_colour_the_page_says_both_start_from_pure_noise(model):
    text, *_ = page(model)
    assert "no style and no colour chosen" in text


def test_uploaded_images_are_fitted_once_and_offered_for_download(model, images):
    text, _, files, cached = page(model, source="fit images", images=images, kind="pixel")
    assert "Error" not in text and files[-1].endswith("style.safetensors")
    style = cached[1]
    assert style.distribution.kind == "pixel" and style.distribution.image_count == 4
    _, _, again, cached_again = page(model, source="fit images", images=images, kind="pixel", cached=cached)
    assert cached_again[1] is style and again[-1] == files[-1]  # not fitted again
    _, _, _, refit = page(model, source="fit images", images=images, kind="dct", components=2, cached=cached)
    assert refit[1].distribution.components == 2


def test_a_style_file_is_loaded(model, images, tmp_path):
    style, _ = ui.style_for(model, "fit images", images, kind="dct", components=1)
    save(style.distribution, tmp_path / "mine.safetensors")
    text, table, downloads, _ = page(model, source="style file", style_file=str(tmp_path / "mine.safetensors"))
    assert "Error" not in text and "no style" not in text and downloads[-1].endswith("mine.safetensors")


def test_a_finetuned_model_starts_from_its_style_noise_and_the_baseline_from_pure_noise(sd_path):
    model = ui.open_model(sd_path, device="cpu")
    model.pipe.leakstyle_noise = StyleDistribution.flat(torch.tensor([1.5, -1.0, 0.5, 0.0]), 16, 16)
    assert model.finetuned
    result = ui.run(model, "a cat", seed=1, **FAST)
    pure = generate(model.pipe, "a cat", seed=1, num_inference_steps=2, noise=None)
    assert np.array_equal(pixels(result.baseline[0]), pixels(pure[0]))
    assert not np.array_equal(pixels(result.leak[0]), pixels(pure[0]))
    assert result.messages == []


# -- errors become messages in the page -----------------------------------------------------------------
def error_text(model, **kw):
    text, table, files, _ = page(model, **kw)
    assert text.startswith("**Error:**"), text
    assert table is not None and files is not None  # gr.skip(): the last results stay on the page
    return text


def test_unreadable_uploads_are_an_error_message(model, tmp_path):
    broken = [tmp_path / "a.png", tmp_path / "b.png"]
    for p in broken:
        p.write_bytes(b"not a png")
    assert "could be decoded" in error_text(model, source="fit images", images=[str(p) for p in broken])


def test_a_skipped_upload_is_noted(model, images, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    text, *_ = page(model, source="fit images", images=[*images, str(tmp_path / "bad.png")])
    assert "**Note:** skipped 1 of 5 images" in text


def test_a_non_image_upload_is_an_error_message(model, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert "is not an image" in error_text(model, source="fit images", images=[str(tmp_path / "notes.txt")])


def test_a_style_for_another_model_is_an_error_message(model, tmp_path):
    save(StyleDistribution("pixel", torch.zeros(3, 32, 32), torch.ones(3, 32, 32)), tmp_path / "pixels.safetensors")
    text = error_text(model, source="style file", style_file=str(tmp_path / "pixels.safetensors"))
    assert "3 channels" in text and "4" in text


def test_a_corrupt_style_file_is_an_error_message(model, tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    assert "not a readable safetensors file" in error_text(model, source="style file",
                                                            style_file=str(tmp_path / "junk.safetensors"))


def test_running_out_of_memory_is_an_error_message_that_names_what_to_lower(model, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")

    monkeypatch.setattr(ui, "iter_generate", out_of_memory)
    assert error_text(model) == "**Error:** could not allocate 12.00 GiB: use a smaller width and height, or fewer images"


def test_missing_inputs_are_error_messages(model):
    assert "upload a few style images" in error_text(model, source="fit images", images=[])
    assert "choose a style file" in error_text(model, source="style file")
    assert "multiples of" in error_text(model, width=33)


# -- small pieces ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["#d01818", "#D01818", "d01818", "#d01818ff", "rgb(208, 24, 24)",
                                   "rgba(208, 24, 24, 1)"])
def test_picker_colours_become_hex(value):
    assert ui.hex_color(value) == "#d01818"


def test_random_seed_is_a_valid_seed():
    assert all(0 <= ui.random_seed() < 2**31 for _ in range(20))


def test_the_app_builds_with_the_models_size_and_schedulers(model):
    app = ui.build_app(model)
    config = {c.elem_id: c for c in app.blocks.values() if getattr(c, "elem_id", None)}
    assert config["width"].value == 32 and config["height"].value == 32 and config["width"].step == 8
    assert config["scheduler"].value == "ddim" and "euler-a" in [c[0] for c in config["scheduler"].choices]
    assert {"prompt", "seed", "random-seed", "style-images", "style-file", "color", "strength", "generate",
            "status", "results", "downloads"} <= set(config)


def test_the_guidance_slider_starts_at_the_pipelines_own_default_and_runs_record_what_was_used(model, sdxl_path):
    sdxl = ui.open_model(sdxl_path, device="cpu")
    sliders = {m.name: {c.elem_id: c for c in ui.build_app(m).blocks.values()
                        if getattr(c, "elem_id", None)}["guidance"].value for m in (model, sdxl)}
    assert sliders == {model.name: 7.5, sdxl.name: 5.0}  # StableDiffusionPipeline's and StableDiffusionXLPipeline's
    result = ui.run(sdxl, "a cat", seed=1, steps=2)  # no guidance given: the pipeline's own
    assert json.loads(Image.open(result.files[0]).text["leakstyle"])["guidance"] == 5.0


def test_cli_ui_without_a_model_is_a_one_line_error(tmp_path, capsys):
    assert main(["ui", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("leakstyle: error:")


def test_the_pages_files_live_in_one_folder_that_is_removed_at_exit(model):
    first, second = ui.run(model, "a cat", **FAST), ui.run(model, "a cat", seed=1, **FAST)
    folder = ui.workdir()
    assert all(path.parent.parent == folder and path.exists() for path in first.files + second.files)
    assert first.files[0].parent != second.files[0].parent  # each run its own subfolder
    code = "from leakstyle import ui; folder = ui.workdir(); (folder / 'x.png').write_bytes(b'1'); print(folder)"
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert printed.strip().startswith("/") and not Path(printed.strip()).exists()


def test_the_pages_folder_is_removed_on_sigterm_too():
    code = ("import time; from leakstyle import ui; folder = ui.workdir(); (folder / 'x.png').write_bytes(b'1'); "
            "print(folder, flush=True); time.sleep(120)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    folder = Path(child.stdout.readline().strip())
    assert folder.is_dir()
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 128 + signal.SIGTERM
    assert not folder.exists()


def test_the_prompt_box_suggests_emoji_names_for_the_embedded_model_only(model):
    def placeholder(m):
        app = ui.build_app(m)
        return next(c for c in app.blocks.values() if getattr(c, "elem_id", None) == "prompt").placeholder

    assert placeholder(model) is None  # another model: no hint
    from leakstyle.pipeline import EMBEDDED_MODEL
    if not (EMBEDDED_MODEL / "model_index.json").exists():
        pytest.skip("embedded model not built yet")
    assert "emoji name" in placeholder(ui.open_model(None, device="cpu"))


@pytest.mark.parametrize("bad", [dict(strength=1.5, color="#ff0000"), dict(num_images=0), dict(steps=0)])
def test_the_apis_checks_refuse_bad_numbers_before_sampling(model, bad):
    with pytest.raises(LeakstyleError):
        ui.run(model, "a cat", **{**FAST, **bad})
