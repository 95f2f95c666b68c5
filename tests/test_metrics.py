"""Metrics on inputs whose answers are known: flat colours of known CIELAB values, identical and shifted sets,
published CIEDE2000 pairs, seeded bootstrap intervals, and style measures that separate what they should."""

import numpy as np
import pytest
from PIL import Image
from scipy.stats import wasserstein_distance
from skimage.color import lab2rgb

from leakstyle import metrics


def flat(rgb, size=16):
    """A flat uint8 image of an RGB colour in 0..255."""
    return np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (size, size, 3)).copy()


def flat_lab(L, a=0.0, b=0.0, size=16):
    """A flat float image whose CIELAB colour is (L, a, b) exactly (within float error)."""
    return np.broadcast_to(lab2rgb(np.array([[[L, a, b]]], dtype=np.float64)), (size, size, 3)).copy()


def srgb_grey_lightness(v):
    """L* of the sRGB grey v in [0, 1], from the sRGB and CIELAB definitions."""
    linear = v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4
    return 116 * linear ** (1 / 3) - 16 if linear > (6 / 29) ** 3 else linear * (29 / 3) ** 3


# -- images and low-frequency statistics -------------------------------------------------------------
def test_white_is_lightness_100_with_no_chroma():
    # 0.01: skimage's sRGB matrix and D65 white point agree to about 0.005 in a* and b*
    np.testing.assert_allclose(metrics.mean_lab(flat((255, 255, 255))), [100, 0, 0], atol=0.01)


def test_mid_grey_lightness_follows_the_srgb_and_cielab_definitions():
    lab = metrics.mean_lab(np.full((8, 8, 3), 0.5))
    np.testing.assert_allclose(lab, [srgb_grey_lightness(0.5), 0, 0], atol=0.01)
    assert lab[0] == pytest.approx(53.389, abs=1e-3)


def test_pure_red_has_its_published_cielab_value():
    np.testing.assert_allclose(metrics.mean_lab(flat((255, 0, 0))), [53.24, 80.09, 67.20], atol=0.01)


def test_low_frequency_gives_mean_rgb_lab_and_brightness_per_image():
    lf = metrics.low_frequency([flat((255, 255, 255)), flat((0, 0, 0)), Image.fromarray(flat((255, 0, 0)))])
    np.testing.assert_allclose(lf.rgb, [[255, 255, 255], [0, 0, 0], [255, 0, 0]], atol=1e-9)
    np.testing.assert_allclose(lf.brightness, [100, 0, 53.24], atol=0.01)


def test_mean_colour_averages_the_pixels():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    image[:2] = 255
    np.testing.assert_allclose(metrics.low_frequency([image]).rgb, [[127.5] * 3])


def test_transparent_pixels_count_as_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    np.testing.assert_allclose(metrics.as_rgb(rgba), 1.0)
    np.testing.assert_allclose(metrics.as_rgb(np.zeros((4, 4, 4))), 1.0)


def test_float_images_outside_zero_one_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        metrics.as_rgb(np.full((4, 4, 3), 255.0))


def test_spread_is_the_unbiased_standard_deviation():
    values = np.array([[1.0, 10.0], [3.0, 10.0]])
    np.testing.assert_allclose(metrics.spread(values), [np.sqrt(2), 0])


# -- distances between distributions ------------------------------------------------------------------
def test_identical_sets_are_at_distance_zero_with_std_ratio_one():
    v = np.random.default_rng(0).normal(size=50)
    assert metrics.wasserstein_1d(v, v) == 0
    assert metrics.std_ratio(v, v) == 1


def test_a_shifted_set_is_at_the_distance_of_the_shift():
    v = np.random.default_rng(0).normal(size=50)
    assert metrics.wasserstein_1d(v + 7.5, v) == pytest.approx(7.5)
    assert metrics.std_ratio(v + 7.5, v) == pytest.approx(1)


def test_shifting_every_images_brightness_shifts_the_brightness_distribution_by_as_much():
    lightness = [30, 40, 45, 60, 70]
    base = metrics.low_frequency([flat_lab(L) for L in lightness]).brightness
    shifted = metrics.low_frequency([flat_lab(L + 10) for L in lightness]).brightness
    np.testing.assert_allclose(base, lightness, atol=1e-6)
    assert metrics.wasserstein_1d(shifted, base) == pytest.approx(10, abs=1e-6)


