"""rows -> fetch -> check/process -> write -> record; the same for every engine.

The pipeline reads rows in input order, claims each row's name there (so names
never depend on completion order), then runs each row as a task: per-host
gate, global limit, the engine's attempt, the shared retry policy, the image
check (header only, in the event loop) or processing (in a process pool), an
atomic write, and one :class:`~imgfetch.outcome.Outcome`.

Resume (see :mod:`imgfetch.ledger`): outcomes are batched in memory and
committed to the ledger, then appended to the manifest, every
:data:`FLUSH_EVERY` seconds, every :data:`FLUSH_ROWS` rows and at the end.  A
file is renamed into place before its outcome is recorded, so whatever a
crash interrupts is redone.  On start the run checks that the input and the
output-shaping options are those of the last run in the folder, cleans up
after a killed run, and then skips the rows the ledger holds as final with a
merge-join of the input against the ledger in row order.

Memory is bounded: at most ``window`` rows are in flight (the reader waits for
a free slot), the ledger is read in pages, names are claimed one folder at a
time, and the per-host failure counts are pruned (:data:`HOSTS_KEPT`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from imgfetch import images, naming, sources
from imgfetch._version import __version__
from imgfetch.config import Naming
from imgfetch.errors import ConfigError, OutputError, ResumeConflict
from imgfetch.fetch.common import Fault, parse_url
from imgfetch.fetch.policy import is_retryable
from imgfetch.outcome import Outcome, Reason, Status, Summary
from imgfetch.records import ledger as ledgers
from imgfetch.records.ledger import Entry, Fingerprint, Ledger
from imgfetch.records.manifest import read_manifest
from imgfetch.runners import loops
from imgfetch.runners.local import FATAL, Engine, Fetcher, Job, failed
from imgfetch.sinks import fetch_writer, make_sink, shards
from imgfetch.sinks.files import FATAL_ERRNOS, root_layout
from imgfetch.workers import CpuPool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Mapping

    from imgfetch.config import RunConfig
    from imgfetch.runners.base import Runner
    from imgfetch.sinks.base import Placed, Sink

log = logging.getLogger("imgfetch")

#: Seconds between ledger commits; a kill loses at most this much finished work.
FLUSH_EVERY = 0.5
#: Outcomes per ledger commit at most: one transaction per batch keeps SQLite off the critical path.
FLUSH_ROWS = 2000
#: Failure counts kept per host: pruned to the top ones so a list of millions of hosts stays bounded.
HOSTS_KEPT = 10_000
#: The reader yields to the event loop this often, so signals and flushes run while it skips rows.
YIELD_EVERY = 1000
#: Rows parked behind hosts that used up their share of the window, at most.
PARK_MAX = 4096
CONFLICT_HINT = "use --overwrite to start afresh or --force to mix"
#: Rows per block of the resume merge-join: the folder size when it is at most MAX_BLOCK.
DEFAULT_BLOCK = 10_000
MAX_BLOCK = 100_000


class Run:
    """One run of the pipeline.  ``await run.execute()`` returns the Summary."""

    def __init__(
        self,
        cfg: RunConfig,
        engine: Engine,
        *,
        stdin: BinaryIO | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        rows: Iterator[sources.Row] | None = None,
    ) -> None:
        # Absolute paths: loop processes (which may start in another working directory) find
        # the same output and state folders.
        out = cfg.output
        state_dir = out.state_dir.absolute() if out.state_dir is not None else None
        cfg = dataclasses.replace(
            cfg, output=dataclasses.replace(out, out=out.out.absolute(), state_dir=state_dir)
        )
        self.cfg = cfg
        self.engine = engine
        self.summary = Summary()
        self._stdin = stdin
        self._rows = rows
        self.on_outcome = on_outcome
        self._stopping = False
        self._sink: Sink | None = None
        #: Shards that are complete and wait for their commit, and the task committing them.
        self._to_commit: list[int] = []
        self._committer: asyncio.Task[None] | None = None
        #: True once the reader has read the whole input (not stopped, not failed).
        self._read_all = False
        self._ledger: Ledger | None = None
        self._batch: list[Entry] = []
        self._resuming = False
        self._unclaimed: list[sources.Row] = []
        self._unclaimed_folder = -1
        self._pool: CpuPool[images.Processed | images.Rejected] | None = None
        #: Who does the rows: this loop's Fetcher, then the loop processes (``--loops``).
        self._runners: list[Runner] = []
        self._owners = loops.Owners([1.0])
        self._fatal: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._concurrency = min(cfg.http.concurrency, engine.max_in_flight)
        self._window = max(256, self._concurrency * 4)
        out = cfg.output
        if out.sharded:
            # Names are claimed per shard; with index keys they are not used at all.
            names = out.naming if out.key == "name" else Naming(kind="index")
            self._group = out.shard_size
            self._namer = naming.Namer(names, out.shard_size, 0, dotless=True)
        else:
            self._group = out.folder_size
            self._namer = naming.Namer(out.naming, out.folder_size, out.folder_index)
        # Bodies waiting for the pool are bounded by the pool (workers x QUEUED); the
        # reader stops when the window is full.
        self._workers = cfg.workers or os.cpu_count() or 1

    # ---- control ---------------------------------------------------------
    def stop(self, grace: float = 3.0) -> None:
        """Take no new rows; rows in flight get ``grace`` seconds to finish, then are
        cancelled without an outcome, so the next run does them again (Ctrl-C, SIGTERM).

        A row whose attempt fails transiently while stopping is not retried and
        gets no outcome either: it is redone next time, not recorded as failed.
        """
        if self._stopping:
            return
        self._stopping = True
        self._stop_runners()
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_later(grace, self._cancel_in_flight)

    def _stop_runners(self) -> None:
        for runner in self._runners:
            runner.stop()

    def _cancel_in_flight(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def flush_now(self) -> None:
        """Commit recorded outcomes to the ledger and the manifest now (before an immediate exit).

        Safe at any moment the event loop runs a callback (a signal handler):
        commits are synchronous, so none is ever half done when this runs.
        """
        self._flush()

    @property
    def stopping(self) -> bool:
        return self._stopping

    # ---- main loop -------------------------------------------------------
    async def execute(self) -> Summary:
        cfg = self.cfg
        started = time.monotonic()
        self._sink = make_sink(cfg, cfg.output.out, cfg.output.state)
        root = self._sink.root
        count = loops.count(cfg)
        # Shard formats with --loops auto: the pipeline's own loop fetches nothing, so with two
        # loops (two cores) one process writes every sample and sealing a shard renames its log
        # instead of copying one log into another (~0.15 CPU s and ~1 s of wall time per 700 MB
        # shard on the benchmark machine); the home loop still reads, names and records.  An
        # explicit --loops N keeps N loops fetching.
        home = 0.0 if cfg.output.sharded and cfg.loops is None else loops.HOME_WEIGHT
        parts = loops.weights(count, home=home)
        share = loops.shares(self._concurrency, parts)
        self._owners = loops.Owners(parts)
        remote: list[loops.LoopProcess] = []
        flusher: asyncio.Task[None] | None = None
        try:
            # Loop processes are forked first, before this process holds the folder lock and
            # an SQLite connection, so that neither is ever inherited.
            remote = await loops.start_all(cfg, root, share[1:]) if count > 1 else []
            self._ledger = self._open_ledger(root)
            if cfg.image.decodes:
                self._pool = await CpuPool(images.process, cfg.image, self._workers).__aenter__()
            local = Fetcher(cfg, self.engine, fetch_writer(cfg, root, 0), share[0], self._pool)
            self._runners = [local, *remote]
            if self._stopping:  # stopped while starting
                self._stop_runners()
            flusher = asyncio.create_task(self._flush_periodically())
            async with self.engine:
                await self._dispatch()
            if self._read_all and not self._stopping and self._fatal is None:
                self._schedule(self._sink.finish())
            if self._committer is not None:
                await self._committer
        finally:
            if self._committer is not None and not self._committer.done():
                self._committer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._committer
            if flusher is not None:
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
            # Every loop process has ended before the ledger (and the folder lock) is let go.
            for lp in remote:
                await lp.close()
            if self._pool is not None:
                await self._pool.close()
            self._finish_ledger()
            self.summary.elapsed = time.monotonic() - started
            self.summary.interrupted = self._stopping
        if self._fatal is not None:
            raise self._fatal
        return self.summary

    def _finish_ledger(self) -> None:
        ledger = self._ledger
        if ledger is None:
            return
        try:
            self._flush()
            # Rows redone this run left their older line behind: one record per row again.
            if self._fatal is None and not ledger.manifest_consistent():
                ledger.rewrite_manifest()
            if self._sink is not None:
                self._sink.close()
        except OSError as exc:
            self._fatal = self._fatal or OutputError(f"cannot write the shard index: {exc.strerror or exc}")
        except OutputError as exc:
            self._fatal = self._fatal or exc
        finally:
            ledger.close()
            self._ledger = None

    # ---- resume ----------------------------------------------------------
    def _open_ledger(self, root: Path) -> Ledger:
        """Open (or start) the ledger of ``root`` and make the folder fit to resume from.

        In order: ``--overwrite`` wipes the previous run; a manifest without a
        ledger is refused (or, with ``--force``, imported); the input and the
        output-shaping options are compared with the last run's; temporaries
        are deleted; files and ledger are reconciled; a manifest that does not
        mirror the ledger is rewritten; this run's input and options are stored.
        """
        cfg = self.cfg
        sink = self._sink
        assert sink is not None
        manifest = root / cfg.output.manifest
        state = cfg.output.state
        options = output_options(cfg)
        existed = ledgers.exists(state)
        imported = False
        if cfg.overwrite:
            old = Ledger(root, manifest, state) if existed else None
            removed = shards.wipe(root, state, old) if old is not None else 0
            include_root = not cfg.output.sharded and (
                cfg.output.folder_size == 0 or (old is not None and root_layout(old))
            )
            removed += ledgers.wipe(root, manifest, old, include_root=include_root)
            if removed:
                log.warning("--overwrite: deleted %d files of the previous run", removed)
            existed = False
        elif not existed and _has_content(manifest):
            if not cfg.force:
                raise ResumeConflict(
                    f"'{root}' holds a manifest but no resume ledger (an older imgfetch, or "
                    f"the state folder '{state}' was deleted)",
                    hint="use --overwrite to start afresh or --force to resume from the manifest",
                )
            imported = True
        ledger = Ledger(root, manifest, state)
        try:
            fingerprint = self._check_previous(ledger, options) if existed else self._fingerprint(None)[0]
            if imported:
                _import_manifest(ledger, manifest)
            # The sink makes the destination agree with the ledger (a killed run's leftovers).
            try:
                sink.open(ledger)
            except OSError as exc:
                raise OutputError(f"cannot prepare '{root}': {exc.strerror or exc}") from None
            if existed or imported:
                self._resuming = not ledger.is_empty()
            if not ledger.manifest_consistent():
                ledger.rewrite_manifest()
            ledger.put(
                {
                    "input": fingerprint.to_json(),
                    "options": json.dumps(options, sort_keys=True),
                    "version": __version__,
                    "started": str(time.time()),
                }
            )
        except BaseException:
            ledger.close()
            raise
        return ledger

    def _fingerprint(self, old: Fingerprint | None) -> tuple[Fingerprint, str | None]:
        source = self.cfg.input.source
        if source == "-" or self._rows is not None:
            return ledgers.UNKNOWN_SOURCE, None
        return ledgers.compare_input(Path(source), old)

    def _check_previous(self, ledger: Ledger, options: dict[str, Any]) -> Fingerprint:
        """Refuse to mix with a run of another input or other output options (unless ``--force``)."""
        old_input = Fingerprint.from_json(ledger.get_json("input"))
        fingerprint, why = self._fingerprint(old_input)
        old_options = ledger.get_json("options")
        changed = ledgers.compare_options(old_options if isinstance(old_options, dict) else None, options)
        reasons = [r for r in (why, changed) if r is not None]
        if reasons and not self.cfg.force:
            raise ResumeConflict(f"{'; '.join(reasons)} (in '{ledger.root}')", hint=CONFLICT_HINT)
        if reasons:
            log.warning("--force: resuming although %s", "; ".join(reasons))
        return fingerprint

    def _redo(self, ledger: Ledger) -> ledgers.Redo:
        """Which rows the ledger holds as failed are done again in this run."""
        if self.cfg.retry_all_failed:
            return ledgers.Redo(all_failed=True)
        if not self.cfg.retry_failed:
            return ledgers.Redo()
        return ledgers.Redo(reasons=tuple(r for r in ledger.failed_reasons() if is_retryable(r)))

    # ---- recording -------------------------------------------------------
    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self._flush()

    def _flush(self) -> None:
        batch = self._batch
        if not batch or self._ledger is None:
            return
        self._batch = []
        try:
            self._ledger.record(batch)
        except OutputError as exc:
            # The batch's rows are not in the ledger: the next run redoes them.
            if self._fatal is None:
                self._fatal = exc
            self.stop(grace=0.0)

    async def _dispatch(self) -> None:
        window = asyncio.Semaphore(self._window)
        tasks = self._tasks
        # One host may hold only a share of the window; the rest of its rows wait in
        # ``parked`` (outside the window), so a host that is backing off or slow never
        # keeps rows for other hosts further down the list from starting.
        share = max(4 * self.cfg.http.per_host, 32)
        in_window: dict[str, int] = {}
        parked: dict[str, collections.deque[Job]] = {}
        backlog = 0
        room = asyncio.Event()
        room.set()

        def start(job: Job) -> None:
            in_window[job.host] = in_window.get(job.host, 0) + 1
            task = asyncio.create_task(self._handle(job))
            tasks.add(task)
            task.add_done_callback(functools.partial(done, job.host))

        def done(host: str, task: asyncio.Task[None]) -> None:
            nonlocal backlog
            tasks.discard(task)
            in_window[host] -= 1
            if self._stopping:
                room.set()  # parked rows are left for the next run; the reader must see the stop
            queue = parked.get(host)
            if queue and not self._stopping:
                job = queue.popleft()  # takes over the finished row's window slot
                if not queue:
                    del parked[host]
                backlog -= 1
                if backlog < PARK_MAX:
                    room.set()
                start(job)
                return
            if not in_window[host]:
                del in_window[host]
            window.release()

        rows = self._rows if self._rows is not None else sources.read_rows(self.cfg.input, stdin=self._stdin)
        ledger = self._ledger
        assert ledger is not None
        # Merge-join against the ledger in blocks of rows, both in row order: memory is one
        # block.  A block done entirely (the common case on resume) costs one count query and
        # then a comparison per row; only a mixed block brings its final rows into a set.
        redo = self._redo(ledger) if self._resuming else None
        size = self._group
        # Blocks are folders (shards) when that is bounded, so a finished block is a finished folder.
        block = size if 0 < size <= MAX_BLOCK else DEFAULT_BLOCK
        sink = self._sink
        assert sink is not None
        rows_read = 0
        block_end = -1
        final: set[int] | None = set()
        since_yield = 0
        for row in rows:
            if self._stopping:
                break
            index = row.index
            rows_read = index + 1
            if index >= block_end:
                block_start = index - index % block
                block_end = block_start + block
                final = ledger.final_rows(block_start, block_end, redo) if redo is not None else set()
            since_yield += 1
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)
                if self._stopping:
                    break
            if final is None:
                self.summary.already_done += 1
                sink.skipped(index)
                if block != size:  # a finished block that is not a whole folder
                    self._skip(row)
                continue
            if index in final:
                self.summary.already_done += 1
                sink.skipped(index)
                self._skip(row)
                continue
            if self._unclaimed:
                self._claim_skipped(index)
            job = self._prepare(row)
            if isinstance(job, Outcome):
                self._record(job, None)
                continue
            if in_window.get(job.host, 0) >= share:
                parked.setdefault(job.host, collections.deque()).append(job)
                backlog += 1
                if backlog >= PARK_MAX:
                    room.clear()
                    await room.wait()  # one host dominates the list: now the reader must wait
                continue
            await window.acquire()
            if self._stopping:
                window.release()
                break
            start(job)
        else:
            if not self._stopping:
                self._read_all = True
                sink.end_of_input(rows_read)
        self._schedule(sink.ready())
        while tasks:
            await asyncio.gather(*list(tasks), return_exceptions=True)

    def _skip(self, row: sources.Row) -> None:
        """A row done in an earlier run.  Its name must still be claimed before any later row of
        its folder is named, so it waits in a per-folder buffer (at most one folder's rows) and
        is claimed only if a row of the same folder has work to do.  A finished folder, the
        common case on resume, claims nothing: that is most of the resume start-up time saved."""
        size = self.cfg.output.folder_size
        if size == 0:  # one folder for everything: claim now rather than buffer the whole list
            self._namer.claim(row.index, row.url, row.extra)
            return
        folder = row.index // size
        if folder != self._unclaimed_folder:
            self._unclaimed.clear()
            self._unclaimed_folder = folder
        self._unclaimed.append(row)

    def _claim_skipped(self, index: int) -> None:
        size = self.cfg.output.folder_size
        if size and index // size == self._unclaimed_folder:
            for done in self._unclaimed:
                self._namer.claim(done.index, done.url, done.extra)
        self._unclaimed.clear()

    def _prepare(self, row: sources.Row) -> Job | Outcome:
        """Claim the row's name (in input order) and validate its URL."""
        stem = self._namer.claim(row.index, row.url, row.extra)
        folder = self._namer.folder(row.index)
        assert self._sink is not None
        folder, stem = self._sink.locate(row.index, folder, stem)  # shard formats: shard and key
        if row.error is not None:
            return failed(row, Reason.INVALID_ROW.value, row.error, 0, time.monotonic())
        try:
            url = parse_url(row.url)
        except Fault as fault:
            return failed(row, fault.reason, fault.detail, 0, time.monotonic())
        return Job(row, url, folder, stem)

    async def _handle(self, job: Job) -> None:
        runner = self._runners[self._owners(job.host)]
        try:
            outcome = await runner.outcome(job)
        except FATAL as exc:  # the disk is full, no worker can start: stop the run
            if self._fatal is None:
                self._fatal = exc
            self.stop(grace=0.0)
            return
        except Exception as exc:  # a bug must cost one row, never the run
            # Fetcher.outcome already turns its own errors into internal-error outcomes; this
            # catches what happens around a loop process (a row that cannot be pickled, say).
            if self._stopping:
                return
            log.exception("internal error on row %d", job.row.index)
            outcome = failed(job.row, Reason.INTERNAL_ERROR.value, repr(exc)[:300], 0, job.started)
        if outcome is not None:
            self._record(outcome, job.host)

    def _place(self, outcome: Outcome) -> Placed:
        sink = self._sink
        assert sink is not None
        try:
            placed = sink.add(outcome)
        except OSError as exc:
            fatal = exc.errno in FATAL_ERRNOS
            if fatal and self._fatal is None:
                self._fatal = OutputError(f"cannot write to '{sink.root}': {exc.strerror}")
                self.stop(grace=0.0)
            lost = dataclasses.replace(
                outcome,
                status=Status.FAILED,
                reason=Reason.WRITE_ERROR.value,
                detail=str(exc)[:300],
                path=None,  # no sidecar is tried again; the image left behind is claimed, so removed
            )
            # The files format's sidecars could not be written: the row is recorded as failed.
            placed = sink.add(lost)
        ready = sink.ready()
        if ready:
            self._schedule(ready)
        return placed

    def _schedule(self, shards: list[int]) -> None:
        """Commit these complete shards, one after the other, in the background."""
        if not shards:
            return
        self._to_commit.extend(shards)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_all())

    async def _commit_all(self) -> None:
        sink, ledger = self._sink, self._ledger
        assert sink is not None and ledger is not None
        while self._to_commit and self._fatal is None:
            shard = self._to_commit.pop(0)
            self._flush()  # the shard's records come from the ledger
            if self._fatal is not None:
                return
            try:
                await sink.commit(shard, ledger)
            except (OSError, OutputError) as exc:
                if isinstance(exc, OSError):
                    exc = OutputError(
                        f"cannot commit shard {shard:05d} in '{sink.root}': {exc.strerror or exc}"
                    )
                self._fatal = self._fatal or exc
                self.stop(grace=0.0)
                return

    def _record(self, outcome: Outcome, host: str | None) -> None:
        """Store the row's sample (shard formats), queue its outcome for the next ledger
        commit and count it."""
        placed = self._place(outcome)
        outcome = placed.outcome
        self._batch.append(_entry(outcome.to_record(), placed))
        if len(self._batch) >= FLUSH_ROWS:
            self._flush()
        self.summary.add(outcome, host)
        if outcome.status is Status.FAILED and len(self.summary.failed_hosts) > 2 * HOSTS_KEPT:
            _prune(self.summary)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "row=%d status=%s reason=%s http=%s attempts=%d bytes=%s path=%s url=%s",
                outcome.row,
                outcome.status.value,
                outcome.reason or "-",
                outcome.http_status if outcome.http_status is not None else "-",
                outcome.attempts,
                outcome.bytes if outcome.bytes is not None else "-",
                outcome.path or "-",
                outcome.url,
            )
        if self.on_outcome is not None:
            self.on_outcome(outcome)


