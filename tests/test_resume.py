"""Resume: the ledger, crash and Ctrl-C safety, changed-input detection, retrying failed rows.

The crash tests run the real ``imgfetch`` command in a subprocess against a
local server with latency and kill it (SIGKILL, SIGINT) at seeded random
moments, then rerun it until it completes and check the end state: one final
outcome per row in the ledger and the manifest, every file intact and known,
no temporaries, and no URL that was done before a kill fetched again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image
from yarl import URL

import imagegen
import imgfetch
from imgfetch.bench.server import ImageServer, Latency
from imgfetch.config import Naming
from imgfetch.errors import OutputError, ResumeConflict
from imgfetch.naming import Namer
from imgfetch.records import ledger as ledgers
from imgfetch.records.manifest import read_manifest
from imgfetch.sinks.files import TEMP_PREFIX, TEMP_SUFFIX

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
#: Options of every in-process run: loopback traffic must not meet a proxy; short back-offs.
BASE: dict[str, Any] = {"trust_env": False, "per_host": 4, "backoff_base": 0.01, "backoff_max": 0.05}
CLI_BASE = ["--no-proxy-env", "--per-host", "4", "-j", "16", "--folder-size", "500", "--no-progress"]
#: A safety net for a run that should end promptly, not a timing assertion.
PROMPT = 15.0


@pytest.fixture(scope="module")
def srv() -> Iterator[ImageServer]:
    """Four loopback hosts, 20-50 ms per request, any path an image (JPEG or PNG)."""
    images = {
        f"p{i}.{fmt.lower()}": imagegen.encode(imagegen.photo(24 + 8 * i, 16 + 4 * i, seed=i), fmt)
        for i, fmt in enumerate(["JPEG", "PNG", "JPEG", "PNG", "JPEG"])
    }
    latency = Latency(median=0.03, sigma=0.3, seed=4)
    with ImageServer(images, hosts=HOSTS, latency=latency, catch_all=True) as server:
        yield server


def tag() -> str:
    return uuid.uuid4().hex[:10]


def write_list(path: Path, urls: Sequence[str]) -> Path:
    path.write_text("".join(u + "\n" for u in urls), encoding="utf-8")
    return path


def requests(srv: ImageServer) -> Counter[str]:
    """A copy of the server's per-path request counts (taken while its thread may still count)."""
    while True:
        try:
            return Counter(dict(srv.stats.requests))
        except RuntimeError:  # changed size during the copy
            time.sleep(0.01)


def path_of(url: str) -> str:
    return URL(url).path_qs


