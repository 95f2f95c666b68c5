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
    from leakstyle.encode import color_to_model_units
    from leakstyle.schedule import leak_at_first_step

    leak = leak_at_first_step(sd.scheduler, 3, warn=False)
    z = color_to_model_units(sd, "#808080")
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
