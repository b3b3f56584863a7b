"""Crash safety of the shard formats (``--output-format webdataset|parquet``).

The real ``imgfetch`` command runs in a subprocess against a loopback server
with latency and is killed with SIGKILL: at seeded random moments (start-up
included) until a run completes, and, deterministically, at each step of one
shard's commit (a small driver wraps one internal step with ``kill -9``), with one
event loop (the shard's one staging log is renamed to its tar) and with two (each
loop writes its own log, ``00001.<writer>.samples``, and sealing joins them).  The
states a kill can leave but is unlikely to hit are also fabricated by hand: a shard
sealed but not (fully) published, and sample logs (one, or each of two) with bytes
after their last recorded sample.

After the last run the output must be what an uninterrupted run gives: one
manifest record per row; each ok row in exactly one published shard, its image
bytes matching its sha256; tars readable to the end with each sample's members
side by side; Parquet files readable; a stats file for every shard, all of them
in ``shards.json``, each image's offset in the tar the per-shard Parquet's (the
manifest has none); no temporaries and an empty staging folder.  Across the
kills: a row the ledger held when a run was killed is never requested again
(hits counted per row at the server, every row has its own URL), no row leaves
the ledger, and a shard whose stats file was in the output is never rewritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import pytest
from yarl import URL

import imagegen
from imgfetch.bench.server import ImageServer, Latency
from imgfetch.runners.loops import Owners, weights
from imgfetch.sinks.files import TEMP_PREFIX

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

FORMATS = ("webdataset", "parquet")
#: The file holding a shard's samples, per format.
DATA = {"webdataset": ".tar", "parquet": ".parquet"}
#: Every file of a published shard, the stats file last (the order they are published in).
SHARD_FILES = {"webdataset": (".tar", ".parquet", "_stats.json"), "parquet": (".parquet", "_stats.json")}
STATS = "_stats.json"
CLI = ["--no-proxy-env", "--no-progress", "-q"]
#: A safety net for a run that should end promptly, not a timing assertion.
PROMPT = 30.0
SHARD_NAME = re.compile(r"\A(\d{5})(\.tar|\.parquet|_stats\.json)\Z")

#: (mtime_ns, size, sha256) of a file.
FileId = tuple[int, int, str]


#: The loopback hosts of the server: with two event loops each owns one of them.
HOSTS = ("127.0.0.1", "127.0.0.2")


@pytest.fixture(scope="module")
def srv() -> Iterator[ImageServer]:
    """Two loopback hosts, about 50 ms per request; any other path is an image (JPEG or PNG)."""
    images = {
        f"p{i}.{fmt.lower()}": imagegen.encode(imagegen.photo(20 + 6 * i, 14 + 4 * i, seed=i), fmt)
        for i, fmt in enumerate(["JPEG", "PNG", "JPEG", "PNG"])
    }
    latency = Latency(median=0.05, sigma=0.3, seed=11)
    with ImageServer(images, hosts=HOSTS, latency=latency, catch_all=True) as server:
        assert {Owners(weights(2))(h) for h in HOSTS} == {0, 1}, "one host per loop"
        yield server


# ---- the input -------------------------------------------------------------------------------


@dataclasses.dataclass
class Rows:
    """An input list: one distinct URL per row (``?r=N``), so server hits are per row."""

    urls: list[str]
    failing: set[int]
    listing: Path


def make_rows(
    srv: ImageServer,
    tmp_path: Path,
    n: int,
    *,
    fail: tuple[int, ...] = (),
    hang: tuple[int, ...] = (),
    hosts: int = 1,
) -> Rows:
    """``n`` rows: images, except ``fail`` (and, with no ``fail`` given, every 9th and 31st row)
    which fail for good (404, not an image) and ``hang`` whose server never answers; row ``i``
    on host ``i % hosts``."""
    t = uuid.uuid4().hex[:10]
    failing = set(fail) if fail else {i for i in range(n) if i % 9 == 4 or i % 31 == 7}
    urls = []
    for i in range(n):
        if i in hang:
            path = f"_/hang?r={i}&t={t}"
        elif i in failing:
            path = f"_/status/404?r={i}&t={t}" if i % 2 else f"_/html-as-jpeg?r={i}&t={t}"
        else:
            path = f"c{t}/{i}.jpg?r={i}"
        urls.append(srv.url(path, i % hosts))
    listing = tmp_path / f"list-{t}.txt"
    listing.write_text("".join(u + "\n" for u in urls), encoding="utf-8")
    return Rows(urls, failing, listing)


def expected_key(row: int, size: int) -> str:
    shard, pos = divmod(row, size)
    return f"{shard:05d}{pos:0{len(str(size - 1))}d}"


# ---- running and killing ------------------------------------------------------------------------

#: Runs the CLI (argv: step, shard, CLI arguments) and kills itself with SIGKILL at one step of
#: committing that shard, from inside the step: states a random kill is unlikely to hit.
DRIVER = r"""
import os, signal, sys
from imgfetch import cli
from imgfetch.sinks import parquet, shards, webdataset

