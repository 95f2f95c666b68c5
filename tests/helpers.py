"""Helpers the test files share: a folder of small test images, and running the CLI into a user error."""

import numpy as np
from PIL import Image

from leakstyle.cli import main


def write_images(folder, n=6, size=32, seed=0):
    """n PNGs of random flat colours with some noise, img0.png .. img{n-1}.png."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


def run_error(argv, capsys):
    """Run the CLI expecting a user error; return its single stderr line."""
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    errors = [line for line in err if line.startswith("leakstyle: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def run_whole_and_resumed(images, tmp_path, **options):
    """leakstyle finetune run twice with `options` (checkpoint_every=2, at least 4 steps): once through into
    tmp_path/whole, and once killed after step 3 (checkpoint 2 written), with a half-written later save left
    behind, then resumed, into tmp_path/cut. Returns the two output folders."""
    import pytest

    from leakstyle.finetune import checkpoints, finetune

    finetune(images, tmp_path / "whole", **options)

    def kill_after_step_3(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(images, tmp_path / "cut", callback=kill_after_step_3, **options)
    assert [s for s, _ in checkpoints(tmp_path / "cut")] == [2]
    (tmp_path / "cut" / "checkpoints" / ".step-000004.tmp").mkdir()  # a save killed half-way: ignored
    finetune(images, tmp_path / "cut", resume=True, **options)
    return tmp_path / "whole", tmp_path / "cut"


def on_each_loaded_pipeline(monkeypatch, module, do):
    """Patch `module.load_pipeline` so that each pipeline it loads goes through do(pipe) before it is returned;
    returns the list of what do() returned, one entry per load, filled as the pipelines load."""
    results, load = [], module.load_pipeline

    def load_and_do(*args, **kwargs):
        pipe = load(*args, **kwargs)
        results.append(do(pipe))
        return pipe

    monkeypatch.setattr(module, "load_pipeline", load_and_do)
    return results


def keyword_inputs(monkeypatch, module, part):
    """The keyword arguments the denoiser `part` ('unet', 'transformer') of every pipeline that
    `module.load_pipeline` loads receives at each call, in order."""
    seen = []
    on_each_loaded_pipeline(monkeypatch, module, lambda pipe: getattr(pipe, part).register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True))
    return seen
