"""Where samples go: the :class:`~imgfetch.sinks.base.Sink` seam and its table.

One module per ``--output-format``: :mod:`~imgfetch.sinks.files` (numbered
folders of files), :mod:`~imgfetch.sinks.webdataset` and
:mod:`~imgfetch.sinks.parquet` (shards, built by :mod:`~imgfetch.sinks.shards`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgfetch.sinks.files import FileSink, FilesOutput
from imgfetch.sinks.parquet import ParquetSink
from imgfetch.sinks.webdataset import WebDatasetSink

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from imgfetch.config import RunConfig
    from imgfetch.sinks.base import Sink, SinkFactory
    from imgfetch.sinks.samples import SampleWriter

#: ``--output-format`` -> its sink.
SINKS: dict[str, SinkFactory] = {
    "files": FilesOutput,
    "webdataset": WebDatasetSink,
    "parquet": ParquetSink,
}
_WRITERS: dict[str, Callable[[RunConfig, Path, int], FileSink | SampleWriter]] = {
    "files": FilesOutput.fetch_writer,
    "webdataset": WebDatasetSink.fetch_writer,
    "parquet": ParquetSink.fetch_writer,
}


def make_sink(cfg: RunConfig, root: Path, state: Path) -> Sink:
    return SINKS[cfg.output.format](cfg, root, state)


def fetch_writer(cfg: RunConfig, root: Path, writer: int) -> FileSink | SampleWriter:
    """What event loop ``writer`` (0: the pipeline's own) stores the bytes it fetched with."""
    return _WRITERS[cfg.output.format](cfg, root, writer)
