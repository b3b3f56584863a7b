"""``--output-format parquet``: ``00000.parquet`` shards holding every input row of the shard
(failures included, with a null image) and the image bytes in an ``image`` column that
Hugging Face ``datasets`` reads as an ``Image`` feature, plus ``00000_stats.json``.

Samples are logged in staging like the webdataset format's, so a killed run keeps
every finished row.  The Parquet file is written from the logs a row group (100
rows, at most 16 MB of images) at a time, in row order, in a background thread
*while the shard fills*: as soon as the rows from the shard's first one onwards
are recorded without a gap, the next group is written to ``00000.parquet.part``
in staging, so sealing a shard only writes its last group (and renames).  A
shard that was already open when the run started (a resume), or whose rows bring
extra columns the file's schema does not have, is written whole when sealed
instead.  A ``.part`` left by a killed run is deleted on the next start: the logs
have everything.

Image bytes are stored as they are (no compression, no dictionary, no
statistics: JPEG, PNG and WebP do not shrink, and trying costs CPU); the other
columns are snappy-compressed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from imgfetch.naming import EXTENSIONS, UNKNOWN_EXTENSION
from imgfetch.records import shard_records
from imgfetch.records.ledger import Sample
from imgfetch.sinks.samples import log_name, shard_name
from imgfetch.sinks.shards import ShardSink

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from imgfetch.config import RunConfig
    from imgfetch.outcome import Outcome
    from imgfetch.records.ledger import Ledger

#: A row group holds at most this many rows or bytes of images (whichever comes first):
#: 100 rows is what Hugging Face ``datasets`` writes for image datasets, so readers that
#: fetch a row group at a time hold little; the byte cap bounds memory for large images.
GROUP_ROWS = 100
GROUP_BYTES = 16 << 20
_IMAGE_COLUMNS = ("image.bytes",)
PART = ".part"

Row = tuple[dict[str, Any], Sample | None]


class _Builder:
    """Writes one shard's Parquet file, a row group at a time (used from one thread at a time)."""

    def __init__(self, target: Path, extras: list[str], log_of: Callable[[int], Path]) -> None:
        self.target = target
        self.extras = extras
        self._log_of = log_of
        self._files: dict[int, BinaryIO] = {}
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def _read(self, sample: Sample, size: int) -> bytes:
        src = self._files.get(sample.writer)
        if src is None:
            src = self._files[sample.writer] = open(self._log_of(sample.writer), "rb")  # noqa: SIM115
        src.seek(sample.offset)
        return src.read(size)

    def write(self, rows: list[Row]) -> None:
        """Write ``rows`` (in row order) as row groups."""
        group: list[dict[str, Any]] = []
        images: list[bytes | None] = []
        held = 0
        for rec, sample in rows:
            data = None if sample is None else self._read(sample, int(rec["bytes"]))
            group.append(rec)
            images.append(data)
            held += len(data or b"")
            if len(group) >= GROUP_ROWS or held >= GROUP_BYTES:
                self._group(group, images)
                group, images, held = [], [], 0
        if group:
            self._group(group, images)

    def _group(self, group: list[dict[str, Any]], images: list[bytes | None]) -> None:
        paths = [_path(rec) for rec in group]
        tbl = shard_records.table(group, images=images, image_paths=paths, offsets=False, extras=self.extras)
        if self._writer is None:
            columns = [c for c in _leaf_columns(tbl.schema) if c not in _IMAGE_COLUMNS]
            self._writer = pq.ParquetWriter(
                self.target,
                tbl.schema,
                compression={**dict.fromkeys(columns, "snappy"), **dict.fromkeys(_IMAGE_COLUMNS, "none")},
                use_dictionary=columns,
                write_statistics=columns,
            )
        self._writer.write_table(tbl)
        self.rows += len(group)

    def close(self) -> None:
        """Finish the file (an empty shard still gets one, with the schema)."""
        if self._writer is None:
            self._group([], [])
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        self.abandon()

    def abandon(self) -> None:
        for src in self._files.values():
            src.close()
        self._files.clear()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None


class _Stream:
    """A shard's Parquet file written while the shard fills (see the module docstring)."""

    def __init__(self, first: int) -> None:
        self.next = first  # the first row not yet handed to the builder
        self.pending: dict[int, Row] = {}
        self.group: list[Row] = []
        self.held = 0
        self.extras: list[str] | None = None
        self.builder: _Builder | None = None
        self.jobs: list[concurrent.futures.Future[None]] = []
        self.broken = False


