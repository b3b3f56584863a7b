"""Peak memory end to end at 100k and 1M rows, and resume start-up over a finished run.

``python benchmarks/resume_memory.py --rows 100000 1000000 --formats txt parquet``

Starts ``python -m imgfetch.bench.server`` (a separate process, four loopback hosts,
no latency, every path a tiny image), writes a txt or Parquet list of N unique
URLs, runs the real ``imgfetch`` command on it and reads the peak RSS of that
process (and its children, if any) with GNU time.  With ``--resume`` it then
runs the same command again over the finished output (nothing left to do) and
times it: that is the resume start-up (fingerprint, reconciliation of every
folder, the merge-join of the input against the ledger).  Results are printed
as a Markdown table and appended as JSON lines to ``--results``.

Not a test: 1M rows take a quarter of an hour or more on two cores and write
a million small files (about 4 GB of blocks, a million inodes) under ``--work``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

HOSTS = 4
TIME = shutil.which("time", path="/usr/bin:/bin") or shutil.which("gtime")


def tiny_images(folder: Path) -> None:
    """Two images of a few hundred bytes: the server's whole repertoire."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, fmt, colour in (("a.jpg", "JPEG", (200, 60, 40)), ("b.png", "PNG", (30, 90, 200))):
        buf = io.BytesIO()
        Image.new("RGB", (16, 12), colour).save(buf, fmt)
        (folder / name).write_bytes(buf.getvalue())


def start_server(images: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgfetch.bench.server", str(images), "--hosts", str(HOSTS), "--catch-all"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def url(port: int, i: int) -> str:
    return f"http://127.0.0.{i % HOSTS + 1}:{port}/b/{i}/img{i % 1000}.jpg"


def write_list(path: Path, fmt: str, rows: int, port: int) -> None:
    if fmt == "txt":
        with path.open("w", encoding="utf-8") as fh:
            for start in range(0, rows, 100_000):
                fh.write("".join(url(port, i) + "\n" for i in range(start, min(rows, start + 100_000))))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("url", pa.string()), ("key", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 100_000):
            ids = list(range(start, min(rows, start + 100_000)))
            writer.write_table(pa.table({"url": [url(port, i) for i in ids], "key": ids}, schema=schema))


def run(cmd: list[str], work: Path) -> dict[str, Any]:
    """Run ``cmd`` under GNU time: wall and CPU seconds, peak RSS in MB.

    Not ``wait4`` from this process: Linux carries a parent's RSS at fork over
    into the child's ``ru_maxrss``, and this process holds the URL lists and
    pyarrow; GNU time is a small parent, so its figure is imgfetch's own.
    """
    if TIME is None:
        raise SystemExit("needs GNU time (/usr/bin/time) to measure the peak RSS of imgfetch alone")
    usage = work / "time.txt"
    started = time.monotonic()
    proc = subprocess.run(
        [TIME, "-o", str(usage), "-f", "%U %S %M", *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    user, system, max_kb = usage.read_text().split()[-3:]
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(float(user) + float(system), 2),
        "peak_rss_mb": round(int(max_kb) / 1024, 1),  # GNU time reports KiB
        "stderr": proc.stderr.strip().splitlines()[-3:],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--formats", nargs="+", default=["txt", "parquet"], choices=["txt", "parquet"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/imgfetch-resume-bench"))
    ap.add_argument("--resume", action="store_true", help="also time a resume over each finished run")
    ap.add_argument("--keep", action="store_true", help="keep the output folders")
    ap.add_argument(
        "--reuse", action="store_true", help="skip the full run where a kept output folder exists"
    )
    ap.add_argument("--results", type=Path, help="append JSON lines here")
    ap.add_argument("imgfetch_args", nargs="*", help="extra imgfetch options (after --)")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    tiny_images(args.work / "images")
    server, port = start_server(args.work / "images")
    common = ["--no-proxy-env", "--no-progress", "-j", "256", "--per-host", "64", *args.imgfetch_args]
    results: list[dict[str, Any]] = []
    try:
        for rows in args.rows:
            for fmt in args.formats:
                listing = args.work / f"list-{rows}.{fmt}"
                if not (args.reuse and listing.exists()):
                    write_list(listing, fmt, rows, port)
                out = args.work / f"out-{rows}-{fmt}"
                cmd = [sys.executable, "-m", "imgfetch", str(listing), "-o", str(out), *common]
                if not (args.reuse and (out / "manifest.jsonl").exists()):
                    shutil.rmtree(out, ignore_errors=True)
                    res = {"rows": rows, "format": fmt, "phase": "full run", **run(cmd, args.work)}
                    res["rows_per_s"] = round(rows / res["wall_s"], 1)
                    results.append(res)
                    print(json.dumps(res), file=sys.stderr, flush=True)
                if args.resume:
                    again = {
                        "rows": rows,
                        "format": fmt,
                        "phase": "resume, nothing to do",
                        **run(cmd, args.work),
                    }
                    results.append(again)
                    print(json.dumps(again), file=sys.stderr, flush=True)
                if not args.keep:
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        server.terminate()
        server.wait(10)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\n{machine}\n")
    print("| rows | input | phase | wall s | CPU s | rows/s | peak RSS MB |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for r in results:
        rate = r.get("rows_per_s", "")
        print(
            f"| {r['rows']:,} | {r['format']} | {r['phase']} | {r['wall_s']} | {r['cpu_s']} "
            f"| {rate} | {r['peak_rss_mb']} |"
        )
    if args.results:
        with args.results.open("a", encoding="utf-8") as fh:
            for r in results:
                fh.write(json.dumps({**r, "machine": machine}) + "\n")


if __name__ == "__main__":
    main()
