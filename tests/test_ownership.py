"""imgfetch deletes and replaces only files it can prove it wrote.

A user's file in the output folder survives every kind of run (first, resumed,
``--retry-failed``, ``--overwrite``), also when it has exactly the name a row
gets: that row is recorded as failed (``write-error``) instead of replacing it.
The clean-up after a kill -9 still deletes a file a run renamed into place but
never recorded, because the run claimed it in its intent log first; an
unrecorded file no run claimed is left alone.  Real loopback servers, real
processes (``--loops 2`` and a SIGKILLed CLI run).
"""

from __future__ import annotations

import signal
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import imgfetch
from conftest import FAST, hits, key
from imgfetch.records import ledger as ledgers
from imgfetch.records.manifest import read_manifest
from imgfetch.runners import loops
from imgfetch.sinks.files import TEMP_PREFIX
from test_resume import check_complete, start, tag, wait_for_progress, write_list
from test_resume import srv as srv  # the module-scoped server of the resume tests (4 hosts, latency)

if TYPE_CHECKING:
    from pathlib import Path

    from imgfetch.bench.server import ImageServer

HOLIDAY = b"\xff\xd8 the user's own holiday photo"
TAKEN = b"\xff\xd8 the user's file that has the name a row gets"
NAME_TAKEN = "a file imgfetch did not write already has this name: 00000/rocket.jpg"


def records(out: Path) -> dict[int, dict[str, Any]]:
    return {int(r["row"]): r for r in read_manifest(out / "manifest.jsonl")}


def claims(out: Path) -> dict[str, int]:
    """Relative path -> inode of every claim in the intent logs."""
    return {c.rel: c.ino for c in ledgers.claims(out / ledgers.LEDGER_DIR) if not c.withdrawn}


def claimed_by(out: Path, writer: int) -> set[str]:
    log = ledgers.intent_log(out / ledgers.LEDGER_DIR, writer)
    return {line.split(" ", 1)[1] for line in log.read_text(encoding="utf-8").splitlines() if line[0] != "-"}


def unrecord(out: Path, row: int) -> None:
    """Drop ``row`` from the ledger: what a kill between the rename and the commit leaves."""
    with sqlite3.connect(out / ledgers.LEDGER_DIR / ledgers.LEDGER_FILE) as db:
        db.execute("DELETE FROM outcomes WHERE row = ?", (row,))
    db.close()


def plant(out: Path) -> None:
    (out / "00000").mkdir(parents=True)
    (out / "00000" / "holiday.jpg").write_bytes(HOLIDAY)
    (out / "00000" / "rocket.jpg").write_bytes(TAKEN)


def assert_planted(out: Path) -> None:
    assert (out / "00000" / "holiday.jpg").read_bytes() == HOLIDAY
    assert (out / "00000" / "rocket.jpg").read_bytes() == TAKEN


def assert_name_taken(rec: dict[str, Any]) -> None:
    assert (rec["status"], rec["reason"], rec["path"]) == ("failed", "write-error", None), rec
    assert rec["detail"] == NAME_TAKEN, rec


def test_users_files_survive_every_run(tmp_path: Path, server: ImageServer) -> None:
    k = key()
    urls = [server.url("img/rocket.jpg"), server.url("img/coins.png"), server.url(f"img/hubble.jpg?{k}")]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "myphotos"
    plant(out)

    first = imgfetch.download(listing, out, **FAST)
    assert (first.ok, first.failed) == (2, 1)
    assert_planted(out)
    recs = records(out)
    assert_name_taken(recs[0])
    assert [recs[1]["path"], recs[2]["path"]] == ["00000/coins.png", "00000/hubble.jpg"]

    again = imgfetch.download(listing, out, **FAST)
    assert again.already_done == 3 - again.total
    assert_planted(out)
    retried = imgfetch.download(listing, out, retry_all_failed=True, **FAST)
    assert (retried.total, retried.failed) == (1, 1)
    assert_planted(out)
    assert_name_taken(records(out)[0])

    wiped = imgfetch.download(listing, out, overwrite=True, **FAST)
    assert (wiped.total, wiped.ok, wiped.failed) == (3, 2, 1)
    assert_planted(out)
    assert_name_taken(records(out)[0])
    assert hits(server, urls[2]) == 2  # fetched by the first run and again after --overwrite
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    images = {f for f in files if not f.startswith(".imgfetch/")} - {"manifest.jsonl", "summary.json"}
    assert images == {"00000/holiday.jpg", "00000/rocket.jpg", "00000/coins.png", "00000/hubble.jpg"}


def test_hash_naming_still_shares_one_file_for_identical_images(tmp_path: Path, server: ImageServer) -> None:
    urls = [server.url("img/rocket.jpg"), server.url("img/rocket.jpg", 1)]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    summary = imgfetch.download(listing, out, name="hash", **FAST)
    assert summary.ok == 2
    recs = records(out)
    assert recs[0]["path"] == recs[1]["path"]


def _killed_after_rename(out: Path, row: int, recs: dict[int, dict[str, Any]]) -> str:
    """Turn ``row`` into a file renamed into place whose row never reached the ledger; the
    intent log still holds the claim the run made (logs are emptied on the next start)."""
    rel = str(recs[row]["path"])
    assert rel in claims(out), "the run claimed the file it wrote"
    unrecord(out, row)
    return rel


