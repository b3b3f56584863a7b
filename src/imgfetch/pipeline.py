"""rows -> fetch -> check/process -> write -> record; the same for every engine.

The pipeline reads rows in input order, claims each row's name there (so names
never depend on completion order), then runs each row as a task: per-host
gate, global limit, the engine's attempt, the shared retry policy, the image
check (header only, in the event loop) or processing (in a process pool), an
atomic write, and one :class:`~imgfetch.outcome.Outcome`.  Memory is bounded:
at most ``window`` rows are in flight, and the reader waits for a free slot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import multiprocessing
import os
import time
from typing import TYPE_CHECKING, BinaryIO, Protocol

from imgfetch import images, naming, sources
from imgfetch.errors import OutputError
from imgfetch.fetch.common import Fault, Fetched, parse_url
from imgfetch.fetch.hosts import HostTable
from imgfetch.fetch.policy import backoff_delay, is_retryable
from imgfetch.outcome import Outcome, Reason, Status, Summary, status_for
from imgfetch.sinks import FATAL_ERRNOS, FileSink, ManifestWriter

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from yarl import URL

    from imgfetch.config import RunConfig

log = logging.getLogger("imgfetch")

#: Statuses with which a host says "too much": they shrink its allowed concurrency.
_SLOW_DOWN = frozenset({429, 503})
FLUSH_EVERY = 1.0


class Engine(Protocol):
    """How one attempt is scheduled; everything else is the pipeline's."""

    name: str
    max_in_flight: int

    async def __aenter__(self) -> Engine: ...
    async def __aexit__(self, *exc: object) -> None: ...
    async def attempt(self, url: URL) -> Fetched: ...


