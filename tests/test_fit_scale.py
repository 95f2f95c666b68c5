"""Fitting at scale: list files, tar shards, Hugging Face datasets, DataLoader workers, and torchrun processes."""

import io
import os
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
import torch

import leakstyle as ls
from leakstyle import sources
from leakstyle.cli import main
from leakstyle.fit import SkippedImagesWarning
from leakstyle.sources import Share

from helpers import run_error, write_images

SRC = Path(__file__).resolve().parents[1] / "src"


def assert_same_fit(a, b, atol=1e-5):
    """Two fits of the same images: same count, and statistics equal within float32 encode tolerance."""
    assert a.image_count == b.image_count
    assert a.kind == b.kind
    for name in ("mean", "var", "lf_mean", "lf_cov"):
        if getattr(a, name) is not None:
            torch.testing.assert_close(getattr(a, name).double(), getattr(b, name).double(), atol=atol, rtol=1e-4,
                                       msg=name)


def quiet_fit(images, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImagesWarning)
        return ls.fit(images, progress=False, **kw)


PIXELS = dict(space="pixel", kind="dct", components=2, resolution=16)


def write_shards(folder: Path, images: list[Path], per_shard: int, corrupt: set[int] = frozenset()) -> str:
    """WebDataset shards shards-000.tar ...: sample i is {i:04d}.png (garbage bytes for i in `corrupt`) and
    {i:04d}.txt; returns the brace pattern that names them."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = [images[k:k + per_shard] for k in range(0, len(images), per_shard)]
    for s, chunk in enumerate(shards):
        with tarfile.open(folder / f"shards-{s:03d}.tar", "w") as tar:
            for j, path in enumerate(chunk):
                i = s * per_shard + j
                for name, data in ((f"{i:04d}.png", b"not a png" if i in corrupt else path.read_bytes()),
                                   (f"{i:04d}.txt", f"caption {i}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"shards-{{000..{len(shards) - 1:03d}}}.tar")


@pytest.fixture()
def images(tmp_path):
    return write_images(tmp_path / "imgs", n=6, size=24)


# -- sharding by global index -------------------------------------------------------------------------
@pytest.mark.parametrize("world,workers,offset", [(1, 1, 0), (2, 1, 0), (3, 2, 0), (2, 3, 5), (4, 1, 3)])
def test_shares_cover_every_index_once_and_agree_with_membership(world, workers, offset):
    count = 23
    seen = []
    for rank in range(world):
        for worker in range(workers):
            share = Share(rank, world, worker, workers, offset)
            indices = list(share.of(count))
            assert indices == [j for j in range(count) if j in share]
            assert all((j + offset) % world == rank for j in indices)
            seen += indices
    assert sorted(seen) == list(range(count))


def test_a_process_beyond_the_images_gets_an_empty_share():
    assert list(Share(rank=3, world=4).of(2)) == []


# -- list files -----------------------------------------------------------------------------------------
def test_list_file_paths_are_relative_to_the_list_and_fit_like_the_files(tmp_path, images):
    lists = tmp_path / "lists"
    lists.mkdir()
    chosen = sorted(images.glob("*.png"))[:4]
    (lists / "files.txt").write_text("# four of the six\n\n" + "".join(f"../imgs/{p.name}\n" for p in chosen))
    from_list = quiet_fit(f"@{lists / 'files.txt'}", **PIXELS)
    from_files = quiet_fit(chosen, **PIXELS)
    assert from_list.image_count == 4
    assert_same_fit(from_list, from_files)
    assert from_list.metadata["source_digest"] == from_files.metadata["source_digest"]


def test_missing_list_file_is_a_one_line_error(tmp_path, capsys):
    line = run_error(["fit", f"@{tmp_path / 'nope.txt'}", "--space", "pixel", "--resolution", "16",
                      "-o", str(tmp_path / "o.st")], capsys)
    assert "list file" in line and "nope.txt" in line


def test_missing_path_in_a_list_file_names_the_line(tmp_path, images, capsys):
    (tmp_path / "files.txt").write_text("imgs/img0.png\nimgs/gone.png\n")
    line = run_error(["fit", f"@{tmp_path / 'files.txt'}", "--space", "pixel", "--resolution", "16",
                      "-o", str(tmp_path / "o.st")], capsys)
    assert "line 2" in line and "gone.png" in line


# -- DataLoader workers ---------------------------------------------------------------------------------
def test_workers_decode_the_same_crops_and_flips_as_the_main_process(images):
    options = dict(PIXELS, random_crop=True, flip=True, seed=3, batch_size=2)
    assert_same_fit(quiet_fit(images, workers=2, **options), quiet_fit(images, workers=0, **options), atol=1e-10)


def test_a_negative_worker_count_is_refused(images):
    with pytest.raises(ls.ImageError, match="--workers"):
        quiet_fit(images, workers=-1, **PIXELS)


# -- tar shards -------------------------------------------------------------------------------------------
def test_tar_shards_fit_like_the_same_images_as_files(tmp_path, images):
    pytest.importorskip("webdataset")
    paths = sorted(images.glob("*.png"))
    pattern = write_shards(tmp_path / "tars", paths, per_shard=4)
    options = dict(PIXELS, random_crop=True, flip=True, seed=1)
    assert_same_fit(quiet_fit(pattern, workers=2, **options), quiet_fit(paths, **options), atol=1e-10)


def test_a_corrupt_tar_member_is_skipped_with_a_warning(tmp_path, images):
    pytest.importorskip("webdataset")
    pattern = write_shards(tmp_path / "tars", sorted(images.glob("*.png")), per_shard=3, corrupt={4})
    with pytest.warns(SkippedImagesWarning, match=r"skipped 1 of 6 .*0004\.png"):
        style = ls.fit(pattern, progress=False, **PIXELS)
    assert style.image_count == 5


def test_a_truncated_shard_is_read_up_to_the_break_and_the_rest_skipped_with_a_warning(tmp_path, images):
    pytest.importorskip("webdataset")
    paths = sorted(images.glob("*.png"))
    pattern = write_shards(tmp_path / "tars", paths, per_shard=3)
    shard = tmp_path / "tars" / "shards-001.tar"
    blocks = lambda size: 512 * (1 + -(-size // 512))  # noqa: E731  a tar member: header and data, in 512-byte blocks
    first_sample = blocks(paths[3].stat().st_size) + blocks(len("caption 3"))
    shard.write_bytes(shard.read_bytes()[:first_sample + 700])  # the second sample's image is cut short
    with pytest.warns(SkippedImagesWarning, match=r"shards-001\.tar: broken tar data"):
        style = ls.fit(pattern, progress=False, **PIXELS)
    assert style.image_count == 4  # shard 000's three, and the one image before the break


def test_a_shard_pattern_that_matches_nothing_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("webdataset")
    line = run_error(["fit", str(tmp_path / "shards-{000..009}.tar"), "--space", "pixel", "--resolution", "16",
                      "-o", str(tmp_path / "o.st")], capsys)
    assert "no tar shards match" in line


def test_a_missing_shard_of_a_pattern_is_named(tmp_path, images, capsys):
    pytest.importorskip("webdataset")
    pattern = write_shards(tmp_path / "tars", sorted(images.glob("*.png")), per_shard=3)
    line = run_error(["fit", pattern.replace("001}", "002}"), "--space", "pixel", "--resolution", "16",
                      "-o", str(tmp_path / "o.st")], capsys)
    assert "shards-002.tar" in line and "does not exist" in line


def test_a_missing_extra_names_the_pip_command(tmp_path, images, monkeypatch, capsys):
    pattern = write_shards(tmp_path / "tars", sorted(images.glob("*.png")), per_shard=3)
    monkeypatch.setitem(sys.modules, "webdataset", None)  # import webdataset now raises ImportError
    line = run_error(["fit", pattern, "--space", "pixel", "--resolution", "16", "-o", str(tmp_path / "o.st")], capsys)
    assert "pip install 'leakstyle[scale]'" in line


# -- Hugging Face datasets ----------------------------------------------------------------------------------
@pytest.fixture()
def hf_datasets(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    datasets.disable_progress_bars()
    return datasets


@pytest.fixture()
def parquet_dataset(tmp_path, images, hf_datasets):
    """A parquet dataset folder with images in column `picture` (as bytes) and a caption column."""
    paths = sorted(images.glob("*.png"))
    data = hf_datasets.Dataset.from_dict({"picture": [{"bytes": p.read_bytes(), "path": None} for p in paths],
                                          "caption": [p.stem for p in paths]})
    data = data.cast_column("picture", hf_datasets.Image())
    folder = tmp_path / "parquet"
    folder.mkdir()
    data.to_parquet(str(folder / "train.parquet"))
    return folder


def test_an_imagefolder_dataset_fits_like_its_files(images, hf_datasets):
    from_dataset = quiet_fit(sources.HubDataset(str(images)), **PIXELS)
    assert_same_fit(from_dataset, quiet_fit(images, **PIXELS), atol=1e-10)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_parquet_dataset_fits_like_its_images(parquet_dataset, images, streaming):
    source = sources.HubDataset(str(parquet_dataset), column="picture", streaming=streaming)
    assert_same_fit(quiet_fit(source, workers=2 if streaming else 0, **PIXELS), quiet_fit(images, **PIXELS), atol=1e-10)


def test_cli_fits_a_dataset_column(tmp_path, parquet_dataset):
    out = tmp_path / "style.safetensors"
    assert main(["fit", "--dataset", str(parquet_dataset), "--image-column", "picture", "--space", "pixel",
                        "--resolution", "16", "-o", str(out), "--quiet"]) == 0
    assert ls.load(out).image_count == 6


def test_a_dataset_without_the_column_is_a_one_line_error(tmp_path, parquet_dataset, capsys):
    line = run_error(["fit", "--dataset", str(parquet_dataset), "--space", "pixel", "--resolution", "16",
                      "-o", str(tmp_path / "o.st")], capsys)
    assert "no column 'image'" in line and "picture, caption" in line and "--image-column" in line


def test_a_column_that_holds_no_images_is_refused(tmp_path, parquet_dataset, capsys):
    line = run_error(["fit", "--dataset", str(parquet_dataset), "--image-column", "caption", "--space", "pixel",
                      "--resolution", "16", "-o", str(tmp_path / "o.st")], capsys)
    assert "not images" in line


@pytest.mark.parametrize("args,message", [
    (["IMAGES", "--dataset", "x"], "not both"),
    ([], "no images given"),
    (["IMAGES", "--streaming"], "--streaming applies to --dataset only"),
    (["IMAGES", "--image-column", "jpg"], "--image-column applies to --dataset and tar shards only"),
])
def test_input_options_that_do_not_fit_together_are_refused(tmp_path, images, capsys, args, message):
    args = [str(images) if a == "IMAGES" else a for a in args]
    line = run_error(["fit", *args, "--space", "pixel", "--resolution", "16", "-o", str(tmp_path / "o.st")], capsys)
    assert message in line


def test_a_dataset_that_cannot_be_loaded_is_a_one_line_error(tmp_path, hf_datasets, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.unknownformat").write_text("x")
    line = run_error(["fit", "--dataset", str(tmp_path / "notes"), "--space", "pixel", "--resolution", "16",
                      "-o", str(tmp_path / "o.st")], capsys)
    assert "cannot load dataset" in line


# -- several processes (torchrun, gloo) ---------------------------------------------------------------------
def torchrun(nproc: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "leakstyle.cli", "fit", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_fit_what_one_fits(tmp_path, sd_path):
    folder = write_images(tmp_path / "imgs", n=5, size=40, seed=2)
    for broken in ("img1.png", "img3.png"):  # both in process 1's share: it fits no image and still takes part
        (folder / broken).write_bytes(b"not an image")
    options = ["--random-crop", "--flip", "--seed", "4", "--resolution", "32", "--batch-size", "2"]
    run = torchrun(2, [str(folder), "--model", str(sd_path), *options, "-o", "two.safetensors", "--quiet"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("fitted dct statistics on 3 images") == 1  # process 0 writes and says so, once
    assert run.stderr.count("skipped 2 of 5 images") == 1
    two = ls.load(tmp_path / "two.safetensors")
    one = quiet_fit(folder, pipe=ls.load_pipeline(sd_path, device="cpu"), random_crop=True, flip=True, seed=4,
                    resolution=32, batch_size=8)
    assert_same_fit(two, one)
    assert two.metadata["source_digest"] == one.metadata["source_digest"]


def test_a_process_without_images_takes_part(tmp_path):
    folder = write_images(tmp_path / "imgs", n=2, size=16)
    run = torchrun(3, [str(folder), "--space", "pixel", "--type", "pixel", "--resolution", "16", "-o", "three.st",
                       "--quiet"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_fit(ls.load(tmp_path / "three.st"), quiet_fit(folder, space="pixel", kind="pixel", resolution=16),
                    atol=1e-10)


def test_an_error_in_one_process_stops_all_with_one_line(tmp_path):
    folder = write_images(tmp_path / "imgs", n=4, size=16)
    (folder / "img1.png").write_bytes(b"not an image")  # process 1's share
    run = torchrun(2, [str(folder), "--space", "pixel", "--resolution", "16", "--strict", "-o", "o.st", "--quiet"],
                   tmp_path)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("leakstyle: error:")]
    assert len(errors) == 1 and "img1.png" in errors[0], run.stderr[-3000:]
    assert str(SRC) not in run.stderr  # no traceback of ours (torchrun prints its own about the failed processes)
    assert not (tmp_path / "o.st").exists()
