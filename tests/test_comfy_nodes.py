"""leakstyle's ComfyUI nodes in-process: refusals, units, colour, styles in models/leakstyle, the embedded model."""

import math
import re
import subprocess
import sys

import pytest
import torch

from comfyui_setup import REPO, comfyui_path, import_comfy, tiny_model

if comfyui_path() is None:
    pytest.skip("ComfyUI not found (set COMFYUI_PATH or put it at ../shared/ComfyUI)", allow_module_level=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("comfyui")
    import_comfy(path)
    return path


@pytest.fixture(scope="module")
def pack(base):
    from leakstyle import comfy as pack

    return pack


@pytest.fixture(scope="module")
def sd1(base):
    return tiny_model("sd1")[0]


@pytest.fixture(scope="module")
def embedded(pack):
    return pack.NODE_CLASS_MAPPINGS["LeakstyleEmbeddedModel"]().load()


def node(pack, name):
    return pack.NODE_CLASS_MAPPINGS[name]()


def raw_style(channels=4, size=8, seed=0):
    from leakstyle import StyleDistribution

    g = torch.Generator().manual_seed(seed)
    return StyleDistribution("pixel", torch.randn(channels, size, size, generator=g), torch.rand(channels, size, size, generator=g),
                             metadata={"space": "latent", "scaling_factor": "1.0", "shift_factor": "0.0"})


def patched(name, model, **kwargs):
    import comfy_extras.nodes_model_advanced as advanced

    return getattr(advanced, name)().patch(model, **kwargs)[0]


def test_the_pack_exposes_every_node_of_the_contract(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == {"LeakstyleLoadStyle", "LeakstyleFitStyle", "LeakstyleSaveStyle", "LeakstyleColor",
                                             "LeakstyleLeakLatent", "LeakstyleLeakNoise", "LeakstyleCalibrateModel", "LeakstyleProbe",
                                             "LeakstyleEmbeddedModel"}
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(pack.NODE_CLASS_MAPPINGS)
    for cls in pack.NODE_CLASS_MAPPINGS.values():
        assert cls.CATEGORY == "leakstyle" and callable(getattr(cls, cls.FUNCTION))
        cls.INPUT_TYPES()


@pytest.mark.parametrize("patch, kwargs, message", [
    ("ModelSamplingDiscrete", {"sampling": "eps", "zsnr": True}, "zero terminal SNR"),
    ("ModelSamplingSD3", {"shift": 3.0}, "flow-matching"),
    ("ModelSamplingContinuousEDM", {"sampling": "edm_playground_v2.5", "sigma_max": 80.0, "sigma_min": 0.002}, "sigma_data = 0.5"),
])
def test_models_without_a_usable_leak_are_refused_in_one_line(pack, sd1, embedded, patch, kwargs, message):
    from leakstyle import LeakstyleError

    model = patched(patch, sd1, **kwargs)
    sigmas = torch.tensor([10.0, 1.0, 0.0])
    for run in (lambda: node(pack, "LeakstyleLeakLatent").latent(model, raw_style(), 64, 64, 1, 0),
                lambda: node(pack, "LeakstyleLeakNoise").noise(model, sigmas, 0),
                lambda: node(pack, "LeakstyleCalibrateModel").patch(model, raw_style()),
                lambda: node(pack, "LeakstyleColor").color(embedded[2], "#ff0000", 1.0, model=model)):
        with pytest.raises(LeakstyleError, match=message) as info:
            run()
        assert "\n" not in str(info.value)
    text = node(pack, "LeakstyleProbe").probe(model, 20, "normal", 512, 512)["result"][0]
    assert text.startswith("leak: none") and message in text


def test_continuous_v_prediction_with_sigma_data_one_is_accepted(pack, sd1):
    """CosXL's sampling in ComfyUI (v-prediction, continuous EDM sigmas, sigma_data 1): x / sqrt(sigma^2 + 1) holds."""
    model = patched("ModelSamplingContinuousEDM", sd1, sampling="v_prediction", sigma_max=120.0, sigma_min=0.002)
    text = node(pack, "LeakstyleProbe").probe(model, 20, "karras", 512, 512)["result"][0]
    assert f"sqrt(abar_0) = {1 / math.sqrt(1 + 120.0**2):.6f}" in text
    node(pack, "LeakstyleLeakLatent").latent(model, raw_style(), 64, 64, 1, 0)


def test_a_style_with_other_channels_is_refused(pack, sd1):
    from leakstyle import LeakstyleError

    with pytest.raises(LeakstyleError, match="3 latent channels but this model's latents have 4"):
        node(pack, "LeakstyleLeakLatent").latent(sd1, raw_style(channels=3), 64, 64, 1, 0)


def test_leak_latent_takes_its_size_from_the_vae_or_one_eighth(pack, sd1, embedded):
    _, _, vae = embedded
    assert vae.spacial_compression_encode() == 4
    with_vae = node(pack, "LeakstyleLeakLatent").latent(sd1, raw_style(), 64, 48, 2, 0, vae=vae)[0]["samples"]
    without = node(pack, "LeakstyleLeakLatent").latent(sd1, raw_style(), 64, 48, 2, 0)[0]["samples"]
    assert with_vae.shape == (2, 4, 12, 16) and without.shape == (2, 4, 6, 8)


def test_a_style_in_raw_vae_units_is_scaled_into_the_models_units(pack, sd1):
    """SD 1.x's process_latent_in is z * 0.18215: a raw-units style's mean and variance follow."""
    from leakstyle.comfy.units import to_model_units

    style = raw_style()
    model_units = to_model_units(style, sd1)
    torch.testing.assert_close(model_units.mean, style.mean * 0.18215)
    torch.testing.assert_close(model_units.var, style.var * 0.18215**2)
    assert float(model_units.metadata["scaling_factor"]) == pytest.approx(0.18215)


def test_an_official_folder_is_used_in_its_own_units(pack, sd1, reference):
    from leakstyle.comfy.units import to_model_units

    style = node(pack, "LeakstyleLoadStyle").load(None, path=str(reference / "D"))[0]
    assert to_model_units(style, sd1) is style


def test_dct_units_conversion_moves_an_offset_into_the_dc_coefficient(pack):
    """x -> a x + b per channel: the DC of the LF gets sqrt(HW) b, the remainder keeps zero mean colour."""
    from leakstyle.comfy.units import affine
    from leakstyle.moments import Moments
    from leakstyle import StyleDistribution

    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, 6, 6, generator=g) + torch.tensor([1.0, -2.0]).view(1, 2, 1, 1)
    a, b = torch.tensor([0.5, 2.0], dtype=torch.float64), torch.tensor([0.25, -1.0], dtype=torch.float64)
    def fit(t):
        moments = Moments.for_dct(2, 6, 6, 3)
        moments.update(t)
        return StyleDistribution.from_moments(moments)

    converted, direct = affine(fit(x), a, b), fit(x * a.float().view(1, 2, 1, 1) + b.float().view(1, 2, 1, 1))
    for name in ("mean", "var", "lf_mean", "lf_cov"):
        torch.testing.assert_close(getattr(converted, name), getattr(direct, name), rtol=1e-4, atol=1e-4)


def test_color_alone_sets_the_mean_of_the_latent_to_the_encoded_colour(pack, sd1, embedded):
    _, _, vae = embedded
    from leakstyle.comfy.fitting import raw_color

    style = node(pack, "LeakstyleColor").color(vae, "#ff2000", 1.0, mode="raw")[0]
    latent = node(pack, "LeakstyleLeakLatent").latent(sd1, style, 64, 64, 1, 0, vae=vae)[0]["samples"]
    torch.testing.assert_close(latent.mean((0, 2, 3)).double(), raw_color(vae, "#ff2000"), rtol=1e-4, atol=1e-4)
    assert latent.std((2, 3)).max() < 1e-4  # a flat latent: colour control alone has no randomness


def test_color_at_half_strength_blends_a_fitted_style_halfway(pack, embedded):
    _, _, vae = embedded
    from leakstyle.comfy.fitting import raw_color

    images = torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    style = node(pack, "LeakstyleFitStyle").fit(vae, embedded[0], "dct", 3, images=images)[0]
    half = node(pack, "LeakstyleColor").color(vae, "#00ff00", 0.5, mode="raw", style=style)[0]
    scaling = float(style.metadata["scaling_factor"])  # the style is in the model's units: z * scaling
    expected = 0.5 * style.channel_means().double() + 0.5 * scaling * raw_color(vae, "#00ff00")
    torch.testing.assert_close(half.channel_means().double(), expected, rtol=1e-4, atol=1e-4)


def test_color_refuses_a_style_that_does_not_say_its_units(pack, embedded, reference):
    from leakstyle import LeakstyleError

    style = node(pack, "LeakstyleLoadStyle").load(None, path=str(reference / "A2"))[0]
    with pytest.raises(LeakstyleError, match="does not record the VAE scaling"):
        node(pack, "LeakstyleColor").color(embedded[2], "#ffffff", 1.0, style=style)


def test_fit_from_images_gives_the_moments_of_the_latents_in_the_models_units(pack, embedded):
    model, _, vae = embedded
    images = torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(2))
    style = node(pack, "LeakstyleFitStyle").fit(vae, model, "pixel", 1, images=images)[0]
    x = model.get_model_object("latent_format").process_in(vae.encode(images))
    torch.testing.assert_close(style.mean, x.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(style.var, x.var(0), rtol=1e-3, atol=1e-6)
    assert float(style.metadata["scaling_factor"]) == model.get_model_object("latent_format").scale_factor != 1.0
    assert float(style.metadata["shift_factor"]) == 0.0 and style.image_count == 3


def test_a_style_fitted_in_comfyui_is_the_file_leakstyle_fit_writes_and_loads_in_the_cli(pack, embedded, tmp_path, capsys):
    """The same images, the same (embedded) VAE: LeakstyleFitStyle + LeakstyleSaveStyle against leakstyle.fit."""
    import numpy as np
    from PIL import Image

    import leakstyle as ls
    from leakstyle.cli import main
    from leakstyle.pipeline import load_pipeline

    model, _, vae = embedded
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):  # smooth random images: a colour gradient and noise, 64 px (the embedded model's size)
        base = rng.uniform(0, 255, 3) + np.linspace(-60, 60, 64)[:, None, None] * rng.uniform(-1, 1, 3)
        pixels = np.clip(base + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    ours = node(pack, "LeakstyleFitStyle").fit(vae, model, "dct", 3, folder=str(folder))[0]
    path = node(pack, "LeakstyleSaveStyle").save(ours, "units/fitted")["ui"]["text"][0]
    theirs = ls.fit(folder, pipe=load_pipeline(None, device="cpu"), kind="dct", components=3, resolution=64, progress=False)
    saved = ls.load(path)
    for name in ("mean", "var", "lf_mean", "lf_cov"):
        torch.testing.assert_close(getattr(saved, name), getattr(theirs, name), rtol=1e-4, atol=1e-5)
    assert saved.lf_indices.tolist() == theirs.lf_indices.tolist()
    for key in ("space", "model", "scaling_factor", "shift_factor", "resolution", "source_digest"):
        assert saved.metadata[key] == theirs.metadata[key], key
    capsys.readouterr()
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert "images:      5" in out and "mean colour: #" in out and "decoded with leakstyle/mini-sd" in out


def test_fit_from_a_folder_and_save_then_load_from_models_leakstyle(pack, base, embedded, tmp_path):
    from PIL import Image

    for i, colour in enumerate([(250, 20, 20), (20, 250, 20), (20, 20, 250)]):
        Image.new("RGB", (40, 36), colour).save(tmp_path / f"{i}.png")
    style = node(pack, "LeakstyleFitStyle").fit(embedded[2], embedded[0], "dct", 2, folder=str(tmp_path))[0]
    assert (style.height, style.width) == (9, 10) and style.image_count == 3
    first = node(pack, "LeakstyleSaveStyle").save(style, "mine/red")["ui"]["text"][0]
    second = node(pack, "LeakstyleSaveStyle").save(style, "mine/red")["ui"]["text"][0]
    assert first != second and re.search(r"red_0000[12]\.safetensors$", second)
    names = pack.NODE_CLASS_MAPPINGS["LeakstyleLoadStyle"].INPUT_TYPES()["optional"]["style"][0]
    assert "mine/red_00001.safetensors" in [n.replace("\\", "/") for n in names]
    loaded = node(pack, "LeakstyleLoadStyle").load("mine/red_00001.safetensors")[0]
    torch.testing.assert_close(loaded.lf_cov, style.lf_cov)


def test_fit_without_images_or_folder_says_what_to_connect(pack, embedded):
    from leakstyle import LeakstyleError

    with pytest.raises(LeakstyleError, match="connect images or give a folder"):
        node(pack, "LeakstyleFitStyle").fit(embedded[2], embedded[0], "dct", 3)


def test_save_refuses_a_prefix_outside_the_folder(pack):
    from leakstyle import LeakstyleError

    with pytest.raises(LeakstyleError, match="relative name inside models/leakstyle"):
        node(pack, "LeakstyleSaveStyle").save(raw_style(), "../escape")


def test_probe_reports_the_first_sigmas_leak(pack, sd1):
    text = node(pack, "LeakstyleProbe").probe(sd1, 20, "normal", 512, 512, style=raw_style())["result"][0]
    assert "sqrt(abar_0) = 0.068265" in text and "first input = 1.000000 eps + 0.068265 x~" in text
    assert "first input = 0.997667 eps + 0.068265 x~" in text  # SamplerCustomAdvanced + LeakNoise
    uniform = node(pack, "LeakstyleProbe").probe(sd1, 10, "ddim_uniform", 512, 512)["result"][0]
    value = float(re.search(r"sqrt\(abar_0\) = ([0-9.]+)", uniform)[1])
    assert value > 0.068265  # ddim_uniform's first sigma lies below sigma_max


def test_embedded_model_generates_an_image_of_its_size(pack, embedded):
    import nodes

    model, clip, vae = embedded
    cond = nodes.CLIPTextEncode().encode(clip, "a red heart")[0]
    latent = node(pack, "LeakstyleLeakLatent").latent(model, node(pack, "LeakstyleColor").color(vae, "#ff0000", 1.0)[0],
                                                      64, 64, 1, 0, vae=vae)[0]
    samples = nodes.KSampler().sample(model, 0, 3, 5.0, "euler", "normal", cond, cond, latent)[0]
    image = vae.decode(samples["samples"])
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()


def test_nodes_import_no_heavy_dependencies():
    """Loading the pack pulls in none of diffusers, transformers, gradio, peft, matplotlib (ComfyUI may, for itself)."""
    code = ("import sys; import leakstyle; from leakstyle.comfy import NODE_CLASS_MAPPINGS; "
            "print(sorted(m for m in ('diffusers', 'transformers', 'gradio', 'peft', 'matplotlib', 'skimage') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": f"{REPO / 'src'}:{comfyui_path()}", "PATH": "/usr/bin:/bin"}, check=True).stdout
    assert out.strip() == "[]"


