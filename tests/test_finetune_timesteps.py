"""The timesteps fine-tuning trains at: uniform (as before the option) or drawn by log-SNR (Choi et al. 2024)."""

import json
from statistics import NormalDist
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from leakstyle.cli import main
from leakstyle.finetune import LOGSNR_MEAN, LOGSNR_STD, finetune
from leakstyle.loss import DenoisingLoss, LogSNRTimesteps, StandardNoise, UniformTimesteps
from leakstyle.testing import SD15_SCHEDULE

from helpers import run_error
from test_finetune import write_images

ABAR = DDPMScheduler(**SD15_SCHEDULE).alphas_cumprod


def log_snr(t):
    a = ABAR.double()[t]
    return (a / (1 - a)).log()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("style-images"), n=4)


def timesteps_seen(loss, B=8, seed=0):
    seen = {}

    def unet(x_t, timestep, **cond):
        seen["t"] = timestep
        return SimpleNamespace(sample=torch.zeros_like(x_t))

    loss(unet, torch.zeros(B, 4, 4, 4), torch.Generator().manual_seed(seed))
    return seen["t"]


def test_the_default_draw_is_the_uniform_one_runs_before_the_option_made():
    """Uniform t comes from the same generator call as before, so old runs resume bit for bit."""
    t = timesteps_seen(DenoisingLoss(StandardNoise(), ABAR), B=8, seed=3)
    torch.testing.assert_close(t, torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(UniformTimesteps(1000)(8, torch.Generator().manual_seed(3)), t)


def test_logsnr_draws_train_at_the_timestep_of_nearest_log_snr():
    draw = LogSNRTimesteps(ABAR, mean=0.0, std=2.0)
    t = draw(500, torch.Generator().manual_seed(0))
    lam = 2.0 * torch.randn(500, generator=torch.Generator().manual_seed(0))
    nearest = (log_snr(torch.arange(1000))[None, :] - lam.double()[:, None]).abs().argmin(1)
    distance = (log_snr(t) - lam.double()).abs()
    torch.testing.assert_close(distance, (log_snr(nearest) - lam.double()).abs(), rtol=0, atol=1e-5)  # float32 ties
    assert (t == nearest).float().mean() > 0.99


@pytest.mark.parametrize("mean, expected", [(-20.0, 999), (20.0, 0)])
def test_draws_beyond_the_schedules_log_snr_range_clamp_to_its_end_timesteps(mean, expected):
    assert torch.all(LogSNRTimesteps(ABAR, mean=mean, std=1.0)(64, torch.Generator().manual_seed(0)) == expected)


def test_the_default_logsnr_draw_shifts_training_toward_high_noise_as_documented():
    n = 40000
    t = LogSNRTimesteps(ABAR, LOGSNR_MEAN, LOGSNR_STD)(n, torch.Generator().manual_seed(0))
    normal = NormalDist(LOGSNR_MEAN, LOGSNR_STD)
    at_999 = normal.cdf(float(log_snr(999) + log_snr(998)) / 2)
    noisier_half = normal.cdf(float(log_snr(499) + log_snr(500)) / 2)
    assert abs((t == 999).float().mean().item() - at_999) < 0.01 and round(at_999, 2) == 0.12
    assert abs((t >= 500).float().mean().item() - noisier_half) < 0.01 and round(noisier_half, 2) == 0.85
    # the paper's mean, -6, would put most steps at the schedule's end
    assert NormalDist(-6, 2).cdf(float(log_snr(999))) > 0.6


def test_a_logsnr_run_records_its_draw_and_trains_other_weights(tmp_path, images, sd_path):
    from safetensors.torch import load_file
    runs = {s: finetune(images, tmp_path / s, model=sd_path, steps=1, batch_size=2, timestep_sampling=s, progress=False)
            for s in ("uniform", "logsnr")}
    options = json.loads((runs["logsnr"] / "finetune.json").read_text())["options"]
    assert (options["timestep_sampling"], options["logsnr_mean"], options["logsnr_std"]) == ("logsnr", -3.0, 2.0)
    uniform = json.loads((runs["uniform"] / "finetune.json").read_text())["options"]
    assert (uniform["timestep_sampling"], uniform["logsnr_mean"], uniform["logsnr_std"]) == ("uniform", None, None)
    a, b = (load_file(runs[s] / "unet" / "diffusion_pytorch_model.safetensors") for s in runs)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_a_run_recorded_before_the_option_resumes_as_uniform(tmp_path, images, sd_path, capsys):
    out = finetune(images, tmp_path / "old", model=sd_path, steps=1, batch_size=2, progress=False)
    record = json.loads((out / "finetune.json").read_text())
    for key in ("timestep_sampling", "logsnr_mean", "logsnr_std"):
        del record["options"][key]
    (out / "finetune.json").write_text(json.dumps(record))
    argv = ["finetune", str(images), "--model", str(sd_path), "--out", str(out), "--batch-size", "2", "--resume", "--quiet"]
    assert "timestep_sampling 'uniform' there, 'logsnr' here" in run_error(argv + ["--steps", "2", "--timestep-sampling",
                                                                                   "logsnr"], capsys)
    assert main(argv + ["--steps", "2"]) == 0
    assert json.loads((out / "finetune.json").read_text())["step"] == 2


@pytest.mark.parametrize("extra, message", [(["--logsnr-mean", "-2"], "--timestep-sampling logsnr"),
                                            (["--timestep-sampling", "logsnr", "--logsnr-std", "0"], "--logsnr-std"),
                                            (["--timestep-sampling", "cosine"], "invalid choice")])
def test_bad_timestep_options_are_refused(tmp_path, images, sd_path, capsys, extra, message):
    argv = ["finetune", str(images), "--model", str(sd_path), "--out", str(tmp_path / "out"), "--steps", "1", "--quiet"]
    assert message in run_error(argv + extra, capsys)
    assert not (tmp_path / "out").exists()
