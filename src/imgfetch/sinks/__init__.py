"""Where samples go: the :class:`~imgfetch.sinks.base.Sink` seam and its table.

One module per ``--output-format``: :mod:`~imgfetch.sinks.files` (numbered
folders of files), :mod:`~imgfetch.sinks.webdataset` and
:mod:`~imgfetch.sinks.parquet` (shards, built by :mod:`~imgfetch.sinks.shards`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgfetch.sinks.files import FilesOutput
from imgfetch.sinks.parquet import ParquetSink
from imgfetch.sinks.webdataset import WebDatasetSink

if TYPE_CHECKING:
    from pathlib import Path

    from imgfetch.config import RunConfig
    from imgfetch.sinks.base import Sink, SinkFactory

#: ``--output-format`` -> its sink.
SINKS: dict[str, SinkFactory] = {
    "files": FilesOutput,
    "webdataset": WebDatasetSink,
    "parquet": ParquetSink,
}


def make_sink(cfg: RunConfig, root: Path, state: Path) -> Sink:
    return SINKS[cfg.output.format](cfg, root, state)
