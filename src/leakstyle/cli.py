"""The `leakstyle` command: a thin layer over the Python API.

User errors print one line, `leakstyle: error: ...`, and exit with status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import LeakstyleError, out_of_memory
from .extras import missing_extra
from .png import png_bytes

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def check_output(path: Path, force: bool) -> None:
    """Refuse before any work starts when `path` exists (without --force) or cannot be written."""
    path = Path(path)
    if path.exists() and not force:
        raise LeakstyleError(f"{path} already exists; pass --force to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise LeakstyleError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise LeakstyleError(f"cannot write {path}: folder {parent} is not writable")


def file_digest(path: Path) -> str:
    """sha256 of a style file, or of an official folder's stats.safetensors."""
    path = Path(path)
    target = path / "stats.safetensors" if path.is_dir() else path
    return hashlib.sha256(target.read_bytes()).hexdigest()


# -- fit ---------------------------------------------------------------------------------------------
def cmd_fit(args) -> int:
    from . import distributed, sources
    from .files import save
    from .fit import fit, fit_options
    from .pipeline import load_pipeline

    processes = distributed.from_env()  # under torchrun / accelerate launch: each process fits its share
    check_output(Path(args.out), args.force)
    pipe = None
    if args.space != "pixel" or args.resolution is None or args.model is not None:
        pipe = load_pipeline(args.model, device=distributed.process_device(args.device, processes))
    fit_options(pipe, args.type, args.components, args.resolution, args.space)  # before the inputs are listed
    source = sources.from_arguments(args.images, dataset=args.dataset, image_column=args.image_column,
                                    split=args.split, streaming=args.streaming)
    try:
        style = fit(source, pipe=pipe, kind=args.type, components=args.components, resolution=args.resolution,
                    space=args.space, random_crop=args.random_crop, flip=args.flip, batch_size=args.batch_size,
                    seed=args.seed, strict=args.strict, progress=not args.quiet, workers=args.workers)
        if processes.is_main:  # every process holds the whole result; one writes it
            save(style, args.out, format=args.format, force=args.force)
            print(f"fitted {style.kind} statistics on {style.image_count} images -> {args.out}")
    finally:
        distributed.leave()
    return 0


