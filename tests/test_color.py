"""Calibrated colour control (leakstyle.color): the math, the probe, the calibration cache."""

import json

import pytest
import torch

from leakstyle import color
from leakstyle.errors import LeakstyleError
from leakstyle.schedule import Leak, leak_at_first_step


def test_noise_cancelled_dc_makes_x_T_carry_exactly_sqrt_abar_times_m():
    leak = Leak(T=961, abar_T=0.0064, input_scale=1.0)
    m = torch.tensor([0.5, -1.0, 2.0, 0.0])
    eps = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    x_tilde = color.noise_cancelled(m.view(1, 4, 1, 1).expand(3, 4, 8, 8), eps, leak)
    x_T = leak.sqrt_abar_T * x_tilde + leak.sqrt_one_minus_abar_T * eps
    assert torch.allclose(x_T.mean((2, 3)), leak.sqrt_abar_T * m.expand(3, 4), atol=1e-5)
    assert torch.allclose(x_T - x_T.mean((2, 3), keepdim=True), leak.sqrt_one_minus_abar_T * (eps - eps.mean((2, 3), keepdim=True)), atol=1e-5)


def test_border_mean_averages_only_the_frame():
    z = torch.zeros(1, 2, 6, 6)
    z[..., 1:5, 1:5] = 10.0
    z[:, 1] += 3.0
    assert torch.allclose(color.border_mean(z, 1), torch.tensor([[0.0, 3.0]]))
    assert color.border_width(4) == 1 and color.border_width(8) == 1 and color.border_width(1) == 4


