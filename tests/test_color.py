"""Calibrated colour control (leakstyle.color): the noise's DC cancelled, the colour alone sets x_T's DC."""

import pytest
import torch

from leakstyle import color
from leakstyle.errors import LeakstyleError
from leakstyle.schedule import Leak


def test_the_correction_makes_x_T_carry_exactly_sqrt_abar_times_the_colour():
    leak = Leak(T=961, abar_T=0.0064, input_scale=1.0)
    m = torch.tensor([0.5, -1.0, 2.0, 0.0])
    eps = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    x_tilde = m.view(1, 4, 1, 1).expand(3, 4, 8, 8) + color.noise_dc_correction(eps, leak)
    x_T = leak.sqrt_abar_T * x_tilde + leak.sqrt_one_minus_abar_T * eps
    assert torch.allclose(x_T.mean((2, 3)), leak.sqrt_abar_T * m.expand(3, 4), atol=1e-5)
    assert torch.allclose(x_T - x_T.mean((2, 3), keepdim=True),
                          leak.sqrt_one_minus_abar_T * (eps - eps.mean((2, 3), keepdim=True)), atol=1e-5)


def test_the_correction_keeps_one_minus_strength_of_the_noises_dc_and_a_noise_mean():
    leak = Leak(T=961, abar_T=0.0064, input_scale=1.0)
    eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) + 3.0
    mean = torch.full((4,), 3.0)
    full = color.noise_dc_correction(eps, leak, 1.0, mean)
    assert torch.allclose(color.noise_dc_correction(eps, leak, 0.25, mean), 0.25 * full)
    x_T = leak.sqrt_abar_T * full + leak.sqrt_one_minus_abar_T * eps
    assert torch.allclose(x_T.mean((2, 3)), leak.sqrt_one_minus_abar_T * mean.expand(2, 4), atol=1e-4)


def test_an_unknown_colour_mode_is_refused():
    assert color.check_color_mode("raw") == "raw"
    with pytest.raises(LeakstyleError, match="colour mode"):
        color.check_color_mode("magic")


# -- brightness and the API --------------------------------------------------------------------------
def test_with_lightness_sets_L_and_keeps_the_colours_hue(sd):
    from leakstyle import metrics

    red = metrics.color_to_lab("#c03030")
    out = metrics.color_to_lab(color.with_lightness(sd, 60.0, color="#c03030"))
    assert abs(out[0] - 60.0) < 1.0
    hue = lambda lab: torch.atan2(torch.tensor(lab[2]), torch.tensor(lab[1]))  # noqa: E731
    assert abs(float(hue(out) - hue(red))) < 0.1


def test_with_lightness_without_style_or_colour_is_neutral_grey(sd):
    from leakstyle import metrics

    lab = metrics.color_to_lab(color.with_lightness(sd, 30.0))
    assert abs(lab[0] - 30.0) < 1.0 and abs(lab[1]) < 1.0 and abs(lab[2]) < 1.0
    with pytest.raises(LeakstyleError, match="from 0 .black. to 100"):
        color.with_lightness(sd, 120.0)




# -- the API -----------------------------------------------------------------------------------------
def first_inputs(pipe, mode, seeds=(0, 1), **kw):
    """The UNet's first input (conditional half) for each seed, generating with colour mode `mode`."""
    from leakstyle.pipeline import generate

    out = []
    for s in seeds:
        inputs = []
        handle = pipe.unet.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))
        try:
            generate(pipe, "a", color="#808080", color_mode=mode, num_inference_steps=3, guidance_scale=2.0, seed=s, **kw)
        finally:
            handle.remove()
        out.append(inputs[0][:1])
    return out


def test_calibrated_mode_gives_every_seed_the_same_dc_sqrt_abar_times_the_colour(sd):
    from leakstyle.encode import decoding_to_color
    from leakstyle.schedule import leak_at_first_step

    leak = leak_at_first_step(sd.scheduler, 3, warn=False)
    z = decoding_to_color(sd, "#808080")
    a, b = first_inputs(sd, "calibrated")
    assert torch.allclose(a.mean((2, 3))[0], leak.sqrt_abar_T * z, atol=1e-4)
    assert torch.allclose(b.mean((2, 3))[0], leak.sqrt_abar_T * z, atol=1e-4)
    raw_a, raw_b = first_inputs(sd, "raw")
    assert not torch.allclose(raw_a.mean((2, 3)), raw_b.mean((2, 3)), atol=1e-3)  # raw: the noise's DC stays


