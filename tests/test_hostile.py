"""The hostile internet (issue 5): politeness and security, proven against local fault servers.

Every case runs the real pipeline (``imgfetch.download``) against real servers
on 127.0.0.x: the :class:`~imgfetch.bench.server.ImageServer` for the faults it can
script, a small :class:`FaultServer` below for the rest (time-dependent
answers, several headers of one name, compression bombs, request timestamps)
and a real forward proxy (``fwdproxy.py``).  For each case the test checks the
recorded outcome and reason, that the run finishes within a generous bound,
that no host ever saw more concurrent requests than ``per_host``, and that no
file is written for a failure or anywhere outside the output folder.

Timing is only ever asserted as a safety bound or as a behavioural lower bound
with slack (a Retry-After of 3 s must delay the retry by more than 2.4 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import email.utils
import functools
import gzip
import itertools
import random
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import tracemalloc
import urllib.request
import zlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import brotli
import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import imagegen as gen
import imgfetch
from fwdproxy import ForwardProxy
from imgfetch import api, sources
from imgfetch.bench.server import ImageServer
from imgfetch.cli import main as cli_main
from imgfetch.config import DEFAULT_USER_AGENT, PROJECT_URL, HttpConfig
from imgfetch.fetch.common import is_blocked_address
from imgfetch.fetch.hosts import HostGate, HostTable
from imgfetch.naming import is_safe_name
from imgfetch.records.manifest import read_manifest
from imgfetch.sinks.files import TEMP_SUFFIX

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from imgfetch.outcome import Outcome, Summary

IMAGES = {"a.jpg": gen.jpeg(64, 48), "b.png": gen.png(40, 30, seed=1), "c.gif": gen.gif(24, 24)}
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
#: Plays a public host under --block-private (see ``pretend_public``).
PUBLIC = "127.0.0.2"
#: Short deadlines and backoff so that a case costs a second, not a minute.
FAST: dict[str, Any] = {
    "retries": 1,
    "backoff_base": 0.05,
    "backoff_max": 0.2,
    "connect_timeout": 2.0,
    "read_timeout": 2.0,
    "timeout": 5.0,
    "concurrency": 32,
}
#: Files a run keeps next to the images, and its state folder (resume ledger, lock).
BOOKKEEPING = frozenset({"manifest.jsonl", "summary.json"})
STATE_DIR = ".imgfetch/"


# ---- running the pipeline ------------------------------------------------------------


@dataclasses.dataclass
class Result:
    summary: Summary
    records: list[dict[str, Any]]
    order: list[int]  # row numbers in the order their outcomes were recorded
    elapsed: float
    out: Path

    def row(self, index: int) -> dict[str, Any]:
        return next(r for r in self.records if r["row"] == index)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return sorted(self.records, key=lambda r: r["row"])


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    """Every file below ``root`` with its size and mtime, to spot new and changed files."""
    out = {}
    for path in _files(root):
        st = path.lstat()
        out[path] = (st.st_size, st.st_mtime_ns)
    return out


def fetch(
    work: Path, lines: Sequence[str], *, bound: float = 30.0, out: str = "out", **options: Any
) -> Result:
    """Download ``lines`` into ``work/out`` with FAST defaults; check the disk afterwards."""
    src = work / f"{out}.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    target = work / out
    before = _snapshot(work)
    order: list[int] = []
    started = time.monotonic()
    summary = imgfetch.download(src, target, on_outcome=lambda o: order.append(o.row), **{**FAST, **options})
    elapsed = time.monotonic() - started
    assert elapsed < bound, f"run took {elapsed:.1f} s (bound {bound} s)"
    records = list(read_manifest(target / "manifest.jsonl"))
    assert sorted(r["row"] for r in records) == list(range(len(lines))), "one record per row"
    assert sorted(order) == list(range(len(lines)))
    check_disk(work, target, records, before)
    return Result(summary, records, order, elapsed, target)


def check_disk(
    work: Path, out: Path, records: Sequence[Mapping[str, Any]], before: Mapping[Path, tuple[int, int]]
) -> None:
    """Only ok rows left an image, each inside ``out``; nothing changed anywhere else below ``work``."""
    root = out.resolve()
    after = _snapshot(work)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    stray = {p for p in changed if not p.resolve().is_relative_to(root)}
    assert not stray, f"written outside the output folder: {stray}"
    expected = set()
    for rec in records:
        if rec["status"] == "ok":
            path = (out / rec["path"]).resolve()
            assert path.is_relative_to(root), rec["path"]
            assert path.is_file() and not (out / rec["path"]).is_symlink(), rec["path"]
            assert all(is_safe_name(part) for part in rec["path"].split("/")), rec["path"]
            expected.add(path)
        else:
            assert rec["path"] is None, rec
    for path in _files(out):
        assert not path.name.endswith(TEMP_SUFFIX), f"temporary file left behind: {path}"
        rel = path.relative_to(out).as_posix()
        if path.resolve() in expected or rel in BOOKKEEPING or rel.startswith(STATE_DIR):
            continue
        raise AssertionError(f"file written for no ok row: {path}")


def assert_polite(peak: Mapping[str, int], per_host: int) -> None:
    assert peak, "the server saw no request"
    assert max(peak.values()) <= per_host, f"per-host limit {per_host} exceeded: {dict(peak)}"


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A run that wrote relative to the working directory would then write into tmp_path,
    # where check_disk sees it.
    monkeypatch.chdir(tmp_path)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def srv() -> Iterator[ImageServer]:
    with ImageServer(IMAGES, hosts=HOSTS, record_headers=True) as server:
        yield server


@pytest.fixture
def pretend_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let 127.0.0.2 count as a public address, so loopback can play the internet.

    Under --block-private every test host would otherwise be refused at the
    first hop.  Only this one address is reclassified; every other address is
    still judged by the real rule, on both the literal-address and the DNS path.
    """
    monkeypatch.setattr(
        "imgfetch.fetch.aio.is_blocked_address",
        lambda address: address != PUBLIC and is_blocked_address(address),
    )


