"""Packaging of the node pack: a core install without the extras, a one-line error naming a missing extra,
the repository as a ComfyUI custom node (root __init__.py), the shim for pip installs, [tool.comfy]."""

import subprocess
import sys
import tomllib

import pytest

from comfyui_setup import REPO, comfyui_path

from leakstyle.cli import main


@pytest.mark.parametrize("module, extra, argv", [
    ("diffusers", "diffusers", ["generate", "--prompt", "a heart", "--out", "{tmp}/out"]),
    ("gradio", "ui", ["ui"]),
])
def test_a_missing_extra_is_one_line_naming_the_pip_command(monkeypatch, capsys, tmp_path, module, extra, argv):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ModuleNotFoundError, as when it is not installed
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"leakstyle: error: {module} is not installed; this needs pip install 'leakstyle[{extra}]'"


def test_the_core_dependencies_are_only_what_the_nodes_import():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0].split("~")[0].strip().lower() for d in project["dependencies"]}
    assert core == {"torch", "safetensors", "pillow", "numpy", "tqdm"}
    extras = project["optional-dependencies"]
    assert {"diffusers", "finetune", "ui", "report", "all", "comfyui-test"} <= set(extras)
    assert not any(d.lower().startswith("torch") for d in extras["comfyui-test"])  # torch stays the pinned wheel


def test_the_comfy_registry_section_parses_with_comfyuis_own_parser():
    if comfyui_path() is None:
        pytest.skip("ComfyUI not found")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from comfy_config import config_parser; "
            "c = config_parser.extract_node_configuration(sys.argv[2]); "
            "print(c.tool_comfy.publisher_id, '|', c.tool_comfy.display_name, '|', c.project.name, '|', "
            "c.project.supported_comfyui_version)")
    out = subprocess.run([sys.executable, "-c", code, str(comfyui_path()), str(REPO)], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out.startswith("leakstyle | leakstyle: signal-leak sampling") and out.endswith("| leakstyle | >=0.3.64")


def test_the_root_init_defines_no_nodes_outside_comfyui():
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('pack', sys.argv[1]); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "print(len(m.NODE_CLASS_MAPPINGS), 'leakstyle' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "__init__.py")], capture_output=True, text=True,
                         check=True, cwd="/").stdout.strip()
    assert out == "0 False"


def test_the_shim_for_a_pip_install_loads_the_nodes_inside_comfyui(tmp_path):
    if comfyui_path() is None:
        pytest.skip("ComfyUI not found")
    shim = tmp_path / "leakstyle_nodes.py"
    shim.write_text("from leakstyle.comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS\n")
    code = ("import importlib.util, sys; sys.path[:0] = [sys.argv[2], sys.argv[3]]; import folder_paths; "
            "s = importlib.util.spec_from_file_location('shim', sys.argv[1]); m = importlib.util.module_from_spec(s); "
            "s.loader.exec_module(m); print(sorted(m.NODE_CLASS_MAPPINGS)[0], len(m.NODE_CLASS_MAPPINGS))")
    out = subprocess.run([sys.executable, "-c", code, str(shim), str(REPO / "src"), str(comfyui_path())],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "LeakstyleCalibrateModel 9"
