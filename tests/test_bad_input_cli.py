"""A newcomer's mistakes on the command line: each is one `leakstyle: error:` line and exit status 2, found before
any work starts, and a failed command leaves no file or folder behind."""

import argparse
import errno
import os

import pytest
import torch

from leakstyle import files, pipeline
from leakstyle.cli import build_parser, main
from leakstyle.errors import LeakstyleError
from leakstyle.outputs import writing_into

from helpers import run_error, write_images


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("imgs"), n=3)


# -- argparse errors: one line and where to read the usage ---------------------------------------------
@pytest.mark.parametrize("argv, command", [
    ([], "leakstyle"),
    (["frobnicate"], "leakstyle"),
    (["fit", "imgs/"], "leakstyle fit"),
    (["generate", "--steps", "many", "-o", "out"], "leakstyle generate"),
    (["demo", "--no-such-option"], "leakstyle demo"),
    (["convert", "a", "b", "--to", "jpeg"], "leakstyle convert"),
])
def test_usage_errors_are_one_line_with_a_pointer_to_help(argv, command, capsys):
    line = run_error(argv, capsys)
    assert line.endswith(f"; see {command} --help")


def test_usage_errors_print_no_usage_block(capsys):
    assert main(["fit"]) == 2
    err = capsys.readouterr().err
    assert "usage:" not in err and len(err.strip().splitlines()) == 1


def test_the_required_output_flag_is_named_by_its_one_spelling(capsys):
    line = run_error(["fit", "imgs/"], capsys)
    assert "-o/--out;" in line and "--output" not in line


# -- --help: every option explained, defaults shown, one spelling of the output flag ----------------------
def subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices.items())


@pytest.mark.parametrize("name, parser", subparsers())
def test_every_option_has_help_and_shows_its_default(name, parser):
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{name} {label} has no help text"
        shown = formatter._get_help_string(action) % vars(action)  # what --help prints for it
        if action.option_strings and action.nargs != 0 and action.default is not None:
            assert str(action.default) in shown, f"{name} {label}: help does not show its default {action.default!r}"


@pytest.mark.parametrize("name, parser", subparsers())
def test_every_command_has_a_description(name, parser):
    assert parser.description, f"leakstyle {name} --help has no description"


@pytest.mark.parametrize("name, parser", [(n, p) for n, p in subparsers()
                                          if any(a.dest in ("out", "output") and a.option_strings for a in p._actions)])
def test_the_output_flag_is_spelled_o_and_out(name, parser):
    action = next(a for a in parser._actions if a.dest in ("out", "output") and a.option_strings)
    assert action.option_strings[:2] == ["-o", "--out"], name
    assert "--output" not in parser.format_help(), name  # the old spelling parses but is not shown


def test_the_old_output_spelling_still_works(tmp_path, images):
    out = tmp_path / "style.safetensors"
    assert main(["fit", str(images), "--space", "pixel", "--resolution", "8", "--output", str(out), "--quiet"]) == 0
    assert files.load(out).image_count == 3


def test_help_exits_zero_in_process(capsys):
    assert main(["fit", "--help"]) == 0
    assert "-o OUT, --out OUT" in capsys.readouterr().out


# -- fit: a resolution the VAE cannot encode -----------------------------------------------------------
def test_fit_refuses_a_resolution_that_is_not_a_multiple_of_the_vae_factor(tmp_path, images, sd_path, capsys):
    out = tmp_path / "style.safetensors"
    line = run_error(["fit", str(images), "--model", str(sd_path), "--resolution", "33x32", "-o", str(out)], capsys)
    assert "multiple of this model's VAE factor 2" in line and "32x32" in line
    assert not out.exists()


def test_fit_refuses_a_resolution_below_what_the_components_need(tmp_path, images, sd_path, capsys):
    line = run_error(["fit", str(images), "--model", str(sd_path), "--resolution", "2", "-o", str(tmp_path / "s.st")],
                     capsys)
    assert "--components must be between 1 and 1" in line and "larger --resolution" in line


def test_fit_checks_the_resolution_before_reading_any_image(tmp_path, sd_path, capsys):
    line = run_error(["fit", str(tmp_path / "missing"), "--model", str(sd_path), "--resolution", "7",
                      "-o", str(tmp_path / "s.st")], capsys)
    assert "VAE factor" in line


