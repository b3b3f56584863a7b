"""imgfetch: a URL list in, verified images and a per-row manifest out.

>>> import imgfetch
>>> summary = imgfetch.download("cats.txt", "cats", concurrency=64)  # doctest: +SKIP
"""

from imgfetch._version import __version__
from imgfetch.api import config, download, stream
from imgfetch.config import HttpConfig, ImageConfig, InputConfig, Naming, OutputConfig, RunConfig
from imgfetch.errors import (
    ConfigError,
    EngineUnavailable,
    ImgfetchError,
    InputError,
    OutputError,
    ResumeConflict,
)
from imgfetch.outcome import Outcome, Reason, Status, Summary

__all__ = [
    "ConfigError",
    "EngineUnavailable",
    "HttpConfig",
    "ImageConfig",
    "ImgfetchError",
    "InputConfig",
    "InputError",
    "Naming",
    "Outcome",
    "OutputConfig",
    "OutputError",
    "Reason",
    "ResumeConflict",
    "RunConfig",
    "Status",
    "Summary",
    "__version__",
    "config",
    "download",
    "stream",
]