def test_squeezing_a_set_toward_its_mean_gives_the_squeeze_as_std_ratio():
    v = np.random.default_rng(1).normal(size=40)
    assert metrics.std_ratio(v.mean() + 0.5 * (v - v.mean()), v) == pytest.approx(0.5)


def test_wasserstein_agrees_with_scipy_for_unequal_sample_sizes():
    rng = np.random.default_rng(2)
    u, v = rng.normal(size=37), rng.gamma(2.0, size=91)
    assert metrics.wasserstein_1d(u, v) == pytest.approx(wasserstein_distance(u, v), rel=1e-12)


def test_compare_distributions_reports_each_channel():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(60, 3)) * [20, 10, 10] + [50, 0, 0]
    squeezed = ref.mean(0) + 0.5 * (ref - ref.mean(0))
    out = metrics.compare_distributions(squeezed, ref, n_boot=200)
    assert set(out) == {"L*", "a*", "b*"}
    assert out["L*"]["std_ratio"].estimate == pytest.approx(0.5)
    assert out["L*"]["wasserstein"].estimate > 0


# -- bootstrap ---------------------------------------------------------------------------------------
def test_bootstrap_interval_contains_the_estimate():
    v = np.random.default_rng(4).normal(3.0, 1.0, size=100)
    ci = metrics.bootstrap(np.mean, (v,), n_boot=500)
    assert ci.estimate == pytest.approx(v.mean()) and ci.low < ci.estimate < ci.high
    assert ci.high - ci.low == pytest.approx(2 * 1.96 / 10, rel=0.25)  # about +-1.96 standard errors


def test_bootstrap_interval_of_a_biased_distance_still_contains_the_estimate():
    rng = np.random.default_rng(5)
    ci = metrics.bootstrap(metrics.wasserstein_1d, (rng.normal(size=80), rng.normal(size=80)), n_boot=300)
    assert ci.low <= ci.estimate <= ci.high


def test_bootstrap_is_seeded():
    v = np.random.default_rng(6).normal(size=50)
    a, b = metrics.bootstrap(np.std, (v,), n_boot=100, seed=1), metrics.bootstrap(np.std, (v,), n_boot=100, seed=1)
    c = metrics.bootstrap(np.std, (v,), n_boot=100, seed=2)
    assert a == b and (a.low, a.high) != (c.low, c.high)


def test_bootstrap_of_a_dict_statistic_gives_an_interval_per_key():
    v = np.arange(20.0)
    out = metrics.bootstrap(lambda x: {"mean": x.mean(), "max": x.max()}, (v,), n_boot=50)
    assert out["mean"].estimate == 9.5 and out["max"].estimate == 19


def test_interval_formats_as_estimate_and_range():
    assert f"{metrics.Interval(1.0, 0.5, 1.5):.1f}" == "1.0 [0.5, 1.5]"


# -- colour control ----------------------------------------------------------------------------------
def test_ciede2000_of_identical_colours_is_zero():
    assert metrics.ciede2000([50, 10, -20], [50, 10, -20]) == 0


@pytest.mark.parametrize("lab1,lab2,expected", [  # Sharma, Wu & Dalal (2005), test data pairs 1, 7 and 17
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
])
def test_ciede2000_matches_published_values(lab1, lab2, expected):
    assert metrics.ciede2000(lab1, lab2) == pytest.approx(expected, abs=1e-4)


def test_a_flat_image_of_the_requested_colour_has_no_error():
    np.testing.assert_allclose(metrics.color_errors([flat((30, 144, 255))], "#1e90ff"), [0], atol=1e-6)


def test_color_error_of_another_colour_is_their_ciede2000():
    expected = metrics.ciede2000(metrics.color_to_lab((0, 0, 255)), metrics.color_to_lab((255, 0, 0)))
    assert metrics.color_errors([flat((0, 0, 255))], "#ff0000")[0] == pytest.approx(expected)


def test_border_mask_selects_the_frame():
    m = metrics.border_mask(16, 16, border=4)
    assert m.sum() == 16 * 16 - 8 * 8 and m[0, 0] and not m[8, 8]


def test_color_error_of_the_border_ignores_the_centre():
    image = flat((255, 0, 0), size=32)
    image[8:24, 8:24] = (0, 0, 255)
    assert metrics.color_errors([image], "#ff0000", mask="border")[0] == pytest.approx(0, abs=1e-6)
    assert metrics.color_errors([image], "#ff0000")[0] > 10
    mask = np.zeros((32, 32), dtype=bool)
    mask[10:20, 10:20] = True
    assert metrics.color_errors([image], "#0000ff", mask=mask)[0] == pytest.approx(0, abs=1e-6)


