"""Measuring the effect on image sets, offline: low-frequency statistics, colour accuracy, style distance.

Images are PIL images or arrays [H, W, 3] (uint8 in 0..255, or float in 0..1); transparent images are
composited on white. Colours are compared in CIELAB (D65), distances between sets come with seeded
percentile-bootstrap intervals (`bootstrap`).

- Low frequencies: each image's mean colour in RGB and CIELAB and its brightness L*; two sets are compared
  per channel by the 1-D Wasserstein distance and the ratio of standard deviations (the signal-leak bias
  shows as a ratio below 1: pure-noise generations cluster around medium, greyish values).
- Colour control: CIEDE2000 between a requested colour and the mean CIELAB colour of each image
  (of its border pixels, or any mask, where the background is known).
- Style: three measures on per-image features, each 0 for identical sets (see `style_distances`), and
  `style_distance`, one number that averages them in units of the Noto-vs-Twemoji style gap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

CHANNELS = ("L*", "a*", "b*")
BORDER = 4  # pixels: the frame whose colour is taken as the background in colour-control measurements

# -- images -----------------------------------------------------------------------------------------


def as_rgb(image) -> np.ndarray:
    """One image as float64 RGB [H, W, 3] in [0, 1]; alpha (RGBA, LA, [H, W, 4]) is composited on white."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return np.asarray(image, dtype=np.float64) / 255.0
    arr = np.asarray(image)
    x = arr.astype(np.float64) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float64)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.ndim != 3 or x.shape[-1] not in (3, 4):
        raise ValueError(f"an image array must be [H, W], [H, W, 3] or [H, W, 4], got {list(arr.shape)}")
    if x.shape[-1] == 4:
        x = x[..., :3] * x[..., 3:] + (1.0 - x[..., 3:])
    if x.min() < -1e-6 or x.max() > 1 + 1e-6:
        raise ValueError("float image arrays must hold values in [0, 1]; pass uint8 arrays for 0..255")
    return np.clip(x, 0.0, 1.0)


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] [..., 3] -> CIELAB (D65) [..., 3]: L* in 0..100, a*, b* about -110..110."""
    from skimage.color import rgb2lab

    return rgb2lab(np.asarray(rgb, dtype=np.float64), channel_axis=-1)


def resized(image, size: int) -> np.ndarray:
    """RGB [size, size, 3] in [0, 1]: resized in float (Lanczos) to cover the square, centre-cropped."""
    rgb = as_rgb(image)
    if rgb.shape[:2] == (size, size):
        return rgb
    from .images import resize_and_crop

    channels = [resize_and_crop(Image.fromarray(rgb[..., c].astype(np.float32)), size, size) for c in range(3)]
    return np.clip(np.stack([np.asarray(c, dtype=np.float64) for c in channels], -1), 0.0, 1.0)


# -- low-frequency statistics -------------------------------------------------------------------------


@dataclass(frozen=True)
class LowFrequency:
    """Per-image mean colours of a set: rgb [N, 3] in 0..255, lab [N, 3] (the mean of the pixels' CIELAB)."""

    rgb: np.ndarray
    lab: np.ndarray

    @property
    def brightness(self) -> np.ndarray:
        """L* of each image [N]: 0 black, 100 white."""
        return self.lab[:, 0]

    def spread(self) -> dict[str, float]:
        """Standard deviation over the set of each channel's mean (R, G, B in 0..255, L*, a*, b*)."""
        return {**dict(zip("RGB", spread(self.rgb).tolist())), **dict(zip(CHANNELS, spread(self.lab).tolist()))}


def mean_lab(image, mask: np.ndarray | str | None = None) -> np.ndarray:
    """The mean CIELAB colour [3] of an image's pixels, or of those under `mask` ("border" or bool [H, W])."""
    lab = to_lab(as_rgb(image))
    if mask is None:
        return lab.reshape(-1, 3).mean(0)
    m = border_mask(*lab.shape[:2]) if isinstance(mask, str) and mask == "border" else np.asarray(mask, dtype=bool)
    if m.shape != lab.shape[:2]:
        raise ValueError(f"mask {list(m.shape)} does not match the image {list(lab.shape[:2])}")
    if not m.any():
        raise ValueError("the mask selects no pixels")
    return lab[m].mean(0)


def low_frequency(images: Sequence) -> LowFrequency:
    """Mean colour of each image in RGB (0..255) and CIELAB."""
    rgbs = [as_rgb(im) for im in images]
    if not rgbs:
        raise ValueError("no images")
    rgb = np.stack([x.reshape(-1, 3).mean(0) for x in rgbs]) * 255.0
    lab = np.stack([to_lab(x).reshape(-1, 3).mean(0) for x in rgbs])
    return LowFrequency(rgb, lab)


def spread(values: np.ndarray) -> np.ndarray:
    """Standard deviation over a set (rows), per column, unbiased (ddof=1)."""
    values = np.asarray(values, dtype=np.float64)
    return values.std(0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1:])


