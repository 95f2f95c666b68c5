"""The one exception type for errors a user can cause (bad paths, corrupt files, wrong model)."""


class LeakstyleError(Exception):
    """A user error. The message is one line that says what went wrong and what to do.

    The CLI prints it as ``leakstyle: error: <message>`` and exits with status 2.
    """


class StyleFileError(LeakstyleError):
    """A style file that cannot be read, or that does not match the model."""


class ImageError(LeakstyleError):
    """Image inputs that cannot be used (missing paths, no images, too few, corrupt with --strict)."""
