"""Specification of leakstyle.distribution: sampling x_tilde, resizing statistics, and colour control.

Sampled latents are refitted and compared with what the model x_tilde = IDCT(LF) + mu_HF + sigma_HF eps
predicts, within 5 standard errors (mean: sqrt(var / N); variance: var sqrt(2 / (N - 1)); covariance
entry: sqrt((S_ii S_jj + S_ij^2) / (N - 1))). The high-frequency noise sigma_HF eps is drawn per element,
so it also adds a little to the low-frequency coefficients: K = B diag(sigma_HF^2) B^T per channel.
"""

from __future__ import annotations

import math

import pytest
import torch

from leakstyle import dct
from leakstyle.distribution import StyleDistribution, covariance_factor
from leakstyle.errors import StyleFileError
from leakstyle.moments import Moments

C, H, W, N_COMPONENTS = 4, 8, 8, 3
N = 4000
Z = 5.0  # standard errors allowed
COLOUR = torch.tensor([1.72, 1.11, -0.15, -0.72])


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def training_latents(num: int, height: int = H, width: int = W, seed: int = 0, spread: float = 0.6) -> torch.Tensor:
    """Latent-like tensors [num, C, H, W]: per-image channel offsets around COLOUR (correlated across channels,
    standard deviation about `spread`), a smooth spatial pattern, and unit noise."""
    g = generator(seed)
    shared = torch.randn(num, 1, 1, 1, generator=g)
    offsets = COLOUR.view(1, C, 1, 1) + spread * (shared + 0.5 * torch.randn(num, C, 1, 1, generator=g))
    h = torch.arange(height).view(height, 1)
    w = torch.arange(width).view(1, width)
    pattern = 0.3 * torch.cos(math.pi * (h + 0.5) / height) + 0.2 * torch.sin(2 * math.pi * w / width)
    return offsets + pattern + torch.randn(num, C, height, width, generator=g)


def fit(kind: str, x: torch.Tensor, components: int = N_COMPONENTS) -> StyleDistribution:
    _, c, h, w = x.shape
    moments = Moments.for_dct(c, h, w, components) if kind == "dct" else Moments("pixel", c, h, w)
    for batch in torch.split(x, 100):
        moments.update(batch)
    return StyleDistribution.from_moments(moments, {"space": "latent"})


@pytest.fixture(scope="module")
def pixel_style() -> StyleDistribution:
    return fit("pixel", training_latents(400))


@pytest.fixture(scope="module")
def dct_style() -> StyleDistribution:
    return fit("dct", training_latents(400))


def lf_model_moments(style: StyleDistribution) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [nC] and covariance [nC, nC] of the LF coefficients of x_tilde as sampled: the fitted LF plus the
    LF part of mu_HF + sigma_HF eps."""
    B = dct.basis_images(style.height, style.width, style.lf_indices, dtype=torch.float64).flatten(1)  # [n, HW]
    n, c = style.components, style.channels
    mean = style.lf_mean.double() + (style.mean.double().view(c, -1) @ B.T).T.flatten()
    leak = torch.zeros(n, c, n, c, dtype=torch.float64)
    for ch in range(c):
        leak[:, ch, :, ch] = (B * style.var.double().view(c, -1)[ch]) @ B.T
    return mean, style.lf_cov.double() + leak.view(n * c, n * c)


def hf_model_moments(style: StyleDistribution) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element mean and variance [C, H, W] of the HF remainder P (mu_HF + sigma_HF eps), P removing the LF."""
    B = dct.basis_images(style.height, style.width, style.lf_indices, dtype=torch.float64).flatten(1)
    P = torch.eye(B.shape[1], dtype=torch.float64) - B.T @ B
    c = style.channels
    mean = style.mean.double().view(c, -1) @ P.T
    var = style.var.double().view(c, -1) @ (P**2).T
    return mean.view_as(style.mean), var.view_as(style.var)


def assert_within_standard_errors(estimate: torch.Tensor, truth: torch.Tensor, se: torch.Tensor) -> None:
    z = ((estimate.double() - truth.double()).abs() / se).max()
    assert z < Z, f"estimate is {float(z):.1f} standard errors from the truth"


def covariance_se(S: torch.Tensor, n: int) -> torch.Tensor:
    return ((S.diag()[:, None] * S.diag()[None, :] + S**2) / (n - 1)).sqrt()


def refit(kind: str, x: torch.Tensor, style: StyleDistribution) -> Moments:
    _, c, h, w = x.shape
    m = Moments(kind, c, h, w, style.lf_indices if kind == "dct" else None)
    m.update(x)
    return m


def per_sample_channel_means(x: torch.Tensor) -> torch.Tensor:
    return x.double().mean((2, 3))  # [num, C]


# -- sampled latents reproduce the fitted moments ----------------------------------------------------
def test_pixel_samples_reproduce_the_fitted_mean_and_variance(pixel_style: StyleDistribution) -> None:
    x = pixel_style.sample(N, generator=generator(1))
    assert x.shape == (N, C, H, W) and x.dtype == torch.float32
    mean, var = refit("pixel", x, pixel_style).mean_var()
    true_var = pixel_style.var.double()
    assert_within_standard_errors(mean, pixel_style.mean, (true_var / N).sqrt())
    assert_within_standard_errors(var, true_var, true_var * math.sqrt(2 / (N - 1)))