# -- generate ----------------------------------------------------------------------------------------
def cmd_generate(args) -> int:
    import torch

    from .denoiser import is_video
    from .color import check_lightness, with_lightness
    from .files import load
    from .leak import image_size
    from .loading import EMBEDDED_NAME
    from .outputs import BASELINE, check_output_folder, next_index, write_numbered
    from .pipecall import default_guidance
    from .pipeline import check_before_loading, check_generate_options, iter_generate, load_pipeline, noise_name
    from .schedulers import choose_scheduler, scheduler_name
    from .videofiles import frame_pngs, write_webps

    options = dict(num_images=args.num_images, num_inference_steps=args.steps, guidance_scale=args.guidance,
                   batch_size=args.batch_size, height=args.height, width=args.width, scheduler=args.scheduler,
                   timestep_spacing=args.timestep_spacing)
    seed = check_generate_options(seed=args.seed, strength=args.strength, color=args.color, **options)
    if args.brightness is not None:
        check_lightness(args.brightness)
    check_before_loading(args.model, args.prompt, args.steps, args.scheduler, args.timestep_spacing)
    if args.num_frames is not None and args.num_frames < 1:
        raise LeakstyleError(f"--num-frames must be at least 1, got {args.num_frames}")
    init_image = open_image(args.image) if args.image else None
    style = load(args.style, lf_order=args.lf_order) if args.style else None
    out = Path(args.out)
    check_output_folder(out)

    pipe = load_pipeline(args.model, device=args.device)
    if is_video(pipe) != (args.num_frames is not None):
        raise LeakstyleError(f"{args.model} is a video model: give --num-frames" if is_video(pipe) else
                             f"{args.model or 'this model'} makes images, not videos; leave out --num-frames")
    if args.guidance is None:  # the model's own, recorded with the images
        options.update(guidance_scale=default_guidance(pipe))
    if args.num_frames is not None:
        options.update(num_frames=args.num_frames, frames=args.frames)
    if init_image is not None:
        options.update(image=init_image)
    color = args.color
    if args.brightness is not None:  # L* of --color, else of the style's mean colour, else of grey
        color = with_lightness(pipe, args.brightness, style=style, color=args.color)
    common = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, seed=seed, progress=not args.quiet, **options)
    leak = iter_generate(pipe, style=style, color=color, strength=args.strength, on_no_leak="raise",
                         color_mode=args.color_mode, **common)
    baseline = iter_generate(pipe, noise=None, **common) if args.baseline else None  # N(0, I), fine-tuned or not
    height, width = image_size(pipe, args.height, args.width)
    scheduler = choose_scheduler(pipe.scheduler, args.scheduler, args.timestep_spacing)
    params = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
                  scheduler=scheduler_name(scheduler), timestep_spacing=scheduler.config.get("timestep_spacing"),
                  guidance=options["guidance_scale"], model=str(args.model or EMBEDDED_NAME), height=height, width=width,
                  leakstyle_version=__version__)
    leak_params = dict(style=str(args.style) if args.style else None,
                       style_sha256=file_digest(args.style) if args.style else None, color=color,
                       color_mode=args.color_mode if color else None,
                       brightness=args.brightness, strength=args.strength if (args.style or color) else None,
                       baseline=False,
                       noise=noise_name(pipe))
    baseline_params = dict(style=None, style_sha256=None, color=None, color_mode=None, brightness=None, strength=None,
                           baseline=True,
                           noise=noise_name(pipe, baseline=True))
    index, written = next_index(out), 0
    with torch.inference_mode():
        for _, s, image in leak:
            runs = {"": (image, leak_params)}
            if baseline is not None:
                runs[BASELINE] = (next(baseline)[2], baseline_params)
            if args.num_frames is None:
                pngs = {suffix: png_bytes(result, {**params, **p, "seed": s}) for suffix, (result, p) in runs.items()}
                index, paths = write_numbered(out, index, s, pngs)
            else:  # videos: each frame a PNG (numbered like images), then each video's animated WebP
                pngs = {k: v for suffix, (frames, p) in runs.items()
                        for k, v in frame_pngs(frames, {**params, **p, "seed": s}, suffix).items()}
                index, paths = write_numbered(out, index, s, pngs)
                paths += write_webps(out, index, s, {suffix: frames for suffix, (frames, _) in runs.items()})
            index, written = index + 1, written + len(paths)
    last = seed + args.num_images - 1
    what = f"image{'s' * (written != 1)}" if args.num_frames is None else "files (video frames and animated WebPs)"
    print(f"wrote {written} {what} to {out} (seed {seed}" + (f" to {last})" if last != seed else ")"))
    return 0


def open_image(path) -> "Image.Image":
    """The RGB image at `path` (the image Stable Video Diffusion animates), or a one-line error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise LeakstyleError(f"cannot read image {path}: {e}") from None


# -- inspect, convert, merge -------------------------------------------------------------------------
def add_lf_order_option(parser: argparse.ArgumentParser) -> None:
    """--lf-order, for every command that reads a style (passed to files.load as lf_order)."""
    parser.add_argument("--lf-order", default=None, metavar="U,V;U,V;...",
                        help="official folders only: the order of their low-frequency DCT components, e.g. "
                             "'0,0;1,0;0,1' (default: the recorded order, else 0,0;0,1;1,0 as in the published files)")


def escaped(text) -> str:
    """`text` safe for a terminal: control and other non-printable characters as Python escapes (\\x1b, \\n, ...)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def swatch(rgb) -> str:
    r, g, b = rgb
    return f"\x1b[48;2;{r};{g};{b}m      \x1b[0m" if sys.stdout.isatty() else ""


