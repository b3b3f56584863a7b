"""The blocking HTTP client (urllib3).  The only module that imports urllib3.

Used by the ``threads``, ``processes`` and ``loop`` engines; it follows the
same rules as :mod:`imgfetch.fetch.aio`, so every engine reports the same
reason for the same fault.  One attempt is one redirect chain followed by
hand: every hop has its scheme and hop count checked, its host resolved here
(``--resolve`` overrides first), the addresses checked against
``--block-private``, and the connection made to exactly the checked address
(pinned: the pool is keyed by the address, the name only travels in ``Host``
and in TLS's SNI and certificate check).  Bodies are read raw and decoded by
:class:`~imgfetch.fetch.common.BodyDecoder`, so ``max_bytes`` bounds the output
of decompression too.  urllib3 and socket errors are translated here, in one place.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationValueError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)

from imgfetch.fetch.common import (
    CHUNK,
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
    from collections.abc import Mapping

    from urllib3.response import BaseHTTPResponse
    from yarl import URL

    from imgfetch.config import HttpConfig

#: Same lifetime as the aiohttp client's DNS cache.
DNS_TTL = 300.0
_DNS_CACHE_MAX = 10_000
#: Error bodies up to this size are read so the connection can be reused; larger ones close it.
_DRAIN_LIMIT = 64 * 1024


class _Expired(Exception):
    """The whole-download deadline passed."""


class _Hop:
    """Where a request chain has got to: the URL being requested and its status, once known."""

    __slots__ = ("status", "url")

    def __init__(self, url: URL) -> None:
        self.url = url
        self.status: int | None = None


class SyncClient:
    """Makes single blocking attempts; thread-safe (one instance serves a whole thread pool).

    Retries, limits and politeness belong to the pipeline, as with the async client.
    """

    def __init__(
        self,
        cfg: HttpConfig,
        resolve: Mapping[str, tuple[str, int | None]] | None = None,
        *,
        pool_size: int | None = None,
    ) -> None:
        self._cfg = cfg
        self._overrides = {k.lower().rstrip("."): v for k, v in (resolve or {}).items()}
        self._headers = request_headers(cfg)
        # Pools are per (scheme, address, port, TLS name): idle connections of one
        # pool are at most per_host, like the pipeline's per-host limit.
        size = pool_size or cfg.per_host
        tls: dict[str, Any] = {"cert_reqs": "CERT_NONE", "assert_hostname": False} if cfg.insecure else {}
        if cfg.insecure:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._pool_kw: dict[str, Any] = {"maxsize": size, "block": False, **tls}
        self._pools = urllib3.PoolManager(num_pools=max(64, cfg.concurrency), **self._pool_kw)
        self._proxies: dict[str, urllib3.ProxyManager] = {}
        self._lock = threading.Lock()
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._chooser = ProxyChooser(cfg)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pools.clear()
        with self._lock:
            for manager in self._proxies.values():
                manager.clear()
            self._proxies.clear()

    # ---- one attempt -----------------------------------------------------
    def attempt(self, url: URL) -> Fetched:
        """One request chain: at most ``max_redirects`` hops, within ``timeout`` seconds.

        As with the async client, a failure records the last URL requested and the
        last HTTP status received.
        """
        deadline = time.monotonic() + self._cfg.timeout
        hop = _Hop(url)
        try:
            return self._chain(hop, deadline)
        except Fault as fault:
            return Fetched(
                reason=fault.reason,
                detail=fault.detail,
                status=fault.status if fault.status is not None else hop.status,
                final_url=str(hop.url),
            )
        except _Expired:
            return Fetched(
                reason=Reason.TIMEOUT.value,
                detail=f"download took longer than {self._cfg.timeout:g} s",
                status=hop.status,
                final_url=str(hop.url),
            )

    def _chain(self, hop: _Hop, deadline: float) -> Fetched:
        cfg = self._cfg
        hops = 0
        while True:
            current = hop.url
            hop.status = None
            resp = self._send(current, deadline)
            try:
                status = hop.status = resp.status
                if status in REDIRECT_STATUSES:
                    location = resp.headers.get("Location")
                    _discard(resp)
                    hop.url = next_hop(current, location, hops, cfg)
                    hops += 1
                    continue
                if status not in (200, 203):
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"), time.time())
                    _discard(resp)
                    return Fetched(
                        reason=http_reason(status),
                        status=status,
                        detail=resp.reason,
                        retry_after=retry_after,
                        final_url=str(current),
                    )
                if cfg.honor_opt_out:
                    directive = opted_out(resp.headers.getlist("X-Robots-Tag"))
                    if directive is not None:
                        raise Fault(Reason.OPTED_OUT.value, f"X-Robots-Tag: {directive}", status)
                body = self._read_body(resp, deadline)
                resp.release_conn()
                return Fetched(reason=None, body=body, status=status, final_url=str(current))
            except BaseException:
                # A half-read connection cannot be reused: close it before the pool gets it back.
                resp.close()
                resp.release_conn()
                raise

    def _read_body(self, resp: BaseHTTPResponse, deadline: float) -> bytes:
        cfg = self._cfg
        status = resp.status
        length = declared_length(resp.headers)
        decoder = BodyDecoder(resp.headers.get("Content-Encoding"), cfg.max_bytes)
        if length is not None and length > cfg.max_bytes and not decoder.encoded:
            raise Fault(Reason.TOO_LARGE.value, f"Content-Length {length} > {cfg.max_bytes}", status)
        sock = getattr(resp.connection, "sock", None)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Expired
            if sock is not None:
                # The read timeout is per socket read; bounding it by the time left makes
                # the whole-download deadline hold even against a server that drips bytes.
                sock.settimeout(min(cfg.read_timeout, remaining))
            try:
                chunk = resp.read1(CHUNK, decode_content=False)
            except ReadTimeoutError:
                if time.monotonic() >= deadline:
                    raise _Expired from None
                raise Fault(Reason.READ_TIMEOUT.value, "no data received in time", status) from None
            except (ProtocolError, http.client.HTTPException) as exc:
                raise Fault(
                    Reason.TRUNCATED.value, f"response body ended early: {_cause(exc)}", status
                ) from None
            except (HTTPError, OSError) as exc:
                reason, detail = translate(exc)
                raise Fault(reason, detail, status) from None
            if not chunk:
                break
            decoder.feed(chunk)
        body = decoder.finish()
        if length is not None and not decoder.encoded and len(body) < length:
            raise Fault(Reason.TRUNCATED.value, f"got {len(body)} of {length} bytes", status)
        return body

    # ---- one request -----------------------------------------------------
    def _send(self, url: URL, deadline: float) -> BaseHTTPResponse:
        """Send the GET of one hop and return the response with its body unread."""
        cfg = self._cfg
        host = url.raw_host or ""
        if cfg.block_private:
            ip = literal_ip(host)
            if ip is not None and is_blocked_address(ip):
                raise Fault(Reason.BLOCKED_ADDRESS.value, f"address {ip} is not public")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Expired
        timeout = urllib3.Timeout(
            connect=min(cfg.connect_timeout, remaining), read=min(cfg.read_timeout, remaining)
        )
        headers = dict(self._headers)
        proxy = self._proxy_for(url)
        try:
            if proxy is not None:
                # The proxy resolves and connects; only a literal address can be checked here.
                return proxy.urlopen(
                    "GET",
                    str(url),
                    headers=headers,
                    redirect=False,
                    retries=False,
                    preload_content=False,
                    decode_content=False,
                    timeout=timeout,
                )
            scheme = (url.scheme or "http").lower()
            port = url.port or (443 if scheme == "https" else 80)
            headers["Host"] = url.host_port_subcomponent or host
            addresses = self._addresses(host, port)
            pool_kw: dict[str, Any] | None = None
            if scheme == "https" and literal_ip(host) is None:
                pool_kw = {"server_hostname": host}
                if not cfg.insecure:
                    pool_kw["assert_hostname"] = host
            for i, (addr, addr_port) in enumerate(addresses):
                pool = self._pools.connection_from_host(addr, addr_port, scheme, pool_kwargs=pool_kw)
                try:
                    return pool.urlopen(
                        "GET",
                        url.raw_path_qs,
                        headers=headers,
                        redirect=False,
                        retries=False,
                        assert_same_host=False,
                        preload_content=False,
                        decode_content=False,
                        release_conn=False,
                        timeout=timeout,
                    )
                except (NewConnectionError, ConnectTimeoutError):
                    # Like aiohttp: try the name's next address before giving up.
                    if i == len(addresses) - 1 or time.monotonic() >= deadline:
                        raise
            raise AssertionError("unreachable: _addresses never returns an empty list")
        except ReadTimeoutError:
            if time.monotonic() >= deadline:
                raise _Expired from None
            raise Fault(Reason.READ_TIMEOUT.value, "no data received in time") from None
        except ConnectTimeoutError as exc:
            if not isinstance(exc, NewConnectionError) and time.monotonic() >= deadline:
                raise _Expired from None
            reason, detail = translate(exc)
            raise Fault(reason, detail) from None
        except (HTTPError, OSError, http.client.HTTPException) as exc:
            reason, detail = translate(exc)
            raise Fault(reason, detail) from None

    def _addresses(self, host: str, port: int) -> list[tuple[str, int]]:
        """The addresses to connect to, after ``--resolve`` and ``--block-private``."""
        key = host.lower().rstrip(".")
        override = self._overrides.get(key)
        if override is not None:
            addr, new_port = override
            found = [(addr, new_port or port)]
        else:
            found = [(a, port) for a in self._lookup(key, port)]
        if self._cfg.block_private:
            found = [(a, p) for a, p in found if not is_blocked_address(a)]
            if not found:
                raise Fault(
                    Reason.BLOCKED_ADDRESS.value, f"{host} resolves only to private or reserved addresses"
                )
        return found

    def _lookup(self, host: str, port: int) -> list[str]:
        ip = literal_ip(host)
        if ip is not None:
            return [ip]
        now = time.monotonic()
        cached = self._dns.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in NO_SUCH_HOST:
                raise Fault(Reason.DNS_ERROR.value, f"cannot resolve host: {exc.strerror}") from None
            raise Fault(Reason.CONNECTION_ERROR.value, f"DNS lookup failed: {short_error(exc)}") from None
        except (UnicodeError, OSError) as exc:
            raise Fault(Reason.CONNECTION_ERROR.value, f"DNS lookup failed: {short_error(exc)}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if len(self._dns) >= _DNS_CACHE_MAX:
            self._dns.clear()
        self._dns[(host, port)] = (now + DNS_TTL, addresses)
        return addresses

    def _proxy_for(self, url: URL) -> urllib3.ProxyManager | None:
        """``--proxy``, else the ``<scheme>_proxy`` variable unless ``no_proxy`` covers the host."""
        proxy_url = self._chooser.for_url(url)
        if proxy_url is None:
            return None
        with self._lock:
            manager = self._proxies.get(proxy_url)
            if manager is None:
                kw = dict(self._pool_kw, maxsize=self._cfg.concurrency)
                parsed = urllib3.util.parse_url(proxy_url)
                if parsed.auth:
                    kw["proxy_headers"] = urllib3.make_headers(proxy_basic_auth=parsed.auth)
                try:
                    manager = urllib3.ProxyManager(proxy_url, num_pools=64, **kw)
                except (ValueError, HTTPError) as exc:
                    detail = f"bad proxy {proxy_url!r}: {short_error(exc)}"
                    raise Fault(Reason.PROXY_ERROR.value, detail) from None
                self._proxies[proxy_url] = manager
        return manager


def _discard(resp: BaseHTTPResponse) -> None:
    """Finish with a response whose body is not wanted, keeping the connection when cheap."""
    length = declared_length(resp.headers)
    if length is not None and length <= _DRAIN_LIMIT:
        try:
            resp.drain_conn()
        except (HTTPError, OSError, http.client.HTTPException):
            resp.close()
    else:
        resp.close()
    resp.release_conn()


def translate(exc: BaseException) -> tuple[str, str]:
    """urllib3's and the socket layer's exceptions -> (reason, detail); most specific first.

    The same reasons as :func:`imgfetch.fetch.aio.translate` gives for the same fault.
    """
    detail = short_error(exc)
    if isinstance(exc, ProxyError):
        return Reason.PROXY_ERROR.value, detail
    if isinstance(exc, SSLError):
        return Reason.TLS_ERROR.value, detail
    if isinstance(exc, NewConnectionError):  # a subclass of ConnectTimeoutError, for history's sake
        return Reason.CONNECTION_ERROR.value, detail
    if isinstance(exc, ConnectTimeoutError):
        return Reason.CONNECT_TIMEOUT.value, detail or "connect timed out"
    if isinstance(exc, ReadTimeoutError):
        return Reason.READ_TIMEOUT.value, detail or "no data received in time"
    if isinstance(exc, LocationValueError):
        return Reason.INVALID_URL.value, detail
    if isinstance(exc, ProtocolError):
        inner = exc.args[1] if len(exc.args) > 1 else None
        if isinstance(inner, http.client.HTTPException) and not isinstance(
            inner, (http.client.RemoteDisconnected, http.client.IncompleteRead)
        ):
            return Reason.BAD_RESPONSE.value, short_error(inner)
        return Reason.CONNECTION_ERROR.value, _cause(exc)
    if isinstance(exc, http.client.HTTPException):
        return Reason.BAD_RESPONSE.value, detail
    return Reason.CONNECTION_ERROR.value, detail


def _cause(exc: BaseException) -> str:
    """A ProtocolError's message without the repr of the exception it wraps."""
    if isinstance(exc, ProtocolError) and len(exc.args) > 1 and isinstance(exc.args[1], BaseException):
        return short_error(exc.args[1])
    return short_error(exc)
