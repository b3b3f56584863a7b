"""``--loops``: more event loops in their own processes, one pipeline, the same results.

Real servers on 127.0.0.x, real processes (forkserver from inside pytest, where
threads run; fork from the ``imgfetch`` command), real signals; no mocks.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

import imgfetch
from conftest import FAST, fetch
from imgfetch import api
from imgfetch.bench.server import ImageServer, Latency
from imgfetch.config import HttpConfig, build
from imgfetch.errors import ConfigError
from imgfetch.runners import loops
from test_resume import (
    CLI_BASE,
    PROMPT,
    assert_not_refetched,
    check_complete,
    done_urls,
    requests,
    tag,
    wait_for_progress,
    write_list,
)
from test_resume import srv as srv  # the module-scoped server of the resume tests (4 hosts, latency)

if TYPE_CHECKING:
    from pathlib import Path


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _cli(listing: Path, out: Path, *args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "imgfetch", str(listing), "-o", str(out), *CLI_BASE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _rerun_completes(srv: ImageServer, listing: Path, out: Path, urls: list[str], *args: str) -> None:
    """The next run finishes the list, with one outcome per row, refetching nothing done before."""
    first = done_urls(out, urls)
    before = requests(srv)
    proc = _cli(listing, out, *args, "-q")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    check_complete(out, urls)
    assert_not_refetched(before, requests(srv), first)


# ---- pure parts -------------------------------------------------------------------------


@pytest.mark.parametrize("loops_", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("total", [1, 2, 5, 16, 128, 1000])
def test_shares_split_all_of_j(loops_: int, total: int) -> None:
    parts = loops.weights(loops_)
    assert abs(sum(parts) - 1.0) < 1e-9
    got = loops.shares(total, parts)
    assert len(got) == loops_ and min(got) >= 1
    if total >= loops_:
        assert sum(got) == total
    if loops_ > 1 and total >= 16:
        assert got[0] < got[1], "the pipeline's own loop takes the smaller share"


def test_hosts_are_spread_by_weight_and_stay_put() -> None:
    parts = loops.weights(3)
    owners = loops.Owners(parts)
    hosts = [f"img{i}.example{i % 97}.com" for i in range(20_000)]
    seen = Counter(owners(h) for h in hosts)
    for i, part in enumerate(parts):
        assert abs(seen[i] / len(hosts) - part) < 0.02
    again = loops.Owners(parts)
    assert all(owners(h) == again(h) for h in hosts), "the same host always goes to the same loop"
    assert {loops.Owners([1.0])(h) for h in hosts[:100]} == {0}


def test_options_that_cannot_use_loops_are_refused() -> None:
    with pytest.raises(ConfigError, match="download-only"):
        imgfetch.config("list.txt", loops=2, size=64)
    with pytest.raises(ConfigError, match="async engine"):
        imgfetch.config("list.txt", loops=2, engine="threads")
    with pytest.raises(ConfigError, match="loops must be > 0"):
        imgfetch.config("list.txt", loops=0)
    assert imgfetch.config("list.txt", loops=1, size=64, engine="threads").loops == 1


def test_auto_uses_one_loop_where_loops_are_not_nearly_free() -> None:
    # With another thread running (as in a program that embeds imgfetch), forking is not safe.
    done = threading.Event()
    other = threading.Thread(target=done.wait)
    other.start()
    try:
        assert loops.count(build("list.txt")) == 1
        assert loops.count(build("list.txt", loops=3)) == 3
    finally:
        done.set()
        other.join()


@linux_only
def test_auto_in_a_plain_process_uses_a_loop_per_core() -> None:
    code = (
        "from imgfetch.runners import loops\n"
        "from imgfetch.config import build\n"
        "print(loops.count(build('l.txt')), loops.count(build('l.txt', concurrency=16)),"
        " loops.count(build('l.txt', size=64)), loops.count(build('l.txt', engine='threads')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    default_j = HttpConfig().concurrency
    expected = max(1, min(os.cpu_count() or 1, loops.AUTO_MAX, default_j // loops.MIN_PER_LOOP))
    assert out.split() == [str(expected), "1", "1", "1"]


def test_cli_loops_option(tmp_path: Path) -> None:
    listing = write_list(tmp_path / "l.txt", ["http://127.0.0.1:9/a.jpg"])
    bad = subprocess.run(
        [sys.executable, "-m", "imgfetch", str(listing), "--loops", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "error[bad-option]: argument --loops" in bad.stderr, bad.stderr
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgfetch",
            str(listing),
            "-o",
            str(tmp_path / "o"),
            "--loops",
            "2",
            "--size",
            "8",
        ],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1 and "error[bad-option]" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


# ---- the same results -------------------------------------------------------------------


def _comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "elapsed"} for r in records]


def test_every_loop_count_gives_the_same_files_and_manifest(tmp_path: Path, server: ImageServer) -> None:
    t = tag()
    urls = []
    for i in range(90):
        host = i % 3
        if i % 17 == 5:
            urls.append(server.url(f"_/status/404?{t}-{i}", host))
        elif i % 23 == 7:
            urls.append(f"htp://{t}/bad-{i}.jpg")
        elif i % 29 == 11:
            urls.append(server.url(f"_/corrupt?{t}-{i}", host))
        else:  # shared basenames across hosts: collision suffixes must not depend on the loop
            urls.append(
                server.url(f"_/as/{sorted(server.images)[i % len(server.images)]}/{t}/{i % 7}/x.jpg", host)
            )
    csv = tmp_path / "list.csv"
    csv.write_text("url,caption\n" + "".join(f"{u},cap {i}\n" for i, u in enumerate(urls)), encoding="utf-8")
    results = {
        n: fetch(tmp_path / f"l{n}", urls, listing=csv, loops=n, per_host=3, concurrency=8) for n in (1, 2, 3)
    }
    base = _comparable(results[1].records)
    assert {r["status"] for r in base} == {"ok", "failed"}
    assert all(r["extra"] == {"caption": f"cap {r['row']}"} for r in base), "extra columns carried"
    for n in (2, 3):
        assert _comparable(results[n].records) == base, f"--loops {n} differs from one loop"
        for rec in base:
            if rec["path"]:
                a = (results[1].out / rec["path"]).read_bytes()
                assert (results[n].out / rec["path"]).read_bytes() == a


def test_the_per_host_limit_holds_across_loops(tmp_path: Path) -> None:
    from imgfetch.demo import sample_images

    hosts = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
    with ImageServer(
        sample_images(), hosts=hosts, latency=Latency(median=0.03, kind="fixed"), catch_all=True
    ) as srv5:
        urls = [srv5.url(f"h/{i}.jpg", i % len(hosts)) for i in range(150)]
        result = fetch(tmp_path, urls, loops=3, per_host=2, concurrency=64)
        assert {r["status"] for r in result.records} == {"ok"}
        assert all(srv5.stats.peak[h] <= 2 for h in hosts), dict(srv5.stats.peak)
        assert sum(srv5.stats.by_host.values()) == len(urls)
    owners = loops.Owners(loops.weights(3))
    assert len({owners(h) for h in hosts}) > 1, "the hosts were really spread over several loops"


def test_a_stopped_run_records_nothing_it_did_not_finish(tmp_path: Path, srv: ImageServer) -> None:
    """Stop (Ctrl-C in the API) while the loop processes hold rows; the next run completes."""
    t = tag()
    urls = [srv.url(f"st{t}/{i}/a{i % 11}.jpg", i % 4) for i in range(400)]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    cfg = imgfetch.config(listing, out, loops=2, folder_size=500, **{**FAST, "concurrency": 16})
    run = api.prepare(cfg)
    seen = 0

    def count(_outcome: object) -> None:
        nonlocal seen
        seen += 1
        if seen == 60:
            run.stop(grace=0.0)

    run.on_outcome = count
    summary = api.execute(run)
    assert summary.interrupted and 60 <= summary.total < len(urls)
    first = done_urls(out, urls)
    before = requests(srv)
    summary = imgfetch.download(listing, out, loops=2, folder_size=500, **{**FAST, "concurrency": 16})
    assert not summary.interrupted and summary.already_done == len(first)
    check_complete(out, urls)
    assert_not_refetched(before, requests(srv), first)


# ---- processes and signals (the command forks its loops) --------------------------------


@linux_only
@pytest.mark.slow
def test_kill_9_of_the_pipeline_takes_its_loops_along_and_loses_nothing(
    srv: ImageServer, tmp_path: Path
) -> None:
    t = tag()
    urls = [srv.url(f"k9{t}/{i}/p{i % 37}.jpg", i % 4) for i in range(1500)]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    proc = _cli(listing, out, "--loops", "3", "-q")
    wait_for_progress(out, proc, 100)
    kids = _children(proc.pid)
    assert len(kids) == 2, "two loop processes besides the pipeline's own loop"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=PROMPT)
    deadline = time.monotonic() + PROMPT
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_alive(k) for k in kids), "the loop processes died with the pipeline"
    assert 0 < len(done_urls(out, urls)) < len(urls)
    _rerun_completes(srv, listing, out, urls, "--loops", "3")


@linux_only
@pytest.mark.slow
def test_a_loop_process_that_dies_stops_the_run_cleanly(srv: ImageServer, tmp_path: Path) -> None:
    t = tag()
    urls = [srv.url(f"ld{t}/{i}/p{i % 13}.jpg", i % 4) for i in range(1500)]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    proc = _cli(listing, out, "--loops", "2")
    wait_for_progress(out, proc, 100)
    (kid,) = _children(proc.pid)
    os.kill(kid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=PROMPT)
    assert proc.returncode == 1, stderr
    assert "error[workers-failed]" in stderr and "event-loop process" in stderr, stderr
    assert "Traceback" not in stderr
    _rerun_completes(srv, listing, out, urls, "--loops", "2")


@linux_only
@pytest.mark.slow
def test_ctrl_c_to_the_whole_process_group_stops_like_one_loop(srv: ImageServer, tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches every process of the group: the loop processes ignore it and
    the pipeline stops them; the summary is printed and the rerun completes."""
    t = tag()
    urls = [srv.url(f"cc{t}/{i}/p{i % 19}.png", i % 4) for i in range(1500)]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    proc = _cli(listing, out, "--loops", "2", start_new_session=True)
    wait_for_progress(out, proc, 100)
    kids = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=PROMPT)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert kids and not any(_alive(k) for k in kids), "the pipeline waited for its loop processes"
    _rerun_completes(srv, listing, out, urls, "--loops", "2")


