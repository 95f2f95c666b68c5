"""Where the images of a fit come from, and how one process's share of them is decoded in parallel.

A source lists its images in one fixed order, so that every image has a global index, whichever process
reads it: image files and folders, list files (`@files.txt`), WebDataset tar shards (`shards-{000..009}.tar`)
and Hugging Face datasets (`--dataset`). Process `rank` of `world` decodes the images i with
i % world == rank, and DataLoader workers split that share again (see Share), so crops and flips keyed by i
(images.image_rng) are the same in a one-process fit and a sharded one.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from .devices import check_fits
from .errors import ImageError, LeakstyleError
from .images import (IMAGE_SUFFIXES, CorruptImageError, decode_image, digest_paths, image_rng, list_images,
                     open_image, resize_and_crop, to_tensor)

SCALE_EXTRA = "pip install 'leakstyle[scale]'"
TAR_SUFFIX = ".tar"
BYTES_PER_PIXEL = 15  # a batch image decoded (RGB, 3 bytes) and as float32 pixels (12 bytes)
IMAGE_EXTENSIONS = tuple(s.lstrip(".") for s in sorted(IMAGE_SUFFIXES))


def require(module: str, what: str):
    """Import an optional dependency of the `scale` extra, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LeakstyleError(f"{module} is not installed; {what} need {SCALE_EXTRA}") from None


