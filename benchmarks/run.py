"""Every performance figure of leakstyle, printed as one table.

    python benchmarks/run.py            # the full run (a few minutes on 2 CPU cores)
    python benchmarks/run.py --quick    # a smoke run for CI (< 30 s)

1. Drawing x_tilde (and a whole initial latent) against the floor, torch.randn of the same shape,
   and against the straightforward method (numpy multivariate normal + a full scipy IDCT).
2. Generation with a style against the same generation without one.
3. Fitting: (a) peak memory as the image count grows, against keeping every latent;
   (b) accumulating the moments against encoding the images with a VAE.
4. The ComfyUI node pack's nodes against a KSampler run on the embedded model (benchmarks/comfy_overhead.py).
5. Calibrated colour control against raw colour control (`--only color`).
6. Fitting at scale: images per second with 1 and 2 processes, and the share of the fit's wall time spent
   outside the VAE encode (benchmarks/fit_scale.py).

Timings interleave baseline and candidate in the same process and report medians; ratios are medians of
the per-round ratios. Results also go to benchmarks/out/results.json. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_C = ROOT.parent / "shared" / "reference" / "signal-leak-bias" / "C"
OUT = ROOT / "benchmarks" / "out"
if importlib.util.find_spec("leakstyle") is None:
    sys.path.insert(0, str(ROOT / "src"))

MB = 1e6
GB = 1e9


# -- timing ------------------------------------------------------------------------------------------
def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Wall seconds of each call, one call of every function per round, in turn, so a slow spell of
    the machine (another job) hits all of them alike. Odd rounds run in reverse order to cancel drift."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def wall_and_cpu(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1):
    """interleaved() timing both the wall clock and this process's CPU time of every call."""
    cpu: dict[str, list[float]] = {name: [] for name in fns}

    def timed(name, f):
        def call():
            t0 = time.process_time()
            f()
            cpu[name].append(time.process_time() - t0)
        return call

    wall = interleaved({name: timed(name, f) for name, f in fns.items()}, rounds, warmup)
    return wall, {name: ts[-rounds:] for name, ts in cpu.items()}  # drop the warm-up calls


def median(ts: list[float]) -> float:
    return statistics.median(ts)


def paired_ratio(candidate: list[float], baseline: list[float]) -> float:
    """Median over rounds of candidate / baseline, both timed in the same round."""
    return statistics.median(c / b for c, b in zip(candidate, baseline))