# ---- a scripted server for what the ImageServer cannot express ---------------------------


@dataclasses.dataclass
class Hit:
    host: str
    path: str
    start: float  # time.monotonic() on arrival (the same clock as the client's event loop)
    concurrent: int  # requests in progress on this host, this one included
    status: int = 0


@functools.cache
def bomb(encoding: str, size: int = 64 << 20) -> bytes:
    """``size`` zero bytes compressed with ``encoding``: a few dozen KiB that inflate to 64 MiB."""
    zeros = bytes(size)
    if encoding == "gzip":
        return gzip.compress(zeros, compresslevel=6)
    if encoding == "deflate":
        return zlib.compress(zeros, 6)
    if encoding == "br":
        return bytes(brotli.compress(zeros, quality=1))
    raise ValueError(encoding)


class FaultServer:
    """Time-dependent and multi-header faults, with a log of every request.

    ============================== ================================================
    ``/img/NAME``                  image NAME
    ``/recover?after=T``           503 until T s after the first /recover request, then an image
    ``/once/KEY?retry_after=V``    503 with ``Retry-After: V`` on KEY's first hit, then an image
    ``/once/KEY?date_in=S``        the same with an HTTP date S seconds ahead
    ``/robots?v=A&v=B``            an image with one ``X-Robots-Tag`` header per ``v``
    ``/robots-hang?v=A``           headers with ``X-Robots-Tag: A``, then a body that never comes
    ``/bomb/ENC``                  64 MiB of zeros with ``Content-Encoding: ENC``
    ``...?sleep=S``                (any route) answer after S seconds
    ============================== ================================================
    """

    def __init__(self, hosts: Sequence[str] = HOSTS[:2], ssl_context: ssl.SSLContext | None = None) -> None:
        self.hosts = list(hosts)
        self.port = 0
        self.hits: list[Hit] = []
        self.peak: Counter[str] = Counter()
        self._active: Counter[str] = Counter()
        self._first: dict[str, float] = {}
        self._seen: Counter[str] = Counter()
        self._ssl = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def url(self, path: str, host: int = 0) -> str:
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://{self.hosts[host]}:{self.port}/{path.lstrip('/')}"

    def by_host(self, host: int) -> list[Hit]:
        return sorted((h for h in self.hits if h.host == self.hosts[host]), key=lambda h: h.start)

    def __enter__(self) -> FaultServer:
        self._thread = threading.Thread(target=self._run, name="fault-server", daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "fault server did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        loop, runner = self._loop, self._runner
        if loop is not None and runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/img/{name}", self._img)
        app.router.add_get("/recover", self._recover)
        app.router.add_get("/once/{key}", self._once)
        app.router.add_get("/robots", self._robots)
        app.router.add_get("/robots-hang", self._robots_hang)
        app.router.add_get("/bomb/{enc}", self._bomb)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await runner.setup()
        self._runner = runner
        for attempt in range(20):
            # The port picked on the first host may be taken on another: start over with a new one.
            sites: list[web.TCPSite] = []
            self.port = 0
            try:
                for host in self.hosts:
                    site = web.TCPSite(runner, host, self.port, ssl_context=self._ssl, reuse_address=True)
                    await site.start()
                    sites.append(site)
                    if not self.port:
                        server = site._server
                        assert server is not None
                        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
                return
            except OSError:
                for site in sites:
                    await site.stop()
                if attempt == 19:
                    raise

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        host = (request.host or "?").rsplit(":", 1)[0]
        self._active[host] += 1
        self.peak[host] = max(self.peak[host], self._active[host])
        hit = Hit(host, request.path_qs, time.monotonic(), self._active[host])
        try:
            if "sleep" in request.query:
                await asyncio.sleep(float(request.query["sleep"]))
            resp: web.StreamResponse = await handler(request)
            hit.status = resp.status
            return resp
        except web.HTTPException as exc:
            hit.status = exc.status
            raise
        finally:
            self._active[host] -= 1
            self.hits.append(hit)

    @staticmethod
    def _image(name: str = "a.jpg", **headers: str) -> web.Response:
        return web.Response(body=IMAGES[name], headers={"Content-Type": "image/jpeg", **headers})

    async def _img(self, request: web.Request) -> web.Response:
        return self._image(request.match_info["name"])

    async def _recover(self, request: web.Request) -> web.Response:
        first = self._first.setdefault("recover", time.monotonic())
        if time.monotonic() - first < float(request.query["after"]):
            return web.Response(status=503)
        return self._image()

    async def _once(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        self._seen[key] += 1
        if self._seen[key] > 1:
            return self._image()
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        if "date_in" in request.query:
            when = time.time() + float(request.query["date_in"])
            headers["Retry-After"] = email.utils.formatdate(when, usegmt=True)
        return web.Response(status=503, headers=headers)

    async def _robots(self, request: web.Request) -> web.Response:
        resp = self._image()
        for value in request.query.getall("v", []):
            resp.headers.add("X-Robots-Tag", value)
        return resp

    async def _robots_hang(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "X-Robots-Tag": request.query["v"]})
        resp.content_length = len(IMAGES["a.jpg"])
        await resp.prepare(request)
        await asyncio.sleep(3600)
        return resp

    async def _bomb(self, request: web.Request) -> web.Response:
        enc = request.match_info["enc"]
        return web.Response(body=bomb(enc), headers={"Content-Type": "image/png", "Content-Encoding": enc})


@pytest.fixture
def faults() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


# ---- per-host limits ---------------------------------------------------------------------


@pytest.mark.parametrize("per_host", [1, 3])
def test_per_host_limit_holds_on_every_host(tmp_path: Path, faults: FaultServer, per_host: int) -> None:
    lines = [faults.url(f"img/a.jpg?sleep=0.03&i={i}", host) for i in range(12) for host in (0, 1)]
    res = fetch(tmp_path, lines, per_host=per_host, concurrency=64)
    assert res.summary.ok == len(lines)
    assert_polite(faults.peak, per_host)
    # Both hosts ran side by side: the second host's first request did not wait for the first host.
    first, second = faults.by_host(0), faults.by_host(1)
    assert second[0].start < first[-1].start


def test_per_host_rate_spaces_requests_to_a_host(tmp_path: Path, faults: FaultServer) -> None:
    rate = 2.0  # one request per 0.5 s per host
    lines = [faults.url(f"img/a.jpg?i={i}", host) for i in range(3) for host in (0, 1)]
    res = fetch(tmp_path, lines, per_host_rate=rate, bound=20)
    assert res.summary.ok == len(lines)
    for host in (0, 1):
        starts = [h.start for h in faults.by_host(host)]
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert min(gaps) >= 0.8 / rate, gaps
    # Spacing one host never holds back the other.
    assert faults.by_host(1)[0].start < faults.by_host(0)[-1].start


def test_delay_spaces_requests_to_a_host(tmp_path: Path, faults: FaultServer) -> None:
    lo, hi = 0.4, 0.5
    lines = [faults.url(f"img/a.jpg?i={i}", host) for i in range(3) for host in (0, 1)]
    res = fetch(tmp_path, lines, delay=(lo, hi), per_host=4, bound=20)
    assert res.summary.ok == len(lines)
    for host in (0, 1):
        starts = [h.start for h in faults.by_host(host)]
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert min(gaps) >= 0.8 * lo, gaps
    assert faults.by_host(1)[0].start < faults.by_host(0)[-1].start


def test_spacing_holds_when_the_global_limit_is_saturated(tmp_path: Path, faults: FaultServer) -> None:
    # One global slot, taken by a slow host: host 1's requests queue for it at their spaced
    # start times and must not then go out back to back when the slot frees up.
    rate = 2.0
    lines = [faults.url("img/b.png?sleep=1.5", 0)] + [faults.url(f"img/a.jpg?i={i}", 1) for i in range(3)]
    res = fetch(tmp_path, lines, per_host_rate=rate, concurrency=1, bound=20)
    assert res.summary.ok == len(lines)
    starts = [h.start for h in faults.by_host(1)]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.8 / rate, gaps


# ---- 429 / 503 and adaptive back-off ---------------------------------------------------------


def test_429_with_retry_after_holds_back_only_that_host(tmp_path: Path, srv: ImageServer) -> None:
    retry_after = 3
    limited = [srv.url(f"_/flaky/ra{i}/1/429?retry_after={retry_after}", 0) for i in range(4)]
    healthy = [srv.url(f"img/b.png?i={i}", 1) for i in range(16)]
    res = fetch(tmp_path, limited + healthy, per_host=4, bound=25)
    limited_rows, healthy_rows = res.rows[: len(limited)], res.rows[len(limited) :]
    for rec in limited_rows:
        assert (rec["status"], rec["attempts"], rec["http_status"]) == ("ok", 2, 200), rec
        assert rec["elapsed"] >= 0.8 * retry_after, "Retry-After was not honoured"
    for rec in healthy_rows:
        assert (rec["status"], rec["attempts"]) == ("ok", 1), rec
        assert rec["elapsed"] < retry_after / 2, "a healthy host waited for a rate-limited one"
    # Every healthy row was recorded before the first rate-limited row came back.
    first_limited = min(res.order.index(r["row"]) for r in limited_rows)
    assert all(res.order.index(r["row"]) < first_limited for r in healthy_rows)
    assert_polite(srv.stats.peak, 4)


def test_429_without_retry_after_still_pauses_the_host(tmp_path: Path, srv: ImageServer) -> None:
    once = [srv.url(f"_/flaky/nr{i}/1/429", 0) for i in range(3)]
    always = [srv.url("_/status/429", 1)]
    res = fetch(tmp_path, once + always, per_host=2, bound=20)
    for rec in res.rows[:3]:
        assert (rec["status"], rec["attempts"]) == ("ok", 2), rec
        # No Retry-After: the host still pauses (about a second) rather than being hammered.
        assert rec["elapsed"] >= 0.5, rec
    last = res.rows[3]
    assert (last["status"], last["reason"], last["http_status"], last["attempts"]) == (
        "failed",
        "http-429",
        429,
        2,
    )
    assert res.summary.failed_reasons == {"http-429": 1}
    assert_polite(srv.stats.peak, 2)


def test_retry_after_is_capped_by_max_retry_after(tmp_path: Path, srv: ImageServer) -> None:
    storm = [srv.url(f"_/flaky/storm{i}/99/429?retry_after=86400", 0) for i in range(4)]
    healthy = [srv.url(f"img/a.jpg?i={i}", 1) for i in range(4)]
    res = fetch(tmp_path, storm + healthy, retries=2, max_retry_after=0.3, per_host=4, bound=15)
    for rec in res.rows[:4]:
        assert (rec["status"], rec["reason"], rec["attempts"]) == ("failed", "http-429", 3), rec
    assert all(rec["status"] == "ok" for rec in res.rows[4:])
    assert_polite(srv.stats.peak, 4)


def test_503_for_a_while_backs_off_then_recovers(tmp_path: Path, faults: FaultServer) -> None:
    per_host = 4
    lines = [faults.url(f"recover?after=1.5&sleep=0.05&i={i}") for i in range(20)]
    res = fetch(tmp_path, lines, per_host=per_host, retries=8, bound=30)
    assert res.summary.ok == len(lines), res.summary.failed_reasons
    assert_polite(faults.peak, per_host)
    answered = sorted(faults.hits, key=lambda h: h.start)
    unavailable = [h for h in answered if h.status == 503]
    # Back-off, not hammering: without it, 20 rows retrying every ~0.1 s would meet ~100 503s.
    assert 1 <= len(unavailable) <= 2 * per_host, len(unavailable)
    # ... and recovery: once the host answers again, it gets more than one request at a time.
    assert max(h.concurrent for h in answered if h.status == 200) >= 2


def test_retry_after_as_an_http_date_and_malformed(tmp_path: Path, faults: FaultServer) -> None:
    lines = [
        faults.url("once/date?date_in=2"),
        faults.url("once/past?date_in=-3600", 1),
        faults.url(f"once/odd?retry_after={quote('²')}", 1),
        faults.url("once/junk?retry_after=soon", 1),
    ]
    res = fetch(tmp_path, lines, bound=20)
    for rec in res.rows:
        assert (rec["status"], rec["attempts"]) == ("ok", 2), rec
    # The date is whole seconds, so "2 s ahead" means somewhere between 1 and 2 s.
    assert res.row(0)["elapsed"] >= 0.8


# ---- a rate-limited host must not fill the pipeline's window ---------------------------------


def test_rate_limited_host_does_not_hold_back_later_rows(tmp_path: Path, srv: ImageServer) -> None:
    limited = [srv.url(f"_/flaky/w{i}/9/429?retry_after=5", 0) for i in range(300)]
    healthy = [srv.url(f"img/a.jpg?i={i}", 1) for i in range(4)]
    src = tmp_path / "list.txt"
    src.write_text("\n".join(limited + healthy) + "\n")
    cfg = api.config(src, tmp_path / "out", retries=1, max_retry_after=5.0, concurrency=16)
    run = api.prepare(cfg)
    done: set[int] = set()
    wanted = set(range(len(limited), len(limited) + len(healthy)))

    def on_outcome(outcome: Outcome) -> None:
        done.add(outcome.row)
        if wanted <= done:
            run.stop(grace=0)

    run.on_outcome = on_outcome

    async def go() -> None:
        asyncio.get_running_loop().call_later(3.0, run.stop, 0)
        await run.execute()

    asyncio.run(go())
    assert wanted <= done, f"healthy rows still waiting after 3 s: {sorted(wanted - done)}"


# ---- deadlines and broken bodies ---------------------------------------------------------------


def test_hang_ends_as_read_timeout(tmp_path: Path, srv: ImageServer) -> None:
    lines = [srv.url("_/hang", 0), srv.url("img/a.jpg", 1), srv.url("img/c.gif", 1)]
    res = fetch(tmp_path, lines, read_timeout=0.5, timeout=3.0, bound=15)
    hang = res.row(0)
    assert (hang["status"], hang["reason"], hang["attempts"]) == ("failed", "read-timeout", 2), hang
    assert res.row(1)["status"] == res.row(2)["status"] == "ok"
    # The healthy rows did not wait for the hanging one.
    assert res.order[-1] == 0
    assert_polite(srv.stats.peak, 8)


def test_slow_drip_is_cut_by_the_total_timeout(tmp_path: Path, srv: ImageServer) -> None:
    # One byte every 50 ms never trips the read timeout; only the whole-download deadline ends it.
    lines = [srv.url("_/drip?bps=20", 0), srv.url("img/a.jpg", 1)]
    res = fetch(tmp_path, lines, read_timeout=2.0, timeout=1.0, retries=0, bound=10)
    drip = res.row(0)
    assert (drip["status"], drip["reason"], drip["attempts"]) == ("failed", "timeout", 1), drip
    assert res.row(1)["status"] == "ok"


def test_truncated_body_is_retried_then_recorded(tmp_path: Path, srv: ImageServer) -> None:
    res = fetch(tmp_path, [srv.url("_/truncated"), srv.url("img/b.png", 1)], bound=15)
    cut = res.row(0)
    assert (cut["status"], cut["reason"], cut["attempts"]) == ("failed", "truncated", 2), cut
    assert res.row(1)["status"] == "ok"


def test_compression_bombs_are_refused_not_inflated(
    tmp_path: Path, srv: ImageServer, faults: FaultServer
) -> None:
    for enc in ("gzip", "deflate", "br"):
        bomb(enc)  # built before measuring: the servers' own 64 MiB must not count
    with urllib.request.urlopen(srv.url("_/gzip-bomb"), timeout=10) as warm:  # builds the server's bomb
        warm.read()
    lines = [srv.url("_/gzip-bomb"), faults.url("bomb/deflate"), faults.url("bomb/br", 1)]
    tracemalloc.start()
    try:
        res = fetch(tmp_path, lines, max_bytes=1 << 20, bound=20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for rec in res.rows:
        assert (rec["status"], rec["reason"]) == ("failed", "too-large"), rec
    # Each bomb inflates to 64 MiB; a bounded decoder never holds more than a few MiB.
    assert peak < 24 << 20, f"peak traced memory {peak / 2**20:.0f} MiB"


# ---- redirects and --block-private -------------------------------------------------------------


def _redirect(srv: ImageServer, location: str) -> str:
    return srv.url(f"_/redirect-to?location={quote(location, safe='')}", PUBLIC)


@pytest.mark.usefixtures("pretend_public")
def test_block_private_refuses_private_targets_on_every_hop(tmp_path: Path, srv: ImageServer) -> None:
    port = srv.port
    resolve = (("intranet.test", "127.0.0.1", port), ("public.test", PUBLIC, port))
    blocked: set[str | None] = {"blocked-address"}
    cases: list[tuple[str, set[str | None]]] = [
        (_redirect(srv, f"http://127.0.0.1:{port}/img/a.jpg"), blocked),
        # Port 9: if the check ever failed, this would still never reach a real metadata service.
        (_redirect(srv, "http://169.254.169.254:9/latest/meta-data/"), blocked),
        (_redirect(srv, f"http://[::ffff:127.0.0.1]:{port}/img/a.jpg"), blocked),
        (_redirect(srv, f"http://[::1]:{port}/img/a.jpg"), blocked),
        (_redirect(srv, f"http://0x7f.0.0.1:{port}/img/a.jpg"), blocked),  # the resolver sees 127.0.0.1
        # Non-canonical IPv4 (127.1, 2130706433): refused before any connection, by either check.
        (_redirect(srv, f"http://127.1:{port}/img/a.jpg"), {"blocked-address", "invalid-url"}),
        (_redirect(srv, f"http://2130706433:{port}/img/a.jpg"), {"blocked-address", "invalid-url"}),
        (_redirect(srv, "http://intranet.test/img/a.jpg"), blocked),  # a name resolving to loopback
        ("http://intranet.test/img/a.jpg", blocked),
        (f"http://127.0.0.1:{port}/img/a.jpg", blocked),
        (f"http://0.0.0.0:{port}/img/a.jpg", blocked),
        ("http://public.test/img/a.jpg", {None}),  # a name that resolves to a public address is fine
        (_redirect(srv, "http://public.test/img/b.png"), {None}),
        (_redirect(srv, "file:///etc/passwd"), {"unsupported-scheme"}),
        (_redirect(srv, "ftp://example.com/a.jpg"), {"unsupported-scheme"}),
        (srv.url("_/redirect/3/a.jpg", PUBLIC), {"too-many-redirects"}),
        (srv.url("_/loop", PUBLIC), {"too-many-redirects"}),
        (srv.url("_/redirect/2/c.gif", PUBLIC), {None}),
    ]
    lines = [url for url, _ in cases]
    res = fetch(tmp_path, lines, block_private=True, resolve=resolve, max_redirects=2, bound=20)
    for (url, reasons), rec in zip(cases, res.rows, strict=True):
        assert rec["reason"] in reasons, (url, rec)
        assert rec["status"] == ("ok" if reasons == {None} else "failed"), (url, rec)
        if rec["reason"] == "blocked-address":
            assert rec["attempts"] == 1, "a refused address is not retried"
    # The private side never saw a single request.
    assert set(srv.stats.by_host) <= {PUBLIC, "public.test"}, dict(srv.stats.by_host)


def test_without_block_private_a_private_redirect_is_followed(tmp_path: Path, srv: ImageServer) -> None:
    # The default, for a command-line tool reading its user's own list (see docs/good-citizen.md).
    res = fetch(tmp_path, [_redirect(srv, f"http://127.0.0.1:{srv.port}/img/a.jpg")])
    assert res.rows[0]["status"] == "ok"
    assert res.rows[0]["final_url"] == f"http://127.0.0.1:{srv.port}/img/a.jpg"


# ---- opt-out -----------------------------------------------------------------------------------

ROBOTS_CASES = [
    ("noai", "opted-out"),
    ("noimageai", "opted-out"),
    ("noindex", "opted-out"),
    ("noimageindex", "opted-out"),
    ("none", "opted-out"),
    ("NoAI", "opted-out"),
    ("nofollow, noindex", "opted-out"),
    ("imgfetch: noai", "opted-out"),
    ("otherbot: nofollow, imgfetch: noimageai", "opted-out"),
    ("otherbot: noindex", None),
    ("otherbot: noai, noindex", None),
    ("max-image-preview: none", None),
    ("nofollow, noarchive", None),
    ("all", None),
]


def test_x_robots_tag_variants(tmp_path: Path, srv: ImageServer, faults: FaultServer) -> None:
    lines = [srv.url(f"_/robots/{quote(value)}", i % 3) for i, (value, _) in enumerate(ROBOTS_CASES)]
    multi = [
        (["otherbot: noai", "noindex"], "opted-out"),  # a scope ends with its header
        (["otherbot: noai", "imgfetch: noimageindex"], "opted-out"),
        (["otherbot: noai", "nofollow"], None),
    ]
    for values, _ in multi:
        lines.append(faults.url("robots?" + "&".join(f"v={quote(v)}" for v in values)))
    # Checked on the headers, before the body: this body never arrives.
    lines.append(faults.url("robots-hang?v=noai", 1))
    expected = [reason for _, reason in ROBOTS_CASES] + [reason for _, reason in multi] + ["opted-out"]
    res = fetch(tmp_path, lines, read_timeout=10.0, timeout=10.0, bound=8)
    for line, want, rec in zip(lines, expected, res.rows, strict=True):
        assert rec["reason"] == want, (line, rec)
        assert rec["status"] == ("skipped" if want else "ok"), (line, rec)
        if want:
            assert rec["attempts"] == 1 and rec["bytes"] is None, rec
    assert res.summary.skipped_reasons == {"opted-out": expected.count("opted-out")}


def test_ignore_opt_out(tmp_path: Path, srv: ImageServer) -> None:
    lines = [srv.url(f"_/robots/{quote(value)}") for value, _ in ROBOTS_CASES]
    res = fetch(tmp_path, lines, honor_opt_out=False)
    assert res.summary.ok == len(lines)


# ---- identity: User-Agent and custom headers ----------------------------------------------------


def test_default_user_agent_names_imgfetch_and_a_contact_url(tmp_path: Path, srv: ImageServer) -> None:
    fetch(tmp_path, [srv.url("_/redirect/1/a.jpg"), srv.url("_/flaky/ua/1/503", 1)])
    seen = srv.stats.headers
    assert len(seen) == 4  # two hops, then a retry
    for headers in seen:
        assert headers["User-Agent"] == DEFAULT_USER_AGENT
    assert DEFAULT_USER_AGENT.startswith(f"imgfetch/{imgfetch.__version__} ")
    assert PROJECT_URL in DEFAULT_USER_AGENT and PROJECT_URL.startswith("https://")


def test_custom_user_agent_and_headers_reach_every_request(tmp_path: Path, srv: ImageServer) -> None:
    headers = {"X-Team": "vision-lab", "Authorization": "Bearer t0ken", "Accept": "image/png"}
    lines = [srv.url("_/redirect/2/b.png"), srv.url("_/flaky/hdr/1/500", 1)]
    res = fetch(tmp_path, lines, user_agent="lab-crawler/2.0 (+mailto:ops@example.org)", headers=headers)
    assert res.summary.ok == 2
    assert len(srv.stats.headers) == 5
    for seen in srv.stats.headers:
        assert seen["User-Agent"] == "lab-crawler/2.0 (+mailto:ops@example.org)"
        for name, value in headers.items():
            assert seen[name] == value


def test_cli_flags_reach_the_server(tmp_path: Path, srv: ImageServer) -> None:
    src = tmp_path / "cli.txt"
    src.write_text("".join(srv.url(f"img/a.jpg?i={i}", i % 2) + "\n" for i in range(6)))
    argv = [str(src), "-o", str(tmp_path / "cli-out"), "-q", "--user-agent", "cli-agent/1"]
    argv += ["-H", "X-From-Cli: yes", "--per-host", "1", "--per-host-rate", "50", "--delay", "0,0.01"]
    argv += [
        "--max-retry-after",
        "1",
        "--max-redirects",
        "1",
        "--block-private",
        "--resolve",
        f"x.test={PUBLIC}",
    ]
    argv += ["--no-proxy-env"]
    assert cli_main(argv) == 0
    records = list(read_manifest(tmp_path / "cli-out" / "manifest.jsonl"))
    # --block-private is on and these hosts are loopback: every row refused, nothing fetched.
    assert {r["reason"] for r in records} == {"blocked-address"}
    assert srv.stats.total == 0
    argv = [a for a in argv if a != "--block-private"] + ["--overwrite"]
    assert cli_main(argv) == 0
    assert srv.stats.total == 6
    assert all(h["User-Agent"] == "cli-agent/1" and h["X-From-Cli"] == "yes" for h in srv.stats.headers)
    assert_polite(srv.stats.peak, 1)


# ---- proxies ----------------------------------------------------------------------------------------


def test_proxy_option_relays_every_request(tmp_path: Path, srv: ImageServer) -> None:
    lines = [srv.url(f"img/a.jpg?i={i}", i % 3) for i in range(6)] + [srv.url("_/redirect/1/c.gif", 1)]
    with ForwardProxy() as proxy:
        res = fetch(tmp_path, lines, proxy=proxy.url, headers={"X-Via-Test": "1"})
    assert res.summary.ok == len(lines)
    assert len(proxy.relayed) == srv.stats.total == len(lines) + 1
    assert {line.split(" ", 1)[1] for line in proxy.relayed} >= set(lines)
    assert all(h["X-Via-Test"] == "1" for h in srv.stats.headers)
    assert_polite(srv.stats.peak, 8)


def test_proxy_environment_variables_are_honoured(
    tmp_path: Path, srv: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [srv.url(f"img/b.png?i={i}", i % 2) for i in range(4)]
    with ForwardProxy() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        res = fetch(tmp_path, lines)
        assert res.summary.ok == 4
        assert len(proxy.relayed) == 4
        # --no-proxy-env: the variables are ignored.
        res = fetch(tmp_path, lines, out="direct", trust_env=False)
        assert res.summary.ok == 4
        assert len(proxy.relayed) == 4
        assert srv.stats.total == 8


def test_unreachable_proxy_is_a_per_row_proxy_error(tmp_path: Path, srv: ImageServer) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    res = fetch(tmp_path, [srv.url("img/a.jpg"), srv.url("img/b.png", 1)], proxy=dead)
    for rec in res.rows:
        assert (rec["status"], rec["reason"], rec["attempts"]) == ("failed", "proxy-error", 2), rec
    assert srv.stats.total == 0


@pytest.mark.usefixtures("pretend_public")
def test_block_private_does_not_refuse_the_users_own_proxy(tmp_path: Path, srv: ImageServer) -> None:
    with ForwardProxy() as proxy:
        res = fetch(
            tmp_path,
            [srv.url("img/a.jpg", PUBLIC)],
            proxy=f"http://localhost:{proxy.port}",
            block_private=True,
        )
    assert res.rows[0]["status"] == "ok", res.rows[0]
    assert len(proxy.relayed) == 1


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate (needs the openssl command)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl command not found")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=imgfetch-test"),
            *("-addext", "subjectAltName=IP:127.0.0.1,IP:127.0.0.2"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def test_https_through_the_proxy_and_insecure(tmp_path: Path, tls_context: ssl.SSLContext) -> None:
    with FaultServer(ssl_context=tls_context) as tls, ForwardProxy() as proxy:
        lines = [tls.url("img/a.jpg"), tls.url("img/b.png", 1)]
        res = fetch(tmp_path, lines, proxy=proxy.url, retries=0)
        # A self-signed certificate is refused by default ...
        assert {(r["status"], r["reason"]) for r in res.rows} == {("failed", "tls-error")}
        res = fetch(tmp_path, lines, out="insecure", proxy=proxy.url, insecure=True)
        # ... and accepted with --insecure; https goes through the proxy as a CONNECT tunnel.
        assert res.summary.ok == 2
    assert [line.split(" ", 1)[0] for line in proxy.relayed] == ["CONNECT"] * 4
    assert {h.path for h in tls.hits} == {"/img/a.jpg", "/img/b.png"}


# ---- HostGate: the mechanics behind the limits ------------------------------------------------------


def test_gate_hands_slots_over_in_order_and_never_exceeds_the_limit() -> None:
    async def go() -> tuple[int, list[int]]:
        gate = HostGate(2, None, None, random.Random(0))
        active, most, order = 0, 0, []

        async def one(i: int) -> None:
            nonlocal active, most
            await gate.acquire()
            active += 1
            most = max(most, active)
            order.append(i)
            await asyncio.sleep(0.01)
            active -= 1
            gate.release()

        tasks = []
        for i in range(8):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0)  # arrive in order
        await asyncio.gather(*tasks)
        assert gate.active == 0 and gate.peak == 2
        return most, order

    most, order = asyncio.run(go())
    assert most == 2
    assert order == list(range(8))


def test_cancelled_waiters_never_leak_a_slot() -> None:
    async def go() -> None:
        gate = HostGate(1, None, None, random.Random(0))
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        other = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        gate.release()  # hands the slot to ``waiter`` ...
        waiter.cancel()  # ... which is cancelled before it runs: the slot must pass on
        await asyncio.wait_for(other, 2)
        assert gate.active == 1
        gate.release()
        assert gate.active == 0
        await asyncio.wait_for(gate.acquire(), 2)

    asyncio.run(go())


def test_a_penalty_also_holds_back_requests_already_waiting_for_their_turn() -> None:
    async def go() -> float:
        loop = asyncio.get_running_loop()
        gate = HostGate(4, 5.0, None, random.Random(0))  # one start per 0.2 s
        await gate.acquire()  # starts now
        second = asyncio.create_task(gate.acquire())  # reserved a start 0.2 s from now
        await asyncio.sleep(0.05)
        penalized_at = loop.time()
        gate.penalize(penalized_at, retry_after=0.6, cap=60.0)
        await second
        return loop.time() - penalized_at

    assert asyncio.run(go()) >= 0.8 * 0.6


def test_after_a_penalty_waiting_requests_respect_the_lowered_limit() -> None:
    async def go() -> tuple[int, HostGate]:
        loop = asyncio.get_running_loop()
        gate = HostGate(4, 10.0, None, random.Random(0))  # starts reserved 0.1 s apart
        in_flight, most_after = 0, 0
        penalized = False

        async def one() -> None:
            nonlocal in_flight, most_after
            await gate.acquire()
            in_flight += 1
            if penalized:
                most_after = max(most_after, in_flight)
            await asyncio.sleep(0.4)
            in_flight -= 1
            gate.release()

        tasks = [asyncio.create_task(one()) for _ in range(4)]
        await asyncio.sleep(0.05)  # the first is out; three hold slots, waiting for their start
        gate.penalize(loop.time(), 0.3, 60.0)  # 4 -> 2 allowed in flight
        penalized = True
        await asyncio.gather(*tasks)
        return most_after, gate

    most_after, gate = asyncio.run(go())
    assert most_after <= 2
    assert gate.active == 0 and not gate._waiters


def test_try_start_measures_spacing_and_pauses_between_real_starts() -> None:
    gate = HostGate(4, 2.0, (0.25, 1.0), random.Random(0))  # at least 0.5 + 0.25 s apart
    assert gate.try_start(10.0) == 0.0
    assert gate.try_start(10.5) == pytest.approx(0.25)
    assert gate.try_start(10.75) == 0.0
    gate.penalize(11.0, 2.0, 60.0)
    assert gate.try_start(12.0) == pytest.approx(1.0)
    assert gate.try_start(13.0) == 0.0
    assert gate.last_start == 13.0


def test_penalize_halves_and_reward_recovers_gradually() -> None:
    gate = HostGate(8, None, None, random.Random(0))
    for expected in (4, 2, 1, 1):
        gate.penalize(0.0, None, 60.0)
        assert gate.limit == expected
    rewards = 0
    while gate.limit < 8:
        gate.reward()
        rewards += 1
    assert rewards == 1 + 2 + 3 + 4 + 5 + 6 + 7  # each step up needs ``limit`` good answers in a row
    gate.reward()
    assert gate.limit == 8
    gate.penalize(10.0, 3600.0, 2.5)
    assert gate.paused_until == 12.5  # Retry-After capped


def test_host_table_stays_bounded_and_keeps_busy_gates() -> None:
    class Small(HostTable):
        PRUNE_AT = 16

    async def go() -> None:
        table = Small(HttpConfig(per_host=2))
        busy = table.get("busy.test")
        await busy.acquire()
        backed_off = table.get("slow.test")
        backed_off.penalize(asyncio.get_running_loop().time(), 30.0, 60.0)
        for i in range(1000):
            gate = table.get(f"h{i}.test")
            await gate.acquire()
            gate.release()
        assert len(table) <= 2 * Small.PRUNE_AT
        assert table.get("busy.test") is busy
        assert table.get("slow.test") is backed_off

    asyncio.run(go())


# ---- property: arbitrary lines and names never crash a run or escape the output folder --------------


@pytest.fixture(scope="module")
def catch_all() -> Iterator[ImageServer]:
    with ImageServer(IMAGES, catch_all=True) as server:
        yield server


_TRICKS = [
    "..",
    ".",
    "%2e%2e%2f",
    "%2E%2E%5C",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%252e%252e%252f",
    "%c0%ae%c0%ae%c0%af",
    "%00",
    "a%00.jpg",
    "%2F",
    "\\..\\..\\",
    "CON",
    "nul.jpg",
    "COM1.png",
    "~",
    ".hidden",
    "a:b",
    "?q=../../x",
    "#frag/../..",
    "a.jpg;jsessionid=1",
    " ",
    "\u202e\u0067\u0070\u006a.exe",
    "\ufeff",
]
_segment = st.one_of(st.sampled_from(_TRICKS), st.text(max_size=30))
_path = st.lists(_segment, max_size=6).map("/".join)
_huge = st.integers(200, 1_200_000).map(lambda n: "x" * n)


@st.composite
def _inputs(draw: st.DrawFn, base: str) -> tuple[str, list[str]]:
    """(format, lines): URLs with tricky paths, arbitrary text, huge lines; or CSV with a name column."""
    line = st.one_of(
        _path.map(lambda p: f"{base}/{p}"),
        st.text(max_size=80),
        _huge.map(lambda s: f"{base}/{s}"),
        st.sampled_from(["", "#comment", "file:///etc/passwd", "http://", "http:///x", "\x00\x01\x02"]),
    )
    lines = draw(st.lists(line, min_size=1, max_size=6))
    return draw(st.sampled_from(["txt", "csv"])), lines


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_any_input_never_crashes_and_never_escapes(catch_all: ImageServer, data: st.DataObject) -> None:
    base = catch_all.base()
    fmt, lines = data.draw(_inputs(base))
    name = st.one_of(st.sampled_from(_TRICKS), st.text(max_size=40))
    names = data.draw(st.lists(name, min_size=len(lines), max_size=len(lines)))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out = work / "out"
        options: dict[str, Any] = {**FAST, "retries": 0, "timeout": 3.0}
        if fmt == "txt":
            src = work / "list.txt"
            src.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
        else:
            src = work / "list.csv"
            with src.open("w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["url", "name"])
                writer.writerows(zip(lines, names, strict=False))
            options["name"] = "column:name"
        before = _snapshot(work)
        summary = imgfetch.download(src, out, **options)
        cfg = api.config(src, out, **options)
        expected_rows = sum(1 for _ in sources.read_rows(cfg.input))
        manifest = out / "manifest.jsonl"
        # An input without a single row leaves no manifest (nothing was ever recorded).
        records = list(read_manifest(manifest)) if expected_rows or manifest.exists() else []
        assert sorted(r["row"] for r in records) == list(range(expected_rows))
        assert summary.total == expected_rows
        assert not any(r["reason"] == "internal-error" for r in records), records
        check_disk(work, out, records, before)
        paths = [r["path"] for r in records if r["status"] == "ok"]
        assert len(set(paths)) == len(paths), "two rows share a file"
        event(f"{fmt}: {min(len(paths), 3)}{'+' if len(paths) >= 3 else ''} images saved")
