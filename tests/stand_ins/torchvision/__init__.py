"""A stand-in for torchvision, put on sys.path by the ComfyUI tests only when the real package cannot be imported.

ComfyUI imports torchvision at start-up for model families that the tests never build (Stable Cascade,
Cosmos, ACE); nothing on the sampling path calls it. Any use raises, so a test cannot pass through it."""

from . import transforms  # noqa: F401


def __getattr__(name):
    raise ImportError(f"torchvision.{name} is not available: this is the test suite's stand-in module")
