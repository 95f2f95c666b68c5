"""Diffusion in Style fine-tuning on a tiny model: the loss, training, saving, loading, resuming, generating, bad inputs."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, DDPMScheduler
from PIL import Image
from safetensors.torch import load_file

from leakstyle import dct, files, pipeline
from leakstyle.cli import main
from leakstyle.finetune import LORA_FILE, checkpoints, finetune, style_initial_latents, training_loss
from leakstyle.loss import DenoisingLoss
from leakstyle.pipeline import generate, load_pipeline
from leakstyle.schedule import leak_at_first_step
from leakstyle.schedulers import make_scheduler
from leakstyle.testing import SD15_SCHEDULE

from helpers import on_each_loaded_pipeline, run_error, run_whole_and_resumed
from helpers import write_images as shared_write_images

FAST = dict(steps=2, batch_size=2, progress=False)


def write_images(folder, n=6, seed=0, captions=True):
    """Style images with a metadata.jsonl of captions (the diffusers ImageFolder convention)."""
    shared_write_images(folder, n=n, seed=seed)
    if captions:
        lines = [json.dumps({"file_name": f"img{i}.png", "text": f"emoji number {i}"}) for i in range(n)]
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("style-images"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, images, sd_path):
    return finetune(images, tmp_path_factory.mktemp("runs") / "full", model=sd_path, **FAST)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, images, sd_path):
    return finetune(images, tmp_path_factory.mktemp("runs") / "lora", model=sd_path, lora=2, **FAST)


def unet_weights(folder):
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


# -- the loss ----------------------------------------------------------------------------------------
def noise_seen_by_the_unet(loss, x_0):
    """Run the loss with a UNet that records x_t; return eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
    seen = {}

    def unet(x_t, timestep, **cond):
        seen.update(x_t=x_t, t=timestep)
        return SimpleNamespace(sample=torch.zeros_like(x_t))

    loss(unet, x_0, torch.Generator().manual_seed(0))
    abar_t = loss.alphas_cumprod[seen["t"]].view(-1, 1, 1, 1).float()
    return (seen["x_t"] - abar_t.sqrt() * x_0) / (1 - abar_t).sqrt()


def schedule():
    return DDPMScheduler(**SD15_SCHEDULE)


def test_style_noise_has_the_style_distributions_moments(full_run):
    style = files.load(full_run / "style.safetensors")
    n = 6000
    eps = noise_seen_by_the_unet(training_loss("style", style, schedule(), "cpu"), torch.randn(n, 4, 16, 16)).double()
    B = dct.basis_images(16, 16, style.lf_indices, dtype=torch.float64)
    mean = style.mean.double() + dct.reconstruct(style.lf_mean.double().view(1, 3, 4), B)[0]
    torch.testing.assert_close(eps.mean(0), mean, rtol=0, atol=6 * eps.std(0).max().item() / math.sqrt(n))
    # LF coefficients: Sigma_LF plus what the high-frequency remainder's variance projects onto the LF basis
    lf = dct.project(eps, B).reshape(n, 12)
    hf = torch.einsum("khw,lhw,chw->kcl", B, B, style.var.double())  # [k, c, l]
    expected = style.lf_cov.double().clone()
    for c in range(4):
        expected[c::4, c::4] += hf[:, c, :]
    torch.testing.assert_close(torch.cov(lf.T), expected, rtol=0.1, atol=0.05 * expected.diagonal().max().item())


