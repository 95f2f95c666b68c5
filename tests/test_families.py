"""Every model family that leaks: the denoiser's first input is sqrt(abar_T) x_tilde + sqrt(1 - abar_T) eps.

Tiny random-weight pipelines of each family (tests/family_pipelines.py) with their published schedules, and the
schedulers each family ships with; families without a leak (CogVideoX, SD3/Flux, no-leak schedules) are refused.
"""

import warnings

import pytest
import torch
from PIL import Image

import family_pipelines as fp
import leakstyle as ls
from leakstyle.denoiser import CHANNEL_MAJOR, FRAME_MAJOR, IMAGE, latent_channels, layout
from leakstyle.distribution import StyleDistribution
from leakstyle.errors import LeakstyleError
from leakstyle.leak import initial_latents, latent_shape
from leakstyle.schedulers import make_scheduler

warnings.filterwarnings("ignore", message=".*(Beautiful Soup|clean_caption|deprecated|torchvision).*")


def a_style(C=4, H=8, W=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(C, H, W, generator=g) * 0.5 + torch.tensor([1.0, -0.5, 0.3, 0.8][:C]).view(C, 1, 1)
    return StyleDistribution("pixel", mean, torch.rand(C, H, W, generator=g) + 0.1)


class FirstInput:
    """Forward pre-hook on a UNet or transformer: what it receives at its first call."""

    def __init__(self, model):
        self.sample = None
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        if self.sample is None:
            x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
            self.sample = x.detach().clone()


@pytest.fixture()
def first_input():
    hooks = []

    def attach(model):
        hooks.append(FirstInput(model))
        return hooks[-1]

    yield attach
    for h in hooks:
        h.handle.remove()


def abar_at_first_step(scheduler, steps):
    """abar_T from a fresh copy of the scheduler: its first sigma for sigma schedulers, else alphas_cumprod[T]."""
    s = type(scheduler).from_config(scheduler.config)
    s.set_timesteps(steps)
    sigmas = getattr(s, "sigmas", None)
    if sigmas is not None and type(s).__name__.startswith(("Euler", "LMS", "Heun", "KDPM")):
        return 1.0 / (1.0 + float(sigmas[0]) ** 2)
    return float(s.alphas_cumprod[int(round(float(s.timesteps[0])))])


def expected(style, shape, kind, seed, abar, frames="shared"):
    """a x_tilde + b eps with eps [shape] drawn first, then x_tilde (one per clip, or per frame), from `seed`."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(shape, generator=g)
    if kind == IMAGE:
        x = style.sample(shape[0], shape[2], shape[3], generator=g)
    else:
        B, F, h, w = (shape[0], shape[2], shape[3], shape[4]) if kind == CHANNEL_MAJOR else (shape[0], shape[1], shape[3], shape[4])
        if frames == "shared":
            x = style.sample(B, h, w, generator=g)[:, None].expand(B, F, -1, h, w)
        else:
            x = style.sample(B * F, h, w, generator=g).view(B, F, -1, h, w)
        x = x.permute(0, 2, 1, 3, 4) if kind == CHANNEL_MAJOR else x
    return (abar ** 0.5 * x.double() + (1 - abar) ** 0.5 * eps.double()).float()


def check_first_input(pipe, first_input, steps=2, seed=3, num_frames=None, height=None, width=None, **call):
    style = a_style()
    model = pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer
    hook = first_input(model)
    lat = initial_latents(pipe, style, batch_size=2, num_inference_steps=steps, num_frames=num_frames,
                          height=height, width=width, generator=torch.Generator().manual_seed(seed))
    frames = {} if num_frames is None else {"num_frames": num_frames}
    pipe(num_inference_steps=steps, latents=lat, output_type="latent", height=height, width=width, **frames, **call)
    want = expected(style, lat.shape, layout(pipe), seed, abar_at_first_step(pipe.scheduler, steps))
    got = hook.sample[:, :, :4] if layout(pipe) == FRAME_MAJOR else hook.sample
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def pixart():
    return fp.pixart()


@pytest.fixture(scope="module")
def hunyuan(tmp_path_factory):
    return fp.hunyuan_dit(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def animatediff(tmp_path_factory):
    return fp.animatediff(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def text_to_video(tmp_path_factory):
    return fp.text_to_video(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def svd():
    return fp.stable_video_diffusion()


@pytest.fixture(scope="module")
def deepfloyd_if():
    return fp.deepfloyd_if()


def with_scheduler(pipe, name):
    own = pipe.scheduler
    pipe.scheduler = make_scheduler(name, own.config) if name != "own" else own
    return own


# -- transformer denoisers ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["own", "euler", "ddim"])  # own: DPM-Solver++, as PixArt ships
def test_pixart_alpha_transformer_first_input_is_the_leak(pixart, first_input, name):
    own = with_scheduler(pixart, name)
    try:
        check_first_input(pixart, first_input, prompt=["a cat"] * 2, guidance_scale=1.0, use_resolution_binning=False)
    finally:
        pixart.scheduler = own


def test_pixart_sigma_transformer_first_input_is_the_leak(first_input):
    check_first_input(fp.pixart(sigma=True), first_input, prompt=["a cat"] * 2, guidance_scale=1.0,
                      use_resolution_binning=False)


@pytest.mark.parametrize("name", ["own", "euler"])  # own: DDPM with v-prediction, as Hunyuan-DiT ships
def test_hunyuan_dit_first_input_is_the_leak(hunyuan, first_input, name):
    own = with_scheduler(hunyuan, name)
    try:
        check_first_input(hunyuan, first_input, prompt=["a cat"] * 2, guidance_scale=1.0, use_resolution_binning=False)
    finally:
        hunyuan.scheduler = own


def test_generate_runs_a_transformer_pipeline_at_the_size_asked(pixart):
    images = ls.generate(pixart, "a cat", style=a_style(), seed=0, num_images=2, num_inference_steps=2,
                         guidance_scale=1.0, height=24, width=16)
    assert len(images) == 2 and images[0].size == (16, 24)


def test_fit_uses_the_transformers_native_size(pixart, tmp_path):
    from helpers import write_images
    style = ls.fit(write_images(tmp_path / "imgs", n=3, size=16), pipe=pixart, kind="dct", components=2, progress=False)
    assert (style.channels, style.height, style.width) == (4, 8, 8)


def test_load_pipeline_accepts_a_transformer_pipeline(pixart, tmp_path):
    pixart.save_pretrained(tmp_path / "pixart")
    pipe = ls.load_pipeline(tmp_path / "pixart", device="cpu")
    assert type(pipe).__name__ == "PixArtAlphaPipeline" and latent_shape(pipe, None, None) == (4, 8, 8)


# -- video -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["own", "euler"])  # own: DDIM with linear betas, as AnimateDiff ships
def test_animatediff_first_input_is_the_leak(animatediff, first_input, name):
    own = with_scheduler(animatediff, name)
    try:
        check_first_input(animatediff, first_input, num_frames=3, prompt=["a cat"] * 2, guidance_scale=1.0)
    finally:
        animatediff.scheduler = own


@pytest.mark.parametrize("name", ["own", "dpm++2m"])  # DDIM (ModelScope), DPM-Solver (Zeroscope)
def test_text_to_video_first_input_is_the_leak(text_to_video, first_input, name):
    own = with_scheduler(text_to_video, name)
    try:
        check_first_input(text_to_video, first_input, num_frames=3, prompt=["a cat"] * 2, guidance_scale=1.0)
    finally:
        text_to_video.scheduler = own


def test_stable_video_diffusion_first_input_is_the_leak_in_its_first_four_channels(svd, first_input):
    assert layout(svd) == FRAME_MAJOR and svd.unet.config.in_channels == 8 and latent_channels(svd) == 4
    check_first_input(svd, first_input, steps=2, num_frames=3, height=16, width=16, image=Image.new("RGB", (16, 16)),
                      max_guidance_scale=1.0, num_videos_per_prompt=2)


def leaked_x_tilde(pipe, lat, seed, steps=2):
    """(x_T - sqrt(1 - abar_T) eps) / sqrt(abar_T), from the latents and the seed's eps (drawn first)."""
    leak = ls.leak_at_first_step(pipe.scheduler, steps)
    eps = torch.randn(lat.shape, generator=torch.Generator().manual_seed(seed))
    return (lat.double() * leak.input_scale - leak.sqrt_one_minus_abar_T * eps.double()) / leak.sqrt_abar_T


@pytest.mark.parametrize("family", ["animatediff", "svd"])
def test_frames_of_a_video_share_x_tilde_by_default(request, family):
    pipe = request.getfixturevalue(family)
    lat = initial_latents(pipe, a_style(), batch_size=2, num_frames=3, num_inference_steps=2, height=16, width=16,
                          generator=torch.Generator().manual_seed(5))
    frame_dim = 2 if layout(pipe) == CHANNEL_MAJOR else 1
    x_tilde = leaked_x_tilde(pipe, lat, 5).movedim(frame_dim, 1)
    torch.testing.assert_close(x_tilde[:, 1], x_tilde[:, 0], rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(x_tilde[:, 2], x_tilde[:, 0], rtol=1e-3, atol=2e-3)
    assert (x_tilde[0] - x_tilde[1]).abs().max() > 0.1  # but two videos get two draws


@pytest.mark.parametrize("family", ["animatediff", "svd"])
def test_frames_differ_with_independent_draws(request, family):
    pipe = request.getfixturevalue(family)
    lat = initial_latents(pipe, a_style(), batch_size=1, num_frames=3, num_inference_steps=2, height=16, width=16,
                          generator=torch.Generator().manual_seed(5), frames="independent")
    x_tilde = leaked_x_tilde(pipe, lat, 5).movedim(2 if layout(pipe) == CHANNEL_MAJOR else 1, 1)
    assert (x_tilde[:, 1] - x_tilde[:, 0]).abs().max() > 0.1
    want = expected(a_style(), lat.shape, layout(pipe), 5, ls.leak_at_first_step(pipe.scheduler, 2).abar_T,
                    frames="independent")
    torch.testing.assert_close(lat * ls.leak_at_first_step(pipe.scheduler, 2).input_scale, want, rtol=1e-4, atol=1e-4)


def test_eps_is_independent_per_frame(animatediff):
    lat = initial_latents(animatediff, None, batch_size=1, num_frames=3, generator=torch.Generator().manual_seed(0))
    assert lat.shape == (1, 4, 3, 8, 8) and (lat[:, :, 0] - lat[:, :, 1]).abs().max() > 0.5


def test_generate_makes_videos_of_num_frames_frames(animatediff):
    videos = ls.generate(animatediff, "a cat", style=a_style(), num_images=2, num_frames=3, num_inference_steps=2,
                         guidance_scale=1.0)
    assert len(videos) == 2 and len(videos[0]) == 3 and videos[0][0].size == (16, 16)


def test_generate_animates_an_image_with_stable_video_diffusion(svd):
    videos = ls.generate(svd, image=Image.new("RGB", (16, 16), "red"), style=a_style(), num_images=1, num_frames=3,
                         num_inference_steps=2, guidance_scale=1.0, height=16, width=16)
    assert len(videos) == 1 and len(videos[0]) == 3
    with pytest.raises(LeakstyleError, match="animates an image"):
        ls.generate(svd, style=a_style(), num_frames=3, num_inference_steps=2, height=16, width=16)


def test_without_a_guidance_scale_each_pipeline_takes_its_own(svd, pixart, monkeypatch):
    """Stable Video Diffusion's guidance is the top of a per-frame ramp (3 by its own default): a text model's 7.5
    must not reach it. PixArt's own default is 4.5."""
    import functools

    from leakstyle.pipecall import default_guidance

    assert default_guidance(svd) == 3.0 and default_guidance(pixart) == 4.5
    calls = []
    run = type(svd).__call__

    @functools.wraps(run)
    def recording(self, *args, **kwargs):
        calls.append(kwargs)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(type(svd), "__call__", recording)
    ls.generate(svd, image=Image.new("RGB", (16, 16), "red"), style=a_style(), num_images=1, num_frames=3,
                num_inference_steps=2, height=16, width=16)
    assert calls[-1]["max_guidance_scale"] == 3.0 and calls[-1]["min_guidance_scale"] == 1.0
    ls.generate(svd, image=Image.new("RGB", (16, 16), "red"), style=a_style(), num_images=1, num_frames=3,
                num_inference_steps=2, height=16, width=16, guidance_scale=2.0)
    assert calls[-1]["max_guidance_scale"] == 2.0


def test_frames_are_refused_for_an_image_model(pixart):
    with pytest.raises(LeakstyleError, match="makes images, not videos"):
        initial_latents(pixart, a_style(), num_frames=4)


def test_latent_channels_come_from_the_vae_not_the_unet():
    from diffusers import StableDiffusionInpaintPipeline
    inpaint = StableDiffusionInpaintPipeline(vae=fp.vae(), text_encoder=None, tokenizer=None,
                                             unet=fp.sd_unet(in_channels=9), scheduler=fp.scheduler(fp.SD),
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    assert latent_shape(inpaint, 16, 16) == (4, 8, 8)


# -- Imagen-like cascade -----------------------------------------------------------------------------
def test_deepfloyd_if_stage_one_runs_from_the_leak(deepfloyd_if, first_input):
    style = a_style(3, 16, 16)
    hook = first_input(deepfloyd_if.unet)
    images = ls.generate(deepfloyd_if, "a cat", style=style, seed=7, num_images=2, num_inference_steps=2,
                         guidance_scale=1.0)
    assert len(images) == 2 and images[0].size == (16, 16)
    abar = abar_at_first_step(deepfloyd_if.scheduler, 2)
    want = torch.cat([expected(style, (1, 3, 16, 16), IMAGE, 7 + i, abar) for i in range(2)])
    torch.testing.assert_close(hook.sample, want, rtol=1e-4, atol=1e-4)


def test_deepfloyd_if_with_guidance_runs(deepfloyd_if):
    images = ls.generate(deepfloyd_if, "a cat", style=a_style(3, 16, 16), num_inference_steps=2, guidance_scale=4.0,
                         negative_prompt="dull")
    assert len(images) == 1


def test_deepfloyd_if_without_a_leak_names_its_cosine_schedule(deepfloyd_if):
    own = deepfloyd_if.scheduler
    deepfloyd_if.scheduler = make_scheduler("ddpm", own.config, timestep_spacing="trailing")  # T = 999
    try:
        with pytest.warns(ls.ZeroTerminalSNRWarning, match=r"cosine schedule \(squaredcos_cap_v2\).*not rescale_betas_zero_snr"):
            lat = initial_latents(deepfloyd_if, a_style(3, 16, 16), num_inference_steps=25,
                                  generator=torch.Generator().manual_seed(0))
    finally:
        deepfloyd_if.scheduler = own
    assert torch.equal(lat, torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)))


# -- families without a leak -------------------------------------------------------------------------
def test_cogvideox_is_refused_as_zero_terminal_snr():
    pipe = fp.cogvideox()
    assert layout(pipe) == FRAME_MAJOR
    with pytest.warns(ls.ZeroTerminalSNRWarning, match="zero terminal SNR"):
        lat = initial_latents(pipe, a_style(), num_frames=2, height=16, width=16, generator=torch.Generator().manual_seed(0))
    assert lat.shape == (1, 2, 4, 8, 8)  # the pipeline's own noise


def test_sd3_is_refused_as_flow_matching():
    with pytest.warns(ls.ZeroTerminalSNRWarning, match="flow matching"):
        initial_latents(fp.sd3(), a_style(), height=16, width=16)


def test_flux_schedule_leaks_nothing_without_its_shift():
    leak = ls.leak_at_first_step(fp.scheduler(fp.FLUX), 25, warn=False)
    assert not leak.has_leak and leak.abar_T == 0.0


def test_flux_is_refused_naming_its_packed_latents_and_flow_matching():
    with pytest.raises(LeakstyleError, match="packs its latents.*flow-matching"):
        initial_latents(fp.flux(), a_style(), height=16, width=16)


# -- the command line --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def animatediff_path(animatediff, tmp_path_factory):
    folder = tmp_path_factory.mktemp("animatediff")
    animatediff.save_pretrained(folder)
    return folder


def test_cli_num_frames_writes_frames_and_an_animated_webp(animatediff_path, tmp_path, capsys):
    from leakstyle.cli import main
    ls.save(a_style(), tmp_path / "s.safetensors")
    out = tmp_path / "out"
    argv = ["generate", "--model", str(animatediff_path), "--prompt", "a cat", "--num-frames", "3", "--steps", "2",
            "--guidance", "1", "--style", str(tmp_path / "s.safetensors"), "--baseline", "--quiet", "--out", str(out)]
    assert main(argv) == 0 and main(argv) == 0  # the second run numbers its video after the first
    for name in ("0000-seed0", "0000-seed0-baseline", "0001-seed0", "0001-seed0-baseline"):
        assert sorted(p.name for p in out.glob(f"{name}-frame*.png")) == [f"{name}-frame{j:03d}.png" for j in range(3)]
        with Image.open(out / f"{name}.webp") as webp:
            assert webp.is_animated and webp.n_frames == 3 and webp.size == (16, 16)
    with Image.open(out / "0000-seed0-frame001.png") as frame:
        assert '"frame": 1' in frame.info["leakstyle"] and '"baseline": false' in frame.info["leakstyle"]


def test_cli_video_model_needs_num_frames_and_image_model_refuses_it(animatediff_path, sd_path, tmp_path, capsys):
    from helpers import run_error
    assert "video model: give --num-frames" in run_error(
        ["generate", "--model", str(animatediff_path), "--prompt", "a cat", "--out", str(tmp_path / "a")], capsys)
    assert "makes images, not videos" in run_error(
        ["generate", "--model", str(sd_path), "--prompt", "a cat", "--num-frames", "4", "--out", str(tmp_path / "b")], capsys)
    assert "at least 1" in run_error(
        ["generate", "--model", str(sd_path), "--prompt", "a cat", "--num-frames", "0", "--out", str(tmp_path / "c")], capsys)


def test_cli_refuses_deepfloyd_if_at_t_999_naming_its_cosine_schedule(deepfloyd_if, tmp_path, capsys):
    from helpers import run_error
    own = deepfloyd_if.scheduler
    deepfloyd_if.scheduler = make_scheduler("ddpm", own.config, timestep_spacing="trailing")
    try:
        deepfloyd_if.save_pretrained(tmp_path / "if")
    finally:
        deepfloyd_if.scheduler = own
    ls.save(a_style(3, 16, 16), tmp_path / "s.safetensors")
    line = run_error(["generate", "--model", str(tmp_path / "if"), "--prompt", "a cat", "--style",
                      str(tmp_path / "s.safetensors"), "--out", str(tmp_path / "out")], capsys)
    assert "cosine schedule (squaredcos_cap_v2)" in line and "not rescale_betas_zero_snr" in line


def test_report_runs_on_a_transformer_pipeline(pixart, tmp_path):
    from helpers import write_images
    from leakstyle.report import run_report
    index = run_report(pixart, write_images(tmp_path / "ref", n=4, size=16), tmp_path / "report", n=2, steps=2,
                       guidance=1.0, n_boot=10, progress=False)
    assert index.exists() and (tmp_path / "report" / "report.json").exists()


@pytest.mark.parametrize("family", ["pixart", "hunyuan"])
def test_generate_with_guidance_and_no_negative_prompt(request, family):
    pipe = request.getfixturevalue(family)
    images = ls.generate(pipe, "a cat", style=a_style(), num_inference_steps=2, guidance_scale=4.0)
    assert len(images) == 1


def test_fit_on_video_frames_in_a_folder(animatediff, tmp_path):
    from helpers import write_images
    style = ls.fit(write_images(tmp_path / "frames", n=3, size=16), pipe=animatediff, kind="dct", components=2,
                   progress=False)
    lat = initial_latents(animatediff, style, num_frames=2, generator=torch.Generator().manual_seed(0))
    assert (style.channels, style.height, style.width) == (4, 8, 8) and lat.shape == (1, 4, 2, 8, 8)


def test_unknown_frames_mode_is_refused(animatediff):
    with pytest.raises(LeakstyleError, match="unknown frames mode"):
        initial_latents(animatediff, a_style(), num_frames=2, frames="alternate")


def test_the_ui_builds_for_a_transformer_pipeline_and_shows_the_verdict(pixart):
    from leakstyle import ui
    app = ui.build_app(ui.Model(pixart, "tiny-pixart", pixart.scheduler))
    blocks = {c.elem_id: c for c in app.blocks.values() if getattr(c, "elem_id", None)}
    assert blocks["width"].value == 16 and blocks["width"].step == 8  # what the pipeline checks
    assert blocks["leak-verdict"].value.startswith("signal leak at 25 steps: ")


def test_stable_video_diffusions_native_size_is_its_pipelines_default(svd):
    from leakstyle.leak import image_size
    assert image_size(svd) == (576, 1024) and latent_shape(svd, None, None) == (4, 288, 512)  # tiny VAE: factor 2


def test_cli_animates_an_image_with_stable_video_diffusion(svd, tmp_path, capsys):
    from leakstyle.cli import main
    svd.save_pretrained(tmp_path / "svd")
    Image.new("RGB", (16, 16), "red").save(tmp_path / "start.png")
    ls.save(a_style(), tmp_path / "s.safetensors")
    assert main(["generate", "--model", str(tmp_path / "svd"), "--image", str(tmp_path / "start.png"), "--num-frames",
                 "2", "--steps", "2", "--guidance", "1", "--height", "16", "--width", "16", "--style",
                 str(tmp_path / "s.safetensors"), "--quiet", "--out", str(tmp_path / "out")]) == 0
    with Image.open(tmp_path / "out" / "0000-seed0.webp") as webp:
        assert webp.n_frames == 2


def test_generate_makes_videos_with_text_to_video(text_to_video):
    videos = ls.generate(text_to_video, "a cat", style=a_style(), num_images=1, num_frames=2, num_inference_steps=2,
                         guidance_scale=1.0, frames="independent")
    assert len(videos) == 1 and len(videos[0]) == 2 and isinstance(videos[0][0], Image.Image)
    assert videos[0][0].info["seed"] == 0


def test_diffusion_in_style_noise_is_refused_for_video(animatediff):
    with pytest.raises(LeakstyleError, match="Diffusion in Style noise is for image models"):
        ls.generate(animatediff, "a cat", noise=a_style(), num_frames=2, num_inference_steps=2)