def test_crc32_is_what_owners_use() -> None:
    """Owners must not depend on Python's per-process string hash (the loops are other processes)."""
    owners = loops.Owners([0.5, 0.5])
    for host in ("a.example", "127.0.0.1", "b\u00e9.example"):
        assert owners(host) == (zlib.crc32(host.encode()) >= 2**31)


def _can_mount_tmpfs() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare and a tmpfs mount in a user namespace")
@pytest.mark.parametrize("n", ["1", "2"])
def test_a_full_disk_stops_the_run_with_one_line_whichever_loop_writes(
    tmp_path: Path, server: ImageServer, n: str
) -> None:
    """The output folder is a 400 kB tmpfs (a private mount namespace): the write that finds it
    full (ENOSPC, in the pipeline's loop or in a loop process) stops the run: exit 1, one line."""
    # One host, which two loops give to the loop process: with --loops 2 every file is written there,
    # so the error travels from the loop process to the pipeline.
    assert loops.Owners(loops.weights(2))(server.hosts[0]) == 1
    names = sorted(server.images)
    urls = [server.url(f"_/as/{names[i % len(names)]}/{tag()}/{i}.jpg", 0) for i in range(400)]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "imgfetch", str(listing), "-o", str(out), *CLI_BASE, "-q", "--loops", n]
    script = f"mount -t tmpfs -o size=400k tmpfs {shlex.quote(str(out))} && exec {shlex.join(cmd)}"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("imgfetch: error[bad-output]:"), proc.stderr
    assert "No space left" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@linux_only
