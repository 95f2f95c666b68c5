"""`leakstyle ui`: the whole method on a local web page (Gradio).

The callbacks are plain functions over the library's API, tested without a browser: `style_for` (fit uploaded images
or load a style file), `run` (generate from the leak and, for the same seeds, from pure noise; write PNGs with their
parameters) and `on_generate` (both, with errors turned into a message for the page). Each reports what it is doing
to a `progress(fraction, text)` callable, which the page shows. The page shows the PNG files themselves (served by
Gradio from the page's temporary folder), so an image saved from the page carries its parameters. `build_app` only
lays out the page and wires those up; `serve` starts it.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import html
import math
import os
import random
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local app: no calls home

import gradio as gr
import torch
from PIL import Image

from . import __version__, metrics
from .distribution import StyleDistribution
from .encode import parse_color, to_hex
from .errors import LeakstyleError, out_of_memory
from .files import load, save
from .fit import fit
from .leak import image_size, vae_factor
from .loading import EMBEDDED_NAME
from .pipecall import default_guidance
from .pipeline import iter_generate, load_pipeline, noise_name
from .png import png_bytes
from .probe import verdict_line
from .schedulers import SCHEDULERS, make_scheduler, scheduler_name

STYLE_SOURCES = ("none", "fit images", "style file")
MAX_IMAGES = 8
BATCH_SIZE = 4  # images sampled at once, as `leakstyle generate --batch-size` by default
Progress = Callable[[float, str], None]  # (fraction done, what is running)


def no_progress(fraction: float, text: str) -> None:
    pass


@dataclass
class Model:
    """A loaded pipeline, the name it was loaded by, and its own scheduler (each run starts from that one's config)."""

    pipe: object
    name: str
    scheduler: object

    @property
    def finetuned(self) -> bool:
        """Whether this is a Diffusion-in-Style model that starts from its own style noise."""
        return getattr(self.pipe, "leakstyle_noise", None) is not None




def open_model(model: str | os.PathLike | None = None, device: str | None = None) -> Model:
    pipe = load_pipeline(model, device=device)
    return Model(pipe, str(model or EMBEDDED_NAME), pipe.scheduler)


@dataclass
class Style:
    """The style a run starts from, the file that holds it (offered for download) and how to name it in a PNG."""

    distribution: StyleDistribution
    file: Path
    name: str


@dataclass
class Result:
    """What one click of Generate made: image i of each list is from seed `seeds[i]`."""

    seeds: list[int]
    leak: list[Image.Image]
    baseline: list[Image.Image]  # the pure-noise image of the same seed
    leak_files: list[Path]  # the PNGs of `leak` and `baseline`, with their parameters
    baseline_files: list[Path]
    style_file: Path | None
    color: str | None
    messages: list[str]  # notes for the user

    @property
    def files(self) -> list[Path]:
        """Everything to download: the PNGs, then the style file."""
        return self.leak_files + self.baseline_files + ([self.style_file] if self.style_file else [])


# -- callbacks -----------------------------------------------------------------------------------------
def hex_color(value: str) -> str:
    """'#rrggbb' from what a colour picker gives: '#rrggbb', '#rgb', '#rrggbbaa' or 'rgb(a)(r, g, b[, a])'."""
    value = (value or "").strip()
    m = re.fullmatch(r"rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(?:,\s*[\d.]+\s*)?\)", value)
    if m:
        return to_hex(float(c) for c in m.groups())
    if re.fullmatch(r"#?[0-9a-fA-F]{8}", value):
        value = value[:-2]  # drop the alpha
    return to_hex(parse_color(value))


def random_seed() -> int:
    return random.randrange(2**31)


def exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # an ordinary exit: atexit handlers run, the temporary folder goes


@functools.cache
def workdir() -> Path:
    """The page's one temporary folder (PNGs, fitted styles) for this process, removed when the process exits,
    on Ctrl+C and on SIGTERM too (a SIGTERM handler is installed where none was, from the main thread)."""
    folder = Path(tempfile.mkdtemp(prefix="leakstyle-ui-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, exit_on_sigterm)
    return folder


def style_for(model: Model, source: str, images: list[str] | None = None, style_file: str | None = None,
              kind: str = "dct", components: int = 3, cached: tuple | None = None,
              progress: Progress = no_progress) -> tuple[Style | None, tuple | None]:
    """The style of the chosen source: None, fitted to uploaded images, or loaded from a style file.

    A fit is kept in `cached` ((key, Style), the page's state) and reused while the images and options stay the same.
    Returns (style, what to cache)."""
    if source == "none":
        return None, cached
    if source == "style file":
        if not style_file:
            raise LeakstyleError("choose a style file (.safetensors: a leakstyle file or an official stats.safetensors)")
        return Style(load(style_file), Path(style_file), Path(style_file).name), cached
    if source != "fit images":
        raise LeakstyleError(f"unknown style source {source!r}; choose one of {', '.join(STYLE_SOURCES)}")
    if not images:
        raise LeakstyleError("upload a few style images to fit, or choose another style source")
    key = (tuple(sorted(str(p) for p in images)), kind, int(components), model.name)
    if cached is not None and cached[0] == key:
        return cached[1], cached
    progress(0.0, f"fitting {kind} statistics to {len(images)} image{'s' * (len(images) != 1)}")
    distribution = fit(list(images), pipe=model.pipe, kind=kind, components=int(components), progress=False)
    file = Path(tempfile.mkdtemp(prefix="style-", dir=workdir())) / "style.safetensors"
    save(distribution, file)
    style = Style(distribution, file, f"fitted to {distribution.image_count} uploaded images")
    return style, (key, style)


def run(model: Model, prompt: str, negative_prompt: str = "", seed: int = 0, steps: int = 25,
        scheduler: str | None = None, guidance: float | None = None, num_images: int = 1, width: int | None = None,
        height: int | None = None, style: Style | None = None, color: str | None = None, strength: float = 1.0,
        out: Path | None = None, progress: Progress = no_progress, color_mode: str = "calibrated") -> Result:
    """Generate from the leak of `style`/`color`, and from pure noise with the same seeds (image i: seed + i).

    Images are made in batches of BATCH_SIZE (image i exactly as `generate(..., seed=seed + i)` makes it), and
    `progress` says after each batch how far it is: "leak images k/n", then "pure-noise images k/n". Writes each image as a PNG with its
    parameters into `out` (by default a new folder in workdir(), removed at exit), named as
    `leakstyle generate --baseline` names them. A colour is aimed at in `color_mode` (calibrated by default, as in
    the CLI; see leakstyle.color)."""
    pipe = model.pipe  # the inputs are checked by iter_generate, before any sampling
    guidance = default_guidance(pipe) if guidance is None else float(guidance)
    pipe.scheduler = make_scheduler(scheduler, model.scheduler.config) if scheduler else model.scheduler
    height, width = image_size(pipe, int(height or 0) or None, int(width or 0) or None)
    color = hex_color(color) if color else None
    n = int(num_images)
    common = dict(prompt=prompt, negative_prompt=negative_prompt or None, num_images=n, batch_size=BATCH_SIZE,
                  num_inference_steps=int(steps), guidance_scale=guidance, height=height, width=width)

    def in_batches(label: str, start: float, **kwargs) -> list[Image.Image]:
        progress(start, f"{label} 0/{n}")
        images = []
        for _, _, image in iter_generate(pipe, seed=int(seed), **common, **kwargs):
            images.append(image)
            progress(start + len(images) / (2 * n), f"{label} {len(images)}/{n}")
        return images

    with torch.inference_mode():
        leak = in_batches("leak images", 0.0, style=style and style.distribution, color=color, strength=strength,
                          color_mode=color_mode)
        baseline = in_batches("pure-noise images", 0.5, noise=None)  # pure N(0, I) noise, fine-tuned model or not
    progress(1.0, "writing the PNGs")
    messages = []
    if style is None and color is None and not model.finetuned:
        messages.append("no style and no colour chosen: both columns start from pure noise")

    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="run-", dir=workdir()))
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(seed) + i for i in range(int(num_images))]
    params = dict(prompt=prompt, negative_prompt=negative_prompt or None, steps=int(steps),
                  scheduler=scheduler_name(pipe.scheduler), guidance=guidance, model=model.name, height=height,
                  width=width, leakstyle_version=__version__)
    leak_params = dict(noise=noise_name(pipe), style=style.name if style else None,
                       style_sha256=hashlib.sha256(style.file.read_bytes()).hexdigest() if style else None,
                       color=color, color_mode=color_mode if color else None,
                       strength=strength if (style or color) else None, baseline=False)
    baseline_params = dict(noise="standard", style=None, style_sha256=None, color=None, color_mode=None, strength=None,
                           baseline=True)
    written = {}
    for images, suffix, extra in ((leak, "", leak_params), (baseline, "-baseline", baseline_params)):
        written[suffix] = []
        for i, (s, image) in enumerate(zip(seeds, images)):
            path = out / f"{i:04d}-seed{s}{suffix}.png"
            path.write_bytes(png_bytes(image, {**params, **extra, "seed": s}))
            written[suffix].append(path)
    return Result(seeds, leak, baseline, written[""], written["-baseline"], style.file if style else None, color,
                  messages)