step, target, args = sys.argv[1], sys.argv[2], sys.argv[3:]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if step == "joining":  # webdataset, several logs: one of them joined to the tar-to-be, not all
    copy_into = webdataset._copy_into

    def joining(fd, path):
        copy_into(fd, path)
        if path.name.startswith(target + "."):
            die()

    webdataset._copy_into = joining
elif step == "joined":  # webdataset: the logs joined into staging/NNNNN.tar, end blocks and all
    join_logs = webdataset.join_logs

    def joined(logs, dest):
        size = join_logs(logs, dest)
        if dest.name.startswith(target):
            die()
        return size

    webdataset.join_logs = joined
elif step == "built":  # the format's files built in staging, no stats file yet
    for cls in (webdataset.WebDatasetSink, parquet.ParquetSink):

        def built(self, base, logs, records, samples, _build=cls.build):
            size = _build(self, base, logs, records, samples)
            if base == target:
                die()
            return size

        cls.build = built
elif step == "staged":  # the stats file written in staging too; the ledger not told yet
    seal = shards.ShardSink._seal

    def staged(self, shard, rows, started, kind):
        stats = seal(self, shard, rows, started, kind)
        if shards.shard_name(shard) == target:
            die()
        return stats

    shards.ShardSink._seal = staged
elif step == "sealed":  # the ledger says sealed, nothing moved yet
    publish = shards.ShardSink._publish

    def sealed(self, shard):
        if shards.shard_name(shard) == target:
            die()
        publish(self, shard)

    shards.ShardSink._publish = sealed
elif step == "moved":  # the first file moved into the output, the others still in staging
    move = shards._move

    def moved(source, dest, files):
        move(source, dest, files)
        if dest.name.startswith(target):
            die()

    shards._move = moved
elif step == "published":  # every file in the output, the ledger still says sealed
    committed = shards.ShardSink._committed

    def published(self, ledger, state):
        if shards.shard_name(state.shard) == target:
            die()
        committed(self, ledger, state)

    shards.ShardSink._committed = published
else:
    raise SystemExit("unknown step " + step)
sys.exit(cli.main(args))
"""


def command(rows: Rows, out: Path, fmt: str, size: int, *extra: str, loops: int = 1) -> list[str]:
    """The command line of a run: ``loops`` event loops, explicitly (``auto`` depends on the machine)."""
    shards = ["--output-format", fmt, "--shard-size", str(size), "--loops", str(loops)]
    return [str(rows.listing), "-o", str(out), *shards, *CLI, *extra]


def start(args: list[str], *, step: tuple[str, str] | None = None) -> subprocess.Popen[str]:
    """``imgfetch ARGS`` in its own process group (so a kill takes anything it started too)."""
    prefix = ["-m", "imgfetch"] if step is None else ["-c", DRIVER, *step]
    return subprocess.Popen(
        [sys.executable, *prefix, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def kill(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGKILL the run (unless it has ended); its return code and stderr."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=PROMPT)
    return proc.returncode, err


def finish(proc: subprocess.Popen[str]) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err


def run_to_end(args: list[str]) -> None:
    finish(start(args))


def wait_for(proc: subprocess.Popen[str], ready: Callable[[], bool], what: str) -> None:
    """Block until ``ready()`` or the run has ended."""
    deadline = time.monotonic() + 60
    while proc.poll() is None:
        if ready():
            return
        assert time.monotonic() < deadline, f"the run never got to {what}"
        time.sleep(0.02)


def manifest_lines(out: Path) -> int:
    try:
        return (out / "manifest.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def progressed(out: Path, rows: int) -> bool:
    return manifest_lines(out) >= rows


def hits(srv: ImageServer) -> Counter[str]:
    """A copy of the server's per-path request counts (taken while its thread may still count)."""
    while True:
        try:
            return Counter(dict(srv.stats.requests))
        except RuntimeError:  # changed size during the copy
            time.sleep(0.01)


def path_of(url: str) -> str:
    return URL(url).path_qs


# ---- reading the state -----------------------------------------------------------------------