def colour_model(args, metadata: dict[str, str]):
    """(model to decode the mean colour with (None: the embedded one), why) or (False, why not).

    --model wins; else the model the file records, when it is the embedded one or an existing local folder:
    inspect never downloads a hub model unasked."""
    from .loading import EMBEDDED_MODEL, EMBEDDED_NAME

    if args.model is not None:
        return args.model, f"decoded with {escaped(args.model)}"
    recorded = metadata.get("model", "")
    if recorded == EMBEDDED_NAME:
        if not (EMBEDDED_MODEL / "model_index.json").is_file():
            return False, f"not shown: the file records {EMBEDDED_NAME}, which is not installed; pass --model"
        return None, f"decoded with {EMBEDDED_NAME}, the model the file records"
    if recorded and Path(recorded).is_dir():
        return recorded, f"decoded with {escaped(recorded)}, the model the file records"
    if recorded:
        return False, f"not shown: the file records the model {escaped(recorded)}, which is no local folder; " \
                      f"pass --model to decode with it (inspect downloads nothing unasked)"
    return False, "not shown: the file records no model; pass --model to decode the channel means"


def cmd_inspect(args) -> int:
    from .encode import model_units_to_rgb, to_hex, vae_of
    from .files import load

    style = load(args.file, lf_order=args.lf_order)
    m = style.metadata
    print(f"file:        {escaped(args.file)}")
    print(f"type:        {style.kind}" + (f" ({style.components} low-frequency components: "
                                          f"{', '.join(f'({u},{v})' for u, v in style.lf_indices.tolist())})" if style.kind == "dct" else ""))
    print(f"space:       {escaped(m.get('space') or 'unknown (official file)')}")
    print(f"shape:       {style.channels} x {style.height} x {style.width}")
    print(f"images:      {style.image_count if style.image_count is not None else 'unknown'}")
    if m:
        print("metadata:")
        for key, value in sorted(m.items()):
            print(f"  {escaped(key)}: {escaped(value)}")
    means = style.channel_means()
    print(f"channel means: [{', '.join(f'{v:.4f}' for v in means.tolist())}]")
    vae, how = None, "pixels, as they are"
    if m.get("space") != "pixel":
        model, how = colour_model(args, m)
        if model is False:
            print(f"mean colour: {how}")
            return 0
        from .pipeline import load_pipeline

        vae = vae_of(load_pipeline(model, device=args.device))
        if vae is not None and vae.config.latent_channels != style.channels:
            raise LeakstyleError(f"the model's VAE has {vae.config.latent_channels} latent channels, the style {style.channels}")
    rgb = model_units_to_rgb(vae, means)
    print(f"mean colour: {to_hex(rgb)} rgb{rgb} ({how}) {swatch(rgb)}".rstrip())
    return 0


def cmd_convert(args) -> int:
    from .files import convert

    dst = convert(args.input, args.output, to=args.to, force=args.force, lf_order=args.lf_order)
    print(f"wrote {dst}")
    return 0


def cmd_merge(args) -> int:
    from .files import load, save
    from .fit import merge

    check_output(Path(args.output), args.force)
    given = [Path(f).resolve() for f in args.files]
    for j, path in enumerate(given):
        if given.index(path) < j:
            raise LeakstyleError(f"{args.files[j]} is given twice; merge takes each shard's file once")
    style = merge([load(f, lf_order=args.lf_order) for f in args.files])
    save(style, args.output, force=args.force)
    print(f"merged {len(args.files)} files ({style.image_count} images) -> {args.output}")
    return 0


def cmd_demo(args) -> int:
    import time

    from .demo import check_demo, run_demo
    from .pipeline import load_pipeline

    start = time.perf_counter()
    check_demo(args.out, args.n, args.steps, args.force)
    pipe = load_pipeline(args.model, device=args.device)
    index = run_demo(pipe, Path(args.out), model_name=str(args.model or "leakstyle mini-sd (embedded)"), steps=args.steps,
                     n=args.n, force=args.force, progress=not args.quiet)
    print(f"demo written in {time.perf_counter() - start:.0f} s: {index.resolve()}")
    return 0