def file_url(path: Path) -> str:
    """Where the page reads a file of the temporary folder or of the uploads (Gradio serves both)."""
    return "gradio_api/file=" + urllib.parse.quote(str(Path(path).resolve()))


def swatch(hexcode: str) -> str:
    return f'<span class="swatch" style="background:{hexcode}"></span><code>{hexcode}</code>'


def border_colors(images: list[Image.Image]) -> list[str]:
    """'#rrggbb' of each image's mean border colour: what `leakstyle report` measures colour control on
    (metrics.border_mask, the outer metrics.BORDER pixels, where the background shows)."""
    hexes = []
    for image in images:
        rgb = metrics.as_rgb(image)
        hexes.append(to_hex(rgb[metrics.border_mask(*rgb.shape[:2])].mean(0) * 255))
    return hexes


MEASURE_NOTE = (f"mean colour of the {metrics.BORDER}-pixel border (the background), as <code>leakstyle report</code> "
                "measures colour control; ΔE: CIEDE2000 to the requested colour")


def results_html(result: Result) -> str:
    """A table, one row per seed: the PNG from the leak and the pure-noise PNG, each with its mean border colour
    (and, with a requested colour, its CIEDE2000 distance to it)."""
    requested = f" (requested {swatch(result.color)})" if result.color else ""
    columns = []
    for kind, images, files in (("leak", result.leak, result.leak_files), ("baseline", result.baseline, result.baseline_files)):
        errors = metrics.color_errors(images, result.color, mask="border") if result.color else [None] * len(images)
        columns.append([(kind, image, file, hexcode, error)
                        for image, file, hexcode, error in zip(images, files, border_colors(images), errors)])
    rows = []
    for i, seed in enumerate(result.seeds):
        cells = []
        for kind, image, file, hexcode, error in (column[i] for column in columns):
            pixelated = " pixelated" if image.width < 128 else ""
            delta = f" ΔE {error:.1f}" if error is not None else ""
            asked = f'requested {swatch(result.color)} ' if result.color and kind == "leak" else ""
            cells.append(f'<td><img class="{kind}{pixelated}" data-seed="{seed}" alt="{kind}, seed {seed}" '
                         f'src="{file_url(file)}"><div class="mean {kind}-mean">{asked}border {swatch(hexcode)}{delta}'
                         f'</div></td>')
        rows.append(f"<tr><th>seed {seed}</th>{''.join(cells)}</tr>")
    return (f'<table class="results"><tr><th></th><th>from the leak{requested}</th><th>from pure noise</th></tr>'
            f"{''.join(rows)}</table><p class=\"measure\">Swatches: {MEASURE_NOTE}.</p>")