def test_calibrated_and_raw_differ_only_in_the_dc(sd):
    (cal,), (raw,) = first_inputs(sd, "calibrated", seeds=(3,)), first_inputs(sd, "raw", seeds=(3,))
    assert torch.allclose(cal - cal.mean((2, 3), keepdim=True), raw - raw.mean((2, 3), keepdim=True), atol=1e-4)
    assert not torch.allclose(cal.mean((2, 3)), raw.mean((2, 3)), atol=1e-3)


def test_generate_refuses_an_unknown_colour_mode(sd):
    from leakstyle.pipeline import generate

    with pytest.raises(LeakstyleError, match="colour mode"):
        generate(sd, "a", color="#808080", color_mode="magic", num_inference_steps=2)


# -- the closed loop ---------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_a_shifted_prediction_moves_the_predicted_x0_by_exactly_delta(prediction_type):
    g = torch.Generator().manual_seed(0)
    z, out = torch.randn(3, 4, 6, 6, generator=g), torch.randn(3, 4, 6, 6, generator=g)
    abar = torch.tensor([0.9, 0.3, 0.005]).view(3, 1, 1, 1)
    delta = torch.randn(3, 4, 1, 1, generator=g)
    moved = color.predicted_x0(z, color.shifted_prediction(out, delta, abar, prediction_type), abar, prediction_type)
    assert torch.allclose(moved, color.predicted_x0(z, out, abar, prediction_type) + delta, atol=1e-4)


def test_the_ring_is_a_sixteenth_of_the_shorter_side_and_its_mean_is_the_borders():
    assert [color.ring_width(h, w) for h, w in ((16, 16), (64, 64), (128, 96), (4, 4))] == [1, 4, 6, 1]
    x = torch.randn(2, 3, 16, 20)
    mask = torch.zeros(16, 20, dtype=torch.bool)
    mask[:1], mask[-1:], mask[:, :1], mask[:, -1:] = True, True, True, True
    assert torch.allclose(color.ring_mean(x), x[..., mask].mean(-1), atol=1e-6)
    target = torch.tensor([1.0, -2.0, 0.5])
    shifted = x + color.background_shift(x, target)
    assert torch.allclose(color.ring_mean(shifted), target.expand(2, 3), atol=1e-5)
    frames = torch.randn(2, 5, 3, 16, 16)  # [B, F, C, h, w]: channels on axis 2
    assert torch.allclose(color.ring_mean(frames + color.background_shift(frames, target, channel_axis=2)),
                          target.view(1, 1, 3).expand(2, 5, 3), atol=1e-5)


def test_the_target_blends_the_styles_mean_toward_the_colour_by_strength():
    from leakstyle.distribution import StyleDistribution

    style = StyleDistribution.flat(torch.tensor([1.0, 1.0, 1.0, 1.0]), 8, 8)
    c = torch.tensor([3.0, -1.0, 0.0, 1.0])
    assert torch.allclose(color.background_target(c, 1.0, style), c)
    assert torch.allclose(color.background_target(c, 0.25, style), 0.75 * style.channel_means() + 0.25 * c)
    assert torch.allclose(color.background_target(c, 0.5), 0.5 * c)


def test_abar_is_read_at_fractional_and_continuous_timesteps():
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    ddim = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    table = ddim.alphas_cumprod.double()
    got = color.abar_at(ddim, torch.tensor([0.0, 999.0, 10.25]))
    assert torch.allclose(got, torch.stack([table[0], table[999], 0.75 * table[10] + 0.25 * table[11]]))
    edm = EulerDiscreteScheduler(timestep_type="continuous", prediction_type="v_prediction")
    sigma = torch.tensor([0.5, 80.0])
    assert torch.allclose(color.abar_at(edm, 0.25 * sigma.log()), 1 / (1 + sigma.double() ** 2))


