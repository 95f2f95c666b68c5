"""`leakstyle probe`: the leak of each family's published schedule, the SNR formulas, and the verdicts."""

import json
import math

import pytest
import torch

import family_pipelines as fp
import leakstyle as ls
from helpers import run_error
from leakstyle.cli import main
from leakstyle.distribution import StyleDistribution
from leakstyle.errors import LeakstyleError
from leakstyle.moments import Moments
from leakstyle.pipeline import load_pipeline
from leakstyle.probe import (REFERENCE_SOURCE, predicted_std_ratio, probe, probe_schedule, sigma_m_of_style, snr_dc,
                             verdict)

SIGMA_M = torch.full((4,), 0.4)  # DESIGN.md's figure for SD 1.5 latents


def trailing(config):
    """The family's scheduler with 'trailing' spacing: the first step is the last training step, t = 999."""
    s = fp.scheduler(config)
    return type(s).from_config(s.config, timestep_spacing="trailing")


# sqrt(abar_T) at the last training step of each family's published schedule (issue 13's table).
@pytest.mark.parametrize("config,sqrt_abar", [
    (fp.SD, 0.0683), (fp.ANIMATEDIFF, 0.0397), (fp.HUNYUAN_DIT, 0.0220), (fp.PIXART, 0.0064),
])
def test_sqrt_abar_at_the_last_training_step_of_each_family(config, sqrt_abar):
    p = probe_schedule(trailing(config), 25, 64, 64, SIGMA_M)
    assert p.T == 999 and p.sqrt_abar_T == pytest.approx(sqrt_abar, rel=0.01)


def test_stable_video_diffusion_leaks_at_its_edm_sigma_max():
    p = probe_schedule(fp.scheduler(fp.SVD), 25, 72, 128, SIGMA_M)
    assert p.sigma_T == pytest.approx(700.0, rel=1e-4)
    assert p.sqrt_abar_T == pytest.approx(1 / math.sqrt(1 + 700.0**2), rel=1e-4)  # 0.0014
    assert p.verdict == "none"


def test_deepfloyd_if_leaks_nearly_nothing_at_t_999():
    p = probe_schedule(trailing(fp.DEEPFLOYD_IF), 100, 64, 64, SIGMA_M)
    assert p.T == 999 and p.sqrt_abar_T == pytest.approx(4.9e-5, rel=0.05)
    assert p.verdict == "none" and "cosine schedule (squaredcos_cap_v2)" in p.explanation


@pytest.mark.parametrize("steps,sqrt_abar", [(100, 0.014), (50, 0.030), (27, 0.058)])
def test_deepfloyd_if_leaks_at_the_first_step_of_leading_spacing(steps, sqrt_abar):
    p = probe_schedule(fp.scheduler(fp.DEEPFLOYD_IF), steps, 64, 64, SIGMA_M)
    assert p.sqrt_abar_T == pytest.approx(sqrt_abar, abs=0.0006)


@pytest.mark.parametrize("config,cause", [(fp.COGVIDEOX, "rescale_betas_zero_snr"), (fp.SD3, "flow matching"),
                                          (fp.FLUX, "flow matching")])
def test_families_without_a_leak_get_verdict_none_with_the_cause(config, cause):
    p = probe_schedule(fp.scheduler(config), 50, 64, 64, SIGMA_M)
    assert p.abar_T == pytest.approx(0.0, abs=1e-6) and p.snr_dc == 0.0 and p.verdict == "none"
    assert cause in p.explanation and p.predicted_std_ratio == 1.0


