"""The first input ComfyUI's samplers give the diffusion model, with leakstyle's latent and noise nodes.

Tiny models in ComfyUI's own classes (SD 1.x-shaped EPS, SD 2.x-shaped V_PREDICTION, SDXL-shaped with its
ADM conditioning); a forward pre-hook on diffusion_model records the first input and stops the run."""

import math

import pytest
import torch

from comfyui_setup import comfyui_path, import_comfy, tiny_model

if comfyui_path() is None:
    pytest.skip("ComfyUI not found (set COMFYUI_PATH or put it at ../shared/ComfyUI)", allow_module_level=True)

SAMPLERS = ["euler", "euler_ancestral", "heun", "lms", "dpm_2", "dpmpp_2m", "dpmpp_sde", "ddim", "uni_pc", "lcm"]
SCHEDULERS = ["normal", "karras", "exponential", "simple", "sgm_uniform", "ddim_uniform"]
STEPS = 2
# Every sampler x scheduler on the SD 1.x shape; three samplers (ODE, SDE, multistep) x every scheduler on the others.
CASES = [(family, sampler, scheduler) for family in ("sd1", "sd2-v", "sdxl") for sampler in SAMPLERS
         for scheduler in SCHEDULERS if family == "sd1" or sampler in ("euler", "dpmpp_sde", "uni_pc")]


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    import_comfy(tmp_path_factory.mktemp("comfyui"))
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    import comfy_extras.nodes_custom_sampler as custom
    import nodes

    from leakstyle import comfy as pack

    return {"model_base": comfy.model_base, "supported": comfy.supported_models, "patcher": comfy.model_patcher,
            "custom": custom, "nodes": nodes, "pack": pack}


@pytest.fixture(scope="module")
def models(comfyui):
    return {family: tiny_model(family) for family in ("sd1", "sd2-v", "sdxl")}


class FirstCall(Exception):
    pass


def first_input(model, run) -> torch.Tensor:
    """What model.diffusion_model receives at its first call while `run()` samples (the run is stopped there)."""
    seen = {}

    def hook(module, args, kwargs):
        seen["x"] = (args[0] if args else kwargs["x"]).detach().clone()
        raise FirstCall

    handle = model.model.diffusion_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with pytest.raises(FirstCall):
            run()
    finally:
        handle.remove()
    return seen["x"]


def style(channels=4):
    from leakstyle import StyleDistribution

    g = torch.Generator().manual_seed(3)
    mean = torch.randn(channels, 8, 8, generator=g)
    return StyleDistribution("pixel", mean, torch.rand(channels, 8, 8, generator=g) * 0.3,
                             metadata={"space": "latent", "scaling_factor": "1.0", "shift_factor": "0.0"})


def leak_latent(comfyui, model, seed=5, batch=2):
    node = comfyui["pack"].NODE_CLASS_MAPPINGS["LeakstyleLeakLatent"]()
    return node.latent(model, style(), width=64, height=64, batch_size=batch, seed=seed)[0]


def x_tilde(model, latent):
    return model.get_model_object("latent_format").process_in(latent["samples"].clone())


def abar(sigma):
    return 1.0 / (1.0 + sigma * sigma)


def ksampler_sigmas(comfyui, model, sampler, scheduler, denoise):
    import comfy.samplers

    return comfy.samplers.KSampler(model, steps=STEPS, device="cpu", sampler=sampler, scheduler=scheduler,
                                   denoise=denoise).sigmas


@pytest.mark.parametrize("family, sampler, scheduler", CASES)
def test_ksampler_first_input_is_unit_noise_plus_leak_at_sigma_max(comfyui, models, family, sampler, scheduler):
    model, cond = models[family]
    latent = leak_latent(comfyui, model)
    seed = 11
    sigma_0 = float(ksampler_sigmas(comfyui, model, sampler, scheduler, 1.0)[0])
    sigma_max = float(model.get_model_object("model_sampling").sigma_max)
    at_max = math.isclose(sigma_max, sigma_0, rel_tol=1e-5) or sigma_0 > sigma_max
    x = first_input(model, lambda: comfyui["nodes"].KSampler().sample(model, seed, STEPS, 1.0, sampler, scheduler, cond,
                                                                     cond, latent, denoise=1.0))
    import comfy.sample

    eps = comfy.sample.prepare_noise(latent["samples"], seed)
    c_eps = 1.0 if at_max else math.sqrt(1 - abar(sigma_0))
    expected = c_eps * eps + math.sqrt(abar(sigma_0)) * x_tilde(model, latent)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sd2-v", "sdxl"])
