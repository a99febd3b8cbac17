"""The project's exceptions.

One base class so the CLI can turn any of them into one line on stderr. Every
message names the file, key or value at fault and the fix. All of them pickle
(plain ``args``), because Dask sends them back from workers.
"""

from __future__ import annotations


class SlideprocError(Exception):
    """Base of every error slideproc raises on purpose. ``str(err)`` is the one line users see."""

    exit_code = 1


class UsageError(SlideprocError):
    """Bad command-line usage (exit status 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration file or value is invalid; the message names the key."""


class SourceError(SlideprocError):
    """A slide or image cannot be opened or read; the message names the file."""


class MissingMppError(SourceError):
    """A source has no resolution (micrometres per pixel) and none was given."""


class InputError(SlideprocError):
    """An input path, folder or manifest is unusable."""


class ModelError(SlideprocError):
    """A model directory is missing, inconsistent or unsafe to load."""


class ModelPathError(ModelError):
    """--model names no model directory (a path that does not exist, or a file other than
    model.keras): bad usage, exit status 2, like an INPUT that does not exist."""

    exit_code = 2


class DataError(SlideprocError):
    """A training or evaluation data set is unusable."""


class TrainingError(SlideprocError):
    """Training ran but produced a model that must not be used as it is (e.g. near chance)."""


class StoreError(SlideprocError):
    """The output store cannot be written or read."""


class ImplausibleMppError(MissingMppError):
    """A file's resolution metadata is outside what a brightfield microscope produces
    (about 0.02-2 um/px): an image editor's 72 dpi, not the scanner's. Treated like a
    missing resolution: the user must give the true one."""


class NonSquarePixelsError(MissingMppError):
    """A file's metadata gives different resolutions across and down (beyond rounding);
    slideproc does not resample per axis, and never averages them in silence."""


class MppEstimateError(MissingMppError):
    """``--mpp auto`` found too few red cells (or an implausible size) to estimate a source's
    resolution; ``reason`` says what was found, without the file or the fix."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class FieldsDisagreeError(MppEstimateError):
    """``--mpp auto``: the red cells of one sample's fields give resolutions too far
    apart to pool (fields taken with different objectives); ``path`` is the field
    furthest from the others."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path
