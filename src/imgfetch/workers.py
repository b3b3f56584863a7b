"""CPU work off the event loop: worker processes that the loop drives itself, without threads.

Each worker is a process holding one end of a Unix socket pair.  The event
loop writes a request (a small header and the image bytes, no pickling) and
reads the result back on the same socket; no thread sits between them.

Why not :class:`concurrent.futures.ProcessPoolExecutor`: its queue-feeder and
manager threads take the GIL from the event loop for every item (profiled on
the W2 benchmark: the loop's socket writes waited on them, and the two threads
cost a third as much CPU as the whole event loop), and one worker that dies --
Pillow crashing on a hostile image, the OOM killer -- breaks the whole
executor, failing every later row.  Here a dead worker is replaced: the item
it was working on fails with :class:`WorkerCrashed` (the pipeline records the
row as ``decode-error``) and the items queued behind it are sent again.

Each worker is given at most :data:`QUEUED` items at a time, so it always has
the next one waiting (no idle gap between items) while the bodies waiting for
the CPU stay bounded by ``workers * QUEUED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import pickle
import signal
import socket
import struct
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from imgfetch.errors import ImgfetchError

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess

R = TypeVar("R")

#: Items handed to one worker at a time: the one it is working on and the next.
QUEUED = 2
#: A request or reply: task id and payload length.
_HEADER = struct.Struct("!QQ")
#: Workers that die this many times in a row without finishing a single item mean
#: the pool cannot work at all (e.g. cannot even start): give up instead of looping.
#: (One hostile image kills one worker; it takes a long run of them to get here.)
_MAX_FRUITLESS_RESTARTS = 10
#: Socket buffers large enough for a typical image in one write.
BUFFER = 1 << 20


class WorkerCrashed(RuntimeError):
    """The worker process died while working on this item."""


class PoolBroken(ImgfetchError):
    """Workers keep dying before finishing anything: the run cannot process images."""

    code = "workers-failed"


def context() -> BaseContext:
    # forkserver: never fork a process that runs an event loop and threads.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def socket_pair(buffer: int = BUFFER) -> tuple[socket.socket, socket.socket]:
    """A connected Unix socket pair (parent's end, child's end) with ``buffer``-byte buffers."""
    parent, child = socket.socketpair()
    for end in (parent, child):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    return parent, child


async def spawn(
    ctx: BaseContext,
    name: str,
    target: Callable[..., None],
    args: Callable[[int, socket.socket], tuple[Any, ...]],
) -> tuple[BaseProcess, asyncio.StreamReader, asyncio.StreamWriter]:
    """Start ``target(*args(parent_fd, child_end))`` in a daemon process of ``ctx``, joined to this
    event loop by a socket pair: the child keeps its end, this process streams over the other."""
    parent, child = socket_pair()
    try:
        proc = ctx.Process(  # type: ignore[attr-defined]
            target=target, args=args(parent.fileno(), child), name=name, daemon=True
        )
        proc.start()
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    reader, writer = await asyncio.open_connection(sock=parent, limit=BUFFER)
    return proc, reader, writer


async def reap(proc: BaseProcess, deadline: float) -> None:
    """Wait (on the event loop) for ``proc`` to end until ``deadline`` (loop time); then kill it."""
    loop = asyncio.get_running_loop()
    while proc.is_alive() and loop.time() < deadline:
        await asyncio.sleep(0.01)
    if proc.is_alive():
        proc.kill()
    proc.join(1.0)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """Exactly ``size`` bytes, or None at a clean end of stream.

    One ``recv(MSG_WAITALL)`` builds the bytes object in place: measured on a
    134 kB body, 14 us against 22 us for ``recv_into`` a bytearray plus a copy,
    and 24 us against 168 us while the sender is still writing (many partial reads).
    """
    data = sock.recv(size, socket.MSG_WAITALL)
    if len(data) == size:
        return data
    parts = [data]  # a signal or the end of the stream cut the wait short
    got = len(data)
    while got < size:
        more = sock.recv(size - got, socket.MSG_WAITALL)
        if not more:
            return None
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _serve(sock: socket.socket, fn: Callable[[bytes, Any], Any], arg: Any) -> None:
    """A worker's whole life: read a request, run ``fn(data, arg)``, reply; until end of stream."""
    # Ctrl-C reaches the whole process group: the parent decides what stops, not the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with sock:
        while True:
            head = _recv_exact(sock, _HEADER.size)
            if head is None:
                return
            key, size = _HEADER.unpack(head)
            data = _recv_exact(sock, size)
            if data is None:
                return
            try:
                reply: tuple[bool, Any] = (True, fn(data, arg))
            except Exception as exc:  # fn's own bug: the caller gets it as an exception
                reply = (False, f"{type(exc).__name__}: {exc}")
            payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
            try:
                sock.sendall(_HEADER.pack(key, len(payload)) + payload)
            except OSError:  # the parent is gone or closed the pool
                return