def test_ksampler_below_full_denoise_is_the_forward_process(comfyui, models, family):
    model, cond = models[family]
    latent = leak_latent(comfyui, model)
    sigma_0 = float(ksampler_sigmas(comfyui, model, "euler", "normal", 0.5)[0])
    assert sigma_0 < 0.9 * float(model.get_model_object("model_sampling").sigma_max)
    x = first_input(model, lambda: comfyui["nodes"].KSampler().sample(model, 2, STEPS, 1.0, "euler", "normal", cond, cond,
                                                                     latent, denoise=0.5))
    import comfy.sample

    eps = comfy.sample.prepare_noise(latent["samples"], 2)
    expected = math.sqrt(1 - abar(sigma_0)) * eps + math.sqrt(abar(sigma_0)) * x_tilde(model, latent)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)


def custom_advanced(comfyui, model, cond, noise, sigmas, sampler, latent):
    custom = comfyui["custom"]
    guider = custom.CFGGuider().get_guider(model, cond, cond, 1.0)[0]
    sampler_object = custom.KSamplerSelect().get_sampler(sampler)[0]
    return custom.SamplerCustomAdvanced().sample(noise, guider, sampler_object, sigmas, latent)


@pytest.mark.parametrize("family, sampler, scheduler", CASES)
def test_leak_noise_makes_the_first_input_exactly_the_forward_process(comfyui, models, family, sampler, scheduler):
    model, cond = models[family]
    latent = leak_latent(comfyui, model)
    sigmas = comfyui["custom"].BasicScheduler().get_sigmas(model, scheduler, STEPS, 1.0)[0]
    noise = comfyui["pack"].NODE_CLASS_MAPPINGS["LeakstyleLeakNoise"]().noise(model, sigmas, noise_seed=21)[0]
    x = first_input(model, lambda: custom_advanced(comfyui, model, cond, noise, sigmas, sampler, latent))
    import comfy.sample

    eps = comfy.sample.prepare_noise(latent["samples"], 21)
    a0 = abar(float(sigmas[0]))
    torch.testing.assert_close(x, math.sqrt(a0) * x_tilde(model, latent) + math.sqrt(1 - a0) * eps, rtol=1e-5, atol=1e-5)


def test_leak_noise_honours_batch_index_as_random_noise_does(comfyui, models):
    model, _ = models["sd1"]
    latent = dict(leak_latent(comfyui, model, batch=2), batch_index=[3, 1])
    sigmas = comfyui["custom"].BasicScheduler().get_sigmas(model, "normal", STEPS, 1.0)[0]
    ours = comfyui["pack"].NODE_CLASS_MAPPINGS["LeakstyleLeakNoise"]().noise(model, sigmas, noise_seed=4)[0]
    theirs = comfyui["custom"].Noise_RandomNoise(4)
    factor = math.sqrt(1 - abar(float(sigmas[0])))
    torch.testing.assert_close(ours.generate_noise(latent), factor * theirs.generate_noise(latent))
    assert ours.seed == 4


def test_leak_latent_gives_x_tilde_back_through_process_latent_in(comfyui, models):
    model, _ = models["sdxl"]
    latent = leak_latent(comfyui, model, seed=9, batch=3)
    expected = style().sample(3, 8, 8, generator=torch.Generator().manual_seed(9)) * 0.13025  # raw units -> SDXL's
    assert latent["samples"].shape == (3, 4, 8, 8)
    torch.testing.assert_close(x_tilde(model, latent), expected, rtol=1e-5, atol=1e-6)


def colour_style(comfyui, mode="calibrated", strength=1.0):
    """A colour-only STYLE as Style Colour makes it, for a fixed raw latent colour (no VAE needed)."""
    from leakstyle.comfy.calibration import tagged
    from leakstyle.distribution import StyleDistribution

    flat = StyleDistribution.flat(torch.tensor([0.8, -1.2, 0.4, 2.0]), 8, 8)
    flat.metadata = {"space": "latent", "scaling_factor": "1.0", "shift_factor": "0.0", "image_count": ""}
    return tagged(flat, "#000000", mode, strength)