def ratio_spread(candidate: list[float], baseline: list[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles of the per-round ratios: how far noise moves one round."""
    q = statistics.quantiles([c / b for c, b in zip(candidate, baseline)], n=4)
    return q[0], q[2]


# -- the table ---------------------------------------------------------------------------------------
@dataclass
class Row:
    figure: str
    ours: str
    baseline: str
    ratio: float | None
    target: str
    passed: bool | None  # None: a figure shown for information, with no target

    def verdict(self) -> str:
        return "-" if self.passed is None else ("pass" if self.passed else "FAIL")


def print_table(rows: list[Row]) -> None:
    header = ("figure", "ours", "baseline/limit", "ratio", "target", "pass/fail")
    cells = [header] + [(r.figure, r.ours, r.baseline, "-" if r.ratio is None else f"{r.ratio:.4g}", r.target, r.verdict())
                        for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    line = lambda c: "| " + " | ".join(s.ljust(w) for s, w in zip(c, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells[1:]:
        print(line(c))


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3g} ms"


# -- styles ------------------------------------------------------------------------------------------
def synthetic_style(channels: int, height: int, width: int, components: int, count: int = 64, seed: int = 0):
    """A dct statistic fitted in code to random latents whose channel means vary from image to image."""
    import torch
    from leakstyle.distribution import StyleDistribution
    from leakstyle.moments import Moments

    g = torch.Generator().manual_seed(seed)
    means = 0.5 * torch.randn(count, channels, 1, 1, generator=g)
    x = means + 0.8 * torch.randn(count, channels, height, width, generator=g)
    moments = Moments.for_dct(channels, height, width, components)
    moments.update(x)
    return StyleDistribution.from_moments(moments, {"space": "latent"})


def benchmark_style():
    """The official reference statistic C (dct, 3 components, 4 x 96 x 96) when present, else a synthetic one."""
    import leakstyle

    if (REFERENCE_C / "stats.safetensors").exists():
        return leakstyle.load(REFERENCE_C), "reference C (dct, 3 components)"
    return synthetic_style(4, 96, 96, 3), "synthetic dct, 3 components"


# -- 1. drawing x_tilde -------------------------------------------------------------------------------
def straightforward_x_tilde(style, num: int, rng):
    """x_tilde the obvious way: a multivariate normal drawn (and Sigma factored) on every call, the LF placed
    in an all-zero coefficient array and a full inverse DCT of every latent, plus the HF mean/std noise."""
    import numpy as np
    import scipy.fft
    import torch

    C, H, W, n = style.channels, style.height, style.width, style.components
    lf = rng.multivariate_normal(style.lf_mean.double().numpy(), style.lf_cov.double().numpy(), size=num)  # [num, nC]
    coefficients = np.zeros((num, C, H, W), np.float32)
    u, v = style.lf_indices.numpy().T
    coefficients[:, :, u, v] = lf.reshape(num, n, C).transpose(0, 2, 1)
    x_lf = scipy.fft.idctn(coefficients, type=2, axes=(-2, -1), norm="ortho")
    hf = style.mean.numpy() + style.var.sqrt().numpy() * rng.standard_normal((num, C, H, W), dtype=np.float32)
    return torch.from_numpy(x_lf + hf)


def check_straightforward_matches(style) -> None:
    """The straightforward IDCT of the LF mean must equal leakstyle's basis-image reconstruction."""
    import numpy as np
    import scipy.fft
    import torch
    from leakstyle import dct

    C, H, W, n = style.channels, style.height, style.width, style.components
    coefficients = np.zeros((1, C, H, W))
    u, v = style.lf_indices.numpy().T
    coefficients[:, :, u, v] = style.lf_mean.double().numpy().reshape(1, n, C).transpose(0, 2, 1)
    theirs = torch.from_numpy(scipy.fft.idctn(coefficients, type=2, axes=(-2, -1), norm="ortho"))
    ours = dct.reconstruct(style.lf_mean.double().view(1, n, C), dct.basis_images(H, W, style.lf_indices, torch.float64))
    assert torch.allclose(ours, theirs, atol=1e-9), "straightforward IDCT and basis images disagree"


def figure_sampling(quick: bool) -> tuple[list[Row], dict]:
    import numpy as np
    import torch
    from diffusers import DDIMScheduler
    from leakstyle.leak import noise, x_T
    from leakstyle.schedule import leak_at_first_step
    from leakstyle.testing import SD15_SCHEDULE

    style, source = benchmark_style()
    check_straightforward_matches(style)
    num, shape = 16, (16, style.channels, style.height, style.width)
    leak = leak_at_first_step(DDIMScheduler(**SD15_SCHEDULE, clip_sample=False, set_alpha_to_one=False), 50)
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def ours_initial_latent():  # leakstyle.leak.initial_latents' math: eps first, then x_tilde
        eps = noise(shape, g, "cpu", torch.float32)
        x_tilde = style.sample(num, generator=g)
        return x_T(x_tilde, eps, leak, scale=leak.input_scale)

    def straightforward_initial_latent():
        eps = noise(shape, g, "cpu", torch.float32)
        return x_T(straightforward_x_tilde(style, num, rng), eps, leak, scale=leak.input_scale)

    t = interleaved({
        "randn": lambda: torch.randn(shape, generator=g),
        "x_tilde": lambda: style.sample(num, generator=g),
        "initial": ours_initial_latent,
        "straightforward x_tilde": lambda: straightforward_x_tilde(style, num, rng),
        "straightforward initial": straightforward_initial_latent,
    }, rounds=50 if quick else 400)
    floor = median(t["randn"])
    what = f"{num} x {shape[1]}x{shape[2]}x{shape[3]}"
    details = {"style": source, "shape": list(shape), "leak": [leak.sqrt_abar_T, leak.sqrt_one_minus_abar_T],
               "median_ms": {k: 1e3 * median(v) for k, v in t.items()},
               "ratio_to_randn": {k: paired_ratio(v, t["randn"]) for k, v in t.items()}}
    r = details["ratio_to_randn"]
    rows = [
        Row(f"1. x_tilde, {what} ({source}) / randn", ms(median(t["x_tilde"])), f"randn {ms(floor)}",
            r["x_tilde"], "<= 1.3", r["x_tilde"] <= 1.3),
        Row("1. whole initial latent sqrt(abar) x_tilde + sqrt(1-abar) eps / randn", ms(median(t["initial"])),
            f"randn {ms(floor)}", r["initial"], "<= 2.6", r["initial"] <= 2.6),
        Row("1. straightforward x_tilde (numpy MVN + scipy idctn) / randn", ms(median(t["straightforward x_tilde"])),
            f"randn {ms(floor)}", r["straightforward x_tilde"], "issue: ~3.5", None),
        Row("1. straightforward whole initial latent / randn", ms(median(t["straightforward initial"])),
            f"randn {ms(floor)}", r["straightforward initial"], "-", None),
        Row("1. ours x_tilde / straightforward x_tilde", ms(median(t["x_tilde"])),
            ms(median(t["straightforward x_tilde"])), paired_ratio(t["x_tilde"], t["straightforward x_tilde"]), "-", None),
    ]
    return rows, details


# -- 2. generation with a style -----------------------------------------------------------------------
def figure_generation(quick: bool) -> tuple[list[Row], dict]:
    import torch
    import leakstyle
    from leakstyle.leak import initial_latents, latent_shape
    from leakstyle.testing import tiny_sd

    latent_size, steps, rounds = (32, 4, 4) if quick else (64, 10, 9)
    with tempfile.TemporaryDirectory() as folder:
        tiny_sd(folder, sample_size=latent_size)
        pipe = leakstyle.load_pipeline(folder, device="cpu")
    C, h, w = latent_shape(pipe, None, None)
    style = benchmark_style()[0].at_size(h, w)  # a style for this latent size, so sampling does not resize each call
    prompt = "a red heart"  # fits the tiny tokenizer's 16 tokens

    def generation(with_style: bool):
        return lambda: leakstyle.generate(pipe, prompt, style=style if with_style else None, seed=0,
                                          num_images=1, num_inference_steps=steps)

    gen, gen_cpu = wall_and_cpu({"none": generation(False), "style": generation(True)}, rounds=rounds)

    def start(with_style: bool):
        return lambda: initial_latents(pipe, style if with_style else None, 1, num_inference_steps=steps,
                                       generator=torch.Generator().manual_seed(0))

    init = interleaved({"none": start(False), "style": start(True)}, rounds=30 if quick else 200)

    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(prompt, "cpu", 1, True)
        hidden = torch.cat([negative, embeds])
        x = torch.randn(2, C, h, w)
        pipe.scheduler.set_timesteps(steps)
        t0 = pipe.scheduler.timesteps[0]
        unet = interleaved({"step": lambda: pipe.unet(x, t0, encoder_hidden_states=hidden)},
                           rounds=3 if quick else 7, warmup=1)["step"]

    g_none, g_style = median(gen["none"]), median(gen["style"])
    extra = median(init["style"]) - median(init["none"])
    step = median(unet)
    what = f"{steps} steps, 1 image, latent {C}x{h}x{w}, CFG"
    details = {"latent": [C, h, w], "steps": steps, "rounds": rounds,
               "generation_wall_s": gen, "generation_cpu_s": gen_cpu,
               "initial_latent_ms": {"none": 1e3 * median(init["none"]), "style": 1e3 * median(init["style"])},
               "unet_step_ms": 1e3 * step}
    wall_ratio, cpu_ratio = paired_ratio(gen["style"], gen["none"]), paired_ratio(gen_cpu["style"], gen_cpu["none"])
    low, high = ratio_spread(gen["style"], gen["none"])
    resolvable = high - low <= 0.02  # rounds that scatter more than 2% cannot tell 1% apart
    rows = [
        Row(f"2. generate() with style / without, wall ({what})", f"{g_style:.3g} s", f"{g_none:.3g} s", wall_ratio,
            "<= 1.01" if resolvable else f"<= 1.01 (noise: rounds {low:.3f}-{high:.3f})",
            wall_ratio <= 1.01 if resolvable else None),
        Row("2. generate() with style / without, CPU time of this process", f"{median(gen_cpu['style']):.3g} s",
            f"{median(gen_cpu['none']):.3g} s", cpu_ratio, "<= 1.01", cpu_ratio <= 1.01),
        Row("2. extra time of the styled initial latent / whole generation", ms(extra), f"{g_none:.3g} s",
            extra / g_none, "<= 0.01", extra / g_none <= 0.01),
        Row("2. styled initial latent / one UNet step (batch 2)", ms(median(init["style"])), ms(step),
            median(init["style"]) / step, "-", None),
    ]
    return rows, details


# -- 3a. fitting memory -------------------------------------------------------------------------------
def import_moments_alone():
    """leakstyle.moments without running the package's __init__ (which imports diffusers: seconds per child)."""
    spec = importlib.util.find_spec("leakstyle")
    package = types.ModuleType("leakstyle")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["leakstyle"] = package
    from leakstyle.moments import Moments

    return Moments


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """The process's peak RSS in bytes: VmHWM (which clear_refs resets), else getrusage's ru_maxrss.

    ru_maxrss alone is no good in a child: exec() carries the parent's peak into it."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def reset_peak_rss() -> bool:
    """Start the kernel's peak-RSS count afresh (Linux: clear_refs 5); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(Moments, method: str, count: int, batch: int = 16) -> dict:
    """In a process of its own: stream `count` tensors [4, 64, 64] and report the peak RSS the work added."""
    import torch

    C, H, W = 4, 64, 64

    def batches():
        g = torch.Generator().manual_seed(0)
        for i in range(0, count, batch):
            yield 0.5 * torch.randn(min(batch, count - i), C, 1, 1, generator=g) + torch.randn(min(batch, count - i), C, H, W, generator=g)

    def new_moments():
        return Moments.for_dct(C, H, W, 3) if method == "dct" else Moments("pixel", C, H, W)

    # Load torch's kernels once outside the measurement (their code pages are not the method's memory).
    if method == "keep":
        torch.cat([torch.randn(2, C, H, W)]).var(0)
    else:
        new_moments().update(torch.randn(2, C, H, W))
    gc.collect()
    rss0, exact = current_rss(), reset_peak_rss()
    rss0 = current_rss() if exact else rss0
    if method == "keep":  # keep every latent, then one variance over all of them
        kept = list(batches())
        everything = torch.cat(kept)
        mean, var = everything.mean(0), everything.var(0)
        state = sum(t.nbytes for t in kept) + everything.nbytes
    else:
        moments = new_moments()
        for x in batches():
            moments.update(x)
        mean, var = moments.mean_var()
        state = sum(t.nbytes for t in vars(moments).values() if isinstance(t, torch.Tensor))
    peak = peak_rss()
    return {"method": method, "count": count, "batch": batch, "peak_additional_bytes": peak - rss0,
            "state_bytes": state, "peak_reset": exact, "mean_abs": float(mean.abs().mean()), "var": float(var.mean())}


def memory_processes(jobs: list[tuple[str, int]]) -> None:
    """Print one JSON line per (method, count), each measured in its own process forked from this one, which
    has imported torch and done nothing else: a fresh interpreter without paying the import again."""
    import torch

    Moments = import_moments_alone()
    torch.set_num_threads(1)
    for method, count in jobs:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                result = memory_child(Moments, method, count)
            except BaseException as e:  # report it to the parent instead of dying silently
                result = {"method": method, "count": count, "error": repr(e)}
            os.write(write, json.dumps(result).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            print(f.read(), flush=True)
        os.waitpid(pid, 0)


def run_memory_processes(jobs: list[tuple[str, int]]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    spec = ",".join(f"{method}:{count}" for method, count in jobs)
    out = subprocess.run([sys.executable, __file__, "--memory-processes", spec], capture_output=True, text=True,
                         env=env, check=True, timeout=600)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    errors = [r for r in results if "error" in r]
    if errors or len(results) != len(jobs):
        raise RuntimeError(f"memory measurement failed: {errors or out.stderr[-2000:]}")
    return results


def figure_memory(quick: bool) -> tuple[list[Row], dict]:
    counts, methods = ((200, 3200), ("dct", "keep")) if quick else ((200, 800, 3200), ("dct", "pixel", "keep"))
    streaming = [m for m in methods if m != "keep"]
    jobs = [(method, count) for count in counts for method in methods]
    results = run_memory_processes(jobs)
    peak = {(r["method"], r["count"]): r["peak_additional_bytes"] for r in results}
    state = {(r["method"], r["count"]): r["state_bytes"] for r in results}
    how = "VmHWM after clear_refs - RSS before the work, one process per method and count (forked after import torch)"
    if not all(r["peak_reset"] for r in results):
        how = "getrusage ru_maxrss - RSS before the work, one process each (peak not resettable: an upper bound)"

    def mb(values) -> str:
        return " | ".join(f"{v / MB:.1f}" for v in values) + " MB"

    names = " | ".join(streaming)
    rows = [Row(f"3a. peak extra memory, {count} latents 4x64x64 in batches of 16, {names}",
                mb(peak[m, count] for m in streaming), f"keep all {peak['keep', count] / MB:.1f} MB",
                peak["dct", count] / peak["keep", count], "flat", None) for count in counts]
    # Flat: what the accumulator holds does not change with the count, and the peak RSS grows by less than
    # 5% of what keeping the latents adds (the rest is the allocator's scatter, a few MB either way).
    growth = {m: max(peak[m, c] for c in counts) - peak[m, counts[0]] for m in methods}
    worst = max(growth[m] for m in streaming) / growth["keep"]
    rows.append(Row(f"3a. growth of peak extra memory from {counts[0]} to {counts[-1]} latents, {names} / keep all",
                    " | ".join(f"{growth[m] / MB:+.1f}" for m in streaming) + " MB",
                    f"keep all {growth['keep'] / MB:+.1f} MB", worst, "<= 0.05", worst <= 0.05))
    constant = all(len({state[m, c] for c in counts}) == 1 for m in streaming)
    rows.append(Row(f"3a. tensors held after {counts[-1]} latents, {names} (same for every count?)",
                    mb(state[m, counts[-1]] for m in streaming), f"keep all {state['keep', counts[-1]] / MB:.0f} MB",
                    None, "same for every count", constant))
    sdxl_bytes = 100_000 * 4 * 128 * 128 * 4
    ours_sdxl = (2 * 4 * 128 * 128 + 3 * 128 * 128 + 12 + 12 * 12) * 8  # float64 sums + the 3 basis images
    rows.append(Row("3a. extrapolation: 100,000 SDXL latents 4x128x128 float32", f"dct sums {ours_sdxl / MB:.2f} MB",
                    f"kept in memory {sdxl_bytes / GB:.1f} GB", None, "-", None))
    return rows, {"method": how, "results": results, "sdxl_keep_all_bytes": sdxl_bytes, "sdxl_dct_sums_bytes": ours_sdxl}


# -- 3b. fitting time ---------------------------------------------------------------------------------
def sd_like_vae(seed: int = 0):
    """An AutoencoderKL shaped like SD's (4 levels, 2 ResNets each, 4 latent channels), narrower, random weights."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(32, 64, 128, 128), layers_per_block=2, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         norm_num_groups=32, scaling_factor=0.18215).eval()


def figure_fit_time(quick: bool) -> tuple[list[Row], dict]:
    import torch
    from leakstyle.encode import encode
    from leakstyle.moments import Moments

    resolution, rounds, batch = (64, 2, 8) if quick else (128, 7, 8)
    vae = sd_like_vae()
    pixels = torch.rand(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = encode(vae, pixels)
    _, C, h, w = latents.shape
    dct_moments, pixel_moments = Moments.for_dct(C, h, w, 3), Moments("pixel", C, h, w)
    t = interleaved({
        "encode batch": lambda: encode(vae, pixels),
        "encode singles": lambda: [encode(vae, pixels[i:i + 1]) for i in range(batch)],
        "update dct": lambda: dct_moments.update(latents),
        "update pixel": lambda: pixel_moments.update(latents),
    }, rounds=rounds, warmup=1)
    # Moments.update takes well under a millisecond: time it over many more calls than the encoder.
    u = interleaved({"update dct": lambda: dct_moments.update(latents),
                     "update pixel": lambda: pixel_moments.update(latents)}, rounds=50 if quick else 500)
    encode_s = median(t["encode batch"])
    what = f"batch of {batch} images {resolution}x{resolution} -> latents {C}x{h}x{w}"
    rows = [
        Row(f"3b. Moments.update dct / VAE encode ({what})", ms(median(u["update dct"])), f"encode {ms(encode_s)}",
            median(u["update dct"]) / encode_s, "<= 0.05", median(u["update dct"]) / encode_s <= 0.05),
        Row("3b. Moments.update pixel / VAE encode", ms(median(u["update pixel"])), f"encode {ms(encode_s)}",
            median(u["update pixel"]) / encode_s, "<= 0.05", median(u["update pixel"]) / encode_s <= 0.05),
        Row(f"3b. VAE encode: one batch of {batch} / {batch} single calls", ms(encode_s),
            ms(median(t["encode singles"])), paired_ratio(t["encode batch"], t["encode singles"]), "-", None),
    ]
    details = {"resolution": resolution, "latent": [C, h, w], "batch": batch,
               "median_ms": {k: 1e3 * median(v) for k, v in {**t, **u}.items()}}
    return rows, details


# -- 4. the ComfyUI node pack ------------------------------------------------------------------------
def figure_comfy(quick: bool) -> tuple[list[Row], dict]:
    """benchmarks/comfy_overhead.py: the pack's nodes against a KSampler run on the embedded model."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import comfy_overhead

    m = comfy_overhead.measure(quick)
    what = f"KSampler {m['steps']} steps, embedded model, latent {'x'.join(map(str, m['latent']))}, CFG 5"
    rows = [
        Row(f"4. KSampler from LeakstyleLeakLatent / from EmptyLatentImage ({what})", f"{m['ksampler_leak_s']:.3g} s",
            f"{m['ksampler_empty_s']:.3g} s", m["ratio_sampler"], "-", None),
        Row("4. LeakstyleColor + LeakstyleLeakLatent + LeakstyleCalibrateModel / KSampler run", ms(m["pack_nodes_s"]),
            f"{m['ksampler_empty_s']:.3g} s",
            m["ratio_nodes"], "< 0.01", m["ratio_nodes"] < 0.01),
        Row(f"4. everything the pack adds to a run with a colour seen before: the nodes and the closed loop's "
            f"{m['steps']} shifts of x0 / KSampler run", ms(m["pack_nodes_s"] + m["steps"] * m["shift_s"]),
            f"{m['ksampler_empty_s']:.3g} s", m["ratio_pack_total"], "< 0.01", m["ratio_pack_total"] < 0.01),
        Row("4. LeakstyleLeakLatent alone (re-queue: ComfyUI caches the colour) / KSampler run", ms(m["latent_node_s"]),
            f"{m['ksampler_empty_s']:.3g} s", m["ratio_latent_node"], "< 0.01", m["ratio_latent_node"] < 0.01),
        Row(f"4. the nodes with a calibrated colour not seen before (median over {m['grid_colours']} colours) / KSampler run",
            ms(m["grid_new_colour_s"] + m["latent_node_s"] + m["calibrate_node_s"]), f"{m['ksampler_empty_s']:.3g} s",
            m["ratio_grid_new_colour"], "- (once per VAE and colour)", None),
        Row(f"4. the nodes with a raw colour not seen before (median over {m['grid_colours']} colours) / KSampler run",
            ms(m["grid_new_raw_colour_s"] + m["latent_node_s"]), f"{m['ksampler_empty_s']:.3g} s",
            m["ratio_grid_new_raw_colour"], "- (once per VAE and colour)", None),
        Row("4. for scale: ComfyUI's VAE Decode of the sampled latent (every workflow's last step) / KSampler run",
            ms(m["vae_decode_s"]), f"{m['ksampler_empty_s']:.3g} s", m["vae_decode_s"] / m["ksampler_empty_s"], "-", None),
    ]
    return rows, {k: v for k, v in m.items()}


# -- 5. calibrated colour control --------------------------------------------------------------------
def figure_color(quick: bool) -> tuple[list[Row], dict]:
    """5a. A generation with --color in calibrated mode (the noise-DC correction and the closed loop's shift of
    every step's x0 prediction) against the same generation in raw mode, interleaved (target <= 1.5): the embedded
    model, one image at 25 steps (--quick: a tiny random model at 4 steps).
    5b. The initial latent alone, calibrated / raw: what the noise-DC correction adds (one mean per image).
    Calibrated mode has no per-model calibration run, so there is nothing to cache and no calibration time to bound."""
    import torch

    from leakstyle.encode import color_to_model_units
    from leakstyle.leak import initial_latents
    from leakstyle.pipeline import generate, load_pipeline
    from leakstyle.testing import tiny_sd

    with tempfile.TemporaryDirectory() as tmp:
        if quick:
            pipe, what, steps = load_pipeline(tiny_sd(Path(tmp) / "sd"), device="cpu"), "tiny random SD", 4
        else:
            pipe, what, steps = load_pipeline(None, device="cpu"), "embedded mini-sd, 64 px", 25

    def gen(mode):
        return lambda: generate(pipe, "grinning face", color="#505050", color_mode=mode, seed=0, num_inference_steps=steps)

    z = color_to_model_units(pipe, "#505050")

    def start(mode):
        return lambda: initial_latents(pipe, None, num_inference_steps=steps, color=z, color_mode=mode,
                                       generator=torch.Generator().manual_seed(0))

    t = interleaved({"raw": gen("raw"), "calibrated": gen("calibrated")}, rounds=4 if quick else 15)
    init = interleaved({"raw": start("raw"), "calibrated": start("calibrated")}, rounds=50 if quick else 300)
    ratio = paired_ratio(t["calibrated"], t["raw"])
    low, high = ratio_spread(t["calibrated"], t["raw"])
    rows = [
        Row(f"5a. generate --color calibrated / raw, wall ({what}, 1 image, {steps} steps)",
            f"{median(t['calibrated']):.3g} s", f"{median(t['raw']):.3g} s", ratio,
            f"<= 1.5 (IQR {low:.3g}-{high:.3g})", ratio <= 1.5),
        Row("5b. initial latent with a colour, calibrated / raw", ms(median(init["calibrated"])), ms(median(init["raw"])),
            paired_ratio(init["calibrated"], init["raw"]), "-", None),
    ]
    return rows, {"model": what, "steps": steps, "wall_s": t, "initial_latent_s": init}


# -- 6. fitting at scale -------------------------------------------------------------------------------
def figure_fit_scale(quick: bool) -> tuple[list[Row], dict]:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fit_scale import measure  # benchmarks/fit_scale.py

    m = measure(quick, threads=torch.get_num_threads())
    what = f"{m['images']} JPEGs of mixed sizes at {m['resolution']} px, VAE {tuple(m['vae_channels'])}"
    rows = []
    base = m["runs"]["1 process, 0 workers"]
    for name, run in m["runs"].items():
        rate = run["images"] / run["wall_s"]
        outside = 1 - run["encode_s"] / run["wall_s"]
        ratio = rate / (base["images"] / base["wall_s"])
        rows.append(Row(f"6. fit images/s, {name} ({what})" if run is base else f"6. fit images/s, {name}",
                        f"{rate:.3g} img/s", "1 process, 0 workers" if run is not base else "-",
                        None if run is base else ratio, "-", None))
        target = name == "1 process, 1 worker" and not quick  # quick: 4 small images, the worker's start-up dominates
        rows.append(Row(f"6. share of fit wall time outside the VAE encode, {name}", f"{outside:.3f}",
                        f"encode {run['encode_s']:.1f} s of {run['wall_s']:.1f} s", outside,
                        "<= 0.10" if target else "-", outside <= 0.10 if target else None))
    rows.append(Row("6. decode + resize one JPEG / VAE encode one image", ms(m["decode_resize_s_per_image"]),
                    ms(m["encode_s_per_image"]), m["decode_resize_s_per_image"] / m["encode_s_per_image"], "-", None))
    if quick:
        m["notes"] = ["fit_scale: the 2-process row and the encode-share target are in the full run only"]
    return rows, m


# -- main ---------------------------------------------------------------------------------------------

FIGURES = {"sampling": figure_sampling, "generation": figure_generation, "memory": figure_memory,
           "fit_time": figure_fit_time, "comfy": figure_comfy, "color": figure_color,
           "fit_scale": figure_fit_scale}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes (< 30 s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: torch.randn with a generator runs on one thread, "
                             "and one thread stays steady beside other jobs)")
    parser.add_argument("--only", choices=list(FIGURES), action="append", help="run only these figures")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a figure misses its target")
    parser.add_argument("--out", type=Path, default=OUT / "results.json")
    parser.add_argument("--memory-processes", metavar="METHOD:COUNT,...", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_processes:
        memory_processes([(job.split(":")[0], int(job.split(":")[1])) for job in args.memory_processes.split(",")])
        return 0

    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows, details = [], {}
    for name in args.only or FIGURES:
        t0 = time.perf_counter()
        figure_rows, details[name] = FIGURES[name](args.quick)
        rows += figure_rows
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr, flush=True)
    machine = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "threads": args.threads, "load_average": os.getloadavg(), "quick": args.quick,
               "seconds": time.perf_counter() - started}
    print(f"leakstyle benchmarks ({'quick' if args.quick else 'full'}): torch {torch.__version__}, {args.threads} thread(s), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, {machine['seconds']:.0f} s")
    print_table(rows)
    for note in (n for d in details.values() for n in d.get("notes", [])):
        print("note:", note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": [asdict(r) for r in rows], "details": details}, indent=1))
    print(f"wrote {args.out}")
    return 1 if args.check and any(r.passed is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
