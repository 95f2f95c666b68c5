"""The colour options of `leakstyle generate`: --color-mode, --brightness, and what the PNGs record."""

import json

import numpy as np
from PIL import Image

from leakstyle import metrics
from leakstyle.cli import main

from helpers import run_error


def generated(tmp_path, sd_path, name, *options):
    out = tmp_path / name
    assert main(["generate", "--model", str(sd_path), "--prompt", "a cat", "--steps", "2", "--out", str(out), "--quiet",
                 *options]) == 0
    image = Image.open(out / "0000-seed0.png")
    return image, json.loads(image.text["leakstyle"])


def test_color_is_calibrated_by_default_and_the_png_says_so(tmp_path, sd_path):
    image, params = generated(tmp_path, sd_path, "c", "--color", "#ff0000")
    assert params["color_mode"] == "calibrated" and params["color"] == "#ff0000"
    assert "Leak colour mode: calibrated" in image.text["parameters"]


def test_color_mode_raw_is_recorded_and_starts_elsewhere(tmp_path, sd_path):
    raw, params = generated(tmp_path, sd_path, "r", "--color", "#ff0000", "--color-mode", "raw")
    calibrated, _ = generated(tmp_path, sd_path, "c", "--color", "#ff0000")
    assert params["color_mode"] == "raw"
    assert not np.array_equal(np.asarray(raw.convert("RGB")), np.asarray(calibrated.convert("RGB")))


def test_brightness_alone_asks_for_a_grey_of_that_lightness(tmp_path, sd_path):
    _, params = generated(tmp_path, sd_path, "b", "--brightness", "30")
    lab = metrics.color_to_lab(params["color"])
    assert abs(lab[0] - 30) < 1 and abs(lab[1]) < 1 and abs(lab[2]) < 1
    assert params["brightness"] == 30 and params["color_mode"] == "calibrated"


def test_brightness_with_a_color_keeps_its_hue(tmp_path, sd_path):
    _, params = generated(tmp_path, sd_path, "b", "--brightness", "60", "--color", "#c03030")
    lab, asked = metrics.color_to_lab(params["color"]), metrics.color_to_lab("#c03030")
    assert abs(lab[0] - 60) < 1.5
    assert abs(np.arctan2(lab[2], lab[1]) - np.arctan2(asked[2], asked[1])) < 0.15


def test_brightness_out_of_range_is_one_line(tmp_path, sd_path, capsys):
    line = run_error(["generate", "--model", str(sd_path), "--prompt", "x", "--brightness", "150",
                      "--out", str(tmp_path / "o")], capsys)
    assert "0 (black) to 100 (white)" in line
