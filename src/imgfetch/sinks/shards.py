"""Shard formats: rows ``[k*N, (k+1)*N)`` collected per shard in staging, published whole.

A shard is built in the state folder (``STATE/staging/``), never under its
final name.  Each successful row is appended to the shard's *sample log*
(``00000.samples``: the tar members of the sample, written as one piece) as soon
as it is recorded, and the ledger stores where the sample ends.  Because the
ledger commits outcomes in the order they are recorded, the samples the ledger
does not know are always the tail of a log: after ``kill -9`` a resume cuts the
log back to the last known sample and carries on with the rows that are not
done.  Nothing finished is fetched again.

When every row of a shard is final the shard is *sealed*: its output files are
built in staging (the tar closed, or the Parquet file written from the log; the
per-shard records; the stats), the ledger marks it ``sealed``, then the files
are moved into the output, the stats file last (its presence marks a complete
shard), and the ledger marks it ``committed``.  A crash between those steps is
finished by the next start.  A committed shard is never written again: rows
redone later (``--retry-failed``) go to *patch* shards with the next free
numbers, and the manifest points each row at the one sample that holds it.

Subclasses (:mod:`imgfetch.sinks.webdataset`, :mod:`imgfetch.sinks.parquet`)
say what the published files are; this module owns staging, keys, routing,
recovery and publishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import struct
import tarfile
import time
from typing import TYPE_CHECKING, Any, ClassVar

from imgfetch import sources
from imgfetch.errors import ImgfetchError, OutputError
from imgfetch.outcome import Status
from imgfetch.records import shard_records
from imgfetch.records.ledger import ShardState
from imgfetch.sinks.base import Placed
from imgfetch.sinks.files import TEMP_PREFIX, TEMP_SUFFIX, FileSink

if TYPE_CHECKING:
    from pathlib import Path

    from imgfetch.config import RunConfig
    from imgfetch.outcome import Outcome
    from imgfetch.records.ledger import Ledger

log = logging.getLogger("imgfetch")

STAGING = "staging"
SAMPLES = ".samples"
#: The parquet format's sample log once sealing has closed it as a tar (kept until committed).
SEALING_LOG = ".log.tar"
STATS = "_stats.json"
SHARD_INDEX = "shards.json"
#: Digits of a shard number in names and keys (more when a run has over 99,999 shards).
SHARD_DIGITS = 5
BLOCK = tarfile.BLOCKSIZE
#: A finished tar ends with two zero blocks and is padded to GNU tar's 10 KiB records.
RECORD = tarfile.RECORDSIZE
#: Names a shard format publishes: ``00000.tar``, ``00000.parquet``, ``00000_stats.json``.
_SHARD_FILE = re.compile(r"\A(\d{5,})(\.tar|\.parquet|_stats\.json)\Z")


def index_digits(shard_size: int) -> int:
    """Digits of a row's index within its shard in a key (img2dataset's convention)."""
    return max(1, len(str(shard_size - 1)))


def shard_name(shard: int) -> str:
    return f"{shard:0{SHARD_DIGITS}d}"


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


_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")


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


class _Log:
    """An open sample log: appended to, never rewritten (except cut back on resume)."""

    __slots__ = ("fd", "path", "size")

    def __init__(self, path: Path) -> None:
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
        self.fd = os.open(path, flags, 0o644)
        self.size = os.fstat(self.fd).st_size

    def append(self, parts: list[bytes]) -> int:
        """Write ``parts`` as one piece; returns the end offset."""
        data = b"".join(parts)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except BaseException:
            with contextlib.suppress(OSError):  # no half sample may stay in the log
                os.ftruncate(self.fd, self.size)
            raise
        self.size += len(data)
        return self.size

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class ShardSink:
    """The common part of the shard formats (see the module docstring)."""

    #: The format's name in ``--output-format`` (set by subclasses).
    name: ClassVar[str] = ""
    #: The suffix of the file that holds a shard's samples.
    data_suffix: ClassVar[str] = ""
    keeps_bytes: ClassVar[bool] = True
    #: Whether records carry the sample's ``offset`` and ``size`` in the published data file.
    public_offsets: ClassVar[bool] = True

    def __init__(self, cfg: RunConfig, root: Path, state: Path) -> None:
        self.cfg = cfg
        self.root = root
        self.staging = state / STAGING
        self.size = cfg.output.shard_size
        self._digits = index_digits(self.size)
        self._field = image_field(cfg)
        self._caption = cfg.output.caption_col
        self._files = FileSink(root)  # checks the output folder; publishes with its temporaries
        self._logs: dict[int, _Log] = {}
        self._shards: dict[int, ShardState] = {}
        self._counts: dict[int, int] = {}
        self._patch: int | None = None
        self._patch_rows = 0
        #: Keys taken in the open patch shard (casefolded): with ``--key name`` rows from several
        #: base shards meet there, and names are unique only within their base shard.
        self._patch_keys: set[str] = set()
        self._next_free = 0
        self._total: int | None = None
        self._ready: list[int] = []
        self._ledger: Ledger | None = None

    # ---- names -------------------------------------------------------------
    def key(self, index: int, stem: str | None) -> str | None:
        """A row's sample key: shard then index (``000010005``), or its dotless name with ``--key name``."""
        if self.cfg.output.key == "name":
            return None if stem is None else stem.replace(".", "_")
        shard, pos = divmod(index, self.size)
        return f"{shard_name(shard)}{pos:0{self._digits}d}"

    def files(self, shard: int) -> tuple[str, ...]:
        """The files a published shard consists of, the stats file last (it marks the commit)."""
        base = shard_name(shard)
        return (*self.data_files(base), base + STATS)

    def data_files(self, base: str) -> tuple[str, ...]:
        raise NotImplementedError

    # ---- start ---------------------------------------------------------------
    def open(self, ledger: Ledger) -> None:
        """Make staging agree with the ledger; refuse shard files no run recorded here."""
        self._ledger = ledger
        self.staging.mkdir(parents=True, exist_ok=True)
        self._shards = {s.shard: s for s in ledger.shards()}
        self._refuse_foreign()
        known_logs: set[str] = set()
        for state in list(self._shards.values()):
            if state.state == "open":
                known_logs.add(shard_name(state.shard) + SAMPLES)
                self._recover(ledger, state)
                if state.kind == "patch":
                    self._patch = state.shard
                    lines = ledger.shard_lines(state.shard)
                    self._patch_rows = len(lines)
                    self._patch_keys = {_fold(json.loads(line).get("key") or "") for line in lines}
            elif state.state == "sealed":
                self._publish(state.shard)
                self._committed(ledger, state)
        # Staging files of no open shard: a sealed shard's leftovers, or a log the ledger never heard of.
        with os.scandir(self.staging) as entries:
            leftovers = [
                e.path for e in entries if e.name not in known_logs and e.is_file(follow_symlinks=False)
            ]
        for path in leftovers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._files.remove_temporaries()
        top = max(self._shards, default=-1)
        self._next_free = max(top, ledger.max_row() // self.size) + 1
        if any(s.state == "committed" for s in self._shards.values()):
            # Rows may be redone into patch shards: number them after every shard the input
            # can reach, so a list read further (or grown) still gets its own base shards.
            try:
                bound = sources.row_bound(self.cfg.input)
            except ImgfetchError:  # rows handed to the pipeline directly, not read from a file
                bound = None
            if bound is not None:
                self._next_free = max(self._next_free, -(-bound // self.size))

    def _refuse_foreign(self) -> None:
        ours = {name for s in self._shards.values() if s.state != "open" for name in shard_files(s.shard)}
        with os.scandir(self.root) as entries:
            foreign = [e.path for e in entries if _SHARD_FILE.match(e.name) and e.name not in ours]
        if foreign:
            raise OutputError(
                f"'{foreign[0]}' is a shard file that no imgfetch run recorded in this state folder",
                hint="move it away or use another -o/--out: imgfetch replaces nothing it did not write",
            )

    def _recover(self, ledger: Ledger, state: ShardState) -> None:
        """Cut an open shard's log back to the samples the ledger knows; forget samples it lost."""
        base = shard_name(state.shard)
        path = self.staging / (base + SAMPLES)
        if not path.exists():
            # Killed while sealing, before the ledger said "sealed": sealing had closed the log as
            # a tar (and renamed it); take it back as the log, the cut below drops the end blocks.
            for name in (base + ".tar", base + SEALING_LOG):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.staging / name, path)
                    break
        try:
            size = os.lstat(path).st_size
        except FileNotFoundError:
            size = 0
        ends = ledger.sample_ends(state.shard)
        lost = [row for row, end in ends if end > size]
        if lost:
            log.warning(
                "resume: %d samples of shard %s are gone from staging; they will be done again",
                len(lost),
                shard_name(state.shard),
            )
            ledger.forget(lost)
        keep = max((end for _row, end in ends if end <= size), default=0)
        if size:
            os.truncate(path, keep)

    # ---- rows ----------------------------------------------------------------
    def skipped(self, index: int) -> None:
        """A row final from an earlier run: it counts towards its shard being complete."""
        shard = index // self.size
        if shard not in self._shards or self._shards[shard].state == "open":
            self._count(shard)

    def end_of_input(self, rows: int) -> None:
        """The reader reached the end: ``rows`` rows in all, so the last shard's size is known."""
        self._total = rows
        for shard, count in list(self._counts.items()):
            if count >= self._expected(shard):
                self._mark_ready(shard)

    def _expected(self, shard: int) -> int:
        if self._total is None:
            return self.size
        return max(0, min(self.size, self._total - shard * self.size))

    def _count(self, shard: int) -> None:
        count = self._counts.get(shard, 0) + 1
        self._counts[shard] = count
        if count >= self._expected(shard):
            self._mark_ready(shard)

    def _mark_ready(self, shard: int) -> None:
        self._counts.pop(shard, None)
        if shard not in self._ready:
            self._ready.append(shard)

    def _route(self, index: int) -> tuple[int, bool]:
        """The shard a row's outcome goes to, and whether it is its own (base) shard."""
        base = index // self.size
        state = self._shards.get(base)
        if state is None or (state.kind == "base" and state.state == "open"):
            return base, True
        return self._patch_shard(), False

    def _patch_shard(self) -> int:
        if self._patch is None:
            self._patch = self._next_free
            self._next_free += 1
            self._patch_rows = 0
            self._patch_keys = set()
            self._start(self._patch, "patch")
        return self._patch

    def _start(self, shard: int, kind: str) -> None:
        assert self._ledger is not None
        state = ShardState(shard, kind, "open", time.time(), None, None, None)
        self._ledger.put_shard(state)
        self._shards[shard] = state
        self._next_free = max(self._next_free, shard + 1)

    def add(self, outcome: Outcome) -> Placed:
        """Append the row's sample (if it has one) to its shard's log; the outcome as recorded.

        Raises OSError when the log cannot be written (the caller decides
        whether that stops the run).
        """
        shard, own = self._route(outcome.row)
        if shard not in self._shards:
            self._start(shard, "base")
        name = shard_name(shard) + self.data_suffix
        if outcome.key is None and self.cfg.output.key == "index":
            # Failures carry their key too (a name key exists only once a sample does).
            outcome = dataclasses.replace(outcome, key=self.key(outcome.row, None))
        if not own and outcome.key is not None:
            outcome = dataclasses.replace(outcome, key=self._patch_key(outcome.key))
        end: int | None = None
        if outcome.status is Status.OK and outcome.payload is not None:
            record = dataclasses.replace(outcome, payload=None, shard=name)
            log_ = self._logs.get(shard)
            if log_ is None:
                log_ = self._logs[shard] = _Log(self.staging / (shard_name(shard) + SAMPLES))
            parts, offset = self._sample(record, outcome.payload, log_.size)
            if self.public_offsets:
                record = dataclasses.replace(record, offset=offset, size=len(outcome.payload))
            end = log_.append(parts)
        else:
            record = dataclasses.replace(outcome, payload=None, shard=name)
        if own:
            self._count(shard)
        else:
            self._patch_rows += 1
            if self._patch_rows >= self.size:
                self._mark_ready(shard)
                self._patch = None
        return Placed(record, shard, end)

    def _patch_key(self, key: str) -> str:
        """``key``, or ``key-N`` when another row of the open patch shard has it already."""
        candidate, n = key, 0
        while _fold(candidate) in self._patch_keys:
            n += 1
            candidate = f"{key}-{n}"
        self._patch_keys.add(_fold(candidate))
        return candidate

    def _sample(self, record: Outcome, data: bytes, at: int) -> tuple[list[bytes], int]:
        """The tar members of one sample, and the offset of the image's bytes in the log."""
        key = record.key or ""
        mtime = int(time.time())
        parts: list[bytes] = []
        head = tar_header(f"{key}.{self._field}", len(data), mtime)
        offset = at + len(head)
        parts += (head, data, b"\0" * ((-len(data)) % BLOCK))
        meta = json.dumps(shard_records.sample_metadata(record), ensure_ascii=False).encode("utf-8")
        parts += (tar_header(f"{key}.json", len(meta), mtime), meta, b"\0" * ((-len(meta)) % BLOCK))
        if self._caption is not None:
            text = shard_records.caption(record, self._caption).encode("utf-8", "surrogateescape")
            parts += (tar_header(f"{key}.txt", len(text), mtime), text, b"\0" * ((-len(text)) % BLOCK))
        return parts, offset

    # ---- commits ---------------------------------------------------------------
    def ready(self) -> list[int]:
        """Shards that became complete since the last call (to be committed)."""
        ready, self._ready = self._ready, []
        return ready

    def finish(self) -> list[int]:
        """At the end of a complete run: the open patch shard is complete too."""
        if self._patch is not None:
            self._mark_ready(self._patch)
            self._patch = None
        return self.ready()

    async def commit(self, shard: int, ledger: Ledger) -> None:
        """Seal and publish one complete shard.  The ledger must hold all its rows (flushed)."""
        state = self._shards[shard]
        lines = ledger.shard_lines(shard)
        log_ = self._logs.pop(shard, None)
        if log_ is not None:
            log_.close()
        started = state.started or time.time()
        stats = await asyncio.to_thread(self._seal, shard, lines, started, state.kind)
        sealed = state._replace(state="sealed", finished=stats["end_time"])
        ledger.put_shard(sealed)
        self._shards[shard] = sealed
        await asyncio.to_thread(self._publish, shard)
        self._committed(ledger, sealed)

    def _committed(self, ledger: Ledger, state: ShardState) -> None:
        base = shard_name(state.shard)
        for leftover in (SAMPLES, SEALING_LOG):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.staging / (base + leftover))
        try:
            stats = json.loads((self.root / (base + STATS)).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stats = {}
        done = state._replace(
            state="committed",
            nsamples=int(stats.get("successes", 0)),
            filesize=int(stats.get("filesize", 0)),
        )
        ledger.put_shard(done)
        self._shards[state.shard] = done

    def _seal(self, shard: int, lines: list[str], started: float, kind: str) -> dict[str, Any]:
        """Build the shard's output files in staging (in a thread: no ledger access here)."""
        base = shard_name(shard)
        samples = self.staging / (base + SAMPLES)
        records = [json.loads(line) for line in lines]
        filesize = self.build(base, samples, records)
        built = [name for name in self.data_files(base) if (self.staging / name).exists()]
        ended = time.time()
        stats = shard_records.stats(base, kind, records, started, ended, filesize, built)
        _write_durably(self.staging / (base + STATS), json.dumps(stats, indent=2).encode("utf-8"))
        return stats

    def build(self, base: str, samples: Path, records: list[dict[str, Any]]) -> int:
        """Write the format's files for shard ``base`` in staging from its log; the data file's size."""
        raise NotImplementedError

    def _publish(self, shard: int) -> None:
        """Move a sealed shard's files from staging into the output, the stats file last.

        The stats file in staging lists the files sealing built (a webdataset shard
        with no sample has no tar); once it is in the output, everything is.
        """
        stats = self.staging / (shard_name(shard) + STATS)
        try:
            built = list(json.loads(stats.read_text(encoding="utf-8"))["files"])
        except FileNotFoundError:
            if (self.root / stats.name).exists():
                return  # published before an interruption
            raise OutputError(
                f"shard {shard_name(shard)} is sealed but its stats file is in neither "
                f"'{self.staging}' nor '{self.root}'",
                hint="use --overwrite to start afresh",
            ) from None
        except (ValueError, KeyError, TypeError):
            built = list(self.data_files(shard_name(shard)))
        for name in [*built, stats.name]:
            source = self.staging / name
            target = self.root / name
            if not source.exists():
                if not target.exists():
                    raise OutputError(
                        f"shard {shard_name(shard)} is sealed but '{name}' is in neither "
                        f"'{self.staging}' nor '{self.root}'",
                        hint="use --overwrite to start afresh",
                    )
                continue  # moved before an interruption
            _move(source, target, self._files)

    # ---- the end -----------------------------------------------------------------
    def close(self) -> None:
        for log_ in self._logs.values():
            log_.close()
        self._logs.clear()
        self.write_index()

    def write_index(self) -> None:
        """``shards.json``: the committed shards in wids' shard-index form (url, nsamples, filesize)."""
        # A shard without a data file (a webdataset shard whose rows all failed) is left out:
        # Hugging Face's loader cannot infer features from an empty first tar.
        committed = [s for s in sorted(self._shards.values()) if s.state == "committed" and s.filesize]
        if not committed and not (self.root / SHARD_INDEX).exists():
            return
        index = shard_records.shard_index(
            [(self.files(s.shard)[0], s.nsamples or 0, s.filesize or 0, s.kind) for s in committed],
            self.root.name,
        )
        self._files.write("", SHARD_INDEX, json.dumps(index, indent=1).encode("utf-8"))


def _fold(key: str) -> str:
    return key.casefold()


def shard_files(shard: int) -> tuple[str, ...]:
    """Every name a shard of any format may be published under (what ``--overwrite`` deletes)."""
    base = shard_name(shard)
    return (base + ".tar", base + ".parquet", base + STATS)


def wipe(root: Path, state: Path, ledger: Ledger) -> int:
    """``--overwrite``: delete the shards ``ledger`` records, whatever format wrote them, the
    staging folder and the shard index; returns the files deleted.  Nothing else."""
    removed = 0
    for shard in ledger.shards():
        for name in shard_files(shard.shard):
            with contextlib.suppress(FileNotFoundError):
                (root / name).unlink()
                removed += 1
    shutil.rmtree(state / STAGING, ignore_errors=True)
    if ledger.shards():
        with contextlib.suppress(FileNotFoundError):
            (root / SHARD_INDEX).unlink()
    return removed


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _move(source: Path, target: Path, files: FileSink) -> None:
    """Rename ``source`` to ``target``; across file systems, copy to a temporary beside it first."""
    try:
        os.replace(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = target.with_name(f"{TEMP_PREFIX}{target.name}{TEMP_SUFFIX}")
    try:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    source.unlink()
