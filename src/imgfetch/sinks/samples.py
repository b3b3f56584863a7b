"""The fetch side of the shard formats: each event loop appends its samples to its own
staging log of each shard, ``STATE/staging/00000.<writer>.samples``, as tar members.

Every process that fetches (the pipeline's own loop is writer 0, ``--loops``
processes 1, 2, ...) writes the samples of the rows it fetched itself, in one
``writev`` per sample, so image bytes are written once, by the process that
received them, and never cross to another process.  A log is written by one
process in the order its rows finish, and their outcomes reach the ledger in
that same order (one stream per loop), so what the ledger does not know of a
log is always its tail: a resume cuts each log back to its last known sample
(:mod:`imgfetch.sinks.shards`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import struct
import tarfile
import time
from typing import TYPE_CHECKING

from imgfetch.records import shard_records

if TYPE_CHECKING:
    from pathlib import Path

    from imgfetch.config import RunConfig
    from imgfetch.outcome import Outcome

SAMPLES = ".samples"
#: Digits of a shard number in names and keys (more when a run has over 99,999 shards).
SHARD_DIGITS = 5
BLOCK = tarfile.BLOCKSIZE
#: A finished tar ends with two zero blocks and is padded to GNU tar's 10 KiB records.
RECORD = tarfile.RECORDSIZE
#: Logs a writer keeps open at once (rows of a few neighbouring shards are in flight).
OPEN_LOGS = 8
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")


def shard_name(shard: int) -> str:
    return f"{shard:0{SHARD_DIGITS}d}"


def log_name(shard: int, writer: int) -> str:
    return f"{shard_name(shard)}.{writer}{SAMPLES}"


def image_field(cfg: RunConfig) -> str:
    """The extension of the image member of every sample.

    One field set for every sample is what loaders need: Hugging Face's
    webdataset builder infers the features from the first samples and rejects
    samples whose fields differ, and ``to_tuple("jpg", ...)`` in webdataset
    pipelines names one field.  So the field is the output format's (``jpg``,
    ``png``, ``webp``) and, with ``--format keep``, ``jpg`` whatever each
    image's real format; both loaders decode by content, and the real format is
    in each sample's JSON (``format``).
    """
    return {"png": "png", "webp": "webp"}.get(cfg.image.format, "jpg")


def tar_header(name: str, size: int, mtime: int) -> bytes:
    """The header block(s) of a regular file member: plain ustar, or PAX for a long or
    non-ASCII name (what ``tarfile`` writes too; built by hand for the common case because
    ``TarInfo.tobuf`` costs ~30 us a member, a tenth of a sample's whole cost)."""
    if len(name) > 100 or not name.isascii() or size >= 0o77777777777:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = mtime
        info.mode = 0o644
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    block = bytearray(
        _USTAR.pack(
            name.encode("ascii"),
            b"0000644\0",
            b"0000000\0",
            b"0000000\0",
            b"%011o\0" % size,
            b"%011o\0" % mtime,
            b"        ",
            tarfile.REGTYPE,
            b"",
            tarfile.POSIX_MAGIC,
            b"",
            b"",
            b"",
            b"",
            b"",
        )
    )
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def tar_end(size: int) -> bytes:
    """The end-of-archive blocks for a tar stream of ``size`` bytes, padded to a whole record."""
    total = size + 2 * BLOCK
    return b"\0" * (2 * BLOCK + (-total) % RECORD)


def _pad(size: int) -> bytes:
    return b"\0" * ((-size) % BLOCK)


class _Log:
    """An open sample log: appended to, never rewritten (except cut back on resume)."""

    __slots__ = ("fd", "size")

    def __init__(self, path: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
        self.fd = os.open(path, flags, 0o644)
        self.size = os.fstat(self.fd).st_size

    def append(self, parts: list[bytes]) -> int:
        """Write ``parts`` as one piece (no copy into one buffer); returns the end offset."""
        total = sum(map(len, parts))
        written = 0
        try:
            while written < total:
                if written:  # a short write: go on from where it stopped
                    rest = b"".join(parts)[written:]
                    written += os.write(self.fd, rest)
                else:
                    written += os.writev(self.fd, parts)
        except BaseException:
            with contextlib.suppress(OSError):  # no half sample may stay in the log
                os.ftruncate(self.fd, self.size)
            raise
        self.size += total
        return self.size

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class SampleWriter:
    """Writes the samples of the rows one event loop fetched (``writer`` is that loop's number)."""

    def __init__(self, cfg: RunConfig, staging: Path, writer: int, data_suffix: str) -> None:
        self.staging = staging
        self.writer = writer
        self.root = staging
        self._suffix = data_suffix
        self._field = image_field(cfg)
        self._caption = cfg.output.caption_col
        self._logs: collections.OrderedDict[int, _Log] = collections.OrderedDict()

    def write(self, shard: int, outcome: Outcome, data: bytes) -> Outcome:
        """Append the sample of ``outcome`` (an ok row, its key set) to this writer's log of
        ``shard``; the outcome with where the sample is.  Raises OSError."""
        log = self._logs.get(shard)
        if log is None:
            log = self._logs[shard] = _Log(self.staging / log_name(shard, self.writer))
            if len(self._logs) > OPEN_LOGS:
                self._logs.popitem(last=False)[1].close()
        else:
            self._logs.move_to_end(shard)
        record = dataclasses.replace(outcome, shard=shard_name(shard) + self._suffix)
        key = record.key or ""
        mtime = int(time.time())
        head = tar_header(f"{key}.{self._field}", len(data), mtime)
        offset = log.size + len(head)
        meta = json.dumps(shard_records.sample_metadata(record), ensure_ascii=False).encode("utf-8")
        parts = [
            head,
            data,
            _pad(len(data)),
            tar_header(f"{key}.json", len(meta), mtime),
            meta,
            _pad(len(meta)),
        ]
        if self._caption is not None:
            text = shard_records.caption(record, self._caption).encode("utf-8", "surrogateescape")
            parts += (tar_header(f"{key}.txt", len(text), mtime), text, _pad(len(text)))
        end = log.append(parts)
        return dataclasses.replace(record, writer=self.writer, offset=offset, end=end)

    def close(self) -> None:
        for log in self._logs.values():
            log.close()
        self._logs.clear()
