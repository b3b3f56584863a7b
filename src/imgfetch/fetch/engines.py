"""Engines: how fetch attempts are scheduled.  Chosen from a table, never an ``if`` chain.

All engines run the same :mod:`imgfetch.pipeline` (retry policy, per-host
gates, checks, processing, naming, writing, manifest); they differ only in
what executes one attempt, and ``-j`` means requests in flight for each:

============= ================================================================
``async``     one event loop, one aiohttp session (the default)
``threads``   a pool of ``-j`` threads, each making blocking urllib3 requests
``processes`` ``P = min(-j, cores)`` worker processes, each running
              ``ceil(-j / P)`` threads with its own urllib3 client, so ``-j``
              keeps its meaning without starting hundreds of processes
``loop``      one blocking request at a time (``-j`` is ignored: always 1)
============= ================================================================

A process pool that runs one call per worker (``ProcessPoolExecutor``) would
need ``-j`` processes for ``-j`` requests in flight; the ``processes`` engine
keeps its own small set of workers instead, talking to each over a pipe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import math
import os
import signal
import threading
from typing import TYPE_CHECKING

from yarl import URL

from imgfetch.errors import EngineUnavailable
from imgfetch.fetch.aio import AioClient
from imgfetch.workers import context as workers_context

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext

    from imgfetch.config import HttpConfig
    from imgfetch.fetch.common import Fetched
    from imgfetch.fetch.sync import SyncClient
    from imgfetch.runners.local import Engine

#: How long a worker process gets to finish its attempts in flight when the engine closes.
_STOP_GRACE = 5.0


def _overrides(cfg: HttpConfig) -> dict[str, tuple[str, int | None]]:
    return {host: (addr, port) for host, addr, port in cfg.resolve}


def _sync_client(cfg: HttpConfig) -> SyncClient:
    # Imported here: urllib3 costs about 0.1 s of start-up that the default engine never needs.
    from imgfetch.fetch.sync import SyncClient

    return SyncClient(cfg, _overrides(cfg))


class AsyncEngine:
    """One event loop, one aiohttp session: the default."""

    name = "async"

    def __init__(self, cfg: HttpConfig) -> None:
        self.max_in_flight = cfg.concurrency
        self._client = AioClient(cfg, _overrides(cfg))

    async def __aenter__(self) -> AsyncEngine:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(*exc)

    async def attempt(self, url: URL) -> Fetched:
        return await self._client.attempt(url)


class ThreadsEngine:
    """Blocking urllib3 requests on a pool of ``-j`` threads sharing one connection pool."""

    name = "threads"

    def __init__(self, cfg: HttpConfig, *, threads: int | None = None) -> None:
        self.max_in_flight = threads or cfg.concurrency
        self._client = _sync_client(cfg)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    async def __aenter__(self) -> ThreadsEngine:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.max_in_flight, thread_name_prefix=f"imgfetch-{self.name}"
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            # Attempts still running end within their own deadline; wait off the loop.
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown, True)
        self._client.close()

    async def attempt(self, url: URL) -> Fetched:
        assert self._pool is not None, f"use the {self.name} engine as an async context manager"
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._client.attempt, url)


class LoopEngine(ThreadsEngine):
    """One request at a time, like a plain ``for`` loop (on one thread, so the event loop stays free)."""

    name = "loop"

    def __init__(self, cfg: HttpConfig) -> None:
        super().__init__(cfg, threads=1)


class ProcessesEngine:
    """Worker processes, each with its own urllib3 client and a few threads (see the module doc)."""

    name = "processes"

    def __init__(self, cfg: HttpConfig, *, processes: int | None = None) -> None:
        self.max_in_flight = cfg.concurrency
        self.processes = max(1, min(cfg.concurrency, processes or os.cpu_count() or 1))
        self.threads = math.ceil(cfg.concurrency / self.processes)
        self._cfg = cfg
        self._workers: list[_Worker] = []

    async def __aenter__(self) -> ProcessesEngine:
        ctx = workers_context()
        loop = asyncio.get_running_loop()
        try:
            for i in range(self.processes):
                self._workers.append(_Worker(ctx, self._cfg, self.threads, loop, i))
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        workers, self._workers = self._workers, []
        if workers:
            await asyncio.get_running_loop().run_in_executor(None, _stop_all, workers)

    async def attempt(self, url: URL) -> Fetched:
        assert self._workers, "use the processes engine as an async context manager"
        worker = min(self._workers, key=lambda w: w.in_flight)
        return await worker.submit(str(url))


class WorkerDied(RuntimeError):
    """A fetch worker process ended while attempts were in flight."""


class _Worker:
    """The parent's side of one worker process: a pipe, pending futures and a reader thread."""

    def __init__(
        self, ctx: BaseContext, cfg: HttpConfig, threads: int, loop: asyncio.AbstractEventLoop, index: int
    ) -> None:
        self._loop = loop
        self._pending: dict[int, asyncio.Future[Fetched]] = {}
        self._ids = itertools.count()
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(  # type: ignore[attr-defined]
            target=_serve, args=(child, cfg, threads), name=f"imgfetch-fetch-{index}", daemon=True
        )
        self._proc.start()
        child.close()
        self._reader = threading.Thread(target=self._read, name=f"imgfetch-fetch-{index}-reader", daemon=True)
        self._reader.start()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def submit(self, url: str) -> asyncio.Future[Fetched]:
        fut: asyncio.Future[Fetched] = self._loop.create_future()
        key = next(self._ids)
        self._pending[key] = fut
        try:
            self._conn.send((key, url))
        except (OSError, ValueError):
            del self._pending[key]
            fut.set_exception(WorkerDied(f"fetch worker {self._proc.name} is gone"))
        return fut

    def _read(self) -> None:
        """Runs on a thread: hands each result to the event loop."""
        while True:
            try:
                key, result = self._conn.recv()
            except (EOFError, OSError, ValueError):
                break
            self._call(self._resolve, key, result)
        self._call(self._fail_pending)

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(fn, *args)

    def _resolve(self, key: int, result: Fetched | str) -> None:
        fut = self._pending.pop(key, None)
        if fut is None or fut.done():
            return
        if isinstance(result, str):
            fut.set_exception(RuntimeError(result))
        else:
            fut.set_result(result)

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(WorkerDied(f"fetch worker {self._proc.name} ended"))

    def stop(self) -> None:
        """Blocking: ask the worker to finish, then make sure it has."""
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(None)
        self._proc.join(_STOP_GRACE)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._conn.close()
        self._reader.join(5)


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()


