"""The one exception type for errors a user can cause (bad paths, corrupt files, wrong model), and telling
running out of memory from other failures."""

import re


class LeakstyleError(Exception):
    """A user error. The message is one line that says what went wrong and what to do.

    The CLI prints it as ``leakstyle: error: <message>`` and exits with status 2.
    """


class StyleFileError(LeakstyleError):
    """A style file that cannot be read, or that does not match the model."""


class ImageError(LeakstyleError):
    """Image inputs that cannot be used (missing paths, no images, too few, corrupt with --strict)."""


def out_of_memory(error: BaseException) -> str | None:
    """What ran out, in a few words, when `error` is running out of memory (Python's MemoryError, torch's
    OutOfMemoryError on CUDA and MPS, the RuntimeError of torch's CPU allocator); None for any other error."""
    message = str(error)
    if not (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
            or (isinstance(error, RuntimeError) and ("can't allocate memory" in message
                                                     or "out of memory" in message.lower()))):
        return None
    size = re.search(r"allocate (\d+) bytes", message)  # the CPU allocator's wording
    if size:
        return f"could not allocate {int(size[1]) / 2 ** 30:.3g} GiB"
    size = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]iB)", message)  # CUDA's
    return f"could not allocate {size[1]}" if size else "out of memory"
