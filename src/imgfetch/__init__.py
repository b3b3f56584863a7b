"""imgfetch: a URL list in, verified images and a per-row manifest out.

>>> import imgfetch
>>> summary = imgfetch.download("cats.txt", "cats", concurrency=64)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgfetch._version import __version__
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

if TYPE_CHECKING:
    from imgfetch.api import config, download, stream

#: Loaded on first use: a process that only needs a leaf module (a decode worker imports
#: ``imgfetch.images`` and ``imgfetch.workers``) does not pay for aiohttp and the pipeline
#: (~0.3 s of CPU per process).
_LAZY = frozenset({"config", "download", "stream"})
# Importing the submodule imgfetch.config above bound the name "config" to it; the public
# name is api.config, the function, as it was when api was imported here eagerly.
globals().pop("config", None)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from imgfetch import api

        return getattr(api, name)
    raise AttributeError(f"module 'imgfetch' has no attribute {name!r}")


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
