"""A local image server for the demo, the tests and the benchmarks (loopback only).

It serves real image bytes on one or more 127.0.0.x addresses (one port, so
each address acts as a different host), adds a per-request latency drawn from
a distribution while costing no CPU (the handler just sleeps on the event
loop), counts requests and the peak number of concurrent requests per host,
and answers scripted faults under ``/_/``:

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
import contextlib
import dataclasses
import gzip
import math
import random
import struct
import threading
import zlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

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


def huge_pixels_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class ImageServer:
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
        if not images:
            raise ValueError("ImageServer needs at least one image")
        for host in hosts:
            if not host.startswith("127."):
                raise ValueError("ImageServer only binds loopback addresses")
        self.images = dict(images)
        self._names = sorted(self.images)
        self.hosts = list(hosts)
        self.port = port
        self.latency = latency or Latency()
        self.catch_all = catch_all
        self.record_headers = record_headers
        self.stats = ServerStats()
        self._flaky: Counter[str] = Counter()
        self._rng = self.latency.sampler()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._bomb: bytes | None = None

    # ---- lifecycle -------------------------------------------------------
    def __enter__(self) -> ImageServer:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="imgfetch-server", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        loop, runner = self._loop, self._runner
        if loop is None or runner is None:
            return
        fut = asyncio.run_coroutine_threadsafe(runner.cleanup(), loop)
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
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await runner.setup()
        for attempt in range(20):
            port = self.port
            sites: list[web.TCPSite] = []
            try:
                for host in self.hosts:
                    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
                    await site.start()
                    sites.append(site)
                    if port == 0:
                        server = site._server
                        assert server is not None
                        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
                self.port = port
                break
            except OSError:
                for site in sites:
                    await site.stop()
                if self.port != 0 or attempt == 19:
                    raise
        self._runner = runner

    # ---- addresses -------------------------------------------------------
    def base(self, host: int | str = 0) -> str:
        name = self.hosts[host] if isinstance(host, int) else host
        return f"http://{name}:{self.port}"

    def url(self, path: str, host: int | str = 0) -> str:
        return f"{self.base(host)}/{path.lstrip('/')}"

    # ---- handlers --------------------------------------------------------
    def _image_for(self, key: str) -> bytes:
        return self.images[self._names[zlib.crc32(key.encode("utf-8", "surrogatepass")) % len(self._names)]]

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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


def load_images(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m imgfetch.server DIR`` serves DIR's images until interrupted (used by benchmarks)."""
    ap = argparse.ArgumentParser(prog="python -m imgfetch.server")
    ap.add_argument("folder", type=Path)
    ap.add_argument("--hosts", type=int, default=1, help="serve on 127.0.0.1 .. 127.0.0.N")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="median seconds")
    ap.add_argument("--latency-kind", default="lognormal", choices=["lognormal", "fixed"])
    ap.add_argument("--catch-all", action="store_true")
    ap.add_argument("--stats-file", type=Path, help="write JSON stats here on exit")
    args = ap.parse_args(argv)
    hosts = [f"127.0.0.{i + 1}" for i in range(args.hosts)]
    srv = ImageServer(
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
