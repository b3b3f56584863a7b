"""``--output-format parquet``: ``00000.parquet`` shards holding every input row of the shard
(failures included, with a null image) and the image bytes in an ``image`` column that
Hugging Face ``datasets`` reads as an ``Image`` feature, plus ``00000_stats.json``.

Samples are logged in staging like the webdataset format's (so a killed run keeps
every finished row); sealing reads the logs once and writes the Parquet file in
row order, a row group at a time (memory: one row group, not the shard).  Image
bytes are stored as they are (no compression, no dictionary: JPEG, PNG and WebP
do not shrink, and trying costs CPU); the other columns are snappy-compressed.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from imgfetch.naming import EXTENSIONS, UNKNOWN_EXTENSION
from imgfetch.records import shard_records
from imgfetch.sinks.shards import ShardSink

if TYPE_CHECKING:
    from pathlib import Path

    from imgfetch.records.ledger import Sample

#: A row group holds at most this many rows or bytes of images (whichever comes first):
#: 100 rows is what Hugging Face ``datasets`` writes for image datasets, so readers that
#: fetch a row group at a time hold little; the byte cap bounds memory for large images.
GROUP_ROWS = 100
GROUP_BYTES = 16 << 20
_IMAGE_COLUMNS = ("image.bytes",)


class ParquetSink(ShardSink):
    name: ClassVar[str] = "parquet"
    data_suffix: ClassVar[str] = ".parquet"

    def data_files(self, base: str) -> tuple[str, ...]:
        return (base + ".parquet",)

    def build(
        self,
        base: str,
        logs: dict[int, Path],
        records: list[dict[str, Any]],
        samples: list[Sample | None],
    ) -> int:
        target = self.staging / (base + ".parquet")
        extras = shard_records.extra_columns(records)
        writer: pq.ParquetWriter | None = None
        group: list[dict[str, Any]] = []
        images: list[bytes | None] = []
        held = 0

        def flush() -> None:
            nonlocal writer, held
            paths = [_path(rec) for rec in group]
            tbl = shard_records.table(group, images=images, image_paths=paths, offsets=False, extras=extras)
            if writer is None:
                columns = [c for c in _leaf_columns(tbl.schema) if c not in _IMAGE_COLUMNS]
                writer = pq.ParquetWriter(
                    target,
                    tbl.schema,
                    compression={**dict.fromkeys(columns, "snappy"), **dict.fromkeys(_IMAGE_COLUMNS, "none")},
                    use_dictionary=columns,
                )
            writer.write_table(tbl)
            group.clear()
            images.clear()
            held = 0

        with contextlib.ExitStack() as stack:
            files: dict[int, BinaryIO] = {w: stack.enter_context(open(p, "rb")) for w, p in logs.items()}
            try:
                for rec, sample in zip(records, samples, strict=True):
                    data: bytes | None = None
                    if sample is not None:
                        src = files[sample.writer]
                        src.seek(sample.offset)
                        data = src.read(int(rec["bytes"]))
                    group.append(rec)
                    images.append(data)
                    held += len(data or b"")
                    if len(group) >= GROUP_ROWS or held >= GROUP_BYTES:
                        flush()
                if group or writer is None:
                    flush()
            finally:
                if writer is not None:
                    writer.close()
        pa.default_memory_pool().release_unused()
        return target.stat().st_size


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
