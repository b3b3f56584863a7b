"""One row's work, wherever it runs: per-host gate, attempts, retry policy, check or processing, write.

:class:`Fetcher` turns a :class:`Job` into its :class:`~imgfetch.outcome.Outcome`.
The pipeline's own event loop runs one, and each extra event loop of
:mod:`imgfetch.loops` runs another in its own process, for the hosts it owns;
either way the row goes through exactly this code.  What only the pipeline
does -- reading, naming, the window, recording -- stays in :mod:`imgfetch.pipeline`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from imgfetch import images, naming
from imgfetch.errors import OutputError
from imgfetch.fetch.hosts import HostTable
from imgfetch.fetch.policy import backoff_delay, is_retryable
from imgfetch.outcome import Outcome, Reason, Status, status_for
from imgfetch.sinks.files import FATAL_ERRNOS, FileSink
from imgfetch.sinks.samples import SampleWriter
from imgfetch.workers import CpuPool, PoolBroken, WorkerCrashed

if TYPE_CHECKING:
    from yarl import URL

    from imgfetch import sources
    from imgfetch.config import RunConfig
    from imgfetch.fetch.common import Fetched

log = logging.getLogger("imgfetch")

#: Statuses with which a host says "too much": they shrink its allowed concurrency.
_SLOW_DOWN = frozenset({429, 503})
#: Errors after which the run cannot go on (the disk is full, no processing worker can start).
FATAL = (OutputError, PoolBroken)


class Engine(Protocol):
    """How one attempt is scheduled; everything else is the pipeline's."""

    name: str
    max_in_flight: int

    async def __aenter__(self) -> Engine: ...
    async def __aexit__(self, *exc: object) -> None: ...
    async def attempt(self, url: URL) -> Fetched: ...


class Job:
    __slots__ = ("folder", "host", "row", "started", "stem", "url")

    def __init__(
        self, row: sources.Row, url: URL, folder: str, stem: str | None, started: float | None = None
    ) -> None:
        self.row = row
        self.url = url
        self.host = url.host or ""
        self.folder = folder
        self.stem = stem
        # CLOCK_MONOTONIC is one clock for every process of the machine: a job handed to
        # another event loop keeps the start the pipeline gave it.
        self.started = time.monotonic() if started is None else started


def failed(
    row: sources.Row, reason: str, detail: str | None, attempts: int, started: float, **kw: Any
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
        **kw,
    )


class Fetcher:
    """Does rows: ``await fetcher.outcome(job)``.

    It holds the per-host gates of the hosts it is given and ``concurrency``
    attempt slots; ``pool`` (when images are decoded) and ``sink`` are used
    as they are: a FileSink writes each image as a file, a SampleWriter (the
    shard formats) appends it to this loop's staging log of the row's shard.
    Set :attr:`stopping` when the run stops taking new rows.
    """

    def __init__(
        self,
        cfg: RunConfig,
        engine: Engine,
        sink: FileSink | SampleWriter,
        concurrency: int,
        pool: CpuPool[images.Processed | images.Rejected] | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.sink = sink
        self.pool = pool
        self.stopping = False
        self._global = asyncio.Semaphore(concurrency)
        self._hosts = HostTable(cfg.http)

    def stop(self) -> None:
        """The run takes no new rows: retries that could still help are left for the next run."""
        self.stopping = True

    async def outcome(self, job: Job) -> Outcome | None:
        """The row's outcome; None when the run is stopping and a retry could still have helped.

        Raises only the errors that stop the whole run (:data:`FATAL`); any
        other exception costs this one row (``internal-error``), never the run.
        """
        try:
            return await self._fetch_and_save(job)
        except FATAL:
            raise
        except Exception as exc:
            if self.stopping:
                return None  # e.g. the process pool shut down under it: the next run redoes the row
            log.exception("internal error on row %d", job.row.index)
            return failed(job.row, Reason.INTERNAL_ERROR.value, repr(exc)[:300], 0, job.started)

    async def _fetch_and_save(self, job: Job) -> Outcome | None:
        http = self.cfg.http
        gate = self._hosts.get(job.host)
        loop = asyncio.get_running_loop()
        attempts = 0
        while True:
            attempts += 1
            await gate.acquire()
            try:
                while True:
                    async with self._global:
                        wait = gate.try_start(loop.time())
                        if not wait:
                            res = await self.engine.attempt(job.url)
                            break
                    # The host's turn passed while this row queued for a global slot.
                    await asyncio.sleep(wait)
            finally:
                gate.release()
            if res.ok:
                gate.reward()
                break
            if res.status in _SLOW_DOWN:
                gate.penalize(loop.time(), res.retry_after, http.max_retry_after)
            elif res.status is not None:
                gate.reward()
            retryable = is_retryable(res.reason)
            if self.stopping and retryable and attempts <= http.retries:
                return None
            if attempts > http.retries or not retryable:
                assert res.reason is not None
                return failed(
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
            if self.stopping:
                return None
        body = res.body
        assert body is not None
        return await self._save(job, res, body, attempts)

    async def _save(self, job: Job, res: Fetched, body: bytes, attempts: int) -> Outcome:
        result: images.ImageInfo | images.Processed | images.Rejected
        if self.pool is not None:
            try:
                result = await self.pool.run(body)
            except WorkerCrashed as exc:  # e.g. a decoder crashing on a hostile image
                result = images.Rejected(Reason.DECODE_ERROR.value, str(exc))
        else:
            result = images.check(body, self.cfg.image)
        common: dict[str, Any] = {
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
                **common,
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
        saved: dict[str, Any] = {
            "status": Status.OK,
            "bytes": len(data),
            "format": fmt,
            "width": w,
            "height": h,
            "orig_format": ofmt,
            "orig_width": ow,
            "orig_height": oh,
            "sha256": sha,
            "orig_sha256": orig_sha,
        }
        try:
            if isinstance(self.sink, SampleWriter):  # a shard format: the folder is the shard
                sample = Outcome(key=stem, elapsed=time.monotonic() - job.started, **saved, **common)
                return self.sink.write(int(job.folder), sample, data)
            path = self.sink.write(job.folder, naming.file_name(stem, fmt), data)
        except OSError as exc:
            if exc.errno in FATAL_ERRNOS:
                raise OutputError(f"cannot write to '{self.sink.root}': {exc.strerror}") from None
            return Outcome(
                status=Status.FAILED,
                reason=Reason.WRITE_ERROR.value,
                detail=str(exc)[:300],
                elapsed=time.monotonic() - job.started,
                **common,
            )
        return Outcome(path=path, elapsed=time.monotonic() - job.started, **saved, **common)