# -- style -------------------------------------------------------------------------------------------
def textured(n, flat_fills, seed=0, size=64):
    """Images of a bright disc (anti-aliased edge) on a background: flat fills, or shaded with a gradient and grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    out = []
    for _ in range(n):
        radius = np.hypot(yy - rng.uniform(-0.1, 0.1), xx)
        disc = np.clip((rng.uniform(0.2, 0.35) - radius) * size + 0.5, 0, 1)
        L = 30 + 50 * disc
        if not flat_fills:
            L = L + 15 * yy + rng.normal(0, 1.5, L.shape)
        lab = np.stack([L, -20 + 30 * disc, 5 + 55 * disc], -1)
        out.append(np.clip(lab2rgb(lab), 0, 1))
    return out


def test_identical_sets_have_style_distance_zero():
    images = textured(6, flat_fills=True)
    assert all(v == pytest.approx(0, abs=1e-9) for v in metrics.style_distances(images, images).values())


def test_style_distance_takes_two_image_lists_and_returns_a_float():
    d = metrics.style_distance(textured(4, True), textured(4, False))
    assert isinstance(d, float) and d > 0


def test_style_distance_is_symmetric():
    a, b = textured(5, True, seed=1), textured(5, False, seed=2)
    assert metrics.style_distance(a, b) == pytest.approx(metrics.style_distance(b, a))


def test_colour_distance_of_disjoint_palettes_is_one():
    assert metrics.colour_distance([flat((0, 0, 0))] * 2, [flat((255, 255, 255))] * 2) == pytest.approx(1)


def test_flat_fills_and_shading_are_further_apart_than_two_samples_of_one_style():
    flat_a, flat_b, shaded = textured(12, True, seed=1), textured(12, True, seed=2), textured(12, False, seed=3)
    for measure in ("gradient", "style"):
        same, other = metrics.style_distances(flat_a, flat_b)[measure], metrics.style_distances(flat_a, shaded)[measure]
        assert other > 3 * same, measure


def grain(n, smooth, seed, size=64):
    """Grey images of white noise, or of noise blurred (smooth: less power at high frequencies)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    fields = [rng.normal(0, 1, (size, size)) for _ in range(n)]
    fields = [gaussian_filter(f, 2.0, mode="wrap") * 4 if smooth else f for f in fields]
    return [np.clip(lab2rgb(np.stack([50 + 5 * f, 0 * f, 0 * f], -1)), 0, 1) for f in fields]


def test_spectrum_distance_separates_fine_grain_from_smooth_texture():
    same = metrics.spectrum_distance(grain(8, False, 1), grain(8, False, 2))
    assert metrics.spectrum_distance(grain(8, False, 1), grain(8, True, 3)) > 10 * max(same, 0.1)


def test_spectrum_distance_ignores_contrast_and_brightness():
    rng = np.random.default_rng(7)
    patterns = [rng.normal(0, 1, (64, 64)) for _ in range(3)]
    a = [np.clip(lab2rgb(np.stack([50 + 10 * p, 0 * p, 0 * p], -1)), 0, 1) for p in patterns]
    b = [np.clip(lab2rgb(np.stack([40 + 5 * p, 0 * p, 0 * p], -1)), 0, 1) for p in patterns]
    assert metrics.spectrum_distance(a, b) < 0.05


def test_images_of_other_sizes_are_compared_at_64_pixels():
    native, large = textured(6, True, seed=1), textured(6, True, seed=1, size=128)
    features = metrics.style_features(large)
    assert features.spectrum.shape == (6, 32) and features.colour.shape == (6, 512)
    assert metrics.style_distance(native, large) < 0.3 * metrics.style_distance(native, textured(6, False, seed=1))


def test_spectra_of_upsampled_images_are_compared_only_at_the_radii_they_hold():
    small_a, small_b, smooth = grain(8, False, 1, size=32), grain(8, False, 2, size=32), grain(8, True, 3, size=32)
    assert metrics.style_features(small_a).bandwidth.tolist() == [16] * 8
    assert metrics.spectrum_distance(small_a, smooth) > 10 * max(metrics.spectrum_distance(small_a, small_b), 0.1)


def test_style_intervals_give_every_measure_with_an_interval():
    out = metrics.style_intervals(textured(5, True), textured(5, False), n_boot=50)
    assert set(out) == {"colour", "gradient", "spectrum", "style"}
    assert all(v.low <= v.estimate <= v.high for v in out.values())
