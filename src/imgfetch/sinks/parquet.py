"""``--output-format parquet``: ``00000.parquet`` shards holding every input row of the shard
(failures included, with a null image) and the image bytes in an ``image`` column that
Hugging Face ``datasets`` reads as an ``Image`` feature, plus ``00000_stats.json``.

Samples are logged in staging as a tar stream, like the webdataset format's, so a
killed run keeps every finished row; sealing reads the log once and writes the
Parquet file in row order, a row group at a time (memory: one row group, not the shard).
"""

from __future__ import annotations

import tarfile
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow.parquet as pq

from imgfetch.naming import EXTENSIONS, UNKNOWN_EXTENSION
from imgfetch.records import shard_records
from imgfetch.sinks.shards import SEALING_LOG, ShardSink
from imgfetch.sinks.webdataset import close_tar

if TYPE_CHECKING:
    from pathlib import Path

#: A row group holds at most this many rows or bytes of images (whichever comes first).
GROUP_ROWS = 1024
GROUP_BYTES = 64 << 20


class ParquetSink(ShardSink):
    name: ClassVar[str] = "parquet"
    data_suffix: ClassVar[str] = ".parquet"
    public_offsets: ClassVar[bool] = False

    def data_files(self, base: str) -> tuple[str, ...]:
        return (base + ".parquet",)

    def build(self, base: str, samples: Path, records: list[dict[str, Any]]) -> int:
        log = self.staging / (base + SEALING_LOG)  # kept until the shard is committed
        close_tar(samples, log)
        target = self.staging / (base + ".parquet")
        suffix = "." + self._field
        extras = shard_records.extra_columns(records)
        with tarfile.open(log, "r:") as tar:
            # Headers only (tarfile seeks over the data): name -> where the image bytes are.
            where = {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.name.endswith(suffix)}
        with open(log, "rb") as src:
            writer: pq.ParquetWriter | None = None
            group: list[dict[str, Any]] = []
            images: list[bytes | None] = []
            held = 0

            def flush() -> None:
                nonlocal writer, held
                paths = [_path(rec) for rec in group]
                tbl = shard_records.table(
                    group, images=images, image_paths=paths, offsets=False, extras=extras
                )
                if writer is None:
                    writer = pq.ParquetWriter(target, tbl.schema)
                writer.write_table(tbl)
                group.clear()
                images.clear()
                held = 0

            try:
                for rec in records:
                    data: bytes | None = None
                    spot = where.get(f"{rec.get('key')}{suffix}") if rec.get("status") == "ok" else None
                    if spot is not None:
                        src.seek(spot[0])
                        data = src.read(spot[1])
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
        return target.stat().st_size


def _path(rec: dict[str, Any]) -> str | None:
    if rec.get("status") != "ok":
        return None
    return f"{rec.get('key')}{EXTENSIONS.get(str(rec.get('format')), UNKNOWN_EXTENSION)}"
