"""Shared fixtures: tiny random-weight pipelines saved with save_pretrained and loaded with from_pretrained."""

import os
import warnings
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tiny models: threads only add overhead (and stall when the other core is busy)

from leakstyle import testing
from leakstyle.pipeline import load_pipeline

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "signal-leak-bias"
if os.environ.get("LEAKSTYLE_REFERENCE"):
    REFERENCE = Path(os.environ["LEAKSTYLE_REFERENCE"])

warnings.filterwarnings("ignore", message=".*torchvision.*")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def sd_path(models_dir):
    return testing.tiny_sd(models_dir / "sd")


@pytest.fixture(scope="session")
def sd_v_path(models_dir):
    return testing.tiny_sd(models_dir / "sd-v", prediction_type="v_prediction", seed=1)


@pytest.fixture(scope="session")
def sdxl_path(models_dir):
    return testing.tiny_sdxl(models_dir / "sdxl")


@pytest.fixture(scope="session")
def pixel_path(models_dir):
    return testing.tiny_pixel(models_dir / "pixel")


@pytest.fixture()
def sd(sd_path):
    return load_pipeline(sd_path, device="cpu")


@pytest.fixture(scope="session")
def reference():
    if not REFERENCE.is_dir():
        pytest.skip(f"reference statistics not found at {REFERENCE}")
    return REFERENCE


class FirstUNetInput:
    """Forward pre-hook that records what the UNet receives at its first call."""

    def __init__(self, unet):
        self.sample = None
        self.timestep = None
        self.handle = unet.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        if self.sample is None:
            self.sample = (args[0] if args else kwargs["sample"]).detach().clone()
            t = args[1] if len(args) > 1 else kwargs["timestep"]
            self.timestep = float(torch.as_tensor(t).reshape(-1)[0])
        return None


@pytest.fixture()
def first_unet_input():
    hooks = []

    def attach(unet):
        hook = FirstUNetInput(unet)
        hooks.append(hook)
        return hook

    yield attach
    for h in hooks:
        h.handle.remove()
