"""Processing: the ceiling of ``images.process`` on all cores, and the fast path's quality.

``python benchmarks/processing.py [--count 500] [--size 256] [--cache DIR]``

1. Ceiling: every corpus image, held in memory, through ``imgfetch.images.process``
   (``--size 256``, fit, the same options ``imgfetch --size 256`` uses) in a
   process pool with one worker per core: images/s and CPU seconds per 1000 images.
   The same function as ``imgfetch bench`` (``imgfetch.bench.processing_ceiling``).
   This is the physical limit for end-to-end ``imgfetch --size 256`` on this
   machine; ``imgfetch bench`` (workload W2) compares the end-to-end run with it.
2. Quality: for every JPEG of the corpus, the fast path (DCT-domain ``draft``
   decode, then LANCZOS) against a full decode + LANCZOS to the same size, both
   written losslessly (PNG) so only the resizing differs: mean and 5th
   percentile PSNR in dB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from imgfetch import images
from imgfetch.bench import corpus, processing_ceiling
from imgfetch.config import ImageConfig


def ceiling(folder: Path, names: list[str], size: int, workers: int) -> dict[str, Any]:
    """images/s of process() alone over in-memory bytes on ``workers`` processes (as imgfetch bench)."""
    r = processing_ceiling(folder, names, size, workers)
    return {
        "images": r.urls,
        "processed": r.valid,
        "workers": workers,
        "seconds": round(r.wall_s, 3),
        "images_per_s": round(r.images_per_s, 1),
        "cpu_s_per_1000": round(r.cpu_per_1000, 2),
    }


def _decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def quality(blobs: list[bytes], size: int) -> dict[str, Any]:
    cfg = ImageConfig(size=(size, size), resize="fit", format="png")
    scores = []
    for blob in blobs:
        if images.sniff(blob) != "JPEG":
            continue
        fast = images.process(blob, cfg, fast=True)
        full = images.process(blob, cfg, fast=False)
        if not isinstance(fast, images.Processed) or not isinstance(full, images.Processed):
            continue
        scores.append(images.psnr(_decoded(fast.data), _decoded(full.data)))
    scores.sort()
    finite = [s for s in scores if s != float("inf")]
    return {
        "jpegs": len(scores),
        "mean_psnr_db": round(statistics.fmean(finite), 2) if finite else float("inf"),
        "p5_psnr_db": round(scores[int(len(scores) * 0.05)], 2) if scores else None,
        "min_psnr_db": round(scores[0], 2) if scores else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "imgfetch" / "bench")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    folder = args.cache / "corpus"
    entries = corpus.build(folder, args.count, log=sys.stderr)
    print(corpus.describe(entries), file=sys.stderr)
    blobs = [(folder / e["name"]).read_bytes() for e in entries]
    result = {
        "ceiling": ceiling(folder, [e["name"] for e in entries], args.size, args.workers),
        "quality": quality(blobs, args.size),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
