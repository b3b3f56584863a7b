"""A real, minimal HTTP forward proxy for tests (loopback only).

It relays absolute-URI requests (``GET http://host:port/path HTTP/1.1``, what a
client sends for ``http://`` URLs through a proxy) and tunnels ``CONNECT``
(what it sends for ``https://``), and records every request it relayed so a
test can prove that traffic really went through it.  One request per client
connection: the upstream request carries ``Connection: close``, so the client
sees the upstream's ``Connection: close`` too and never reuses the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from types import TracebackType

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade"}
_MAX_HEAD = 64 * 1024


class ForwardProxy:
    """``with ForwardProxy() as proxy: download(..., proxy=proxy.url)``; then read ``proxy.relayed``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        if not host.startswith("127."):
            raise ValueError("the test proxy only binds loopback addresses")
        self.host = host
        self.port = 0
        #: ``"GET http://..."`` or ``"CONNECT host:port"`` for each request relayed, in order.
        self.relayed: list[str] = []
        #: Request headers the proxy received, one dict per relayed request.
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ForwardProxy:
        self._thread = threading.Thread(target=self._run, name="test-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(asyncio.start_server(self._client, self.host, 0))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            loop.run_until_complete(_cancel_all())
            loop.close()

    def _record(self, line: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.relayed.append(line)
            self.headers.append(headers)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        try:
            lines = head[:_MAX_HEAD].decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip()] = value.strip()
            if method == "CONNECT":
                await self._tunnel(target, headers, reader, writer)
            else:
                await self._forward(method, target, headers, writer)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            with contextlib.suppress(OSError):
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    async def _forward(
        self, method: str, target: str, headers: dict[str, str], writer: asyncio.StreamWriter
    ) -> None:
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        self._record(f"{method} {target}", headers)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            out = [f"{method} {path} HTTP/1.1"]
            out += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in _HOP_BY_HOP]
            out += ["Connection: close", "", ""]
            up_writer.write("\r\n".join(out).encode("latin-1"))
            await up_writer.drain()
            while chunk := await up_reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        finally:
            up_writer.close()

    async def _tunnel(
        self,
        target: str,
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        host, _, port = target.rpartition(":")
        self._record(f"CONNECT {target}", headers)
        up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            with contextlib.suppress(OSError):
                if dst.can_write_eof():
                    dst.write_eof()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            up_writer.close()


async def _cancel_all() -> None:
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
