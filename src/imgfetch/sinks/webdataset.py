"""``--output-format webdataset``: ``00000.tar`` shards of ``{key}.jpg`` / ``{key}.json`` /
``{key}.txt`` samples, each with ``00000.parquet`` (one record per input row of the shard,
failures included, with each image's offset and size in the tar) and ``00000_stats.json``.

The sample logs in staging are tar streams (members appended as rows finish, each
sample's members next to each other), so sealing a shard only joins its logs (see
:func:`join_logs`) and adds the end-of-archive blocks.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow.parquet as pq

from imgfetch.records import shard_records
from imgfetch.sinks.samples import tar_end
from imgfetch.sinks.shards import ShardSink

if TYPE_CHECKING:
    from pathlib import Path

    from imgfetch.records.ledger import Sample


def _append(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_into(fd: int, path: Path) -> None:
    """Append the whole file ``path`` to ``fd``: in the kernel where it can (copy_file_range)."""
    with open(path, "rb") as src:
        remaining = os.fstat(src.fileno()).st_size
        try:
            while remaining > 0:
                copied = os.copy_file_range(src.fileno(), fd, remaining)
                if copied == 0:
                    break
                remaining -= copied
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        while remaining > 0:  # no copy_file_range here: through user space
            block = src.read(min(remaining, 1 << 20))
            if not block:
                break
            _append(fd, block)
            remaining -= len(block)


def join_logs(logs: list[Path], target: Path) -> int:
    """Make ``target`` the tar of the sample ``logs`` (tar streams, the first the largest);
    returns its size.

    The first log becomes the tar: the others are appended to it, then the end
    blocks, and it is renamed to ``target`` -- so one log (one event loop wrote
    the shard) costs no copy at all, and several cost a copy of all but the
    largest.  Until the rename the log is only longer than the ledger says;
    the other logs stay until the shard is committed.  So a join cut short by a
    crash is undone by the resume's cut-back and done again.

    Not fsynced, like the files format's images: a committed shard survives the
    process being killed at any moment; a power cut can lose what the kernel had
    not written yet (as for any file written without fsync).
    """
    first, rest = logs[0], logs[1:]
    # Not O_APPEND: copy_file_range refuses a destination opened for appending.
    fd = os.open(first, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.lseek(fd, 0, os.SEEK_END)
        for path in rest:
            _copy_into(fd, path)
        size = os.fstat(fd).st_size
        end = tar_end(size)
        _append(fd, end)
    finally:
        os.close(fd)
    os.replace(first, target)
    return size + len(end)


class WebDatasetSink(ShardSink):
    name: ClassVar[str] = "webdataset"
    data_suffix: ClassVar[str] = ".tar"

    def data_files(self, base: str) -> tuple[str, ...]:
        return (base + ".tar", base + ".parquet")

    def build(
        self,
        base: str,
        logs: dict[int, Path],
        records: list[dict[str, Any]],
        samples: list[Sample | None],
    ) -> int:
        # A shard whose rows all failed gets no tar (an empty first tar breaks Hugging Face's
        # feature inference): only its per-row records and stats.
        size = 0
        starts: dict[int, int] = {}
        if logs:
            # The largest log first: it becomes the tar, the others are copied after it.
            order = sorted(logs, key=lambda w: -logs[w].stat().st_size)
            at = 0
            for writer in order:
                starts[writer] = at
                at += logs[writer].stat().st_size
            size = join_logs([logs[w] for w in order], self.staging / (base + ".tar"))
        for rec, sample in zip(records, samples, strict=True):
            if sample is not None:
                rec["offset"] = starts[sample.writer] + sample.offset
                rec["size"] = rec.get("bytes")
        pq.write_table(shard_records.table(records), self.staging / (base + ".parquet"))
        return size
