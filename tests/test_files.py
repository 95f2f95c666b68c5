"""Specification of leakstyle.files: leakstyle's one-file format, the official folder layout, and bad files.

The reference statistics published with the original code (A1, A2 pixel; C, D dct+pixel) are the ground
truth for the official format; tests that read them skip when the folder is absent.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import leakstyle as ls
from leakstyle import files
from leakstyle.distribution import StyleDistribution
from leakstyle.errors import LeakstyleError, StyleFileError
from leakstyle.moments import Moments

C, H, W = 4, 8, 12
Z = 5.0  # standard errors allowed


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fitted(kind: str, components: int = 3, count: int = 20) -> StyleDistribution:
    x = torch.randn(count, C, H, W, generator=generator(0)) + torch.linspace(-1, 1, C).view(1, C, 1, 1)
    moments = Moments.for_dct(C, H, W, components) if kind == "dct" else Moments("pixel", C, H, W)
    moments.update(x)
    return StyleDistribution.from_moments(moments, {"space": "latent", "model": "tiny/sd", "scaling_factor": "0.18215"})


def assert_same_style(a: StyleDistribution, b: StyleDistribution) -> None:
    assert a.kind == b.kind
    for name in ("mean", "var", "lf_indices", "lf_mean", "lf_cov"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or torch.equal(x, y), name


def one_line_style_error(path) -> str:
    with pytest.raises(StyleFileError) as info:
        ls.load(path)
    message = str(info.value)
    assert message and "\n" not in message
    return message


# -- leakstyle's own file ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pixel", "dct"])
def test_load_of_save_gives_back_the_same_distribution(kind: str, tmp_path: Path) -> None:
    style = fitted(kind)
    path = ls.save(style, tmp_path / "style.safetensors")
    loaded = ls.load(path)
    assert_same_style(loaded, style)
    assert {k: loaded.metadata[k] for k in style.metadata} == style.metadata


@pytest.mark.parametrize("kind", ["pixel", "dct"])
def test_leakstyle_file_carries_its_metadata(kind: str, tmp_path: Path) -> None:
    path = ls.save(fitted(kind), tmp_path / "style.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    expected = {"format": "leakstyle", "format_version": files.FORMAT_VERSION, "statistic_type": kind,
                "channels": "4", "height": "8", "width": "12", "image_count": "20", "space": "latent",
                "model": "tiny/sd", "scaling_factor": "0.18215", "leakstyle_version": ls.__version__}
    assert {k: metadata.get(k) for k in expected} == expected


def test_dct_file_carries_its_component_indices_beside_the_official_tensors(tmp_path: Path) -> None:
    style = fitted("dct")
    tensors = load_file(ls.save(style, tmp_path / "style.safetensors"))
    assert set(tensors) == {*files.DCT_TENSORS, "lf_component_indices"}
    assert tensors["lf_component_indices"].dtype == torch.int64
    assert tensors["lf_component_indices"].tolist() == [[0, 0], [0, 1], [1, 0]]


def test_pixel_file_holds_exactly_the_official_tensors(tmp_path: Path) -> None:
    tensors = load_file(ls.save(fitted("pixel"), tmp_path / "style.safetensors"))
    assert set(tensors) == set(files.PIXEL_TENSORS)
    assert all(t.dtype == torch.float32 for t in tensors.values())


@pytest.mark.parametrize("kind", ["pixel", "dct"])
def test_official_folder_round_trips(kind: str, tmp_path: Path) -> None:
    style = fitted(kind)
    folder = ls.save(style, tmp_path / "official", format="official")
    assert sorted(p.name for p in folder.iterdir()) == ["statistic_type.txt", "stats.safetensors"]
    assert (folder / "statistic_type.txt").read_text() == {"pixel": "pixel", "dct": "dct+pixel"}[kind]
    assert_same_style(ls.load(folder), style)
    assert_same_style(ls.load(folder / "stats.safetensors"), style)


# -- saving safely -----------------------------------------------------------------------------------
def test_save_refuses_an_existing_file_without_force(tmp_path: Path) -> None:
    path = tmp_path / "style.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(LeakstyleError, match="already exists"):
        ls.save(fitted("dct"), path)
    assert path.read_bytes() == b"precious"


def test_save_with_force_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "style.safetensors"
    path.write_bytes(b"old")
    style = fitted("dct")
    ls.save(style, path, force=True)
    assert_same_style(ls.load(path), style)


def test_save_refuses_a_non_empty_official_folder_without_force(tmp_path: Path) -> None:
    folder = ls.save(fitted("pixel"), tmp_path / "official", format="official")
    before = (folder / "stats.safetensors").read_bytes()
    with pytest.raises(LeakstyleError, match="not empty"):
        ls.save(fitted("dct"), folder, format="official")
    assert (folder / "stats.safetensors").read_bytes() == before


def test_save_into_a_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(LeakstyleError, match="does not exist"):
        ls.save(fitted("dct"), tmp_path / "missing" / "style.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_successful_save_leaves_no_temporary_file(tmp_path: Path) -> None:
    ls.save(fitted("dct"), tmp_path / "style.safetensors")
    ls.save(fitted("dct"), tmp_path / "style.safetensors", force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["style.safetensors"]


def test_failed_save_leaves_no_temporary_file_and_the_old_file_intact(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "style.safetensors"
    path.write_bytes(b"old")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", disk_full)
    with pytest.raises(LeakstyleError, match="No space left"):
        ls.save(fitted("dct"), path, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["style.safetensors"]
    assert path.read_bytes() == b"old"


# -- bad files ---------------------------------------------------------------------------------------
def valid_file(tmp_path: Path, kind: str = "dct") -> Path:
    return ls.save(fitted(kind), tmp_path / f"valid-{kind}.safetensors")


def random_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "noise.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def png(tmp_path: Path) -> Path:
    path = tmp_path / "image.safetensors"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path, format="PNG")
    return path


def truncated(tmp_path: Path) -> Path:
    data = valid_file(tmp_path).read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    return path


def empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    return path


def tensors_with(tmp_path: Path, name: str, **changes: torch.Tensor) -> Path:
    """A valid file's tensors and metadata with some tensors replaced (None: removed)."""
    source = valid_file(tmp_path, "pixel" if "mean_pixels" in changes or "var_pixels" in changes else "dct")
    tensors = load_file(source)
    with safe_open(str(source), framework="pt") as f:
        metadata = f.metadata()
    for key, value in changes.items():
        if value is None:
            tensors.pop(key)
        else:
            tensors[key] = value
    path = tmp_path / name
    save_file(tensors, path, metadata=metadata)
    return path


