"""The classic approach the seed articles teach, written out for the comparison.

``python -m imgfetch.bench.classic LIST OUT [--threads 10] [--size N]`` (the bench runs this file as a
script, so that its figures include no import of imgfetch)

A ``multiprocessing.pool.ThreadPool(10)`` maps a function over the URLs; the
function calls ``requests.get(url, stream=True)`` (no session: a new connection
per request), retries while the status is not 200 up to 5 times exactly as the
seed does, checks that the Content-Type says image, and saves.  Two honest
changes so that it does the same work as the others: download-only writes the
bytes as received (the seed re-encodes every image through Pillow, which is
the resize workload's job), and files are named ``ROW-basename`` so that rows
sharing a basename do not overwrite each other.  With ``--size N`` the image
is decoded, shrunk to fit N x N with ``Image.thumbnail`` and saved in its own
format, as the seed's resize mode does.
"""

from __future__ import annotations

import argparse
import io
import sys
from multiprocessing.pool import ThreadPool
from pathlib import Path

import requests
from PIL import Image


def image_name(url: str) -> str:
    name = url[url.rfind("/") + 1 :]
    return name.split("?", 1)[0] or "image.jpg"


def download(job: tuple[int, str], out: Path, size: int | None) -> bool:
    row, url = job
    try:
        res = requests.get(url, stream=True, timeout=60)
        count = 1
        while res.status_code != 200 and count <= 5:
            res = requests.get(url, stream=True, timeout=60)
            count += 1
        if "image" not in res.headers.get("content-type", ""):
            return False
        path = out / f"{row:06d}-{image_name(url)}"
        if size is None:
            path.write_bytes(res.content)
            return True
        img: Image.Image = Image.open(io.BytesIO(res.content))
        fmt = img.format
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
        if fmt == "JPEG" and img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        img.save(path, fmt)
        return True
    except (requests.RequestException, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("list", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--threads", type=int, default=10)
    ap.add_argument("--size", type=int)
    args = ap.parse_args(argv)
    urls = [line.strip() for line in args.list.read_text().splitlines() if line.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPool(args.threads) as pool:
        results = pool.imap_unordered(lambda job: download(job, args.out, args.size), enumerate(urls))
        ok = sum(results)
    print(f"classic: {ok} of {len(urls)} saved", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