@pytest.mark.parametrize("family, sampler, scheduler", [("sd1", "euler", "normal"), ("sd2-v", "dpmpp_2m", "karras"),
                                                        ("sdxl", "uni_pc", "ddim_uniform")])
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_leak_noise_with_a_calibrated_colour_is_leakstyles_calibrated_start(comfyui, models, family, sampler, scheduler,
                                                                           strength):
    """First input = a (x~ - s (b / a) mean_hw(eps)) + b eps: leakstyle.color's open loop, exactly."""
    from leakstyle.color import noise_dc_correction
    from leakstyle.schedule import Leak

    model, cond = models[family]
    style = colour_style(comfyui, strength=strength)
    latent = comfyui["pack"].NODE_CLASS_MAPPINGS["LeakstyleLeakLatent"]().latent(model, style, 64, 64, 2, 5)[0]
    sigmas = comfyui["custom"].BasicScheduler().get_sigmas(model, scheduler, STEPS, 1.0)[0]
    noise = comfyui["pack"].NODE_CLASS_MAPPINGS["LeakstyleLeakNoise"]().noise(model, sigmas, 21, style=style)[0]
    x = first_input(model, lambda: custom_advanced(comfyui, model, cond, noise, sigmas, sampler, latent))
    import comfy.sample

    eps = comfy.sample.prepare_noise(latent["samples"], 21)
    a0 = abar(float(sigmas[0]))
    leak = Leak(T=0, abar_T=a0, input_scale=1.0)
    calibrated = x_tilde(model, latent) + noise_dc_correction(eps, leak, strength)
    torch.testing.assert_close(x, math.sqrt(a0) * calibrated + math.sqrt(1 - a0) * eps, rtol=1e-5, atol=1e-5)
    if strength == 1.0:  # the input's DC is the leaked colour alone
        torch.testing.assert_close(x.mean((2, 3)), math.sqrt(a0) * x_tilde(model, latent).mean((2, 3)), rtol=1e-4, atol=1e-5)


def test_leak_noise_with_a_raw_colour_or_no_style_keeps_the_noise(comfyui, models):
    model, _ = models["sd1"]
    latent = leak_latent(comfyui, model)
    sigmas = comfyui["custom"].BasicScheduler().get_sigmas(model, "normal", STEPS, 1.0)[0]
    make = comfyui["pack"].NODE_CLASS_MAPPINGS["LeakstyleLeakNoise"]().noise
    plain = make(model, sigmas, 3)[0].generate_noise(latent)
    torch.testing.assert_close(make(model, sigmas, 3, style=colour_style(comfyui, "raw"))[0].generate_noise(latent), plain)
    assert (make(model, sigmas, 3, style=colour_style(comfyui))[0].generate_noise(latent) - plain).abs().max() > 1e-3


@pytest.mark.parametrize("family, sampler", [("sd1", "euler"), ("sd2-v", "dpmpp_sde"), ("sdxl", "lcm")])
def test_ksampler_with_the_latent_given_its_seed_sees_only_the_colours_dc(comfyui, models, family, sampler):
    """At sigma_max KSampler's first input is eps + a x~: with noise_seed = KSampler's seed the latent cancels the DC
    of that eps, so the input's channel means are a times the colour's latent (strength 1)."""
    model, cond = models[family]
    style = colour_style(comfyui)
    node = comfyui["pack"].NODE_CLASS_MAPPINGS["LeakstyleLeakLatent"]()
    latent = node.latent(model, style, 64, 64, 2, 5, noise_seed=11)[0]
    uncorrected = node.latent(model, style, 64, 64, 2, 5)[0]
    x = first_input(model, lambda: comfyui["nodes"].KSampler().sample(model, 11, STEPS, 1.0, sampler, "normal", cond, cond,
                                                                     latent, denoise=1.0))
    a = math.sqrt(abar(float(model.get_model_object("model_sampling").sigma_max)))
    colour = x_tilde(model, uncorrected).mean((2, 3))  # flat: the colour's latent in the model's units
    torch.testing.assert_close(x.mean((2, 3)), a * colour, rtol=1e-4, atol=1e-5)
    import comfy.sample

    eps = comfy.sample.prepare_noise(latent["samples"], 11)
    torch.testing.assert_close(x - x.mean((2, 3), keepdim=True), eps - eps.mean((2, 3), keepdim=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family, sampler", [("sd1", "euler"), ("sd2-v", "dpmpp_2m"), ("sdxl", "uni_pc")])
def test_the_calibrated_model_holds_every_steps_x0_border_ring_at_the_colour(comfyui, models, family, sampler):
    """ComfyUI's `denoised` is x0 in process_latent_in units whatever the prediction type: after Calibrate Colour's
    post-CFG function its ring mean is the colour's latent in the model's units, at every step."""
    from leakstyle.color import ring_mean

    model, cond = models[family]
    style = colour_style(comfyui)
    patched = comfyui["pack"].NODE_CLASS_MAPPINGS["LeakstyleCalibrateModel"]().patch(model, style)[0]
    seen = []
    recording = patched.clone()
    recording.set_model_sampler_post_cfg_function(lambda args: seen.append(args["denoised"].clone()) or args["denoised"])
    latent = comfyui["pack"].NODE_CLASS_MAPPINGS["LeakstyleLeakLatent"]().latent(model, style, 128, 96, 2, 5)[0]
    comfyui["nodes"].KSampler().sample(recording, 1, STEPS, 3.0, sampler, "karras", cond, cond, latent)
    target = x_tilde(model, latent).mean((2, 3))  # the flat colour's latent in the model's units
    assert len(seen) == STEPS
    for x0 in seen:
        assert x0.shape == (2, 4, 12, 16)
        torch.testing.assert_close(ring_mean(x0), target, rtol=1e-4, atol=1e-5)