def test_the_embedded_model_in_comfyuis_classes_computes_what_the_diffusers_pipeline_computes(embedded):
    """Text encoder, UNet and VAE built by LeakstyleEmbeddedModel against the diffusers pipeline of the same weights."""
    from leakstyle.pipeline import load_pipeline

    model, clip, vae = embedded
    pipe = load_pipeline(None, device="cpu")
    with torch.no_grad():
        cond = clip.encode_from_tokens(clip.tokenize("a red heart"))
        ids = pipe.tokenizer("a red heart", padding="max_length", max_length=77, return_tensors="pt").input_ids
        hidden = pipe.text_encoder(ids)[0]
        torch.testing.assert_close(cond, hidden, rtol=1e-4, atol=1e-4)
        x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([500.0])
        torch.testing.assert_close(model.model.diffusion_model(x, t, context=hidden),
                                   pipe.unet(x, t, encoder_hidden_states=hidden).sample, rtol=1e-4, atol=1e-4)
        image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))
        z = pipe.vae.encode(image.movedim(-1, 1) * 2 - 1).latent_dist.mode()
        torch.testing.assert_close(vae.encode(image), z, rtol=1e-4, atol=1e-4)
        decoded = (pipe.vae.decode(z).sample.clamp(-1, 1) + 1) / 2
        torch.testing.assert_close(vae.decode(z), decoded.movedim(1, -1), rtol=1e-4, atol=1e-4)


