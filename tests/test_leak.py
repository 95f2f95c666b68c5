"""The invariant: the tensor the UNet receives at the first step is sqrt(abar_T) x_tilde + sqrt(1 - abar_T) eps."""

import subprocess
import sys

import pytest
import torch

import leakstyle as ls
from leakstyle import files
from leakstyle.distribution import StyleDistribution
from leakstyle.errors import LeakstyleError
from leakstyle.leak import initial_latents
from leakstyle.pipeline import load_pipeline
from leakstyle.schedulers import make_scheduler

VP_WITH_SPACING = [(name, spacing) for name in ("ddim", "pndm", "ddpm", "unipc", "dpm++2m")
                   for spacing in ("leading", "trailing", "linspace")]
SIGMA_AND_OTHERS = [(name, None) for name in ("euler", "euler-a", "lms", "heun", "dpm++2m-karras", "lcm")]


def a_style(C, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(C, H, W, generator=g) * 0.5 + torch.tensor([1.0, -0.5, 0.3, 0.8][:C]).view(C, 1, 1)
    return StyleDistribution("pixel", mean, torch.rand(C, H, W, generator=g) + 0.1)


def expected_first_input(style, shape, seed, scheduler, steps):
    """a x_tilde + b eps computed independently: abar from the scheduler's alphas_cumprod at the first timestep."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(shape, generator=g)
    x_tilde = style.sample(shape[0], shape[2], shape[3], generator=g)
    s = type(scheduler).from_config(scheduler.config)
    s.set_timesteps(steps)
    T = int(round(float(s.timesteps[0])))
    abar = s.alphas_cumprod[T].double()
    return (abar.sqrt() * x_tilde + (1 - abar).sqrt() * eps).float(), T


def run_and_capture(pipe, style, scheduler_name, spacing, first_unet_input, steps=4, seed=3, **call):
    pipe.scheduler = make_scheduler(scheduler_name, pipe.scheduler.config, timestep_spacing=spacing)
    hook = first_unet_input(pipe.unet)
    lat = initial_latents(pipe, style, batch_size=2, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))
    pipe(num_inference_steps=steps, latents=lat, output_type="latent", **call)
    expected, T = expected_first_input(style, lat.shape, seed, pipe.scheduler, steps)
    return hook, expected, T


@pytest.mark.parametrize("name,spacing", VP_WITH_SPACING + SIGMA_AND_OTHERS)
def test_unet_first_input_is_the_leak_for_every_scheduler(sd, first_unet_input, name, spacing):
    style = a_style(4, 16, 16)
    hook, expected, T = run_and_capture(sd, style, name, spacing, first_unet_input, prompt=["a cat"] * 2, guidance_scale=1.0)
    assert hook.timestep == pytest.approx(T, abs=0.5)
    torch.testing.assert_close(hook.sample, expected, rtol=1e-4, atol=1e-4)


def test_unet_first_input_is_the_leak_with_classifier_free_guidance(sd, first_unet_input):
    style = a_style(4, 16, 16)
    hook, expected, _ = run_and_capture(sd, style, "euler", None, first_unet_input, prompt=["a cat"] * 2, guidance_scale=5.0)
    torch.testing.assert_close(hook.sample[:2], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hook.sample[2:], expected, rtol=1e-4, atol=1e-4)


def test_unet_first_input_is_the_leak_for_v_prediction(sd_v_path, first_unet_input):
    pipe = load_pipeline(sd_v_path, device="cpu")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    style = a_style(4, 16, 16, seed=2)
    hook, expected, _ = run_and_capture(pipe, style, "dpm++2m", "trailing", first_unet_input, prompt=["a cat"] * 2, guidance_scale=1.0)
    torch.testing.assert_close(hook.sample, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["euler", "ddim"])
def test_unet_first_input_is_the_leak_for_sdxl(sdxl_path, first_unet_input, name):
    pipe = load_pipeline(sdxl_path, device="cpu")
    style = a_style(4, 16, 16, seed=4)
    hook, expected, _ = run_and_capture(pipe, style, name, None, first_unet_input, prompt=["a cat"] * 2, guidance_scale=1.0)
    torch.testing.assert_close(hook.sample, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["ddpm", "euler"])
def test_unet_first_input_is_the_leak_for_pixel_models(pixel_path, first_unet_input, name):
    pipe = load_pipeline(pixel_path, device="cpu")
    pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
    style = a_style(3, 16, 16, seed=5)
    hook = first_unet_input(pipe.unet)
    images = ls.generate(pipe, style=style, seed=7, num_images=2, num_inference_steps=3)
    assert len(images) == 2 and images[0].size == (16, 16)
    # generate draws image i from seed + i, eps first then x_tilde
    expected = torch.cat([expected_first_input(style, (1, 3, 16, 16), 7 + i, pipe.scheduler, 3)[0] for i in range(2)])
    torch.testing.assert_close(hook.sample, expected, rtol=1e-4, atol=1e-4)


def test_without_style_the_latents_are_the_pipelines_own_noise(sd):
    lat = initial_latents(sd, None, batch_size=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(lat, torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)))


def test_style_sampled_at_the_requested_latent_size(sd):
    style = a_style(4, 16, 16)
    lat = initial_latents(sd, style, batch_size=1, height=48, width=80, generator=torch.Generator().manual_seed(0))
    assert lat.shape == (1, 4, 24, 40)  # the tiny VAE downsamples by 2


def test_style_with_wrong_channel_count_is_refused(sd):
    with pytest.raises(LeakstyleError, match="3 channels but the model's latents have 4"):
        initial_latents(sd, a_style(3, 16, 16), batch_size=1)


def test_zero_snr_scheduler_warns_and_falls_back_to_pure_noise(sd):
    from diffusers import DDIMScheduler
    sd.scheduler = DDIMScheduler.from_config(sd.scheduler.config, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    with pytest.warns(ls.ZeroTerminalSNRWarning):
        lat = initial_latents(sd, a_style(4, 16, 16), batch_size=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(lat, torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)))


def test_colour_sets_the_mean_of_x_tilde(sd, first_unet_input):
    color = torch.tensor([2.0, -1.0, 0.5, 1.5])
    lat = initial_latents(sd, None, batch_size=1, num_inference_steps=10, color=color,
                          generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(1, 4, 16, 16, generator=g)
    leak = ls.leak_at_first_step(sd.scheduler, 10)
    x_tilde = (lat - leak.sqrt_one_minus_abar_T * eps) / leak.sqrt_abar_T
    torch.testing.assert_close(x_tilde[0], color.view(4, 1, 1).expand(4, 16, 16), atol=1e-4, rtol=1e-4)


def test_ddim_from_a_config_without_clip_sample_does_not_clamp():
    from diffusers import DDPMScheduler, EulerDiscreteScheduler
    from leakstyle.testing import SD15_SCHEDULE
    euler = EulerDiscreteScheduler(**SD15_SCHEDULE)
    assert "clip_sample" not in euler.config
    assert make_scheduler("ddim", euler.config).config.clip_sample is False  # the default True would grey colours
    assert make_scheduler("ddpm", euler.config).config.clip_sample is False
    assert make_scheduler("ddpm", DDPMScheduler(clip_sample=True).config).config.clip_sample is True  # a pixel model's
    assert "clip_sample" not in make_scheduler("euler", euler.config).config


def test_generate_with_a_scheduler_leaves_the_pipelines_own(sd):
    own = sd.scheduler
    images = ls.generate(sd, "a cat", num_inference_steps=2, scheduler="euler", guidance_scale=1.0)
    assert len(images) == 1 and sd.scheduler is own



def test_import_leakstyle_does_not_import_diffusers_nor_the_training_code():
    code = ("import sys, leakstyle; "
            "print('diffusers' in sys.modules, 'transformers' in sys.modules, 'leakstyle.finetune' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["False"] * 3