# -- report ------------------------------------------------------------------------------------------
def cmd_report(args) -> int:
    from .files import load
    from .images import list_images
    from .pipeline import load_pipeline
    from .report import check_out, parse_colors, read_prompts, run_report
    from .schedulers import make_scheduler

    check_out(args.out, args.force)
    prompts, colors = read_prompts(args.prompts), parse_colors(args.colors)
    reference = list_images(args.reference)
    style = load(args.style, lf_order=args.lf_order) if args.style else None
    pipe = load_pipeline(args.model, device=args.device)
    if args.scheduler:
        pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)
    index = run_report(pipe, reference, args.out, style=style, style_name=args.style, prompts=prompts, n=args.n,
                       colors=colors, per_color=args.per_color, steps=args.steps, guidance=args.guidance, seed=args.seed,
                       model_name=str(args.model or "leakstyle mini-sd (embedded)"), force=args.force,
                       progress=not args.quiet)
    print(f"report written: {index.resolve()}")
    return 0


# -- ui ----------------------------------------------------------------------------------------------
def cmd_ui(args) -> int:
    from .ui import serve

    serve(args.model, device=args.device, host=args.host, port=args.port)
    return 0


# -- finetune ----------------------------------------------------------------------------------------
def cmd_finetune(args) -> int:
    from accelerate import PartialState

    from .finetune import finetune

    out = finetune(args.images, args.out, model=args.model, prompt=args.prompt, steps=args.steps, lr=args.lr,
                   batch_size=args.batch_size, grad_accum=args.grad_accum, resolution=args.resolution,
                   mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                   seed=args.seed, lora=args.lora, noise=args.noise, kind=args.type, components=args.components,
                   checkpoint_every=args.checkpoint_every, timestep_sampling=args.timestep_sampling,
                   logsnr_mean=args.logsnr_mean, logsnr_std=args.logsnr_std, resume=args.resume, force=args.force,
                   device=args.device, progress=not args.quiet)
    if PartialState().is_main_process:  # once, under `accelerate launch` too
        print(f"fine-tuned ({'LoRA rank ' + str(args.lora) if args.lora else 'full'}, {args.noise} noise, {args.steps} "
              f"steps) -> {out}; generate with: leakstyle generate --model {out} --prompt ...")
    return 0


# -- probe -------------------------------------------------------------------------------------------
def cmd_probe(args) -> int:
    import json

    from .files import load
    from .loading import EMBEDDED_NAME
    from .pipeline import check_before_loading, load_pipeline
    from .probe import format_probe, probe

    if args.steps < 1:
        raise LeakstyleError(f"--steps must be a whole number of at least 1, got {args.steps}")
    check_before_loading(args.model, "", args.steps, args.scheduler, args.timestep_spacing)  # no prompt needed
    style = load(args.style, lf_order=args.lf_order) if args.style else None
    pipe = load_pipeline(args.model, device=args.device)
    result = probe(pipe, scheduler=args.scheduler, steps=args.steps, height=args.height, width=args.width, style=style,
                   timestep_spacing=args.timestep_spacing)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_probe(result, str(args.model or EMBEDDED_NAME)))
    return 0


# -- parser ------------------------------------------------------------------------------------------
HIDDEN_ALIASES = frozenset({"--output"})  # older spellings that still parse but are not shown in --help


class UsageError(LeakstyleError):
    """A command line argparse cannot parse: reported like any user error, with where to read the usage."""