# -- sizes no memory holds ----------------------------------------------------------------------------
def test_fit_refuses_a_resolution_no_machine_has_the_memory_for_before_reading_any_image(tmp_path, images, sd_path,
                                                                                          capsys):
    """Resizing to such a size would take more than the RAM, and Linux kills such a process without a word."""
    line = run_error(["fit", str(images), "--model", str(sd_path), "--resolution", "8000000", "--batch-size", "2",
                      "-o", str(tmp_path / "s.st")], capsys)
    assert "batches of 2 images of 8000000x8000000 need at least 1.71 PiB, more than the" in line
    assert "of this machine's RAM; use a smaller resolution or batch size" in line
    assert not (tmp_path / "s.st").exists()


CPU_ALLOCATOR = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 3200000000 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("error, reason", [
    (RuntimeError(CPU_ALLOCATOR), "could not allocate 2.98 GiB"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 8 GiB"),
     "could not allocate 20.00 GiB"),
    (MemoryError(), "out of memory"),
])
def test_running_out_of_memory_while_generating_is_one_line_naming_the_size_options(tmp_path, sd_path, monkeypatch,
                                                                                    capsys, error, reason):
    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(pipeline, "sample_batch", out_of_memory)
    line = run_error(["generate", "--model", str(sd_path), "--prompt", "a cat", "--steps", "1", "-o", str(tmp_path)],
                     capsys)
    assert line == (f"leakstyle: error: {reason} in generate; use smaller images (--width, --height) or fewer at once "
                    f"(--batch-size)")