def wasserstein_1d(u: np.ndarray, v: np.ndarray) -> float:
    """W1 between the empirical distributions of two samples: the integral of |F_u(x) - F_v(x)| dx."""
    u, v = np.sort(np.asarray(u, dtype=np.float64).ravel()), np.sort(np.asarray(v, dtype=np.float64).ravel())
    x = np.sort(np.concatenate([u, v]))
    dx = np.diff(x)
    F_u = np.searchsorted(u, x[:-1], side="right") / len(u)
    F_v = np.searchsorted(v, x[:-1], side="right") / len(v)
    return float(np.sum(np.abs(F_u - F_v) * dx))


def std_ratio(values: np.ndarray, reference: np.ndarray) -> float:
    """std(values) / std(reference): below 1 when `values` are squeezed toward their mean."""
    s_ref = float(np.std(reference, ddof=1))
    return float(np.std(values, ddof=1)) / s_ref if s_ref > 0 else float("inf")


# -- bootstrap ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """An estimate with a bootstrap confidence interval [low, high] at `level`."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level}

    def __format__(self, spec: str) -> str:
        spec = spec or ".3g"
        return f"{self.estimate:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    def __str__(self) -> str:
        return format(self)


def bootstrap(statistic: Callable[..., float | dict[str, float]], samples: Sequence, n_boot: int = 1000,
              level: float = 0.95, seed: int = 0) -> Interval | dict[str, Interval]:
    """Bootstrap interval of `statistic(*samples)`: each sample's items are resampled with replacement,
    independently of the other samples, n_boot times from `numpy.random.default_rng(seed)`.

    The interval is the central `level` range of the bootstrap distribution recentred on the estimate
    (shifted by estimate - mean of the resampled values): plug-in distances between sets are biased upward
    on resamples, whose repeated items add noise, so raw percentiles can miss the estimate altogether.
    The interval measures sampling variability; the estimate keeps its own small-sample bias.

    A sample is anything with len() that integer arrays index (numpy arrays, StyleFeatures). A statistic
    that returns a dict of floats gets a dict of Intervals, all from the same resamples.
    """
    estimate = statistic(*samples)
    rng = np.random.default_rng(seed)
    reps = [statistic(*(s[rng.integers(0, len(s), len(s))] for s in samples)) for _ in range(n_boot)]
    q = [(1 - level) / 2, (1 + level) / 2]

    def interval(value, values) -> Interval:
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        low, high = np.quantile(values, q) + (value - values.mean()) if len(values) else (np.nan, np.nan)
        return Interval(float(value), float(low), float(high), level)

    if isinstance(estimate, dict):
        return {k: interval(v, [r[k] for r in reps]) for k, v in estimate.items()}
    return interval(estimate, reps)


def compare_distributions(values: np.ndarray, reference: np.ndarray, names: Sequence[str] = CHANNELS,
                          n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Interval]]:
    """Per channel (column) of per-image values [N, k] against a reference set [M, k]: the Wasserstein
    distance and the std ratio (values / reference), each with a bootstrap interval."""
    values, reference = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if values.ndim == 1:
        values, reference = values[:, None], reference[:, None]
    out = {}
    for j, name in enumerate(names):
        a, b = values[:, j], reference[:, j]
        out[name] = {"wasserstein": bootstrap(wasserstein_1d, (a, b), n_boot, seed=seed),
                     "std_ratio": bootstrap(std_ratio, (a, b), n_boot, seed=seed)}
    return out


# -- colour control ----------------------------------------------------------------------------------


def color_to_lab(color) -> np.ndarray:
    """'#rrggbb' or (r, g, b) in 0..255 -> CIELAB [3]."""
    if isinstance(color, str):
        from .encode import parse_color

        color = parse_color(color)
    rgb = np.asarray(color, dtype=np.float64).reshape(3) / 255.0
    return to_lab(rgb[None, None])[0, 0]


def ciede2000(lab1, lab2) -> np.ndarray:
    """CIEDE2000 colour difference between CIELAB colours [..., 3] (broadcast); about 1 is just noticeable."""
    from skimage.color import deltaE_ciede2000

    return deltaE_ciede2000(np.asarray(lab1, dtype=np.float64), np.asarray(lab2, dtype=np.float64), channel_axis=-1)


