"""The web UI's colour control: calibrated by default, the requested colour beside the obtained one per image."""

import json

import numpy as np
import pytest
from PIL import Image

from leakstyle import ui


@pytest.fixture(scope="module")
def model(sd_path):
    return ui.open_model(sd_path, device="cpu")


def test_the_ui_generates_in_calibrated_mode_and_the_pngs_say_so(model):
    result = ui.run(model, "a cat", color="#d01818", steps=2)
    params = json.loads(Image.open(result.leak_files[0]).text["leakstyle"])
    assert params["color_mode"] == "calibrated"
    raw = ui.run(model, "a cat", color="#d01818", steps=2, color_mode="raw")
    assert json.loads(Image.open(raw.leak_files[0]).text["leakstyle"])["color_mode"] == "raw"
    assert not np.array_equal(np.asarray(result.leak[0]), np.asarray(raw.leak[0]))


def test_each_leak_image_shows_the_requested_colour_beside_the_obtained_one(model):
    result = ui.run(model, "a cat", color="#d01818", num_images=2, steps=2)
    table = ui.results_html(result)
    cells = table.split('<div class="mean leak-mean">')[1:]
    assert len(cells) == 2
    for cell, obtained in zip(cells, ui.border_colors(result.leak)):
        assert cell.index("requested") < cell.index("#d01818") < cell.index("border") < cell.index(obtained)
    assert '<div class="mean baseline-mean">requested' not in table


def test_the_pages_colour_mode_choice_reaches_the_generation(model):
    args = dict(source="none", images=None, style_file=None, kind="dct", components=3, prompt="a cat",
                negative_prompt="", seed=0, steps=2, scheduler="ddim", guidance=7.5, num_images=1, width=None,
                height=None, use_color=True, color="#d01818", strength=1.0, cached=None)
    modes = []
    for mode in ("raw", "calibrated"):
        _, _, files, _ = ui.on_generate(model, **args, color_mode=mode)
        leak = [f for f in files if f.endswith(".png") and "baseline" not in f]
        modes.append(json.loads(Image.open(leak[0]).text["leakstyle"])["color_mode"])
    assert modes == ["raw", "calibrated"]