def nan_in_covariance(tmp_path: Path) -> Path:
    cov = torch.eye(12)
    cov[3, 3] = math.nan
    return tensors_with(tmp_path, "nan.safetensors", cov_lf_components=cov)


def inf_in_variance(tmp_path: Path) -> Path:
    var = torch.ones(C, H, W)
    var[0, 0, 0] = math.inf
    return tensors_with(tmp_path, "inf.safetensors", var_pixels=var)


def negative_variance(tmp_path: Path) -> Path:
    return tensors_with(tmp_path, "negative.safetensors", var_pixels=-torch.ones(C, H, W))


def missing_tensor(tmp_path: Path) -> Path:
    return tensors_with(tmp_path, "missing.safetensors", cov_lf_components=None)


def no_tensors(tmp_path: Path) -> Path:
    path = tmp_path / "none.safetensors"
    save_file({}, path)
    return path


def unrelated_tensors(tmp_path: Path) -> Path:
    path = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, path)
    return path


def mismatched_maps(tmp_path: Path) -> Path:
    return tensors_with(tmp_path, "maps.safetensors", var_pixels=torch.ones(C, H, W + 1))


def mismatched_covariance(tmp_path: Path) -> Path:
    return tensors_with(tmp_path, "cov.safetensors", cov_lf_components=torch.eye(8))


def lf_mean_not_a_multiple_of_channels(tmp_path: Path) -> Path:
    return tensors_with(tmp_path, "odd.safetensors", mean_lf_components=torch.zeros(10))


def indices_outside_the_grid(tmp_path: Path) -> Path:
    return tensors_with(tmp_path, "indices.safetensors", lf_component_indices=torch.tensor([[0, 0], [0, 1], [H, 0]]))


def negative_indices(tmp_path: Path) -> Path:
    indices = torch.tensor([[0, 0], [0, -1], [1, 0]])
    return tensors_with(tmp_path, "negative-indices.safetensors", lf_component_indices=indices)


def unknown_type_in_metadata(tmp_path: Path) -> Path:
    path = tmp_path / "type.safetensors"
    save_file(load_file(valid_file(tmp_path)), path, metadata={"statistic_type": "wavelet"})
    return path


def official_folder(tmp_path: Path, statistic_type: str | None) -> Path:
    folder = tmp_path / "official"
    folder.mkdir()
    save_file(load_file(valid_file(tmp_path, "pixel")), folder / "stats.safetensors")
    if statistic_type is not None:
        (folder / "statistic_type.txt").write_text(statistic_type)
    return folder


def folder_without_type(tmp_path: Path) -> Path:
    return official_folder(tmp_path, None)


def folder_with_unknown_type(tmp_path: Path) -> Path:
    return official_folder(tmp_path, "dct+wavelet")


def folder_without_stats(tmp_path: Path) -> Path:
    folder = tmp_path / "official"
    folder.mkdir()
    (folder / "statistic_type.txt").write_text("pixel")
    return folder


def nonexistent(tmp_path: Path) -> Path:
    return tmp_path / "nowhere" / "style.safetensors"


BAD_FILES = [
    random_bytes, png, truncated, empty_file, nan_in_covariance, inf_in_variance, negative_variance,
    missing_tensor, no_tensors, unrelated_tensors, mismatched_maps, mismatched_covariance,
    lf_mean_not_a_multiple_of_channels, indices_outside_the_grid, negative_indices, unknown_type_in_metadata,
    folder_without_type, folder_with_unknown_type, folder_without_stats, nonexistent,
]


