"""One exception hierarchy. Every message says what went wrong and what to do about it.

The CLI prints ``str(error)`` without a traceback and exits non-zero.
"""


class SdrtError(Exception):
    """Base class for every error sdrt raises on purpose."""


class UserInputError(SdrtError, ValueError):
    """A request the user can fix: a bad size, an unknown sampler, steps < 1, ..."""


class ModelSourceError(SdrtError):
    """The model to export cannot be found, read, or is refused (pickle checkpoints)."""


class ExportError(SdrtError):
    """Exporting or validating a graph failed."""


class ManifestError(SdrtError):
    """An export folder is missing, corrupt, or from an incompatible version."""


class BackendError(SdrtError):
    """A backend is not installed, or cannot run a graph."""
