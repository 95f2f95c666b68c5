import warnings

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

from leakstyle.schedule import ZeroTerminalSNRWarning, alphas_cumprod, betas_scaled_linear, leak_at_first_step
from leakstyle.testing import SD15_SCHEDULE


def sd15_ddim(**kw):
    return DDIMScheduler(**SD15_SCHEDULE, clip_sample=False, set_alpha_to_one=False, **kw)


def test_sd15_schedule_leaks_0_068265_at_t_999():
    abar = alphas_cumprod(betas_scaled_linear())
    assert abar[999].sqrt().item() == pytest.approx(0.068265, abs=5e-7)
    assert (1 - abar[999]).sqrt().item() == pytest.approx(0.997667, abs=5e-7)


def test_our_schedule_matches_diffusers_scaled_linear():
    ours = alphas_cumprod(betas_scaled_linear()).float()
    assert torch.allclose(ours, sd15_ddim().alphas_cumprod, atol=1e-6)


def test_sd15_first_timestep_at_50_leading_steps_is_981():
    leak = leak_at_first_step(sd15_ddim(timestep_spacing="leading"), 50)
    assert leak.T == 981
    assert leak.sqrt_abar_T == pytest.approx(0.075997, abs=5e-7)
    assert leak.sqrt_one_minus_abar_T == pytest.approx(0.997108, abs=5e-7)
    assert leak.input_scale == 1.0


def test_trailing_spacing_starts_at_999():
    assert leak_at_first_step(sd15_ddim(timestep_spacing="trailing"), 50).T == 999


def test_sigma_scheduler_agrees_with_vp_scheduler_on_abar():
    euler = EulerDiscreteScheduler(**SD15_SCHEDULE, timestep_spacing="leading")
    leak = leak_at_first_step(euler, 50)
    assert leak.T == 981
    assert leak.sqrt_abar_T == pytest.approx(0.075997, abs=5e-6)
    assert leak.input_scale == pytest.approx(1.0, abs=1e-6)  # sqrt(sigma^2 + 1) cancels init_noise_sigma


def test_leak_does_not_touch_the_callers_scheduler():
    s = sd15_ddim()
    leak_at_first_step(s, 10)
    assert s.num_inference_steps is None


@pytest.mark.parametrize("scheduler", [
    sd15_ddim(rescale_betas_zero_snr=True, timestep_spacing="trailing"),
    EulerDiscreteScheduler(**SD15_SCHEDULE, rescale_betas_zero_snr=True, timestep_spacing="trailing"),
    FlowMatchEulerDiscreteScheduler(),
], ids=["ddim-zero-snr", "euler-zero-snr", "flow-matching"])
def test_zero_terminal_snr_warns_and_reports_no_leak(scheduler):
    with pytest.warns(ZeroTerminalSNRWarning, match="Diffusion in Style"):
        leak = leak_at_first_step(scheduler, 20)
    assert not leak.has_leak


def test_ordinary_schedule_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert leak_at_first_step(sd15_ddim(), 20).has_leak