def output_options(cfg: RunConfig) -> dict[str, Any]:
    """The options that decide what lands on disk and under which name, as stored in the ledger.

    Concurrency, timeouts, retries and the like are free to change between
    runs; these are not, or a resumed run would mix two kinds of output.
    """
    try:
        fmt: str = sources.detect_format(cfg.input.source, cfg.input.format)
    except ConfigError:  # rows handed to Run directly, from a source without a known format
        fmt = "unknown"
    out = cfg.output
    opts: dict[str, Any] = {"input-format": fmt}
    # Options added since the first ledger are stored only when they differ from their
    # default, so a folder written before they existed resumes without a conflict.
    if out.sharded:
        opts.update({"output-format": out.format, "shard-size": out.shard_size, "key": out.key})
        if out.key == "name":
            opts["name"] = str(out.naming)
    else:
        opts.update(
            {"name": str(out.naming), "folder-size": out.folder_size, "folder-index": out.folder_index}
        )
        if out.write_metadata:
            opts["write-metadata"] = True
    if out.caption_col is not None:
        opts["caption-col"] = out.caption_col
    if fmt != "txt":
        opts["url-col"] = cfg.input.url_col
    image = dataclasses.asdict(cfg.image)
    # Settings that cannot change a byte of this configuration's output are left out,
    # so changing them does not count as a conflict.
    if not cfg.image.transforms:
        del image["quality"]
    if cfg.image.resize != "pad":
        del image["pad_color"]
    for key, value in image.items():
        opts[key.replace("_", "-")] = value
    # A JSON round trip turns tuples into lists, as they come back from the ledger.
    result: dict[str, Any] = json.loads(json.dumps(opts))
    return result