def start(listing: Path, out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "imgfetch", str(listing), "-o", str(out), *CLI_BASE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ledger_rows(out: Path) -> dict[int, tuple[str, str | None]]:
    """The ledger's rows (row -> status, reason); empty when no run got as far as creating it."""
    if not ledgers.exists(out / ledgers.LEDGER_DIR):
        return {}
    ledger = ledgers.Ledger(out, out / "manifest.jsonl")
    try:
        return {row: (status, reason) for row, status, reason in ledger.statuses()}
    finally:
        ledger.close()


def done_urls(out: Path, urls: Sequence[str]) -> set[str]:
    return {urls[row] for row, (status, _) in ledger_rows(out).items() if status == "ok"}


def wait_for_progress(out: Path, proc: subprocess.Popen[str], rows: int) -> None:
    """Block until the manifest holds ``rows`` lines (so the run is under way, its signal
    handlers in place), or the run has ended."""
    deadline = time.monotonic() + 60
    manifest = out / "manifest.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and manifest.read_bytes().count(b"\n") >= rows:
            return
        time.sleep(0.05)
    assert proc.poll() is not None, "the run made no progress"


def check_complete(out: Path, urls: Sequence[str], failed: Sequence[int] = ()) -> list[dict[str, Any]]:
    """The end state of a completed run, whatever happened to the runs before it."""
    ledger = ledgers.Ledger(out, out / "manifest.jsonl")
    try:
        statuses = {row: status for row, status, _ in ledger.statuses()}
        ledger_lines = sorted(ledger.lines())
    finally:
        ledger.close()
    expected = {row: ("failed" if row in failed else "ok") for row in range(len(urls))}
    assert statuses == expected, "exactly one final outcome per row in the ledger"

    text = (out / "manifest.jsonl").read_text(encoding="utf-8")
    assert sorted(text.splitlines()) == ledger_lines, "the manifest mirrors the ledger"
    records = sorted(read_manifest(out / "manifest.jsonl"), key=lambda r: int(r["row"]))
    assert [r["row"] for r in records] == list(range(len(urls))), "one manifest record per row"

    namer = Namer(Naming(), 500, 0)
    for rec in records:
        assert rec["url"] == urls[rec["row"]]
        stem = namer.claim(rec["row"], rec["url"], {})
        if rec["status"] != "ok":
            continue
        path = out / rec["path"]
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == rec["sha256"], rec["path"]
        with Image.open(path) as im:
            im.load()
            assert (im.format, im.size) == (rec["format"], (rec["width"], rec["height"]))
        # The same name an uninterrupted run gives, whatever was redone when.
        assert rec["path"].rpartition(".")[0] == f"{namer.folder(rec['row'])}/{stem}"

    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    temporaries = [f for f in files if f.rpartition("/")[2].startswith(TEMP_PREFIX)]
    assert temporaries == [], "no temporary file survives"
    images = {f for f in files if not f.startswith(".imgfetch/")} - {"manifest.jsonl", "summary.json"}
    assert images == {r["path"] for r in records if r["status"] == "ok"}, "no file the ledger does not know"
    return records


def claim(out: Path, *paths: str, writer: int = 0) -> None:
    """Claim ``paths`` in an intent log as a fetch writer killed after renaming them would have."""
    log = ledgers.intent_log(out / ledgers.LEDGER_DIR, writer)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as fh:
        for rel in paths:
            fh.write(f"{os.stat(out / rel).st_ino} {rel}\n")


def assert_not_refetched(before: Counter[str], after: Counter[str], urls: set[str]) -> None:
    again = sorted(u for u in urls if after[path_of(u)] != before[path_of(u)])
    assert again == [], f"{len(again)} URLs done before an interruption were fetched again: {again[:3]}"


# ---- crashes and signals --------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(srv: ImageServer, tmp_path: Path) -> None:
    rng = random.Random(20240611)
    t = tag()
    # Shared basenames (p0..p36), so collision suffixes must come out the same on every resume.
    urls = [srv.url(f"k{t}/{i}/p{i % 37}.jpg", i % len(HOSTS)) for i in range(2000)]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    kills = 0
    done_before: dict[str, int] = {}  # URL done before some kill -> its request count then
    for run in range(12):
        proc = start(listing, out, "-q")
        if run < 3:
            # The first kill may land anywhere, start-up included; the others once the run is
            # under way, so that even on a slow machine each kill interrupts real work.
            if run > 0:
                wait_for_progress(out, proc, len(done_before) + 100)
            time.sleep(rng.uniform(0.2, 1.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=PROMPT)
            seen = requests(srv)
            for url in done_urls(out, urls):
                done_before.setdefault(url, seen[path_of(url)])
            continue
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        break
    else:
        pytest.fail("the run never completed")
    assert kills >= 2, "the run finished before most kills: make the list longer"
    assert done_before, "nothing was committed before the kills"
    check_complete(out, urls)
    seen = requests(srv)
    again = [u for u, count in done_before.items() if seen[path_of(u)] != count]
    assert again == [], f"URLs done before a kill were fetched again: {again[:3]}"
    assert all(seen[path_of(u)] >= 1 for u in urls)


@pytest.mark.slow
def test_sigint_exits_promptly_with_summary_and_resumes(srv: ImageServer, tmp_path: Path) -> None:
    rng = random.Random(7)
    t = tag()
    urls = [srv.url(f"i{t}/{i}/q{i % 23}.png", i % len(HOSTS)) for i in range(1500)]
    hung = [3, 6]  # in flight from the start and never answering: the exit must not wait for them
    for row in hung:
        urls[row] = srv.url(f"_/hang?{t}-{row}", row % len(HOSTS))
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"

    # One Ctrl-C: rows in flight get a grace period, then the run stops, flushes and summarises.
    proc = start(listing, out, "--timeout", "60")
    wait_for_progress(out, proc, 50)
    time.sleep(rng.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, stderr = proc.communicate(timeout=PROMPT)
    assert time.monotonic() - sent < PROMPT
    assert proc.returncode == 130, stderr
    assert "SIGINT" in stderr and "interrupted" in stderr, stderr
    assert re.search(r"\d[\d,]* ok, \d+ skipped, \d+ failed of [\d,]+ rows", stderr), stderr
    first = done_urls(out, urls)
    assert first and len(first) < len(urls) - len(hung)
    assert (out / "summary.json").exists()
    after_first = requests(srv)

    # Two Ctrl-Cs: out at once, and still nothing lost.
    proc = start(listing, out, "--timeout", "60")
    wait_for_progress(out, proc, len(first) + 20)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=PROMPT)
    assert proc.returncode == 130, stderr
    assert "interrupted again" in stderr, stderr
    second = done_urls(out, urls)
    assert first <= second
    after_second = requests(srv)
    assert_not_refetched(after_first, after_second, first)

    # The rerun completes; the hung rows now time out and are recorded as failed.
    proc = start(listing, out, "--timeout", "1", "--retries", "0")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "already done in earlier runs" in stderr
    records = check_complete(out, urls, failed=hung)
    assert {records[row]["reason"] for row in hung} == {"timeout"}
    assert_not_refetched(after_second, requests(srv), second)


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c(srv: ImageServer, tmp_path: Path) -> None:
    urls = [srv.url(f"t{tag()}/{i}/s{i % 7}.jpg", i % len(HOSTS)) for i in range(600)]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    proc = start(listing, out)
    wait_for_progress(out, proc, 20)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=PROMPT)
    assert proc.returncode == 130, stderr
    assert "SIGTERM" in stderr and "interrupted" in stderr, stderr
    done = done_urls(out, urls)
    before = requests(srv)
    proc = start(listing, out, "-q")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    check_complete(out, urls)
    assert_not_refetched(before, requests(srv), done)


def test_second_run_in_the_same_folder_is_refused(srv: ImageServer, tmp_path: Path) -> None:
    listing = write_list(tmp_path / "list.txt", [srv.url(f"l{tag()}/a.jpg")])
    out = tmp_path / "out"
    out.mkdir()
    holder = ledgers.Ledger(out, out / "manifest.jsonl")
    try:
        with pytest.raises(OutputError, match="another imgfetch"):
            imgfetch.download(listing, out, **BASE)
    finally:
        holder.close()
    assert imgfetch.download(listing, out, **BASE).ok == 1


# ---- what is redone ---------------------------------------------------------------------------


def test_leftovers_of_a_killed_run_are_reconciled(srv: ImageServer, tmp_path: Path) -> None:
    t = tag()
    urls = [srv.url(f"r{t}/{i}/f{i}.jpg", i % 2) for i in range(12)]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    first = imgfetch.download(listing, out, folder_size=5, **BASE)
    assert first.ok == 12
    records = {r["row"]: r for r in read_manifest(out / "manifest.jsonl")}
    before = requests(srv)
    # What a kill leaves: a temporary, renamed files whose rows never reached the ledger
    # (claimed in an intent log first, as a fetch writer does), plus a done row whose file
    # has gone.  Other files are the user's and stay, unclaimed image names included.
    (out / "00001" / f"{TEMP_PREFIX}0123456789abcdef{TEMP_SUFFIX}").write_bytes(b"partial")
    (out / "00001" / "orphan.png").write_bytes(b"\x89PNG not recorded")
    (out / "00003").mkdir()
    (out / "00003" / "f99.jpg").write_bytes(b"\xff\xd8 not recorded")
    claim(out, "00001/orphan.png", "00003/f99.jpg")
    (out / "00003" / "mine.jpg").write_bytes(b"\xff\xd8 the user's, never claimed")
    (out / "00000" / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "00000" / ".hidden.jpg").write_bytes(b"mine")
    (out / "holiday.jpg").write_bytes(b"mine, beside the image folders")
    (out / records[7]["path"]).unlink()

    again = imgfetch.download(listing, out, folder_size=5, **BASE)
    assert (again.total, again.ok, again.already_done) == (1, 1, 11)
    seen = requests(srv)
    assert [u for u in urls if seen[path_of(u)] != before[path_of(u)]] == [urls[7]]
    assert not (out / "00001" / "orphan.png").exists()
    assert not (out / "00003" / "f99.jpg").exists()
    assert not list(out.rglob(f"{TEMP_PREFIX}*"))
    for mine in ("00000/notes.txt", "00000/.hidden.jpg", "holiday.jpg", "00003/mine.jpg"):
        assert (out / mine).exists(), mine
    manifest = list(read_manifest(out / "manifest.jsonl"))
    assert sorted(r["row"] for r in manifest) == list(range(12))
    assert {r["row"]: r["path"] for r in manifest} == {row: r["path"] for row, r in records.items()}


def test_without_sub_folders_the_output_folder_is_reconciled(srv: ImageServer, tmp_path: Path) -> None:
    t = tag()
    # Every third row shares a name, so the resumed rows' suffixes depend on the skipped rows.
    urls = [srv.url(f"z{t}/{i}/{'same' if i % 3 == 0 else i}.jpg", i % 2) for i in range(15)]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    write_list(listing, urls[:9])
    assert imgfetch.download(listing, out, folder_size=0, **BASE).ok == 9
    (out / "orphan.jpg").write_bytes(b"renamed into place, never recorded")
    claim(out, "orphan.jpg")
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "mine.jpg").write_bytes(b"the user's, never claimed")
    write_list(listing, urls)
    summary = imgfetch.download(listing, out, folder_size=0, **BASE)
    assert (summary.total, summary.already_done) == (6, 9)
    assert not (out / "orphan.jpg").exists() and (out / "notes.txt").exists()
    assert (out / "mine.jpg").read_bytes() == b"the user's, never claimed"
    records = sorted(read_manifest(out / "manifest.jsonl"), key=lambda r: int(r["row"]))
    namer = Namer(Naming(), 0, 0)
    stems = [namer.claim(i, u, {}) for i, u in enumerate(urls)]
    assert [r["path"].rpartition(".")[0] for r in records] == stems
    assert stems[12] == "same-4"


