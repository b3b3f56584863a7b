"""What every HTTP client of imgfetch shares: the attempt result, URL and address
rules, bounded body decoding and the opt-out header check.  No network I/O here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
import urllib.request
import zlib
from typing import TYPE_CHECKING

import brotli
from yarl import URL

from imgfetch.outcome import Reason

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from imgfetch.config import HttpConfig

ALLOWED_SCHEMES = frozenset({"http", "https"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ACCEPT = "image/avif,image/webp,image/apng,image/*;q=0.9,*/*;q=0.5"
ACCEPT_ENCODING = "gzip, deflate, br"
#: X-Robots-Tag directives that opt a resource out of being collected by us.
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
#: Directives that carry a value after a colon, so "name: value" is not a user-agent scope.
_VALUED_DIRECTIVES = frozenset({"max-snippet", "max-image-preview", "max-video-preview", "unavailable_after"})
UA_TOKEN = "imgfetch"
#: NAT64 well-known prefix (RFC 6052): the last 32 bits are an IPv4 address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: Deprecated IPv4-compatible addresses (RFC 4291 2.5.5.1), ``::a.b.c.d``.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
#: A user-agent token as it appears in ``token: directives`` (no spaces, so a date's time is not one).
_UA_SCOPE = re.compile(r"[a-z0-9_.-]+")
CHUNK = 64 * 1024
#: getaddrinfo errors that mean "this name does not exist", as opposed to a resolver hiccup.
NO_SUCH_HOST = frozenset(getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, n))


@dataclasses.dataclass(frozen=True, slots=True)
class Fetched:
    """The result of one attempt (one request chain, redirects included)."""

    reason: str | None  # None: success, ``body`` holds the decoded bytes
    body: bytes | None = None
    status: int | None = None
    detail: str | None = None
    retry_after: float | None = None
    final_url: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


class Fault(Exception):
    """Raised inside a client to end an attempt with a reason; never leaves the fetch package."""

    def __init__(self, reason: str, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status


def parse_url(raw: str) -> URL:
    """Parse and validate a row's URL; raises Fault(invalid-url / unsupported-scheme)."""
    text = raw.strip()
    if not text:
        raise Fault(Reason.INVALID_URL.value, "empty URL")
    try:
        url = URL(text)
    except (ValueError, TypeError) as exc:
        raise Fault(Reason.INVALID_URL.value, f"cannot parse URL: {exc}") from None
    check_scheme(url)
    try:
        host = url.host
    except (ValueError, UnicodeError) as exc:
        raise Fault(Reason.INVALID_URL.value, f"bad host: {exc}") from None
    if not host:
        raise Fault(Reason.INVALID_URL.value, "URL has no host")
    return url


def check_scheme(url: URL) -> None:
    scheme = (url.scheme or "").lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = scheme or "(none)"
        if not scheme:
            raise Fault(Reason.INVALID_URL.value, "URL has no scheme (expected http:// or https://)")
        raise Fault(Reason.UNSUPPORTED_SCHEME.value, f"scheme {shown!r} is not fetched")


def next_hop(current: URL, location: str | None, hops: int, cfg: HttpConfig) -> URL:
    """The URL a redirect points to, after checking the hop count and scheme."""
    if not location:
        raise Fault(Reason.BAD_REDIRECT.value, "redirect without a Location header")
    if hops >= cfg.max_redirects:
        raise Fault(Reason.TOO_MANY_REDIRECTS.value, f"more than {cfg.max_redirects} redirects")
    try:
        target = current.join(URL(location.strip()))
    except (ValueError, TypeError) as exc:
        raise Fault(Reason.BAD_REDIRECT.value, f"bad Location: {exc}") from None
    if (target.scheme or "").lower() not in ALLOWED_SCHEMES:
        raise Fault(Reason.UNSUPPORTED_SCHEME.value, f"redirect to scheme {target.scheme!r} refused")
    if not target.host:
        raise Fault(Reason.BAD_REDIRECT.value, "redirect to a URL without a host")
    return target


