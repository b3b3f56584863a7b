"""More event loops: forked processes that each do the rows of the hosts they own.

One event loop is one core.  A download-only run at a few thousand images/s
spends its CPU on the HTTP client, hashing and file writes (see
benchmarks/README.md), so past about 1000 images/s a single loop is the limit
however fast the network is.  With ``--loops N`` the pipeline keeps reading,
naming, the window and all recording (ledger, manifest, summary) in its own
process and shares the per-row work (:class:`imgfetch.job.Fetcher`) between
its own loop and ``N - 1`` loop processes:

- every host belongs to one loop (by ``crc32(host)``, see :class:`Owners`), so the per-host limit,
  rate, delay and back-off of that host are kept by one gate, exactly as with
  one loop, and ``-j`` is split between the loops;
- a row goes to its host's loop as (row, folder, name) and comes back as its
  Outcome; the file is written (atomically) by the loop that fetched it, and
  the pipeline records it, so "renamed into place before recorded" holds;
- a loop process ignores SIGINT/SIGTERM (the pipeline decides when to stop and
  tells it) and dies with the pipeline (``PR_SET_PDEATHSIG`` and end of
  stream), so a ``kill -9`` leaves at most a temporary file, which the next run
  deletes, and files without a recorded outcome, which it reconciles;
- a loop process that dies while the run goes on stops the run
  (``workers-failed``, exit 1): its rows are redone by the next run.

With a shard format, ``auto`` gives the pipeline's own loop no hosts (see
``Run.execute``): each fetching loop writes its own staging log of a shard, and
one log is published by a rename, several by copying all but the largest.

``--loops auto`` (the default) uses up to :data:`AUTO_MAX` loops, one per core
and one per :data:`MIN_PER_LOOP` of ``-j`` (measured on the benchmark, W1: one
loop keeps about 128 requests in flight at 80 ms, ~1000 images/s on a 2-core
machine; below that a second loop adds only its messages, about 0.2 ms of CPU
per row), but only when they are nearly free to start: the async engine, no
image decoding (the decode workers already use every core) and a ``fork`` of a
process with no other thread (Linux).  Forking
copies the already imported modules, so a loop process starts in milliseconds;
elsewhere (threads running, as in a Python program or a test suite, or macOS)
auto means one loop, and an explicit ``--loops N`` starts its processes with
forkserver.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import multiprocessing
import operator
import os
import pickle
import signal
import struct
import sys
import threading
import zlib
from typing import TYPE_CHECKING, Any

from yarl import URL

from imgfetch import sources
from imgfetch.errors import OutputError
from imgfetch.fetch.engines import make_engine
from imgfetch.outcome import Outcome, Status
from imgfetch.runners.local import FATAL, Fetcher, Job
from imgfetch.sinks import fetch_writer
from imgfetch.workers import BUFFER, PoolBroken, reap, spawn
from imgfetch.workers import context as spawn_context

if TYPE_CHECKING:
    import socket
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess
    from pathlib import Path

    from imgfetch.config import RunConfig

#: Most loops ``auto`` chooses.
AUTO_MAX = 4
#: ``auto`` gives each loop at least this many of ``-j``'s requests in flight.
MIN_PER_LOOP = 128
#: Seconds a loop process gets to end after its stream closes, before it is killed.
CLOSE_GRACE = 5.0
_FRAME = struct.Struct("!I")
# Each frame is a list of messages.  To a loop process: (_JOB, row, url, folder, stem, started)
# or (_STOP,); back: (row, _OUTCOME, packed Outcome or None) or (row, _FATAL, (kind, message)).
_JOB, _STOP = 0, 1
_OUTCOME, _FATAL = 0, 1


def can_fork() -> bool:
    """True when a loop process can be forked safely: Linux, and no thread but this one."""
    return (
        sys.platform.startswith("linux")
        and "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
    )


def count(cfg: RunConfig) -> int:
    """How many event loops the run uses (``cfg.loops``, or what ``auto`` decides)."""
    if cfg.loops is not None:  # checked by RunConfig: more than one only where it can work
        return cfg.loops
    if cfg.engine != "async" or cfg.image.decodes or not can_fork():
        return 1
    return max(1, min(os.cpu_count() or 1, AUTO_MAX, cfg.http.concurrency // MIN_PER_LOOP))


#: The pipeline's own loop also reads, names and records every row: it fetches for this
#: share of the hosts (and of ``-j``) against 1 for each loop process.
HOME_WEIGHT = 0.5


def weights(loops: int, home: float = HOME_WEIGHT) -> list[float]:
    """Each loop's share of the hosts and of ``-j``: the pipeline's own loop (``home``) first."""
    if loops <= 1:
        return [1.0]
    raw = [home] + [1.0] * (loops - 1)
    return [w / sum(raw) for w in raw]


def shares(total: int, parts: list[float]) -> list[int]:
    """``total`` split in proportion to ``parts`` (largest remainders), each at least 1."""
    exact = [total * p for p in parts]
    out = [int(x) for x in exact]
    by_remainder = sorted(range(len(parts)), key=lambda i: exact[i] - out[i], reverse=True)
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return [max(1, n) for n in out]


class Owners:
    """Which loop owns a host: ``crc32(host)`` placed on the loops' weights; stable for the run."""

    def __init__(self, parts: list[float]) -> None:
        self._bounds: list[int] = []
        edge = 0.0
        for p in parts[:-1]:
            edge += p
            self._bounds.append(int(edge * 2**32))
        self._cache: dict[str, int] = {}

    def __call__(self, host: str) -> int:
        if not self._bounds:
            return 0
        loop = self._cache.get(host)
        if loop is None:
            if len(self._cache) > 100_000:  # a list of millions of hosts: stay bounded
                self._cache.clear()
            point = zlib.crc32(host.encode("utf-8", "surrogatepass"))
            loop = self._cache[host] = bisect.bisect_right(self._bounds, point)
        return loop


