"""``LeanServer``, the benchmark's image server, against real clients on real loopback sockets.

Clients: aiohttp (keep-alive pools), urllib3, curl when installed, and raw
sockets for what clients do not do on their own (pipelining, requests split
across sends, malformed or oversize heads, HTTP/1.0). No timing is asserted
except the lower bound of a fixed latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections import Counter
from typing import TYPE_CHECKING

import aiohttp
import pytest
import urllib3
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from imgfetch.bench.server import (
    MAX_HEAD,
    ImageServer,
    Latency,
    LeanServer,
    content_type,
    image_name_for,
    split_target,
    unquote_path,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

HOSTS = ("127.0.0.1", "127.0.0.2")


@pytest.fixture(scope="module")
def lean(images: dict[str, bytes]) -> Iterator[LeanServer]:
    """No catch-all, no latency; stats shared by the module's tests (not asserted on)."""
    with LeanServer(images, hosts=HOSTS) as srv:
        yield srv


@pytest.fixture(scope="module")
def names(images: dict[str, bytes]) -> list[str]:
    return sorted(images)


# ---- a minimal HTTP client on a raw socket ----------------------------------
@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((host, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Reader:
    """Reads responses off a socket one at a time (bodies by Content-Length)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 20)
        self.buf += chunk
        return bool(chunk)

    def response(self, head_only: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"connection closed mid-head: {self.buf!r}"
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        length = 0 if head_only else int(headers["content-length"])
        while len(self.buf) < length:
            assert self._fill(), "connection closed mid-body"
        body, self.buf = self.buf[:length], self.buf[length:]
        return Response(int(status), headers, body)

    def closed(self) -> bool:
        """True when the server closes the connection with nothing more sent."""
        return not self.buf and not self._fill()


#: Sent after the responses a test waits for: an answer proves the connection still open.
PROBE = b"GET /img/ HTTP/1.1\r\nHost: probe\r\n\r\n"


def exchange(port: int, *sends: bytes, n: int = 1, host: str = "127.0.0.1") -> tuple[list[Response], bool]:
    """Send ``sends`` (one ``send`` each, a pause between), read ``n`` responses; and was it closed then?"""
    with connect(port, host) as sock:
        for i, data in enumerate(sends):
            if i:
                time.sleep(0.01)
            sock.sendall(data)
        reader = Reader(sock)
        responses = [reader.response() for _ in range(n)]
        try:
            sock.sendall(PROBE)
            closed = reader.closed()
        except (ConnectionResetError, BrokenPipeError):
            closed = True
        if not closed:
            reader.response()
        return responses, closed


def get(path: str, *headers: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def fresh(images: dict[str, bytes], *, latency: Latency | None = None, catch_all: bool = False) -> LeanServer:
    """A server of one's own, for stats that only this test adds to."""
    return LeanServer(images, hosts=HOSTS, latency=latency, catch_all=catch_all)


# ---- real clients -------------------------------------------------------------
async def fetch_all(urls: Sequence[str | URL], *, limit: int, sequential: bool) -> tuple[list[bytes], int]:
    """GET every URL with one aiohttp session (keep-alive, at most ``limit`` connections per host).

    Returns the bodies, and how many connections the session opened.
    """
    created = 0

    async def on_created(*_: object) -> None:
        nonlocal created
        created += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_created)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=limit)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:

        async def one(url: str | URL) -> bytes:
            async with session.get(url) as resp:
                assert resp.status == 200, url
                assert resp.headers["Content-Type"] == content_type(await resp.read())
                return await resp.read()

        if sequential:
            bodies = [await one(url) for url in urls]
        else:
            bodies = list(await asyncio.gather(*(one(url) for url in urls)))
    return bodies, created


def test_aiohttp_keep_alive_reuses_connections(
    lean: LeanServer, images: dict[str, bytes], names: list[str]
) -> None:
    urls = [lean.url(f"img/{names[i % len(names)]}", i % 2) for i in range(60)]
    want = [images[names[i % len(names)]] for i in range(60)]
    bodies, created = asyncio.run(fetch_all(urls, limit=4, sequential=True))
    assert bodies == want
    assert created == 2, "one connection per host, reused for every request"
    bodies, created = asyncio.run(fetch_all(urls * 5, limit=4, sequential=False))
    assert bodies == want * 5
    assert created <= 8