class Job:
    __slots__ = ("folder", "host", "row", "started", "stem", "url")

    def __init__(self, row: sources.Row, url: URL, folder: str, stem: str | None) -> None:
        self.row = row
        self.url = url
        self.host = url.host or ""
        self.folder = folder
        self.stem = stem
        self.started = time.monotonic()


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
        self.cfg = cfg
        self.engine = engine
        self.summary = Summary()
        self._stdin = stdin
        self._rows = rows
        self.on_outcome = on_outcome
        self._stopping = False
        self._sink: FileSink | None = None
        self._manifest: ManifestWriter | None = None
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._fatal: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        concurrency = min(cfg.http.concurrency, engine.max_in_flight)
        self._global = asyncio.Semaphore(concurrency)
        self._window = max(256, concurrency * 4)
        self._hosts = HostTable(cfg.http)
        self._namer = naming.Namer(cfg.output.naming, cfg.output.folder_size, cfg.output.folder_index)
        workers = cfg.workers or os.cpu_count() or 1
        self._workers = workers
        # Bodies waiting for the pool are bounded: the reader stops when the window is full.
        self._cpu = asyncio.Semaphore(workers * 2)

    # ---- control ---------------------------------------------------------
    def stop(self, grace: float = 3.0) -> None:
        """Take no new rows; rows in flight get ``grace`` seconds to finish, then are
        cancelled without an outcome, so the next run does them again (Ctrl-C, SIGTERM)."""
        if self._stopping:
            return
        self._stopping = True
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_later(grace, self._cancel_in_flight)

    def _cancel_in_flight(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def flush_now(self) -> None:
        """Push recorded outcomes to disk now (before an immediate exit)."""
        if self._manifest is not None:
            self._manifest.flush()

    @property
    def stopping(self) -> bool:
        return self._stopping

    # ---- main loop -------------------------------------------------------
    async def execute(self) -> Summary:
        cfg = self.cfg
        started = time.monotonic()
        self._sink = FileSink(cfg.output.out)
        self._manifest = ManifestWriter(self._sink.root / cfg.output.manifest, truncate=cfg.overwrite)
        self._sink.remove_temporaries()
        if cfg.image.decodes:
            self._pool = _make_pool(self._workers)
        flusher = asyncio.create_task(self._flush_periodically())
        try:
            async with self.engine:
                await self._dispatch()
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
            self._manifest.close()
            self.summary.elapsed = time.monotonic() - started
            self.summary.interrupted = self._stopping
        if self._fatal is not None:
            raise self._fatal
        return self.summary

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            assert self._manifest is not None
            self._manifest.flush()

    async def _dispatch(self) -> None:
        window = asyncio.Semaphore(self._window)
        tasks = self._tasks

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            window.release()

        rows = self._rows if self._rows is not None else sources.read_rows(self.cfg.input, stdin=self._stdin)
        for row in rows:
            if self._stopping:
                break
            job = self._prepare(row)
            if isinstance(job, Outcome):
                self._record(job, None)
                continue
            await window.acquire()
            if self._stopping:
                window.release()
                break
            task = asyncio.create_task(self._handle(job))
            tasks.add(task)
            task.add_done_callback(done)
        while tasks:
            await asyncio.gather(*list(tasks), return_exceptions=True)

    def _prepare(self, row: sources.Row) -> Job | Outcome:
        """Claim the row's name (in input order) and validate its URL."""
        stem = self._namer.claim(row.index, row.url, row.extra)
        folder = self._namer.folder(row.index)
        if row.error is not None:
            return self._failed(row, Reason.INVALID_ROW.value, row.error, 0, time.monotonic())
        try:
            url = parse_url(row.url)
        except Fault as fault:
            return self._failed(row, fault.reason, fault.detail, 0, time.monotonic())
        return Job(row, url, folder, stem)

    def _failed(
        self, row: sources.Row, reason: str, detail: str | None, attempts: int, started: float, **kw: object
    ) -> Outcome:
        return Outcome(
            row=row.index,
            url=row.url,
            status=status_for(reason),
            reason=reason,
            detail=detail,
            attempts=attempts,
            elapsed=time.monotonic() - started,
            extra=row.extra,
            **kw,  # type: ignore[arg-type]
        )

    async def _handle(self, job: Job) -> None:
        try:
            outcome = await self._fetch_and_save(job)
        except OutputError as exc:  # the disk is full or gone: stop the run, not just this row
            self._fatal = exc
            self._stopping = True
            return
        except Exception as exc:  # a bug must cost one row, never the run
            log.exception("internal error on row %d", job.row.index)
            outcome = self._failed(job.row, Reason.INTERNAL_ERROR.value, repr(exc)[:300], 0, job.started)
        self._record(outcome, job.host)

    async def _fetch_and_save(self, job: Job) -> Outcome:
        cfg = self.cfg
        http = cfg.http
        gate = self._hosts.get(job.host)
        loop = asyncio.get_running_loop()
        attempts = 0
        while True:
            attempts += 1
            await gate.acquire()
            try:
                async with self._global:
                    res = await self.engine.attempt(job.url)
            finally:
                gate.release()
            if res.ok:
                gate.reward()
                break
            if res.status in _SLOW_DOWN:
                gate.penalize(loop.time(), res.retry_after, http.max_retry_after)
            elif res.status is not None:
                gate.reward()
            if attempts > http.retries or not is_retryable(res.reason) or self._stopping:
                assert res.reason is not None
                return self._failed(
                    job.row,
                    res.reason,
                    res.detail,
                    attempts,
                    job.started,
                    http_status=res.status,
                    final_url=res.final_url,
                )
            await asyncio.sleep(
                backoff_delay(
                    attempts,
                    base=http.backoff_base,
                    cap=http.backoff_max,
                    retry_after=res.retry_after,
                    max_retry_after=http.max_retry_after,
                )
            )
        body = res.body
        assert body is not None
        return await self._save(job, res, body, attempts)

    async def _save(self, job: Job, res: Fetched, body: bytes, attempts: int) -> Outcome:
        cfg = self.cfg
        result: images.ImageInfo | images.Processed | images.Rejected
        if self._pool is not None:
            async with self._cpu:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._pool, images.process, body, cfg.image)
        else:
            result = images.check(body, cfg.image)
        common = {
            "row": job.row.index,
            "url": job.row.url,
            "http_status": res.status,
            "attempts": attempts,
            "final_url": res.final_url,
            "extra": job.row.extra,
        }
        if isinstance(result, images.Rejected):
            info = result.info
            return Outcome(
                status=Status.SKIPPED if result.skipped else Status.FAILED,
                reason=result.reason,
                detail=result.detail,
                bytes=len(body),
                orig_format=info.format if info else None,
                orig_width=info.width if info else None,
                orig_height=info.height if info else None,
                elapsed=time.monotonic() - job.started,
                **common,  # type: ignore[arg-type]
            )
        orig_sha = hashlib.sha256(body).hexdigest()
        if isinstance(result, images.Processed):
            data, fmt, w, h = result.data, result.format, result.width, result.height
            ofmt, ow, oh = result.orig_format, result.orig_width, result.orig_height
            sha = orig_sha if data is body else hashlib.sha256(data).hexdigest()
        else:
            data, fmt, w, h = body, result.format, result.width, result.height
            ofmt, ow, oh = fmt, w, h
            sha = orig_sha
        stem = job.stem if job.stem is not None else naming.hash_stem(sha)
        name = naming.file_name(stem, fmt)
        assert self._sink is not None
        try:
            path = self._sink.write(job.folder, name, data)
        except OSError as exc:
            if exc.errno in FATAL_ERRNOS:
                raise OutputError(f"cannot write to '{self._sink.root}': {exc.strerror}") from None
            return Outcome(
                status=Status.FAILED,
                reason=Reason.WRITE_ERROR.value,
                detail=str(exc)[:300],
                elapsed=time.monotonic() - job.started,
                **common,  # type: ignore[arg-type]
            )
        return Outcome(
            status=Status.OK,
            bytes=len(data),
            format=fmt,
            width=w,
            height=h,
            orig_format=ofmt,
            orig_width=ow,
            orig_height=oh,
            sha256=sha,
            orig_sha256=orig_sha,
            path=path,
            elapsed=time.monotonic() - job.started,
            **common,  # type: ignore[arg-type]
        )

    def _record(self, outcome: Outcome, host: str | None) -> None:
        assert self._manifest is not None
        self._manifest.write(outcome.to_record())
        self.summary.add(outcome, host)
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


def _make_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    # forkserver: never fork a process that runs an event loop and threads.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


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
