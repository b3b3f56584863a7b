"""Errors that stop a whole run.  Faults of a single row are Outcomes, never these.

Each carries a short kebab-case ``code`` and an optional ``hint``; the CLI prints
``imgfetch: error[code]: message`` (plus the hint) and exits 1, without a traceback.
This module imports nothing from the rest of the package.
"""

from __future__ import annotations


class ImgfetchError(Exception):
    """Base class of run-stopping errors."""

    code = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} ({self.hint})"


class ConfigError(ImgfetchError, ValueError):
    """Options that cannot work together or are out of range."""

    code = "bad-option"


class InputError(ImgfetchError, OSError):
    """The input list cannot be opened or read as the format it claims to be."""

    code = "bad-input"


class OutputError(ImgfetchError, OSError):
    """The output folder cannot be created or written."""

    code = "bad-output"


class ResumeConflict(ImgfetchError):
    """The output folder holds a run with another input or other output-shaping options."""

    code = "resume-conflict"


class EngineUnavailable(ImgfetchError, ImportError):
    """The chosen engine needs an extra that is not installed."""

    code = "engine-unavailable"