def uploads_html(images: list[str] | None) -> str:
    """Thumbnails of the uploaded style images, with their count."""
    if not images:
        return '<p class="uploads">No style images uploaded.</p>'
    thumbs = "".join(f'<img src="{file_url(p)}" alt="{html.escape(Path(p).name)}" title="{html.escape(Path(p).name)}">'
                     for p in images)
    n = len(images)
    return f'<div class="uploads"><p>{n} style image{"s" * (n != 1)} uploaded</p>{thumbs}</div>'


def status(text: str, error: bool = False) -> str:
    return f"**Error:** {html.escape(text)}" if error else html.escape(text)


def on_generate(model: Model, source: str, images, style_file, kind: str, components: int, prompt: str,
                negative_prompt: str, seed, steps, scheduler: str, guidance, num_images, width, height,
                use_color: bool, color: str, strength: float, cached: tuple | None = None,
                progress: Progress = no_progress, color_mode: str = "calibrated"):
    """The Generate button: (status text, results table, files to download, fit cache). What is running goes to
    `progress`. A user error leaves the results as they were and says what went wrong in the status."""
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            style, cached = style_for(model, source, images, style_file, kind, components, cached, progress)
            result = run(model, prompt or "", negative_prompt, int(seed or 0), int(steps),
                         scheduler if scheduler in SCHEDULERS else None, guidance,  # else: the model's own
                         int(num_images), width, height, style, color if use_color else None, strength,
                         progress=progress, color_mode=color_mode)
    except LeakstyleError as e:
        return status(str(e), error=True), gr.skip(), gr.skip(), cached
    except (MemoryError, RuntimeError) as e:  # torch's OutOfMemoryError is a RuntimeError
        reason = out_of_memory(e)
        if reason is None:
            raise
        text = status(f"{reason}: use a smaller width and height, or fewer images", error=True)
        return text, gr.skip(), gr.skip(), cached
    # leakstyle's own warnings (skipped images, a schedule that leaks nothing) are for the user to read.
    notes = [str(w.message) for w in caught if w.category.__module__.startswith("leakstyle")] + result.messages
    n = len(result.seeds)
    text = (f"{n} image{'s' * (n > 1)} from the leak and {n} from pure noise "
            f"(seed{'s' * (n > 1)} {result.seeds[0]}{f'–{result.seeds[-1]}' if n > 1 else ''}) "
            f"in {time.perf_counter() - started:.1f} s")
    text = "\n\n".join([status(text)] + [f"**Note:** {html.escape(m)}" for m in dict.fromkeys(notes)])
    return text, results_html(result), [str(f) for f in result.files], cached


