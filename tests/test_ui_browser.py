"""`leakstyle ui` end to end in headless Chromium: fill a prompt, pick a colour, generate, read the images back.

On the embedded model (which reads the leak) the images' mean colour must move toward the requested colour,
compared with the pure-noise image of the same seed. On the tiny random model only the browser flow is checked.
"""

import io
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leakstyle import ui
from leakstyle.pipeline import EMBEDDED_MODEL

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # Playwright adds --headless and --no-sandbox
REQUESTED = "#1838d0"  # a saturated blue, far from the medium grey that pure noise is pulled toward

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (make test installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(page, src: str) -> Image.Image:
    """The image file the page shows at `src` (the browser's resolved address), as the browser gets it."""
    response = page.request.get(src)
    assert response.ok, src
    return Image.open(io.BytesIO(response.body()))


def decode(image: Image.Image) -> np.ndarray:
    """Pixels [H, W, 3]."""
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def distance_to(rgb: np.ndarray, hexcode: str) -> float:
    target = np.array([int(hexcode[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)
    return float(np.linalg.norm(rgb - target))


@pytest.fixture(params=[
    pytest.param(("tiny", False), id="tiny-model-flow-only"),
    pytest.param(("embedded", True), id="embedded-model-colour", marks=pytest.mark.skipif(
        not (EMBEDDED_MODEL / "model_index.json").exists(), reason="embedded model not built yet")),
])
def served(request, sd_path):
    """(address, steps, whether the colour must move): the app on a free loopback port, in this process."""
    name, check_colour = request.param
    model = ui.open_model(sd_path if name == "tiny" else None, device="cpu")
    app, url = ui.launch(model, host="127.0.0.1", port=free_port())
    yield url, 3 if name == "tiny" else 10, check_colour
    app.close()


@pytest.fixture()
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        try:
            yield context.new_page()
        finally:
            context.close()


def set_slider(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_generate_in_the_browser_shows_the_leak_beside_pure_noise(served, page, tmp_path):
    url, steps, check_colour = served
    started = time.perf_counter()
    page.goto(url)
    page.locator("#prompt textarea").fill("grinning face")
    set_slider(page, "num-images", 2)
    set_slider(page, "steps", steps)
    page.locator("#seed input").fill("11")

    page.locator("#color button.dialog-button").click()  # the picker's dialog has a hex field
    hex_field = page.locator("#color .color-picker input[type=text]")
    hex_field.fill(REQUESTED)
    hex_field.press("Enter")
    page.locator("h1").click()  # close the dialog
    page.wait_for_function("document.querySelector('#use-color input').checked")  # picking a colour turns it on

    page.locator("#generate").click()
    page.wait_for_function("document.querySelectorAll('#results img.baseline').length === 2", timeout=90_000)
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

    status = page.locator("#status").inner_text()
    assert "2 images from the leak and 2 from pure noise (seeds 11–12)" in status, status
    assert f"requested {REQUESTED}" in page.locator("#results table").inner_text()
    links = page.eval_on_selector_all("#downloads a[download]", "els => els.map(e => [e.download, e.href])")
    assert sorted(name for name, _ in links) == ["0000-seed11-baseline.png", "0000-seed11.png",
                                                 "0001-seed12-baseline.png", "0001-seed12.png"]
    png = page.request.get(dict(links)["0000-seed11.png"])  # the download carries its parameters
    assert png.ok and f'"color": "{REQUESTED}"' in Image.open(io.BytesIO(png.body())).text["leakstyle"]
    shown = [fetch(page, s) for s in page.eval_on_selector_all("#results img.leak", "els => els.map(e => e.src)")]
    assert f'"color": "{REQUESTED}"' in shown[0].text["leakstyle"]  # the image shown is the PNG, parameters and all
    leak = [decode(im) for im in shown]
    baseline = [decode(fetch(page, s))
                for s in page.eval_on_selector_all("#results img.baseline", "els => els.map(e => e.src)")]
    assert len(leak) == len(baseline) == 2 and all(im.size for im in leak + baseline)
    if check_colour:
        for i, (a, b) in enumerate(zip(leak, baseline)):
            moved, pure = distance_to(a.mean((0, 1)), REQUESTED), distance_to(b.mean((0, 1)), REQUESTED)
            assert moved < pure, f"seed {11 + i}: leak {moved:.1f} from {REQUESTED}, pure noise {pure:.1f}"
    assert time.perf_counter() - started < 120
