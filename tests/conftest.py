"""Shared fixtures and checks for the end-to-end tests: a real image server on
127.0.0.1-3 and a runner that checks every run's invariants on disk.

Every run goes through :func:`fetch` (the API) or :func:`check_output` (after a
CLI run), which assert what must hold whatever the rows were: exactly one
manifest record per input row, a file on disk for every ``ok`` record and for
nothing else, files that match their records, safe names inside the output
folder, no temporary ``.imgfetch-*.part`` left, and nothing written outside the
output folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import socket
import stat
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

import imgfetch
from imgfetch.bench.server import ImageServer
from imgfetch.demo import sample_images
from imgfetch.naming import EXTENSIONS, is_safe_name
from imgfetch.records.manifest import read_manifest
from imgfetch.sinks.files import TEMP_PREFIX

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from imgfetch import Outcome, Summary

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
#: Files the run itself writes next to the images.
BOOKKEEPING = frozenset({"manifest.jsonl", "summary.json"})
#: The run's own state folder inside the output (the resume ledger and its lock).
STATE_DIR = ".imgfetch"
#: Small deadlines and back-offs keep fault tests fast; tests override what they exercise.
FAST: dict[str, Any] = {
    "trust_env": False,  # a proxy in the environment must not see loopback test traffic
    "retries": 1,
    "backoff_base": 0.01,
    "backoff_max": 0.05,
    "max_retry_after": 0.2,
    "connect_timeout": 2.0,
    "read_timeout": 5.0,
    "timeout": 10.0,
}


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    return sample_images()


@pytest.fixture(scope="session")
def server(images: dict[str, bytes]) -> Iterator[ImageServer]:
    """One server for the whole session, three loopback hosts, no latency."""
    with ImageServer(images, hosts=HOSTS) as srv:
        yield srv


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def key() -> str:
    """A fresh path segment, so per-URL server counters are this test's own."""
    return uuid.uuid4().hex[:12]


def hits(srv: ImageServer, url: str) -> int:
    """How many requests the server saw for ``url``'s path and query."""
    from yarl import URL

    return srv.stats.requests[URL(url).path_qs]


Snapshot = dict[str, tuple[int, int, int]]


def snapshot(root: Path) -> Snapshot:
    """Every entry below ``root`` (symlinks not followed) by (mode, size, mtime).

    A folder's size and mtime change with its entries, which are compared one by one anyway.
    """
    entries: Snapshot = {}
    for path in root.rglob("*"):
        st = path.lstat()
        changes = (0, 0) if stat.S_ISDIR(st.st_mode) else (st.st_size, st.st_mtime_ns)
        entries[path.relative_to(root).as_posix()] = (st.st_mode, *changes)
    return entries


def changed_outside(before: Snapshot, root: Path, out: Path) -> list[str]:
    """Entries below ``root`` that appeared, vanished or changed anywhere but inside ``out``."""
    after = snapshot(root)
    prefix = out.relative_to(root).as_posix()
    inside = {prefix} | {p for p in after if p.startswith(prefix + "/")}
    return sorted(
        p for p in before.keys() | after.keys() if p not in inside and before.get(p) != after.get(p)
    )


@dataclasses.dataclass
class Result:
    """A finished run: its Summary (None for a CLI run), folders and manifest records by row."""

    summary: Summary | None
    root: Path
    out: Path
    records: list[dict[str, Any]]

    def rec(self, row: int) -> dict[str, Any]:
        return self.records[row]

    def only(self) -> dict[str, Any]:
        assert len(self.records) == 1
        return self.records[0]

    def paths(self) -> list[str | None]:
        return [r["path"] for r in self.records]


def key_fields(rec: dict[str, Any]) -> tuple[object, ...]:
    """The fields every fault test pins down exactly."""
    return (rec["status"], rec["reason"], rec["http_status"], rec["attempts"])


def check_output(
    root: Path,
    out: Path,
    before: Snapshot,
    n_rows: int,
    summary: Summary | None = None,
) -> Result:
    """Assert the invariants of a finished run and return its records sorted by row."""
    records = sorted(read_manifest(out / "manifest.jsonl"), key=lambda r: int(r["row"]))
    assert [r["row"] for r in records] == list(range(n_rows)), "exactly one record per input row"

    assert changed_outside(before, root, out) == [], "nothing may change outside the output folder"
    leftovers = [p for p in out.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert leftovers == [], "no temporary file may survive a run"

    real_out = out.resolve()
    files = {
        rel
        for rel in (p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        if rel not in BOOKKEEPING and not rel.startswith(STATE_DIR + "/")
    }
    ok = [r for r in records if r["status"] == "ok"]
    assert files == {r["path"] for r in ok}, "a file for every ok record and for nothing else"
    for rec in records:
        if rec["status"] != "ok":
            assert rec["path"] is None and rec["sha256"] is None, rec
            assert rec["reason"], rec
            continue
        assert rec["reason"] is None, rec
        path = out / rec["path"]
        assert not path.is_symlink() and path.resolve().is_relative_to(real_out), rec["path"]
        assert all(is_safe_name(part) for part in rec["path"].split("/")), rec["path"]
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == rec["sha256"], rec["path"]
        assert len(data) == rec["bytes"], rec["path"]
        assert path.suffix == EXTENSIONS[rec["format"]], "the extension follows the sniffed format"
        assert rec["width"] > 0 and rec["height"] > 0, rec

    if summary is not None:
        statuses = Counter(r["status"] for r in records)
        assert summary.total == n_rows
        assert (summary.ok, summary.failed, summary.skipped) == (
            statuses["ok"],
            statuses["failed"],
            statuses["skipped"],
        )
        assert summary.failed_reasons == Counter(r["reason"] for r in records if r["status"] == "failed")
        assert summary.bytes == sum(r["bytes"] for r in ok)
    return Result(summary, root, out, records)


def fetch(
    root: Path,
    urls: Sequence[str],
    *,
    n_rows: int | None = None,
    listing: Path | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    **options: Any,
) -> Result:
    """Download ``urls`` (one per line, or ``listing`` as given) into ``root/a/b/out`` and check it.

    The output folder sits three levels below ``root`` so that a name escaping
    with ``../..`` would still land inside the snapshot; the run also happens
    with ``root`` as the working directory, so a stray relative write shows up.
    """
    root.mkdir(parents=True, exist_ok=True)
    if listing is None:
        listing = root / "list.txt"
        listing.write_text("".join(u + "\n" for u in urls), encoding="utf-8")
    out = root / "a" / "b" / "out"
    out.parent.mkdir(parents=True, exist_ok=True)
    before = snapshot(root)
    with contextlib.chdir(root):
        summary = imgfetch.download(listing, out, on_outcome=on_outcome, **{**FAST, **options})
    return check_output(root, out, before, len(urls) if n_rows is None else n_rows, summary)