def test_colormap_fit_recovers_a_quadratic_map():
    y = torch.randn(200, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 + 1
    m = torch.stack([1 + 2 * y[:, 0] - y[:, 1] * y[:, 2], y[:, 1] ** 2, -y[:, 2]], 1)
    g = color.ColorMap.fit(y, m, ridge=0.0)
    assert torch.allclose(g(y).double(), m, atol=1e-4)
    assert torch.allclose(color.ColorMap.from_dict(json.loads(json.dumps(g.as_dict())))(y), g(y))


def test_one_newton_step_through_the_exact_inverse_hits_an_affine_target():
    A = torch.tensor([[0.5, 0.1], [-0.2, 0.3]], dtype=torch.float64)
    c = torch.tensor([0.3, -0.4], dtype=torch.float64)
    F = lambda m: m @ A.T + c  # noqa: E731  the model's response: background colour obtained from input DC m
    m_train = torch.randn(50, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g = color.ColorMap.fit(F(m_train), m_train, ridge=0.0)
    target = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    per_image = torch.tensor([[0.2, 0.1]], dtype=torch.float64)  # this prompt's offset, unknown to g
    m0 = g(target).double()
    m1 = color.corrected_input(g, target, F(m0) + per_image, m0).double()
    assert (F(m0) + per_image - target).abs().max() > 0.1
    assert torch.allclose(F(m1) + per_image, target, atol=1e-4)


def test_probe_timesteps_start_at_T_and_end_at_1():
    ts = color.probe_timesteps(961, 5)
    assert ts[0] == 961 and ts[-1] == 1 and len(ts) == 5 and ts == sorted(ts, reverse=True)


def test_the_probe_feeds_the_unet_x_T_at_timestep_T(sd, first_unet_input):
    leak = leak_at_first_step(sd.scheduler, 10, warn=False)
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    hook = first_unet_input(sd.unet)
    y = color.probe(sd, x_T, leak.T, ["a", "b"], guidance_scale=2.0)
    assert hook.timestep == leak.T
    assert torch.allclose(hook.sample[:2], x_T, atol=1e-4) and torch.allclose(hook.sample[2:], x_T, atol=1e-4)
    assert y.shape == (2, 4) and torch.isfinite(y).all()
    assert type(sd.scheduler).__name__ == "DDIMScheduler"  # the pipeline's own scheduler is back


def test_calibrated_latents_keep_the_seeds_noise_and_set_a_noise_free_dc(sd):
    leak = leak_at_first_step(sd.scheduler, 10, warn=False)
    g = color.ColorMap.fit(torch.randn(40, 4, generator=torch.Generator().manual_seed(4)),
                           torch.randn(40, 4, generator=torch.Generator().manual_seed(5)))
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    latents = color.calibrated_initial_latents(sd, ["a", "b"], torch.tensor([0.3, -0.2, 0.1, 0.0]), gens, leak, 2.0,
                                               8, 8, colormap=g)
    x_T = latents * leak.input_scale
    eps = torch.cat([torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (0, 1)])
    ac = x_T - x_T.mean((2, 3), keepdim=True)
    assert torch.allclose(ac, leak.sqrt_one_minus_abar_T * (eps - eps.mean((2, 3), keepdim=True)), atol=1e-4)


def test_strength_moves_the_target_from_the_style_mean_to_the_colour():
    z = torch.tensor([1.0, 2.0])
    assert torch.allclose(color.target_color(z, None, 0.25), 0.25 * z)
    assert torch.allclose(color.target_color(z, None, 1.0), z)


def test_zero_snr_is_refused(sd):
    leak = Leak(T=999, abar_T=0.0, input_scale=1.0)
    with pytest.raises(LeakstyleError, match="signal leak"):
        color.calibrated_initial_latents(sd, ["a"], torch.zeros(4), [torch.Generator()], leak, 2.0, 8, 8)


# -- the cache ---------------------------------------------------------------------------------------
def test_cache_dir_is_overridable_and_defaults_to_home_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LEAKSTYLE_CACHE", str(tmp_path / "c"))
    assert color.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LEAKSTYLE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert color.cache_dir() == tmp_path / "home" / ".cache" / "leakstyle"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert color.cache_dir() == tmp_path / "xdg" / "leakstyle"


def test_calibration_key_changes_with_T_guidance_and_size_only(sd):
    base = color.calibration_fields(sd, 961, 7.5, 8, 8)
    assert base == color.calibration_fields(sd, 961, 7.5, 8, 8)
    for other in (color.calibration_fields(sd, 981, 7.5, 8, 8), color.calibration_fields(sd, 961, 5.0, 8, 8),
                  color.calibration_fields(sd, 961, 7.5, 8, 12)):
        assert color.calibration_path(other) != color.calibration_path(base)


def test_changed_weights_change_the_fingerprint(sd):
    before = color.weights_fingerprint(sd)
    with torch.no_grad():
        next(iter(sd.unet.parameters())).add_(1e-3)
    assert color.weights_fingerprint(sd) != before


@pytest.fixture()
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LEAKSTYLE_CACHE", str(tmp_path))
    return tmp_path


def test_a_calibration_is_written_once_and_then_read(sd, cache, monkeypatch):
    leak = leak_at_first_step(sd.scheduler, 10, warn=False)
    g = color.calibration(sd, leak, 2.0, 8, 8, samples=16)
    files = list((cache / "colour").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["fields"]["samples"] == 16
    monkeypatch.setattr(color, "calibrate", lambda *a, **k: pytest.fail("calibrated again"))
    again = color.calibration(sd, leak, 2.0, 8, 8, samples=16)
    assert torch.equal(again.weights, g.weights)


def test_a_stale_or_corrupt_cache_entry_is_never_used(sd, cache, monkeypatch):
    leak = leak_at_first_step(sd.scheduler, 10, warn=False)
    fields = color.calibration_fields(sd, leak.T, 2.0, 8, 8, 16)
    path = color.calibration_path(fields)
    path.parent.mkdir(parents=True)
    fake = color.ColorMap(torch.zeros(15, 4, dtype=torch.float64), torch.zeros(4), torch.ones(4))
    path.write_text(json.dumps({"fields": {**fields, "weights": "another model"}, "map": fake.as_dict()}))
    calls = []
    real = color.calibrate
    monkeypatch.setattr(color, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    g = color.calibration(sd, leak, 2.0, 8, 8, samples=16)
    assert calls and not torch.equal(g.weights, fake.weights)
    path.write_text("{not json")
    color.calibration(sd, leak, 2.0, 8, 8, samples=16)
    assert len(calls) == 2 and json.loads(path.read_text())["fields"] == fields


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
    with pytest.raises(LeakstyleError, match="between 0 and 100"):
        color.with_lightness(sd, 120.0)


@pytest.fixture()
def small_calibration(cache, monkeypatch):
    monkeypatch.setattr(color, "CALIBRATION_SAMPLES", 16)


def test_generate_calibrated_and_raw_share_the_noise_but_not_the_start(sd, small_calibration):
    from leakstyle.pipeline import generate

    def run(mode):
        inputs = []
        handle = sd.unet.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))
        try:
            generate(sd, "a", color="#808080", color_mode=mode, num_inference_steps=3, guidance_scale=2.0, seed=0)
        finally:
            handle.remove()
        return inputs[-3][:1]  # the real run's first step (3 steps, the last calls of the generation)

    run("calibrated")  # calibrates once (cached)
    starts = {mode: run(mode) for mode in ("raw", "calibrated")}
    ac = {m: x - x.mean((2, 3), keepdim=True) for m, x in starts.items()}
    dc = {m: x.mean((2, 3)) for m, x in starts.items()}
    # the same eps; calibrated mode sets another DC (noise-cancelled, corrected), nothing else
    assert not torch.allclose(dc["raw"], dc["calibrated"], atol=1e-3)
    assert torch.allclose(ac["raw"], ac["calibrated"], atol=1e-4)


def test_generate_refuses_an_unknown_colour_mode(sd):
    from leakstyle.pipeline import generate

    with pytest.raises(LeakstyleError, match="colour mode"):
        generate(sd, "a", color="#808080", color_mode="magic", num_inference_steps=2)


def test_calibrated_colour_refuses_pixel_models(pixel_path):
    from leakstyle.pipeline import generate, load_pipeline

    with pytest.raises(LeakstyleError, match="raw"):
        generate(load_pipeline(pixel_path, device="cpu"), color="#808080", num_inference_steps=2)