def _frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message, or None at the end of the stream."""
    try:
        head = await reader.readexactly(_FRAME.size)
        return pickle.loads(await reader.readexactly(_FRAME.unpack(head)[0]))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class _Outbox:
    """Messages put during one turn of the event loop go out together: one frame, one system
    call, one wake-up of the other side, however many rows started or ended in that turn."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._items: list[tuple[Any, ...]] = []

    def put(self, msg: tuple[Any, ...]) -> None:
        if not self._items:
            asyncio.get_running_loop().call_soon(self._flush)
        self._items.append(msg)

    def _flush(self) -> None:
        items, self._items = self._items, []
        with contextlib.suppress(ConnectionError, RuntimeError):  # the other side is gone
            self._writer.write(_frame(items))


# An Outcome crosses as its fields from ``status`` to ``elapsed`` (``status`` as its value):
# the pipeline has the row's index, URL and extra columns already.
_FIELDS = tuple(f.name for f in dataclasses.fields(Outcome))
assert _FIELDS[:3] == ("row", "url", "status") and _FIELDS[-1] == "extra"
_pack_fields = operator.attrgetter(*_FIELDS[3:-1])


def _pack(outcome: Outcome | None) -> tuple[Any, ...] | None:
    return None if outcome is None else (outcome.status.value, *_pack_fields(outcome))


def _unpack(packed: tuple[Any, ...] | None, row: sources.Row) -> Outcome | None:
    if packed is None:
        return None
    return Outcome(row.index, row.url, Status(packed[0]), *packed[1:], row.extra)  # type: ignore[call-arg]  # positional, in field order