class Parser(argparse.ArgumentParser):
    """argparse with leakstyle's error format: one line and a pointer to --help instead of a usage block."""

    def error(self, message):
        for alias in HIDDEN_ALIASES:
            message = message.replace(f"/{alias}", "")
        raise UsageError(f"{message}; see {self.prog} --help")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # found after the command's own options: the command's --help says what it takes
            command = getattr(parsed, "command", None)
            raise UsageError(f"unrecognized arguments: {' '.join(extras)}; "
                             f"see {self.prog}{' ' + command if command else ''} --help")
        return parsed


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default unless its help already says it, and hides older spellings."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (action.option_strings and action.nargs != 0 and default not in (None, argparse.SUPPRESS)
                and "default" not in text):
            text += f" (default: {default})"
        return text

    def _format_action_invocation(self, action):
        shown = [s for s in action.option_strings if s not in HIDDEN_ALIASES]
        if shown == action.option_strings:
            return super()._format_action_invocation(action)
        copy = argparse.Action(shown, action.dest, nargs=action.nargs, choices=action.choices, metavar=action.metavar)
        return super()._format_action_invocation(copy)


def build_parser() -> argparse.ArgumentParser:
    from .schedulers import SCHEDULERS

    p = Parser(prog="leakstyle", formatter_class=HelpFormatter,
               description="Control style, brightness and colour of diffusion models through the noise they start "
                           "from (signal-leak sampling).")
    p.add_argument("--version", action="version", version=f"leakstyle {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help, description=None):
        return sub.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                              formatter_class=HelpFormatter)

    def common(q, model=True, force=True):
        if model:
            q.add_argument("--model", help="diffusers folder or hub id (default: the embedded miniature model)")
        q.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
        if force:
            q.add_argument("--force", action="store_true", help="overwrite existing outputs")
        q.add_argument("--quiet", action="store_true", help="no progress bars")

    schedulers = ", ".join(SCHEDULERS)
    f = command("fit", "fit style statistics to a few images")
    f.add_argument("images", nargs="*", help="image files, folders, @FILE lists (one path a line, relative to the "
                   "list) and/or WebDataset tar shards ('shards-{000..009}.tar')")
    f.add_argument("-o", "--out", "--output", dest="out", required=True,
                   help="output .safetensors file (or folder with --format official)")
    f.add_argument("--space", choices=("latent", "pixel"), default=None,
                   help="where to fit (default: latent for models with a VAE, else pixel)")
    f.add_argument("--type", choices=("pixel", "dct"), default="dct", help="statistic type")
    f.add_argument("--components", type=int, default=3, help="low-frequency DCT components for --type dct")
    f.add_argument("--resolution", default=None, help="R or WxH in pixels (default: the model's native size)")
    f.add_argument("--random-crop", action="store_true", help="crop at a random place instead of the centre")
    f.add_argument("--flip", action="store_true", help="mirror half of the images at random")
    f.add_argument("--batch-size", type=int, default=8, help="images encoded at once")
    f.add_argument("--seed", type=int, default=0, help="seed of --random-crop and --flip")
    f.add_argument("--strict", action="store_true", help="fail on the first unreadable image instead of skipping it")
    f.add_argument("--format", choices=("leakstyle", "official"), default="leakstyle",
                   help="leakstyle: one .safetensors file; official: the research code's folder layout")
    f.add_argument("--dataset", default=None, metavar="NAME_OR_PATH", help="a Hugging Face dataset (hub id or local "
                   "folder) instead of IMAGES; needs pip install 'leakstyle[scale]'")
    f.add_argument("--image-column", default=None, help="the dataset column holding the images (default: image), or "
                   "the tar member extension (default: the first image one)")
    f.add_argument("--split", default="train", help="the dataset split")
    f.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it first")
    f.add_argument("--workers", type=int, default=0, help="DataLoader worker processes that decode images in "
                   "parallel (0: in the main process)")
    common(f)
    f.set_defaults(func=cmd_fit)

    g = command("generate", "generate images starting from a signal leak",
                description="Generate images starting from the signal leak of a style file or a colour. Images "
                            "are written to --out as NNNN-seedS.png (and NNNN-seedS-baseline.png), numbered "
                            "after the images already there: generate never overwrites a file, so it has no "
                            "--force.")
    g.add_argument("--prompt", default=None, help="what to draw (default: empty, unconditional)")
    g.add_argument("--negative-prompt", default=None, help="what to steer away from (default: none)")
    g.add_argument("--style", default=None, help="style file or official folder (default: none)")
    g.add_argument("--color", default=None, help="background colour of the image, '#rrggbb' (default: none)")
    g.add_argument("--color-mode", choices=("calibrated", "raw"), default="calibrated",
                   help="calibrated: the noise's own mean cancelled in x_T and, at every step, the model's predicted "
                        "background steered to the colour; raw: the paper's setting, the colour in x~'s mean only "
                        "(default: calibrated)")
    g.add_argument("--brightness", type=float, default=None, metavar="L",
                   help="CIELAB lightness 0 (black) to 100 (white) of the image's background, keeping the hue of "
                        "--color, else of the style's mean colour, else grey; a colour, so --color-mode applies "
                        "(default: none)")
    g.add_argument("--strength", type=float, default=1.0,
                   help="0..1: how strongly --color replaces the low frequencies; calibrated mode cancels this "
                        "share of the noise's mean and steers the background to (1 - s) style mean + s colour")
    g.add_argument("--scheduler", choices=tuple(SCHEDULERS), default=None, metavar="NAME",
                   help=f"{schedulers} (default: the model's own)")
    g.add_argument("--steps", type=int, default=25, help="inference steps")
    g.add_argument("--timestep-spacing", choices=("leading", "trailing", "linspace"), default=None,
                   help="how the inference timesteps are spread over the training ones; trailing starts at the last "
                        "(default: the scheduler config's)")
    g.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the model's own, 7.5 for Stable Diffusion 1.x/2.x, "
                        "5 for SDXL; for Stable Video Diffusion the top of its per-frame ramp, 3)")
    g.add_argument("--seed", type=int, default=0, help="image i uses seed + i; -1 draws a random seed, printed and "
                   "recorded in the PNGs (default: 0)")
    g.add_argument("--num-images", type=int, default=1, help="how many images")
    g.add_argument("--batch-size", type=int, default=4, help="images sampled at a time; each batch's PNGs are "
                   "written as it finishes, and image i is the same whatever the batch size (default: 4)")
    g.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's native size)")
    g.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's native size)")
    g.add_argument("--baseline", action="store_true", help="also write the pure-noise image for each seed")
    g.add_argument("--num-frames", type=int, default=None, help="video models: frames per video; writes "
                   "NNNN-seedS-frameJJJ.png and an animated NNNN-seedS.webp per video (default: none, images)")
    g.add_argument("--frames", choices=("shared", "independent"), default="shared",
                   help="video: one x_tilde per video shared by its frames (default), or one per frame")
    g.add_argument("--image", default=None, help="image to animate (Stable Video Diffusion; default: none)")
    g.add_argument("-o", "--out", required=True, help="output folder, created when the first image is written; images "
                   "already there are kept and new ones numbered after them")
    common(g, force=False)
    add_lf_order_option(g)
    g.set_defaults(func=cmd_generate)

    i = command("inspect", "print what a style file holds")
    i.add_argument("file", help="style file or official folder")
    i.add_argument("--model", help="decode the mean colour with this model (default: the one the file records, "
                                   "when it is the embedded model or a local folder)")
    i.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    add_lf_order_option(i)
    i.set_defaults(func=cmd_inspect)

    c = command("convert", "convert between official folders and leakstyle files",
                description="Convert a style between the official folder layout of the research code "
                            "(stats.safetensors + statistic_type.txt) and a leakstyle .safetensors file, losslessly.")
    c.add_argument("input", help="style file or official folder to read")
    c.add_argument("output", help="file or folder to write")
    c.add_argument("--to", choices=("official", "leakstyle"), required=True, help="format to write")
    c.add_argument("--force", action="store_true", help="overwrite an existing output")
    add_lf_order_option(c)
    c.set_defaults(func=cmd_convert)

    d = command("demo", "the whole method on one page (offline, about a minute on a CPU)")
    d.add_argument("-o", "--out", default="leakstyle-demo", help="output folder")
    d.add_argument("--steps", type=int, default=15, help="inference steps")
    d.add_argument("-n", type=int, default=40, help="images per set in the mean-colour plot")
    common(d)
    d.set_defaults(func=cmd_demo)

    r = command("report", "measure pure noise vs the leak against reference images (report.html)")
    r.add_argument("--reference", nargs="+", required=True, help="reference image files and/or folders")
    r.add_argument("--style", default=None, help="style file (default: a leak fitted to the reference images)")
    r.add_argument("--prompts", default=None, help="text file, one prompt per line, cycled (default: 32 emoji names)")
    r.add_argument("-n", type=int, default=256, help="images per set")
    r.add_argument("--colors", default=None, help="also measure colour control: '#rrggbb,#rrggbb,...' (default: none)")
    r.add_argument("--per-color", type=int, default=32, help="images per requested colour, at most n")
    r.add_argument("--scheduler", choices=tuple(SCHEDULERS), default=None, metavar="NAME",
                   help=f"{schedulers} (default: the model's own)")
    r.add_argument("--steps", type=int, default=25, help="inference steps")
    r.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    r.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    r.add_argument("-o", "--out", required=True, help="output folder")
    common(r)
    add_lf_order_option(r)
    r.set_defaults(func=cmd_report)

    t = command("finetune", "Diffusion in Style: fine-tune the denoiser with noise from the style distribution",
                description="Fine-tune a model (Stable Diffusion 1.x/2.x, SDXL, PixArt-alpha/-Sigma, pixel-space "
                            "UNets) on style images with noise drawn from their style distribution "
                            "N(mu_style, Sigma_style) (Diffusion in Style, Everaert et al., ICCV 2023). Runs "
                            "data-parallel under `accelerate launch -m leakstyle.cli finetune ...`.")
    t.add_argument("images", nargs="+", help="style images: files and/or folders (captions from FOLDER/metadata.jsonl)")
    t.add_argument("-o", "--out", required=True, help="output folder: the fine-tuned model, its style and checkpoints")
    t.add_argument("--prompt", default=None, help="one caption for all images (default: from metadata.jsonl)")
    t.add_argument("--steps", type=int, default=500, help="optimizer steps")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-5, or 1e-4 with --lora)")
    t.add_argument("--batch-size", type=int, default=4, help="images per micro-batch and process")
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    t.add_argument("--resolution", default=None, help="R or WxH in pixels (default: the model's native size)")
    t.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no", help="autocast precision")
    t.add_argument("--gradient-checkpointing", action="store_true", help="less memory, slower steps")
    t.add_argument("--seed", type=int, default=0, help="seeds batches, timesteps and noise: the same seed repeats a run")
    t.add_argument("--lora", type=int, default=None, metavar="RANK", help="train LoRA adapters of this rank on the "
                   "denoiser's attention layers instead of all weights (default: full fine-tuning)")
    t.add_argument("--noise", choices=("style", "standard"), default="style",
                   help="style: Diffusion in Style (default); standard: N(0, I), for comparison")
    t.add_argument("--type", choices=("pixel", "dct"), default="dct", help="style statistic type")
    t.add_argument("--components", type=int, default=3, help="low-frequency DCT components")
    t.add_argument("--checkpoint-every", type=int, default=250, metavar="N", help="checkpoint every N steps and at "
                   "the end (default 250; 0: only at the end)")
    t.add_argument("--timestep-sampling", choices=("uniform", "logsnr"), default="uniform",
                   help="uniform t (default), or t by log-SNR drawn from N(M, S^2), shifted toward high noise "
                        "(Choi et al. 2024); draws beyond the schedule's range train at its end timesteps")
    t.add_argument("--logsnr-mean", type=float, default=None, metavar="M", help="with logsnr: the mean (default -3)")
    t.add_argument("--logsnr-std", type=float, default=None, metavar="S", help="with logsnr: the std (default 2)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    common(t)
    t.set_defaults(func=cmd_finetune)

    w = command("ui", "a local web page for the whole method (Gradio)")
    w.add_argument("--model", help="diffusers folder or hub id (default: the embedded miniature model)")
    w.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    w.add_argument("--port", type=int, default=None, help="port 0..65535 (default: the first free one from 7860)")
    w.set_defaults(func=cmd_ui)

    m = command("merge", "merge style files fitted apart on shards of one image set",
                description="Merge style files fitted apart on shards of one image set (same type, shape and space) "
                            "into one, as if fitted to all the images at once.")
    m.add_argument("files", nargs="+", help="style files to merge")
    m.add_argument("-o", "--out", "--output", dest="output", metavar="OUT", required=True, help="output .safetensors file")
    m.add_argument("--force", action="store_true", help="overwrite an existing output")
    add_lf_order_option(m)
    m.set_defaults(func=cmd_merge)

    pr = command("probe", "how strongly a model's schedule leaks, before generating anything",
                 "T and sqrt(abar_T) of the scheduler's first step, the per-element and DC SNR at the size, the "
                 "pure-noise std ratio of channel means that the linear-Gaussian picture predicts, and a verdict: "
                 "strong (SNR_DC >= 1), weak (>= 0.25) or none.")
    pr.add_argument("--model", help="diffusers folder or hub id (default: the embedded miniature model)")
    pr.add_argument("--scheduler", choices=tuple(SCHEDULERS), default=None,
                    help="scheduler to probe (default: the model's own)")
    pr.add_argument("--steps", type=int, default=25, help="inference steps (default 25, as generate)")
    pr.add_argument("--timestep-spacing", choices=("leading", "trailing", "linspace"), default=None,
                    help="how the inference timesteps are spread over the training ones; trailing starts at the last "
                         "(default: the scheduler config's)")
    pr.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's native size)")
    pr.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's native size)")
    pr.add_argument("--style", default=None, help="dct style file or official folder giving sigma_m (default: the "
                    "model's latents of the bundled reference images)")
    add_lf_order_option(pr)
    pr.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    pr.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    pr.set_defaults(func=cmd_probe)
    return p


def show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"leakstyle: warning: {message}", file=sys.stderr)


