"""``--output-format webdataset``: ``00000.tar`` shards of ``{key}.jpg`` / ``{key}.json`` /
``{key}.txt`` samples, each with ``00000.parquet`` (one record per input row of the shard,
failures included, with each sample's offset and size in the tar) and ``00000_stats.json``.

The sample log in staging *is* the tar being built (members appended as rows
finish, each sample's members next to each other), so sealing a shard only adds
the end-of-archive blocks and renames it: the offsets recorded while the shard
was filled are the offsets in the published tar.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow.parquet as pq

from imgfetch.records import shard_records
from imgfetch.sinks.shards import ShardSink, tar_end

if TYPE_CHECKING:
    from pathlib import Path


def close_tar(samples: Path, target: Path) -> int:
    """End the tar stream ``samples`` (made if missing), move it to ``target``; its size."""
    fd = os.open(samples, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        size = os.fstat(fd).st_size
        end = tar_end(size)
        view = memoryview(end)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(samples, target)
    return size + len(end)


class WebDatasetSink(ShardSink):
    name: ClassVar[str] = "webdataset"
    data_suffix: ClassVar[str] = ".tar"
    public_offsets: ClassVar[bool] = True

    def data_files(self, base: str) -> tuple[str, ...]:
        return (base + ".tar", base + ".parquet")

    def build(self, base: str, samples: Path, records: list[dict[str, Any]]) -> int:
        # A shard whose rows all failed gets no tar (an empty first tar breaks Hugging Face's
        # feature inference): only its per-row records and stats.
        if not samples.exists() or samples.stat().st_size == 0:
            samples.unlink(missing_ok=True)
            size = 0
        else:
            size = close_tar(samples, self.staging / (base + ".tar"))
        pq.write_table(shard_records.table(records), self.staging / (base + ".parquet"))
        return size
