"""Shard formats: rows ``[k*N, (k+1)*N)`` collected per shard in staging, published whole.

A shard is built in the state folder (``STATE/staging/``), never under its
final name.  Each event loop appends the samples of the rows it fetched to its
own *sample log* of the shard (``00000.<writer>.samples``, tar members; see
:mod:`imgfetch.sinks.samples`), and the ledger stores, per row, which log holds
its sample and where the sample ends.  The samples of a log that the ledger does
not know are always its tail, so after ``kill -9`` a resume cuts each log back to
its last known sample and carries on with the rows that are not done.  Nothing
finished is fetched again.

When every row of a shard is final the shard is *sealed*: its output files are
built in staging (the logs joined into the tar -- one log is simply renamed --
or the Parquet file written from the logs; the per-shard records, with each
image's offset in the tar; the stats), the ledger marks it ``sealed``, then the files
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
import time
from typing import TYPE_CHECKING, Any, ClassVar

from imgfetch import sources
from imgfetch.errors import ImgfetchError, OutputError
from imgfetch.records import shard_records
from imgfetch.records.ledger import ShardState
from imgfetch.sinks.base import Placed
from imgfetch.sinks.files import TEMP_PREFIX, TEMP_SUFFIX, FileSink
from imgfetch.sinks.samples import SAMPLES, SampleWriter, log_name, shard_name

if TYPE_CHECKING:
    from pathlib import Path

    from imgfetch.config import RunConfig
    from imgfetch.outcome import Outcome
    from imgfetch.records.ledger import Ledger, Sample

log = logging.getLogger("imgfetch")

STAGING = "staging"
STATS = "_stats.json"
SHARD_INDEX = "shards.json"
#: Names a shard format publishes: ``00000.tar``, ``00000.parquet``, ``00000_stats.json``.
_SHARD_FILE = re.compile(r"\A(\d{5,})(\.tar|\.parquet|_stats\.json)\Z")


def index_digits(shard_size: int) -> int:
    """Digits of a row's index within its shard in a key (img2dataset's convention)."""
    return max(1, len(str(shard_size - 1)))


class ShardSink:
    """The recording side of the shard formats (see the module docstring)."""

    #: The format's name in ``--output-format`` (set by subclasses).
    name: ClassVar[str] = ""
    #: The suffix of the file that holds a shard's samples.
    data_suffix: ClassVar[str] = ""

    def __init__(self, cfg: RunConfig, root: Path, state: Path) -> None:
        self.cfg = cfg
        self.root = root
        self.staging = state / STAGING
        self.size = cfg.output.shard_size
        self._digits = index_digits(self.size)
        self._files = FileSink(root)  # checks the output folder; publishes with its temporaries
        self.root = self._files.root
        self._shards: dict[int, ShardState] = {}
        self._counts: dict[int, int] = {}
        #: Rows sent to a patch shard and not recorded yet -> that shard.
        self._routed: dict[int, int] = {}
        self._patch: int | None = None
        #: Per patch shard: rows routed to it, and rows routed but not recorded yet.
        self._patch_rows: dict[int, int] = {}
        self._patch_pending: dict[int, int] = {}
        #: Keys taken in the open patch shard (casefolded): with ``--key name`` rows from several
        #: base shards meet there, and names are unique only within their base shard.
        self._patch_keys: set[str] = set()
        self._next_free = 0
        self._total: int | None = None
        self._ready: list[int] = []
        self._ledger: Ledger | None = None

    @classmethod
    def fetch_writer(cls, cfg: RunConfig, root: Path, writer: int) -> SampleWriter:
        """What event loop ``writer`` (0: the pipeline's own) writes its samples with."""
        return SampleWriter(cfg, cfg.output.state / STAGING, writer, cls.data_suffix)

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
                known_logs |= self._recover(ledger, state)
                if state.kind == "patch":
                    lines = ledger.shard_lines(state.shard)
                    self._patch_rows[state.shard] = len(lines)
                    if len(lines) >= self.size:
                        self._mark_ready(state.shard)
                    elif self._patch is None or state.shard > self._patch:
                        self._patch = state.shard
                        self._patch_keys = {_fold(json.loads(line).get("key") or "") for line in lines}
            elif state.state == "sealed":
                self._publish(state.shard)
                self._committed(ledger, state)
        # Staging files of no open shard: a sealed shard's leftovers, or a log the ledger never heard of.
        with os.scandir(self.staging) as entries:
            leftovers = [e.path for e in entries if e.name not in known_logs and not e.is_dir()]
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

    def _recover(self, ledger: Ledger, state: ShardState) -> set[str]:
        """Cut an open shard's logs back to the samples the ledger knows; forget samples they
        lost.  Returns the names of the logs that stay."""
        shard = state.shard
        samples = ledger.samples(shard)
        writers = sorted({s.writer for s in samples})
        missing = [w for w in writers if not (self.staging / log_name(shard, w)).exists()]
        if len(missing) == 1:
            # Killed while sealing, before the ledger said "sealed": sealing makes the largest
            # log the tar (the others appended, then renamed); take it back as that log -- the
            # cut below drops whatever was appended.
            with contextlib.suppress(FileNotFoundError):
                os.replace(
                    self.staging / (shard_name(shard) + ".tar"), self.staging / log_name(shard, missing[0])
                )
        lost: list[int] = []
        kept: set[str] = set()
        for writer in writers:
            path = self.staging / log_name(shard, writer)
            try:
                size = os.lstat(path).st_size
            except FileNotFoundError:
                size = 0
            mine = [s for s in samples if s.writer == writer]
            lost += [s.row for s in mine if s.end > size]
            keep = max((s.end for s in mine if s.end <= size), default=0)
            if keep:
                os.truncate(path, keep)
                kept.add(path.name)
        if lost:
            log.warning(
                "resume: %d samples of shard %s are gone from staging; they will be done again",
                len(lost),
                shard_name(shard),
            )
            ledger.forget(lost)
        return kept

    # ---- rows ----------------------------------------------------------------
    def locate(self, index: int, folder: str, stem: str | None) -> tuple[str, str | None]:
        """The shard (as the row's folder) and the key a row is fetched with."""
        base = index // self.size
        state = self._shards.get(base)
        key = self.key(index, stem)
        if state is None:
            self._start(base, "base")
            self.started(base)
        elif state.kind != "base" or state.state != "open":
            # The row's own shard is committed (or its number went to a patch): a patch shard.
            shard = self._patch_shard()
            self._routed[index] = shard
            self._patch_rows[shard] = self._patch_rows.get(shard, 0) + 1
            self._patch_pending[shard] = self._patch_pending.get(shard, 0) + 1
            if key is not None:
                key = self._patch_key(key)
            if self._patch_rows[shard] >= self.size:
                self._patch = None  # full: the next redone row starts another
            return shard_name(shard), key
        return shard_name(base), key

    def skipped(self, index: int) -> None:
        """A row final from an earlier run: it counts towards its shard being complete."""
        shard = index // self.size
        state = self._shards.get(shard)
        if state is None or (state.kind == "base" and state.state == "open"):
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

    def _patch_shard(self) -> int:
        if self._patch is None:
            self._patch = self._next_free
            self._next_free += 1
            self._patch_keys = set()
            self._start(self._patch, "patch")
        return self._patch

    def _start(self, shard: int, kind: str) -> None:
        assert self._ledger is not None
        state = ShardState(shard, kind, "open", time.time(), None, None, None)
        self._ledger.put_shard(state)
        self._shards[shard] = state
        self._next_free = max(self._next_free, shard + 1)

    def _patch_key(self, key: str) -> str:
        """``key``, or ``key-N`` when another row of the open patch shard has it already."""
        candidate, n = key, 0
        while _fold(candidate) in self._patch_keys:
            n += 1
            candidate = f"{key}-{n}"
        self._patch_keys.add(_fold(candidate))
        return candidate

    def add(self, outcome: Outcome) -> Placed:
        """The row's outcome as recorded, and where its sample is (written by its fetcher)."""
        shard = self._routed.pop(outcome.row, None)
        own = shard is None
        if shard is None:
            shard = outcome.row // self.size
        record = outcome
        if record.shard is None:  # a row without a sample: it belongs to its shard all the same
            key = record.key
            if key is None and self.cfg.output.key == "index":
                key = self.key(record.row, None)
            record = dataclasses.replace(record, shard=shard_name(shard) + self.data_suffix, key=key)
        if own:
            self.recorded(shard, record)
            self._count(shard)
        else:
            pending = self._patch_pending[shard] = self._patch_pending[shard] - 1
            if not pending and self._patch_rows.get(shard, 0) >= self.size:
                self._mark_ready(shard)
        return Placed(record, shard, record.writer, record.end, record.offset)

    def started(self, shard: int) -> None:
        """Shard ``shard`` has been started by this run (a format may build as it fills)."""

    def recorded(self, shard: int, outcome: Outcome) -> None:
        """A row of ``shard`` started by this run was recorded (before its shard is complete)."""

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
        rows = ledger.shard_rows(shard)
        started = state.started or time.time()
        stats = await asyncio.to_thread(self._seal, shard, rows, started, state.kind)
        sealed = state._replace(state="sealed", finished=stats["end_time"])
        ledger.put_shard(sealed)
        self._shards[shard] = sealed
        await asyncio.to_thread(self._publish, shard)
        self._committed(ledger, sealed)

    def _committed(self, ledger: Ledger, state: ShardState) -> None:
        base = shard_name(state.shard)
        with os.scandir(self.staging) as entries:
            logs = [e.path for e in entries if e.name.startswith(base + ".") and e.name.endswith(SAMPLES)]
        for path in logs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
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

    def _seal(
        self, shard: int, rows: list[tuple[str, Sample | None]], started: float, kind: str
    ) -> dict[str, Any]:
        """Build the shard's output files in staging (in a thread: no ledger access here)."""
        base = shard_name(shard)
        records = [json.loads(line) for line, _ in rows]
        samples = [sample for _, sample in rows]
        logs: dict[int, Path] = {}
        for sample in samples:
            if sample is not None and sample.writer not in logs:
                logs[sample.writer] = self.staging / log_name(shard, sample.writer)
        for writer, path in logs.items():  # nothing past the last sample the ledger knows
            os.truncate(path, max(s.end for s in samples if s is not None and s.writer == writer))
        filesize = self.build(base, dict(sorted(logs.items())), records, samples)
        built = [name for name in self.data_files(base) if (self.staging / name).exists()]
        ended = time.time()
        stats = shard_records.stats(base, kind, records, started, ended, filesize, built)
        _write_file(self.staging / (base + STATS), json.dumps(stats, indent=2).encode("utf-8"))
        return stats

    def build(
        self,
        base: str,
        logs: dict[int, Path],
        records: list[dict[str, Any]],
        samples: list[Sample | None],
    ) -> int:
        """Write the format's files for shard ``base`` in staging from its ``logs`` (writer ->
        path); ``samples`` are where each record's sample is.  Returns the data file's size."""
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


def _write_file(path: Path, data: bytes) -> None:
    # Not fsynced, like the shard's data files (see webdataset.join_logs).
    with open(path, "wb") as fh:
        fh.write(data)


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
