"""fbloop's exceptions: one base class, a few typed ones.

The library raises these; only the CLI and the app turn them into messages.
"""


class FbloopError(Exception):
    """Base class for every error fbloop raises on purpose."""


class ShapeError(FbloopError, ValueError):
    """An array has the wrong shape or dimensionality."""


class NonFiniteError(FbloopError, ValueError):
    """An array holds NaN or Inf where only finite numbers make sense."""


class NonPSDError(FbloopError, ValueError):
    """A feature matrix is not symmetric positive semi-definite."""


class ConfigError(FbloopError, ValueError):
    """A configuration value is out of range or names an unknown choice."""


class TargetFileError(FbloopError):
    """A target file is missing, truncated or in an unknown layout."""


class StoreError(FbloopError):
    """The SQLite store is missing, from another version, or inconsistent."""


class NoUsableAnswersError(FbloopError):
    """A run ended with no answer a learner can use (every one invalid); it stays resumable."""
