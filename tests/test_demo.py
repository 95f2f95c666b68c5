"""`leakstyle demo` on the embedded model: the grid, the plot and the page, offline."""

import pytest

from leakstyle.cli import main
from leakstyle.pipeline import EMBEDDED_MODEL

pytestmark = pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").exists(), reason="embedded model not built yet")


def test_demo_writes_grid_plot_and_page(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "4", "-n", "8", "--quiet"]) == 0
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