def ring_means_of_predictions(pipe, target, run, channel_axis=1):
    """Run `run()` with the background steered to `target` and return, for every denoiser call, the ring mean of the
    x0 prediction read back from the denoiser's (steered) output, per sample and channel."""
    from leakstyle.denoiser import denoiser_of, latent_channels

    C, scheduler, rings = latent_channels(pipe), pipe.scheduler, []

    def read(module, args, kwargs, output):
        z = (args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))).narrow(channel_axis, 0, C)
        out = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        t = torch.as_tensor(args[1] if len(args) > 1 else kwargs["timestep"])
        abar = color.abar_at(scheduler, t).float()
        abar = (abar if abar.numel() == z.shape[0] else abar[:1].expand(z.shape[0])).view([-1] + [1] * (z.dim() - 1))
        x0 = color.predicted_x0(z.float(), out.narrow(channel_axis, 0, C).float(), abar,
                                scheduler.config.get("prediction_type", "epsilon"))
        rings.append(color.ring_mean(x0))

    with color.steered_background(pipe, target):
        handle = denoiser_of(pipe).register_forward_hook(read, with_kwargs=True)  # sees the steered output
        try:
            run()
        finally:
            handle.remove()
    return rings


@pytest.mark.parametrize("fixture", ["sd_path", "sd_v_path"])
def test_every_step_of_the_unet_predicts_a_background_of_exactly_the_target(fixture, request):
    from leakstyle.pipeline import load_pipeline

    pipe = load_pipeline(request.getfixturevalue(fixture))
    target = torch.tensor([0.4, -0.3, 0.2, 0.1])
    rings = ring_means_of_predictions(pipe, target, lambda: pipe(["a", "b"], num_inference_steps=4, guidance_scale=3.0,
                                                                  height=32, width=32, output_type="latent"))
    assert len(rings) == 4 and all(r.shape == (4, 4) for r in rings)  # 2 prompts x (uncond, cond)
    for r in rings:
        assert torch.allclose(r, target.expand(4, 4), atol=1e-4)


def test_without_the_loop_the_unets_background_is_not_the_target(sd):
    """The check above can fail: the same reading without steering is far from the target."""
    from leakstyle.denoiser import denoiser_of

    outputs = []
    handle = denoiser_of(sd).register_forward_hook(lambda m, a, k, o: outputs.append(o), with_kwargs=True)
    with color.steered_background(sd, torch.zeros(4)):
        pass  # entered and left: the hook is gone
    try:
        sd(["a"], num_inference_steps=2, guidance_scale=1.0, height=32, width=32, output_type="latent")
    finally:
        handle.remove()
    assert len(denoiser_of(sd)._forward_hooks) == 0 and len(outputs) == 2
    rings = ring_means_of_predictions(sd, torch.full((4,), 5.0), lambda: None)
    assert rings == []


def test_generate_in_calibrated_mode_steers_and_raw_mode_does_not(sd):
    from leakstyle.encode import decoding_to_color
    from leakstyle.pipeline import generate

    target = decoding_to_color(sd, "#30a0e0")
    for mode, steered in (("calibrated", True), ("raw", False)):
        rings = []

        def record(module, args, kwargs, output, rings=rings):
            z, t = args[0], torch.as_tensor(args[1])
            abar = color.abar_at(sd.scheduler, t).float().view(-1, 1, 1, 1)
            rings.append(color.ring_mean(color.predicted_x0(z, output[0] if isinstance(output, tuple) else output.sample,
                                                            abar, "epsilon")))
        handle = sd.unet.register_forward_hook(record, with_kwargs=True)
        try:
            generate(sd, "a", color="#30a0e0", color_mode=mode, num_inference_steps=3, guidance_scale=2.0, height=32, width=32)
        finally:
            handle.remove()
        hits = [torch.allclose(r, target.expand_as(r), atol=1e-3) for r in rings]
        assert len(rings) == 3 and all(hits) == steered and any(hits) == steered