@pytest.mark.parametrize("make", BAD_FILES, ids=lambda f: f.__name__)
def test_bad_style_file_gives_a_one_line_style_file_error(make, tmp_path: Path) -> None:
    one_line_style_error(make(tmp_path))


@pytest.mark.parametrize(
    ("make", "words"),
    [(random_bytes, "not a readable safetensors"), (truncated, "not a readable safetensors"),
     (nan_in_covariance, "NaN or Inf"), (inf_in_variance, "NaN or Inf"), (missing_tensor, "cov_lf_components"),
     (folder_without_type, "statistic_type.txt"), (folder_with_unknown_type, "dct+wavelet"),
     (nonexistent, "not found")],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_bad_style_file_error_says_what_is_wrong(make, words: str, tmp_path: Path) -> None:
    assert words in one_line_style_error(make(tmp_path))


# -- the official reference files --------------------------------------------------------------------
REFERENCES = {"A1": ("pixel", 0, 96), "A2": ("pixel", 0, 64), "C": ("dct", 3, 96), "D": ("dct", 1, 96)}


@pytest.mark.parametrize("name", REFERENCES)
def test_reference_file_loads_with_its_type_components_and_shape(reference: Path, name: str) -> None:
    kind, components, size = REFERENCES[name]
    style = ls.load(reference / name)
    assert (style.kind, style.components) == (kind, components)
    assert (style.channels, style.height, style.width) == (4, size, size)


@pytest.mark.parametrize("name", REFERENCES)
def test_reference_file_samples_latents_of_its_shape_and_at_other_sizes(reference: Path, name: str) -> None:
    style = ls.load(reference / name)
    size = REFERENCES[name][2]
    x = style.sample(2, generator=generator(0))
    assert x.shape == (2, 4, size, size) and torch.isfinite(x).all()
    assert style.sample(2, height=48, width=80, generator=generator(0)).shape == (2, 4, 48, 80)


def test_line_art_reference_samples_have_its_documented_channel_means(reference: Path) -> None:
    """README: A2 latent channel means about [1.72, 1.11, -0.15, -0.72] (two decimals: +-0.005)."""
    style, num = ls.load(reference / "A2"), 200
    means = style.sample(num, generator=generator(0)).double().mean((2, 3)).mean(0)
    se = (style.var.double().mean((1, 2)) / (64 * 64 * num)).sqrt()
    documented = torch.tensor([1.72, 1.11, -0.15, -0.72], dtype=torch.float64)
    assert ((means - documented).abs() <= 0.005 + Z * se).all(), means


@pytest.mark.parametrize("name", ["C", "D"])
def test_reference_dct_samples_have_the_file_dc_mean(reference: Path, name: str) -> None:
    """DC of a sample = 96 x its channel mean; its variance is the file's DC variance plus the DC that the
    per-element high-frequency noise carries, mean(var_hf)."""
    style, num = ls.load(reference / name), 400
    dc = 96 * style.sample(num, generator=generator(1)).double().mean((2, 3))  # [num, 4]
    dc_var = style.lf_cov.double().diag()[:4] + style.var.double().mean((1, 2))
    error = (dc.mean(0) - style.lf_mean.double()[:4]).abs()
    assert (error < Z * (dc_var / num).sqrt()).all(), error


@pytest.mark.parametrize("name", ["C", "D"])
def test_reference_dct_files_have_the_documented_coco_channel_means(reference: Path, name: str) -> None:
    documented = torch.tensor([0.42, -0.28, 0.18, 0.24])
    torch.testing.assert_close(ls.load(reference / name).channel_means(), documented, rtol=0, atol=0.005)


def test_reference_components_are_dc_then_horizontal_then_vertical(reference: Path) -> None:
    """Photos are about as often mirrored left-right as not, so the horizontal frequency (0, 1) has a mean near 0,
    while the vertical one (1, 0) does not (sky above, ground below). Swapping the two order rules swaps them."""
    style = ls.load(reference / "C")
    assert style.lf_indices.tolist() == [[0, 0], [0, 1], [1, 0]]
    mu = style.lf_mean.view(3, 4)
    assert mu[1].norm() < 0.2 * mu[2].norm()


@pytest.mark.parametrize("name", REFERENCES)
def test_convert_round_trip_keeps_every_tensor_bit_for_bit(reference: Path, name: str, tmp_path: Path) -> None:
    own = ls.convert(reference / name, tmp_path / f"{name}.safetensors", to="leakstyle")
    back = ls.convert(own, tmp_path / name, to="official")
    original = load_file(reference / name / "stats.safetensors")
    for tensors in (load_file(own), load_file(back / "stats.safetensors")):
        common = {k: v for k, v in tensors.items() if k != "lf_component_indices"}
        assert common.keys() == original.keys()
        for key, value in original.items():
            assert common[key].dtype == value.dtype and torch.equal(common[key], value), key
    assert (back / "statistic_type.txt").read_bytes() == (reference / name / "statistic_type.txt").read_bytes()
    assert sorted(os.listdir(back)) == ["statistic_type.txt", "stats.safetensors"]