def border_mask(height: int, width: int, border: int = BORDER) -> np.ndarray:
    """bool [height, width]: True on the outer `border` pixels of each side (where the background shows)."""
    m = np.ones((height, width), dtype=bool)
    m[border:height - border, border:width - border] = False
    return m


def color_errors(images: Sequence, requested, mask: np.ndarray | str | None = None) -> np.ndarray:
    """CIEDE2000 [N] between the requested colour ('#rrggbb' or RGB 0..255) and each image's mean CIELAB
    colour: of the whole image (mask None), of its border ("border"), or of the pixels of a bool mask [H, W]."""
    target = color_to_lab(requested)
    obtained = np.stack([mean_lab(im, mask) for im in images])
    return ciede2000(obtained, target[None])


# -- style ---------------------------------------------------------------------------------------------
STYLE_SIZE = 64
LAB_BINS = 8  # per axis: L* in [0, 100], a* and b* in [-110, 110] (the sRGB gamut)
GRADIENT_EDGES = np.linspace(np.log10(0.5), np.log10(100.0), 13)  # log10 |grad L*| per pixel; < 0.5 counts as flat
# The Google (Noto) vs Twitter (Twemoji) distance of each measure, on the two training sets composited on white
# (experiments/validate_style_metric.py prints them): style_distance counts each measure in these units.
STYLE_GAP = {"colour": 0.31, "gradient": 0.073, "spectrum": 0.91}


@dataclass(frozen=True)
class StyleFeatures:
    """Per-image features of a set, from which every style measure is computed.

    colour [N, 512]: CIELAB histogram (8 x 8 x 8 bins), sums to 1.
    gradient [N, 12]: histogram of log10 |grad L*| (L* units per pixel), the first bin holding flat pixels.
    spectrum [N, size/2]: radial power spectrum of L* (mean removed) at radii 1..size/2, normalised to sum 1.
    bandwidth [N]: the radii that hold information: size/2, or half the shorter side of an image that was upsampled.
    """

    colour: np.ndarray
    gradient: np.ndarray
    spectrum: np.ndarray
    bandwidth: np.ndarray

    def __len__(self) -> int:
        return len(self.colour)

    def __getitem__(self, index) -> "StyleFeatures":
        return StyleFeatures(self.colour[index], self.gradient[index], self.spectrum[index], self.bandwidth[index])


def lab_histograms(lab: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] CIELAB -> [N, 512] normalised histograms."""
    N = len(lab)
    idx = np.stack([np.clip(lab[..., 0] / 100.0, 0, 1 - 1e-9), np.clip((lab[..., 1] + 110) / 220, 0, 1 - 1e-9),
                    np.clip((lab[..., 2] + 110) / 220, 0, 1 - 1e-9)], -1)
    bins = (idx * LAB_BINS).astype(np.int64)
    flat = (bins[..., 0] * LAB_BINS + bins[..., 1]) * LAB_BINS + bins[..., 2]
    flat = flat.reshape(N, -1) + np.arange(N)[:, None] * LAB_BINS**3
    counts = np.bincount(flat.ravel(), minlength=N * LAB_BINS**3).reshape(N, -1)
    return counts / counts.sum(1, keepdims=True)


def gradient_histograms(L: np.ndarray) -> np.ndarray:
    """[N, H, W] L* -> [N, 12] histograms of log10 of the forward-difference gradient magnitude."""
    gx, gy = np.diff(L, axis=2)[:, :-1, :], np.diff(L, axis=1)[:, :, :-1]
    g = np.log10(np.clip(np.hypot(gx, gy), 10 ** GRADIENT_EDGES[0], 10 ** GRADIENT_EDGES[-1]))
    bins = np.clip(np.searchsorted(GRADIENT_EDGES, g, side="right") - 1, 0, len(GRADIENT_EDGES) - 2)
    k = len(GRADIENT_EDGES) - 1
    flat = bins.reshape(len(L), -1) + np.arange(len(L))[:, None] * k
    counts = np.bincount(flat.ravel(), minlength=len(L) * k).reshape(len(L), k)
    return counts / counts.sum(1, keepdims=True)


def radial_index(size: int) -> np.ndarray:
    """[size, size] integer radius sqrt(fy^2 + fx^2) of each FFT frequency (rounded)."""
    f = np.minimum(np.arange(size), size - np.arange(size))
    return np.rint(np.hypot(f[:, None], f[None, :])).astype(np.int64)


def radial_spectra(L: np.ndarray) -> np.ndarray:
    """[N, S, S] L* -> [N, S/2] radial power of radii 1..S/2 (mean removed), each normalised to sum 1 (shape only)."""
    N, S, _ = L.shape
    power = np.abs(np.fft.fft2(L - L.mean((1, 2), keepdims=True))) ** 2
    r = radial_index(S).ravel()
    keep = (r >= 1) & (r <= S // 2)
    counts = np.bincount(r[keep] - 1, minlength=S // 2)
    radial = np.stack([np.bincount(r[keep] - 1, p.ravel()[keep], minlength=S // 2) for p in power]) / counts
    return radial / np.maximum(radial.sum(1, keepdims=True), 1e-30)


def style_features(images: Sequence, size: int = STYLE_SIZE) -> StyleFeatures:
    """Features of every image, resized (covered and centre-cropped) to size x size."""
    if not len(images):
        raise ValueError("no images")
    rgbs = [as_rgb(im) for im in images]
    bandwidth = np.array([min(min(x.shape[:2]), size) // 2 for x in rgbs])
    lab = to_lab(np.stack([resized(x, size) for x in rgbs]))
    return StyleFeatures(lab_histograms(lab), gradient_histograms(lab[..., 0]), radial_spectra(lab[..., 0]), bandwidth)


def features_of(x) -> StyleFeatures:
    return x if isinstance(x, StyleFeatures) else style_features(x)


def hellinger(p: np.ndarray, q: np.ndarray) -> float:
    """Hellinger distance between two histograms: sqrt(sum (sqrt p - sqrt q)^2 / 2), 0 when equal, 1 when disjoint."""
    return float(np.sqrt(0.5 * np.sum((np.sqrt(p) - np.sqrt(q)) ** 2)))


def colour_distance(a, b) -> float:
    """Hellinger distance between the two sets' average CIELAB histograms (their palettes), in [0, 1]."""
    a, b = features_of(a), features_of(b)
    return hellinger(a.colour.mean(0), b.colour.mean(0))


