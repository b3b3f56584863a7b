"""Client CPU per request: aiohttp as imgfetch configures it, against a bare asyncio client.

``python benchmarks/client_cpu.py [--requests 4000] [--inflight 32] [--cache DIR]``

Both clients fetch the same corpus images from ``python -m imgfetch.bench.server`` (in
its own process, 4 loopback hosts, 80 ms median latency) over keep-alive
connections, with the same number of requests in flight, and this process's own
CPU time is divided by the number of requests. The bare client is a floor, not a
design: a ``Content-Length`` body, no redirects, proxies, TLS, limits or error
handling. It answers one question: how much of imgfetch's CPU per download is
aiohttp's, i.e. what a leaner HTTP client could save (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from imgfetch.bench import Server, corpus

_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


async def with_aiohttp(urls: list[str], inflight: int) -> int:
    connector = aiohttp.TCPConnector(limit=inflight, limit_per_host=0)
    session = aiohttp.ClientSession(
        connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
    )
    slots = asyncio.Semaphore(inflight)
    got = 0

    async def one(url: str) -> None:
        nonlocal got
        async with slots, session.get(url, allow_redirects=False) as resp:
            body = b"".join([chunk async for chunk in resp.content.iter_any()])
        got += len(body)  # after the await: ``got += await ...`` would read ``got`` before it

    async with session:
        await asyncio.gather(*(one(u) for u in urls))
    return got


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.head: bytes | None = None
        self.need = 0
        self.waiter: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            match = _LENGTH.search(self.head)
            assert match is not None, "the bare client needs a Content-Length"
            self.need = int(match.group(1))
        if len(self.buf) >= self.need and self.waiter is not None:
            body = bytes(self.buf[: self.need])
            del self.buf[: self.need]
            self.head = None
            self.waiter.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))


async def with_bare_protocol(urls: list[str], inflight: int) -> int:
    loop = asyncio.get_running_loop()
    idle: dict[tuple[str, int], list[_Connection]] = {}
    slots = asyncio.Semaphore(inflight)
    got = 0

    async def one(url: str) -> None:
        nonlocal got
        host, _, rest = url.removeprefix("http://").partition("/")
        name, _, port = host.partition(":")
        async with slots:
            pool = idle.setdefault((name, int(port)), [])
            if pool:
                conn = pool.pop()
            else:
                _, conn = await loop.create_connection(_Connection, name, int(port))
            conn.waiter = loop.create_future()
            assert conn.transport is not None
            conn.transport.write(f"GET /{rest} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode())
            body = await conn.waiter
            got += len(body)
            pool.append(conn)

    await asyncio.gather(*(one(u) for u in urls))
    for pool in idle.values():
        for conn in pool:
            if conn.transport is not None:
                conn.transport.close()
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "imgfetch" / "bench")
    args = ap.parse_args(argv)
    folder = args.cache / "corpus"
    entries = corpus.build(folder, 200, log=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(folder, 4, 0.08, Path(tmp) / "stats.json")
        try:
            urls = [
                f"http://{server.hosts[i % 4]}:{server.port}/img/{entries[i % len(entries)]['name']}"
                for i in range(args.requests)
            ]
            for _ in range(args.repeat):
                for name, client in (("aiohttp", with_aiohttp), ("bare protocol", with_bare_protocol)):
                    cpu, wall = _cpu(), time.perf_counter()
                    size = asyncio.run(client(urls, args.inflight))
                    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
                    n = len(urls)
                    print(
                        f"{name:14s} {n / wall:6.0f} requests/s, client CPU {1000 * cpu / n:.3f} ms"
                        f" per request ({size / n / 1000:.0f} kB each)",
                        flush=True,
                    )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