class ParquetSink(ShardSink):
    name: ClassVar[str] = "parquet"
    data_suffix: ClassVar[str] = ".parquet"

    def __init__(self, cfg: RunConfig, root: Path, state: Path) -> None:
        super().__init__(cfg, root, state)
        self._streams: dict[int, _Stream] = {}
        # One thread writes every stream's groups, in order; sealing waits for a shard's jobs.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="imgfetch-parquet")

    def data_files(self, base: str) -> tuple[str, ...]:
        return (base + ".parquet",)

    # ---- streaming while the shard fills ------------------------------------------
    def started(self, shard: int) -> None:
        self._streams[shard] = _Stream(shard * self.size)

    def recorded(self, shard: int, outcome: Outcome) -> None:
        stream = self._streams.get(shard)
        if stream is None or stream.broken:
            return
        sample = None
        if outcome.end is not None and outcome.writer is not None and outcome.offset is not None:
            sample = Sample(outcome.row, outcome.writer, outcome.end, outcome.offset)
        stream.pending[outcome.row] = (outcome.to_record(), sample)
        while stream.next in stream.pending:
            row = stream.pending.pop(stream.next)
            stream.next += 1
            if stream.extras is None:
                stream.extras = list(row[0].get("extra") or {})
            elif any(column not in stream.extras for column in row[0].get("extra") or {}):
                self._break(shard, stream)  # a column the file's schema lacks: written whole at the seal
                return
            stream.group.append(row)
            stream.held += int(row[0].get("bytes") or 0) if row[1] is not None else 0
            if len(stream.group) >= GROUP_ROWS or stream.held >= GROUP_BYTES:
                self._submit(shard, stream)

    def _submit(self, shard: int, stream: _Stream) -> None:
        rows, stream.group, stream.held = stream.group, [], 0
        if stream.builder is None:
            stream.builder = self._builder(shard, list(stream.extras or ()), PART)
        stream.jobs.append(self._pool.submit(stream.builder.write, rows))

    def _break(self, shard: int, stream: _Stream) -> None:
        stream.broken = True
        stream.pending.clear()
        stream.group.clear()
        builder = stream.builder
        if builder is not None:
            self._pool.submit(_discard, builder)

    async def commit(self, shard: int, ledger: Ledger) -> None:
        stream = self._streams.get(shard)
        if stream is not None and not stream.broken:
            if stream.group:
                self._submit(shard, stream)
            for job in stream.jobs:
                try:
                    await asyncio.wrap_future(job)
                except Exception:
                    self._break(shard, stream)
                    break
        await super().commit(shard, ledger)
        self._streams.pop(shard, None)

    def close(self) -> None:
        for shard, stream in list(self._streams.items()):
            self._break(shard, stream)
        self._pool.shutdown(wait=True)
        super().close()

    def _builder(self, shard: int, extras: list[str], suffix: str = "") -> _Builder:
        staging = self.staging
        return _Builder(
            staging / f"{shard_name(shard)}.parquet{suffix}", extras, lambda w: staging / log_name(shard, w)
        )

    # ---- sealing ----------------------------------------------------------------------
    def build(
        self,
        base: str,
        logs: dict[int, Path],
        records: list[dict[str, Any]],
        samples: list[Sample | None],
    ) -> int:
        shard = int(base)
        target = self.staging / (base + ".parquet")
        stream = self._streams.get(shard)
        builder = stream.builder if stream is not None and not stream.broken else None
        if stream is not None and not stream.broken and stream.next == shard * self.size + len(records):
            if builder is None:  # fewer rows than a group: nothing written yet
                builder = stream.builder = self._builder(shard, list(stream.extras or ()), PART)
            builder.close()
            if builder.target != target:
                os.replace(builder.target, target)
            if builder.rows == len(records):
                return target.stat().st_size
        if builder is not None:  # not every row went through the stream: write it whole
            _discard(builder)
        builder = self._builder(shard, shard_records.extra_columns(records))
        try:
            builder.write(list(zip(records, samples, strict=True)))
            builder.close()
        finally:
            builder.abandon()
        pa.default_memory_pool().release_unused()
        return target.stat().st_size


def _discard(builder: _Builder) -> None:
    builder.abandon()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(builder.target)


def _leaf_columns(schema: pa.Schema) -> list[str]:
    names: list[str] = []
    for field in schema:
        if pa.types.is_struct(field.type):
            names += [f"{field.name}.{child.name}" for child in field.type]
        else:
            names.append(field.name)
    return names


def _path(rec: dict[str, Any]) -> str | None:
    if rec.get("status") != "ok":
        return None
    return f"{rec.get('key')}{EXTENSIONS.get(str(rec.get('format')), UNKNOWN_EXTENSION)}"