def memory_advice(args) -> str:
    """What a command that ran out of memory can be given instead: its size and batch options."""
    size = (" (--resolution)" if hasattr(args, "resolution") else " (--width, --height)" if hasattr(args, "width")
            else "")
    advice = [f"smaller images{size}"] + (["fewer at once (--batch-size)"] if hasattr(args, "batch_size") else [])
    return " or ".join(advice)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"leakstyle: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, --version: already printed
        return e.code or 0
    warnings.showwarning = show_warning
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        if getattr(args, "device", None) is not None:
            from .devices import resolve_device

            resolve_device(args.device)  # every command: a device this torch cannot use is one line, before any work
        return args.func(args)
    except LeakstyleError as e:
        from .distributed import SharedError

        rank = int(os.environ["RANK"]) if os.environ.get("RANK", "").isdigit() else 0
        if rank == 0 or not isinstance(e, SharedError):  # an error every process raises is printed once
            print(f"leakstyle: error: {e}" if rank == 0 else f"leakstyle: error: (process {rank}) {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional dependency: name the extra that installs it
        error = missing_extra(e)
        if error is None:
            raise
        print(f"leakstyle: error: {error}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # torch's OutOfMemoryError is a RuntimeError
        reason = out_of_memory(e)
        if reason is None:
            raise
        print(f"leakstyle: error: {reason} in {args.command}; use {memory_advice(args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("leakstyle: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
