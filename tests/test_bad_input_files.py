"""Bad style files and outputs that cannot be written, through the CLI in process (`main(argv)`).

Every case is one `leakstyle: error:` line on stderr, exit status 2, no traceback, and nothing of the user's
changed or left behind. Each builder below makes one cause of issue 10 (items 1, 2, 10 and 11).
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import leakstyle as ls
from leakstyle import files
from leakstyle.cli import main
from leakstyle.distribution import StyleDistribution
from leakstyle.moments import Moments

from helpers import run_error

C, H, W = 4, 8, 12


def fitted(kind: str = "dct", components: int = 3) -> StyleDistribution:
    x = torch.randn(10, C, H, W, generator=torch.Generator().manual_seed(0))
    moments = Moments.for_dct(C, H, W, components) if kind == "dct" else Moments("pixel", C, H, W)
    moments.update(x)
    return StyleDistribution.from_moments(moments, {"space": "latent", "model": "tiny/sd"})


def rewritten(tmp_path: Path, kind: str, metadata: dict | None = None, drop: tuple = (), **tensors) -> Path:
    """A valid leakstyle file of `kind` with metadata entries and tensors replaced (and `drop` removed)."""
    source = ls.save(fitted(kind), tmp_path / f"source-{kind}.safetensors")
    with safe_open(str(source), framework="pt") as f:
        meta = {**f.metadata(), **(metadata or {})}
    content = {k: v for k, v in load_file(source).items() if k not in drop}
    content.update(tensors)
    path = tmp_path / "bad.safetensors"
    save_file(content, path, metadata=meta)
    return path


# -- item 1: style files ------------------------------------------------------------------------------
def zero_channels(tmp_path):
    return rewritten(tmp_path, "pixel", {"channels": "0"}, mean_pixels=torch.zeros(0, H, W), var_pixels=torch.ones(0, H, W))


def zero_channels_dct(tmp_path):
    return rewritten(tmp_path, "dct", drop=("lf_component_indices",), mean_hf_remainder=torch.zeros(0, H, W),
                     var_hf_remainder=torch.ones(0, H, W), mean_lf_components=torch.zeros(0),
                     cov_lf_components=torch.zeros(0, 0))


def no_indices_and_more_components_than_frequencies(tmp_path):
    n = H * W + 1
    return rewritten(tmp_path, "dct", drop=("lf_component_indices",), mean_lf_components=torch.zeros(n * C),
                     cov_lf_components=torch.eye(n * C))


def no_indices_and_no_components(tmp_path):
    return rewritten(tmp_path, "dct", drop=("lf_component_indices",), mean_lf_components=torch.zeros(0),
                     cov_lf_components=torch.zeros(0, 0))


def negative_image_count(tmp_path):
    return rewritten(tmp_path, "dct", {"image_count": "-3"})


def word_image_count(tmp_path):
    return rewritten(tmp_path, "pixel", {"image_count": "many"})


def fractional_image_count(tmp_path):
    return rewritten(tmp_path, "pixel", {"image_count": "2.5"})


def channels_contradict(tmp_path):
    return rewritten(tmp_path, "dct", {"channels": "3"})


def height_contradicts(tmp_path):
    return rewritten(tmp_path, "pixel", {"height": "64"})


def width_contradicts(tmp_path):
    return rewritten(tmp_path, "dct", {"width": "7"})


def type_contradicts(tmp_path):
    return rewritten(tmp_path, "dct", {"statistic_type": "pixel"})


def pixel_space_with_four_channels(tmp_path):
    return rewritten(tmp_path, "pixel", {"space": "pixel"})


def unknown_space(tmp_path):
    return rewritten(tmp_path, "pixel", {"space": "voxel"})


def newer_format(tmp_path):
    return rewritten(tmp_path, "pixel", {"format_version": "2"})


def integer_means(tmp_path):
    return rewritten(tmp_path, "pixel", mean_pixels=torch.zeros(C, H, W, dtype=torch.int32))


def bool_variances(tmp_path):
    return rewritten(tmp_path, "pixel", var_pixels=torch.ones(C, H, W, dtype=torch.bool))


def float_indices(tmp_path):
    return rewritten(tmp_path, "dct", lf_component_indices=torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))


def huge_variance(tmp_path):
    return rewritten(tmp_path, "pixel", var_pixels=torch.full((C, H, W), 3e38))


def huge_mean(tmp_path):
    return rewritten(tmp_path, "pixel", mean_pixels=torch.full((C, H, W), 2e4))


def huge_lf_mean(tmp_path):
    return rewritten(tmp_path, "dct", mean_lf_components=torch.full((3 * C,), 3e38))


def huge_lf_covariance(tmp_path):
    return rewritten(tmp_path, "dct", cov_lf_components=1e30 * torch.eye(3 * C))


def official_folder(tmp_path, kind="pixel") -> Path:
    return ls.save(fitted(kind), tmp_path / "official", format="official")


def type_file_is_a_folder(tmp_path):
    folder = official_folder(tmp_path)
    (folder / "statistic_type.txt").unlink()
    (folder / "statistic_type.txt").mkdir()
    return folder


def type_file_is_unreadable(tmp_path, monkeypatch):
    folder = official_folder(tmp_path)
    real = open

    def denied(file, *args, **kwargs):
        if Path(file).name == "statistic_type.txt":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(file, *args, **kwargs)

    monkeypatch.setattr(files, "open", denied, raising=False)
    return folder


def stats_file_is_a_folder(tmp_path):
    folder = official_folder(tmp_path)
    (folder / "stats.safetensors").unlink()
    (folder / "stats.safetensors").mkdir()
    return folder


BAD_FILES = [
    (zero_channels, "at least one channel"), (zero_channels_dct, "C, H, W >= 1"),
    (no_indices_and_more_components_than_frequencies, "do not fit a 8x12 grid"),
    (no_indices_and_no_components, "does not fit 4 channels"),
    (negative_image_count, "image_count '-3'"), (word_image_count, "image_count 'many'"),
    (fractional_image_count, "not a non-negative whole number"),
    (channels_contradict, "channels '3' but its tensors have 4"), (height_contradicts, "height '64'"),
    (width_contradicts, "width '7'"), (type_contradicts, "says statistic type 'pixel' but holds dct tensors"),
    (pixel_space_with_four_channels, "space 'pixel' (RGB) but its tensors have 4 channels"),
    (unknown_space, "space 'voxel'"), (newer_format, "upgrade leakstyle"),
    (integer_means, "mean_pixels holds int32 values"), (bool_variances, "var_pixels holds bool values"),
    (float_indices, "lf_component_indices holds float32 values"),
    (huge_variance, "not a style of any real model"), (huge_mean, "mean reaches 2e+04 model units"),
    (huge_lf_mean, "low-frequency mean reaches"), (huge_lf_covariance, "low-frequency covariance"),
    (type_file_is_a_folder, "statistic_type.txt: Is a directory"),
    (type_file_is_unreadable, "cannot read"), (stats_file_is_a_folder, "is a folder"),
]
IDS = [make.__name__ for make, _ in BAD_FILES]


def build(make, tmp_path, monkeypatch) -> Path:
    return make(tmp_path, monkeypatch) if make.__code__.co_argcount == 2 else make(tmp_path)


@pytest.mark.parametrize(("make", "words"), BAD_FILES, ids=IDS)
def test_inspect_of_a_bad_style_file_is_one_line_that_says_what_is_wrong(make, words, tmp_path, monkeypatch, capsys):
    line = run_error(["inspect", str(build(make, tmp_path, monkeypatch))], capsys)
    assert words in line, line


@pytest.mark.parametrize(("make", "words"), BAD_FILES[:6] + BAD_FILES[-5:], ids=IDS[:6] + IDS[-5:])
def test_convert_of_a_bad_style_file_writes_nothing(make, words, tmp_path, monkeypatch, capsys):
    bad = build(make, tmp_path, monkeypatch)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert words in run_error(["convert", str(bad), str(tmp_path / "out"), "--to", "official"], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_floating_tensors_of_other_precisions_are_read_as_float32(dtype, tmp_path):
    style = fitted("pixel")
    path = rewritten(tmp_path, "pixel", mean_pixels=style.mean.to(dtype), var_pixels=style.var.to(dtype))
    loaded = ls.load(path)
    assert loaded.mean.dtype == loaded.var.dtype == torch.float32
    assert torch.equal(loaded.mean, style.mean.to(dtype).float())


def test_values_at_the_bound_are_still_a_style(tmp_path):
    path = rewritten(tmp_path, "pixel", mean_pixels=torch.full((C, H, W), 9e3), var_pixels=torch.full((C, H, W), 8e7))
    assert float(ls.load(path).mean.max()) == 9e3


# -- the low-frequency order, given wrong -------------------------------------------------------------
@pytest.mark.parametrize(("order", "words"), [
    ("0,0;1,0", "has 3 low-frequency components, but the order names 2"),
    ("0,0;0,2;1,0", "is not the 3 lowest frequencies"),
    ("0,0;0,1;0,1", "must name 3 different"),
    ("0,0;one,two", "not a list of u,v pairs"),
    ("0,0;-1,0;0,1", "not a list of u,v pairs"),
])
def test_a_wrong_lf_order_is_one_line(order, words, tmp_path, capsys):
    folder = tmp_path / "from-the-official-code"  # no recorded order
    folder.mkdir()
    save_file(files.official_tensors(fitted("dct")), folder / "stats.safetensors")
    (folder / "statistic_type.txt").write_text("dct+pixel")
    assert words in run_error(["inspect", str(folder), "--lf-order", order], capsys)


def test_an_lf_order_for_pixel_statistics_is_refused(tmp_path, capsys):
    assert "no low-frequency components" in run_error(["inspect", str(official_folder(tmp_path)), "--lf-order", "0,0"], capsys)


@pytest.mark.parametrize("official", [False, True], ids=["leakstyle file", "official folder with a record"])
def test_an_lf_order_that_contradicts_the_recorded_one_is_refused(official, tmp_path, capsys):
    path = official_folder(tmp_path, "dct") if official else ls.save(fitted("dct"), tmp_path / "style.safetensors")
    assert "records its component order 0,0;0,1;1,0" in run_error(["inspect", str(path), "--lf-order", "0,0;1,0;0,1"], capsys)
    assert main(["inspect", str(path), "--lf-order", "0,0;0,1;1,0"]) == 0  # the same order is no contradiction


# -- item 2: inspect prints what a hostile file holds, escaped ----------------------------------------
def test_inspect_escapes_control_characters_in_metadata(tmp_path, capsys):
    hostile = {"model": "\x1b]0;owned\x07\x1b[2J", "note": "ok\nimages:      999", "\x1b[31mkey": "\u202eevil"}
    path = rewritten(tmp_path, "pixel", hostile)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\u202e")
    assert "  model: \\x1b]0;owned\\x07\\x1b[2J" in out
    assert "  note: ok\\nimages:      999" in out and "\nimages:      999" not in out
    assert "  \\x1b[31mkey: \\u202eevil" in out
    assert out.count("\n") == len(out.splitlines())  # nothing but the lines printed


@pytest.mark.parametrize("option", ["--force", "--quiet"])
def test_inspect_has_no_options_that_do_nothing(option, tmp_path, capsys):
    try:
        code = main(["inspect", str(ls.save(fitted(), tmp_path / "s.safetensors")), option])
    except SystemExit as e:  # argparse's way of refusing an unknown option
        code = e.code
    assert code == 2 and option in capsys.readouterr().err


# -- item 10: official folders on a full disk ---------------------------------------------------------
def disk_full_after(monkeypatch, calls: int) -> None:
    """os.write succeeds `calls` times, then raises ENOSPC."""
    real, count = files.os.write, [0]

    def write(fd, data):
        count[0] += 1
        if count[0] > calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(files.os, "write", write)


def test_convert_to_official_on_a_full_disk_leaves_no_partial_folder(tmp_path, monkeypatch, capsys):
    style = ls.save(fitted("dct"), tmp_path / "style.safetensors")
    disk_full_after(monkeypatch, 1)  # stats.safetensors is written, statistic_type.txt is not
    assert "No space left on device" in run_error(["convert", str(style), str(tmp_path / "official"), "--to", "official"], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["style.safetensors"]


def test_convert_to_official_with_force_on_a_full_disk_keeps_the_old_folder(tmp_path, monkeypatch, capsys):
    old = official_folder(tmp_path, "pixel")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    style = ls.save(fitted("dct"), tmp_path / "style.safetensors")
    disk_full_after(monkeypatch, 1)
    assert "No space left" in run_error(["convert", str(style), str(old), "--to", "official", "--force"], capsys)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["official", "style.safetensors"]


# -- item 11: two writers of one output ---------------------------------------------------------------
def test_fit_refuses_an_output_another_fit_wrote_while_it_ran(tmp_path, monkeypatch, capsys):
    """The check before the work passes; the other process's file appears before the final step."""
    out = tmp_path / "style.safetensors"

    def other_fit_finishes_first(*args, **kwargs):
        out.write_bytes(b"the other fit")
        return fitted("pixel")

    monkeypatch.setattr(sys.modules["leakstyle.fit"], "fit", other_fit_finishes_first)
    line = run_error(["fit", str(tmp_path), "--space", "pixel", "--type", "pixel", "--resolution", "16", "-o", str(out),
                      "--quiet"], capsys)
    assert "already exists" in line
    assert out.read_bytes() == b"the other fit"
    assert [p.name for p in tmp_path.iterdir()] == ["style.safetensors"]


def test_fit_with_force_replaces_an_output_another_fit_wrote_while_it_ran(tmp_path, monkeypatch):
    out = tmp_path / "style.safetensors"

    def other_fit_finishes_first(*args, **kwargs):
        out.write_bytes(b"the other fit")
        return fitted("pixel")

    monkeypatch.setattr(sys.modules["leakstyle.fit"], "fit", other_fit_finishes_first)
    assert main(["fit", str(tmp_path), "--space", "pixel", "--type", "pixel", "--resolution", "16", "-o", str(out),
                 "--quiet", "--force"]) == 0
    assert ls.load(out).kind == "pixel"