# -- layout ------------------------------------------------------------------------------------------
CSS = """
.results img { width: 192px; height: auto; border: 1px solid #8884; display: block; }
.results img.pixelated { image-rendering: pixelated; }
.results td, .results th { padding: 4px 10px; vertical-align: top; text-align: left; }
.placeholder { min-height: 120px; color: #888; }  /* room for the progress bar */
.uploads img { display: inline-block; width: 48px; height: 48px; object-fit: cover; margin: 2px; border: 1px solid #8884; }
.uploads p, .measure { color: #888; font-size: 0.9em; margin: 2px 0; }
.swatch { display: inline-block; width: 1.1em; height: 1.1em; border: 1px solid #8888; vertical-align: middle;
          margin: 0 0.3em; border-radius: 3px; }
"""


def size_step(pipe) -> int:
    """Image sizes are multiples of this: 8, what diffusers' pipelines check, and of the VAE factor (the UNet
    itself takes latents of any size)."""
    return math.lcm(8, vae_factor(pipe))


def build_app(model: Model) -> gr.Blocks:
    """The page: prompt and sampling options, the style and colour of the leak, and the results beside pure noise."""
    pipe = model.pipe
    height, width = image_size(pipe)
    step = size_step(pipe)
    own = scheduler_name(model.scheduler)
    about = f"Model: `{model.name}`"
    if model.finetuned:
        about += " (fine-tuned with Diffusion in Style: it starts from its own style noise)"

    with gr.Blocks(title="leakstyle", analytics_enabled=False) as app:
        gr.Markdown("# leakstyle\nStyle, brightness and colour from the noise that sampling starts from "
                    f"(signal-leak sampling). {about}.")
        gr.Markdown(verdict_line(pipe), elem_id="leak-verdict")  # how strongly this model's schedule leaks
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                    placeholder=("an emoji name such as red heart or cat face: the embedded model was "
                                                 "trained on emoji names only") if model.name == EMBEDDED_NAME else None)
                negative = gr.Textbox(label="Negative prompt", elem_id="negative-prompt")
                with gr.Row():
                    seed = gr.Number(label="Seed", info="image i uses seed + i", value=0, precision=0, minimum=0,
                                     elem_id="seed")
                    dice = gr.Button("Random seed", size="sm", elem_id="random-seed")
                with gr.Row():
                    steps = gr.Slider(1, 150, value=25, step=1, label="Steps", elem_id="steps")
                    scheduler = gr.Dropdown(list(SCHEDULERS) if own in SCHEDULERS else [own, *SCHEDULERS], value=own,
                                            label="Scheduler", elem_id="scheduler")
                with gr.Row():
                    guidance = gr.Slider(0, 20, value=default_guidance(pipe), step=0.5, label="Guidance", elem_id="guidance",
                                         info="the model's own default to start with")
                    num_images = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Images", elem_id="num-images")
                with gr.Row():
                    width_in = gr.Slider(step, 4 * width, value=width, step=step, label="Width", elem_id="width")
                    height_in = gr.Slider(step, 4 * height, value=height, step=step, label="Height", elem_id="height")
            with gr.Column():
                with gr.Group():
                    source = gr.Radio(list(STYLE_SOURCES), value="none", label="Style of the leak", elem_id="style-source",
                                      info="fit a few images on the spot, or load a style file (.safetensors: leakstyle's "
                                           "or an official stats.safetensors)")
                    with gr.Row():
                        images = gr.File(label="Style images", file_count="multiple",
                                         file_types=["image"], type="filepath", height=140, elem_id="style-images")
                        style_file = gr.File(label="Style file", file_types=[".safetensors"], type="filepath", height=140,
                                             elem_id="style-file")
                    uploads = gr.HTML(uploads_html(None), elem_id="uploads")
                    with gr.Row():
                        kind = gr.Radio(["dct", "pixel"], value="dct", label="Statistics to fit", elem_id="kind")
                        components = gr.Slider(1, 16, value=3, step=1, label="DCT components", elem_id="components")
                with gr.Group():
                    use_color = gr.Checkbox(label="Set the mean colour (low-frequency control)", elem_id="use-color")
                    with gr.Row():
                        color = gr.ColorPicker(value="#1e90ff", label="Colour", elem_id="color")
                        strength = gr.Slider(0, 1, value=1, step=0.05, label="Strength", elem_id="strength")
                    color_mode = gr.Radio(["calibrated", "raw"], value="calibrated", elem_id="color-mode",
                                          label="Colour mode (calibrated: steered to the colour; raw: the paper's setting)")
                run_button = gr.Button("Generate", variant="primary", elem_id="generate")
        status_box = gr.Markdown("Ready.", elem_id="status")
        results = gr.HTML('<p class="placeholder">Each image from the leak appears here beside the image from pure '
                          'noise with the same seed.</p>', elem_id="results")
        downloads = gr.File(label="Downloads: PNGs with their parameters, and the style file", file_count="multiple",
                            interactive=False, height=160, elem_id="downloads")
        cached = gr.State(None)

        def generate_clicked(source, images, style_file, kind, components, prompt, negative, seed, steps, scheduler,
                             guidance, num_images, width, height, use_color, color, strength, color_mode, cached,
                             progress=gr.Progress()):  # noqa: B008 (how Gradio asks for a progress bar)
            return on_generate(model, source, images, style_file, kind, components, prompt, negative, seed, steps,
                               scheduler, guidance, num_images, width, height, use_color, color, strength, cached,
                               progress=lambda fraction, text: progress(fraction, desc=text), color_mode=color_mode)

        dice.click(random_seed, outputs=seed)
        images.upload(lambda: "fit images", outputs=source)
        images.change(uploads_html, inputs=images, outputs=uploads)
        style_file.upload(lambda: "style file", outputs=source)
        color.change(lambda: True, outputs=use_color)
        run_button.click(generate_clicked,
                         inputs=[source, images, style_file, kind, components, prompt, negative, seed, steps, scheduler,
                                 guidance, num_images, width_in, height_in, use_color, color, strength, color_mode,
                                 cached],
                         outputs=[status_box, results, downloads, cached], show_progress_on=[status_box, results])
    return app


