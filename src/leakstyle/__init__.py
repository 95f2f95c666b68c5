"""leakstyle: control style, brightness and colour of diffusion models through their initial noise.

    import leakstyle as ls
    pipe = ls.load_pipeline(None)
    style = ls.fit("imgs/", pipe=pipe, kind="dct", components=3)
    images = ls.generate(pipe, "red heart", style=style, seed=0, num_images=4)
"""

__version__ = "0.1.0"

from .color import steered_background  # noqa: E402
from .distribution import StyleDistribution  # noqa: E402
from .errors import LeakstyleError, StyleFileError, ImageError  # noqa: E402
from .files import convert, load, save  # noqa: E402
from .fit import fit, merge  # noqa: E402
from .leak import initial_latents  # noqa: E402
from .pipeline import generate, iter_generate, load_pipeline  # noqa: E402
from .probe import probe  # noqa: E402
from .schedule import ZeroTerminalSNRWarning, leak_at_first_step  # noqa: E402

__all__ = ["StyleDistribution", "LeakstyleError", "StyleFileError", "ImageError", "convert", "load", "save", "fit",
           "merge", "initial_latents", "generate", "iter_generate", "load_pipeline", "ZeroTerminalSNRWarning", "leak_at_first_step",
           "probe", "steered_background", "__version__"]
