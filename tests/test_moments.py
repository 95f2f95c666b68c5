"""Specification of leakstyle.moments: streaming float64 moments that recover known Gaussians and merge exactly.

Tolerances: fitted statistics are compared with the true parameters within 5 standard errors
(mean: sqrt(var / N); unbiased variance: var sqrt(2 / (N - 1)); covariance entry:
sqrt((S_ii S_jj + S_ij^2) / (N - 1))). Refits of the same numbers differ only by float64 summation
order (~1e-10 relative); statistics that went through float32 files differ by float32 rounding.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import leakstyle as ls
from leakstyle import dct
from leakstyle.distribution import StyleDistribution
from leakstyle.errors import LeakstyleError
from leakstyle.moments import Moments

C, H, W, N_COMPONENTS = 4, 8, 8, 3
N = 4000
Z = 5.0  # standard errors allowed
FLOAT64_SUMS = dict(rtol=1e-10, atol=1e-10)
FLOAT32_EPS = torch.finfo(torch.float32).eps


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def stream(moments: Moments, x: torch.Tensor, batch_sizes: list[int]) -> Moments:
    """Feed x [N, C, H, W] to `moments` in batches of the given sizes (they sum to N)."""
    assert sum(batch_sizes) == len(x)
    for batch in torch.split(x, batch_sizes):
        moments.update(batch)
    return moments


def known_diagonal_gaussian(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element mean and standard deviation [C, H, W] (float64)."""
    g = generator(seed)
    mu = 2.0 * torch.randn(C, H, W, generator=g, dtype=torch.float64)
    sigma = 0.5 + torch.rand(C, H, W, generator=g, dtype=torch.float64)
    return mu, sigma