def test_standard_noise_is_standard_normal(full_run):
    style = files.load(full_run / "style.safetensors")
    eps = noise_seen_by_the_unet(training_loss("standard", style, schedule(), "cpu"), torch.randn(2000, 4, 16, 16))
    assert abs(eps.mean().item()) < 0.01 and abs(eps.std().item() - 1) < 0.01
    assert eps.mean((0, 2, 3)).abs().max() < 0.01


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_target_is_eps_or_v(prediction_type):
    eps, x_0 = torch.randn(8, 4, 8, 8), torch.randn(8, 4, 8, 8)
    loss = DenoisingLoss(lambda x, g: eps, schedule().alphas_cumprod, prediction_type)
    seen = {}

    def unet(x_t, timestep, **cond):
        seen["t"] = timestep
        return SimpleNamespace(sample=torch.zeros_like(x_t))

    value = loss(unet, x_0, torch.Generator().manual_seed(1))
    a = loss.alphas_cumprod[seen["t"]].view(-1, 1, 1, 1).float()
    target = eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x_0
    torch.testing.assert_close(value, target.square().mean())


def test_sd_prompts_are_encoded_as_the_pipeline_encodes_them(sd_path):
    from leakstyle.conditioning import encode_text
    pipe = load_pipeline(sd_path, device="cpu")
    captions = ["a cat", "emoji number 3"]
    hidden, pooled = encode_text(pipe, captions)
    expected, _ = pipe.encode_prompt(captions, "cpu", 1, do_classifier_free_guidance=False)
    assert pooled is None
    torch.testing.assert_close(hidden, expected, rtol=0, atol=0)


# -- training, saving, loading -----------------------------------------------------------------------
def test_full_finetune_writes_a_pipeline_folder_that_from_pretrained_loads(full_run, sd_path):
    pipe = DiffusionPipeline.from_pretrained(full_run)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    trained, base = unet_weights(full_run), unet_weights(sd_path)
    assert trained.keys() == base.keys() and any(not torch.equal(trained[k], base[k]) for k in base)
    record = json.loads((full_run / "finetune.json").read_text())
    assert (record["status"], record["step"], record["method"], record["noise"]) == ("done", 2, "full", "style")
    assert record["base_model"] == str(sd_path) and record["options"]["kind"] == "dct"
    assert files.load(full_run / "style.safetensors").image_count == 6


def test_lora_finetune_writes_adapter_weights_that_load_on_the_base_model(lora_run, sd_path):
    assert (lora_run / LORA_FILE).is_file() and not (lora_run / "model_index.json").exists()
    assert json.loads((lora_run / "finetune.json").read_text())["method"] == "lora"
    x, t, c = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 16, 32)
    tuned, base = load_pipeline(lora_run, device="cpu"), load_pipeline(sd_path, device="cpu")
    with torch.no_grad():
        assert not torch.allclose(tuned.unet(x, t, c).sample, base.unet(x, t, c).sample)
    assert tuned.leakstyle_noise is not None


def test_a_resumed_run_gives_the_same_weights_as_an_uninterrupted_one(tmp_path, images, sd_path):
    whole_run, cut_run = run_whole_and_resumed(images, tmp_path, model=sd_path, steps=4, batch_size=2, grad_accum=2,
                                               checkpoint_every=2, progress=False)
    whole, cut = unet_weights(whole_run), unet_weights(cut_run)
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    assert [s for s, _ in checkpoints(tmp_path / "cut")] == [4]
    assert not list((tmp_path / "cut" / "checkpoints").glob(".*"))


