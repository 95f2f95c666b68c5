"""Specification of leakstyle.files: leakstyle's one-file format, the official folder layout, and bad files.

The reference statistics published with the original code (A1, A2 pixel; C, D dct+pixel) are the ground
truth for the official format; tests that read them skip when the folder is absent.
"""

from __future__ import annotations

import ast
import math
import os
import stat
import subprocess
import sys
import threading
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import leakstyle as ls
from leakstyle import files
from leakstyle.cli import main
from helpers import run_error
from leakstyle.fit import model_name
from leakstyle.loading import EMBEDDED_MODEL
from leakstyle.distribution import StyleDistribution
from leakstyle.errors import LeakstyleError, StyleFileError
from leakstyle.moments import Moments

from helpers import write_images

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


def test_official_folder_is_written_complete_or_not_at_all_on_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    real = files.os.write

    def disk_full_at_the_second_file(fd, data):
        if not any(tmp_path.glob(".official.*.tmp/stats.safetensors")):
            return real(fd, data)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "write", disk_full_at_the_second_file)
    with pytest.raises(LeakstyleError, match="No space left"):
        ls.save(fitted("dct"), tmp_path / "official", format="official")
    assert list(tmp_path.iterdir()) == []


def test_official_folder_with_force_replaces_the_old_one_only_when_the_new_one_is_complete(tmp_path: Path, monkeypatch) -> None:
    folder = ls.save(fitted("pixel"), tmp_path / "official", format="official")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = files.os.write

    def disk_full_at_the_second_file(fd, data):
        if not any(tmp_path.glob(".official.*.tmp/stats.safetensors")):
            return real(fd, data)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "write", disk_full_at_the_second_file)
    with pytest.raises(LeakstyleError, match="No space left"):
        ls.save(fitted("dct"), folder, format="official", force=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["official"]
    monkeypatch.undo()
    ls.save(fitted("dct"), folder, format="official", force=True)
    assert ls.load(folder).kind == "dct" and [p.name for p in tmp_path.iterdir()] == ["official"]


def test_official_folder_holding_other_files_is_not_replaced_even_with_force(tmp_path: Path) -> None:
    folder = ls.save(fitted("pixel"), tmp_path / "official", format="official")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(LeakstyleError, match="holds other files"):
        ls.save(fitted("dct"), folder, format="official", force=True)
    assert (folder / "notes.txt").read_text() == "mine" and ls.load(folder).kind == "pixel"


def test_official_folder_in_a_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(LeakstyleError, match="does not exist"):
        ls.save(fitted("dct"), tmp_path / "missing" / "official", format="official")
    assert list(tmp_path.iterdir()) == []


def test_official_folder_goes_into_an_existing_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "official").mkdir()
    ls.save(fitted("dct"), tmp_path / "official", format="official")
    assert ls.load(tmp_path / "official").kind == "dct"


# -- two writers of one output (exclusive final step) -------------------------------------------------
def other_writer_finishes_first(monkeypatch, target: Path, make) -> None:
    """The other process's output appears after our existence check, while we write our temporary copy."""
    real = files.write_new_file

    def write_then_lose_the_race(path, data, mode=None):
        real(path, data, mode)
        if not target.exists():
            make()

    monkeypatch.setattr(files, "write_new_file", write_then_lose_the_race)