def test_dct_samples_reproduce_the_fitted_low_frequency_mean_and_covariance(dct_style: StyleDistribution) -> None:
    x = dct_style.sample(N, generator=generator(1))
    assert x.shape == (N, C, H, W)
    lf_mean, lf_cov = refit("dct", x, dct_style).lf_mean_cov()
    true_mean, true_cov = lf_model_moments(dct_style)
    assert_within_standard_errors(lf_mean, true_mean, (true_cov.diag() / N).sqrt())
    assert_within_standard_errors(lf_cov, true_cov, covariance_se(true_cov, N))


def test_dct_samples_reproduce_the_fitted_high_frequency_remainder(dct_style: StyleDistribution) -> None:
    x = dct_style.sample(N, generator=generator(1))
    mean, var = refit("dct", x, dct_style).mean_var()
    true_mean, true_var = hf_model_moments(dct_style)
    assert_within_standard_errors(mean, true_mean, (true_var / N).sqrt())
    assert_within_standard_errors(var, true_var, true_var * math.sqrt(2 / (N - 1)))


@pytest.mark.parametrize("kind", ["pixel", "dct"])
@pytest.mark.parametrize("size", [None, (6, 10)])
def test_same_seed_gives_the_same_latents_bit_for_bit(kind: str, size: tuple[int, int] | None) -> None:
    height, width = size or (None, None)
    a = fit(kind, training_latents(50)).sample(3, height, width, generator=generator(7))
    b = fit(kind, training_latents(50)).sample(3, height, width, generator=generator(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["pixel", "dct"])
def test_different_seeds_give_different_latents(kind: str) -> None:
    style = fit(kind, training_latents(50))
    a, b = style.sample(3, generator=generator(7)), style.sample(3, generator=generator(8))
    assert ((a - b).abs().amax((1, 2, 3)) > 0).all()


def test_rank_deficient_covariance_still_samples_with_the_right_mean() -> None:
    style = fit("dct", training_latents(5, seed=3))  # 5 images, n C = 12 dimensions
    assert torch.linalg.matrix_rank(style.lf_cov.double(), hermitian=True, rtol=1e-5) <= 4
    x = style.sample(N, generator=generator(2))
    assert torch.isfinite(x).all()
    lf_mean, _ = refit("dct", x, style).lf_mean_cov()
    true_mean, true_cov = lf_model_moments(style)
    assert_within_standard_errors(lf_mean, true_mean, (true_cov.diag() / N).sqrt())


def test_covariance_factor_reproduces_a_rank_deficient_covariance() -> None:
    A = torch.randn(12, 4, generator=generator(0), dtype=torch.float64)
    Sigma = A @ A.T  # rank 4
    L = covariance_factor(Sigma)
    torch.testing.assert_close(L @ L.T, Sigma, rtol=0, atol=1e-10 * float(Sigma.abs().max()))


def test_covariance_factor_of_a_full_rank_covariance_is_its_cholesky_factor() -> None:
    A = torch.randn(12, 12, generator=generator(0), dtype=torch.float64)
    Sigma = A @ A.T + torch.eye(12, dtype=torch.float64)
    torch.testing.assert_close(covariance_factor(Sigma), torch.linalg.cholesky(Sigma))


# -- another output size -----------------------------------------------------------------------------
FIT_COUNT, FIT_SIZE = 100, 64


@pytest.fixture(scope="module")
def styles_64() -> dict[str, StyleDistribution]:
    # a small spread of mean colours keeps the samples' channel means precise enough to see a wrong DC scale
    x = training_latents(FIT_COUNT, FIT_SIZE, FIT_SIZE, seed=5, spread=0.1)
    return {kind: fit(kind, x) for kind in ("pixel", "dct")}


@pytest.mark.parametrize("kind", ["pixel", "dct"])
@pytest.mark.parametrize("size", [(48, 80), (80, 48), (96, 96), (32, 32)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_sampling_at_another_size_keeps_the_channel_means(styles_64, kind: str, size: tuple[int, int]) -> None:
    """Tolerance: sampling error of the samples' channel means, plus the error that the fit's per-element
    noise (variance var / images) puts on a channel mean, sqrt(mean var / (images H W)): resizing keeps
    constant and smooth maps, so it can move a channel mean by no more than a fraction of that noise."""
    style, num = styles_64[kind], 400
    x = style.sample(num, height=size[0], width=size[1], generator=generator(3))
    assert x.shape == (num, C, *size)
    means = per_sample_channel_means(x)
    se_sample = (means.var(0) / num).sqrt()
    se_fit = (style.var.double().mean((1, 2)) / (FIT_COUNT * FIT_SIZE * FIT_SIZE)).sqrt()
    assert_within_standard_errors(means.mean(0), style.channel_means(), (se_sample**2 + se_fit**2).sqrt())


def test_resized_dct_statistics_scale_low_frequencies_by_sqrt_of_the_area_ratio(styles_64) -> None:
    style = styles_64["dct"]
    resized = style.at_size(48, 80)
    ratio = 48 * 80 / (64 * 64)
    assert resized.mean.shape == resized.var.shape == (C, 48, 80)
    assert torch.equal(resized.lf_indices, style.lf_indices)
    torch.testing.assert_close(resized.lf_mean, style.lf_mean * math.sqrt(ratio))
    torch.testing.assert_close(resized.lf_cov, style.lf_cov * ratio)


def test_resizing_to_the_fitted_size_changes_nothing(dct_style: StyleDistribution) -> None:
    assert dct_style.at_size(H, W) is dct_style


def test_resizing_refuses_a_grid_too_small_for_the_components(dct_style: StyleDistribution) -> None:
    with pytest.raises(StyleFileError, match="do not fit"):
        dct_style.at_size(1, 8)  # component (1, 0) needs two rows


# -- colour control ----------------------------------------------------------------------------------
TARGET = torch.tensor([-0.5, 0.8, 1.2, 0.0])


@pytest.mark.parametrize("kind", ["pixel", "dct"])
def test_full_strength_colour_fixes_the_low_frequencies(pixel_style, dct_style, kind: str) -> None:
    coloured = {"pixel": pixel_style, "dct": dct_style}[kind].with_color(TARGET, strength=1.0)
    assert coloured.kind == "dct" and torch.equal(coloured.lf_indices[0], torch.tensor([0, 0]))
    assert torch.equal(coloured.lf_cov, torch.zeros_like(coloured.lf_cov))
    expected = torch.zeros(coloured.components, C)
    expected[0] = math.sqrt(H * W) * TARGET
    torch.testing.assert_close(coloured.lf_mean, expected.flatten())
    torch.testing.assert_close(coloured.channel_means(), TARGET)


@pytest.mark.parametrize("kind", ["pixel", "dct"])
def test_full_strength_colour_samples_have_the_colour_as_channel_means(pixel_style, dct_style, kind: str) -> None:
    """Each sample's channel means are the colour plus only the high-frequency noise's own DC, whose
    variance is mean(sigma_HF^2) / HW; nothing of the fitted LF variance is left."""
    coloured = {"pixel": pixel_style, "dct": dct_style}[kind].with_color(TARGET, strength=1.0)
    x = coloured.sample(N, generator=generator(4))
    means = per_sample_channel_means(x)
    hf_dc_var = coloured.var.double().mean((1, 2)) / (H * W)
    assert_within_standard_errors(means.mean(0), TARGET, (hf_dc_var / N).sqrt())
    assert_within_standard_errors(means.var(0), hf_dc_var, hf_dc_var * math.sqrt(2 / (N - 1)))


def test_zero_strength_leaves_a_dct_style_unchanged(dct_style: StyleDistribution) -> None:
    same = dct_style.with_color(TARGET, strength=0.0)
    for name in ("mean", "var", "lf_indices", "lf_mean", "lf_cov"):
        assert torch.equal(getattr(same, name), getattr(dct_style, name)), name


def test_zero_strength_leaves_a_pixel_style_samples_unchanged(pixel_style: StyleDistribution) -> None:
    """The pixel statistic rewritten with its DC split off (as_dct) is the same distribution: with the same
    seed the samples agree up to float32 rounding of the DC round trip."""
    plain = pixel_style.sample(200, generator=generator(6))
    rewritten = pixel_style.with_color(TARGET, strength=0.0).sample(200, generator=generator(6))
    scale = float(plain.abs().max())
    torch.testing.assert_close(rewritten, plain, rtol=0, atol=8 * torch.finfo(torch.float32).eps * scale)


@pytest.mark.parametrize("kind", ["pixel", "dct"])
def test_half_strength_blends_the_channel_means_halfway(pixel_style, dct_style, kind: str) -> None:
    style = {"pixel": pixel_style, "dct": dct_style}[kind]
    half = style.with_color(TARGET, strength=0.5)
    torch.testing.assert_close(half.channel_means(), (style.channel_means() + TARGET) / 2)
    torch.testing.assert_close(half.lf_cov, style.as_dct().lf_cov / 4)


def test_flat_style_samples_are_constant_images_of_the_colour() -> None:
    flat = StyleDistribution.flat(TARGET, H, W)
    for size in [(H, W), (6, 10)]:
        x = flat.sample(3, *size, generator=generator(0))
        torch.testing.assert_close(x, TARGET.view(1, C, 1, 1).expand(3, C, *size))


def test_colour_with_another_channel_count_is_refused(dct_style: StyleDistribution) -> None:
    with pytest.raises(StyleFileError, match="channels"):
        dct_style.with_color(torch.zeros(3))


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_strength_outside_zero_to_one_is_refused(dct_style: StyleDistribution, strength: float) -> None:
    with pytest.raises(ValueError, match="strength"):
        dct_style.with_color(TARGET, strength)