def test_snr_formulas():
    abar, h, w, s = 0.00466, 64, 64, 0.4
    assert snr_dc(abar, h, w, s) == pytest.approx(abar * h * w * s * s / (1 - abar))
    assert snr_dc(abar, h, w, s) == pytest.approx(3.06, abs=0.01)  # DESIGN.md's example: 3.1, ratio 0.50
    assert predicted_std_ratio(snr_dc(abar, h, w, s)) == pytest.approx(0.50, abs=0.01)
    p = probe_schedule(trailing(fp.SD), 25, 32, 48, torch.tensor([0.2, 0.4, 0.6, 0.8]))
    rms = math.sqrt((0.04 + 0.16 + 0.36 + 0.64) / 4)
    assert p.snr_dc == pytest.approx(snr_dc(p.abar_T, 32, 48, rms))
    assert p.snr_dc_per_channel[3] == pytest.approx(snr_dc(p.abar_T, 32, 48, 0.8))
    assert p.snr_element == pytest.approx(p.abar_T / (1 - p.abar_T))
    assert p.predicted_std_ratio == pytest.approx(1 / math.sqrt(1 + p.snr_dc))


def test_verdict_thresholds():
    assert [verdict(s) for s in (0.1, 0.24, 0.25, 0.99, 1.0, 30.0)] == ["none", "none", "weak", "weak", "strong", "strong"]
    assert verdict(5.0, has_leak=False) == "none"


# Verdicts at each family's native size, sigma_m 0.4, the pipeline's default spacing.
@pytest.mark.parametrize("config,steps,size,expected", [
    (fp.SD, 25, (64, 64), "strong"),  # SD 1.5 at 512 px: SNR_DC 4.8
    (fp.ANIMATEDIFF, 25, (64, 64), "strong"),  # 512 px: 1.03
    (fp.HUNYUAN_DIT, 25, (128, 128), "strong"),  # 1024 px: 2.5
    (fp.PIXART, 20, (128, 128), "none"),  # 1024 px: 0.11
    (fp.SVD, 25, (72, 128), "none"),  # 1024 x 576: 0.003
    (fp.DEEPFLOYD_IF, 100, (64, 64), "none"),  # its default 100 steps: 0.13
    (fp.DEEPFLOYD_IF, 27, (64, 64), "strong"),  # 27 steps: 2.2
])
def test_verdicts_of_the_families_at_their_native_size(config, steps, size, expected):
    assert probe_schedule(fp.scheduler(config), steps, *size, SIGMA_M).verdict == expected


def dct_style(channel_means):
    """A dct style fitted on flat images whose channel means are `channel_means` [N, C] (plus small detail)."""
    N, C = channel_means.shape
    g = torch.Generator().manual_seed(0)
    x = channel_means.view(N, C, 1, 1) + 0.05 * torch.randn(N, C, 8, 8, generator=g)
    moments = Moments.for_dct(C, 8, 8, 3)
    moments.update(x)
    return StyleDistribution.from_moments(moments, {}), x


def test_sigma_m_of_a_style_is_the_spread_of_its_images_channel_means():
    style, x = dct_style(torch.randn(12, 4, generator=torch.Generator().manual_seed(1)) * torch.tensor([0.2, 0.5, 1, 2]))
    torch.testing.assert_close(sigma_m_of_style(style), x.double().mean((2, 3)).std(0), rtol=1e-6, atol=1e-8)


def test_a_pixel_style_cannot_give_sigma_m():
    with pytest.raises(LeakstyleError, match="pixel-type style has no covariance"):
        sigma_m_of_style(StyleDistribution("pixel", torch.zeros(4, 8, 8), torch.ones(4, 8, 8)))


def test_probe_of_a_pipeline_takes_sigma_m_from_the_reference_images(sd):
    p = probe(sd, steps=10)
    assert p.sigma_m_source == REFERENCE_SOURCE and "overstates" in p.sigma_m_source
    assert len(p.sigma_m) == 4 and min(p.sigma_m) > 0 and (p.latent_height, p.latent_width) == (16, 16)
    assert p.snr_dc == pytest.approx(snr_dc(p.abar_T, 16, 16, math.sqrt(sum(s * s for s in p.sigma_m) / 4)))


