"""The CLI end to end on a tiny model, and every bad input: one line on stderr and exit status 2."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from leakstyle import files
from leakstyle.cli import main

from helpers import run_error, write_images


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("imgs"))


@pytest.fixture(scope="module")
def style_file(tmp_path_factory, images, sd_path):
    out = tmp_path_factory.mktemp("style") / "style.safetensors"
    assert main(["fit", str(images), "--model", str(sd_path), "-o", str(out), "--quiet"]) == 0
    return out


def test_fit_writes_a_style_file_for_the_model(style_file):
    style = files.load(style_file)
    assert (style.kind, style.components, style.channels, style.height, style.width) == ("dct", 3, 4, 16, 16)
    assert style.image_count == 6 and style.metadata["space"] == "latent"


def test_fit_pixel_type_in_pixel_space_without_model(tmp_path, images):
    out = tmp_path / "px.safetensors"
    assert main(["fit", str(images), "--space", "pixel", "--type", "pixel", "--resolution", "24x16", "-o", str(out), "--quiet"]) == 0
    style = files.load(out)
    assert (style.kind, style.channels, style.height, style.width) == ("pixel", 3, 16, 24)


def test_fit_official_format_writes_a_folder(tmp_path, images, sd_path):
    out = tmp_path / "official"
    assert main(["fit", str(images), "--model", str(sd_path), "--components", "1", "--format", "official", "-o", str(out), "--quiet"]) == 0
    assert (out / "statistic_type.txt").read_text() == "dct+pixel"
    assert files.load(out).components == 1


def test_generate_writes_pngs_with_parameters_and_baselines(tmp_path, style_file, sd_path):
    out = tmp_path / "gen"
    assert main(["generate", "--model", str(sd_path), "--style", str(style_file), "--prompt", "a cat", "--seed", "5",
                 "--num-images", "2", "--steps", "3", "--baseline", "--scheduler", "euler", "--out", str(out), "--quiet"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["0000-seed5-baseline.png", "0000-seed5.png", "0001-seed6-baseline.png", "0001-seed6.png"]
    params = json.loads(Image.open(out / "0001-seed6.png").text["leakstyle"])
    assert params["prompt"] == "a cat" and params["seed"] == 6 and params["steps"] == 3 and params["scheduler"] == "euler"
    assert params["model"] == str(sd_path) and len(params["style_sha256"]) == 64
    assert "Seed: 6" in Image.open(out / "0001-seed6.png").text["parameters"]
    assert json.loads(Image.open(out / "0000-seed5-baseline.png").text["leakstyle"])["style"] is None
    assert params["noise"] == "standard"  # N(0, I): not a Diffusion-in-Style model
    assert params["guidance"] == 7.5  # without --guidance: the pipeline's own default, recorded


def test_generate_is_reproducible_and_the_style_changes_the_image(tmp_path, style_file, sd_path):
    def run(name, *extra):
        main(["generate", "--model", str(sd_path), "--prompt", "a cat", "--steps", "3", "--out", str(tmp_path / name), "--quiet", *extra])
        return np.asarray(Image.open(tmp_path / name / "0000-seed0.png"), dtype=np.float64)
    a, b, plain = run("a", "--style", str(style_file)), run("b", "--style", str(style_file)), run("plain")
    assert np.array_equal(a, b)
    assert np.abs(a - plain).mean() > 0.5


def test_generate_with_color_only(tmp_path, sd_path):
    assert main(["generate", "--model", str(sd_path), "--prompt", "a cat", "--steps", "2", "--color", "#ff0000",
                 "--strength", "0.5", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert json.loads(Image.open(tmp_path / "c" / "0000-seed0.png").text["leakstyle"])["color"] == "#ff0000"


def test_inspect_prints_type_shape_count_and_colour(style_file, sd_path, capsys):
    assert main(["inspect", str(style_file), "--model", str(sd_path)]) == 0
    out = capsys.readouterr().out
    assert "type:        dct (3 low-frequency components: (0,0), (0,1), (1,0))" in out
    assert "shape:       4 x 16 x 16" in out and "images:      6" in out
    assert "mean colour: #" in out


def test_convert_round_trip_keeps_tensors(tmp_path, style_file):
    assert main(["convert", str(style_file), str(tmp_path / "off"), "--to", "official"]) == 0
    assert main(["convert", str(tmp_path / "off"), str(tmp_path / "back.safetensors"), "--to", "leakstyle"]) == 0
    a, b = files.load(style_file), files.load(tmp_path / "back.safetensors")
    for name in ("mean", "var", "lf_mean", "lf_cov", "lf_indices"):
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_merge_of_shards_equals_one_fit(tmp_path, images, sd_path):
    shards = [tmp_path / "s1", tmp_path / "s2"]
    for i, s in enumerate(shards):
        s.mkdir()
        for p in sorted(images.iterdir())[i * 3:(i + 1) * 3]:
            shutil.copy(p, s)
    outs = []
    for s in shards:
        outs.append(tmp_path / f"{s.name}.safetensors")
        assert main(["fit", str(s), "--model", str(sd_path), "-o", str(outs[-1]), "--quiet"]) == 0
    assert main(["merge", *map(str, outs), "-o", str(tmp_path / "merged.safetensors")]) == 0
    assert main(["fit", str(images), "--model", str(sd_path), "-o", str(tmp_path / "all.safetensors"), "--quiet"]) == 0
    merged, whole = files.load(tmp_path / "merged.safetensors"), files.load(tmp_path / "all.safetensors")
    assert merged.image_count == whole.image_count == 6
    for name in ("mean", "var", "lf_mean", "lf_cov"):
        torch.testing.assert_close(getattr(merged, name), getattr(whole, name), rtol=1e-4, atol=1e-4)


def test_merge_refuses_a_file_given_twice_and_warns_of_copies_fitted_to_the_same_images(tmp_path, style_file, capsys):
    out = tmp_path / "merged.safetensors"
    assert main(["merge", str(style_file), str(style_file.parent / "." / style_file.name), "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"leakstyle: error: {style_file.parent / '.' / style_file.name} is given "
                                               f"twice; merge takes each shard's file once")
    assert not out.exists()
    copy = shutil.copy(style_file, tmp_path / "copy.safetensors")
    assert main(["merge", str(style_file), str(copy), "-o", str(out)]) == 0
    assert ("leakstyle: warning: styles 1 and 2 were fitted to the same images (the same source digest); merged, "
            "those images count twice") in capsys.readouterr().err
    assert files.load(out).image_count == 2 * files.load(style_file).image_count


def test_console_script_runs():
    exe = shutil.which("leakstyle", path=str(__import__("pathlib").Path(sys.executable).parent))
    if exe is None:
        pytest.skip("package not installed (run through make test)")
    assert subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.startswith("leakstyle ")


# -- bad inputs: one line, exit 2 --------------------------------------------------------------------
def test_fit_nonexistent_path(tmp_path, sd_path, capsys):
    assert "no such file or folder" in run_error(["fit", str(tmp_path / "nope"), "--model", str(sd_path), "-o", str(tmp_path / "o.st")], capsys)


def test_fit_empty_folder(tmp_path, sd_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "empty" in run_error(["fit", str(tmp_path / "empty"), "--model", str(sd_path), "-o", str(tmp_path / "o.st")], capsys)


def test_fit_folder_without_images(tmp_path, sd_path, capsys):
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("hi")
    assert "no images" in run_error(["fit", str(tmp_path / "txt"), "--model", str(sd_path), "-o", str(tmp_path / "o.st")], capsys)


def test_fit_single_image_says_how_many_are_needed(tmp_path, sd_path, capsys):
    write_images(tmp_path / "one", n=1)
    assert "at least 2" in run_error(["fit", str(tmp_path / "one"), "--model", str(sd_path), "-o", str(tmp_path / "o.st")], capsys)


def test_fit_skips_a_corrupt_image_with_a_warning_and_fails_with_strict(tmp_path, sd_path, capsys):
    folder = write_images(tmp_path / "some", n=3)
    data = (folder / "img0.png").read_bytes()
    (folder / "img9.png").write_bytes(data[: len(data) // 2])
    assert main(["fit", str(folder), "--model", str(sd_path), "-o", str(tmp_path / "ok.st"), "--quiet"]) == 0
    assert "skipped 1 of 4 images" in capsys.readouterr().err
    assert files.load(tmp_path / "ok.st").image_count == 3
    assert "img9.png" in run_error(["fit", str(folder), "--model", str(sd_path), "-o", str(tmp_path / "strict.st"), "--strict"], capsys)


def test_fit_decompression_bomb(tmp_path, sd_path, capsys, monkeypatch):
    folder = write_images(tmp_path / "bomb", n=3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32x32 images now count as bombs
    assert "pixels" in run_error(["fit", str(folder), "--model", str(sd_path), "-o", str(tmp_path / "o.st")], capsys)


def test_fit_refuses_existing_output_without_force(tmp_path, images, sd_path, capsys):
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"precious")
    assert "--force" in run_error(["fit", str(images), "--model", str(sd_path), "-o", str(out)], capsys)
    assert out.read_bytes() == b"precious"
    assert main(["fit", str(images), "--model", str(sd_path), "-o", str(out), "--force", "--quiet"]) == 0
    assert files.load(out).image_count == 6
    assert [p.name for p in tmp_path.iterdir()] == ["exists.safetensors"]  # atomic: no temp files left


def test_fit_unwritable_output(tmp_path, images, sd_path, capsys):
    assert "does not exist" in run_error(["fit", str(images), "--model", str(sd_path), "-o", str(tmp_path / "no" / "o.st")], capsys)


def test_fit_wrong_model_folder(tmp_path, images, capsys):
    assert "not a diffusers pipeline" in run_error(["fit", str(images), "--model", str(tmp_path), "-o", str(tmp_path / "o.st")], capsys)


@pytest.mark.parametrize("content,expected", [
    (b"not a safetensors file at all", "not a readable safetensors"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a readable safetensors"),
])
def test_generate_with_a_file_that_is_not_safetensors(tmp_path, sd_path, capsys, content, expected):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    assert expected in run_error(["generate", "--model", str(sd_path), "--prompt", "x", "--style", str(bad), "--out", str(tmp_path / "o")], capsys)


def test_generate_with_truncated_style(tmp_path, style_file, sd_path, capsys):
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(style_file.read_bytes()[:-100])
    assert "truncated" in run_error(["generate", "--model", str(sd_path), "--prompt", "x", "--style", str(bad), "--out", str(tmp_path / "o")], capsys)


def test_generate_with_nan_style(tmp_path, sd_path, capsys):
    bad = tmp_path / "nan.safetensors"
    mean = torch.zeros(4, 16, 16)
    mean[0, 0, 0] = float("nan")
    save_file({"mean_pixels": mean, "var_pixels": torch.ones(4, 16, 16)}, bad)
    assert "NaN" in run_error(["generate", "--model", str(sd_path), "--prompt", "x", "--style", str(bad), "--out", str(tmp_path / "o")], capsys)


def test_generate_with_style_lacking_tensors(tmp_path, sd_path, capsys):
    bad = tmp_path / "empty.safetensors"
    save_file({"something": torch.zeros(3)}, bad)
    assert "lacks the tensors" in run_error(["generate", "--model", str(sd_path), "--prompt", "x", "--style", str(bad), "--out", str(tmp_path / "o")], capsys)


def test_generate_with_style_for_another_model(tmp_path, sd_path, capsys):
    bad = tmp_path / "rgb.safetensors"
    save_file({"mean_pixels": torch.zeros(3, 16, 16), "var_pixels": torch.ones(3, 16, 16)}, bad)
    assert "channels" in run_error(["generate", "--model", str(sd_path), "--prompt", "x", "--style", str(bad), "--out", str(tmp_path / "o")], capsys)


def test_generate_missing_style_file(tmp_path, sd_path, capsys):
    assert "not found" in run_error(["generate", "--model", str(sd_path), "--prompt", "x", "--style", str(tmp_path / "none.st"), "--out", str(tmp_path / "o")], capsys)


def test_generate_numbers_new_images_after_existing_ones(tmp_path, sd_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "0000-seed0.png").write_bytes(b"mine")
    assert main(["generate", "--model", str(sd_path), "--prompt", "x", "--steps", "1", "--baseline", "--out", str(out), "--quiet"]) == 0
    assert (out / "0000-seed0.png").read_bytes() == b"mine"
    assert sorted(p.name for p in out.iterdir()) == ["0000-seed0.png", "0001-seed0-baseline.png", "0001-seed0.png"]


def test_generate_refuses_zero_terminal_snr_with_explanation(tmp_path, sd_path, capsys):
    model = tmp_path / "zsnr"
    shutil.copytree(sd_path, model)
    cfg = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    cfg.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    (model / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    line = run_error(["generate", "--model", str(model), "--prompt", "x", "--color", "#ffffff", "--out", str(tmp_path / "o")], capsys)
    assert "zero terminal SNR" in line and "Diffusion in Style" in line


def test_generate_bad_colour(tmp_path, sd_path, capsys):
    assert "#rrggbb" in run_error(["generate", "--model", str(sd_path), "--prompt", "x", "--color", "red", "--out", str(tmp_path / "o")], capsys)


def test_inspect_corrupt_file(tmp_path, capsys):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00" * 20)
    assert "safetensors" in run_error(["inspect", str(bad)], capsys)


def test_convert_refuses_existing_output(tmp_path, style_file, capsys):
    (tmp_path / "taken").write_bytes(b"x")
    assert "--force" in run_error(["convert", str(style_file), str(tmp_path / "taken"), "--to", "leakstyle"], capsys)