def test_a_file_written_meanwhile_by_another_writer_is_not_replaced(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "style.safetensors"
    other_writer_finishes_first(monkeypatch, target, lambda: target.write_bytes(b"first"))
    with pytest.raises(LeakstyleError, match="already exists"):
        files.write_atomic(target, b"second")
    assert target.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["style.safetensors"]


def test_a_file_written_meanwhile_is_replaced_with_force(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "style.safetensors"
    other_writer_finishes_first(monkeypatch, target, lambda: target.write_bytes(b"first"))
    files.write_atomic(target, b"second", force=True)
    assert target.read_bytes() == b"second" and [p.name for p in tmp_path.iterdir()] == ["style.safetensors"]


def test_a_folder_written_meanwhile_by_another_writer_is_not_replaced(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "official"

    def other():
        target.mkdir()
        (target / "stats.safetensors").write_bytes(b"first")

    other_writer_finishes_first(monkeypatch, target, other)
    with pytest.raises(LeakstyleError, match="already exists"):
        ls.save(fitted("dct"), target, format="official")
    assert [p.name for p in target.iterdir()] == ["stats.safetensors"] and (target / "stats.safetensors").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["official"]


def test_of_writers_racing_for_one_file_exactly_one_wins_and_its_bytes_stay(tmp_path: Path) -> None:
    target, n = tmp_path / "style.safetensors", 8
    start, won, lost = threading.Barrier(n), [], []

    def writer(i: int) -> None:
        start.wait()
        try:
            files.write_atomic(target, bytes([i]) * 100_000)
            won.append(i)
        except LeakstyleError as e:
            lost.append(str(e))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == n - 1 and all("already exists" in e for e in lost)
    assert target.read_bytes() == bytes(won) * 100_000 and [p.name for p in tmp_path.iterdir()] == ["style.safetensors"]


def test_without_hard_links_the_final_step_stays_exclusive(tmp_path: Path, monkeypatch) -> None:
    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(files.os, "link", no_links)
    files.write_atomic(tmp_path / "alone.safetensors", b"alone")
    target = tmp_path / "style.safetensors"
    other_writer_finishes_first(monkeypatch, target, lambda: target.write_bytes(b"first"))
    with pytest.raises(LeakstyleError, match="already exists"):
        files.write_atomic(target, b"second")
    assert (tmp_path / "alone.safetensors").read_bytes() == b"alone" and target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone.safetensors", "style.safetensors"]


# -- files a user can share --------------------------------------------------------------------------
@pytest.fixture()
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_and_folders_follow_the_umask(tmp_path: Path, umask_027) -> None:
    assert mode(ls.save(fitted("dct"), tmp_path / "style.safetensors")) == 0o640
    folder = ls.save(fitted("dct"), tmp_path / "official", format="official")
    assert mode(folder) == 0o750 and {mode(p) for p in folder.iterdir()} == {0o640}


def test_a_replaced_file_keeps_its_permissions(tmp_path: Path, umask_027) -> None:
    path = tmp_path / "style.safetensors"
    path.write_bytes(b"old")
    path.chmod(0o664)
    ls.save(fitted("dct"), path, force=True)
    assert mode(path) == 0o664


def test_a_replaced_official_folder_keeps_its_permissions(tmp_path: Path, umask_027) -> None:
    folder = ls.save(fitted("pixel"), tmp_path / "official", format="official")
    folder.chmod(0o755)
    (folder / "stats.safetensors").chmod(0o644)
    ls.save(fitted("dct"), folder, format="official", force=True)
    assert mode(folder) == 0o755 and mode(folder / "stats.safetensors") == 0o644
    assert mode(folder / "statistic_type.txt") == 0o640  # was there before too, written under umask 027


SAVE_A_STYLE = """
import sys, torch, leakstyle as ls
from leakstyle.moments import Moments

def save_style(out):
    m = Moments.for_dct(4, 8, 12, 3)
    m.update(torch.randn(10, 4, 8, 12, generator=torch.Generator().manual_seed(0)))
    meta = {f"key{i}": str(i) for i in range(12)} | {"space": "latent", "model": "org/model"}
    ls.save(ls.StyleDistribution.from_moments(m, meta), out)

if __name__ == "__main__":
    save_style(sys.argv[1])
"""


def test_equal_styles_saved_in_processes_with_different_hash_seeds_are_byte_identical(tmp_path: Path) -> None:
    """safetensors' own writer orders metadata as a random hash map does (even between calls in one process)."""
    here, there = tmp_path / "here.safetensors", tmp_path / "there.safetensors"
    namespace = {"__name__": "in_this_process"}
    exec(SAVE_A_STYLE, namespace)
    namespace["save_style"](here)
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    # the folder of the leakstyle under test, not all of sys.path: pytest puts the repository's parent there (the
    # repository has a root __init__.py for ComfyUI), and in a clone named leakstyle that folder would win
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(Path(ls.__file__).parents[1])}
    subprocess.run([sys.executable, "-c", SAVE_A_STYLE, str(there)], check=True, env=env)
    assert here.read_bytes() == there.read_bytes()


def test_two_saves_in_one_process_are_byte_identical(tmp_path: Path) -> None:
    style = fitted("dct")
    style.metadata.update({f"key{i}": str(i) for i in range(12)})
    a, b = ls.save(style, tmp_path / "a.safetensors"), ls.save(style, tmp_path / "b.safetensors")
    assert a.read_bytes() == b.read_bytes()


def test_two_fits_of_the_same_images_give_identical_files(tmp_path: Path) -> None:
    images = write_images(tmp_path / "images", n=4, size=16)
    for name in ("a", "b"):
        assert main(["fit", str(images), "--space", "pixel", "--resolution", "16", "-o", str(tmp_path / f"{name}.safetensors"),
                     "--quiet"]) == 0
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_safetensors_bytes_keep_the_metadata_readable_and_sorted(tmp_path: Path) -> None:
    data = files.safetensors_bytes({"x": torch.arange(3.0)}, {"b": "2", "a": "1", "é": "ü"})
    (tmp_path / "x.safetensors").write_bytes(data)
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert f.metadata() == {"a": "1", "b": "2", "é": "ü"} and torch.equal(f.get_tensor("x"), torch.arange(3.0))
    header = data[8:8 + int.from_bytes(data[:8], "little")]
    assert header.index(b'"a"') < header.index(b'"b"') and len(header) % 8 == 0


def test_the_embedded_model_is_recorded_by_name_not_by_install_path() -> None:
    pipe = types.SimpleNamespace(name_or_path=str(EMBEDDED_MODEL), config=types.SimpleNamespace())
    assert model_name(pipe) == "leakstyle/mini-sd"
    assert model_name(types.SimpleNamespace(name_or_path="org/model", config=None)) == "org/model"


def test_distribution_module_does_not_import_files() -> None:
    """Saving lives in files alone (ls.save(style, path)): no import circle between the two modules."""
    source = Path(ls.distribution.__file__).read_text()
    imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    assert "files" not in imported and not hasattr(StyleDistribution, "save")


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
assumed_order = pytest.mark.filterwarnings("ignore::leakstyle.files.LowFrequencyOrderWarning")
REFERENCES = {"A1": ("pixel", 0, 96), "A2": ("pixel", 0, 64), "C": ("dct", 3, 96), "D": ("dct", 1, 96)}


@assumed_order
@pytest.mark.parametrize("name", REFERENCES)
def test_reference_file_loads_with_its_type_components_and_shape(reference: Path, name: str) -> None:
    kind, components, size = REFERENCES[name]
    style = ls.load(reference / name)
    assert (style.kind, style.components) == (kind, components)
    assert (style.channels, style.height, style.width) == (4, size, size)


@assumed_order
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


@assumed_order
@pytest.mark.parametrize("name", ["C", "D"])
def test_reference_dct_samples_have_the_file_dc_mean(reference: Path, name: str) -> None:
    """DC of a sample = 96 x its channel mean; its variance is the file's DC variance plus the DC that the
    per-element high-frequency noise carries, mean(var_hf)."""
    style, num = ls.load(reference / name), 400
    dc = 96 * style.sample(num, generator=generator(1)).double().mean((2, 3))  # [num, 4]
    dc_var = style.lf_cov.double().diag()[:4] + style.var.double().mean((1, 2))
    error = (dc.mean(0) - style.lf_mean.double()[:4]).abs()
    assert (error < Z * (dc_var / num).sqrt()).all(), error


@assumed_order
@pytest.mark.parametrize("name", ["C", "D"])
def test_reference_dct_files_have_the_documented_coco_channel_means(reference: Path, name: str) -> None:
    documented = torch.tensor([0.42, -0.28, 0.18, 0.24])
    torch.testing.assert_close(ls.load(reference / name).channel_means(), documented, rtol=0, atol=0.005)


@assumed_order
def test_reference_components_are_dc_then_horizontal_then_vertical(reference: Path) -> None:
    """Photos are about as often mirrored left-right as not, so the horizontal frequency (0, 1) has a mean near 0,
    while the vertical one (1, 0) does not (sky above, ground below). Swapping the two order rules swaps them."""
    style = ls.load(reference / "C")
    assert style.lf_indices.tolist() == [[0, 0], [0, 1], [1, 0]]
    mu = style.lf_mean.view(3, 4)
    assert mu[1].norm() < 0.2 * mu[2].norm()


@assumed_order
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


def test_reference_folder_with_three_components_warns_once_which_order_it_assumes(reference: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        style = ls.load(reference / "C")
    orders = [w for w in caught if issubclass(w.category, files.LowFrequencyOrderWarning)]
    assert len(orders) == 1 and "assuming 0,0;0,1;1,0" in str(orders[0].message)
    assert style.lf_indices.tolist() == [[0, 0], [0, 1], [1, 0]]


def test_reference_folder_with_the_dc_alone_has_no_order_to_warn_about(reference: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ls.load(reference / "D").components == 1


# -- the order of low-frequency components in official folders -----------------------------------------
def official_without_record(tmp_path: Path) -> tuple[StyleDistribution, Path]:
    """An official folder as the official code writes it: the tensors and the type, no recorded order."""
    style = fitted("dct")
    folder = tmp_path / "official-code"
    folder.mkdir()
    save_file(files.official_tensors(style), folder / "stats.safetensors")
    (folder / "statistic_type.txt").write_text("dct+pixel")
    return style, folder


def test_official_folder_without_a_record_is_read_in_the_reference_order_with_a_warning(tmp_path: Path) -> None:
    style, folder = official_without_record(tmp_path)
    with pytest.warns(files.LowFrequencyOrderWarning, match="--lf-order"):
        loaded = ls.load(folder)
    assert loaded.lf_indices.tolist() == [[0, 0], [0, 1], [1, 0]]


def test_a_given_lf_order_relabels_the_components_without_a_warning(tmp_path: Path) -> None:
    style, folder = official_without_record(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = ls.load(folder, lf_order=[(0, 0), (1, 0), (0, 1)])
        also = ls.load(folder, lf_order="0,0; 1,0; 0,1")
    assert loaded.lf_indices.tolist() == also.lf_indices.tolist() == [[0, 0], [1, 0], [0, 1]]
    assert torch.equal(loaded.lf_mean, style.lf_mean) and torch.equal(loaded.lf_cov, style.lf_cov)
    assert not torch.allclose(loaded.sample(1, generator=generator(0)), style.sample(1, generator=generator(0)))


def test_official_folder_records_its_order_where_the_official_loader_does_not_look(tmp_path: Path) -> None:
    style, folder = official_without_record(tmp_path)
    swapped = ls.load(folder, lf_order="0,0;1,0;0,1")
    written = ls.save(swapped, tmp_path / "written", format="official")
    assert sorted(p.name for p in written.iterdir()) == ["statistic_type.txt", "stats.safetensors"]
    assert set(load_file(written / "stats.safetensors")) == set(files.DCT_TENSORS)  # what the official loader reads
    with safe_open(str(written / "stats.safetensors"), framework="pt") as f:
        assert f.metadata() == {"lf_component_indices": "0,0;1,0;0,1"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = ls.load(written)
    assert back.lf_indices.tolist() == [[0, 0], [1, 0], [0, 1]] and "lf_component_indices" not in back.metadata


def test_an_order_that_is_not_the_lowest_frequencies_cannot_be_written_as_official(tmp_path: Path) -> None:
    x = torch.randn(10, C, H, W, generator=generator(0))
    moments = Moments("dct", C, H, W, torch.tensor([[0, 0], [2, 2]]))
    moments.update(x)
    with pytest.raises(StyleFileError, match="not the 2 lowest"):
        ls.save(StyleDistribution.from_moments(moments), tmp_path / "official", format="official")
    assert list(tmp_path.iterdir()) == []


def test_cli_lf_order_is_read_by_inspect_and_convert(tmp_path: Path, capsys) -> None:
    _, folder = official_without_record(tmp_path)
    assert main(["inspect", str(folder), "--lf-order", "0,0;1,0;0,1"]) == 0
    captured = capsys.readouterr()
    assert "(0,0), (1,0), (0,1)" in captured.out and "warning" not in captured.err
    assert main(["convert", str(folder), str(tmp_path / "own.safetensors"), "--to", "leakstyle", "--lf-order", "0,0;1,0;0,1"]) == 0
    assert ls.load(tmp_path / "own.safetensors").lf_indices.tolist() == [[0, 0], [1, 0], [0, 1]]


def test_cli_says_once_which_order_it_assumes(tmp_path: Path, capsys) -> None:
    _, folder = official_without_record(tmp_path)
    assert main(["inspect", str(folder)]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("leakstyle: warning:")]
    assert len(warned) == 1 and "assuming 0,0;0,1;1,0" in warned[0]


# -- inspect: the mean colour with the model the file records -----------------------------------------
def recorded(tmp_path: Path, model: str) -> Path:
    style = fitted("dct")
    style.metadata["model"] = model
    return ls.save(style, tmp_path / "style.safetensors")


def test_inspect_decodes_the_mean_colour_with_a_recorded_local_model(tmp_path: Path, sd_path, capsys) -> None:
    assert main(["inspect", str(recorded(tmp_path, str(sd_path)))]) == 0
    assert "mean colour: #" in (out := capsys.readouterr().out) and "the model the file records" in out


@pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").exists(), reason="embedded model not built")
def test_inspect_decodes_the_mean_colour_with_the_recorded_embedded_model(tmp_path: Path, capsys) -> None:
    assert main(["inspect", str(recorded(tmp_path, "leakstyle/mini-sd"))]) == 0
    assert "(decoded with leakstyle/mini-sd, the model the file records)" in capsys.readouterr().out


def test_inspect_downloads_no_recorded_hub_model_and_says_why(tmp_path: Path, capsys) -> None:
    assert main(["inspect", str(recorded(tmp_path, "someone/their-model"))]) == 0
    assert "mean colour: not shown: the file records the model someone/their-model" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["generate", "--prompt", "x", "-o", "out"], ["report", "--reference", ".", "-o", "out"]])
def test_generate_and_report_pass_lf_order_to_the_style_they_read(tmp_path: Path, capsys, command) -> None:
    _, folder = official_without_record(tmp_path)
    message = run_error([*command, "--style", str(folder), "--lf-order", "0,0;1,0;5,5"], capsys)
    assert "is not the 3 lowest frequencies" in message
