"""`leakstyle report` end to end on a tiny model, its pieces, and every bad input (one line, exit 2)."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import torch
from safetensors.torch import save_file

from leakstyle import report
from leakstyle.cli import main
from leakstyle.pipeline import generate

from helpers import run_error, write_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("ref"))


@pytest.fixture(scope="module")
def cli_report(tmp_path_factory, sd_path, reference):
    """One report through the CLI: 4 images per set, 2 colours, a prompts file."""
    out = tmp_path_factory.mktemp("report") / "rep"
    prompts = out.parent / "prompts.txt"
    prompts.write_text("a cat\n\n  a dog  \n")
    code = main(["report", "--model", str(sd_path), "--reference", str(reference), "--prompts", str(prompts), "-n", "4",
                 "--steps", "1", "--colors", "#ff0000, #1E90FF", "--per-color", "2", "--out", str(out), "--quiet"])
    assert code == 0
    return out


# -- end to end --------------------------------------------------------------------------------------
def test_report_writes_json_html_and_plots(cli_report):
    names = {p.name for p in cli_report.iterdir()}
    assert {"report.json", "report.html", "distributions.png", "samples.png", "colors.png"} <= names
    for png in ("distributions.png", "samples.png", "colors.png"):
        assert Image.open(cli_report / png).size[0] > 100


def test_report_json_holds_every_metric_with_intervals(cli_report):
    r = json.loads((cli_report / "report.json").read_text())
    assert [r["sets"][s]["count"] for s in ("reference", "pure noise", "leak")] == [6, 4, 4]
    for name in ("pure noise", "leak"):
        for ch in ("L*", "a*", "b*"):
            for stat in ("wasserstein", "std_ratio"):
                d = r["low_frequency"][name][ch][stat]
                assert d["low"] <= d["estimate"] <= d["high"]
        assert set(r["style"][name]) == {"colour", "gradient", "spectrum", "style"}
    assert list(r["colors"]) == ["#ff0000", "#1e90ff"]
    assert len(r["colors"]["#ff0000"]["leak"]["border_errors"]) == 2
    assert r["colors"]["#ff0000"]["pure noise"]["border"]["median"]["estimate"] >= 0


def test_report_cycles_the_prompts_file_and_records_the_configuration(cli_report, sd_path):
    cfg = json.loads((cli_report / "report.json").read_text())["config"]
    assert cfg["prompts"] == ["a cat", "a dog"]
    assert (cfg["n"], cfg["steps"], cfg["per_color"], cfg["model"]) == (4, 1, 2, str(sd_path))
    assert "fitted to the 6 reference images" in cfg["style"]


def test_report_html_reads_in_a_minute(cli_report):
    page = (cli_report / "report.html").read_text()
    for part in ("In short", "brightness spread", "distributions.png", "samples.png", "colors.png", "Colour control",
                 "Style distance"):
        assert part in page


def test_report_refuses_to_overwrite_without_force(cli_report, sd_path, reference, capsys):
    before = (cli_report / "report.json").read_bytes()
    line = run_error(["report", "--model", str(sd_path), "--reference", str(reference), "-n", "2", "--out", str(cli_report)], capsys)
    assert "--force" in line and (cli_report / "report.json").read_bytes() == before


def test_a_report_that_fails_while_writing_leaves_the_previous_one_as_it_was(cli_report, tmp_path, sd_path,
                                                                             reference, monkeypatch, capsys):
    out = tmp_path / "rep"
    shutil.copytree(cli_report, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "samples_sheet", disk_full)  # after distributions.png, before the rest
    line = run_error(["report", "--model", str(sd_path), "--reference", str(reference), "-n", "2", "--steps", "1",
                      "--out", str(out), "--force"], capsys)
    assert "No space left on device" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing replaced, no staging folder left


def test_report_with_a_style_file_and_default_prompts(tmp_path, sd_path, reference):
    style = tmp_path / "style.safetensors"
    assert main(["fit", str(reference), "--model", str(sd_path), "--type", "pixel", "-o", str(style), "--quiet"]) == 0
    out = tmp_path / "rep"
    assert main(["report", "--model", str(sd_path), "--reference", str(reference), "--style", str(style), "-n", "2",
                 "--steps", "1", "--out", str(out), "--quiet"]) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["config"]["style"] == str(style) and r["config"]["prompts"] == list(report.DEFAULT_PROMPTS)
    assert r["colors"] == {} and not (out / "colors.png").exists()


# -- pieces ------------------------------------------------------------------------------------------
def test_generate_set_gives_image_i_prompt_i_and_seed_plus_i(sd):
    with torch.no_grad():
        images = report.generate_set(sd, ["a cat", "a dog", "a fox"], seed=3, steps=1, batch_size=2)
        alone = generate(sd, "a fox", seed=5, num_inference_steps=1)[0]
    assert np.array_equal(np.asarray(images[2]), np.asarray(alone))


def test_read_prompts_skips_blank_lines_and_defaults_to_emoji_names(tmp_path):
    (tmp_path / "p.txt").write_text("one\n\n two \n")
    assert report.read_prompts(tmp_path / "p.txt") == ["one", "two"]
    assert report.read_prompts(None) == list(report.DEFAULT_PROMPTS)
    assert report.cycle(["a", "b"], 5) == ["a", "b", "a", "b", "a"]


def test_parse_colors_normalises_hex_codes():
    assert report.parse_colors("#FF0000, 1e90ff,#abc") == ["#ff0000", "#1e90ff", "#aabbcc"]


# -- bad inputs: one line, exit 2 --------------------------------------------------------------------
def test_missing_reference(tmp_path, sd_path, capsys):
    line = run_error(["report", "--model", str(sd_path), "--reference", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert "no such file or folder" in line


def test_a_single_reference_image_is_too_few(tmp_path, sd_path, reference, capsys):
    line = run_error(["report", "--model", str(sd_path), "--reference", str(reference / "img0.png"), "-n", "2",
                      "--out", str(tmp_path / "o")], capsys)
    assert "at least 2" in line


def test_bad_colour(tmp_path, sd_path, reference, capsys):
    line = run_error(["report", "--model", str(sd_path), "--reference", str(reference), "--colors", "#ff0000,red",
                      "--out", str(tmp_path / "o")], capsys)
    assert "#rrggbb" in line


def test_missing_prompts_file(tmp_path, sd_path, reference, capsys):
    line = run_error(["report", "--model", str(sd_path), "--reference", str(reference), "--prompts", str(tmp_path / "p.txt"),
                      "--out", str(tmp_path / "o")], capsys)
    assert "prompts file not found" in line


def test_empty_prompts_file(tmp_path, sd_path, reference, capsys):
    (tmp_path / "p.txt").write_text("\n  \n")
    line = run_error(["report", "--model", str(sd_path), "--reference", str(reference), "--prompts", str(tmp_path / "p.txt"),
                      "--out", str(tmp_path / "o")], capsys)
    assert "no prompts" in line


def test_too_few_images(tmp_path, sd_path, reference, capsys):
    line = run_error(["report", "--model", str(sd_path), "--reference", str(reference), "-n", "1", "--out", str(tmp_path / "o")], capsys)
    assert "at least 2" in line


def test_out_is_a_file(tmp_path, sd_path, reference, capsys):
    (tmp_path / "o").write_text("x")
    assert "is a file" in run_error(["report", "--model", str(sd_path), "--reference", str(reference), "--out", str(tmp_path / "o")], capsys)


def test_style_for_another_model(tmp_path, sd_path, reference, capsys):
    bad = tmp_path / "rgb.safetensors"
    save_file({"mean_pixels": torch.zeros(3, 16, 16), "var_pixels": torch.ones(3, 16, 16)}, bad)
    line = run_error(["report", "--model", str(sd_path), "--reference", str(reference), "--style", str(bad), "-n", "2",
                      "--out", str(tmp_path / "o")], capsys)
    assert "channels" in line


def test_zero_terminal_snr_scheduler_is_refused_with_explanation(tmp_path, sd_path, reference, capsys):
    model = tmp_path / "zsnr"
    shutil.copytree(sd_path, model)
    cfg = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    cfg.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    (model / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    line = run_error(["report", "--model", str(model), "--reference", str(reference), "-n", "2", "--out", str(tmp_path / "o")], capsys)
    assert "Diffusion in Style" in line


# -- the reproduction, on the tiny model -------------------------------------------------------------
def test_reproduce_quick_writes_tables_and_plots(tmp_path, sd_path):
    data = ROOT / "training" / "data"
    if not (data / "google" / "manifest.jsonl").exists() or not (data / "twitter" / "manifest.jsonl").exists():
        pytest.skip("emoji data not fetched (python -m training.fetch_data)")
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "experiments" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    out = tmp_path / "results"
    assert reproduce.main(["--model", str(sd_path), "--quick", "--out", str(out)]) == 0
    text = (out / "README.md").read_text()
    for part in ("signal-leak bias", "Colour control", "style adaptation", "std ratio", "CIEDE2000"):
        assert part in text, part
    assert {"bias.png", "colors.png", "style.png"} <= {p.name for p in out.iterdir()}


def test_the_ring_width_experiment_runs_each_width_and_marks_the_rule(tmp_path):
    """experiments/ring_width.py --quick on the embedded model: each ring width steers the images differently
    (its patch of color.ring_width reaches the closed loop), and the table marks the width the rule gives."""
    spec = importlib.util.spec_from_file_location("ring_width", ROOT / "experiments" / "ring_width.py")
    ring_width = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ring_width)
    out = tmp_path / "results"
    assert ring_width.main(["--quick", "--sizes", "64", "--widths", "1,3", "--out", str(out)]) == 0
    results = json.loads((out / "ring_width.json").read_text())["results"]["64"]
    assert set(results) == {"1", "3"} and len(results["1"]["4 px"]["errors"]) == 4
    assert results["1"]["4 px"]["errors"] != results["3"]["4 px"]["errors"]
    rows = [line for line in (out / "ring_width.md").read_text().splitlines() if line.startswith("| 64 px")]
    assert [("**rule**" in row) for row in rows] == [True, False]  # 16 x 16 latents: a ring 1 wide