@pytest.mark.parametrize("family", ["pixart", "deepfloyd_if", "stable_video_diffusion", "animatediff"])
def test_the_loop_steers_every_family_with_a_leak(family, tmp_path):
    import family_pipelines as fp
    from PIL import Image

    from leakstyle.denoiser import FRAME_MAJOR, latent_channels, layout

    make = getattr(fp, family)
    pipe = make(tmp_path) if family == "animatediff" else make()
    C, axis = latent_channels(pipe), 2 if layout(pipe) == FRAME_MAJOR else 1
    target = torch.linspace(-0.5, 0.5, C)
    call = {"pixart": lambda: pipe("a", num_inference_steps=2, guidance_scale=2.0, height=16, width=16,
                                   use_resolution_binning=False, output_type="latent"),
            "deepfloyd_if": lambda: pipe("a", num_inference_steps=2, guidance_scale=2.0, height=16, width=16,
                                         output_type="pt"),
            "stable_video_diffusion": lambda: pipe(Image.new("RGB", (32, 32), "red"), num_frames=3, height=32, width=32,
                                                   num_inference_steps=2, output_type="latent", decode_chunk_size=3),
            "animatediff": lambda: pipe("a", num_frames=2, num_inference_steps=2, guidance_scale=2.0, height=32,
                                        width=32, output_type="latent")}[family]
    rings = ring_means_of_predictions(pipe, target, call, channel_axis=axis)
    assert len(rings) >= 2
    shape = [1] * 3
    shape[axis] = -1
    for r in rings:  # [B, C] or, for video, [B, C, F] / [B, F, C]
        assert torch.allclose(r, target.view(shape[:r.dim()]).expand_as(r), atol=1e-3)


def test_a_pipeline_called_by_hand_is_steered_to_a_hex_colour(sd):
    import leakstyle as ls
    from leakstyle.encode import color_to_model_units

    target = color_to_model_units(sd, "#e0c020")
    z = ls.initial_latents(sd, None, color=target, color_mode="calibrated", height=32, width=32, num_inference_steps=2,
                           generator=torch.Generator().manual_seed(0))
    rings = ring_means_of_predictions(sd, "#e0c020", lambda: sd("a", latents=z, num_inference_steps=2, height=32,
                                                                 width=32, output_type="latent"))
    assert len(rings) == 2 and all(torch.allclose(r, target.expand_as(r), atol=1e-4) for r in rings)


def test_a_scheduler_the_loop_cannot_read_is_refused_before_sampling(sd):
    from diffusers import FlowMatchEulerDiscreteScheduler

    calls = []
    handle = sd.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(LeakstyleError, match="color_mode='raw'"):
            with color.steered_background(sd, torch.zeros(4), scheduler=FlowMatchEulerDiscreteScheduler()):
                sd("a", num_inference_steps=1, height=32, width=32, output_type="latent")
    finally:
        handle.remove()
    assert calls == [] and not sd.unet._forward_hooks


def test_calibrated_mode_aims_at_the_latent_that_decodes_to_the_colour(sd):
    """On the embedded model's VAE the flat latent decodes to the colour (the encoding misses by up to 6.6 dE00);
    a random VAE that cannot make the colour keeps the encoding rather than running off."""
    import numpy as np

    from leakstyle import metrics
    from leakstyle.encode import color_to_model_units, decoding_to_color, model_units_to_rgb, to_hex
    from leakstyle.pipeline import load_pipeline

    def error(pipe, z, c):
        obtained = to_hex(np.array(model_units_to_rgb(pipe.vae, z)))
        return metrics.ciede2000(metrics.color_to_lab(obtained)[None], metrics.color_to_lab(c)[None])[0]

    embedded = load_pipeline(None, device="cpu")
    for c in ("#505050", "#e0c020", "#101010"):
        encoded, decoding = color_to_model_units(embedded, c), decoding_to_color(embedded, c)
        assert error(embedded, decoding, c) < 1.0 < error(embedded, encoded, c)
        assert error(sd, decoding_to_color(sd, c), c) <= error(sd, color_to_model_units(sd, c), c)