def test_a_colour_is_encoded_once_per_vae_and_colour(pack, embedded, monkeypatch):
    """The colour node's cost is one VAE encode of a 64 px flat image: the second request of a colour is a look-up,
    and gives what a fresh encode gives."""
    from leakstyle.comfy.fitting import encode_color, raw_color

    _, _, vae = embedded
    calls = []
    encode = vae.encode
    monkeypatch.setattr(vae, "encode", lambda pixels: calls.append(pixels.shape) or encode(pixels))
    first = raw_color(vae, "#3a7f21")
    first.add_(1.0)  # a caller changing its copy does not change the cache
    second = raw_color(vae, "#3A7F21")
    assert calls == [(1, 64, 64, 3)]
    torch.testing.assert_close(second, encode_color(vae, (0x3a, 0x7f, 0x21)))
    raw_color(vae, "#3a7f22")
    assert len(calls) == 3  # another colour: another encode (and the direct one above)


@pytest.mark.parametrize("first_mode", ["calibrated", "raw"])
def test_both_colour_modes_share_the_colours_one_encode(pack, embedded, monkeypatch, first_mode):
    """Calibrated mode starts its solve from raw mode's cached encoding: one 64 px encode per VAE and colour
    whichever mode asks first, and the calibrated latent is what a solve from a fresh encode gives."""
    from leakstyle.comfy.fitting import solved_color
    from leakstyle.encode import parse_color

    _, _, vae = embedded
    color = "#7a3fb1" if first_mode == "calibrated" else "#7a3fb2"
    calls = []
    encode = vae.encode
    monkeypatch.setattr(vae, "encode", lambda pixels: calls.append(pixels.shape) or encode(pixels))
    color_node = node(pack, "LeakstyleColor")
    modes = [first_mode, "raw" if first_mode == "calibrated" else "calibrated"]
    styles = {mode: color_node.color(vae, color, 1.0, mode=mode)[0] for mode in modes}
    assert calls == [(1, 64, 64, 3)]
    fresh = solved_color(vae, parse_color(color))
    torch.testing.assert_close(styles["calibrated"].channel_means().double(), fresh, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(styles["raw"].channel_means().double(), fresh, atol=1e-3)


@pytest.mark.parametrize("color", ["#505050", "#d01818", "#1838d0"])
def test_a_calibrated_colour_is_the_latent_that_decodes_to_the_colour(pack, embedded, color):
    """The library's calibrated target (encode.decoding_to_color) with ComfyUI's VAE: the flat latent of the
    calibrated colour decodes closer to the colour than the paper's encoding of a flat image does, and the
    colour-only style holds exactly that latent."""
    from leakstyle.comfy.fitting import decoded_means, decoding_color, raw_color
    from leakstyle.encode import parse_color

    _, _, vae = embedded
    want = torch.tensor(parse_color(color), dtype=torch.float64) / 127.5 - 1
    solved, encoded = decoding_color(vae, color), raw_color(vae, color)
    miss = lambda z: float((decoded_means(vae, z[None])[0] - want).norm())  # noqa: E731
    assert miss(solved) < 0.75 * miss(encoded)
    style = node(pack, "LeakstyleColor").color(vae, color, 1.0)[0]
    torch.testing.assert_close(style.channel_means().double(), solved, rtol=1e-5, atol=1e-5)


def test_colour_mode_is_calibrated_by_default_and_recorded_on_the_style(pack, embedded):
    _, _, vae = embedded
    spec = pack.NODE_CLASS_MAPPINGS["LeakstyleColor"].INPUT_TYPES()["required"]["mode"]
    assert spec[0] == ["calibrated", "raw"] and spec[1]["default"] == "calibrated"
    style = node(pack, "LeakstyleColor").color(vae, "#ff2000", 0.75)[0]
    assert style.metadata["color_mode"] == "calibrated" and float(style.metadata["color_strength"]) == 0.75
    assert node(pack, "LeakstyleColor").color(vae, "#ff2000", 1.0, mode="raw")[0].metadata["color_mode"] == "raw"


def test_colour_with_a_model_gives_the_style_in_the_models_units(pack, sd1, embedded):
    from leakstyle.comfy.fitting import raw_color

    style = node(pack, "LeakstyleColor").color(embedded[2], "#1838d0", 1.0, mode="raw", model=sd1)[0]
    assert float(style.metadata["scaling_factor"]) == pytest.approx(0.18215)
    torch.testing.assert_close(style.channel_means().double(), 0.18215 * raw_color(embedded[2], "#1838d0"), rtol=1e-5, atol=1e-6)


def post_cfg_x0(model, run):
    """Every x0 prediction (ComfyUI's `denoised` after the model's post-CFG functions) while `run(model)` samples."""
    seen = []
    recording = model.clone()
    recording.set_model_sampler_post_cfg_function(lambda args: seen.append(args["denoised"].clone()) or args["denoised"])
    run(recording)
    return seen


def test_the_calibrated_model_holds_the_x0_border_ring_at_the_colour_at_every_step(pack, embedded):
    """The closed loop on the embedded model: the ring mean of each step's x0 is the colour's latent in model units."""
    import nodes

    from leakstyle.color import ring_mean
    from leakstyle.comfy.fitting import decoding_color

    model, clip, vae = embedded
    style = node(pack, "LeakstyleColor").color(vae, "#d01818", 1.0)[0]
    patched = node(pack, "LeakstyleCalibrateModel").patch(model, style)[0]
    cond = nodes.CLIPTextEncode().encode(clip, "a red heart")[0]
    latent = node(pack, "LeakstyleLeakLatent").latent(model, style, 64, 64, 2, 0, vae=vae)[0]
    target = model.get_model_object("latent_format").process_in(decoding_color(vae, "#d01818").float().view(1, -1, 1, 1)).view(-1)
    sample = lambda m: nodes.KSampler().sample(m, 3, 3, 5.0, "euler", "normal", cond, cond, latent)  # noqa: E731
    steered, free = post_cfg_x0(patched, sample), post_cfg_x0(model, sample)
    assert len(steered) == 3
    for x0 in steered:
        torch.testing.assert_close(ring_mean(x0), target.expand(2, -1), rtol=1e-4, atol=1e-4)
    assert (ring_mean(free[-1]) - target).abs().max() > 0.05  # the unpatched model's ring is elsewhere
    assert "sampler_post_cfg_function" not in model.model_options  # the input MODEL is left as it was


def test_the_calibrated_model_steers_to_the_blend_below_full_strength(pack, embedded):
    from leakstyle.comfy.calibration import background_target

    model, _, vae = embedded
    images = torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(4))
    style = node(pack, "LeakstyleFitStyle").fit(vae, model, "dct", 3, images=images)[0]
    half = node(pack, "LeakstyleColor").color(vae, "#00ff00", 0.5, style=style)[0]
    colour = node(pack, "LeakstyleColor").color(vae, "#00ff00", 1.0, model=model)[0]
    expected = 0.5 * style.channel_means() + 0.5 * colour.channel_means()
    torch.testing.assert_close(background_target(half, model), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make, message", [
    (lambda vae: raw_style(), "has no colour"),
    (lambda vae: NODE_COLOR(vae, "raw"), "raw mode"),
])
def test_the_calibrate_node_refuses_a_style_without_a_calibrated_colour(pack, embedded, make, message):
    from leakstyle import LeakstyleError

    with pytest.raises(LeakstyleError, match=message):
        node(pack, "LeakstyleCalibrateModel").patch(embedded[0], make(embedded[2]))


