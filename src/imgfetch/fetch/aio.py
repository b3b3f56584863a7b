"""The asyncio HTTP client (aiohttp).  The only module that imports aiohttp's client.

One shared session: a pooled, keep-alive connector with a DNS cache.  Redirects
are followed by hand so that every hop is checked (scheme, hop count, address).
aiohttp errors are translated into reason codes here, in one place.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from imgfetch.fetch.common import (
    NO_SUCH_HOST,
    REDIRECT_STATUSES,
    BodyDecoder,
    Fault,
    Fetched,
    ProxyChooser,
    declared_length,
    is_blocked_address,
    literal_ip,
    next_hop,
    opted_out,
    request_headers,
    short_error,
)
from imgfetch.fetch.policy import parse_retry_after
from imgfetch.outcome import Reason, http_reason

if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping

    from imgfetch.config import HttpConfig


class BlockedAddress(OSError):
    """Every address a name resolved to is forbidden by ``--block-private``."""


class _Resolver(AbstractResolver):
    """Applies ``--resolve`` overrides and ``--block-private`` on the resolved addresses.

    aiohttp connects to exactly the addresses returned here, so the check is
    pinned to the connection: a second, different DNS answer cannot slip past it.
    """

    def __init__(
        self,
        overrides: Mapping[str, tuple[str, int | None]],
        block_private: bool,
        exempt: frozenset[str] = frozenset(),
    ) -> None:
        self._inner = aiohttp.ThreadedResolver()
        # The user's own proxies: often on a private address (proxy.corp, localhost), and
        # chosen by the user, not by a URL list or a redirect.
        self._exempt = exempt
        # Normalised as the lookup below is, so "Example.com." and "example.com" are one entry.
        self._overrides = {k.lower().rstrip("."): v for k, v in overrides.items()}
        self._block = block_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        key = host.lower().rstrip(".")
        override = self._overrides.get(key)
        if override is not None:
            addr, new_port = override
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            results: list[ResolveResult] = [
                {
                    "hostname": host,
                    "host": addr,
                    "port": new_port or port,
                    "family": fam,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
            ]
        else:
            results = await self._inner.resolve(host, port, family)
        if self._block and key not in self._exempt:
            results = [r for r in results if not is_blocked_address(r["host"])]
            if not results:
                raise BlockedAddress(f"{host} resolves only to private or reserved addresses")
        return results

    async def close(self) -> None:
        await self._inner.close()


class _Hop:
    """Where a request chain has got to: the URL being requested and its status, once known."""

    __slots__ = ("status", "url")

    def __init__(self, url: URL) -> None:
        self.url = url
        self.status: int | None = None


class AioClient:
    """Makes single attempts; retries, limits and politeness belong to the pipeline."""

    def __init__(self, cfg: HttpConfig, resolve: Mapping[str, tuple[str, int | None]] | None = None) -> None:
        self._cfg = cfg
        self._resolve = dict(resolve or {})
        self._session: aiohttp.ClientSession | None = None
        self._headers = request_headers(cfg)
        self._proxies = ProxyChooser(cfg)

    def _proxy_hosts(self) -> frozenset[str]:
        return frozenset((URL(u).host or "").lower().rstrip(".") for u in self._proxies.urls())

    async def __aenter__(self) -> AioClient:
        cfg = self._cfg
        ssl_ctx: ssl.SSLContext | bool = not cfg.insecure
        connector = aiohttp.TCPConnector(
            limit=cfg.concurrency,
            limit_per_host=0,  # per-host limits are the pipeline's (adaptive, with rate and delay)
            use_dns_cache=True,
            ttl_dns_cache=300,
            resolver=_Resolver(self._resolve, cfg.block_private, self._proxy_hosts()),
            ssl=ssl_ctx,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # decoded by BodyDecoder, bounded by max_bytes
            cookie_jar=aiohttp.DummyCookieJar(),  # a million hosts' cookies would only cost memory
            # aiohttp's trust_env also reads ~/.netrc on a worker thread for every
            # request (a third of the CPU per image); proxies from the environment
            # are applied by ProxyChooser instead.
            trust_env=False,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.read_timeout
            ),
            headers=self._headers,
            skip_auto_headers=("Accept-Encoding",),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def attempt(self, url: URL) -> Fetched:
        """One request chain: at most ``max_redirects`` hops, within ``timeout`` seconds.

        A failure records the last URL requested and the last HTTP status received,
        so a timeout or a cut body after a redirect says where and how far it got.
        """
        hop = _Hop(url)
        try:
            async with asyncio.timeout(self._cfg.timeout) as deadline:
                try:
                    return await self._chain(hop)
                except Fault as fault:
                    return Fetched(
                        reason=fault.reason,
                        detail=fault.detail,
                        status=fault.status if fault.status is not None else hop.status,
                        final_url=str(hop.url),
                    )
        except TimeoutError:
            if deadline.expired():
                return Fetched(
                    reason=Reason.TIMEOUT.value,
                    detail=f"download took longer than {self._cfg.timeout:g} s",
                    status=hop.status,
                    final_url=str(hop.url),
                )
            raise

    async def _chain(self, hop: _Hop) -> Fetched:
        assert self._session is not None, "use AioClient as an async context manager"
        cfg = self._cfg
        hops = 0
        while True:
            current = hop.url
            hop.status = None
            if cfg.block_private:
                ip = literal_ip(current.host or "")
                if ip is not None and is_blocked_address(ip):
                    raise Fault(Reason.BLOCKED_ADDRESS.value, f"address {ip} is not public")
            try:
                async with self._session.get(
                    current, allow_redirects=False, proxy=self._proxies.for_url(current), read_until_eof=True
                ) as resp:
                    status = hop.status = resp.status
                    if status in REDIRECT_STATUSES:
                        hop.url = next_hop(current, resp.headers.get("Location"), hops, cfg)
                        hops += 1
                        continue
                    if status not in (200, 203):
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"), time.time())
                        return Fetched(
                            reason=http_reason(status),
                            status=status,
                            detail=resp.reason,
                            retry_after=retry_after,
                            final_url=str(current),
                        )
                    if cfg.honor_opt_out:
                        directive = opted_out(resp.headers.getall("X-Robots-Tag", ()))
                        if directive is not None:
                            raise Fault(Reason.OPTED_OUT.value, f"X-Robots-Tag: {directive}", status)
                    length = declared_length(resp.headers)
                    decoder = BodyDecoder(resp.headers.get("Content-Encoding"), cfg.max_bytes)
                    if length is not None and length > cfg.max_bytes and not decoder.encoded:
                        raise Fault(
                            Reason.TOO_LARGE.value, f"Content-Length {length} > {cfg.max_bytes}", status
                        )
                    async for chunk in resp.content.iter_any():  # what has arrived; bounded by read_bufsize
                        decoder.feed(chunk)
                    body = decoder.finish()
                    if length is not None and not decoder.encoded and len(body) < length:
                        raise Fault(Reason.TRUNCATED.value, f"got {len(body)} of {length} bytes", status)
                    return Fetched(reason=None, body=body, status=status, final_url=str(current))
            except aiohttp.ClientError as exc:
                reason, detail = translate(exc)
                raise Fault(reason, detail) from None
            except OSError as exc:  # socket errors that slip past aiohttp's wrapping
                raise Fault(Reason.CONNECTION_ERROR.value, short_error(exc)) from None


def translate(exc: aiohttp.ClientError) -> tuple[str, str]:
    """aiohttp's exception tree -> (reason, detail); most specific first."""
    detail = short_error(exc)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return Reason.CONNECT_TIMEOUT.value, detail or "connect timed out"
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return Reason.READ_TIMEOUT.value, detail or "no data received in time"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return Reason.READ_TIMEOUT.value, detail or "timed out"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        inner = exc.os_error
        if isinstance(inner, BlockedAddress):
            return Reason.BLOCKED_ADDRESS.value, str(inner)
        if isinstance(inner, socket.gaierror) and inner.errno in NO_SUCH_HOST:
            return Reason.DNS_ERROR.value, f"cannot resolve host: {inner.strerror}"
        return Reason.CONNECTION_ERROR.value, f"DNS lookup failed: {detail}"
    if isinstance(exc, (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError)):
        return Reason.PROXY_ERROR.value, detail
    if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError)):
        return Reason.TLS_ERROR.value, detail
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Reason.TRUNCATED.value, detail or "response body ended early"
    if isinstance(exc, aiohttp.InvalidUrlClientError):
        return Reason.INVALID_URL.value, detail
    if isinstance(exc, aiohttp.ClientResponseError):
        return Reason.BAD_RESPONSE.value, detail
    return Reason.CONNECTION_ERROR.value, detail