def query(state: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the ledger, read-only; none when no run got as far as creating it."""
    path = state / "ledger.sqlite"
    if not path.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # killed while creating it
            return []
        raise


def ledger_rows(state: Path) -> dict[int, str]:
    return {int(row): str(status) for row, status in query(state, "SELECT row, status FROM outcomes")}


def ledger_shards(state: Path) -> dict[int, str]:
    return {int(s): str(st) for s, st in query(state, "SELECT shard, state FROM shards")}


def sample_ends(state: Path, shard: int) -> dict[int, int]:
    """writer -> where its last recorded sample of ``shard`` ends in its log."""
    rows = query(
        state,
        "SELECT writer, max(sample_end) FROM outcomes WHERE shard = ? AND sample_end IS NOT NULL"
        " GROUP BY writer",
        shard,
    )
    return {int(w): int(end) for w, end in rows}


#: (shard, writer) of each log that held a sample.
WRITERS_SQL = "SELECT DISTINCT shard, writer FROM outcomes WHERE sample_end IS NOT NULL"


def log_name(shard: int, writer: int) -> str:
    return f"{shard:05d}.{writer}.samples"


def file_id(path: Path) -> FileId:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, hashlib.sha256(path.read_bytes()).hexdigest()


@dataclasses.dataclass
class Watch:
    """What must stay true across kills, noted after each one."""

    state: Path
    out: Path
    fmt: str
    urls: list[str]
    #: Row -> its request count when the ledger first held it.
    done: dict[int, int] = dataclasses.field(default_factory=dict)
    #: Files of shards whose stats file was in the output -> their id then.
    frozen: dict[str, FileId] = dataclasses.field(default_factory=dict)
    kills: int = 0
    #: Kills after which the ledger held no more rows than before (start-up, recovery).
    idle_kills: int = 0

    def killed(self, srv: ImageServer) -> None:
        self.kills += 1
        self.note(srv)

    def note(self, srv: ImageServer) -> None:
        """Take note of what the ledger and the output hold now (no run is going on)."""
        rows = ledger_rows(self.state)
        gone = sorted(self.done.keys() - rows.keys())
        assert gone == [], f"rows left the ledger after a kill: {gone[:5]}"
        if len(rows) == len(self.done):
            self.idle_kills += 1
        seen = hits(srv)
        for row in rows:
            self.done.setdefault(row, seen[path_of(self.urls[row])])
        for stats in self.out.glob("*" + STATS):
            base = stats.name[: -len(STATS)]
            for suffix in SHARD_FILES[self.fmt]:
                name = base + suffix
                self.frozen.setdefault(name, file_id(self.out / name))

    def check(self, srv: ImageServer) -> None:
        """After the last run: nothing the ledger held was fetched again, no committed shard rewritten."""
        problems = []
        now = {name: file_id(self.out / name) for name in self.frozen if (self.out / name).exists()}
        changed = sorted(name for name, fid in self.frozen.items() if now.get(name) != fid)
        if changed:
            problems.append(f"committed shard files were rewritten or removed by a resume: {changed}")
        seen = hits(srv)
        again = sorted(r for r, count in self.done.items() if seen[path_of(self.urls[r])] != count)
        if again:
            problems.append(
                f"{len(again)} rows the ledger held at a kill were fetched again: {again[:10]}"
                f" (hits then/now: {[(self.done[r], seen[path_of(self.urls[r])]) for r in again[:5]]})"
            )
        assert not problems, "\n".join(problems)


# ---- the end state ---------------------------------------------------------------------------------


def read_tar(path: Path) -> list[tuple[str, int, bytes]]:
    """Every member of a tar as (name, offset of its data, data), read to the end."""
    size = path.stat().st_size
    assert size % tarfile.RECORDSIZE == 0, f"{path.name}: {size} bytes is not whole 10 KiB records"
    members: list[tuple[str, int, bytes]] = []
    end = 0
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            assert info.isfile(), (path.name, info.name)
            fh = tar.extractfile(info)
            assert fh is not None
            data = fh.read()
            assert len(data) == info.size, f"{path.name}: member {info.name} is truncated"
            members.append((info.name, info.offset_data, data))
            end = info.offset_data + info.size + (-info.size) % tarfile.BLOCKSIZE
    with open(path, "rb") as fh:
        fh.seek(end)
        tail = fh.read()
    assert len(tail) >= 2 * tarfile.BLOCKSIZE and tail.count(0) == len(tail), (
        f"{path.name} does not end with the end-of-archive blocks after its last member"
    )
    return members


def check_final(out: Path, rows: Rows, fmt: str, size: int, state: Path | None = None) -> None:
    """The end state of a completed run, whatever happened to the runs before it."""
    state = out / ".imgfetch" if state is None else state
    n = len(rows.urls)
    nshards = -(-n // size)
    data_suffix = DATA[fmt]

    # One manifest record per row, each in its own base shard under its index key.
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text("utf-8").splitlines()]
    assert sorted(r["row"] for r in records) == list(range(n)), "exactly one manifest record per row"
    by_row = {r["row"]: r for r in records}
    for row, rec in by_row.items():
        assert rec["url"] == rows.urls[row]
        assert rec["status"] == ("failed" if row in rows.failing else "ok"), rec
        assert rec["key"] == expected_key(row, size), rec
        assert rec["shard"] == f"{row // size:05d}{data_suffix}", rec
        assert "offset" not in rec and "size" not in rec, "offsets are in the per-shard Parquet only"
    ok = {row for row, rec in by_row.items() if rec["status"] == "ok"}

    # The ledger: every row final, every shard committed.
    assert ledger_rows(state) == {r: by_row[r]["status"] for r in range(n)}
    assert ledger_shards(state) == dict.fromkeys(range(nshards), "committed")

    # Published files: exactly the shards' files; no temporaries anywhere; staging empty.
    names = {p.name for p in out.iterdir() if SHARD_NAME.match(p.name)}
    expected = {f"{s:05d}{suffix}" for s in range(nshards) for suffix in SHARD_FILES[fmt]}
    assert names == expected, f"missing {sorted(expected - names)}, unexpected {sorted(names - expected)}"
    temporaries = [p for p in out.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert temporaries == [], "no temporary file survives"
    staging = state / "staging"
    assert not staging.exists() or sorted(p.name for p in staging.iterdir()) == [], "staging is empty"

    index = json.loads((out / "shards.json").read_text("utf-8"))
    listed = [(e["url"], e["nsamples"], e["filesize"]) for e in index["shardlist"]]
    shard_data = [out / f"{s:05d}{data_suffix}" for s in range(nshards)]
    in_shard = [{r for r in ok if r // size == s} for s in range(nshards)]
    assert listed == [(p.name, len(in_shard[s]), p.stat().st_size) for s, p in enumerate(shard_data)]

    keys: Counter[str] = Counter()  # ok keys with image bytes in a published shard
    listed_rows: Counter[int] = Counter()  # rows in the per-shard records
    for s, data_path in enumerate(shard_data):
        base = f"{s:05d}"
        stats = json.loads((out / (base + STATS)).read_text("utf-8"))
        shard_rows = set(range(s * size, min(n, (s + 1) * size)))
        assert (stats["count"], stats["successes"]) == (len(shard_rows), len(in_shard[s])), stats
        assert stats["filesize"] == data_path.stat().st_size, stats
        table = pq.read_table(out / (base + ".parquet")).to_pylist()
        assert {t["row"] for t in table} == shard_rows and len(table) == len(shard_rows)
        by_key = {t["key"]: t for t in table}
        for t in table:
            listed_rows[t["row"]] += 1
            rec = by_row[t["row"]]
            assert (t["key"], t["status"], t["sha256"]) == (rec["key"], rec["status"], rec["sha256"])
        if fmt == "webdataset":
            members = read_tar(data_path)
            sample_keys = [name.rpartition(".")[0] for name, _, _ in members]
            runs = [k for i, k in enumerate(sample_keys) if i == 0 or sample_keys[i - 1] != k]
            assert len(runs) == len(set(runs)), f"{data_path.name}: a sample's members are not adjacent"
            files = {name: (offset, data) for name, offset, data in members}
            assert len(files) == len(members), f"{data_path.name}: a member name occurs twice"
            for key in runs:
                assert {name for name in files if name.rpartition(".")[0] == key} == {
                    f"{key}.jpg",
                    f"{key}.json",
                }, key
                meta = json.loads(files[f"{key}.json"][1])
                rec = by_row[meta["row"]]
                assert rec["status"] == "ok" and rec["key"] == key, (key, rec)
                offset, image = files[f"{key}.jpg"]
                assert hashlib.sha256(image).hexdigest() == rec["sha256"] == meta["sha256"], key
                assert (offset, len(image)) == (by_key[key]["offset"], by_key[key]["size"]), key
                keys[key] += 1
            for t in table:
                if t["status"] == "ok":
                    assert t["size"] == t["bytes"] and t["key"] in runs, t
                else:
                    assert (t["offset"], t["size"]) == (None, None), t
        else:
            for t in table:
                rec = by_row[t["row"]]
                if rec["status"] != "ok":
                    assert t["image"] is None, rec
                    continue
                image = t["image"]["bytes"]
                assert hashlib.sha256(image).hexdigest() == rec["sha256"], rec
                keys[t["key"]] += 1
    assert listed_rows == Counter(range(n)), "every row in exactly one shard's records"
    assert keys == Counter(by_row[r]["key"] for r in ok), "every ok row's image in exactly one shard"


# ---- random kills ---------------------------------------------------------------------------------

#: Runs killed at most; the runs after them go uninterrupted.
KILLS = 9


@pytest.mark.slow
@pytest.mark.parametrize("loops", [1, 2])
@pytest.mark.parametrize("fmt", FORMATS)
def test_sigkill_at_random_moments_then_resume(
    srv: ImageServer, tmp_path: Path, fmt: str, loops: int
) -> None:
    """Killed at random moments, with one event loop or two (then a shard's samples are in two
    logs, each on its own host)."""
    rng = random.Random(f"shards-crash-{fmt}-{loops}")
    size = 25
    rows = make_rows(srv, tmp_path, 490, hosts=loops)  # 20 shards, the last one of 15 rows
    out = tmp_path / "out"
    args = command(rows, out, fmt, size, "-j", "4", "--per-host", "4", loops=loops)
    watch = Watch(out / ".imgfetch", out, fmt, rows.urls)
    for run in range(KILLS + 1):
        proc = start(args)
        if run >= KILLS:
            finish(proc)
            break
        if run == 0 or rng.random() < 0.3:
            # Anywhere from the interpreter starting to the first rows: imports, the ledger
            # opening, staging recovered from the last kill, shards published on resume.
            time.sleep(rng.uniform(0.0, 0.7))
        else:
            wait_for(proc, functools.partial(progressed, out, len(watch.done) + 20), "new rows")
            time.sleep(rng.uniform(0.0, 0.4))
        code, err = kill(proc)
        if code == 0:
            break
        assert code == -signal.SIGKILL, err
        watch.killed(srv)
    else:
        pytest.fail("the run never completed")
    print(f"{fmt}, {loops} loops: {watch.kills} kills, {watch.idle_kills} before any new row was recorded")
    assert watch.kills >= 6, "the run finished before most kills: make the list longer"
    assert len(watch.frozen) >= 3, "no shard was committed before a kill"
    check_final(out, rows, fmt, size)
    watch.check(srv)
    assert all(hits(srv)[path_of(u)] >= 1 for u in rows.urls)
    writers = Counter(shard for shard, _ in query(out / ".imgfetch", WRITERS_SQL))
    assert len(writers) == 20 and set(writers.values()) == {loops}, f"{loops} logs per shard: {writers}"

    # A resume of a complete run fetches nothing and writes no shard again.
    watch.note(srv)
    run_to_end(args)
    check_final(out, rows, fmt, size)
    watch.check(srv)


# ---- kills at each step of a commit ----------------------------------------------------------------

SMALL = 16  # shard size of the deterministic tests: rows 0-15, 16-31 and 32-39
SMALL_FAIL = (3, 18, 21, 37)
#: Concurrency of the small runs: all 40 rows in a few rounds of requests.
FAST = ("-j", "16", "--per-host", "16")


def staging_of(state: Path, base: str) -> set[str]:
    staging = state / "staging"
    return {p.name for p in staging.iterdir() if p.name.startswith(base)} if staging.exists() else set()


def out_of(out: Path, base: str) -> set[str]:
    return {p.name for p in out.iterdir() if p.name.startswith(base)}


TAR, PARQUET, STATS_1 = "00001.tar", "00001.parquet", "00001_stats.json"
LOG_0, LOG_1 = log_name(1, 0), log_name(1, 1)
LOGS = {LOG_0, LOG_1}
#: (format, event loops) -> step -> (the ledger's state of shard 1 then, the files of it that
#: must be in staging, those that may be there too, its files in the output).  One loop:
#: webdataset renames the log to the tar; parquet keeps the log until the shard is committed.
#: Two loops, webdataset: joining the logs may consume one of them (the largest becomes the
#: tar) or none (copied into a temporary), never both, until the shard is committed.
STEPS: dict[tuple[str, int], dict[str, tuple[str, set[str], set[str], set[str]]]] = {
    ("webdataset", 1): {
        "joined": ("open", {TAR}, set(), set()),
        "built": ("open", {TAR, PARQUET}, set(), set()),
        "staged": ("open", {TAR, PARQUET, STATS_1}, set(), set()),
        "sealed": ("sealed", {TAR, PARQUET, STATS_1}, set(), set()),
        "moved": ("sealed", {PARQUET, STATS_1}, set(), {TAR}),
        "published": ("sealed", set(), set(), {TAR, PARQUET, STATS_1}),
    },
    ("parquet", 1): {
        "built": ("open", {LOG_0, PARQUET}, set(), set()),
        "staged": ("open", {LOG_0, PARQUET, STATS_1}, set(), set()),
        "sealed": ("sealed", {LOG_0, PARQUET, STATS_1}, set(), set()),
        "moved": ("sealed", {LOG_0, STATS_1}, set(), {PARQUET}),
        "published": ("sealed", {LOG_0}, set(), {PARQUET, STATS_1}),
    },
    ("webdataset", 2): {
        "joining": ("open", LOGS, {TAR + ".join"}, set()),
        "joined": ("open", {TAR}, LOGS, set()),
        "built": ("open", {TAR, PARQUET}, LOGS, set()),
        "staged": ("open", {TAR, PARQUET, STATS_1}, LOGS, set()),
        "sealed": ("sealed", {TAR, PARQUET, STATS_1}, LOGS, set()),
        "moved": ("sealed", {PARQUET, STATS_1}, LOGS, {TAR}),
        "published": ("sealed", set(), LOGS, {TAR, PARQUET, STATS_1}),
    },
    ("parquet", 2): {
        "built": ("open", {LOG_0, LOG_1, PARQUET}, set(), set()),
        "sealed": ("sealed", {LOG_0, LOG_1, PARQUET, STATS_1}, set(), set()),
        "published": ("sealed", {LOG_0, LOG_1}, set(), {PARQUET, STATS_1}),
    },
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "loops", "step"),
    [(fmt, n, step) for (fmt, n), steps in STEPS.items() for step in steps],
    ids=lambda v: str(v),
)
def test_sigkill_at_each_step_of_a_commit(
    srv: ImageServer, tmp_path: Path, fmt: str, loops: int, step: str
) -> None:
    rows = make_rows(srv, tmp_path, 40, fail=SMALL_FAIL, hosts=loops)
    out = tmp_path / "out"
    state = out / ".imgfetch"
    args = command(rows, out, fmt, SMALL, *FAST, loops=loops)
    code, err = kill_at(start(args, step=(step, "00001")))
    assert code == -signal.SIGKILL, f"the run was not killed at {step}: {code} {err}"
    # Where the kill landed: these files of shard 1 in staging and in the output.
    ledger_state, must, may, published = STEPS[fmt, loops][step]
    assert ledger_shards(state)[1] == ledger_state
    staged = staging_of(state, "00001")
    assert must <= staged <= must | may, staged
    if loops > 1:
        assert len(LOGS - staged) <= 1, f"at most one log is consumed by the join: {staged}"
    assert out_of(out, "00001") == published
    assert set(sample_ends(state, 1)) == set(range(loops)), "shard 1's samples are in one log per loop"
    watch = Watch(state, out, fmt, rows.urls)
    watch.killed(srv)
    assert set(range(16, 32)) <= watch.done.keys(), "every row of the shard was in the ledger"
    run_to_end(args)
    check_final(out, rows, fmt, SMALL)
    watch.check(srv)


def kill_at(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """The driver kills itself; anything else is a failure to report.  Then anything it started
    (its loop processes) is killed too, as a kill of the process group would."""
    try:
        proc.wait(timeout=PROMPT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=PROMPT)
    return proc.returncode, err


# ---- crash states made by hand ----------------------------------------------------------------------


@dataclasses.dataclass
class Finished:
    rows: Rows
    out: Path


@pytest.fixture(scope="module")
def finished(srv: ImageServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Finished]:
    """One complete run per format, to copy and damage."""
    runs = {}
    for fmt in FORMATS:
        root = tmp_path_factory.mktemp(f"finished-{fmt}")
        rows = make_rows(srv, root, 40, fail=SMALL_FAIL)
        out = root / "out"
        run_to_end(command(rows, out, fmt, SMALL, *FAST))
        check_final(out, rows, fmt, SMALL)
        runs[fmt] = Finished(rows, out)
    return runs


def set_shard_state(state: Path, shard: int, value: str) -> None:
    with contextlib.closing(sqlite3.connect(state / "ledger.sqlite")) as db, db:
        db.execute(
            "UPDATE shards SET state = ?, nsamples = NULL, filesize = NULL WHERE shard = ?", (value, shard)
        )


def sealed_copy(done: Finished, tmp_path: Path, fmt: str) -> tuple[Path, list[str]]:
    """A copy of a finished run whose shard 1 the ledger holds as sealed; shard 1's file names."""
    out = tmp_path / "out"
    shutil.copytree(done.out, out, symlinks=True)
    (out / "shards.json").unlink()
    set_shard_state(out / ".imgfetch", 1, "sealed")
    return out, [f"00001{suffix}" for suffix in SHARD_FILES[fmt]]


@pytest.mark.slow
@pytest.mark.parametrize("published", ["none", "data", "all"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_sealed_shard_is_published_on_resume(
    srv: ImageServer, tmp_path: Path, finished: dict[str, Finished], fmt: str, published: str
) -> None:
    """Shard 1 sealed in the ledger with ``none``, its ``data`` files or ``all`` of its files in
    the output and the others back in staging (the stats file is published last), as a kill
    while publishing leaves it: the resume publishes it, fetching nothing."""
    done = finished[fmt]
    out, names = sealed_copy(done, tmp_path, fmt)
    state = out / ".imgfetch"
    original = {name: file_id(out / name)[1:] for name in names}
    left = {"none": 0, "data": len(names) - 1, "all": len(names)}[published]
    for name in names[left:]:
        os.replace(out / name, state / "staging" / name)
    before = hits(srv)
    run_to_end(command(done.rows, out, fmt, SMALL, *FAST))
    assert hits(srv) == before, "nothing is fetched again"
    assert {name: file_id(out / name)[1:] for name in names} == original, "the same files, published"
    check_final(out, done.rows, fmt, SMALL)
    # The stats file's numbers came back into the ledger.
    (nsamples, filesize), *_ = query(state, "SELECT nsamples, filesize FROM shards WHERE shard = 1")
    assert (nsamples, filesize) == (16 - 2, (out / f"00001{DATA[fmt]}").stat().st_size)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_sealed_shard_without_stats_file_loses_no_sample(
    srv: ImageServer, tmp_path: Path, finished: dict[str, Finished], fmt: str
) -> None:
    """Shard 1 sealed in the ledger, its data file back in staging and its stats file gone.

    No kill leaves this (the stats file is in staging before the ledger says sealed, and is
    published last), but a resume must not take it for a published shard and delete the
    samples: it either completes the shard or stops with an error, the samples kept."""
    done = finished[fmt]
    out, names = sealed_copy(done, tmp_path, fmt)
    state = out / ".imgfetch"
    data = names[0]
    original = file_id(out / data)[1:]
    os.replace(out / data, state / "staging" / data)
    (out / names[-1]).unlink()
    before = hits(srv)
    proc = start(command(done.rows, out, fmt, SMALL, *FAST))
    _, err = proc.communicate(timeout=PROMPT)
    assert hits(srv) == before, "nothing is fetched again"
    if proc.returncode != 0:
        assert "00001" in err, err
        assert file_id(state / "staging" / data)[1:] == original, "the staged samples are kept"
        return
    assert (out / data).exists() and file_id(out / data)[1:] == original, (
        f"exit 0, but shard 1's {data} is neither published nor kept in staging;"
        f" the ledger says {query(state, 'SELECT state, nsamples FROM shards WHERE shard = 1')}"
    )
    check_final(out, done.rows, fmt, SMALL)


def sample(key: str, data: bytes, meta: dict[str, Any]) -> bytes:
    """A sample's tar members (``key.jpg``, ``key.json``) as a sample log holds them."""
    parts = []
    for name, body in ((f"{key}.jpg", data), (f"{key}.json", json.dumps(meta).encode())):
        info = tarfile.TarInfo(name)
        info.size = len(body)
        info.mtime = int(time.time())
        info.mode = 0o644
        parts += [info.tobuf(tarfile.PAX_FORMAT), body, b"\0" * ((-len(body)) % tarfile.BLOCKSIZE)]
    return b"".join(parts)


#: The row that hangs in the tests below: it keeps shard 1 open.
HANG = 25


def kill_with_shard_1_open(
    srv: ImageServer, tmp_path: Path, fmt: str, loops: int
) -> tuple[Rows, Path, list[str], Watch]:
    """A run with ``loops`` event loops killed once every row but :data:`HANG` is recorded and
    shards 0 and 2 are committed: shard 1 open, one staging log per loop holding exactly the
    samples the ledger knows.  The input, the output, the command and the watch."""
    rows = make_rows(srv, tmp_path, 40, fail=SMALL_FAIL, hang=(HANG,), hosts=loops)
    out = tmp_path / "out"
    state = out / ".imgfetch"
    args = command(rows, out, fmt, SMALL, *FAST, loops=loops)
    proc = start(args)

    def all_but_one() -> bool:
        if manifest_lines(out) < 39:
            return False
        shards = ledger_shards(state)
        return shards.get(0) == shards.get(2) == "committed"

    wait_for(proc, all_but_one, "every row but the hanging one")
    code, err = kill(proc)
    assert code == -signal.SIGKILL, err
    assert ledger_shards(state)[1] == "open"
    ends = sample_ends(state, 1)
    assert set(ends) == set(range(loops)), f"one log per loop: {ends}"
    logs = {p.name for p in (state / "staging").iterdir()}
    assert logs == {log_name(1, w) for w in ends}, logs
    for writer, end in ends.items():
        size = (state / "staging" / log_name(1, writer)).stat().st_size
        assert size == end > 0, f"log {writer} holds exactly the recorded samples: {size} != {end}"
    watch = Watch(state, out, fmt, rows.urls)
    watch.killed(srv)
    assert len(watch.done) == 39
    return rows, out, args, watch


def garbage(tail: str) -> bytes:
    """What a kill can leave after a log's last recorded sample: half a sample (killed while
    appending it: ``cut-sample``) or a whole sample of a row the ledger never heard of and more
    (killed between the append and the ledger commit: ``unknown-sample``)."""
    key = expected_key(HANG, SMALL)
    image = imagegen.encode(imagegen.photo(30, 20, seed=99), "JPEG")
    whole = sample(key, image, {"key": key, "row": HANG, "sha256": hashlib.sha256(image).hexdigest()})
    return whole[: len(whole) // 2] if tail == "cut-sample" else whole + random.Random(5).randbytes(700)


def finish_with_the_hanging_row_failed(
    srv: ImageServer, rows: Rows, out: Path, args: list[str], watch: Watch, fmt: str
) -> None:
    """The resume that completes: the hanging row now times out; nothing else is fetched again."""
    run_to_end([*args, "--timeout", "0.5", "--retries", "0"])
    rows.failing.add(HANG)
    check_final(out, rows, fmt, SMALL)
    watch.check(srv)
    record = next(
        json.loads(line)
        for line in (out / "manifest.jsonl").read_text("utf-8").splitlines()
        if json.loads(line)["row"] == HANG
    )
    assert record["reason"] == "timeout", record


@pytest.mark.slow
@pytest.mark.parametrize("tail", ["cut-sample", "unknown-sample"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_sample_log_is_cut_back_to_the_ledger(
    srv: ImageServer, tmp_path: Path, fmt: str, tail: str
) -> None:
    """A run (one event loop) killed with shard 1 open (one row hangs), then bytes after the last
    recorded sample in its log (:func:`garbage`)."""
    rows, out, args, watch = kill_with_shard_1_open(srv, tmp_path, fmt, 1)
    with open(out / ".imgfetch" / "staging" / log_name(1, 0), "ab") as fh:
        fh.write(garbage(tail))
    finish_with_the_hanging_row_failed(srv, rows, out, args, watch, fmt)


@pytest.mark.slow
@pytest.mark.parametrize("dirty", ["0", "1", "both"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_of_two_sample_logs_is_cut_back_on_its_own(
    srv: ImageServer, tmp_path: Path, fmt: str, dirty: str
) -> None:
    """Two event loops, killed with shard 1 open: a log each.  Garbage after the last recorded
    sample of writer 0's log (half a sample), of writer 1's (an unknown sample) or of both: the
    resume cuts each log back to its own last recorded sample, before it fetches anything, and
    the other log keeps every byte."""
    rows, out, args, watch = kill_with_shard_1_open(srv, tmp_path, fmt, 2)
    state = out / ".imgfetch"
    staging = state / "staging"
    ends = sample_ends(state, 1)
    clean = {w: file_id(staging / log_name(1, w))[1:] for w in ends}
    tails = {0: garbage("cut-sample"), 1: garbage("unknown-sample")}
    for writer in (0, 1) if dirty == "both" else (int(dirty),):
        with open(staging / log_name(1, writer), "ab") as fh:
            fh.write(tails[writer])

    # A resume recovers staging before it fetches; the hanging row, asked for again, keeps shard 1 open.
    hang = path_of(rows.urls[HANG])
    asked = hits(srv)[hang]
    proc = start(args)
    wait_for(proc, lambda: hits(srv)[hang] > asked, "the hanging row requested again")
    code, err = kill(proc)
    assert code == -signal.SIGKILL, err
    assert ledger_shards(state)[1] == "open"
    assert sample_ends(state, 1) == ends, "no recorded sample was forgotten"
    assert {w: file_id(staging / log_name(1, w))[1:] for w in ends} == clean, (
        "each log is cut back to exactly its own last recorded sample"
    )
    watch.killed(srv)
    finish_with_the_hanging_row_failed(srv, rows, out, args, watch, fmt)
