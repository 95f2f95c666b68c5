"""The benchmark scripts are not run by the suite (they time things); they must still compile and list their figures."""

import importlib.util
import py_compile
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
def test_every_benchmark_script_compiles(script):
    py_compile.compile(str(BENCHMARKS / script), doraise=True)


def test_run_lists_every_figure_once():
    spec = importlib.util.spec_from_file_location("benchmarks_run", BENCHMARKS / "run.py")
    run = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run  # dataclasses look their module up there
    spec.loader.exec_module(run)
    assert set(run.FIGURES) == {"sampling", "generation", "memory", "fit_time", "comfy", "color", "fit_scale"}
    assert all(callable(f) for f in run.FIGURES.values())