class CountingDecoder:
    """A decoder's mean colour d(z) = A z + b + curve (A z)^2 [N, 3] in [-1, 1], counting its calls."""

    def __init__(self, curve: float = 0.0):
        g = torch.Generator().manual_seed(0)
        self.A, self.b = torch.randn(3, 4, generator=g, dtype=torch.float64), 0.1 * torch.randn(3, dtype=torch.float64)
        self.curve, self.calls = curve, 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        Az = z @ self.A.T
        return Az + self.b + self.curve * Az ** 2


RGB = (200, 40, 90)
WANT = torch.tensor(RGB, dtype=torch.float64) / 127.5 - 1
Z0 = torch.zeros(4, dtype=torch.float64)


def grey_levels_off(d, z) -> float:
    return 127.5 * float((d(z[None])[0] - WANT).norm())


def test_the_decoder_inversion_of_a_linear_decoder_is_one_step_of_the_smallest_change():
    """One batched call for the Jacobian, one for the step, and the step lands: z - z0 is the minimum-norm
    solution of A dz = rgb - d(z0) (no part in A's null space)."""
    from leakstyle.encode import solve_decoding_to

    d = CountingDecoder()
    z = solve_decoding_to(d, Z0, RGB)
    assert d.calls == 2 and grey_levels_off(d, z) < 0.05
    torch.testing.assert_close(z, torch.linalg.pinv(d.A) @ (WANT - d.b), atol=1e-3, rtol=0)


def test_the_decoder_inversion_stops_within_half_a_grey_level_and_a_tighter_tolerance_goes_on():
    from leakstyle.encode import solve_decoding_to

    d = CountingDecoder(curve=0.1)
    z = solve_decoding_to(d, Z0, RGB)
    calls = d.calls
    assert grey_levels_off(d, z) <= 0.5 and calls <= 6  # the Jacobian's batch and one try per step, 3 steps at most
    tight = solve_decoding_to(d, Z0, RGB, tolerance=1e-6)
    assert grey_levels_off(d, tight) < grey_levels_off(d, z) and d.calls - calls - 2 > calls


def test_a_decoder_that_cannot_make_the_colour_keeps_the_start():
    from leakstyle.encode import solve_decoding_to

    d = CountingDecoder()
    z = solve_decoding_to(lambda z: 0 * d(z), Z0, RGB)  # a decoder whose colour never moves
    assert torch.equal(z, Z0) and d.calls == 4  # the Jacobian's batch, then the full, half and quarter steps


def test_stable_video_diffusion_takes_a_calibrated_colour():
    """Its temporal decoder asks for the frame count, which decoding_to_color's flat latents must give."""
    import family_pipelines as fp
    from PIL import Image

    from leakstyle.pipeline import generate

    pipe = fp.stable_video_diffusion()
    videos = generate(pipe, image=Image.new("RGB", (32, 32), "red"), color="#505050", num_frames=3, height=32,
                      width=32, num_inference_steps=2)
    assert len(videos) == 1 and len(videos[0]) == 3 and videos[0][0].size == (32, 32)


def test_initial_latents_takes_a_hex_colour_as_each_mode_reads_it(sd):
    from leakstyle.encode import color_to_model_units, decoding_to_color
    from leakstyle.leak import initial_latents

    def start(color, mode):
        return initial_latents(sd, None, color=color, color_mode=mode, height=32, width=32, num_inference_steps=2,
                               generator=torch.Generator().manual_seed(0))

    for mode, units in (("calibrated", decoding_to_color), ("raw", color_to_model_units)):
        assert torch.equal(start("#e0c020", mode), start(units(sd, "#e0c020"), mode))
    with pytest.raises(LeakstyleError, match="colour mode"):
        start(None, "magic")


def test_the_loop_steers_a_pixel_model_whose_unet_returns_an_output_object(pixel_path):
    from leakstyle.pipeline import load_pipeline, run_pixel_model

    pipe = load_pipeline(pixel_path, device="cpu")
    target = torch.tensor([0.5, -0.5, 0.25])

    x = torch.randn(2, 3, pipe.unet.config.sample_size, pipe.unet.config.sample_size, generator=torch.Generator().manual_seed(0))
    rings = ring_means_of_predictions(pipe, target, lambda: run_pixel_model(pipe, x, 3))
    assert len(rings) == 3 and all(torch.allclose(r, target.expand_as(r), atol=1e-4) for r in rings)