def test_many_concurrent_requests_with_latency(images: dict[str, bytes], names: list[str]) -> None:
    with fresh(images, catch_all=True, latency=Latency(median=0.005, seed=3)) as srv:
        urls = [srv.url(f"any/{i}.jpg?size={i % 7}", i % 2) for i in range(400)]
        bodies, created = asyncio.run(fetch_all(urls, limit=32, sequential=False))
        assert bodies == [images[image_name_for(names, f"/any/{i}.jpg?size={i % 7}")] for i in range(400)]
        assert created <= 64
        assert srv.stats.total == 400
        assert sum(srv.stats.peak.values()) <= 64
        assert set(srv.stats.active.values()) == {0}


def test_urllib3_pool(lean: LeanServer, images: dict[str, bytes], names: list[str]) -> None:
    with urllib3.PoolManager(maxsize=2) as pm:
        for i in range(40):
            name = names[i % len(names)]
            resp = pm.request("GET", lean.url(f"img/{name}", i % 2), retries=False)
            assert resp.status == 200
            assert resp.data == images[name]
            assert resp.headers["Content-Length"] == str(len(images[name]))
        resp = pm.request("HEAD", lean.url(f"img/{names[0]}"), retries=False)
        assert (resp.status, resp.data) == (200, b"")
        assert resp.headers["Content-Length"] == str(len(images[names[0]]))
        assert pm.request("GET", lean.url("img/nope.jpg"), retries=False).status == 404
        for host in HOSTS:
            pool = pm.connection_from_url(lean.base(host))
            assert pool.num_connections == 1, "keep-alive: one connection per host"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl(lean: LeanServer, images: dict[str, bytes], names: list[str], tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    cmd = ["curl", "-sS", "--noproxy", "*", "--http1.1", "-w", "%{http_code} %{num_connects}\n"]
    cmd += ["-o", str(a), lean.url(f"img/{names[0]}"), "-o", str(b), lean.url(f"img/{names[1]}")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout
    assert out.split("\n") == ["200 1", "200 0", ""], "the second transfer reuses the connection"
    assert a.read_bytes() == images[names[0]]
    assert b.read_bytes() == images[names[1]]
    cmd = ["curl", "-sS", "--noproxy", "*", "-I", lean.url(f"img/{names[2]}", 1)]
    head = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout
    assert head.startswith("HTTP/1.1 200 OK\n")  # (text mode: CRLF read as LF)
    assert f"Content-Length: {len(images[names[2]])}\n" in head


# ---- the protocol on raw sockets -----------------------------------------------
def test_pipelined_requests_are_answered_in_order(lean: LeanServer, images: dict[str, bytes]) -> None:
    order = [*sorted(images), *sorted(images, reverse=True)]
    requests = b"".join(get(f"/img/{name}") for name in order)
    responses, closed = exchange(lean.port, requests, n=len(order))
    assert [r.body for r in responses] == [images[name] for name in order]
    assert not closed


def seed_with_later_first(median: float, n: int) -> int:
    """A latency seed whose first delay is the longest of ``n`` (so responses are ready out of order)."""
    for seed in range(10_000):
        latency = Latency(median=median, sigma=1.0, seed=seed)
        rng = latency.sampler()
        delays = [latency.draw(rng) for _ in range(n)]
        if delays[0] == max(delays) and delays[0] < 6 * median:
            return seed
    raise AssertionError("no such seed")


def test_pipelined_requests_with_latency_keep_their_order(images: dict[str, bytes], names: list[str]) -> None:
    seed = seed_with_later_first(0.02, len(names))
    with fresh(images, latency=Latency(median=0.02, sigma=1.0, seed=seed)) as srv:
        requests = b"".join(get(f"/img/{name}") for name in names)
        responses, closed = exchange(srv.port, requests, n=len(names))
        assert [r.body for r in responses] == [images[name] for name in names]
        assert not closed
        assert srv.stats.peak["127.0.0.1"] == len(names), "all of them were waiting at once"
        assert srv.stats.active["127.0.0.1"] == 0


def test_a_request_split_across_sends(lean: LeanServer, images: dict[str, bytes], names: list[str]) -> None:
    name = names[1].encode()
    parts = [b"GE", b"T /img/", name + b" HTT", b"P/1.1\r\nHost: 127.0.0.1\r", b"\n\r", b"\n"]
    responses, closed = exchange(lean.port, *parts)
    assert responses[0].status == 200 and responses[0].body == images[names[1]]
    assert not closed
    # A body (skipped) split across sends, the next request right behind it.
    first = get(f"/img/{names[2]}", "Content-Length: 10")
    rest = get(f"/img/{names[3]}")[7:]
    responses, _ = exchange(lean.port, first + b"01234", b"56789" + get(f"/img/{names[3]}")[:7], rest, n=2)
    assert [r.body for r in responses] == [images[names[2]], images[names[3]]]


def test_connection_close_and_http_1_0(lean: LeanServer, images: dict[str, bytes], names: list[str]) -> None:
    path = f"/img/{names[0]}"
    responses, closed = exchange(lean.port, get(path, "Connection: close"))
    assert responses[0].body == images[names[0]]
    assert responses[0].headers["connection"] == "close"
    assert closed
    responses, closed = exchange(lean.port, get(path, version="HTTP/1.0"))
    assert responses[0].body == images[names[0]]
    assert responses[0].headers["connection"] == "close"
    assert closed
    keep = get(path, "Connection: Keep-Alive", version="HTTP/1.0")
    responses, closed = exchange(lean.port, keep, keep, n=2)
    assert [r.body for r in responses] == [images[names[0]]] * 2
    assert responses[0].headers["connection"] == "keep-alive"
    assert not closed
    # Nothing after a "Connection: close" request is answered.
    responses, closed = exchange(lean.port, get(path, "Connection: close") + get(path))
    assert closed


def test_head(lean: LeanServer, images: dict[str, bytes], names: list[str]) -> None:
    with connect(lean.port) as sock:
        sock.sendall(get(f"/img/{names[0]}", method="HEAD") + get(f"/img/{names[1]}"))
        reader = Reader(sock)
        head = reader.response(head_only=True)
        assert head.status == 200
        assert head.headers["content-length"] == str(len(images[names[0]]))
        assert head.headers["content-type"] == content_type(images[names[0]])
        assert reader.response().body == images[names[1]], "no body after the HEAD response"


def test_not_found_and_method_not_allowed(
    lean: LeanServer, images: dict[str, bytes], names: list[str]
) -> None:
    sends = get("/img/nope.jpg") + get("/elsewhere?x=1")
    sends += b"POST /img/x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc" + get("/img/x", method="DELETE")
    sends += get(f"/img/{names[0]}")
    responses, closed = exchange(lean.port, sends, n=5)
    assert [r.status for r in responses] == [404, 404, 405, 405, 200]
    assert responses[2].headers["allow"] == "GET, HEAD"
    assert responses[4].body == images[names[0]]
    assert not closed
    with connect(lean.port) as sock:
        sock.sendall(get("/img/nope.jpg", method="HEAD") + get(f"/img/{names[1]}"))
        reader = Reader(sock)
        assert reader.response(head_only=True).status == 404
        assert reader.response().body == images[names[1]]


def test_oversize_head(lean: LeanServer, images: dict[str, bytes], names: list[str]) -> None:
    def padded(size: int) -> bytes:
        request = get(f"/img/{names[0]}", "X-Pad: ")
        return request[:-4] + b"a" * (size - len(request)) + b"\r\n\r\n"

    assert len(padded(MAX_HEAD)) == MAX_HEAD
    responses, closed = exchange(lean.port, padded(MAX_HEAD))
    assert responses[0].body == images[names[0]] and not closed, "a head of exactly the limit is fine"
    for data in (padded(MAX_HEAD + 1), padded(MAX_HEAD + 1)[:-4] + b"a" * 4):
        responses, closed = exchange(lean.port, data)
        assert responses[0].status == 431
        assert responses[0].headers["connection"] == "close"
        assert closed


@pytest.mark.parametrize(
    "request_",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /img/x HTTP/2.0\r\n\r\n",
        b"GET img/x HTTP/1.1\r\n\r\n",
        b"GET  /img/x HTTP/1.1\r\n\r\n",
        b"GET /img/x HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET /img/x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET /img/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "GET /caf\u00e9 HTTP/1.1\r\n\r\n".encode(),
        b"GET /a\x01b HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_requests(lean: LeanServer, request_: bytes) -> None:
    responses, closed = exchange(lean.port, request_)
    assert responses[0].status == 400
    assert responses[0].headers["connection"] == "close"
    assert closed


def test_half_closed_client_still_gets_its_answer(images: dict[str, bytes], names: list[str]) -> None:
    with fresh(images, latency=Latency(median=0.05, kind="fixed")) as srv, connect(srv.port) as sock:
        sock.sendall(get(f"/img/{names[0]}") + get(f"/img/{names[1]}"))
        sock.shutdown(socket.SHUT_WR)
        reader = Reader(sock)
        assert [reader.response().body, reader.response().body] == [images[names[0]], images[names[1]]]
        assert reader.closed()


# ---- catch-all: the same bytes as ImageServer ----------------------------------
ODD_TARGETS = [
    "/",
    "/a",
    "/a?",
    "/a#",
    "/a?#",
    "/a?b#c",
    "/a#b?c",
    "/a?b?c",
    "/x/y.jpg?q=1&r=%2B+y",
    "/caf%C3%A9?q=%E2%82",
    "/%e2%82%ac/%F0%9F%98%80?%FF=%fe",
    "/%ED%A0%80%C0%80",
    "/%zz%4",
    "/%2F%25%41",
    "//double//slash",
    "/a/../b/./c",
    "/a;p=1?q",
    "/img/",
    "/img/nope.jpg?x",
    "/~user/[brackets]{braces}|pipe^`\\\"quote'!$&()*+,=:@",
]


def test_catch_all_serves_what_image_server_serves(images: dict[str, bytes], names: list[str]) -> None:
    escaped = "/img/" + "".join(f"%{b:02X}" for b in names[0].encode())
    targets = [*ODD_TARGETS, escaped, f"/img/{names[1]}?x=1"]
    with fresh(images, catch_all=True) as lean, ImageServer(images, catch_all=True) as aio:
        for target in targets:
            got, want = (exchange(srv.port, get(target))[0][0] for srv in (lean, aio))
            assert (got.status, got.body) == (200, want.body), target
            assert got.headers["content-type"] == want.headers["content-type"]
        assert lean.stats.requests == aio.stats.requests, "the same path_qs keys as aiohttp's"
        assert exchange(lean.port, get(escaped))[0][0].body == images[names[0]]

        async def both(url: URL) -> tuple[bytes, bytes]:
            bodies, _ = await fetch_all(
                [url.with_port(lean.port), url.with_port(aio.port)], limit=2, sequential=True
            )
            return bodies[0], bodies[1]

        odd_urls = [
            URL("http://127.0.0.1/caf\u00e9/\u6f22\u5b57.jpg?q=\u00df&x=a b"),
            URL("http://127.0.0.1/a%20b/%e2%82%ac?q=%2B&r=+", encoded=True),
            URL("http://127.0.0.1/x?" + "&".join(f"k{i}=v{i}" for i in range(20))),
        ]
        for url in odd_urls:
            got_body, want_body = asyncio.run(both(url))
            assert got_body == want_body, url


def test_catch_all_and_image_server_share_one_choice(images: dict[str, bytes], names: list[str]) -> None:
    key = "/some/path?x=1"
    assert image_name_for(names, key) == names[zlib.crc32(key.encode()) % len(names)]
    with ImageServer(images) as aio:
        assert aio._image_for(key) == images[image_name_for(names, key)]


ESCAPE_PIECES = [
    "%", "%2", "%41", "%2F", "%2f", "%25", "%3F", "%23", "%C3", "%c3", "%A9", "%E2", "%82", "%AC", "%F0",
    "%9F", "%98", "%80", "%BF", "%ED", "%A0", "%C0", "%F4", "%90", "%FF", "%zz", "a", "/", "//", "?", "#",
    "+", "=", "&", ".", "..",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(ESCAPE_PIECES), max_size=12))
def test_target_decoding_matches_yarl(pieces: list[str]) -> None:
    """``split_target`` and ``unquote_path`` do what aiohttp's parser and yarl do with a target."""
    target = "/" + "".join(pieces)
    path, _, fragment = target.partition("#")
    path, _, query = path.partition("?")
    url = URL.build(path=path, query_string=query, fragment=fragment, encoded=True)
    raw_path, path_qs = split_target(target)
    assert raw_path == url.raw_path
    assert path_qs == str(url)
    assert unquote_path(raw_path) == url.path


# ---- stats and latency ----------------------------------------------------------
def test_stats_by_host_and_peak(images: dict[str, bytes], names: list[str]) -> None:
    with fresh(images, latency=Latency(median=0.2, kind="fixed")) as srv:
        urls = [srv.url(f"img/{names[0]}", 0)] * 6 + [srv.url(f"img/{names[1]}?v=2", 1)] * 3
        bodies, _ = asyncio.run(fetch_all(urls, limit=16, sequential=False))
        assert bodies == [images[names[0]]] * 6 + [images[names[1]]] * 3
        stats = srv.stats
        assert stats.by_host == Counter({"127.0.0.1": 6, "127.0.0.2": 3})
        assert stats.requests == Counter({f"/img/{names[0]}": 6, f"/img/{names[1]}?v=2": 3})
        assert stats.total == 9
        assert 2 <= stats.peak["127.0.0.1"] <= 6 and 1 <= stats.peak["127.0.0.2"] <= 3
        assert set(stats.active.values()) == {0}
        # Pipelined on one connection, all are parsed before any is answered: an exact peak.
        exchange(srv.port, get("/img/x", "Host: example.test:8080") * 8, n=8)
        assert stats.peak["example.test"] == 8
        assert stats.active["example.test"] == 0


def test_latency_is_applied(images: dict[str, bytes], names: list[str]) -> None:
    with fresh(images, latency=Latency(median=0.05, kind="fixed")) as srv:
        start = time.monotonic()
        responses, _ = exchange(srv.port, get(f"/img/{names[0]}"))
        assert time.monotonic() - start >= 0.05
        assert responses[0].body == images[names[0]]


def test_latency_draws_follow_the_seed(images: dict[str, bytes]) -> None:
    latency = Latency(median=0.001, seed=11)
    with fresh(images, latency=latency) as srv:
        rng = random.Random(11)
        assert srv._rng.random() == rng.random(), "one Random per server, seeded like ImageServer's"


def test_stop_with_waiting_responses_and_idle_connections(images: dict[str, bytes], names: list[str]) -> None:
    srv = fresh(images, latency=Latency(median=30, kind="fixed"))
    srv.start()
    with connect(srv.port) as waiting, connect(srv.port, HOSTS[1]) as idle:
        waiting.sendall(get(f"/img/{names[0]}"))
        deadline = time.monotonic() + 5
        while srv.stats.total < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        srv.stop()
        assert srv.stats.active["127.0.0.1"] == 0
        for sock in (waiting, idle):
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(10) == b""


def test_refuses_other_addresses_and_busy_ports(images: dict[str, bytes], lean: LeanServer) -> None:
    with pytest.raises(ValueError, match="loopback"):
        LeanServer(images, hosts=("0.0.0.0",))
    with pytest.raises(ValueError, match="at least one image"):
        LeanServer({})
    with pytest.raises(OSError):
        LeanServer(images, hosts=HOSTS, port=lean.port).start()


# ---- python -m imgfetch.bench.server ----------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", [None, "aiohttp"])
def test_the_server_command(
    kind: str | None, images: dict[str, bytes], names: list[str], tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, data in images.items():
        (folder / name).write_bytes(data)
    stats_file = tmp_path / "stats.json"
    cmd = [sys.executable, "-m", "imgfetch.bench.server", str(folder), "--hosts", "2", "--catch-all"]
    cmd += ["--latency", "0.01", "--stats-file", str(stats_file)]
    if kind is not None:
        cmd += ["--server", kind]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            with urllib3.PoolManager() as pm:
                for i in range(5):
                    url = f"http://{HOSTS[i % 2]}:{port}/img/{names[i]}"
                    assert pm.request("GET", url, retries=False).data == images[names[i]]
                url = f"http://{HOSTS[1]}:{port}/elsewhere?q=1"
                assert (
                    pm.request("GET", url, retries=False).data
                    == images[image_name_for(names, "/elsewhere?q=1")]
                )
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    stats = json.loads(stats_file.read_text())
    assert stats == {
        "requests": 6,
        "by_host": {HOSTS[0]: 3, HOSTS[1]: 3},
        "peak": {HOSTS[0]: 1, HOSTS[1]: 1},
    }
