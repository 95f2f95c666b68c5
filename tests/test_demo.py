"""`leakstyle demo` on the embedded model: the grid, the plot and the page, offline."""

import json
import re
from pathlib import Path

import pytest
import torch

from leakstyle.cli import main
from leakstyle.pipeline import EMBEDDED_MODEL

pytestmark = pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").exists(), reason="embedded model not built yet")


def test_demo_writes_grid_plot_and_page(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "-n", "4", "--quiet"]) == 0
    assert str((out / "index.html").resolve()) in capsys.readouterr().out
    for name in ("grid.png", "mean-colors.png", "index.html"):
        assert (out / name).stat().st_size > 1000
    page = (out / "index.html").read_text()
    assert 'src="grid.png"' in page and 'src="mean-colors.png"' in page and "pure noise" in page


def test_demo_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "index.html").write_text("mine")
    assert main(["demo", "--out", str(out), "--steps", "2", "-n", "2", "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "index.html").read_text() == "mine"


# -- the embedded model's documentation runs as written ------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_the_model_cards_snippet_runs_as_written(monkeypatch):
    card = (EMBEDDED_MODEL / "README.md").read_text()
    (snippet,) = python_blocks(card)
    assert 'from_pretrained("src/leakstyle/models/mini-sd")' in snippet
    code = snippet.replace('"src/leakstyle/models/mini-sd"', repr(str(EMBEDDED_MODEL)))
    scope = {}
    exec(compile(code, "model card", "exec"), scope)
    pipe = scope["pipe"]
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}  # one dtype, not fp16 + fp32
    assert scope["image"].size == (64, 64)


def test_the_text_encoder_config_asks_for_float32():
    config = json.loads((EMBEDDED_MODEL / "text_encoder" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float32"


@pytest.mark.skipif(not (REPO / "README.md").exists(), reason="README.md is not beside the tests")
def test_the_readmes_api_block_runs_as_written(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    block = python_blocks(readme[readme.index("## The API"):])[0]
    assert "load_pipeline()" in block and "ASSETS" in block  # the embedded model and the bundled images: offline
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(block, "README", "exec"), scope)
    assert len(scope["images"]) == 2 and scope["x"].shape == (16, 4, 16, 16)
    assert (tmp_path / "style.safetensors").exists() and (tmp_path / "red-heart.png").exists()
