"""``imgfetch demo``: a real download, offline, through the same pipeline as any run.

It starts the local image server on 127.0.0.1 and 127.0.0.2 with the photos
bundled in ``imgfetch/samples``, writes a URL list that also holds a few
typical faults (a 404, an HTML page posing as a JPEG, a flaky host, a
redirect chain, a JPEG served as octet-stream, two files with the same
name), downloads it, and prints the summary and a few manifest lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from imgfetch import api
from imgfetch.bench.server import ImageServer, Latency
from imgfetch.report import format_summary

if TYPE_CHECKING:
    from collections.abc import Sequence


def sample_images() -> dict[str, bytes]:
    folder = resources.files("imgfetch") / "samples"
    return {
        entry.name: entry.read_bytes() for entry in folder.iterdir() if entry.name.endswith((".jpg", ".png"))
    }


def demo_urls(srv: ImageServer, names: Sequence[str]) -> list[str]:
    urls = [srv.url(f"img/{name}", host) for host in (0, 1) for name in names]  # same names on two hosts
    urls += [
        srv.url("_/status/404"),
        srv.url("_/html-as-jpeg"),
        srv.url("_/flaky/demo/1/503", 1),
        srv.url(f"_/redirect/2/{names[0]}"),
        srv.url(f"_/octet/{names[-1]}"),
        "ftp://example.invalid/cat.jpg",
    ]
    return urls


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="imgfetch demo", description=__doc__)
    ap.add_argument("-o", "--out", type=Path, default=Path("imgfetch-demo"), help="default: ./imgfetch-demo")
    args = ap.parse_args(argv)
    images = sample_images()
    with ImageServer(images, hosts=("127.0.0.1", "127.0.0.2"), latency=Latency(median=0.05)) as srv:
        urls = demo_urls(srv, sorted(images))
        with tempfile.TemporaryDirectory() as tmp:
            listing = Path(tmp) / "demo.txt"
            listing.write_text("# imgfetch demo list\n" + "\n".join(urls) + "\n", encoding="utf-8")
            print(
                f"imgfetch demo: serving {len(images)} photos on {srv.base(0)} and {srv.base(1)}",
                file=sys.stderr,
            )
            print(f"imgfetch demo: downloading {len(urls)} URLs into {args.out}/", file=sys.stderr)
            try:
                # trust_env=False: a proxy set for the internet must not swallow loopback traffic.
                summary = api.download(
                    listing, args.out, overwrite=True, retries=2, backoff_base=0.1, trust_env=False
                )
            except api.ImgfetchError as exc:
                print(f"imgfetch: error[{exc.code}]: {exc}", file=sys.stderr)
                return 1
    manifest = args.out / "manifest.jsonl"
    print(format_summary(summary, args.out, manifest), file=sys.stderr)
    print("\nfirst manifest records:", file=sys.stderr)
    with open(manifest, encoding="utf-8") as fh:
        for line, _ in zip(fh, range(4), strict=False):
            rec = json.loads(line)
            keep = ("row", "status", "reason", "http_status", "format", "width", "height", "path")
            print("  " + json.dumps({k: rec[k] for k in keep}), file=sys.stderr)
    expected_ok = 2 * len(images) + 3
    return 0 if summary.ok == expected_ok else 1
