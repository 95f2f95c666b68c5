"""Specification of leakstyle.images: paths -> RGB images -> batches in [-1, 1]."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from leakstyle.errors import ImageError
from leakstyle.sources import Batches, ImageFiles
from leakstyle.images import (
    IMAGE_SUFFIXES,
    CorruptImageError,
    digest_paths,
    list_images,
    open_image,
    parse_resolution,
    resize_and_crop,
    to_tensor,
)


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def truncated_png(path: Path) -> Path:
    save(noise(32, 32), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# parse_resolution


@pytest.mark.parametrize(
    ("value", "expected"),
    [(64, (64, 64)), ("64", (64, 64)), ("96x64", (96, 64)), (" 96X64 ", (96, 64))],
)
def test_parse_resolution_reads_square_and_width_by_height(value: str | int, expected: tuple[int, int]) -> None:
    assert parse_resolution(value) == expected


@pytest.mark.parametrize("value", ["", "abc", "64x", "x64", "64x32x16", "6.4", "0", "64x0", 0, -8, True])
def test_parse_resolution_rejects_malformed_or_non_positive_values(value: str | int) -> None:
    with pytest.raises(ImageError, match="resolution"):
        parse_resolution(value)


# list_images


def test_list_images_recurses_sorts_dedups_and_skips_hidden(tmp_path: Path) -> None:
    b = save(noise(4, 4), tmp_path / "imgs" / "b.png")
    a = save(noise(4, 4), tmp_path / "imgs" / "sub" / "a.JPG")
    save(noise(4, 4), tmp_path / "imgs" / ".hidden.png")
    save(noise(4, 4), tmp_path / "imgs" / ".cache" / "c.png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    found = list_images([tmp_path / "imgs", b, str(tmp_path / "imgs" / "sub" / ".." / "b.png")])
    assert found == sorted([a, b])


def test_list_images_rejects_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file or folder"):
        list_images([tmp_path / "missing"])


def test_list_images_rejects_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="is empty"):
        list_images([tmp_path / "empty"])


def test_list_images_rejects_a_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hello")
    with pytest.raises(ImageError, match=r"no images \(.*\.png.*\) in folder"):
        list_images([tmp_path / "docs"])


def test_list_images_rejects_an_explicit_non_image_file(tmp_path: Path) -> None:
    save(noise(4, 4), tmp_path / "ok.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageError, match="not an image"):
        list_images([tmp_path / "ok.png", tmp_path / "notes.txt"])


def test_list_images_rejects_an_empty_list() -> None:
    with pytest.raises(ImageError, match="no images"):
        list_images([])


def test_image_suffixes_are_lower_case_with_a_dot() -> None:
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"} == IMAGE_SUFFIXES


def test_digest_paths_ignores_order_but_sees_sizes(tmp_path: Path) -> None:
    a = save(noise(4, 4), tmp_path / "a.png")
    b = save(noise(8, 8), tmp_path / "b.png")
    digest = digest_paths([a, b])
    assert digest == digest_paths([b, a])
    save(noise(16, 16), b)
    assert digest != digest_paths([a, b])


# open_image


@pytest.mark.parametrize("suffix", sorted(IMAGE_SUFFIXES))
def test_open_image_reads_every_format_as_rgb_of_the_right_size(tmp_path: Path, suffix: str) -> None:
    path = save(Image.new("RGB", (12, 7), (200, 40, 90)), tmp_path / f"img{suffix}")
    image = open_image(path)
    assert (image.mode, image.size) == ("RGB", (12, 7))
    assert np.abs(np.asarray(image, dtype=int)[3, 6] - (200, 40, 90)).max() <= 8


def transparent_pixel_at_1_2(mode: str) -> tuple[Image.Image, dict[str, int]]:
    """A black 4x4 image in ``mode`` whose pixel (1, 2) is fully transparent, and the save options it needs."""
    if mode == "P":
        image = Image.new("P", (4, 4), 0)
        image.putpalette([0, 0, 0, 0, 0, 0])
        image.putpixel((1, 2), 1)
        return image, {"transparency": 1}
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 255))
    image.putpixel((1, 2), (0, 0, 0, 0))
    return image.convert(mode), {}


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_open_image_composites_transparent_pixels_on_white(tmp_path: Path, mode: str) -> None:
    image, options = transparent_pixel_at_1_2(mode)
    path = save(image, tmp_path / "alpha.png", **options)
    pixels = np.asarray(open_image(path))
    assert tuple(pixels[2, 1]) == (255, 255, 255)
    assert tuple(pixels[0, 0]) == (0, 0, 0)


def test_open_image_turns_greyscale_into_equal_rgb_channels(tmp_path: Path) -> None:
    path = save(Image.new("L", (3, 3), 100), tmp_path / "grey.png")
    assert tuple(np.asarray(open_image(path))[1, 1]) == (100, 100, 100)


def test_open_image_maps_palette_indices_to_their_colours(tmp_path: Path) -> None:
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([255, 0, 0, 0, 0, 255])
    palette_image.putpixel((1, 0), 1)
    path = save(palette_image, tmp_path / "palette.png")
    pixels = np.asarray(open_image(path))
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert tuple(pixels[0, 1]) == (0, 0, 255)


@pytest.mark.parametrize(("dtype", "suffix"), [(np.uint16, ".png"), (np.int32, ".tif")])
def test_open_image_scales_16_bit_greyscale_to_8_bit(tmp_path: Path, dtype: type, suffix: str) -> None:
    values = np.array([[65535, 32768, 0]], dtype=dtype)
    path = save(Image.fromarray(values), tmp_path / f"deep{suffix}")
    assert Image.open(path).mode in {"I;16", "I"}
    assert list(np.asarray(open_image(path))[0, :, 0]) == [255, 128, 0]


def test_open_image_converts_cmyk_to_rgb(tmp_path: Path) -> None:
    path = save(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    pixel = np.asarray(open_image(path), dtype=int)[2, 2]
    assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


def test_open_image_applies_exif_orientation(tmp_path: Path) -> None:
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    image.paste((0, 0, 255), (10, 0, 20, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(image, tmp_path / "rotated.jpg", exif=exif, quality=95)
    pixels = np.asarray(open_image(path), dtype=int)
    assert pixels.shape == (20, 10, 3)
    assert pixels[3, 5, 0] > 200 and pixels[3, 5, 2] < 60  # left half (red) is now on top
    assert pixels[16, 5, 2] > 200 and pixels[16, 5, 0] < 60


def test_open_image_raises_corrupt_image_error_naming_a_truncated_file(tmp_path: Path) -> None:
    path = truncated_png(tmp_path / "broken.png")
    with pytest.raises(CorruptImageError, match="broken.png"):
        open_image(path)


@pytest.mark.parametrize("kind", ["dangling", "looping"])
def test_open_image_names_a_broken_symbolic_link(tmp_path: Path, kind: str) -> None:
    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "gone.png" if kind == "dangling" else link)
    with pytest.raises(CorruptImageError, match="symbolic link") as info:
        open_image(link)
    assert info.value.path == link


def test_list_images_keeps_a_broken_link_in_a_folder_for_the_batches_to_skip(tmp_path: Path) -> None:
    noise(8, 8).save(tmp_path / "a.png")
    noise(8, 8, seed=1).save(tmp_path / "b.png")
    (tmp_path / "c.png").symlink_to(tmp_path / "gone.png")
    paths = list_images([tmp_path])
    batches = Batches(ImageFiles(paths), 8, 8)
    assert sum(len(b) for b in batches.pixels()) == 2
    assert [Path(name).name for name, _ in batches.skipped] == ["c.png"]


def test_open_image_raises_corrupt_image_error_for_a_non_image(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_bytes(b"this is text, not a PNG")
    with pytest.raises(CorruptImageError, match="fake.png"):
        open_image(path)


@pytest.mark.parametrize("limit", [150, 50], ids=["warning", "error"])
def test_open_image_refuses_decompression_bombs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    path = save(noise(20, 10), tmp_path / "bomb.png")  # 200 pixels: > limit warns, > 2 * limit errors
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageError, match=r"bomb\.png.*200 pixels") as caught:
        open_image(path)
    assert not isinstance(caught.value, CorruptImageError)


# resize_and_crop


@pytest.mark.parametrize("source", [(300, 100), (100, 300), (64, 64), (17, 5)])
@pytest.mark.parametrize("target", [(64, 64), (96, 64), (48, 80)])
def test_resize_and_crop_gives_exactly_the_target_size(source: tuple[int, int], target: tuple[int, int]) -> None:
    out = resize_and_crop(noise(*source), *target, random_crop=True, flip=True, rng=random.Random(1))
    assert out.size == target


def test_resize_and_crop_keeps_the_centre_by_default() -> None:
    image = Image.new("RGB", (60, 20), (255, 0, 0))
    image.paste((0, 255, 0), (20, 0, 40, 20))
    image.paste((0, 0, 255), (40, 0, 60, 20))
    pixels = np.asarray(resize_and_crop(image, 10, 10), dtype=float)
    assert pixels[:, :, 1].mean() > 230
    assert pixels[:, 2:8, 0].max() < 10 and pixels[:, 2:8, 2].max() < 10


def test_resize_and_crop_random_crop_and_flip_repeat_with_the_same_seed() -> None:
    image = noise(120, 40)
    first = resize_and_crop(image, 32, 32, random_crop=True, flip=True, rng=random.Random(7))
    second = resize_and_crop(image, 32, 32, random_crop=True, flip=True, rng=random.Random(7))
    assert first.tobytes() == second.tobytes()


def test_resize_and_crop_random_crop_differs_across_seeds() -> None:
    image = noise(120, 40)
    crops = {resize_and_crop(image, 32, 32, random_crop=True, rng=random.Random(s)).tobytes() for s in range(4)}
    assert len(crops) == 4


def test_resize_and_crop_flip_mirrors_some_seeds_and_not_others() -> None:
    image = noise(32, 32)
    mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).tobytes()
    outcomes = {resize_and_crop(image, 32, 32, flip=True, rng=random.Random(s)).tobytes() for s in range(10)}
    assert outcomes == {image.tobytes(), mirrored}


# to_tensor


def test_to_tensor_scales_to_minus_one_one_in_channel_first_order() -> None:
    image = Image.new("RGB", (5, 4), (255, 0, 0))
    image.putpixel((0, 0), (0, 255, 255))
    tensor = to_tensor(image)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 4, 5)
    assert tensor[:, 1, 1].tolist() == [1.0, -1.0, -1.0]
    assert tensor[:, 0, 0].tolist() == [-1.0, 1.0, 1.0]
    assert to_tensor(Image.new("RGB", (1, 1), (51, 51, 51)))[0, 0, 0].item() == pytest.approx(51 / 127.5 - 1)


# batches of image files (sources.Batches of sources.ImageFiles)


def make_images(folder: Path, count: int) -> list[Path]:
    return [save(noise(40, 30, seed=i), folder / f"{i:02d}.png") for i in range(count)]


def image_batches(paths, width, height, **options) -> Batches:
    return Batches(ImageFiles(paths), width, height, **options)


def test_image_batches_yield_full_batches_then_a_partial_one(tmp_path: Path) -> None:
    batches = image_batches(make_images(tmp_path, 5), width=24, height=16, batch_size=2)
    assert [(tuple(pixels.shape), read) for pixels, read in batches] == [((2, 3, 16, 24), 2), ((2, 3, 16, 24), 2),
                                                                         ((1, 3, 16, 24), 1)]
    assert batches.skipped == []


def test_image_batches_skip_and_record_corrupt_images(tmp_path: Path) -> None:
    paths = make_images(tmp_path, 3)
    broken = truncated_png(tmp_path / "01b.png")
    batches = image_batches(sorted([*paths, broken]), width=8, height=8, batch_size=2)
    assert [len(pixels) for pixels in batches.pixels()] == [2, 1]  # 00, 01 | 01b (skipped), 02
    assert [name for name, _ in batches.skipped] == [str(broken)]
    assert "truncated" in batches.skipped[0][1]


def test_a_batch_of_corrupt_images_only_is_left_out_of_the_pixels_and_counted(tmp_path: Path) -> None:
    broken = [truncated_png(tmp_path / f"{i}.png") for i in range(2)]
    batches = image_batches([*broken, *make_images(tmp_path, 1)], width=8, height=8, batch_size=2)
    assert [(None if pixels is None else len(pixels), read) for pixels, read in batches] == [(None, 2), (1, 1)]
    assert [len(pixels) for pixels in batches.pixels()] == [1] and len(batches.skipped) == 2


def test_image_batches_raise_on_the_first_corrupt_image_when_strict(tmp_path: Path) -> None:
    broken = truncated_png(tmp_path / "01b.png")
    batches = image_batches(sorted([*make_images(tmp_path, 3), broken]), width=8, height=8, strict=True)
    with pytest.raises(CorruptImageError, match="01b.png"):
        list(batches)


def test_image_batches_never_skip_decompression_bombs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = image_batches(make_images(tmp_path, 2), width=8, height=8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="decompression bomb"):
        list(batches)


def test_image_batches_repeat_with_the_same_seed_and_differ_across_seeds(tmp_path: Path) -> None:
    paths = make_images(tmp_path, 4)

    def pixels(seed: int) -> torch.Tensor:
        return torch.cat(list(image_batches(paths, 16, 16, random_crop=True, flip=True, seed=seed).pixels()))

    assert torch.equal(pixels(3), pixels(3))
    assert not torch.equal(pixels(3), pixels(4))
