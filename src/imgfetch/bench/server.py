"""Local image servers for the demo, the tests and the benchmarks (loopback only).

Both serve real image bytes on one or more 127.0.0.x addresses (one port, so
each address acts as a different host), add a per-request latency drawn from
a distribution while costing no CPU (the response waits on the event loop),
and count requests and the peak number of concurrent requests per host.

* :class:`ImageServer` (aiohttp.web) is the tests' and the demo's server: it
  also answers the scripted faults below, under ``/_/``.
* :class:`LeanServer` (a raw asyncio protocol, stdlib only) is the
  benchmark's server, ``python -m imgfetch.bench.server`` (:func:`main`; ``--server
  aiohttp`` picks the other). It serves only ``/img/NAME`` and the catch-all,
  the same bytes for the same URL as :class:`ImageServer`, for about half the
  CPU per request (a third of the Python part; the kernel's copy of the bytes
  is the same): it shares the machine's cores with the tool being measured, so
  whatever CPU the server spends is taken from that tool and skews what the
  benchmark reports.

:class:`ImageServer`'s paths:

=============================== ==================================================
``/img/NAME``                   the image NAME
``/<anything else>``            with ``catch_all``: an image chosen from the path
``/_/status/CODE``              that status, empty body
``/_/flaky/KEY/N/CODE``         CODE (with ``?retry_after=S``) for the first N hits of KEY, then an image
``/_/hang``                     never answers
``/_/drip?bps=1``               an image, one byte per 1/bps seconds
``/_/truncated``                Content-Length larger than the body, then close
``/_/html-as-jpeg``             an HTML page labelled image/jpeg
``/_/octet/NAME``               image NAME labelled application/octet-stream
``/_/redirect/N/NAME``          N redirects, then image NAME
``/_/loop``                     a redirect to itself
``/_/redirect-to?location=L``   a redirect to L (``file:///etc/passwd``, a private address...)
``/_/big?size=N&chunked=1``     N bytes starting like a JPEG
``/_/huge-pixels``              a tiny PNG whose header claims 30000x30000 pixels
``/_/corrupt``                  JPEG magic followed by garbage
``/_/gzip-bomb``                gzip of 64 MiB of zeros, ``Content-Encoding: gzip``
``/_/robots/VALUE``             an image with ``X-Robots-Tag: VALUE``
``/_/named/NAME?ct=T``          image NAME, optionally with Content-Type T
``/_/as/NAME/ANY/PATH``         image NAME whatever ANY/PATH is (so a test picks the URL's basename)
=============================== ==================================================
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import gzip
import math
import random
import re
import struct
import threading
import zlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence
    from types import TracebackType
    from typing import Self

_CONTENT_TYPES = {b"\xff\xd8": "image/jpeg", b"\x89P": "image/png", b"GI": "image/gif", b"RI": "image/webp"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Latency:
    """Per-request latency: ``lognormal`` around ``median`` seconds (``sigma`` spread), or ``fixed``."""

    median: float = 0.0
    kind: str = "lognormal"
    sigma: float = 0.5
    seed: int = 0

    def sampler(self) -> random.Random:
        return random.Random(self.seed)

    def draw(self, rng: random.Random) -> float:
        if self.median <= 0:
            return 0.0
        if self.kind == "fixed":
            return self.median
        return rng.lognormvariate(math.log(self.median), self.sigma)


@dataclasses.dataclass
class ServerStats:
    """What the server saw; read it after the client has finished."""

    requests: Counter[str] = dataclasses.field(default_factory=Counter)
    by_host: Counter[str] = dataclasses.field(default_factory=Counter)
    active: Counter[str] = dataclasses.field(default_factory=Counter)
    peak: Counter[str] = dataclasses.field(default_factory=Counter)
    headers: list[dict[str, str]] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.requests.values())


def content_type(data: bytes) -> str:
    return _CONTENT_TYPES.get(data[:2], "application/octet-stream")


def image_name_for(names: Sequence[str], key: str) -> str:
    """The catch-all image for ``key`` (a request's path and query): one of the sorted ``names``.

    Both servers use it, so a URL gets the same bytes whichever one serves it.
    """
    return names[zlib.crc32(key.encode("utf-8", "surrogatepass")) % len(names)]


def huge_pixels_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class _ThreadedServer:
    """What both servers share: checked settings, a background thread running an event loop,
    ``with`` / ``start()`` / ``stop()``, and the URLs of the hosts.  Subclasses bind in
    ``_serve()`` (with ``_bind()``) and let go in ``_shutdown()``."""

    _thread_name = "imgfetch-server"

    def __init__(
        self,
        images: Mapping[str, bytes],
        *,
        hosts: Sequence[str],
        port: int,
        latency: Latency | None,
        catch_all: bool,
    ) -> None:
        kind = type(self).__name__
        if not images:
            raise ValueError(f"{kind} needs at least one image")
        for host in hosts:
            if not host.startswith("127."):
                raise ValueError(f"{kind} only binds loopback addresses")
        self.images = dict(images)
        self._names = sorted(self.images)
        self.hosts = list(hosts)
        self.port = port
        self.latency = latency or Latency()
        self.catch_all = catch_all
        self.stats = ServerStats()
        self._rng = self.latency.sampler()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ---- lifecycle -------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            fut.result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            self._loop = None
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _serve(self) -> None:
        raise NotImplementedError

    async def _shutdown(self) -> None:
        raise NotImplementedError

    async def _bind(
        self, listen: Callable[[str, int], Awaitable[int]], unlisten: Callable[[], Awaitable[None]]
    ) -> None:
        """Listen on every host with one port: ``listen(host, port)`` returns the bound port;
        with port 0 the first host picks it, and a port another host cannot have is retried."""
        for attempt in range(20):
            port = self.port
            try:
                for host in self.hosts:
                    port = await listen(host, port)
                self.port = port
                return
            except OSError:
                await unlisten()
                if self.port != 0 or attempt == 19:
                    raise

    # ---- addresses -------------------------------------------------------
    def base(self, host: int | str = 0) -> str:
        name = self.hosts[host] if isinstance(host, int) else host
        return f"http://{name}:{self.port}"

    def url(self, path: str, host: int | str = 0) -> str:
        return f"{self.base(host)}/{path.lstrip('/')}"


class ImageServer(_ThreadedServer):
    """Runs in a background thread: ``with ImageServer(images) as srv: srv.url("img/a.jpg")``."""

    def __init__(
        self,
        images: Mapping[str, bytes],
        *,
        hosts: Sequence[str] = ("127.0.0.1",),
        port: int = 0,
        latency: Latency | None = None,
        catch_all: bool = False,
        record_headers: bool = False,
    ) -> None:
        super().__init__(images, hosts=hosts, port=port, latency=latency, catch_all=catch_all)
        self.record_headers = record_headers
        self._flaky: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._sites: list[web.TCPSite] = []
        self._bomb: bytes | None = None

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await runner.setup()
        self._runner = runner

        async def listen(host: str, port: int) -> int:
            site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
            await site.start()
            self._sites.append(site)
            server = site._server
            assert server is not None
            bound: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
            return bound

        async def unlisten() -> None:
            sites, self._sites = self._sites, []
            for site in sites:
                await site.stop()

        await self._bind(listen, unlisten)

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- handlers --------------------------------------------------------
    def _image_for(self, key: str) -> bytes:
        return self.images[image_name_for(self._names, key)]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        host = request.host.rsplit(":", 1)[0] if request.host else "?"
        path = request.path
        self.stats.requests[request.path_qs] += 1
        self.stats.by_host[host] += 1
        self.stats.active[host] += 1
        self.stats.peak[host] = max(self.stats.peak[host], self.stats.active[host])
        if self.record_headers:
            self.stats.headers.append(dict(request.headers))
        try:
            delay = self.latency.draw(self._rng)
            if delay:
                await asyncio.sleep(delay)
            if path.startswith("/_/"):
                return await self._fault(request, path[3:].split("/"))
            if path.startswith("/img/"):
                name = path[5:]
                if name in self.images:
                    return self._image(self.images[name])
                if not self.catch_all:
                    raise web.HTTPNotFound()
            if self.catch_all:
                return self._image(self._image_for(request.path_qs))
            raise web.HTTPNotFound()
        finally:
            self.stats.active[host] -= 1

    def _image(self, data: bytes, ctype: str | None = None, **headers: str) -> web.Response:
        return web.Response(body=data, headers={"Content-Type": ctype or content_type(data), **headers})

    async def _fault(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        kind, args = parts[0], parts[1:]
        first = self.images[self._names[0]]
        if kind == "status":
            return web.Response(status=int(args[0]))
        if kind == "flaky":
            key, n, code = args[0], int(args[1]), int(args[2])
            self._flaky[key] += 1
            if self._flaky[key] <= n:
                headers = {}
                if "retry_after" in request.query:
                    headers["Retry-After"] = request.query["retry_after"]
                return web.Response(status=code, headers=headers)
            return self._image(self._image_for(key))
        if kind == "hang":
            await asyncio.sleep(3600)
            return web.Response(status=204)
        if kind == "drip":
            bps = float(request.query.get("bps", "1"))
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            resp.content_length = len(first)
            await resp.prepare(request)
            for i in range(len(first)):
                await resp.write(first[i : i + 1])
                await asyncio.sleep(1 / bps)
            return resp
        if kind == "truncated":
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            resp.content_length = len(first) * 2
            await resp.prepare(request)
            await resp.write(first)
            assert request.transport is not None
            request.transport.close()
            return resp
        if kind == "html-as-jpeg":
            return web.Response(
                body=b"<!doctype html><html><body>Not here</body></html>", content_type="image/jpeg"
            )
        if kind == "octet":
            return self._image(self.images[args[0]], "application/octet-stream")
        if kind == "named":
            return self._image(self.images[args[0]], request.query.get("ct"))
        if kind == "as":
            return self._image(self.images[args[0]])
        if kind == "redirect":
            n, name = int(args[0]), args[1]
            target = f"/_/redirect/{n - 1}/{name}" if n > 1 else f"/img/{name}"
            raise web.HTTPFound(target)
        if kind == "loop":
            raise web.HTTPFound("/_/loop")
        if kind == "redirect-to":
            raise web.HTTPFound(request.query["location"])
        if kind == "big":
            size = int(request.query.get("size", str(64 << 20)))
            chunked = request.query.get("chunked") == "1"
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            if not chunked:
                resp.content_length = size
            await resp.prepare(request)
            block = b"\xff\xd8\xff" + b"\x00" * (65536 - 3)
            sent = 0
            while sent < size:
                piece = block[: min(len(block), size - sent)]
                await resp.write(piece)
                sent += len(piece)
                block = b"\x00" * 65536
            return resp
        if kind == "huge-pixels":
            return self._image(huge_pixels_png())
        if kind == "corrupt":
            return self._image(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "image/jpeg")
        if kind == "gzip-bomb":
            if self._bomb is None:
                self._bomb = gzip.compress(b"\x00" * (64 << 20), compresslevel=9)
            return web.Response(
                body=self._bomb, headers={"Content-Type": "image/png", "Content-Encoding": "gzip"}
            )
        if kind == "robots":
            value = "/".join(args)
            return self._image(first, **{"X-Robots-Tag": value})
        raise web.HTTPNotFound()


# ---- the lean server -------------------------------------------------------
#: The largest request head (request line and headers, with the blank line) the lean server reads.
MAX_HEAD = 16 * 1024
_CRLF2 = b"\r\n\r\n"
#: aiohttp answers 400 to a request target with a control character, a space or a non-ASCII byte.
_BAD_TARGET = re.compile(rb"[^\x21-\x7e]")
#: A run of percent escapes in a path.
_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"


def _decode_escapes(match: re.Match[str]) -> str:
    """One run of ``%XX`` escapes: the UTF-8 it spells, escapes that are not valid UTF-8 kept as they are."""
    text = match.group()
    raw = bytes.fromhex(text.replace("%", ""))
    out = raw.decode("utf-8", "surrogateescape")
    if out.isascii() or not any("\udc80" <= ch <= "\udcff" for ch in out):
        return out
    parts: list[str] = []
    at = 0  # the byte of ``raw`` that ``ch`` starts at
    for ch in out:
        if "\udc80" <= ch <= "\udcff":
            parts.append(text[3 * at : 3 * at + 3])
            at += 1
        else:
            parts.append(ch)
            at += len(ch.encode("utf-8"))
    return "".join(parts)


def unquote_path(raw: str) -> str:
    """A request's decoded path exactly as aiohttp's ``request.path`` (yarl) decodes it."""
    return _ESCAPES.sub(_decode_escapes, raw) if "%" in raw else raw


def split_target(target: str) -> tuple[str, str]:
    """An origin-form request target's raw path and its ``path_qs`` exactly as aiohttp's ``request.path_qs``.

    That is the target itself, except that an empty query or fragment is dropped, and
    a path starting with ``//`` gets two more slashes (yarl writes it so).
    """
    if "?" not in target and "#" not in target and target[:2] != "//":
        return target, target
    path, _, fragment = target.partition("#")
    path, _, query = path.partition("?")
    qs = f"//{path}" if path[:2] == "//" else path
    if query:
        qs = f"{qs}?{query}"
    if fragment:
        qs = f"{qs}#{fragment}"
    return path, qs


def _head(status: int, length: int, ctype: str | None = None, extra: bytes = b"") -> bytes:
    lines = f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
    if ctype is not None:
        lines += f"Content-Type: {ctype}\r\n"
    return f"{lines}Content-Length: {length}\r\n".encode("latin-1") + extra + b"\r\n"


def _plain(status: int, extra: bytes = b"", *, close: bool = False) -> bytes:
    body = f"{status}: {_REASONS[status]}".encode()
    return _head(status, len(body), "text/plain; charset=utf-8", extra + (_CLOSE if close else b"")) + body


_BAD_REQUEST = _plain(400, close=True)
_TOO_LARGE = _plain(431, close=True)


class _Pending:
    """A response waiting for its latency or for the responses before it on its connection."""

    __slots__ = ("close", "data", "host", "ready", "timer")

    def __init__(self, data: bytes, host: str | None, close: bool, ready: bool) -> None:
        self.data = data
        self.host = host  # None: not counted in the stats (an error the server answers at once)
        self.close = close
        self.ready = ready
        self.timer: asyncio.TimerHandle | None = None


class _LeanProtocol(asyncio.BufferedProtocol):
    """One client connection of a :class:`LeanServer`: parses request heads, answers them in order.

    A buffered protocol: the transport reads into the server's one scratch buffer
    (``recv_into``), where a plain protocol would get a fresh 256 KiB ``recv``
    per read, which glibc serves with an mmap, an mremap and a munmap each time.
    """

    __slots__ = ("_buf", "_closing", "_discard", "_eof", "_loop", "_queue", "_scanned", "_srv", "transport")

    def __init__(self, srv: LeanServer) -> None:
        self._srv = srv
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buf = b""  # the start of a request head that has not fully arrived
        self._scanned = 0  # how much of ``_buf`` holds no blank line
        self._discard = 0  # bytes of a request body still to skip
        self._queue: collections.deque[_Pending] = collections.deque()
        self._closing = False  # no more requests are read: the connection closes after the queue
        self._eof = False

    # ---- asyncio callbacks ----------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._loop = self._srv._loop
        self._srv._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._srv._conns.discard(self)
        self._closing = True
        active = self._srv.stats.active
        for pending in self._queue:
            if pending.timer is not None:
                pending.timer.cancel()
            if pending.host is not None:
                active[pending.host] -= 1
        self._queue.clear()
        self.transport = None

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._closing = True
        return bool(self._queue)  # keep the connection half-open until the queued responses are out

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._srv._scratch

    def buffer_updated(self, nbytes: int) -> None:
        if not self._closing:
            self.data_received(self._srv._scratch[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        """Parse and answer every complete request head in what has arrived."""
        if self._closing:
            return
        start = 0
        if self._buf:
            data = self._buf + data
            start = max(0, self._scanned - 3)
            self._buf = b""
        pos, size = 0, len(data)
        while pos < size and not self._closing:
            if self._discard:
                skip = min(self._discard, size - pos)
                self._discard -= skip
                pos += skip
                continue
            end = data.find(_CRLF2, max(pos, start))
            start = 0
            if end < 0:
                if size - pos > MAX_HEAD:
                    self._fail(_TOO_LARGE)
                else:
                    self._buf = data[pos:]
                    self._scanned = size - pos
                return
            if end + 4 - pos > MAX_HEAD:
                self._fail(_TOO_LARGE)
                return
            self._request(data[pos:end])
            pos = end + 4

    # ---- requests ---------------------------------------------------------
    def _request(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            self._fail(_BAD_REQUEST)
            return
        method, target, version = parts
        if version == b"HTTP/1.1":
            http10, keep = False, True
        elif version == b"HTTP/1.0":
            http10, keep = True, False
        else:
            self._fail(_BAD_REQUEST)
            return
        if target[:1] != b"/" or _BAD_TARGET.search(target) is not None:
            self._fail(_BAD_REQUEST)
            return
        host = b""
        for i in range(1, len(lines)):
            line = lines[i]
            colon = line.find(b":")
            if colon < 1:
                self._fail(_BAD_REQUEST)
                return
            if colon not in (4, 10, 14, 17):  # the lengths of the four names looked at
                continue
            field = line[:colon].lower()
            if field == b"host":
                host = line[colon + 1 :].strip()
            elif field == b"connection":
                tokens = {t.strip() for t in line[colon + 1 :].lower().split(b",")}
                if b"close" in tokens:
                    keep = False
                elif b"keep-alive" in tokens:
                    keep = True
            elif field == b"content-length":
                value = line[colon + 1 :].strip()
                if not value.isdigit():
                    self._fail(_BAD_REQUEST)
                    return
                self._discard = int(value)
            elif field == b"transfer-encoding":
                self._fail(_BAD_REQUEST)  # no chunked request bodies
                return
        if not keep:
            self._closing = True
        srv = self._srv
        if method == b"GET":
            head_only = False
        elif method == b"HEAD":
            head_only = True
        else:
            self._answer(srv._not_allowed(keep, http10), None, not keep, 0.0)
            return
        hostname = srv._hostnames.get(host)
        if hostname is None:
            hostname = srv._hostname(host)
        raw_path, path_qs = split_target(target.decode("ascii"))
        path = unquote_path(raw_path)
        stats = srv.stats
        stats.requests[path_qs] += 1
        stats.by_host[hostname] += 1
        active = stats.active[hostname] + 1
        stats.active[hostname] = active
        if active > stats.peak[hostname]:
            stats.peak[hostname] = active
        name: str | None = None
        if path[:5] == "/img/" and path[5:] in srv.images:
            name = path[5:]
        elif srv.catch_all:
            name = image_name_for(srv._names, path_qs)
        if name is None:
            data = _plain(404, srv._connection(keep, http10))
            if head_only:
                data = data[: data.index(_CRLF2) + 4]
        elif head_only or http10 or not keep:
            data = srv._build(name, head_only, srv._connection(keep, http10))
        else:
            data = srv._responses[name]
        self._answer(data, hostname, not keep, srv.latency.draw(srv._rng))

    def _answer(self, data: bytes, host: str | None, close: bool, delay: float) -> None:
        if delay <= 0 and not self._queue:
            self._send(data, host, close)
            return
        pending = _Pending(data, host, close, delay <= 0)
        if delay > 0:
            assert self._loop is not None
            pending.timer = self._loop.call_later(delay, self._ready, pending)
        self._queue.append(pending)

    def _fail(self, data: bytes) -> None:
        """Answer a request that cannot be read with ``data`` (which says close), then close."""
        self._closing = True
        self._answer(data, None, True, 0.0)

    def _ready(self, pending: _Pending) -> None:
        pending.ready = True
        pending.timer = None
        queue = self._queue
        while queue and queue[0].ready:
            head = queue.popleft()
            self._send(head.data, head.host, head.close)
            if head.close:
                return
        if not queue and self._eof and self.transport is not None:
            self.transport.close()

    def _send(self, data: bytes, host: str | None, close: bool) -> None:
        transport = self.transport
        if host is not None:
            self._srv.stats.active[host] -= 1
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if close:  # the last request read: nothing is queued after it
            self._closing = True
            transport.close()


class LeanServer(_ThreadedServer):
    """The benchmark's image server: ``/img/NAME`` and the catch-all of :class:`ImageServer`, cheaply.

    A raw asyncio protocol (no aiohttp) in a background thread, with the same
    surface as :class:`ImageServer` (``with LeanServer(images) as srv:
    srv.url("img/a.jpg")``), the same latency and the same stats, but no
    scripted faults (``/_/...`` is just another path). It reads only what it
    needs of a request (the request line and the Host, Connection,
    Content-Length and Transfer-Encoding headers), answers GET and HEAD (other
    methods get 405), keeps connections alive (HTTP/1.1, or HTTP/1.0 asking
    for it), answers pipelined requests in order, and writes each response
    with one ``transport.write``: of bytes built when the server is made, for
    a keep-alive HTTP/1.1 GET (so it holds every image twice). A request's
    latency is a timer on the event loop (``call_later``): waiting costs no CPU.
    """

    _thread_name = "imgfetch-lean-server"

    def __init__(
        self,
        images: Mapping[str, bytes],
        *,
        hosts: Sequence[str] = ("127.0.0.1",),
        port: int = 0,
        latency: Latency | None = None,
        catch_all: bool = False,
    ) -> None:
        super().__init__(images, hosts=hosts, port=port, latency=latency, catch_all=catch_all)
        #: The whole response (head and body) to a keep-alive HTTP/1.1 GET of each image, built up
        #: front: then answering costs no copy, and building it (a fresh allocation, page faults
        #: and a copy of the image) is not paid while a tool is being measured.
        self._responses = {name: self._build(name, False, b"") for name in self._names}
        self._hostnames: dict[bytes, str] = {}
        #: What every connection reads into (one event loop thread: one read at a time).
        self._scratch = memoryview(bytearray(64 * 1024))
        self._conns: set[_LeanProtocol] = set()
        self._servers: list[asyncio.Server] = []

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()

        async def listen(host: str, port: int) -> int:
            server = await loop.create_server(
                lambda: _LeanProtocol(self), host, port, backlog=1024, reuse_address=True
            )
            self._servers.append(server)
            bound: int = server.sockets[0].getsockname()[1]
            return bound

        async def unlisten() -> None:
            servers, self._servers = self._servers, []
            for server in servers:
                server.close()
                await server.wait_closed()

        await self._bind(listen, unlisten)

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.abort()
        for server in self._servers:
            await server.wait_closed()
        self._servers = []
        for _ in range(3):  # the transports' connection_lost callbacks
            await asyncio.sleep(0)

    # ---- responses -------------------------------------------------------
    def _hostname(self, host: bytes) -> str:
        """The Host header without its port, as the stats count it (``?`` when there is none)."""
        name = host.decode("latin-1").rsplit(":", 1)[0] or "?"
        if len(self._hostnames) < 1024:
            self._hostnames[host] = name
        return name

    @staticmethod
    def _connection(keep: bool, http10: bool) -> bytes:
        if not keep:
            return _CLOSE
        return _KEEP_ALIVE if http10 else b""

    def _build(self, name: str, head_only: bool, extra: bytes) -> bytes:
        data = self.images[name]
        head = _head(200, len(data), content_type(data), extra)
        return head if head_only else head + data

    def _not_allowed(self, keep: bool, http10: bool) -> bytes:
        return _plain(405, b"Allow: GET, HEAD\r\n" + self._connection(keep, http10))


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


def load_images(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m imgfetch.bench.server DIR`` serves DIR's images until interrupted or SIGTERM (the bench).

    It prints the port on the first line of stdout, serves with :class:`LeanServer`
    (``--server aiohttp``: :class:`ImageServer`), and on exit writes
    ``{"requests": total, "by_host": ..., "peak": ...}`` to ``--stats-file``.
    """
    ap = argparse.ArgumentParser(prog="python -m imgfetch.bench.server")
    ap.add_argument("folder", type=Path)
    ap.add_argument("--hosts", type=int, default=1, help="serve on 127.0.0.1 .. 127.0.0.N")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="median seconds")
    ap.add_argument("--latency-kind", default="lognormal", choices=["lognormal", "fixed"])
    ap.add_argument("--catch-all", action="store_true")
    ap.add_argument("--stats-file", type=Path, help="write JSON stats here on exit")
    ap.add_argument(
        "--server",
        default="lean",
        choices=["lean", "aiohttp"],
        help="lean: LeanServer, little CPU per request (default); aiohttp: ImageServer",
    )
    args = ap.parse_args(argv)
    hosts = [f"127.0.0.{i + 1}" for i in range(args.hosts)]
    kind = LeanServer if args.server == "lean" else ImageServer
    srv = kind(
        load_images(args.folder),
        hosts=hosts,
        port=args.port,
        latency=Latency(median=args.latency, kind=args.latency_kind),
        catch_all=args.catch_all,
    )
    import json
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with srv:
        print(f"{srv.port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    if args.stats_file:
        args.stats_file.write_text(
            json.dumps({"requests": srv.stats.total, "by_host": srv.stats.by_host, "peak": srv.stats.peak})
        )


if __name__ == "__main__":
    main()