# -- generating --------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_generate_starts_a_finetuned_model_from_its_style_noise(full_run, first_unet_input, scheduler):
    pipe = load_pipeline(full_run, device="cpu")
    hook = first_unet_input(pipe.unet)
    generate(pipe, "a cat", seed=3, num_inference_steps=2, guidance_scale=1.0, scheduler=scheduler)
    eps_style = pipe.leakstyle_noise.sample(1, 16, 16, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(hook.sample, eps_style, rtol=1e-4, atol=1e-4)


def test_an_explicit_style_adds_its_leak_to_the_style_noise(full_run, first_unet_input):
    pipe = load_pipeline(full_run, device="cpu")
    hook = first_unet_input(pipe.unet)
    style = pipe.leakstyle_noise.with_color(torch.tensor([1.0, -1.0, 0.5, 0.0]))
    generate(pipe, "a cat", style=style, seed=5, num_inference_steps=2, guidance_scale=1.0, scheduler="euler")
    g = torch.Generator().manual_seed(5)
    eps_style, x_tilde = pipe.leakstyle_noise.sample(1, 16, 16, generator=g), style.sample(1, 16, 16, generator=g)
    leak = leak_at_first_step(make_scheduler("euler", pipe.scheduler.config), 2)
    torch.testing.assert_close(hook.sample, leak.sqrt_abar_T * x_tilde + leak.sqrt_one_minus_abar_T * eps_style,
                               rtol=1e-4, atol=1e-4)
    latents = style_initial_latents(pipe, pipe.leakstyle_noise, style, 1, num_inference_steps=2,
                                    generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(latents * leak.input_scale, hook.sample, rtol=1e-5, atol=1e-5)


def test_a_standard_noise_finetune_starts_from_pure_noise(tmp_path, images, sd_path, first_unet_input):
    out = finetune(images, tmp_path / "std", model=sd_path, noise="standard", steps=1, progress=False)
    pipe = load_pipeline(out, device="cpu")
    assert pipe.leakstyle_noise is None
    hook = first_unet_input(pipe.unet)
    generate(pipe, "a cat", seed=2, num_inference_steps=2, guidance_scale=1.0)
    torch.testing.assert_close(hook.sample, torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2)))


def test_cli_finetune_then_generate_draws_x_T_from_the_style(tmp_path, images, sd_path, monkeypatch, first_unet_input):
    out = tmp_path / "cli"
    assert main(["finetune", str(images), "--model", str(sd_path), "--out", str(out), "--steps", "1", "--lora", "2",
                 "--batch-size", "2", "--quiet"]) == 0
    hooks = on_each_loaded_pipeline(monkeypatch, pipeline, lambda pipe: first_unet_input(pipe.unet))
    assert main(["generate", "--model", str(out), "--prompt", "a cat", "--seed", "4", "--steps", "2", "--guidance", "1",
                 "--out", str(tmp_path / "gen"), "--quiet"]) == 0
    eps_style = files.load(out / "style.safetensors").sample(1, 16, 16, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(hooks[0].sample, eps_style, rtol=1e-4, atol=1e-4)
    assert json.loads(Image.open(tmp_path / "gen" / "0000-seed4.png").text["leakstyle"])["noise"] == "style"


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # epsilon prediction at abar_T = 0 gives NaN
def test_a_zero_snr_scheduler_on_a_finetuned_model_says_so(full_run):
    from diffusers import DDIMScheduler
    from leakstyle.schedule import ZeroTerminalSNRWarning
    pipe = load_pipeline(full_run, device="cpu")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, rescale_betas_zero_snr=True,
                                               timestep_spacing="trailing")
    with pytest.warns(ZeroTerminalSNRWarning, match="fine-tuned with Diffusion in Style already"):
        generate(pipe, "a cat", color="#ff0000", num_inference_steps=2, guidance_scale=1.0)


# -- bad inputs: one line, exit 2, before any training -----------------------------------------------
def finetune_argv(images, out, *extra, model):
    return ["finetune", str(images), "--model", str(model), "--out", str(out), "--steps", "1", "--quiet", *extra]


def test_no_images_is_refused(tmp_path, sd_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "empty" in run_error(finetune_argv(tmp_path / "empty", tmp_path / "out", model=sd_path), capsys)
    assert not (tmp_path / "out").exists()


def test_too_few_images_for_the_distribution_are_refused(tmp_path, sd_path, capsys):
    write_images(tmp_path / "one", n=1)
    assert "at least 2" in run_error(finetune_argv(tmp_path / "one", tmp_path / "out", model=sd_path), capsys)


def test_captions_naming_missing_images_are_refused(tmp_path, sd_path, capsys):
    folder = write_images(tmp_path / "imgs", n=3)
    with open(folder / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "gone.png", "text": "a ghost"}) + "\n")
    assert "gone.png" in run_error(finetune_argv(folder, tmp_path / "out", model=sd_path), capsys)