def known_lf_gaussian(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """mu [nC] and a full, strongly non-diagonal covariance Sigma [nC, nC] over 3 components x 4 channels."""
    g = generator(seed)
    nC = N_COMPONENTS * C
    mu = 10.0 * torch.randn(nC, generator=g, dtype=torch.float64)
    A = torch.randn(nC, nC, generator=g, dtype=torch.float64)
    Sigma = A @ A.T + 0.5 * torch.eye(nC, dtype=torch.float64)
    return mu, Sigma


def lf_basis() -> torch.Tensor:
    return dct.basis_images(H, W, dct.low_frequency_indices(H, W, N_COMPONENTS), dtype=torch.float64)


def hf_projector() -> torch.Tensor:
    """P [HW, HW]: removes the span of the low-frequency basis images from a flattened image."""
    B = lf_basis().flatten(1)
    return torch.eye(H * W, dtype=torch.float64) - B.T @ B


def draw_correlated(num: int, mu: torch.Tensor, Sigma: torch.Tensor, hf_mean: torch.Tensor, hf_std: torch.Tensor,
                    g: torch.Generator) -> torch.Tensor:
    """x = IDCT(lf) + hf with lf ~ N(mu, Sigma) (component-major) and hf ~ P N(hf_mean, hf_std^2), [num, C, H, W]."""
    B = lf_basis()
    z = torch.randn(num, len(mu), generator=g, dtype=torch.float64)
    lf = (mu + z @ torch.linalg.cholesky(Sigma).T).view(num, N_COMPONENTS, C)
    hf = hf_mean + hf_std * torch.randn(num, C, H, W, generator=g, dtype=torch.float64)
    hf = hf - dct.reconstruct(dct.project(hf, B), B)
    return dct.reconstruct(lf, B) + hf


def correlated_sample(num: int = N, seed: int = 2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    mu, Sigma = known_lf_gaussian()
    hf_mean, hf_std = known_diagonal_gaussian(seed=3)
    x = draw_correlated(num, mu, Sigma, hf_mean, hf_std, generator(seed))
    return x, dict(mu=mu, Sigma=Sigma, hf_mean=hf_mean, hf_std=hf_std)


def assert_within_standard_errors(estimate: torch.Tensor, truth: torch.Tensor, se: torch.Tensor) -> None:
    z = ((estimate - truth).abs() / se).max()
    assert z < Z, f"estimate is {float(z):.1f} standard errors from the truth"


# -- recovering known parameters ---------------------------------------------------------------------
def test_pixel_fit_recovers_mean_of_a_known_diagonal_gaussian() -> None:
    mu, sigma = known_diagonal_gaussian()
    x = mu + sigma * torch.randn(N, C, H, W, generator=generator(10), dtype=torch.float64)
    mean, _ = stream(Moments("pixel", C, H, W), x, [1000, 1500, 1499, 1]).mean_var()
    assert_within_standard_errors(mean, mu, sigma / math.sqrt(N))


def test_pixel_fit_recovers_variance_of_a_known_diagonal_gaussian() -> None:
    mu, sigma = known_diagonal_gaussian()
    x = mu + sigma * torch.randn(N, C, H, W, generator=generator(10), dtype=torch.float64)
    _, var = stream(Moments("pixel", C, H, W), x, [1000, 1500, 1499, 1]).mean_var()
    assert_within_standard_errors(var, sigma**2, sigma**2 * math.sqrt(2 / (N - 1)))


def test_dct_fit_recovers_low_frequency_mean_of_correlated_components() -> None:
    x, truth = correlated_sample()
    lf_mean, _ = stream(Moments.for_dct(C, H, W, N_COMPONENTS), x, [1000, 1000, 1000, 1000]).lf_mean_cov()
    assert_within_standard_errors(lf_mean, truth["mu"], truth["Sigma"].diag().sqrt() / math.sqrt(N))


def test_dct_fit_recovers_full_low_frequency_covariance() -> None:
    x, truth = correlated_sample()
    _, lf_cov = stream(Moments.for_dct(C, H, W, N_COMPONENTS), x, [1000, 1000, 1000, 1000]).lf_mean_cov()
    S = truth["Sigma"]
    se = ((S.diag()[:, None] * S.diag()[None, :] + S**2) / (N - 1)).sqrt()
    assert_within_standard_errors(lf_cov, S, se)
    torch.testing.assert_close(lf_cov, lf_cov.T, rtol=0, atol=0)


def test_dct_fit_recovers_mean_and_variance_of_the_high_frequency_remainder() -> None:
    x, truth = correlated_sample()
    mean, var = stream(Moments.for_dct(C, H, W, N_COMPONENTS), x, [1000, 1000, 1000, 1000]).mean_var()
    P = hf_projector()
    true_mean = (truth["hf_mean"].view(C, H * W) @ P.T).view(C, H, W)
    true_var = (truth["hf_std"].view(C, H * W) ** 2 @ (P**2).T).view(C, H, W)  # diag(P D P)
    assert_within_standard_errors(mean, true_mean, (true_var / N).sqrt())
    assert_within_standard_errors(var, true_var, true_var * math.sqrt(2 / (N - 1)))


def test_dct_fit_leaves_no_low_frequency_in_the_remainder_mean() -> None:
    x, _ = correlated_sample(num=50)
    moments = Moments.for_dct(C, H, W, N_COMPONENTS)
    moments.update(x)
    mean, _ = moments.mean_var()
    lf_of_mean = dct.project(mean[None], lf_basis())
    torch.testing.assert_close(lf_of_mean, torch.zeros_like(lf_of_mean), rtol=0, atol=1e-12 * float(x.abs().max()))


# -- streaming and merging ---------------------------------------------------------------------------
def fitted_statistics(m: Moments) -> list[torch.Tensor]:
    return [*m.mean_var(), *(m.lf_mean_cov() if m.kind == "dct" else ())]


def new_moments(kind: str) -> Moments:
    return Moments.for_dct(C, H, W, N_COMPONENTS) if kind == "dct" else Moments("pixel", C, H, W)


@pytest.mark.parametrize("kind", ["pixel", "dct"])
def test_streaming_in_batches_equals_one_batch(kind: str) -> None:
    x, _ = correlated_sample(num=600)
    whole = new_moments(kind)
    whole.update(x)
    streamed = stream(new_moments(kind), x, [7, 193, 1, 399])
    assert streamed.count == whole.count == 600
    for a, b in zip(fitted_statistics(streamed), fitted_statistics(whole)):
        torch.testing.assert_close(a, b, **FLOAT64_SUMS)


@pytest.mark.parametrize("kind", ["pixel", "dct"])
def test_merging_two_shards_equals_fitting_all_at_once(kind: str) -> None:
    x, _ = correlated_sample(num=600)
    whole = new_moments(kind)
    whole.update(x)
    left, right = new_moments(kind), new_moments(kind)
    left.update(x[:250])
    right.update(x[250:])
    merged = left.merge(right)
    assert merged is left and merged.count == 600
    for a, b in zip(fitted_statistics(merged), fitted_statistics(whole)):
        torch.testing.assert_close(a, b, **FLOAT64_SUMS)


@pytest.mark.parametrize(
    "other",
    [
        Moments("pixel", C, H, W),
        Moments("pixel", C + 1, H, W),
        Moments("dct", C, H, W + 1, dct.low_frequency_indices(H, W + 1, N_COMPONENTS)),
        Moments.for_dct(C, H, W, N_COMPONENTS - 1),
        Moments("dct", C, H, W, dct.low_frequency_indices(H, W, N_COMPONENTS).flip(1)),
    ],
    ids=["pixel-kind", "channels", "width", "components", "indices"],
)
def test_merge_refuses_moments_of_another_kind_shape_or_components(other: Moments) -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        Moments.for_dct(C, H, W, N_COMPONENTS).merge(other)


def test_update_refuses_tensors_of_another_shape() -> None:
    with pytest.raises(ValueError, match=r"expected tensors \[B, 4, 8, 8\]"):
        Moments("pixel", C, H, W).update(torch.zeros(2, C, H, W + 1))


def test_moments_rebuilt_from_statistics_give_back_those_statistics() -> None:
    x, _ = correlated_sample(num=300)
    fitted = Moments.for_dct(C, H, W, N_COMPONENTS)
    fitted.update(x)
    (mean, var), (lf_mean, lf_cov) = fitted.mean_var(), fitted.lf_mean_cov()
    rebuilt = Moments.from_statistics("dct", 300, mean, var, fitted.lf_indices, lf_mean, lf_cov)
    for a, b in zip(fitted_statistics(rebuilt), fitted_statistics(fitted)):
        torch.testing.assert_close(a, b, **FLOAT64_SUMS)


# -- merging style files fitted on halves of an image set --------------------------------------------
def write_images(folder: Path, count: int, seed: int) -> Path:
    """`count` 16 x 16 PNGs: a random flat colour plus noise, so means and covariances are far from trivial."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        colour = rng.integers(30, 226, 3)
        pixels = np.clip(colour + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return folder


def within_float32_rounding(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> None:
    """|a - b| within a few float32 roundings of the numbers the merge sums (var + mean^2 per element)."""
    error = (a.double() - b.double()).abs()
    bound = 8 * FLOAT32_EPS * scale
    assert (error <= bound).all(), f"worst error is {float((error / bound).max()):.1f} x the float32 bound"


@pytest.mark.parametrize("kind", ["pixel", "dct"])
def test_merging_saved_halves_matches_one_fit_within_float32_rounding(kind: str, tmp_path: Path) -> None:
    first = write_images(tmp_path / "first", 6, seed=0)
    second = write_images(tmp_path / "second", 7, seed=1)
    options = dict(pipe=None, kind=kind, components=N_COMPONENTS, space="pixel", resolution=16, progress=False)
    for name, folder in [("first", first), ("second", second)]:
        ls.save(ls.fit(folder, **options), tmp_path / f"{name}.safetensors")
    merged = ls.merge([ls.load(tmp_path / "first.safetensors"), ls.load(tmp_path / "second.safetensors")])
    whole = ls.fit([first, second], **options)

    assert merged.kind == whole.kind == kind and merged.image_count == whole.image_count == 13
    second_moment = whole.var.double() + whole.mean.double() ** 2
    within_float32_rounding(merged.mean, whole.mean, second_moment.sqrt())
    within_float32_rounding(merged.var, whole.var, second_moment)
    if kind == "dct":
        assert torch.equal(merged.lf_indices, whole.lf_indices)
        lf_second_moment = whole.lf_cov.double().diag() + whole.lf_mean.double() ** 2
        within_float32_rounding(merged.lf_mean, whole.lf_mean, lf_second_moment.sqrt())
        within_float32_rounding(merged.lf_cov, whole.lf_cov, torch.outer(lf_second_moment, lf_second_moment).sqrt())


def style_of(kind: str, height: int = H, width: int = W, components: int = N_COMPONENTS) -> StyleDistribution:
    x = torch.randn(5, C, height, width, generator=generator(4))
    m = Moments.for_dct(C, height, width, components) if kind == "dct" else Moments("pixel", C, height, width)
    m.update(x)
    return StyleDistribution.from_moments(m, {"space": "latent"})


@pytest.mark.parametrize(
    "other",
    [lambda: style_of("pixel"), lambda: style_of("dct", width=W + 2), lambda: style_of("dct", components=1)],
    ids=["kind", "shape", "components"],
)
def test_merging_styles_of_another_kind_or_shape_is_a_user_error(other) -> None:
    with pytest.raises(LeakstyleError, match="cannot merge"):
        ls.merge([style_of("dct"), other()])