class LoopProcess:
    """The pipeline's side of one loop process: ``await lp.outcome(job)`` like a Fetcher's."""

    def __init__(
        self, proc: BaseProcess, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, sharded: bool
    ) -> None:
        self._proc = proc
        self._sharded = sharded
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, tuple[asyncio.Future[Outcome | None], sources.Row]] = {}
        self._outbox = _Outbox(writer)
        self._stopping = False
        self._closing = False
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls, ctx: BaseContext, cfg: RunConfig, root: Path, concurrency: int, index: int, ours: list[int]
    ) -> LoopProcess:
        """Loop ``index`` (1, 2 ...: the pipeline's own is 0; it names the loop's sample logs).
        ``ours``: descriptors of this process that a forked child must close (see ``_serve``)."""
        forked = ctx.get_start_method() == "fork"

        def args(fd: int, child: socket.socket) -> tuple[Any, ...]:
            ours.append(fd)
            return (child, cfg, root, concurrency, index, list(ours) if forked else [])

        proc, reader, writer = await spawn(ctx, "imgfetch-loop", _serve, args)
        return cls(proc, reader, writer, sharded=cfg.output.sharded)

    def stop(self) -> None:
        """The run takes no new rows: retries that could still help are left for the next run."""
        if not self._stopping:
            self._stopping = True
            self._outbox.put((_STOP,))

    async def outcome(self, job: Job) -> Outcome | None:
        row = job.row
        key = row.index
        fut: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = (fut, row)
        try:
            if self._task.done():
                self._gone(fut)
            else:
                # The URL as parsed and checked here, in its encoded form: the loop rebuilds it
                # with encoded=True (~3 us) instead of parsing the raw row again (~25 us).
                # Shard formats write each sample here, and its JSON holds the extra columns.
                extra = row.extra if self._sharded else {}
                self._outbox.put((_JOB, key, str(job.url), job.folder, job.stem, job.started, extra))
            return await fut
        finally:
            self._pending.pop(key, None)  # cancelled: a late answer for it is dropped

    async def _read(self) -> None:
        while (batch := await _read_frame(self._reader)) is not None:
            for key, kind, value in batch:
                pending = self._pending.pop(key, None)
                if pending is None or pending[0].done():
                    continue  # cancelled while the loop process worked on it
                fut, row = pending
                if kind == _OUTCOME:
                    fut.set_result(_unpack(value, row))
                else:
                    what, message = value
                    fut.set_exception(OutputError(message) if what == "output" else PoolBroken(message))
        for fut, _row in list(self._pending.values()):
            self._gone(fut)

    def _gone(self, fut: asyncio.Future[Outcome | None]) -> None:
        """The loop process ended: its rows get no outcome (the next run redoes them)."""
        if fut.done():
            return
        if self._stopping or self._closing:
            fut.set_result(None)
            return
        self._proc.join(0.5)
        code = self._proc.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        fut.set_exception(PoolBroken(f"an event-loop process ended during the run ({how})"))

    async def close(self, timeout: float = CLOSE_GRACE) -> None:
        """End of stream for the process (it cancels what it still does and exits); kill stragglers."""
        self._closing = True
        self._writer.close()
        await reap(self._proc, asyncio.get_running_loop().time() + timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def start_all(cfg: RunConfig, root: Path, concurrencies: list[int]) -> list[LoopProcess]:
    """Start one loop process per entry of ``concurrencies`` (forked when that is safe)."""
    ctx = multiprocessing.get_context("fork") if can_fork() else spawn_context()
    started: list[LoopProcess] = []
    ours: list[int] = []
    try:
        for index, concurrency in enumerate(concurrencies, start=1):
            started.append(await LoopProcess.start(ctx, cfg, root, concurrency, index, ours))
    except BaseException:
        for lp in started:
            await lp.close(timeout=1.0)
        raise
    return started


# ---- the loop process ------------------------------------------------------------
def _detach() -> None:
    """Forget the parent's signal handling and die with the parent."""
    # A forked child shares the parent's wake-up fd: a signal here must not wake the parent's loop.
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    # Ctrl-C and SIGTERM reach the whole process group; the pipeline decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _serve(
    sock: socket.socket, cfg: RunConfig, root: Path, concurrency: int, writer: int, close: list[int]
) -> None:
    parent = os.getppid()
    _detach()
    # A forked child holds copies of the pipeline's ends of every loop's socket: while any
    # copy is open, that loop would never see the end of its stream.
    for fd in close:
        with contextlib.suppress(OSError):
            os.close(fd)
    if os.getppid() != parent:  # the parent died before PR_SET_PDEATHSIG took effect
        return
    asyncio.run(_serve_async(sock, cfg, root, concurrency, writer))


async def _serve_async(sock: socket.socket, cfg: RunConfig, root: Path, concurrency: int, index: int) -> None:
    reader, writer = await asyncio.open_connection(sock=sock, limit=BUFFER)
    fetcher = Fetcher(cfg, make_engine(cfg.engine, cfg.http), fetch_writer(cfg, root, index), concurrency)
    tasks: set[asyncio.Task[None]] = set()

    outbox = _Outbox(writer)

    async def run(job: Job) -> None:
        key = job.row.index
        try:
            outbox.put((key, _OUTCOME, _pack(await fetcher.outcome(job))))
        except FATAL as exc:
            outbox.put((key, _FATAL, ("output" if isinstance(exc, OutputError) else "pool", exc.message)))

    async with fetcher.engine:
        try:
            while (batch := await _read_frame(reader)) is not None:
                for msg in batch:
                    if msg[0] == _STOP:
                        fetcher.stop()
                        continue
                    _, key, url, folder, stem, started, extra = msg
                    # Only the index of this row comes back: the pipeline records its own row.
                    row = sources.Row(key, url, extra)
                    job = Job(row, URL(url, encoded=True), folder, stem, started)
                    task = asyncio.create_task(run(job))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            # End of stream: the pipeline is done, or gone.  What is left is cancelled unrecorded.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    writer.close()