def _serve(conn: Connection, cfg: HttpConfig, threads: int) -> None:
    """A worker process: read (key, url) from the pipe, answer (key, Fetched) from ``threads`` threads."""
    # Ctrl-C reaches the whole process group; the parent decides when its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send_lock = threading.Lock()
    client = _sync_client(cfg)

    def run(key: int, url: str) -> None:
        result: Fetched | str
        try:
            result = client.attempt(URL(url))
        except Exception as exc:  # reported to the parent, which records the row as internal-error
            result = repr(exc)[:300]
        with send_lock, contextlib.suppress(OSError, ValueError):
            conn.send((key, result))

    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="imgfetch-fetch") as pool:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg is None:
                break
            pool.submit(run, *msg)
    client.close()
    conn.close()


ENGINES: dict[str, Callable[[HttpConfig], Engine]] = {
    "async": AsyncEngine,
    "loop": LoopEngine,
    "processes": ProcessesEngine,
    "threads": ThreadsEngine,
}


def make_engine(name: str, cfg: HttpConfig) -> Engine:
    try:
        factory = ENGINES[name]
    except KeyError:
        raise EngineUnavailable(
            f"unknown engine {name!r}", hint=f"choose one of: {', '.join(sorted(ENGINES))}"
        ) from None
    return factory(cfg)


__all__ = ["ENGINES", "AsyncEngine", "LoopEngine", "ProcessesEngine", "ThreadsEngine", "make_engine"]