def is_blocked_address(address: str) -> bool:
    """True for anything but a public unicast address (loopback, private, link-local,
    cloud metadata, CGNAT, multicast, reserved).  An IPv6 address that carries an
    IPv4 one (mapped, 6to4, NAT64, IPv4-compatible) is judged by the IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and (ip in _NAT64 or ip in _IPV4_COMPATIBLE):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
    return not ip.is_global or ip.is_multicast or ip.is_reserved


def literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def opted_out(values: Iterable[str]) -> str | None:
    """The X-Robots-Tag directive that opts out of imgfetch, or None.

    Directives count when unscoped or scoped to our token (``imgfetch: noai``);
    a scope (``otherbot: noindex``) lasts until the next scope in the same value.
    """
    for value in values:
        scope: str | None = None
        for raw in value.split(","):
            part = raw.strip().lower()
            if not part:
                continue
            if ":" in part:
                name, _, rest = part.partition(":")
                name = name.strip()
                if name in _VALUED_DIRECTIVES or not _UA_SCOPE.fullmatch(name):
                    # A valued directive, or the rest of one cut at a comma ("Friday, 25-Jun-10 15:00:00").
                    continue
                scope = name
                part = rest.strip()
            if part in OPT_OUT_DIRECTIVES and scope in (None, UA_TOKEN):
                return part
    return None


def request_headers(cfg: HttpConfig) -> dict[str, str]:
    headers = {"User-Agent": cfg.user_agent, "Accept": ACCEPT, "Accept-Encoding": ACCEPT_ENCODING}
    for name, value in cfg.headers:
        headers[name] = value
    return headers


def declared_length(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("Content-Length")
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return None


class BodyDecoder:
    """Accumulates a response body, decoding Content-Encoding, never past ``max_bytes``.

    Decompression output is bounded at every step, so a gzip bomb is refused
    after at most ``max_bytes`` of output instead of being inflated.
    """

    def __init__(self, encoding: str | None, max_bytes: int) -> None:
        enc = (encoding or "identity").strip().lower()
        self._max = max_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._zlib: zlib._Decompress | None = None
        self._brotli: brotli.Decompressor | None = None
        if enc in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            self._zlib = zlib.decompressobj(wbits=zlib.MAX_WBITS)
            self._deflate_probe = True
        elif enc == "br":
            self._brotli = brotli.Decompressor()
        elif enc not in ("identity", ""):
            raise Fault(Reason.BAD_RESPONSE.value, f"unsupported Content-Encoding {enc!r}")
        self.encoded = self._zlib is not None or self._brotli is not None

    @property
    def size(self) -> int:
        return self._size

    def _add(self, data: bytes) -> None:
        if not data:
            return
        self._size += len(data)
        if self._size > self._max:
            raise Fault(Reason.TOO_LARGE.value, f"body larger than {self._max} bytes")
        self._parts.append(data)

    def feed(self, chunk: bytes) -> None:
        if self._zlib is not None:
            self._feed_zlib(chunk)
        elif self._brotli is not None:
            self._feed_brotli(chunk)
        else:
            self._add(chunk)

    def _feed_zlib(self, chunk: bytes) -> None:
        assert self._zlib is not None
        data = chunk
        try:
            while data:
                out = self._zlib.decompress(data, self._max - self._size + 1)
                self._add(out)
                data = self._zlib.unconsumed_tail
        except zlib.error as exc:
            if getattr(self, "_deflate_probe", False) and self._size == 0:
                # Some servers send raw deflate without the zlib header.
                self._deflate_probe = False
                self._zlib = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
                self._feed_zlib(chunk)
                return
            raise Fault(Reason.BAD_RESPONSE.value, f"corrupt compressed body: {exc}") from None
        self._deflate_probe = False

    def _feed_brotli(self, chunk: bytes) -> None:
        assert self._brotli is not None
        limit = self._max - self._size + 1
        try:
            out = self._brotli.process(chunk, output_buffer_limit=limit)
            self._add(out)
            while not self._brotli.can_accept_more_data():
                out = self._brotli.process(b"", output_buffer_limit=self._max - self._size + 1)
                if not out:
                    break
                self._add(out)
        except brotli.error as exc:
            raise Fault(Reason.BAD_RESPONSE.value, f"corrupt compressed body: {exc}") from None

    def finish(self) -> bytes:
        if self._zlib is not None and not self._zlib.eof and self._size == 0:
            raise Fault(Reason.TRUNCATED.value, "compressed body ended early")
        return b"".join(self._parts)


class ProxyChooser:
    """``--proxy`` for every request, else the ``<scheme>_proxy`` variable unless
    ``no_proxy`` covers the host (decided once per host, cached, bounded)."""

    _CACHE_MAX = 10_000

    def __init__(self, cfg: HttpConfig) -> None:
        self._fixed = cfg.proxy
        env = urllib.request.getproxies_environment() if cfg.trust_env and cfg.proxy is None else {}
        self._env = env
        self._bypass: dict[str, bool] = {}

    def urls(self) -> list[str]:
        """Every proxy a request may go through (for exempting them from --block-private)."""
        if self._fixed is not None:
            return [self._fixed]
        return [url for scheme, url in self._env.items() if scheme != "no" and url]

    def for_url(self, url: URL) -> str | None:
        if self._fixed is not None or not self._env:
            return self._fixed
        proxy = self._env.get((url.scheme or "http").lower())
        if not proxy:
            return None
        host = url.host or ""
        bypass = self._bypass.get(host)
        if bypass is None:
            # typeshed lacks proxy_bypass_environment, which urllib.request has had since 3.0.
            bypass = bool(urllib.request.proxy_bypass_environment(host, self._env))  # type: ignore[attr-defined]
            if len(self._bypass) >= self._CACHE_MAX:
                self._bypass.clear()
            self._bypass[host] = bypass
        return None if bypass else proxy


def short_error(exc: BaseException) -> str:
    """An exception as a manifest ``detail``: its message, at most 300 characters."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