def NODE_COLOR(vae, mode):
    from leakstyle.comfy import NODE_CLASS_MAPPINGS

    return NODE_CLASS_MAPPINGS["LeakstyleColor"]().color(vae, "#808080", 1.0, mode=mode)[0]


def test_the_probe_gives_leakstyle_probes_snr_and_verdict(pack, sd1, reference):
    """SNR_DC = abar_0 h w sigma_m^2 / (1 - abar_0) with sigma_m from the style's DC covariance (leakstyle.probe)."""
    from leakstyle.comfy.units import to_model_units
    from leakstyle.probe import assess, sigma_m_of_style

    style = node(pack, "LeakstyleLoadStyle").load(None, path=str(reference / "D"))[0]
    text = node(pack, "LeakstyleProbe").probe(sd1, 20, "normal", 512, 512, style=style)["result"][0]
    a0 = 0.068265**2
    expected = assess(a0, 64, 64, sigma_m_of_style(to_model_units(style, sd1)))
    snr = float(re.search(r"DC ([0-9.e+-]+) \(per channel", text)[1])
    assert snr == pytest.approx(expected.snr_dc, rel=2e-3)
    assert f"verdict:    {expected.verdict}: {expected.explanation}" in text
    assert f"= {expected.predicted_std_ratio:.2f}" in text