def test_another_runtime_error_is_not_taken_for_running_out_of_memory(tmp_path, sd_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")

    monkeypatch.setattr(pipeline, "sample_batch", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["generate", "--model", str(sd_path), "--prompt", "a cat", "--steps", "1", "-o", str(tmp_path)])


# -- fit: broken symbolic links among good images -------------------------------------------------------
@pytest.mark.parametrize("kind", ["dangling", "looping"])
def test_fit_skips_a_broken_symlink_and_fits_the_rest(tmp_path, sd_path, kind, capsys):
    folder = write_images(tmp_path / "imgs", n=3)
    link = folder / "broken.png"
    if kind == "dangling":
        link.symlink_to(folder / "gone.png")
    else:
        link.symlink_to(link)
    out = tmp_path / "style.safetensors"
    assert main(["fit", str(folder), "--model", str(sd_path), "-o", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 of 4 images" in err and "broken.png" in err and "symbolic link" in err
    assert files.load(out).image_count == 3


def test_a_fit_with_a_broken_link_records_the_same_images_as_without(tmp_path, sd_path):
    folder = write_images(tmp_path / "imgs", n=3)
    assert main(["fit", str(folder), "--model", str(sd_path), "-o", str(tmp_path / "a.st"), "--quiet"]) == 0
    (folder / "broken.png").symlink_to(folder / "gone.png")
    assert main(["fit", str(folder), "--model", str(sd_path), "-o", str(tmp_path / "b.st"), "--quiet"]) == 0
    digest = lambda p: files.load(p).metadata["source_digest"]  # noqa: E731
    assert digest(tmp_path / "a.st") == digest(tmp_path / "b.st")


def test_fit_with_only_broken_links_is_an_error(tmp_path, sd_path, capsys):
    folder = tmp_path / "links"
    folder.mkdir()
    for i in range(2):
        (folder / f"l{i}.png").symlink_to(folder / f"gone{i}.png")
    assert "could be decoded" in run_error(["fit", str(folder), "--model", str(sd_path), "-o", str(tmp_path / "s.st")],
                                           capsys)


def test_a_failed_official_fit_leaves_no_folder(tmp_path, sd_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(2):
        (folder / f"x{i}.png").write_bytes(b"not a png")
    out = tmp_path / "official"
    run_error(["fit", str(folder), "--model", str(sd_path), "--format", "official", "-o", str(out)], capsys)
    assert not out.exists()


# -- demo: checked before the model loads, written atomically -------------------------------------------
def test_demo_refuses_a_file_as_out(tmp_path, capsys):
    out = tmp_path / "demo"
    out.write_text("mine")
    assert "is a file; --out needs a folder" in run_error(["demo", "-o", str(out), "--quiet"], capsys)
    assert out.read_text() == "mine"


@pytest.mark.parametrize("argv, expected", [(["-n", "0"], "-n must be at least 2"),
                                            (["-n", "1"], "-n must be at least 2"),
                                            (["--steps", "0"], "--steps must be at least 1")])
def test_demo_refuses_counts_it_cannot_use(tmp_path, argv, expected, capsys):
    out = tmp_path / "new" / "demo"
    assert expected in run_error(["demo", "-o", str(out), "--quiet", *argv], capsys)
    assert not (tmp_path / "new").exists()  # no empty folder left


def test_demo_on_a_full_disk_leaves_no_partial_file_and_no_folder(tmp_path, sd, monkeypatch):
    from leakstyle.demo import run_demo

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    out = tmp_path / "demo"
    with pytest.raises(LeakstyleError, match="No space left on device"):
        run_demo(sd, out, model_name="tiny", steps=1, n=2, prompts=("red heart",), progress=False)
    assert not out.exists()


def test_demo_on_a_full_disk_keeps_the_previous_demo(tmp_path, sd, monkeypatch):
    from leakstyle.demo import run_demo

    out = tmp_path / "demo"
    out.mkdir()
    (out / "grid.png").write_bytes(b"previous grid")
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(LeakstyleError, match="No space left"):
        run_demo(sd, out, model_name="tiny", steps=1, n=2, prompts=("red heart",), force=True, progress=False)
    assert (out / "grid.png").read_bytes() == b"previous grid"
    assert sorted(p.name for p in out.iterdir()) == ["grid.png"]  # no temporary files either


# -- report: no empty folder after a failure -------------------------------------------------------------
def test_a_report_that_fails_while_generating_leaves_no_folder(tmp_path, images, sd_path, monkeypatch, capsys):
    from leakstyle import report

    def fail(*args, **kwargs):
        raise LeakstyleError("generation failed")

    monkeypatch.setattr(report, "generate_set", fail)
    out = tmp_path / "reports" / "r1"
    assert "generation failed" in run_error(["report", "--model", str(sd_path), "--reference", str(images), "-n", "2",
                                             "--steps", "1", "-o", str(out), "--quiet"], capsys)
    assert not (tmp_path / "reports").exists()


def test_report_refuses_an_out_under_a_file(tmp_path, images, sd_path, capsys):
    (tmp_path / "f").write_text("x")
    assert "is a file" in run_error(["report", "--model", str(sd_path), "--reference", str(images),
                                     "-o", str(tmp_path / "f" / "r")], capsys)


def test_writing_into_removes_only_the_folders_it_created_and_left_empty(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with writing_into(tmp_path / "kept" / "a" / "b"):
            raise RuntimeError("failed before writing")
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "a").exists()
    with pytest.raises(RuntimeError):
        with writing_into(tmp_path / "kept" / "c") as out:
            (out / "partial").write_text("x")
            raise RuntimeError("failed after writing")
    assert (tmp_path / "kept" / "c" / "partial").exists()  # what was written is the user's to see


# -- ui: a port or host it cannot serve on ----------------------------------------------------------------
@pytest.mark.parametrize("port", ["70000", "-1"])
def test_ui_refuses_a_port_outside_the_range(port, capsys):
    assert "--port must be between 0 and 65535" in run_error(["ui", "--port", port], capsys)


@pytest.mark.parametrize("host, expected", [("192.0.2.1", "not an address of this machine"),  # TEST-NET-1
                                            ("no-such-host.invalid", "unknown host")])
def test_ui_refuses_a_host_this_machine_does_not_have(host, expected, capsys):
    line = run_error(["ui", "--host", host], capsys)
    assert expected in line and "127.0.0.1" in line


def test_fit_of_a_single_unreadable_image_says_it_cannot_be_read(tmp_path, sd_path, capsys):
    (tmp_path / "one.png").write_bytes(b"not a png")
    line = run_error(["fit", str(tmp_path / "one.png"), "--model", str(sd_path), "-o", str(tmp_path / "s.st")], capsys)
    assert "cannot decode image" in line and "one.png" in line