@dataclass(frozen=True)
class Share:
    """The global indices one DataLoader worker of one process decodes.

    Process `rank` of `world` takes i = rank + k * world (k = 0, 1, ...); its worker w of `workers` takes the k
    with k % workers == w, i.e. i = rank + world * (w + m * workers)."""

    rank: int = 0
    world: int = 1
    worker: int = 0
    workers: int = 1
    offset: int = 0  # a source's own index j is the global index j + offset (sources chained after others)

    def __contains__(self, index: int) -> bool:
        i = index + self.offset
        return i % self.world == self.rank and (i // self.world) % self.workers == self.worker

    def of(self, count: int) -> range:
        """This share of a source's own indices 0 .. count-1."""
        step = self.world * self.workers
        return range((self.rank + self.world * self.worker - self.offset) % step, count, step)

    def after(self, offset: int) -> "Share":
        """The same share seen by a source whose index 0 is this one's index `offset`."""
        return Share(self.rank, self.world, self.worker, self.workers, self.offset + offset)


class Record(NamedTuple):
    """One input: its global index, a name for messages, and its file (a path, bytes, or None with a `reason`
    when the source already knows it cannot be read)."""

    index: int
    name: str
    file: Path | bytes | None
    reason: str | None = None


class Source:
    """The images of a fit, in a fixed order. `size` is their number where known without reading them all."""

    size: int | None = None

    def listed(self) -> "Source":
        """This source with its inputs listed (see Inputs); most sources are listed when made."""
        return self

    def records(self, share: Share) -> Iterator[Record]:
        """The records whose index is in `share`, in order."""
        raise NotImplementedError

    def digest(self, skipped: set[str] = frozenset()) -> str:
        """A short hex digest that names the whole input list, of every process (the style file's source_digest).
        Image files in `skipped` (by record name) are left out: a file that was skipped stays skipped."""
        raise NotImplementedError


@dataclass
class ImageFiles(Source):
    """Image files, sorted (see images.list_images)."""

    paths: list[Path]

    def __post_init__(self) -> None:
        self.size = len(self.paths)

    def records(self, share: Share) -> Iterator[Record]:
        for i in share.of(len(self.paths)):
            yield Record(i, str(self.paths[i]), self.paths[i])

    def digest(self, skipped: set[str] = frozenset()) -> str:
        return digest_paths([p for p in self.paths if str(p) not in skipped])


def read_list_file(path: Path) -> list[str]:
    """The entries of a list file: one path a line, relative to the list file's folder (or absolute);
    blank lines and lines starting with # are ignored. Every entry must exist."""
    if not path.is_file():
        raise ImageError(f"list file {path} does not exist; give @FILE with one image path a line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageError(f"cannot read list file {path}: {exc}; give a UTF-8 text file with one path a line") from None
    entries = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry.startswith("@"):
            raise ImageError(f"{path}, line {number}: list files cannot name other list files ({entry})")
        full = Path(entry) if os.path.isabs(entry) else path.parent / entry
        if not full.exists() and not (is_shard_pattern(entry) and "{" in entry):  # patterns: see expand_shards
            raise ImageError(f"{path}, line {number}: no such file or folder: {full}; fix or remove the line")
        entries.append(str(full))
    if not entries:
        raise ImageError(f"list file {path} names no images; put one image path a line in it")
    return entries


def expand_shards(pattern: str) -> list[Path]:
    """The tar files a pattern names: `shards-{000..009}.tar` (brace expansion) or one file; all must exist."""
    if "{" in pattern:
        braceexpand = require("braceexpand", "tar shard patterns")
        names = list(braceexpand.braceexpand(pattern))
    else:
        names = [pattern]
    shards = [Path(n) for n in names if n]
    if not shards:
        raise ImageError(f"tar shard pattern {pattern!r} names no files; write it like shards-{{000..009}}.tar")
    missing = [s for s in shards if not s.is_file()]
    if len(missing) == len(shards):
        raise ImageError(f"no tar shards match {pattern!r} (none of its {len(shards)} files exists, first: {missing[0]})")
    if missing:
        raise ImageError(f"tar shard {missing[0]} of {pattern!r} does not exist ({len(missing)} of {len(shards)} "
                         "missing); fix the pattern or restore the shards")
    return shards


def is_shard_pattern(given: str) -> bool:
    return given.lower().endswith(TAR_SUFFIX) or (".tar" in given.lower() and "{" in given)


@dataclass
class TarShards(Source):
    """WebDataset tar shards: a sample is the files of a shard that share a key (`0001.jpg`, `0001.txt`, ...); its
    image is the member with extension `member` (default: the first with an image extension). Every process and
    worker reads the shards' bytes but decodes only its share. Unreadable members and samples without an image
    are skipped like corrupt images; so is the rest of a shard that is not a valid tar file."""

    shards: list[Path]
    member: str | None = None

    def __post_init__(self) -> None:
        require("webdataset", "tar shards")  # here, not in a DataLoader worker, whose errors come back as tracebacks

    def records(self, share: Share) -> Iterator[Record]:
        wds = require("webdataset", "tar shards")
        errors: list[Exception] = []

        def keep_going(exn: Exception) -> bool:
            errors.append(exn)
            return True

        samples = wds.WebDataset([str(s) for s in self.shards], shardshuffle=False, nodesplitter=None,
                                 workersplitter=None, empty_check=False, handler=keep_going)
        index, report = 0, share.rank == 0 and share.worker == 0  # broken tar data is reported by one worker only
        broken: set[str] = set()
        for sample in samples:
            yield from self._broken(errors, broken, report)
            if index in share:
                yield self._record(index, sample)
            index += 1
        yield from self._broken(errors, broken, report)

    @staticmethod
    def _broken(errors: list[Exception], broken: set[str], report: bool) -> Iterator[Record]:
        """Skipped-record entries (index -1) for tar data webdataset could not read, one per shard (the rest of
        that shard is lost); `errors` is emptied."""
        for exn in errors:
            message = str(exn.args[0]) if exn.args else type(exn).__name__
            files = [a for a in exn.args if hasattr(a, "name")]  # webdataset appends the open stream, or names it
            found = re.search(r"name='([^']+)'", message)
            shard = str(files[0].name) if files else found[1] if found else "a tar shard"
            if report and shard not in broken:
                broken.add(shard)
                reason = re.sub(r" @ <.*>$", "", message)
                yield Record(-1, shard, None, f"broken tar data, the rest of the shard is skipped ({reason})")
        errors.clear()

    def _record(self, index: int, sample: dict) -> Record:
        name = f"{sample.get('__url__', '')}:{sample.get('__key__', '')}"
        if self.member is not None:
            key = self.member
        else:
            key = next((k for k in sample if not k.startswith("__") and k.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), None)
        if key is None or key not in sample:
            what = f"no .{self.member} member" if self.member else f"no image member ({', '.join(IMAGE_EXTENSIONS)})"
            return Record(index, name, None, what)
        return Record(index, f"{name}.{key}", sample[key])

    def digest(self, skipped: set[str] = frozenset()) -> str:
        return digest_paths(self.shards)  # the shards' names and sizes; members skipped or not


@dataclass
class Chain(Source):
    """Image files first, then tar shards: the shards' indices continue after the files'."""

    files: ImageFiles
    shards: TarShards

    def records(self, share: Share) -> Iterator[Record]:
        yield from self.files.records(share)
        offset = len(self.files.paths)
        for r in self.shards.records(share.after(offset)):
            yield r._replace(index=r.index + offset) if r.index >= 0 else r

    def digest(self, skipped: set[str] = frozenset()) -> str:
        both = f"{self.files.digest(skipped)}+{self.shards.digest(skipped)}"
        return hashlib.sha256(both.encode()).hexdigest()[:16]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass
class HubDataset(Source):
    """A Hugging Face dataset (hub id or local folder, e.g. an imagefolder or parquet files) and its image column.

    The column's images are read as bytes and decoded here (as image files are), not by `datasets`. With
    `streaming` nothing is downloaded or converted first: every process reads the stream and decodes its share."""

    name: str
    column: str = "image"
    split: str = "train"
    streaming: bool = False

    def __post_init__(self) -> None:
        datasets = require("datasets", "--dataset inputs")
        try:
            data = datasets.load_dataset(self.name, split=self.split, streaming=self.streaming)
        except Exception as exc:  # the hub, the file formats and the split names all raise their own types
            raise ImageError(f"cannot load dataset {self.name!r} (split {self.split!r}): {_first_line(exc)}") from None
        columns = list(data.column_names or []) if self.streaming else list(data.column_names)
        if columns and self.column not in columns:
            raise ImageError(f"dataset {self.name!r} has no column {self.column!r} (columns: {', '.join(columns)}); "
                             "pass --image-column")
        feature = (data.features or {}).get(self.column)
        if isinstance(feature, datasets.Image):
            data = data.cast_column(self.column, datasets.Image(decode=False))  # bytes: decoded in the workers
        elif not (isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary")) and feature is not None:
            raise ImageError(f"column {self.column!r} of dataset {self.name!r} holds {feature}, not images; "
                             "pass --image-column with an image column")
        self.data = data.select_columns([self.column])
        self.size = None if self.streaming else len(self.data)

    def _record(self, index: int, value) -> Record:
        name = f"{self.name}[{index}]"
        if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
            if value.get("bytes") is not None:
                return Record(index, value.get("path") or name, value["bytes"])
            if value.get("path"):
                return Record(index, value["path"], Path(value["path"]))
        if isinstance(value, (bytes, bytearray)):
            return Record(index, name, bytes(value))
        return Record(index, name, None, f"column {self.column!r} holds no image here")

    def records(self, share: Share) -> Iterator[Record]:
        if not self.streaming:
            for i in share.of(len(self.data)):
                yield self._record(i, self.data[i][self.column])
            return
        index = 0
        for batch in self.data.iter(batch_size=64):
            for value in batch[self.column]:
                if index in share:
                    yield self._record(index, value)
                index += 1

    def digest(self, skipped: set[str] = frozenset()) -> str:
        name = Path(self.name).name if Path(self.name).exists() else self.name
        text = f"dataset\t{name}\t{self.split}\t{self.column}\t{'stream' if self.size is None else self.size}\n"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def inputs(given: Sequence[str | os.PathLike]) -> Source:
    """The source that command-line inputs name: image files, folders, `@list` files and tar shards (patterns).

    Images come first, sorted and de-duplicated as by images.list_images, then the tar shards' samples in the
    order given."""
    entries: list[str] = []
    for g in given:
        g = os.fspath(g)
        entries += read_list_file(Path(g[1:])) if g.startswith("@") else [g]
    shards = [s for e in entries if is_shard_pattern(e) for s in expand_shards(e)]
    others = [e for e in entries if not is_shard_pattern(e)]
    files = ImageFiles(list_images(others)) if others or not shards else None
    if not shards:
        return files
    tars = TarShards(list(dict.fromkeys(shards)))
    return tars if files is None else Chain(files, tars)


def from_arguments(images: Sequence[str | os.PathLike] = (), dataset: str | None = None, image_column: str | None = None,
                   split: str = "train", streaming: bool = False) -> Source:
    """The source of `leakstyle fit`'s options: IMAGES... or --dataset (with --image-column, --split, --streaming).
    For tar shards, --image-column names the member extension that holds the image (e.g. jpg)."""
    if dataset is not None:
        if images:
            raise ImageError("give either image paths or --dataset, not both")
        return HubDataset(dataset, column=image_column or "image", split=split, streaming=streaming)
    if streaming:
        raise ImageError("--streaming applies to --dataset only")
    if not images:
        raise ImageError("no images given; pass image files, folders, @list files, tar shards or --dataset NAME")
    return Inputs([os.fspath(g) for g in images], member=None if image_column is None else image_column.lstrip("."))


@dataclass
class Inputs(Source):
    """Command-line inputs, listed by `listed()` (see inputs) when the fit starts, after its options are checked;
    `member`: the tar member extension that holds the image (--image-column)."""

    given: list[str]
    member: str | None = None

    def listed(self) -> Source:
        source = inputs(self.given)
        if self.member is not None:
            tars = source if isinstance(source, TarShards) else getattr(source, "shards", None)
            if tars is None:
                raise ImageError("--image-column applies to --dataset and tar shards only")
            tars.member = self.member
        return source


# -- decoding one process's share in DataLoader workers ----------------------------------------------------
class Decoded(NamedTuple):
    """A record after decoding: pixels [3, H, W], or why it was skipped (`reason`) or must stop the fit (`error`)."""

    index: int
    name: str
    pixels: torch.Tensor | None
    reason: str | None = None
    error: str | None = None


class _DecodedImages(torch.utils.data.IterableDataset):
    def __init__(self, source: Source, width: int, height: int, random_crop: bool, flip: bool, seed: int,
                 rank: int, world: int) -> None:
        super().__init__()
        self.source, self.size, self.crop = source, (width, height), (random_crop, flip)
        self.seed, self.rank, self.world = seed, rank, world

    def __iter__(self) -> Iterator[Decoded]:
        info = torch.utils.data.get_worker_info()
        share = Share(self.rank, self.world, info.id if info else 0, info.num_workers if info else 1)
        for record in self.source.records(share):
            yield self.decode(record)

    def decode(self, record: Record) -> Decoded:
        if record.file is None:
            return Decoded(record.index, record.name, None, reason=record.reason)
        try:
            if isinstance(record.file, Path):
                image = open_image(record.file)
            else:
                image = decode_image(io.BytesIO(record.file), record.name)
            image = resize_and_crop(image, *self.size, *self.crop, rng=image_rng(self.seed, record.index))
        except CorruptImageError as exc:
            return Decoded(record.index, record.name, None, reason=exc.reason)
        except LeakstyleError as exc:  # e.g. a decompression bomb: not a corrupt image, a stop
            return Decoded(record.index, record.name, None, error=str(exc))
        return Decoded(record.index, record.name, to_tensor(image))


@dataclass
class Batches:
    """Batches [B, 3, H, W] in [-1, 1] of process `rank`'s share of `source`, decoded by `workers` DataLoader worker
    processes (0: in this process). A batch may hold fewer than `batch_size` images where some were skipped:
    corrupt ones are listed in `skipped` as (name, reason), or raise CorruptImageError with `strict`.
    `read` counts the records seen (images and skipped ones)."""

    source: Source
    width: int
    height: int
    batch_size: int = 8
    random_crop: bool = False
    flip: bool = False
    seed: int = 0
    strict: bool = False
    workers: int = 0
    rank: int = 0
    world: int = 1
    skipped: list[tuple[str, str]] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ImageError(f"batch size must be positive, got {self.batch_size}")
        if self.workers < 0:
            raise ImageError(f"--workers must be 0 (decode in this process) or more, got {self.workers}")
        if self.width <= 0 or self.height <= 0:
            raise ImageError(f"resolution must be positive, got {self.width}x{self.height}")
        check_fits(self.batch_size * self.width * self.height * BYTES_PER_PIXEL,
                   f"batches of {self.batch_size} images of {self.width}x{self.height}",
                   "use a smaller resolution or batch size")
        self.skipped = []

    def __iter__(self) -> Iterator[tuple[torch.Tensor | None, int]]:
        """(pixels or None when the whole batch was skipped, records read)"""
        self.skipped = []
        images = _DecodedImages(self.source, self.width, self.height, self.random_crop, self.flip, self.seed,
                                self.rank, self.world)
        loader = torch.utils.data.DataLoader(images, batch_size=self.batch_size, num_workers=self.workers,
                                             collate_fn=list)
        for items in loader:
            pixels = []
            for item in items:
                if item.error is not None:
                    raise ImageError(item.error)
                if item.pixels is None:
                    if self.strict:
                        raise CorruptImageError(item.name, item.reason)
                    self.skipped.append((item.name, item.reason))
                else:
                    pixels.append(item.pixels)
            yield (torch.stack(pixels) if pixels else None), len(items)

    def pixels(self) -> Iterator[torch.Tensor]:
        """The batches alone, without the counts; a batch whose images were all skipped is left out."""
        return (pixels for pixels, _ in self if pixels is not None)