class _Worker:
    """The parent's side of one worker: its process, its stream and the items it holds, in order."""

    def __init__(self, proc: BaseProcess, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proc = proc
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, tuple[asyncio.Future[Any], bytes]] = {}
        self.task: asyncio.Task[None] | None = None


class CpuPool(Generic[R]):
    """``await pool.run(data)`` runs ``fn(data, arg)`` in a worker process.

    ``fn`` must be a module-level function and ``arg`` picklable (it is sent
    once per worker, not with every item).  Use as an async context manager.
    """

    def __init__(self, fn: Callable[[bytes, Any], R], arg: Any, workers: int) -> None:
        self._fn = fn
        self._arg = arg
        self._size = max(1, workers)
        self._ctx = context()
        self._workers: list[_Worker] = []
        self._slots = asyncio.Semaphore(self._size * QUEUED)
        self._ids = itertools.count()
        self._fruitless = 0
        self._broken: str | None = None
        self._closing = False
        self._ready = asyncio.Event()

    async def __aenter__(self) -> CpuPool[R]:
        try:
            for _ in range(self._size):
                self._workers.append(await self._start())
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self) -> _Worker:
        proc, reader, writer = await spawn(
            self._ctx, "imgfetch-cpu", _serve, lambda _fd, child: (child, self._fn, self._arg)
        )
        worker = _Worker(proc, reader, writer)
        worker.task = asyncio.create_task(self._read(worker))
        return worker

    async def run(self, data: bytes) -> R:
        async with self._slots:
            while not self._workers:  # a dead worker is being replaced
                if self._broken is not None or self._closing:
                    break
                self._ready.clear()
                await self._ready.wait()
            if self._broken is not None:
                raise PoolBroken(self._broken)
            if self._closing:
                raise asyncio.CancelledError
            fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            worker = min(self._workers, key=lambda w: len(w.pending))
            self._send(worker, next(self._ids), fut, data)
            with contextlib.suppress(ConnectionError):
                await worker.writer.drain()  # a dead worker is noticed (and handled) by its reader
            return await fut

    def _send(self, worker: _Worker, key: int, fut: asyncio.Future[Any], data: bytes) -> None:
        worker.pending[key] = (fut, data)
        worker.writer.write(_HEADER.pack(key, len(data)))
        worker.writer.write(data)

    async def _read(self, worker: _Worker) -> None:
        reader = worker.reader
        try:
            while True:
                head = await reader.readexactly(_HEADER.size)
                key, size = _HEADER.unpack(head)
                ok, value = pickle.loads(await reader.readexactly(size))
                fut, _data = worker.pending.pop(key)
                self._fruitless = 0
                if fut.done():  # cancelled while the worker was busy with it
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(RuntimeError(value))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        if not self._closing:
            await self._replace(worker)

    async def _replace(self, dead: _Worker) -> None:
        """The worker's process ended: fail its current item, restart it, resend the rest."""
        dead.writer.close()
        dead.proc.join(1.0)  # it closed its socket, so it is exiting: this is brief
        code = dead.proc.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        items = list(dead.pending.items())
        dead.pending.clear()
        with contextlib.suppress(ValueError):
            self._workers.remove(dead)
        if items:
            fut, _data = items[0][1]
            if not fut.done():
                fut.set_exception(WorkerCrashed(f"the processing worker died ({how})"))
            items = items[1:]
        self._fruitless += 1
        if self._fruitless > _MAX_FRUITLESS_RESTARTS:
            self._fail_all(items, f"processing workers keep dying ({how})")
            return
        try:
            worker = await self._start()
        except Exception as exc:
            self._fail_all(items, f"cannot start a processing worker: {exc}")
            return
        if self._closing:
            worker.writer.close()
            return
        self._workers.append(worker)
        self._ready.set()
        for key, (fut, data) in items:
            if not fut.done():
                self._send(worker, key, fut, data)

    def _fail_all(self, items: list[tuple[int, tuple[asyncio.Future[Any], bytes]]], why: str) -> None:
        self._broken = why
        for worker in self._workers:
            items.extend(worker.pending.items())
            worker.pending.clear()
        for _key, (fut, _data) in items:
            if not fut.done():
                fut.set_exception(PoolBroken(why))
        self._ready.set()  # callers waiting for a worker must see that there will be none

    async def close(self, timeout: float = 5.0) -> None:
        """Close every worker's socket (they exit after their current item); kill stragglers."""
        self._closing = True
        self._ready.set()
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.writer.close()
            for fut, _data in worker.pending.values():
                fut.cancel()
            worker.pending.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for worker in workers:
            await reap(worker.proc, deadline)
            if worker.task is not None:
                worker.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.task
