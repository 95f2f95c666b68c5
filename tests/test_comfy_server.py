"""ComfyUI's own server with the pack in custom_nodes: it loads, lists the nodes, runs workflows, shows them in Chromium.

One server start for the whole module (a temporary base directory, the repository as custom_nodes/leakstyle,
an in-memory database). The embedded model needs no checkpoint, so the workflows run offline."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_setup import REPO, comfyui_path, python_path_entries

if comfyui_path() is None:
    pytest.skip("ComfyUI not found (set COMFYUI_PATH or put it at ../shared/ComfyUI)", allow_module_level=True)

PACK_NODES = {"LeakstyleLoadStyle", "LeakstyleFitStyle", "LeakstyleSaveStyle", "LeakstyleColor", "LeakstyleLeakLatent",
              "LeakstyleLeakNoise", "LeakstyleCalibrateModel", "LeakstyleProbe", "LeakstyleEmbeddedModel"}
REQUESTED = "#1838d0"  # a saturated blue, far from the medium grey that pure noise is pulled toward
CHROMIUM = Path("/usr/bin/chromium")
WORKFLOWS = REPO / "workflows"
START_TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base: Path):
        self.base, self.port = base, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (base / "custom_nodes").mkdir(parents=True)
        (base / "custom_nodes" / "leakstyle").symlink_to(REPO, target_is_directory=True)
        self.log = open(base / "server.log", "w+")
        # One thread: the models are tiny, and on a shared machine more threads only wait for each other.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path_entries(comfyui_path())), "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, str(comfyui_path() / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(base), "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
             "--preview-method", "none", "--disable-api-nodes"], cwd=base, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.flush()
        return (self.base / "server.log").read_text(errors="replace")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, data: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{path} refused the prompt: {e.read().decode()[:2000]}") from None

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI exited with {self.process.returncode}:\n{self.output()[-4000:]}")
            try:
                self.get("/system_stats")
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"ComfyUI did not answer within {START_TIMEOUT} s:\n{self.output()[-4000:]}")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue an API-format prompt and wait for its history entry."""
        prompt_id = self.post("/prompt", {"prompt": prompt, "client_id": "leakstyle-tests"})["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            status = (entry or {}).get("status") or {}
            if status.get("status_str") in ("success", "error"):
                if status["status_str"] != "success":
                    raise AssertionError(f"the prompt failed: {json.dumps(entry['status'])[:3000]}")
                return entry
            time.sleep(0.3)
        raise AssertionError(f"the prompt did not finish within {timeout} s:\n{self.output()[-3000:]}")

    def images(self, entry: dict, node_id: str) -> list[np.ndarray]:
        files = entry["outputs"][node_id]["images"]
        return [np.asarray(Image.open(self.base / "output" / f["subfolder"] / f["filename"]).convert("RGB"), dtype=np.float64)
                for f in files]

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("comfyui-server"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def embedded_prompt(latent: dict, prefix: str, color: str = REQUESTED, mode: str = "raw", model=("1", 0),
                    seed: int = 1) -> dict:
    """An API-format KSampler workflow on the embedded model; node "5" makes the latent, "4" the colour."""
    return {
        "1": {"class_type": "LeakstyleEmbeddedModel", "inputs": {}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red heart"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "LeakstyleColor", "inputs": {"vae": ["1", 2], "color": color, "strength": 1.0, "mode": mode}},
        "5": latent,
        "6": {"class_type": "KSampler", "inputs": {"model": list(model), "seed": seed, "steps": 8, "cfg": 5.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }


def distance_to(image: np.ndarray, hexcode: str) -> float:
    target = np.array([int(hexcode[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)
    return float(np.linalg.norm(image.mean((0, 1)) - target))


WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def to_api(workflow: dict, object_info: dict, check_choices: bool = True) -> dict:
    """A UI-format workflow (what the page saves and loads) as the API format /prompt takes, as the page does it:
    every node type and input checked against /object_info, widget values in the order of the node's inputs (a
    widget fed by a link keeps its value in the file; forceInput inputs have none), links as [node id, slot].
    `check_choices`: a COMBO's value must be one of the server's choices (a checkpoint this server lacks is not)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] == "Note":
            continue
        assert node["type"] in object_info, f"{node['type']} is not a node type this server knows"
        spec = object_info[node["type"]]["input"]
        known = {**spec.get("required", {}), **spec.get("optional", {})}
        inputs, values = {}, list(node.get("widgets_values", []))
        connected = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        assert set(connected) <= set(known), (node["type"], set(connected) - set(known))
        for name, (kind, *options) in known.items():
            options = options[0] if options else {}
            widget = (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")
            if widget:
                assert values, f"{node['type']} has no widget value for {name}"
                value = values.pop(0)
                if options.get("control_after_generate"):
                    assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
                if check_choices and (isinstance(kind, list) or kind == "COMBO"):
                    assert value in (kind if isinstance(kind, list) else options["options"]), (node["type"], name, value)
            if name in connected:
                link = connected[name]
                assert kind in (link[5], "*") or isinstance(kind, list), (node["type"], name, link[5], kind)
                inputs[name] = [str(link[1]), link[2]]
            elif widget:
                inputs[name] = value
        assert not values, f"{node['type']} has widget values left over: {values}"
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def test_the_server_loads_the_pack_without_import_failure(server, object_info):
    log = server.output()
    assert "IMPORT FAILED" not in "\n".join(line for line in log.splitlines() if "leakstyle" in line), log[-3000:]
    assert PACK_NODES <= set(object_info)
    assert object_info["LeakstyleLeakLatent"]["input"]["required"]["style"][0] == "STYLE"
    assert object_info["LeakstyleEmbeddedModel"]["output"] == ["MODEL", "CLIP", "VAE"]


def test_a_prompt_with_the_leak_moves_the_saved_images_toward_the_colour(server):
    leak = server.run(embedded_prompt({"class_type": "LeakstyleLeakLatent", "inputs": {
        "model": ["1", 0], "style": ["4", 0], "width": 64, "height": 64, "batch_size": 2, "seed": 0, "vae": ["1", 2]}}, "leak"))
    # Without the leak: ComfyUI's empty latent of the same latent size (it assumes 1/8: 128 px -> 16 x 16).
    plain = server.run(embedded_prompt({"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128,
                                                                                   "batch_size": 2}}, "plain"))
    with_leak, without = server.images(leak, "8"), server.images(plain, "8")
    assert [i.shape for i in with_leak] == [(64, 64, 3)] * 2 == [i.shape for i in without]
    for a, b in zip(with_leak, without):
        assert distance_to(a, REQUESTED) < distance_to(b, REQUESTED) - 10


# Saturated colours, a near-white and a near-black: far from the medium grey that pure noise is pulled toward.
CALIBRATION_COLOURS = ["#1838d0", "#d01818", "#f0f0f0", "#202020"]


def test_calibrated_colour_brings_the_saved_images_border_closer_to_the_colour_than_raw(server):
    """Raw: the paper's latent. Calibrated: the latent given KSampler's seed (noise DC cancelled) and the MODEL through
    Calibrate Colour (x0's border ring held at the colour). Border CIEDE2000 of the saved PNGs, same seeds."""
    from leakstyle.metrics import color_errors

    errors = {"raw": [], "calibrated": []}
    for colour in CALIBRATION_COLOURS:
        for mode in errors:
            inputs = {"model": ["1", 0], "style": ["4", 0], "width": 64, "height": 64, "batch_size": 2, "seed": 0, "vae": ["1", 2]}
            prompt = embedded_prompt({"class_type": "LeakstyleLeakLatent", "inputs": inputs}, f"cal-{mode}", colour, mode,
                                     seed=7)
            if mode == "calibrated":
                inputs["noise_seed"] = 7
                prompt["9"] = {"class_type": "LeakstyleCalibrateModel", "inputs": {"model": ["1", 0], "style": ["4", 0]}}
                prompt["6"]["inputs"]["model"] = ["9", 0]
            images = server.images(server.run(prompt), "8")
            errors[mode].append(color_errors([i.astype(np.uint8) for i in images], colour, mask="border"))
    raw, calibrated = np.concatenate(errors["raw"]), np.concatenate(errors["calibrated"])
    report = {mode: [round(float(e), 1) for e in np.concatenate(v)] for mode, v in errors.items()}
    print(f"\nborder CIEDE2000 on {CALIBRATION_COLOURS} x 2 images: {json.dumps(report)}; median raw "
          f"{np.median(raw):.1f}, calibrated {np.median(calibrated):.1f}")
    assert np.median(calibrated) < np.median(raw) - 5, report
    assert sum(c.mean() < r.mean() for c, r in zip(errors["calibrated"], errors["raw"])) >= len(CALIBRATION_COLOURS) - 1, report


def with_the_embedded_model(workflow: dict) -> dict:
    """The UI-format workflow with its Load Checkpoint node made an Embedded Mini Model (the same three outputs)."""
    workflow = json.loads(json.dumps(workflow))
    for node in workflow["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node.update(type="LeakstyleEmbeddedModel", widgets_values=[], properties={"Node name for S&R": "LeakstyleEmbeddedModel"})
    return workflow


def test_the_ksampler_example_workflow_runs_with_the_embedded_model_for_its_checkpoint(server, object_info):
    """The SD 1.5 workflow as saved, converted to the API format, with Load Checkpoint (whose MODEL, CLIP and VAE
    slots the Embedded Mini Model has too) swapped for the embedded model, run at its size (128 px asks for
    16 x 16 latents at ComfyUI's 1/8) and 4 steps."""
    assert object_info["CheckpointLoaderSimple"]["output"] == object_info["LeakstyleEmbeddedModel"]["output"]
    assert list(object_info["CheckpointLoaderSimple"]["input"]["required"]) == ["ckpt_name"]
    prompt = to_api(with_the_embedded_model(json.loads((WORKFLOWS / "leakstyle-ksampler-sd15.json").read_text())), object_info)
    latent = next(n for n in prompt.values() if n["class_type"] == "LeakstyleLeakLatent")["inputs"]
    assert latent["noise_seed"][0] == next(n for n in prompt.values() if n["class_type"] == "KSampler")["inputs"]["seed"][0]
    latent.update(width=128, height=128)
    next(n for n in prompt.values() if n["class_type"] == "KSampler")["inputs"]["steps"] = 4
    entry = server.run(prompt)
    saver = next(k for k, n in prompt.items() if n["class_type"] == "SaveImage")
    images = server.images(entry, saver)
    assert len(images) == 1 and images[0].shape == (64, 64, 3)


def test_the_custom_advanced_example_workflow_runs_as_saved(server, object_info):
    workflow = json.loads((WORKFLOWS / "leakstyle-custom-advanced-embedded.json").read_text())
    entry = server.run(to_api(workflow, object_info))
    images = server.images(entry, "12")
    assert len(images) == 2 and images[0].shape == (64, 64, 3)
    assert "sqrt(abar_0)" in entry["outputs"]["13"]["text"][0]


def test_a_style_loaded_from_a_path_reaches_the_probe(server, reference):
    entry = server.run({
        "1": {"class_type": "LeakstyleEmbeddedModel", "inputs": {}},
        "2": {"class_type": "LeakstyleLoadStyle", "inputs": {"path": str(reference / "D")}},
        "3": {"class_type": "LeakstyleProbe", "inputs": {"model": ["1", 0], "steps": 20, "scheduler": "karras",
                                                         "width": 768, "height": 768, "style": ["2", 0]}},
    })
    text = entry["outputs"]["3"]["text"][0]
    assert "sqrt(abar_0) = 0.068265" in text and "style channel means +0.4" in text  # D (COCO, DC only): first channel about 0.42


# A file dropped on the canvas, as a user drags a workflow file from the desktop onto the page.
DROP_FILE = """(text) => {
    const transfer = new DataTransfer();
    transfer.items.add(new File([text], "workflow.json", {type: "application/json"}));
    const canvas = document.querySelector("#graph-canvas") || document.body;
    canvas.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
}"""


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    """ComfyUI's page in headless Chromium, once for the module (the first-run template browser closed)."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium")), executable_path=str(CHROMIUM), headless=True,
            args=["--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
            viewport={"width": 1600, "height": 900})
        try:
            page = context.new_page()
            page.goto(server.url, timeout=120_000)
            page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
            page.wait_for_timeout(1000)
            page.keyboard.press("Escape")
            yield page
        finally:
            context.close()


@pytest.mark.parametrize("name", ["leakstyle-custom-advanced-embedded.json", "leakstyle-ksampler-sd15.json"])
def test_the_page_loads_the_example_workflow_dropped_on_it_with_the_packs_nodes(page, object_info, tmp_path, name):
    workflow = json.loads((WORKFLOWS / name).read_text())
    errors = []  # what loading the workflow causes
    on_error = lambda e: errors.append(str(e))  # noqa: E731
    on_console = lambda m: errors.append(m.text) if m.type == "error" and "eakstyle" in m.text else None  # noqa: E731
    page.on("pageerror", on_error)
    page.on("console", on_console)
    try:
        page.evaluate(DROP_FILE, (WORKFLOWS / name).read_text())
        page.wait_for_timeout(2000)
        shown = page.evaluate("() => window.app.graph._nodes.map(n => [n.type, !!window.LiteGraph.registered_node_types[n.type]])")
    finally:
        page.remove_listener("pageerror", on_error)
        page.remove_listener("console", on_console)
    assert sorted(t for t, _ in shown) == sorted(n["type"] for n in workflow["nodes"])
    assert all(registered for _, registered in shown), shown
    assert {t for t, _ in shown if t.startswith("Leakstyle")} <= PACK_NODES
    assert page.get_by_text("Some Nodes Are Missing").count() == 0
    assert not errors, errors
    page.evaluate("() => { const c = window.app.canvas; c.ds.scale = 0.6; c.ds.offset = [40, 40]; c.setDirty(true, true); }")
    page.wait_for_timeout(500)
    screenshot = Path(os.environ.get("LEAKSTYLE_COMFY_SCREENSHOT_DIR", tmp_path)) / name.replace(".json", ".png")
    page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 10_000
    # The page's own conversion to the API format (what it posts to /prompt) is the one the tests run (leaving out
    # widgets the page adds for itself, such as Preview Any's text box, which the server does not know). The page
    # cannot convert a checkpoint loader whose checkpoint the server lacks: the workflow with the embedded model.
    if any(n["type"] == "CheckpointLoaderSimple" for n in workflow["nodes"]):
        workflow = with_the_embedded_model(workflow)
        page.evaluate(DROP_FILE, json.dumps(workflow))
        page.wait_for_timeout(2000)
    theirs = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    ours = to_api(workflow, object_info)

    def known(node):
        spec = object_info[node["class_type"]]["input"]
        return node["class_type"], {k: v for k, v in node["inputs"].items() if k in {**spec.get("required", {}), **spec.get("optional", {})}}

    assert {k: known(v) for k, v in theirs.items()} == {k: (v["class_type"], v["inputs"]) for k, v in ours.items()}