THEME_FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def launch(model: Model, host: str = "127.0.0.1", port: int | None = None) -> tuple[gr.Blocks, str]:
    """Start the page in the background; returns the app and its address. One generation at a time."""
    app = build_app(model).queue(default_concurrency_limit=1)
    try:
        _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                               allowed_paths=[str(workdir())],  # the PNGs the page shows
                               show_error=True, css=CSS, theme=gr.themes.Default(**THEME_FONTS))  # no web fonts: offline
    except OSError as e:
        reason = str(e).split(". ")[0]  # Gradio goes on about its own parameters
        raise LeakstyleError(f"cannot serve on {host}:{port or 'a port from 7860'}: {reason}; choose another --port") from None
    return app, url


def check_address(host: str, port: int | None) -> None:
    """Refuse a port outside 0..65535, or a host this machine has no address for, before anything loads.

    The host is checked by binding a socket to it on a free port (the port itself is tried by Gradio)."""
    if port is not None and not 0 <= port <= 65535:
        raise LeakstyleError(f"--port must be between 0 and 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise LeakstyleError(f"cannot serve on {host}: unknown host ({reason}); use 127.0.0.1 (this machine only) "
                             f"or 0.0.0.0 (every network)") from None
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as e:
            raise LeakstyleError(f"cannot serve on {host}: {e.strerror or e}, not an address of this machine; use "
                                 f"127.0.0.1 (this machine only) or 0.0.0.0 (every network)") from None


def serve(model: str | os.PathLike | None = None, device: str | None = None, host: str = "127.0.0.1",
          port: int | None = None) -> None:
    """`leakstyle ui`: check the address, load the model, start the page, print its address and serve until Ctrl+C."""
    check_address(host, port)
    workdir()  # created here, in the main thread, so that SIGTERM removes it too
    app, url = launch(open_model(model, device), host, port)
    print(f"leakstyle ui: open {url} (Ctrl+C stops it)", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