def test_probe_of_a_pipeline_with_a_style_and_size(sd):
    style, _ = dct_style(torch.randn(6, 4, generator=torch.Generator().manual_seed(2)))
    p = probe(sd, scheduler="euler", steps=50, height=64, width=32, style=style)
    assert (p.scheduler, p.T, p.latent_height, p.latent_width) == ("euler", 981, 32, 16)
    assert p.sqrt_abar_T == pytest.approx(0.075997, abs=1e-5) and p.sigma_m_source == "the style file's DC covariance"
    assert p.sigma_m == pytest.approx(sigma_m_of_style(style).tolist())


def test_probe_refuses_a_style_of_another_model(sd):
    with pytest.raises(LeakstyleError, match="3 channels but the model's latents have 4"):
        probe(sd, style=dct_style(torch.randn(4, 3))[0])


def test_probe_of_a_pixel_model_uses_pixels(pixel_path):
    p = probe(load_pipeline(pixel_path, device="cpu"), steps=10)
    assert p.channels == 3 and (p.latent_height, p.latent_width) == (16, 16)


def test_cli_probe_json(sd_path, capsys):
    assert main(["probe", "--model", str(sd_path), "--steps", "50", "--scheduler", "ddim", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"T", "sqrt_abar_T", "snr_dc", "predicted_std_ratio", "verdict", "sigma_m_source"} <= set(out)
    assert out["T"] == 981 and out["sqrt_abar_T"] == pytest.approx(0.075997, abs=1e-5)
    assert out["verdict"] in ("strong", "weak", "none")


def test_cli_probe_text_with_a_style(sd_path, tmp_path, capsys):
    style, _ = dct_style(torch.randn(6, 4, generator=torch.Generator().manual_seed(3)) * 3)
    ls.save(style, tmp_path / "s.safetensors")
    assert main(["probe", "--model", str(sd_path), "--style", str(tmp_path / "s.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "sqrt(abar_T) = 0.08533" in out and "from the style file's DC covariance" in out and "verdict:    strong" in out


def test_cli_probe_of_a_zero_snr_scheduler_reports_none(sd_path, capsys, tmp_path):
    from diffusers import DDIMScheduler
    pipe = load_pipeline(sd_path, device="cpu")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, rescale_betas_zero_snr=True,
                                               timestep_spacing="trailing")
    pipe.save_pretrained(tmp_path / "zsnr")
    assert main(["probe", "--model", str(tmp_path / "zsnr"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "none" and "zero terminal SNR" in out["explanation"] and out["sigma_m"] is None


def test_cli_probe_user_errors(sd_path, tmp_path, capsys):
    assert "at least 1" in run_error(["probe", "--model", str(sd_path), "--steps", "0"], capsys)
    ls.save(StyleDistribution("pixel", torch.zeros(4, 8, 8), torch.ones(4, 8, 8)), tmp_path / "p.safetensors")
    assert "--type dct" in run_error(["probe", "--model", str(sd_path), "--style", str(tmp_path / "p.safetensors")], capsys)


@pytest.mark.parametrize("build", [fp.sd3, fp.flux])
def test_probe_of_a_flow_matching_pipeline_is_none_without_encoding_anything(build):
    p = probe(build(), steps=28, height=16, width=16)
    assert p.verdict == "none" and "flow matching" in p.explanation and p.sigma_m is None
    assert (p.latent_height, p.latent_width) == (8, 8)


def test_cli_probe_with_trailing_spacing_starts_at_the_last_training_step(sd_path, capsys):
    assert main(["probe", "--model", str(sd_path), "--timestep-spacing", "trailing", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["T"] == 999 and out["sqrt_abar_T"] == pytest.approx(0.068265, abs=1e-5)


def test_probe_refuses_a_step_count_the_scheduler_cannot_take(sd):
    with pytest.raises(LeakstyleError, match="choose from 1 to"):
        probe(sd, steps=5000)