def test_the_probe_encodes_the_reference_images_with_a_vae_and_says_when_it_cannot(pack, embedded):
    model, _, vae = embedded
    with_vae = node(pack, "LeakstyleProbe").probe(model, 25, "normal", 64, 64, vae=vae)["result"][0]
    assert "latents:    16 x 16 (1/4 of 64 x 64)" in with_vae and "bundled reference images" in with_vae
    assert re.search(r"verdict:    (strong|weak|none): ", with_vae)
    without = node(pack, "LeakstyleProbe").probe(model, 25, "normal", 64, 64)["result"][0]
    assert "verdict:    not known without sigma_m" in without and "connect a dct style" in without
    pixel = node(pack, "LeakstyleProbe").probe(model, 25, "normal", 64, 64, style=raw_style())["result"][0]
    assert "this style has no DC covariance (fit it with kind dct)" in pixel and "--" not in pixel


def test_the_embedded_vae_build_leaves_comfyuis_layers_as_they_were_in_other_threads(pack):
    """The VAE's GroupNorm group count is swapped in for the building thread only, and restored after."""
    import threading

    import comfy.ldm.modules.diffusionmodules.model as vae_layers

    from leakstyle.comfy.embedded import vae_layers_with_groups

    own = vae_layers.ops
    groups = {}
    with vae_layers_with_groups(4):
        groups["here"] = vae_layers.Normalize(64).num_groups
        other = threading.Thread(target=lambda: groups.update(there=vae_layers.Normalize(64).num_groups))
        other.start()
        other.join()
    assert groups == {"here": 4, "there": 32}
    assert vae_layers.ops is own
    with pytest.raises(RuntimeError, match="inside"):
        with vae_layers_with_groups(4):
            raise RuntimeError("inside")
    assert vae_layers.ops is own and vae_layers.Normalize(64).num_groups == 32
