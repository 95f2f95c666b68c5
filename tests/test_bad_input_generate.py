"""Inputs generation cannot take are refused at their cause, in the API, before any sampling; and what generate
writes (numbered PNGs with A1111 parameters, batch by batch) does not depend on how it was batched."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

import leakstyle as ls
from leakstyle import outputs, seeds
from leakstyle.cli import main
from leakstyle.devices import resolve_device
from leakstyle.encode import decode, encode
from leakstyle.errors import LeakstyleError
from leakstyle.leak import initial_latents
from leakstyle.pipeline import generate, iter_generate, load_pipeline
from leakstyle.png import a1111_parameters
from leakstyle.schedule import allowed_steps, scheduled
from leakstyle.schedulers import make_scheduler
from leakstyle.testing import SD15_SCHEDULE, tiny_vae

from helpers import run_error

FAST = dict(num_inference_steps=1, guidance_scale=1.0)


def sd15_ddim(**kw):
    return DDIMScheduler(**SD15_SCHEDULE, clip_sample=False, set_alpha_to_one=False, **kw)


def pixels_of(image):
    return np.asarray(image, dtype=np.int16)


# -- 1. step counts --------------------------------------------------------------------------------------------
def test_more_steps_than_training_timesteps_are_refused_with_the_range():
    with pytest.raises(LeakstyleError, match="choose from 1 to 1000 steps"):
        scheduled(sd15_ddim(timestep_spacing="trailing"), 1001)


def test_leading_spacing_with_steps_offset_refuses_the_maximum_whose_first_timestep_is_1000():
    s = sd15_ddim(timestep_spacing="leading")  # steps_offset 1
    assert int(scheduled(s, 999).timesteps[0]) == 999
    with pytest.raises(LeakstyleError, match="choose from 1 to 999 steps"):
        scheduled(s, 1000)


def test_dpm_solver_leading_refuses_step_counts_whose_schedule_leaves_the_training_range():
    s = make_scheduler("dpm++2m", DDIMScheduler(**{**SD15_SCHEDULE, "num_train_timesteps": 100}).config, timestep_spacing="leading")
    assert allowed_steps(s) == (1, 98)  # 99 would start at t = 100, 100 collapse every timestep onto 1


def test_pndm_with_runge_kutta_warm_up_needs_four_steps():
    pndm = make_scheduler("pndm", sd15_ddim().config)  # a DDIM config says nothing of skip_prk_steps: PRK steps run
    with pytest.raises(LeakstyleError, match="choose from 4 to"):
        scheduled(pndm, 3)
    assert len(scheduled(pndm, 4).timesteps) > 0
    plms = make_scheduler("pndm", {**sd15_ddim().config, "skip_prk_steps": True})
    assert len(scheduled(plms, 1).timesteps) == 1  # PLMS alone takes a single step


def test_lcm_refuses_more_steps_than_its_original_inference_steps():
    lcm = make_scheduler("lcm", sd15_ddim().config)
    with pytest.raises(LeakstyleError, match="choose from 1 to 50 steps"):
        scheduled(lcm, 51)


def test_generate_refuses_steps_the_scheduler_cannot_take_before_sampling(sd, first_unet_input):
    hook = first_unet_input(sd.unet)
    with pytest.raises(LeakstyleError, match="choose from 4 to"):
        generate(sd, "a cat", scheduler="pndm", num_inference_steps=2)
    assert hook.sample is None


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_cli_refuses_zero_or_negative_steps(tmp_path, sd_path, capsys, steps):
    line = run_error(["generate", "--model", str(sd_path), "--prompt", "x", "--steps", steps, "--out", str(tmp_path / "o")], capsys)
    assert "steps" in line and "at least 1" in line
    assert not (tmp_path / "o").exists()


def test_cli_refuses_steps_beyond_lcm_and_leaves_no_output_folder(tmp_path, sd_path, capsys):
    out = tmp_path / "new" / "o"
    line = run_error(["generate", "--model", str(sd_path), "--prompt", "x", "--scheduler", "lcm", "--steps", "60",
                      "--out", str(out)], capsys)
    assert "1 to 50" in line
    assert not (tmp_path / "new").exists()


# -- 2. sizes --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("height", [0, -16, 20])
def test_text_to_image_sizes_must_be_positive_multiples_of_8(sd, height):
    with pytest.raises(LeakstyleError, match="height must be"):
        generate(sd, "a cat", height=height, **FAST)
    with pytest.raises(LeakstyleError, match="height must be one of the positive multiples of 8 px"):
        initial_latents(sd, None, height=height)


def test_pixel_unet_sizes_must_be_multiples_of_its_downsampling(pixel_path):
    pipe = load_pipeline(pixel_path, device="cpu")  # two down blocks: one downsampling by 2
    with pytest.raises(LeakstyleError, match="width must be one of the positive multiples of 2 px"):
        generate(pipe, width=17, **FAST)
    assert generate(pipe, width=18, **FAST)[0].size == (18, 16)


def test_cli_refuses_a_zero_height_instead_of_taking_the_default(tmp_path, sd_path, capsys):
    assert "height" in run_error(["generate", "--model", str(sd_path), "--prompt", "x", "--height", "0",
                                  "--out", str(tmp_path / "o")], capsys)


# -- 3. seeds --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,count", [(2**64, 1), (-2, 1), (-2**63 - 1, 1), (2**64 - 2, 3)])
def test_seeds_outside_what_torch_takes_are_refused(seed, count):
    with pytest.raises(LeakstyleError, match="seed"):
        seeds.resolve_seed(seed, count)


def test_the_sampler_seed_never_overflows_and_keeps_ordinary_values():
    assert seeds.sampler_seed(5) == 5 + 1_000_003
    assert seeds.sampler_seed(2**64 - 1) == 1_000_002
    torch.Generator().manual_seed(seeds.sampler_seed(2**64 - 1))


def test_generate_takes_the_largest_seed(sd):
    image = generate(sd, "a cat", seed=2**64 - 1, scheduler="euler-a", **FAST)[0]
    assert image.info["seed"] == 2**64 - 1


@pytest.mark.parametrize("seed", [-1, None])
def test_a_random_seed_is_drawn_reported_and_reproduces(sd, seed):
    first, second = generate(sd, "a cat", seed=seed, num_images=2, **FAST)
    s = first.info["seed"]
    assert 0 <= s < 2**32 and second.info["seed"] == s + 1
    again = generate(sd, "a cat", seed=s, num_images=2, **FAST)[0]  # the same batch: batched UNets round differently
    assert np.array_equal(pixels_of(again), pixels_of(first))


def test_cli_random_seed_is_printed_and_recorded(tmp_path, sd_path, capsys):
    assert main(["generate", "--model", str(sd_path), "--prompt", "x", "--steps", "1", "--seed", "-1",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    [png] = list((tmp_path / "o").iterdir())
    seed = json.loads(Image.open(png).text["leakstyle"])["seed"]
    assert f"seed {seed}" in printed and png.name == f"0000-seed{seed}.png"


def test_cli_refuses_other_negative_seeds(tmp_path, sd_path, capsys):
    assert "-1 for a random seed" in run_error(["generate", "--model", str(sd_path), "--prompt", "x", "--seed", "-7",
                                                "--out", str(tmp_path / "o")], capsys)


# -- 4. devices ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpu0", "cuda:3", "cuda" if not torch.cuda.is_available() else "cuda:99"])
def test_a_device_this_torch_cannot_use_lists_what_is_available(name):
    with pytest.raises(LeakstyleError, match="available here: cpu"):
        resolve_device(name)


def test_load_pipeline_refuses_an_unusable_device(sd_path):
    with pytest.raises(LeakstyleError, match="available here"):
        load_pipeline(sd_path, device="gpu0")


@pytest.mark.parametrize("command", [["generate", "--prompt", "x", "--out", "o"], ["fit", "imgs", "-o", "s.safetensors"],
                                     ["inspect", "s.safetensors"], ["demo"], ["report", "--reference", "r", "--out", "o"],
                                     ["finetune", "imgs", "--out", "o"], ["ui"]])
def test_every_command_refuses_an_unusable_device_in_one_line(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    assert "available here" in run_error([*command, "--device", "gpu0"], capsys)
    assert list(tmp_path.iterdir()) == []


def test_finetune_refuses_an_unusable_device(tmp_path):
    from helpers import write_images
    from leakstyle.finetune import finetune
    with pytest.raises(LeakstyleError, match="available here"):
        finetune(write_images(tmp_path / "imgs"), tmp_path / "out", prompt="x", device="gpu0", steps=1, progress=False)


# -- 5. numbers, colours, zero SNR -----------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(guidance_scale=math.nan), dict(guidance_scale=math.inf),
                                dict(strength=math.nan), dict(strength=1.5), dict(strength=-0.1)])
def test_non_finite_numbers_and_strength_outside_0_1_are_refused_even_without_a_colour(sd, kw):
    with pytest.raises(LeakstyleError, match="guidance|strength"):
        generate(sd, "a cat", **{**FAST, **kw})


def test_initial_latents_refuses_a_strength_outside_0_1_as_a_leakstyle_error(sd):
    with pytest.raises(LeakstyleError, match="strength"):
        initial_latents(sd, None, color=torch.zeros(4), strength=2.0)


def test_a_colour_in_model_units_with_the_wrong_length_is_refused(sd):
    with pytest.raises(LeakstyleError, match="4 finite numbers"):
        generate(sd, "a cat", color=[0.1, 0.2, 0.3], **FAST)


@pytest.mark.parametrize("option,value", [("--guidance", "nan"), ("--guidance", "inf"), ("--strength", "nan"),
                                          ("--color", ""), ("--batch-size", "0")])
def test_cli_refuses_bad_numbers_and_an_empty_colour(tmp_path, sd_path, capsys, option, value):
    line = run_error(["generate", "--model", str(sd_path), "--prompt", "x", option, value, "--out", str(tmp_path / "o")], capsys)
    assert {"--guidance": "guidance", "--strength": "strength", "--color": "#rrggbb", "--batch-size": "batch"}[option] in line


def zero_snr(pipe):
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return pipe


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # the random tiny model decodes x0 / 2^-12
def test_zero_snr_warns_in_the_api_and_starts_from_pure_noise(sd, first_unet_input):
    zero_snr(sd)
    with pytest.warns(ls.ZeroTerminalSNRWarning, match="Diffusion in Style"):
        leak = iter_generate(sd, "a cat", color="#ff0000", **FAST)  # warned at the call, before any sampling
    hook = first_unet_input(sd.unet)
    next(leak)
    plain_hook = first_unet_input(sd.unet)
    next(iter_generate(sd, "a cat", **FAST))
    assert torch.equal(hook.sample, plain_hook.sample)


def test_zero_snr_raises_when_asked(sd):
    zero_snr(sd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(LeakstyleError, match="zero terminal SNR"):
            iter_generate(sd, "a cat", color="#ff0000", on_no_leak="raise", **FAST)


# -- 6. PNG Info -----------------------------------------------------------------------------------------------
PARAMS = dict(prompt="a cat", negative_prompt=None, steps=20, guidance=7.5, seed=3, width=32, height=32, model="m")


@pytest.mark.parametrize("name,sampler", [("ddim", "Sampler: DDIM,"), ("pndm", "Sampler: PLMS,"), ("ddpm", "Sampler: DDPM,"),
                                          ("euler", "Sampler: Euler,"), ("euler-a", "Sampler: Euler a,"),
                                          ("lms", "Sampler: LMS,"), ("heun", "Sampler: Heun,"),
                                          ("dpm++2m", "Sampler: DPM++ 2M,"), ("unipc", "Sampler: UniPC,"),
                                          ("lcm", "Sampler: LCM,"),
                                          ("dpm++2m-karras", "Sampler: DPM++ 2M, Schedule type: Karras,")])
def test_png_info_uses_a1111_sampler_names(name, sampler):
    assert sampler in a1111_parameters({**PARAMS, "scheduler": name})


def test_png_info_omits_an_empty_negative_prompt_and_keeps_a_given_one():
    assert "Negative prompt" not in a1111_parameters({**PARAMS, "scheduler": "euler"})
    text = a1111_parameters({**PARAMS, "scheduler": "euler", "negative_prompt": "blurry"})
    assert text.splitlines()[:2] == ["a cat", "Negative prompt: blurry"]


def test_png_info_tells_a_leak_image_from_its_baseline():
    leak = a1111_parameters({**PARAMS, "scheduler": "euler", "style": "dir/my, style.safetensors", "style_sha256": "ab" * 32,
                             "color": "#ff0000", "strength": 0.5, "baseline": False})
    baseline = a1111_parameters({**PARAMS, "scheduler": "euler", "baseline": True})
    assert 'Leak style: "my, style.safetensors", Leak style hash: ababababab, Leak colour: #ff0000, Leak strength: 0.5' in leak
    assert "Leak: none (pure-noise baseline)" in baseline


def test_cli_pngs_carry_a1111_parameters_of_the_leak(tmp_path, sd_path):
    out = tmp_path / "o"
    assert main(["generate", "--model", str(sd_path), "--prompt", "x", "--steps", "2", "--color", "#00ff00",
                 "--scheduler", "dpm++2m-karras", "--baseline", "--out", str(out), "--quiet"]) == 0
    leak = Image.open(out / "0000-seed0.png").text["parameters"]
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in leak and "Leak colour: #00ff00" in leak
    assert "Leak: none (pure-noise baseline)" in Image.open(out / "0000-seed0-baseline.png").text["parameters"]


# -- 7. output folders -----------------------------------------------------------------------------------------
def test_new_images_take_the_next_free_index_after_the_highest(tmp_path):
    for name in ("0003-seed9.png", "0007-seed1-baseline.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert outputs.next_index(tmp_path) == 8
    assert outputs.next_index(tmp_path / "missing") == 0


def test_an_index_taken_meanwhile_moves_the_pair_to_a_free_one(tmp_path):
    (tmp_path / "0000-seed5.png").write_bytes(b"mine")  # another run wrote index 0 after we chose it
    index, paths = outputs.write_numbered(tmp_path, 0, 5, {"": b"new", "-baseline": b"base"})
    assert index == 1 and [p.name for p in paths] == ["0001-seed5.png", "0001-seed5-baseline.png"]
    assert (tmp_path / "0000-seed5.png").read_bytes() == b"mine"


def test_a_baseline_name_taken_meanwhile_keeps_image_and_baseline_together(tmp_path, monkeypatch):
    from leakstyle import files
    real = files.write_atomic

    def racing(path, data, force=False):  # another writer creates our baseline's name between the two writes
        if path.name == "0000-seed5-baseline.png" and not path.exists():
            path.write_bytes(b"theirs")
        return real(path, data, force)
    monkeypatch.setattr(outputs, "write_atomic", racing)
    index, paths = outputs.write_numbered(tmp_path, 0, 5, {"": b"new", "-baseline": b"base"})
    assert index == 1 and sorted(p.name for p in tmp_path.iterdir()) == [
        "0000-seed5-baseline.png", "0001-seed5-baseline.png", "0001-seed5.png"]


def test_generate_has_no_force_option_since_it_never_overwrites(tmp_path, sd_path, capsys):
    line = run_error(["generate", "--model", str(sd_path), "--prompt", "x", "--force", "--out", str(tmp_path / "o")],
                     capsys)  # argparse errors are one line and exit 2 (main returns 2, no SystemExit)
    assert "--force" in line


def test_out_that_is_a_file_is_refused(tmp_path, sd_path, capsys):
    (tmp_path / "f").write_text("x")
    assert "is a file" in run_error(["generate", "--model", str(sd_path), "--prompt", "x", "--out", str(tmp_path / "f")], capsys)


# -- 8. batches ------------------------------------------------------------------------------------------------
def test_image_i_is_the_same_whatever_the_batch_size(sd):
    style = ls.StyleDistribution("pixel", torch.full((4, 16, 16), 0.5), torch.full((4, 16, 16), 0.2))
    kw = dict(style=style, seed=11, num_images=3, num_inference_steps=2, scheduler="euler-a", guidance_scale=3.0)
    one = [pixels_of(im) for im in generate(sd, ["a cat", "a dog", "a fox"], batch_size=1, **kw)]
    three = [pixels_of(im) for im in generate(sd, ["a cat", "a dog", "a fox"], batch_size=3, **kw)]
    for a, b in zip(one, three):
        assert np.abs(a - b).max() <= 1  # float rounding of batched matmuls at most flips a uint8 by one


def test_iter_generate_checks_when_called_and_yields_index_seed_image_batch_by_batch(sd):
    calls = []
    handle = sd.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with pytest.raises(LeakstyleError):
            iter_generate(sd, "a cat", seed=-5)  # at the call, not at the first next()
        it = iter_generate(sd, "a cat", seed=4, num_images=3, batch_size=2, **FAST)
        assert calls == []
        assert next(it)[:2] == (0, 4) and len(calls) == 1  # the first batch only
        rest = list(it)
        assert [(i, s) for i, s, _ in rest] == [(1, 5), (2, 6)] and len(calls) == 2
    finally:
        handle.remove()


def test_cli_writes_each_batch_as_it_finishes(tmp_path, sd_path, monkeypatch):
    from diffusers import UNet2DConditionModel
    unet_calls, at_each_write = [], []
    forward, write = UNet2DConditionModel.forward, outputs.write_numbered
    monkeypatch.setattr(UNet2DConditionModel, "forward", lambda self, *a, **k: unet_calls.append(1) or forward(self, *a, **k))
    monkeypatch.setattr(outputs, "write_numbered", lambda *a: at_each_write.append(len(unet_calls)) or write(*a))
    assert main(["generate", "--model", str(sd_path), "--prompt", "x", "--steps", "1", "--num-images", "3",
                 "--batch-size", "2", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert at_each_write == [1, 1, 2]  # one UNet call per batch (one step, guidance in the same call)


# -- 9. VAE precision ------------------------------------------------------------------------------------------
def test_a_float16_vae_with_force_upcast_encodes_and_decodes_in_float32():
    vae = tiny_vae().to(torch.float16)
    vae.register_to_config(force_upcast=True)
    seen = []
    handle = vae.encoder.conv_in.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    latents = encode(vae, torch.zeros(1, 3, 16, 16))
    handle.remove()
    assert seen == [torch.float32] and latents.dtype == torch.float16 and vae.dtype == torch.float16
    seen.clear()
    handle = vae.decoder.conv_in.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    pixels = decode(vae, latents)
    handle.remove()
    assert seen == [torch.float32] and pixels.dtype == torch.float16 and vae.dtype == torch.float16


# -- 10. timestep spacing --------------------------------------------------------------------------------------
def test_timestep_spacing_applies_to_the_call(sd, first_unet_input):
    hook = first_unet_input(sd.unet)
    generate(sd, "a cat", num_inference_steps=2, guidance_scale=1.0, timestep_spacing="trailing")
    assert hook.timestep == 999 and sd.scheduler.config.timestep_spacing == "leading"


def test_cli_timestep_spacing_is_recorded(tmp_path, sd_path):
    assert main(["generate", "--model", str(sd_path), "--prompt", "x", "--steps", "1", "--scheduler", "ddim",
                 "--timestep-spacing", "linspace", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert json.loads(Image.open(tmp_path / "o" / "0000-seed0.png").text["leakstyle"])["timestep_spacing"] == "linspace"


@pytest.mark.parametrize("argv,message", [(["--prompt", "x", "--steps", "1000"], "choose from 1 to 999"),
                                          (["--steps", "2"], "give a prompt")])
def test_cli_refuses_what_the_model_configs_tell_before_loading_the_model(tmp_path, sd_path, capsys, monkeypatch,
                                                                          argv, message):
    from leakstyle import pipeline

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(pipeline, "load_pipeline", no_loading)
    assert message in run_error(["generate", "--model", str(sd_path), *argv, "--out", str(tmp_path / "o")], capsys)


def test_a_pixel_model_needs_no_prompt(tmp_path, pixel_path):
    assert main(["generate", "--model", str(pixel_path), "--steps", "1", "--out", str(tmp_path / "o"), "--quiet"]) == 0


def test_numpy_whole_numbers_are_taken_like_ints(sd):
    image = generate(sd, "a cat", seed=np.int64(3), num_inference_steps=np.int64(1), guidance_scale=np.float32(1.0),
                     height=np.int64(32))[0]
    assert image.info["seed"] == 3 and image.size == (32, 32)


@pytest.mark.parametrize("wanted,actual,refused", [("cpu", "cpu", False), ("cuda", "cuda:0", False),
                                                   ("cuda:0", "cuda:0", False), ("cuda:1", "cuda:0", True),
                                                   ("cuda", "cpu", True)])
def test_finetune_refuses_a_device_accelerate_would_not_use(wanted, actual, refused):
    from leakstyle.finetune import check_accelerator_device
    if refused:
        with pytest.raises(LeakstyleError, match="CUDA_VISIBLE_DEVICES"):
            check_accelerator_device(torch.device(wanted), torch.device(actual))
    else:
        check_accelerator_device(torch.device(wanted), torch.device(actual))