def test_auto_loops_for_shards_leave_fetching_to_the_loop_processes(srv: ImageServer, tmp_path: Path) -> None:
    """With a shard format and --loops auto, the pipeline's own loop fetches nothing: with two
    loops one process writes every sample (one staging log per shard, published by a rename).
    An explicit --loops N keeps N loops fetching, each with its own log."""
    t = tag()
    urls = [srv.url(f"sh{t}/{i}/p{i % 11}.jpg", i % 4) for i in range(60)]
    listing = write_list(tmp_path / "list.txt", urls)
    code = (
        "from imgfetch.runners import loops\nfrom imgfetch.config import build\n"
        f"print(loops.count(build({str(listing)!r}, output_format='webdataset', concurrency=256)))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    chosen = int(run.stdout)  # what auto chooses in a plain process, on this machine
    owners = loops.Owners(loops.weights(2))
    hosts = {u.split("/")[2].rsplit(":", 1)[0] for u in urls}
    for name, args, writers in [
        ("auto", (), {1} if chosen > 1 else {0}),
        ("explicit", ("--loops", "2"), {owners(h) for h in hosts}),
    ]:
        out = tmp_path / name
        shards = ("--output-format", "webdataset", "--shard-size", "30", "-j", "256")  # -j: auto's 2 loops
        proc = _cli(listing, out, *shards, "-q", *args)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        with sqlite3.connect(out / ".imgfetch" / "ledger.sqlite") as db:
            seen = {w for (w,) in db.execute("SELECT DISTINCT writer FROM outcomes WHERE writer IS NOT NULL")}
        assert seen == writers, (name, seen)