def test_manifest_behind_the_ledger_is_rebuilt_without_fetching(srv: ImageServer, tmp_path: Path) -> None:
    urls = [srv.url(f"m{tag()}/{i}.png", i % 3) for i in range(30)]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    imgfetch.download(listing, out, **BASE)
    manifest = out / "manifest.jsonl"
    full = sorted(manifest.read_text(encoding="utf-8").splitlines())
    # A kill between the ledger commit and the manifest append, in the middle of a line.
    data = manifest.read_bytes()
    manifest.write_bytes(data[: len(data) // 2])
    before = requests(srv)
    summary = imgfetch.download(listing, out, **BASE)
    assert (summary.total, summary.already_done) == (0, 30)
    assert requests(srv) == before
    assert sorted(manifest.read_text(encoding="utf-8").splitlines()) == full


def test_retry_failed_redoes_only_transient_failures(srv: ImageServer, tmp_path: Path) -> None:
    t = tag()
    urls = [srv.url(f"ok{t}/{i}.jpg", i % 4) for i in range(6)]
    flaky = [srv.url(f"_/flaky/{t}-{i}/1/500", i % 4) for i in range(3)]  # 500 once, then an image
    gone = [srv.url(f"_/status/404?{t}-{i}", i % 4) for i in range(2)]
    rows = urls + flaky + gone
    listing = write_list(tmp_path / "list.txt", rows)
    out = tmp_path / "out"

    def run(**options: Any) -> tuple[imgfetch.Summary, Counter[str], dict[int, dict[str, Any]]]:
        before = requests(srv)
        summary = imgfetch.download(listing, out, retries=0, **BASE, **options)
        fetched = requests(srv) - before
        records = {r["row"]: r for r in read_manifest(out / "manifest.jsonl")}
        assert sorted(records) == list(range(len(rows))), "one record per row"
        assert sum(1 for _ in read_manifest(out / "manifest.jsonl")) == len(rows)
        return summary, fetched, records

    _, fetched, records = run()
    assert {records[i]["reason"] for i in range(6, 9)} == {"http-500"}
    assert {records[i]["reason"] for i in range(9, 11)} == {"http-404"}

    summary, fetched, _ = run()
    assert (summary.total, summary.already_done, sum(fetched.values())) == (0, 11, 0)

    summary, fetched, records = run(retry_failed=True)
    assert sorted(fetched) == sorted(path_of(u) for u in flaky), "only the transient failures"
    assert all(records[i]["status"] == "ok" for i in range(6, 9))
    assert summary.already_done == 8

    summary, fetched, records = run(retry_all_failed=True)
    assert sorted(fetched) == sorted(path_of(u) for u in gone)
    assert {records[i]["reason"] for i in range(9, 11)} == {"http-404"}
    assert (summary.total, summary.already_done) == (2, 9)


# ---- changed input and options ------------------------------------------------------------------


def test_changed_input_is_refused_unless_forced_and_a_grown_list_resumes(
    srv: ImageServer, tmp_path: Path
) -> None:
    t = tag()
    urls = [srv.url(f"c{t}/{i}/img{i}.jpg", i % 4) for i in range(10)]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    assert imgfetch.download(listing, out, **BASE).ok == 10

    # Appending rows keeps every old row's index: resuming is fine and fetches only the new rows.
    grown = [*urls, *(srv.url(f"c{t}/new/{i}.png", i % 4) for i in range(5))]
    write_list(listing, grown)
    before = requests(srv)
    summary = imgfetch.download(listing, out, **BASE)
    assert (summary.total, summary.ok, summary.already_done) == (5, 5, 10)
    assert sorted(requests(srv) - before) == sorted(path_of(u) for u in grown[10:])

    # Editing a row is another list: refused, with a one-line message, exit status 1.
    edited = list(grown)
    edited[3] = srv.url(f"c{t}/edited.jpg")
    write_list(listing, edited)
    proc = subprocess.run(
        [sys.executable, "-m", "imgfetch", str(listing), "-o", str(out), *CLI_BASE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "error[resume-conflict]" in proc.stderr and "input list changed" in proc.stderr
    assert "--overwrite" in proc.stderr and "--force" in proc.stderr

    # --force mixes: done rows stay done (row 3 keeps its old outcome), nothing is fetched.
    before = requests(srv)
    summary = imgfetch.download(listing, out, force=True, **BASE)
    assert (summary.total, summary.already_done) == (0, 15)
    assert requests(srv) == before

    # --overwrite starts afresh: the old files go, every row is fetched again.
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    assert list((out / "00000").glob("img3.*"))
    summary = imgfetch.download(listing, out, overwrite=True, **BASE)
    assert (summary.total, summary.ok, summary.already_done) == (15, 15, 0)
    assert not list((out / "00000").glob("img3.*")), "files of the previous run are deleted"
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    records = list(read_manifest(out / "manifest.jsonl"))
    assert sorted(r["row"] for r in records) == list(range(15))
    assert {r["url"] for r in records} == set(edited)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "index"}, "name url -> index"),
        ({"size": 32}, "size none -> 32x32"),
        ({"folder_size": 3}, "folder-size 10000 -> 3"),
        ({"format": "png"}, "format keep -> png"),
    ],
)
def test_changed_output_options_are_refused(
    srv: ImageServer, tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    urls = [srv.url(f"o{tag()}/{i}.jpg", i % 2) for i in range(4)]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    imgfetch.download(listing, out, **BASE)
    with pytest.raises(ResumeConflict, match=re.escape(message)):
        imgfetch.download(listing, out, **BASE, **options)
    # Options that do not shape the output may change freely.
    assert imgfetch.download(listing, out, **{**BASE, "per_host": 2}, concurrency=3).already_done == 4
    summary = imgfetch.download(listing, out, force=True, **BASE, **options)
    assert (summary.total, summary.already_done) == (0, 4)


def test_a_manifest_without_ledger_is_refused_or_imported(srv: ImageServer, tmp_path: Path) -> None:
    urls = [srv.url(f"n{tag()}/{i}.jpg", i % 2) for i in range(6)]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    imgfetch.download(listing, out, **BASE)
    shutil.rmtree(out / ".imgfetch")  # the state folder deleted: ledger, lock and intent logs
    with pytest.raises(ResumeConflict, match="no resume ledger"):
        imgfetch.download(listing, out, **BASE)
    before = requests(srv)
    summary = imgfetch.download(listing, out, force=True, **BASE)
    assert (summary.total, summary.already_done) == (0, 6)
    assert requests(srv) == before
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["already_done"] == 6


@pytest.mark.parametrize(
    ("before", "after", "why"),
    [
        (b"a\nb\n", b"a\nb\n", None),
        (b"a\nb\n", b"a\nb\nc\n", None),
        (b"a\nb", b"a\nb\nc\n", None),  # a final line break added, then rows: row b is unchanged
        (b"a\nb", b"a\nb\r\nc", None),
        (b"a\nb", b"a\nbc\n", "was extended"),
        (b"a\nb\n", b"a\nB\nc\n", "differs in its first 4 bytes"),
        (b"a\nb\n", b"a\n", "shorter than before"),
        (b"", b"a\n", None),
    ],
)
def test_input_fingerprint_allows_a_list_that_only_grew(
    tmp_path: Path, before: bytes, after: bytes, why: str | None
) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(before)
    old, _ = ledgers.compare_input(path, None)
    path.write_bytes(after)
    new, reason = ledgers.compare_input(path, old)
    assert new.size == len(after)
    if why is None:
        assert reason is None
    else:
        assert reason is not None and why in reason