def _has_content(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


# Built once: json.dumps with non-default arguments builds a new encoder on every call.
_JSON_UTF8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_JSON_ASCII = json.JSONEncoder(separators=(",", ":"))


def _line(record: Mapping[str, Any]) -> str:
    line = _JSON_UTF8.encode(record)
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (from a jsonl "\ud800" escape): keep it escaped
            line = _JSON_ASCII.encode(record)
    return line


def _entry(record: Mapping[str, Any], placed: Placed | None = None) -> Entry:
    path = record.get("path")
    folder: str | None = None
    name: str | None = None
    if isinstance(path, str) and path:
        folder, _, name = path.rpartition("/")
    reason = record.get("reason")
    return Entry(
        int(record["row"]),
        str(Status(record["status"]).value),
        reason if isinstance(reason, str) else None,
        folder,
        name,
        _line(record),
        *((placed.shard, placed.writer, placed.end, placed.offset) if placed is not None else ()),
    )


def _import_manifest(ledger: Ledger, manifest: Path) -> None:
    """``--force`` over a manifest without ledger: its records become the ledger (last one wins)."""
    batch: list[Entry] = []
    for record in read_manifest(manifest):
        try:
            batch.append(_entry(record))
        except (KeyError, TypeError, ValueError):
            continue
        if len(batch) >= FLUSH_ROWS:
            ledger.insert_only(batch)
            batch = []
    ledger.insert_only(batch)


def _prune(summary: Summary) -> None:
    """Keep the :data:`HOSTS_KEPT` hosts with most failures (the summary shows the top few)."""
    top = summary.failed_hosts.most_common(HOSTS_KEPT)
    summary.failed_hosts.clear()
    summary.failed_hosts.update(dict(top))


async def iterate(run: Run) -> AsyncIterator[Outcome]:
    """Yield outcomes of ``run`` as they are recorded (used by :func:`imgfetch.stream`)."""
    queue: asyncio.Queue[Outcome | None] = asyncio.Queue()
    previous = run.on_outcome

    def push(outcome: Outcome) -> None:
        if previous is not None:
            previous(outcome)
        queue.put_nowait(outcome)

    run.on_outcome = push
    task = asyncio.create_task(run.execute())
    task.add_done_callback(lambda _t: queue.put_nowait(None))
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            yield item
        await task
    finally:
        if not task.done():
            run.stop()
            await asyncio.wait({task})