def test_kill_leftovers_are_deleted_only_when_claimed(tmp_path: Path, server: ImageServer) -> None:
    k = key()
    urls = [server.url(f"img/{n}?{k}") for n in ("rocket.jpg", "coins.png", "hubble.jpg", "coffee.jpg")]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    assert imgfetch.download(listing, out, **FAST).ok == 4
    recs = records(out)
    leftover = _killed_after_rename(out, 2, recs)
    # Row 3: unrecorded too, but its file has since been replaced by the user's (another inode).
    replaced = _killed_after_rename(out, 3, recs)
    (out / replaced).unlink()
    (out / replaced).write_bytes(b"\xff\xd8 the user's, saved under that name later")
    (out / "00000" / "stray.jpg").write_bytes(b"\xff\xd8 unrecorded and never claimed")

    summary = imgfetch.download(listing, out, **FAST)
    assert (summary.total, summary.ok, summary.failed, summary.already_done) == (2, 1, 1, 2)
    assert hits(server, urls[2]) == 2, "the leftover's row is fetched again"
    now = records(out)
    assert now[2]["path"] == leftover and (out / leftover).stat().st_size == now[2]["bytes"]
    assert (out / replaced).read_bytes() == b"\xff\xd8 the user's, saved under that name later"
    assert now[3]["status"] == "failed" and now[3]["detail"].endswith(replaced)
    assert (out / "00000" / "stray.jpg").read_bytes() == b"\xff\xd8 unrecorded and never claimed"
    assert set(claims(out)) == {leftover, replaced}, "emptied on start; this run's claims only"


def test_loop_processes_claim_their_files(tmp_path: Path, server: ImageServer) -> None:
    owners = loops.Owners(loops.weights(2))
    remote = next(h for h in range(3) if owners(server.url("", h).split("/")[2].rsplit(":", 1)[0]) == 1)
    home = next(h for h in range(3) if owners(server.url("", h).split("/")[2].rsplit(":", 1)[0]) == 0)
    k = key()
    urls = [
        server.url("img/rocket.jpg", remote),  # its name is the user's: refused in the loop process
        server.url(f"img/coins.png?{k}", remote),
        server.url(f"img/hubble.jpg?{k}", remote),
        server.url(f"img/coffee.jpg?{k}", home),
    ]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    plant(out)
    first = imgfetch.download(listing, out, loops=2, **FAST)
    assert (first.ok, first.failed) == (3, 1)
    assert_planted(out)
    recs = records(out)
    assert_name_taken(recs[0])
    assert claimed_by(out, 1) == {"00000/rocket.jpg", recs[1]["path"], recs[2]["path"]}
    assert claimed_by(out, 0) == {recs[3]["path"]}

    leftover = _killed_after_rename(out, 2, recs)
    (out / "00000" / "stray.jpg").write_bytes(b"\xff\xd8 unrecorded and never claimed")
    again = imgfetch.download(listing, out, loops=2, retry_all_failed=True, **FAST)
    assert (again.total, again.ok, again.failed) == (2, 1, 1)
    assert hits(server, urls[2]) == 2
    assert records(out)[2]["path"] == leftover
    assert_planted(out)
    assert (out / "00000" / "stray.jpg").exists()
    assert_name_taken(records(out)[0])

    wiped = imgfetch.download(listing, out, loops=2, overwrite=True, **FAST)
    assert (wiped.ok, wiped.failed) == (3, 1)
    assert_planted(out)
    assert (out / "00000" / "stray.jpg").exists()


def test_sigkill_then_resume_deletes_only_what_the_run_wrote(srv: ImageServer, tmp_path: Path) -> None:
    t = tag()
    urls = [srv.url(f"k{t}/{i}/f{i}.jpg", i % 4) for i in range(240)]
    listing = write_list(tmp_path / "list.txt", urls)
    out = tmp_path / "out"
    (out / "00000").mkdir(parents=True)
    mine = {
        "00000/holiday.jpg": HOLIDAY,
        "00000/f3.png": b"\x89PNG the user's, where row 3 may put its file",
        "00000/f5.jpg": b"\xff\xd8 the user's, where row 5 may put its file",
    }
    for rel, data in mine.items():
        (out / rel).write_bytes(data)
    for kill in range(3):
        proc = start(listing, out, "--loops", "2", "-j", "32")
        wait_for_progress(out, proc, 20 + 60 * kill)
        time.sleep(0.05 * kill)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        for rel, data in mine.items():
            assert (out / rel).read_bytes() == data, rel
    proc = start(listing, out, "--loops", "2", "-q")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    for rel, data in mine.items():
        assert (out / rel).read_bytes() == data, rel
    for rel in mine:
        (out / rel).unlink()
    # Rows whose name a user's file holds failed; the rest are complete, with no stray file.
    failed = [r["row"] for r in records(out).values() if r["status"] == "failed"]
    for row in failed:
        assert records(out)[row]["detail"].startswith("a file imgfetch did not write already has this name")
    check_complete(out, urls, failed=failed)
    assert not list(out.rglob(f"{TEMP_PREFIX}*"))