def test_images_without_a_caption_are_refused(tmp_path, sd_path, capsys):
    folder = write_images(tmp_path / "imgs", n=3)
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "img0.png", "text": "one"}) + "\n")
    assert "--prompt" in run_error(finetune_argv(folder, tmp_path / "out", model=sd_path), capsys)


def test_no_captions_for_a_text_to_image_model_is_refused(tmp_path, sd_path, capsys):
    folder = write_images(tmp_path / "imgs", n=3, captions=False)
    assert "metadata.jsonl" in run_error(finetune_argv(folder, tmp_path / "out", model=sd_path), capsys)


def test_an_output_folder_holding_something_else_is_refused_and_kept(tmp_path, images, sd_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert "other files" in run_error(finetune_argv(images, tmp_path / "out", "--force", model=sd_path), capsys)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_resume_with_nothing_to_resume_is_refused(tmp_path, images, sd_path, capsys):
    assert "nothing to resume" in run_error(finetune_argv(images, tmp_path / "out", "--resume", model=sd_path), capsys)


def test_a_finished_run_needs_resume_or_force_and_other_options_are_refused(full_run, images, sd_path, capsys):
    argv = ["finetune", str(images), "--model", str(sd_path), "--out", str(full_run), "--steps", "2", "--batch-size", "2", "--quiet"]
    assert "--resume" in run_error(argv, capsys)
    assert "lr" in run_error(argv + ["--lr", "0.5", "--resume"], capsys)
    assert main(argv + ["--resume"]) == 0  # already done: nothing to train


def test_resuming_after_the_base_model_changed_is_refused(tmp_path, images, sd_path, capsys):
    import shutil
    from diffusers import UNet2DConditionModel
    base = shutil.copytree(sd_path, tmp_path / "base")
    out = finetune(images, tmp_path / "run", model=base, steps=1, progress=False)
    recorded = json.loads((out / "finetune.json").read_text())["base_unet_sha256"]
    assert len(recorded) == 64
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    with torch.no_grad():
        unet.conv_in.weight.add_(0.01)
    unet.save_pretrained(base / "unet")  # the base model is retrained under the same path
    before = (out / "finetune.json").read_text()
    argv = ["finetune", str(images), "--model", str(base), "--out", str(out), "--steps", "2", "--resume", "--quiet"]
    assert "base UNet changed" in run_error(argv, capsys)
    assert (out / "finetune.json").read_text() == before  # nothing touched


def test_force_starts_a_previous_run_over_with_new_options(tmp_path, images, sd_path):
    out = finetune(images, tmp_path / "run", model=sd_path, steps=1, progress=False)
    finetune(images, out, model=sd_path, steps=1, lr=2e-5, force=True, progress=False)
    record = json.loads((out / "finetune.json").read_text())
    assert (record["status"], record["options"]["lr"]) == ("done", 2e-5)


# -- several processes -------------------------------------------------------------------------------
def test_two_cpu_processes_under_torchrun_train_as_one_data_parallel_group(tmp_path, images, sd_path, full_run):
    """Without a GPU, accelerate makes the processes one group only when told cpu=True; otherwise each trained
    alone on all images (the one-process result) and both wrote --out at once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "leakstyle.cli",
               "finetune", str(images), "--model", str(sd_path), "--steps", "2", "--batch-size", "2", "-o", "two", "--quiet"]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (checkpoint,) = (tmp_path / "two" / "checkpoints").iterdir()
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {f.name for f in checkpoint.iterdir()}  # two processes
    two, one = unet_weights(tmp_path / "two"), unet_weights(full_run)
    assert any(not torch.equal(two[k], one[k]) for k in one)  # 2 x 2 images a step, not one process's 2


# -- the experiment ----------------------------------------------------------------------------------
def load_experiment():
    import importlib.util
    from pathlib import Path

    file = Path(__file__).resolve().parents[1] / "experiments" / "diffusion_in_style.py"
    spec = importlib.util.spec_from_file_location("diffusion_in_style", file)
    experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(experiment)
    return experiment


def test_the_experiment_runs_in_quick_mode_resumes_after_a_kill_and_reports_its_cache(tmp_path, sd_path, monkeypatch):
    pytest.importorskip("leakstyle.metrics")
    experiment = load_experiment()
    data = experiment.synthetic_data(tmp_path / "data")
    argv = ["--quick", "--model", str(sd_path), "--data", str(data), "--heldout", "2", "--out", str(tmp_path / "out"),
            "--styles", "lineart"]  # twitter runs the same code on the set as it is
    calls, real_finetune = [], experiment.finetune

    def killed_at_the_third_fine_tune(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill between two cells' fine-tunes
        return real_finetune(*args, **kwargs)

    monkeypatch.setattr(experiment, "finetune", killed_at_the_third_fine_tune)
    with pytest.raises(KeyboardInterrupt):
        experiment.main(argv)
    calls.clear()
    monkeypatch.setattr(experiment, "finetune", lambda *a, **k: (calls.append(a[1]), real_finetune(*a, **k))[1])
    results = experiment.main(argv)
    assert len(calls) == 2 * 2 * 2 - 2  # 2 seeds x 2 noises x 2 timestep draws, less the 2 cells finished before the kill
    per_seed = {(r["style"], r.get("seed"), r.get("noise"), r.get("timesteps"), r.get("steps")) for r in results}
    assert per_seed >= {("lineart", seed, n, t, 2) for seed in (0, 1) for n in ("style", "standard") for t in ("uniform", "logsnr")}
    over = {r["row"]: r for r in results if "over_seeds" in r and r["style"] == "lineart"}
    assert {"style minus standard noise, logsnr t, 2 steps", "interaction (style - standard under logsnr) - (under uniform), 2 steps"} <= set(over)
    assert all(np.isfinite(r["distance"]) and r["low"] <= r["distance"] <= r["high"] for r in results)
    assert (tmp_path / "out" / "results.md").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("a rerun trained again")

    monkeypatch.setattr(experiment, "finetune", no_training)
    assert [r["distance"] for r in experiment.main(argv)] == [r["distance"] for r in results]

    # --report with a cell gone: nothing is made, contrasts needing it use the seeds that have it, it is listed
    (cell,) = (tmp_path / "out" / "cells").glob("*/lineart/seed-1/style-logsnr-2.npz")
    cell.unlink()
    monkeypatch.setattr(experiment, "generate_for", no_training)
    report = {r["row"]: r for r in experiment.main(argv + ["--report"]) if "over_seeds" in r}
    assert report["style minus standard noise, logsnr t, 2 steps"]["over_seeds"] == [0]
    assert report["style minus standard noise, uniform t, 2 steps"] == over["style minus standard noise, uniform t, 2 steps"]
    assert not cell.exists()
    text = (tmp_path / "out" / "results.md").read_text()
    assert "Not run yet (lineart): seed 1: style noise, logsnr t, 2 steps" in text


def test_line_art_is_the_images_edges_dark_on_white():
    experiment = load_experiment()
    image = np.full((32, 32, 3), 255, np.uint8)
    image[8:24, 8:24] = (200, 30, 30)  # a red square on white
    lines = np.asarray(experiment.line_art(Image.fromarray(image)))
    assert set(np.unique(lines)) == {0, 255} and (lines[..., 0] == lines[..., 2]).all()
    dark = lines[..., 0] == 0
    ring = np.zeros_like(dark)
    ring[7:25, 7:25], ring[8:24, 8:24] = True, False
    assert (dark == ring).all()  # a one-pixel outline on the bright side of the square's edge; flat areas stay white