def gradient_distance(a, b) -> float:
    """Hellinger distance between the sets' average histograms of gradient magnitude, in [0, 1]:
    flat fills with sharp edges (Twemoji) against soft shading (Noto)."""
    a, b = features_of(a), features_of(b)
    return hellinger(a.gradient.mean(0), b.gradient.mean(0))


def spectrum_distance(a, b) -> float:
    """RMS over radii, in dB, between the sets' average normalised radial power spectra (texture and edges).

    Only radii every image holds are compared (up to half the shorter side of the smallest upsampled image)."""
    a, b = features_of(a), features_of(b)
    R = int(min(a.bandwidth.min(), b.bandwidth.min()))

    def log_mean(spectrum: np.ndarray) -> np.ndarray:
        p = spectrum[:, :R] / np.maximum(spectrum[:, :R].sum(1, keepdims=True), 1e-30)
        return np.log10(p.mean(0) + 1e-12)

    log_a, log_b = log_mean(a.spectrum), log_mean(b.spectrum)
    return float(10.0 * np.sqrt(np.mean((log_a - log_b) ** 2)))


MEASURES = {"colour": colour_distance, "gradient": gradient_distance, "spectrum": spectrum_distance}


def combine(distances: dict[str, float]) -> float:
    """The style distance: the mean of the measures, each divided by its Noto-vs-Twemoji gap (STYLE_GAP)."""
    return float(np.mean([distances[k] / STYLE_GAP[k] for k in MEASURES]))


def style_distances(a, b) -> dict[str, float]:
    """Each style measure between two sets (images or StyleFeatures), and their combination "style"."""
    a, b = features_of(a), features_of(b)
    d = {name: f(a, b) for name, f in MEASURES.items()}
    return {**d, "style": combine(d)}


def style_distance(images_a, images_b) -> float:
    """One number for how far apart two image sets are in style; 0 for identical sets.

    The mean of three measures (colour palette, gradient-magnitude histogram, radial power spectrum;
    see `style_distances`), each in units of the distance between the Google (Noto) and Twitter (Twemoji)
    emoji sets, so 1.0 is about the gap between those two styles. Images are compared at 64 x 64.
    """
    return style_distances(images_a, images_b)["style"]


def style_intervals(a, b, n_boot: int = 1000, seed: int = 0) -> dict[str, Interval]:
    """`style_distances` with bootstrap intervals (the images of each set resampled)."""
    return bootstrap(style_distances, (features_of(a), features_of(b)), n_boot, seed=seed)
