"""Empty `torchvision.transforms` of the test stand-in (see ../__init__.py)."""


def __getattr__(name):
    raise ImportError(f"torchvision.transforms.{name} is not available: this is the test suite's stand-in module")
