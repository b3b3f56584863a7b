"""Every engine runs the same pipeline: same files, same manifest, same reasons.

Real servers on 127.0.0.x (imgfetch.bench.server), real processes; no mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import re
import socket
import sqlite3
import tarfile
from collections import Counter
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import pytest
from yarl import URL

import imgfetch
from fwdproxy import ForwardProxy
from imgfetch.bench.server import ImageServer
from imgfetch.config import HttpConfig
from imgfetch.demo import sample_images
from imgfetch.errors import EngineUnavailable
from imgfetch.fetch.aio import AioClient
from imgfetch.fetch.engines import ENGINES, LoopEngine, ProcessesEngine, ThreadsEngine, make_engine
from imgfetch.fetch.sync import SyncClient
from imgfetch.naming import EXTENSIONS

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from imgfetch.fetch.common import Fetched

HOSTS = ("127.0.0.1", "127.0.0.2")
IMAGE_SUFFIXES = frozenset(EXTENSIONS.values())
IMAGES = sample_images()


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer(IMAGES, hosts=HOSTS) as srv:
        yield srv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def equivalence_urls(srv: ImageServer) -> list[str]:
    names = sorted(IMAGES)
    urls = [srv.url(f"img/{name}", host) for host in (0, 1) for name in names]  # same names twice
    urls += [
        srv.url("_/status/404"),
        srv.url(f"_/redirect/2/{names[0]}", 1),
        srv.url("_/html-as-jpeg"),
        srv.url("_/flaky/eq/1/503", 1),
        srv.url(f"_/octet/{names[1]}"),
        srv.url("_/corrupt"),
        "ftp://example.invalid/a.jpg",
        "not a url",
    ]
    return urls


def run_engine(engine: str, listing: Path, out: Path, port: int, **extra: Any) -> list[dict[str, Any]]:
    # A fresh server per run, on the same port so the URLs (and the manifests) are identical,
    # with its own count of the flaky route's hits.
    with ImageServer(IMAGES, hosts=HOSTS, port=port):
        summary = imgfetch.download(
            listing, out, engine=engine, concurrency=4, retries=2, backoff_base=0.05, trust_env=False, **extra
        )
    assert summary.total == len(listing.read_text().splitlines())
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    for rec in records:
        rec.pop("elapsed")
        if rec["detail"]:  # Pillow's messages can name an object's address
            rec["detail"] = re.sub(r" at 0x[0-9a-f]+", "", rec["detail"])
    return sorted(records, key=lambda r: r["row"])


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in IMAGE_SUFFIXES and ".imgfetch" not in p.parts
    }


@pytest.mark.parametrize("options", [{}, {"size": 64}], ids=["download", "resize"])
def test_every_engine_writes_the_same_files_and_manifest(tmp_path: Path, options: dict[str, Any]) -> None:
    port = free_port()
    with ImageServer(IMAGES, hosts=HOSTS, port=port) as srv:
        urls = equivalence_urls(srv)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(urls) + "\n")
    results = {}
    for engine in sorted(ENGINES):
        out = tmp_path / engine
        manifest = run_engine(engine, listing, out, port, **options)
        results[engine] = (manifest, tree(out))
    reference_manifest, reference_files = results["async"]
    reasons = {r["reason"] for r in reference_manifest}
    assert {"http-404", "not-an-image", "unsupported-scheme", "invalid-url"} <= reasons
    flaky = next(r for r in reference_manifest if "/flaky/" in r["url"])
    assert flaky["status"] == "ok" and flaky["attempts"] == 2
    assert sum(r["status"] == "ok" for r in reference_manifest) == 2 * len(IMAGES) + 3
    for engine, (manifest, files) in results.items():
        assert manifest == reference_manifest, engine
        assert files == reference_files, engine


def fault_routes(srv: ImageServer, refused: int) -> list[tuple[str, dict[str, Any], str]]:
    return [
        (srv.url("_/status/404"), {}, "http-404"),
        (srv.url("_/truncated"), {}, "truncated"),
        (srv.url("_/hang"), {"read_timeout": 0.5}, "read-timeout"),
        (srv.url("_/hang"), {"timeout": 0.7}, "timeout"),
        (srv.url("_/drip?bps=20"), {"timeout": 0.7}, "timeout"),
        (srv.url("_/redirect-to?location=file:///etc/passwd"), {}, "unsupported-scheme"),
        (srv.url("_/loop"), {}, "too-many-redirects"),
        (srv.url("_/loop"), {"max_redirects": 0}, "too-many-redirects"),
        (srv.url("_/big?size=300000"), {"max_bytes": 100_000}, "too-large"),
        (srv.url("_/big?size=300000&chunked=1"), {"max_bytes": 100_000}, "too-large"),
        (srv.url("_/gzip-bomb"), {"max_bytes": 100_000}, "too-large"),
        (srv.url("_/robots/noai"), {}, "opted-out"),
        (srv.url("img/coffee.jpg"), {"block_private": True}, "blocked-address"),
        (f"http://127.0.0.1:{refused}/img/coffee.jpg", {}, "connection-error"),
        (srv.url("_/redirect/3/coffee.jpg"), {}, "ok"),
    ]


async def aio_attempt(cfg: HttpConfig, url: str) -> Fetched:
    async with AioClient(cfg) as client:
        return await client.attempt(URL(url))


def test_sync_and_async_clients_agree_on_faults(server: ImageServer) -> None:
    refused = free_port()
    for url, options, expected in fault_routes(server, refused):
        cfg = HttpConfig(trust_env=False, **options)
        a = asyncio.run(aio_attempt(cfg, url))
        with SyncClient(cfg) as client:
            s = client.attempt(URL(url))
        assert (a.reason or "ok", s.reason or "ok") == (expected, expected), url
        assert (a.status, a.retry_after, a.final_url) == (s.status, s.retry_after, s.final_url), url
        assert a.body == s.body, url


def test_sync_client_honours_resolve_and_retry_after(server: ImageServer) -> None:
    cfg = HttpConfig(trust_env=False)
    with SyncClient(cfg, {"images.example": ("127.0.0.2", server.port)}) as client:
        got = client.attempt(URL("http://images.example/img/coffee.jpg"))
        assert got.ok and got.body == IMAGES["coffee.jpg"]
        limited = client.attempt(URL(server.url("_/flaky/ra/1/429?retry_after=7")))
        assert (limited.reason, limited.retry_after) == ("http-429", 7.0)
    assert server.stats.by_host["images.example"] == 1


def test_resolve_option_reaches_every_engine(tmp_path: Path, server: ImageServer) -> None:
    listing = tmp_path / "l.txt"
    listing.write_text("http://pics.example/img/coffee.jpg\n")
    for engine in sorted(ENGINES):
        summary = imgfetch.download(
            listing,
            tmp_path / engine,
            engine=engine,
            trust_env=False,
            resolve=(("pics.example", "127.0.0.1", server.port),),
        )
        assert summary.ok == 1, engine


def test_concurrency_means_requests_in_flight() -> None:
    cfg = HttpConfig(concurrency=10)
    assert ThreadsEngine(cfg).max_in_flight == 10
    assert LoopEngine(cfg).max_in_flight == 1
    procs = ProcessesEngine(cfg, processes=3)
    assert (procs.max_in_flight, procs.processes, procs.threads) == (10, 3, 4)
    assert ProcessesEngine(HttpConfig(concurrency=1), processes=4).processes == 1


def test_processes_engine_stops_its_workers(server: ImageServer) -> None:
    async def go() -> list[Fetched]:
        async with ProcessesEngine(HttpConfig(concurrency=4, trust_env=False), processes=2) as engine:
            return list(
                await asyncio.gather(*(engine.attempt(URL(server.url("img/coffee.jpg"))) for _ in range(6)))
            )

    before = {p.pid for p in multiprocessing.active_children()}
    results = asyncio.run(go())
    assert all(r.ok and r.body == IMAGES["coffee.jpg"] for r in results)
    assert {p.pid for p in multiprocessing.active_children()} <= before


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(EngineUnavailable):
        make_engine("ray", HttpConfig())


def test_sync_client_goes_through_a_proxy_like_the_async_one(server: ImageServer) -> None:
    url = server.url("img/coffee.jpg")
    with ForwardProxy() as proxy:
        cfg = HttpConfig(trust_env=False, proxy=proxy.url)
        with SyncClient(cfg) as client:
            got = client.attempt(URL(url))
        assert got.ok and got.body == IMAGES["coffee.jpg"]
        assert proxy.relayed == [f"GET {url}"]
    refused = f"http://127.0.0.1:{free_port()}"
    cfg = HttpConfig(trust_env=False, proxy=refused)
    a = asyncio.run(aio_attempt(cfg, url))
    with SyncClient(cfg) as client:
        s = client.attempt(URL(url))
    assert a.reason == s.reason == "proxy-error"


def shard_samples(out: Path, fmt: str) -> dict[str, bytes]:
    """key -> image bytes, read back from every shard with tarfile / pyarrow; for webdataset,
    checks that each shard's Parquet gives every image's offset and size in its tar."""
    samples: dict[str, bytes] = {}
    if fmt == "webdataset":
        for tar_path in sorted(out.glob("*.tar")):
            located: dict[str, tuple[int, int]] = {}
            with tarfile.open(tar_path) as tar:
                for member in tar.getmembers():
                    key, _, ext = member.name.partition(".")
                    if ext == "jpg":
                        extracted = tar.extractfile(member)
                        assert extracted is not None and key not in samples
                        samples[key] = extracted.read()
                        located[key] = (member.offset_data, member.size)
            table = pq.read_table(
                tar_path.with_suffix(".parquet"), columns=["key", "status", "offset", "size"]
            )
            listed = {r["key"]: (r["offset"], r["size"]) for r in table.to_pylist() if r["status"] == "ok"}
            assert listed == located, f"{tar_path.name}: the per-shard Parquet's offsets are not the tar's"
    else:
        for pq_path in sorted(out.glob("*.parquet")):
            for row in pq.read_table(pq_path, columns=["key", "image"]).to_pylist():
                if row["image"] is not None:
                    assert row["key"] not in samples
                    samples[row["key"]] = row["image"]["bytes"]
    return samples


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_every_engine_writes_the_same_shards(tmp_path: Path, fmt: str) -> None:
    """Same keys, same bytes and the same records whatever the engine, and with two event
    loops (each then writes the samples it fetched to its own staging log of a shard, and
    sealing joins the logs)."""
    port = free_port()
    with ImageServer(IMAGES, hosts=HOSTS, port=port) as srv:
        urls = equivalence_urls(srv)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(urls) + "\n")
    runs: list[tuple[str, dict[str, Any]]] = [(e, {}) for e in sorted(ENGINES)] + [("async", {"loops": 2})]
    results = {}
    for engine, extra in runs:
        name = engine + "".join(f"-{k}{v}" for k, v in extra.items())
        out = tmp_path / name
        manifest = run_engine(engine, listing, out, port, output_format=fmt, shard_size=5, **extra)
        assert all("offset" not in rec and "size" not in rec for rec in manifest), (
            "where a sample lands in its tar is in the per-shard Parquet, not in the manifest"
        )
        results[name] = (manifest, shard_samples(out, fmt))
        if extra.get("loops") == 2:
            with contextlib.closing(sqlite3.connect(out / ".imgfetch" / "ledger.sqlite")) as db:
                pairs = db.execute("SELECT DISTINCT shard, writer FROM outcomes WHERE writer IS NOT NULL")
                writers = Counter(shard for shard, _ in pairs)
            assert 2 in writers.values(), f"no shard has samples from both loops: {writers}"
    reference_manifest, reference_samples = results["async"]
    ok = [r for r in reference_manifest if r["status"] == "ok"]
    assert len(ok) == 2 * len(IMAGES) + 3 == len(reference_samples)
    assert {r["key"] for r in ok} == set(reference_samples)
    for rec in ok:
        assert hashlib.sha256(reference_samples[rec["key"]]).hexdigest() == rec["sha256"]
    for name, (manifest, samples) in results.items():
        assert manifest == reference_manifest, name
        assert samples == reference_samples, name
