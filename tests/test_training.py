"""The training recipe of the embedded model: data, tokenizer and VAE stages, on tiny synthetic inputs.

No network: emoji are drawn into tmp_path, the BPE file is a few made-up merges. The real CLIP
vocabulary is checked only when the open-clip-torch wheel is cached in training/data/wheels/.
"""

from __future__ import annotations

import gzip
import json
import types
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training import build_tokenizer, eval_vae, fetch_data, train_unet, train_vae  # noqa: E402
from training.dataset import EmojiComposites  # noqa: E402
from training.loop import batch_indices  # noqa: E402
from training.train_unet import drop_captions  # noqa: E402

TINY_VAE = train_vae.vae_config(block_out_channels=(8, 8, 16), norm_num_groups=2)


@pytest.fixture(scope="module")
def emoji_dir(tmp_path_factory) -> Path:
    """Three synthetic 64x64 RGBA emoji (a disc, a square, a triangle) and their manifest."""
    folder = tmp_path_factory.mktemp("emoji")
    (folder / "img").mkdir()
    shapes = [("red disc", "ellipse", (220, 30, 30, 255)), ("green square", "rectangle", (30, 200, 60, 255)),
              ("blue triangle", "polygon", (40, 60, 230, 255))]
    rows = []
    for i, (name, shape, fill) in enumerate(shapes):
        im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        d = ImageDraw.Draw(im)
        if shape == "polygon":
            d.polygon([(32, 8), (56, 56), (8, 56)], fill=fill)
        else:
            getattr(d, shape)([10, 10, 54, 54], fill=fill)
        im.save(folder / f"img/{i}.png")
        rows.append({"file": f"img/{i}.png", "name": name, "category": "shapes", "unified": f"{i:04X}",
                     "base": f"{i:04X}", "split": "eval" if i == 2 else "train"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# --- data ---------------------------------------------------------------------------------------

def test_composites_are_images_in_minus_one_to_one(emoji_dir):
    x, _ = EmojiComposites(emoji_dir, "train", seed=0)[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1


def test_composites_are_a_function_of_seed_and_index(emoji_dir):
    a, b = EmojiComposites(emoji_dir, "train", seed=3), EmojiComposites(emoji_dir, "train", seed=3)
    assert torch.equal(a[5][0], b[5][0]) and a[5][1] == b[5][1]
    assert not torch.equal(a[5][0], EmojiComposites(emoji_dir, "train", seed=4)[5][0])


def test_backgrounds_vary_widely_in_mean_colour(emoji_dir):
    ds = EmojiComposites(emoji_dir, "train", seed=0, repeats=100)
    corners = torch.stack([ds[i][0][:, 0, 0] for i in range(len(ds))])  # a pixel the emoji never covers
    assert corners.std(0).min() > 0.4  # uniform on [-1, 1] has std 0.58
    assert corners.min() < -0.9 and corners.max() > 0.9


def test_captions_name_the_emoji_never_the_background(emoji_dir):
    ds = EmojiComposites(emoji_dir, "train", seed=0, repeats=20)
    names = {"red disc", "green square"}
    allowed = names | {f"{n}, shapes" for n in names}
    captions = {ds[i][1] for i in range(len(ds))}
    assert captions <= allowed and len(captions) == 4


def test_flip_mirrors_some_items(emoji_dir):
    plain = EmojiComposites(emoji_dir, "eval", seed=0, repeats=8)
    flipped = EmojiComposites(emoji_dir, "eval", seed=0, repeats=8, flip=True)
    same = [torch.equal(plain[i][0], flipped[i][0]) for i in range(8)]
    mirrored = [torch.equal(plain[i][0].flip(-1), flipped[i][0]) for i in range(8)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(mirrored) and not all(mirrored)


def test_split_holds_out_about_five_percent_by_base_code_point():
    codes = [f"{i:05X}" for i in range(4000)]
    share = sum(fetch_data.split_of(c) == "eval" for c in codes) / len(codes)
    assert 0.04 < share < 0.06
    assert fetch_data.split_of("1f600") == fetch_data.split_of("1F600")


def test_manifest_names_skin_tones_and_keeps_them_with_their_base():
    emoji = [{"name": "WAVING HAND SIGN", "category": "People & Body", "unified": "1F44B",
              "image": "1f44b.png", "has_img_google": True,
              "skin_variations": {"1F3FD": {"unified": "1F44B-1F3FD", "image": "1f44b-1f3fd.png",
                                            "has_img_google": True}}},
             {"name": "NOT IN THIS SET", "category": "Symbols", "unified": "2764", "image": "2764.png",
              "has_img_google": False}]
    rows = fetch_data.manifest_rows(emoji, "google")
    assert [r["name"] for r in rows] == ["waving hand sign", "waving hand sign, medium skin tone"]
    assert rows[0]["category"] == "people & body"
    assert rows[0]["split"] == rows[1]["split"]


def test_missing_npm_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch_data.shutil, "which", lambda _: None)
    with pytest.raises(fetch_data.FetchError, match="npm is not installed"):
        fetch_data.npm_pack("emoji-datasource-google@16.0.0", tmp_path)


# --- tokenizer ----------------------------------------------------------------------------------

def test_tokenizer_from_a_bpe_file_has_clip_layout(tmp_path):
    merges = ["h e", "l l", "he ll", "hell o</w>"]  # made-up merges in the file's "a b" format
    bpe = gzip.compress(("\"bpe_simple_vocab_16e6.txt#version: 0.2\n" + "\n".join(merges) + "\n").encode())
    tok = build_tokenizer.build_tokenizer(bpe, tmp_path / "tok")
    assert len(tok) == 512 + len(merges) + 2
    assert tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [516, 517]
    assert tok.convert_ids_to_tokens(tok("Hello hell")["input_ids"]) == [
        "<|startoftext|>", "hello</w>", "he", "l", "l</w>", "<|endoftext|>"]
    assert tok.model_max_length == 77
    assert (tmp_path / "tok" / "vocab.json").exists() and (tmp_path / "tok" / "merges.txt").exists()


@pytest.mark.skipif(not list((ROOT / "training/data/wheels").glob("open_clip_torch-*.whl")),
                    reason="open-clip-torch wheel not cached in training/data/wheels")
def test_real_bpe_gives_clip_token_ids(tmp_path):
    wheel = sorted((ROOT / "training/data/wheels").glob("open_clip_torch-*.whl"))[-1]
    tok = build_tokenizer.build_tokenizer(build_tokenizer.bpe_from_wheel(wheel), tmp_path / "tok")
    build_tokenizer.check_real_ids(tok)  # 49408 tokens; "a photo of a cat" -> 49406 320 1125 539 320 2368 49407


# --- VAE ------------------------------------------------------------------------------------------

def test_batches_are_fixed_by_seed_and_step_and_cover_each_epoch():
    assert batch_indices(0, 5, 4, 10) == batch_indices(0, 5, 4, 10)
    epoch0 = [i for s in range(5) for i in batch_indices(0, s, 2, 10)]
    assert sorted(epoch0) == list(range(10))


def test_vae_training_checkpoints_and_resumes_exactly(emoji_dir, tmp_path):
    kw = dict(batch_size=2, warmup=1, ckpt_every=1, config=TINY_VAE)
    train_vae.train(tmp_path / "a", emoji_dir, steps=2, **kw)
    assert torch.load(tmp_path / "a/checkpoint.pt", weights_only=False)["step"] == 2
    resumed = train_vae.train(tmp_path / "a", emoji_dir, steps=3, **kw)
    straight = train_vae.train(tmp_path / "b", emoji_dir, steps=3, **kw)
    assert torch.load(tmp_path / "a/checkpoint.pt", weights_only=False)["step"] == 3
    for p, q in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(p, q)
    steps = [json.loads(l)["step"] for l in (tmp_path / "a/loss.jsonl").read_text().splitlines()]
    assert steps == [2, 3]  # the first run logged its last step, the resumed run its own


def test_vae_export_sets_scaling_factor_and_loads_with_from_pretrained(emoji_dir, tmp_path):
    from diffusers import AutoencoderKL

    vae = train_vae.train(tmp_path / "run", emoji_dir, steps=1, batch_size=2, warmup=1, config=TINY_VAE)
    scale = train_vae.export(vae, emoji_dir, tmp_path / "export", n_images=4)
    loaded = AutoencoderKL.from_pretrained(tmp_path / "export")
    assert loaded.config.scaling_factor == pytest.approx(scale)
    stored = load_file(tmp_path / "export/diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    z = loaded.float().encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
    assert z.shape == (1, 4, 16, 16)


def test_predicted_std_ratio_matches_design_table():
    abar = eval_vae.abar_T()
    assert abar == pytest.approx(0.068265**2, rel=1e-4)
    ratio = eval_vae.predicted_std_ratio(torch.tensor([0.4, 0.7, 0.7, 0.7]), *[64, 32, 16, 8][0:1] * 2, abar)
    assert ratio[0].item() == pytest.approx(0.50, abs=0.01)
    sizes_and_expected = [(32, 0.55), (16, 0.80), (8, 0.93)]
    for hw, expected in sizes_and_expected:
        assert eval_vae.predicted_std_ratio(torch.tensor(0.7), hw, hw, abar).item() == pytest.approx(expected, abs=0.01)


# --- UNet and text encoder ------------------------------------------------------------------------

def test_caption_dropout_blanks_about_one_in_ten():
    captions = drop_captions(["grinning face"] * 2000, np.random.default_rng(0))
    assert set(captions) == {"", "grinning face"}
    assert 0.08 < captions.count("") / len(captions) < 0.12


def test_epsilon_loss_is_zero_for_a_perfect_noise_predictor():
    from diffusers import DDPMScheduler

    class Oracle(torch.nn.Module):  # knows z0 = 0, so eps = x_t / sqrt(1 - abar_t)
        def forward(self, x_t, t, encoder_hidden_states):
            abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
            return type("Out", (), {"sample": x_t / (1 - abar).sqrt()})

    scheduler = DDPMScheduler(**train_unet.SD15_SCHEDULE, clip_sample=False)
    loss = train_unet.EpsilonLoss(scheduler)(Oracle(), torch.zeros(4, 4, 16, 16), None, torch.Generator().manual_seed(0))
    assert loss.item() < 1e-10


def test_exported_pipeline_loads_plainly_with_sd15_schedule(tmp_path):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tok = build_tokenizer.build_tokenizer(gzip.compress(b"#version: 0.2\nh e\nl l\n"), tmp_path / "tok")
    unet = UNet2DConditionModel(**train_unet.unet_config(block_out_channels=(16, 16, 16), cross_attention_dim=16))
    text = CLIPTextModel(train_unet.text_encoder_config(hidden=16, layers=1, heads=2))
    vae = AutoencoderKL(**TINY_VAE)
    train_unet.export_pipeline(vae, text, tok, unet, tmp_path / "pipe")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe", torch_dtype=torch.float32)
    pipe.scheduler.set_timesteps(50)
    assert int(pipe.scheduler.timesteps[0]) == 981
    from diffusers import DDPMScheduler as DDPM
    assert DDPM.from_config(pipe.scheduler.config).config.clip_sample is False  # clamping would grey all colours
    assert pipe.scheduler.alphas_cumprod[999].item() == pytest.approx(0.068265**2, rel=1e-4)
    image = pipe("hello", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3)
    plain = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe")  # as the model card loads it: one dtype
    assert {plain.unet.dtype, plain.text_encoder.dtype, plain.vae.dtype} == {torch.float32}


def test_unet_training_smoke_run_checkpoints_and_resumes(emoji_dir, tmp_path):
    tok = build_tokenizer.build_tokenizer(gzip.compress(b"#version: 0.2\nh e\nl l\n"), tmp_path / "tok")
    from diffusers import AutoencoderKL
    vae = AutoencoderKL(**TINY_VAE).eval().requires_grad_(False)
    train_unet.train(tmp_path / "run", emoji_dir, vae, tok, steps=2, batch_size=2, warmup=1, ckpt_every=1)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 2
    train_unet.train(tmp_path / "run", emoji_dir, vae, tok, steps=3, batch_size=2, warmup=1, ckpt_every=1)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 3
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert logged == [2, 3]  # the resumed run appends to the loss curve


def tiny_unet_run(emoji_dir: Path, tmp_path: Path):
    """A tokenizer and a frozen tiny VAE for the UNet-stage tests."""
    from diffusers import AutoencoderKL
    tok = build_tokenizer.build_tokenizer(gzip.compress(b"#version: 0.2\nh e\nl l\n"), tmp_path / "tok")
    return AutoencoderKL(**TINY_VAE).eval().requires_grad_(False), tok


def test_batches_built_by_worker_processes_equal_those_built_inline(emoji_dir, tmp_path):
    _, tok = tiny_unet_run(emoji_dir, tmp_path)
    batches = train_unet.Batches(EmojiComposites(emoji_dir, "train", repeats=100), tok, batch_size=3, seed=5)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(4, 8), num_workers=2)
    for step, (x, ids) in zip(range(4, 8), loader):
        x0, ids0 = batches[step]
        assert torch.equal(x, x0) and torch.equal(ids, ids0)
    assert not torch.equal(batches[4][0], batches[5][0])


def test_ema_starts_close_to_the_weights_and_then_averages_slowly():
    w = torch.nn.Parameter(torch.zeros(3))
    ema = train_unet.EMA([w], decay=0.999)
    with torch.no_grad():
        w.fill_(1.0)
    ema.update()  # decay warms up: min(0.999, 1/10) = 0.1
    assert torch.allclose(ema.shadow[0], torch.full((3,), 0.9))
    for _ in range(9000):  # (1 + n) / (10 + n) reaches 0.999 at n = 8991
        ema.update()
    with torch.no_grad():
        w.fill_(2.0)
    ema.update()  # now decay 0.999
    assert torch.allclose(ema.shadow[0], torch.full((3,), 1.001), atol=1e-5)
    restored = train_unet.EMA([w], 0.999, ema.state_dict())
    assert restored.n == ema.n and torch.equal(restored.shadow[0], ema.shadow[0])


def test_steps_for_budget_fills_the_time_left():
    assert train_unet.steps_for_budget(100, rate=10.0, seconds_left=60.0, margin=1.0) == 700
    assert train_unet.steps_for_budget(100, rate=10.0, seconds_left=0.0) == 101


def test_budget_run_stores_its_total_and_ends_its_cosine_there(emoji_dir, tmp_path, monkeypatch):
    vae, tok = tiny_unet_run(emoji_dir, tmp_path)
    clock = iter(range(10**9))  # a clock of 0.05 s per reading: the planned total does not depend on the machine's load
    monkeypatch.setattr(train_unet, "time", types.SimpleNamespace(time=lambda: 0.05 * next(clock)))
    train_unet.train(tmp_path / "run", emoji_dir, vae, tok, steps=10**6, batch_size=2, lr=1e-3, warmup=10,
                     ckpt_every=10**6, log_every=1, budget_minutes=0.05)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["total_steps"] == ckpt["step"] > 5  # the probe took 5 steps, then the budget fixed the total
    rows = [json.loads(line) for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    total = ckpt["step"]
    assert rows[-1]["step"] == total and rows[-1]["lr"] == pytest.approx(train_unet.lr_at(total - 1, total, 1e-3, 10), abs=1e-6)
    assert rows[-1]["lr"] < max(r["lr"] for r in rows)  # the cosine, planned for that total, has come down
    # resuming the finished run takes no step, whatever --steps says
    train_unet.train(tmp_path / "run", emoji_dir, vae, tok, steps=10**6, batch_size=2, lr=1e-3, warmup=10,
                     budget_minutes=0.05)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == ckpt["step"]


def test_export_takes_the_ema_weights_and_the_slim_checkpoint_resumes_with_a_new_warm_up(emoji_dir, tmp_path):
    from training import export_model
    vae, tok = tiny_unet_run(emoji_dir, tmp_path)
    unet, text = train_unet.train(tmp_path / "run", emoji_dir, vae, tok, steps=3, batch_size=2, lr=1e-3, warmup=1)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    n = len(list(unet.parameters()))
    exported, _, step = export_model.load_trained(tmp_path / "run" / "checkpoint.pt")
    assert step == 3
    for name, value in exported.state_dict().items():
        assert torch.equal(value, unet.state_dict()[name])  # train() returns the averages too
    assert torch.equal(dict(exported.named_parameters())["conv_in.weight"], ckpt["ema"]["shadow"][0])
    assert not torch.equal(ckpt["unet"]["conv_in.weight"], ckpt["ema"]["shadow"][0])  # raw weights differ
    assert len(ckpt["ema"]["shadow"]) == n + len(list(text.parameters()))

    slim = export_model.save_slim_checkpoint(tmp_path / "run" / "checkpoint.pt", tmp_path / "slim")
    light = torch.load(slim, weights_only=False)
    assert {"optimizer", "ema", "total_steps"}.isdisjoint(light) and light["weights"] == "ema"
    assert torch.equal(light["unet"]["conv_in.weight"], ckpt["ema"]["shadow"][0])
    train_unet.train(tmp_path / "slim", emoji_dir, vae, tok, steps=8, batch_size=2, lr=1e-3, warmup=4, log_every=1)
    rows = [json.loads(line) for line in (tmp_path / "slim" / "loss.jsonl").read_text().splitlines()]
    resumed = [r for r in rows if r["step"] > 3]
    assert resumed[0]["lr"] < resumed[1]["lr"] < resumed[2]["lr"]  # Adam restarted: warm up again from step 3
    assert resumed[0]["lr"] == pytest.approx(train_unet.lr_at(3, 8, 1e-3, 4) / 4, abs=1e-6)


def test_export_writes_demo_assets_with_attribution(emoji_dir, tmp_path):
    from training import export_model
    data = tmp_path / "data"
    data.mkdir()
    for name in ("google", "twitter"):
        (data / name).symlink_to(emoji_dir)
    export_model.write_assets(data, tmp_path / "assets", n_twemoji=2, n_reference=3)
    assert len(list((tmp_path / "assets" / "twemoji").glob("*.png"))) == 2
    reference = sorted((tmp_path / "assets" / "reference").glob("*.png"))
    assert len(reference) == 3 and Image.open(reference[0]).size == (64, 64)
    assert "CC-BY 4.0" in (tmp_path / "assets" / "ATTRIBUTION.md").read_text()


def test_a_smoke_export_leaves_the_shipped_model_and_checkpoint_alone(emoji_dir, tmp_path):
    from training import export_model
    vae, tok = tiny_unet_run(emoji_dir, tmp_path)
    train_unet.train(tmp_path / "run", emoji_dir, vae, tok, steps=1, batch_size=2, warmup=1)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("google", "twitter"):
        (data / name).symlink_to(emoji_dir)
    shipped = ROOT / "training" / "artifacts" / "unet" / "checkpoint.pt"
    before = shipped.stat().st_mtime_ns if shipped.exists() else None
    argv = ["--smoke", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--vae", str(tmp_path / "no-vae"),
            "--tokenizer", str(tmp_path / "tok"), "--data", str(data)]
    with pytest.raises(SystemExit, match="--out and --assets"):
        export_model.main(argv)
    assert export_model.main(argv + ["--out", str(tmp_path / "pipe"), "--assets", str(tmp_path / "assets"), "--slim"]) == 0
    assert (tmp_path / "pipe" / "model_index.json").exists()
    assert torch.load(tmp_path / "pipe-record" / "checkpoint.pt", weights_only=False)["step"] == 1
    assert (tmp_path / "pipe-record" / "loss.jsonl").is_file()
    assert (shipped.stat().st_mtime_ns if shipped.exists() else None) == before


@pytest.mark.parametrize("stage", [train_unet, train_vae])
def test_a_smoke_run_needs_its_own_run_folder(stage):
    with pytest.raises(SystemExit, match="--smoke needs its own --run"):
        stage.main(["--smoke"])


def test_a_new_run_can_start_from_an_exported_pipeline(emoji_dir, tmp_path):
    from diffusers import UNet2DConditionModel
    vae, tok = tiny_unet_run(emoji_dir, tmp_path)
    unet, text = train_unet.train(tmp_path / "first", emoji_dir, vae, tok, steps=1, batch_size=2, warmup=1)
    train_unet.export_pipeline(vae, text, tok, unet, tmp_path / "pipe")
    train_unet.train(tmp_path / "second", emoji_dir, vae, tok, steps=0, init=tmp_path / "pipe")
    ckpt = torch.load(tmp_path / "second" / "checkpoint.pt", weights_only=False)
    shipped = UNet2DConditionModel.from_pretrained(tmp_path / "pipe" / "unet", torch_dtype=torch.float32).state_dict()
    assert ckpt["step"] == 0 and all(torch.equal(ckpt["unet"][k], shipped[k]) for k in shipped)
    with pytest.raises(SystemExit, match="not a pipeline folder"):
        train_unet.main(["--init", str(tmp_path / "nothing"), "--run", str(tmp_path / "third")])


@pytest.mark.parametrize("stage", [train_unet, train_vae, eval_vae])
def test_missing_data_is_one_line_before_any_work(stage, tmp_path):
    with pytest.raises(SystemExit, match="no manifest.jsonl in .*fetch_data"):
        stage.main(["--data", str(tmp_path), *([] if stage is eval_vae else ["--run", str(tmp_path / "run")])])
    assert not (tmp_path / "run").exists()
