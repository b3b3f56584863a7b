"""A deterministic corpus of real photos at realistic web sizes, for the benchmarks.

``python -m imgfetch.bench.corpus DIR --count 1000 --seed 0`` writes ``DIR/00000.jpg``...
and ``DIR/index.json`` (name, format, width, height, bytes, sha256 of each file).

The pixels come from the photos that scikit-image ships (``skimage.data``: the
astronaut, the cat, the coffee cup, the rocket, the Hubble deep field, the
motorcycle, a retina, a stained tissue slide...), cropped at a random place and
aspect, scaled to a size drawn around 800x600 (long side log-normal, median
800, clipped to 200..2400), given a trace of sensor grain (the sources are
small, so without it upscaled crops would compress far better than real
photos), and encoded: mostly JPEG (quality 75-95, a fifth progressive), some
PNG, WebP and GIF, as on the web.  Image ``i`` depends only on ``(seed, i)``,
so a smaller corpus is a prefix of a larger one and a cache can grow.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

VERSION = 1
#: (file in skimage's data folder, weight): colour photos mostly, some grey ones.
SOURCES = (
    ("astronaut.png", 3),
    ("chelsea.png", 3),
    ("coffee.png", 3),
    ("rocket.jpg", 3),
    ("hubble_deep_field.jpg", 2),
    ("motorcycle_left.png", 3),
    ("motorcycle_right.png", 1),
    ("retina.jpg", 1),
    ("ihc.png", 1),
    ("camera.png", 1),
    ("grass.png", 1),
    ("gravel.png", 1),
)
#: (format, share).  PNG and GIF photos are kept smaller, as they are on real sites.
FORMATS = (("JPEG", 0.80), ("PNG", 0.07), ("WEBP", 0.09), ("GIF", 0.04))
ASPECTS = ((4 / 3, 5), (3 / 2, 3), (16 / 9, 2), (1.0, 2), (5 / 4, 1))
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif"}


def _sources() -> list[tuple[Image.Image, float]]:
    # The files themselves, not skimage.data's loaders: some loaders fetch extra files over the network.
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    out = []
    for name, weight in SOURCES:
        with Image.open(folder / name) as img:
            img.load()
            out.append((img.convert("RGB") if img.mode not in ("RGB", "L") else img.copy(), float(weight)))
    return out


def _pick(rng: np.random.Generator, items: list[tuple[Any, float]]) -> Any:
    weights = np.array([w for _, w in items], dtype=np.float64)
    return items[int(rng.choice(len(items), p=weights / weights.sum()))][0]


def make_image(seed: int, index: int, sources: list[tuple[Image.Image, float]]) -> tuple[str, bytes]:
    """Image number ``index`` of the corpus of ``seed``: (format, encoded bytes)."""
    rng = np.random.default_rng([seed, index, VERSION])
    src: Image.Image = _pick(rng, sources)
    fmt: str = _pick(rng, [(f, s) for f, s in FORMATS])
    aspect: float = _pick(rng, [(a, float(w)) for a, w in ASPECTS])
    long_side = math.exp(rng.normal(math.log(800), 0.42))
    if fmt in ("PNG", "GIF"):
        long_side *= 0.6
    long_side = float(np.clip(long_side, 200, 2400))
    w, h = round(long_side), round(long_side / aspect)
    if rng.random() < 0.25:  # portrait
        w, h = h, w
    # A random crop of the source with the target's aspect, 45-100% of the largest that fits.
    sw, sh = src.size
    scale = rng.uniform(0.45, 1.0)
    cw = min(sw, sh * w / h) * scale
    ch = cw * h / w
    x0, y0 = rng.uniform(0, sw - cw), rng.uniform(0, sh - ch)
    img = src.resize((w, h), Image.Resampling.LANCZOS, box=(x0, y0, x0 + cw, y0 + ch))
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0.0, rng.uniform(2.0, 5.0), size=arr.shape).astype(np.float32)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), img.mode)
    out = io.BytesIO()
    if fmt == "JPEG":
        quality = int(rng.integers(75, 96))
        img.save(out, "JPEG", quality=quality, progressive=bool(rng.random() < 0.2), optimize=False)
    elif fmt == "WEBP":
        img.save(out, "WEBP", quality=int(rng.integers(70, 91)), method=4)
    elif fmt == "PNG":
        img.save(out, "PNG", compress_level=6)
    else:
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, "GIF")
    return fmt, out.getvalue()


_SOURCES: list[tuple[Image.Image, float]] = []


def _make(seed: int, index: int) -> tuple[str, bytes]:
    """In a worker process: the sources are loaded once per process."""
    if not _SOURCES:
        _SOURCES.extend(_sources())
    return make_image(seed, index, _SOURCES)


def _save(folder: Path, index: int, fmt: str, data: bytes) -> dict[str, Any]:
    name = f"{index:05d}{EXTENSIONS[fmt]}"
    tmp = folder / (name + ".part")
    tmp.write_bytes(data)
    tmp.replace(folder / name)
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
    return {
        "index": index,
        "name": name,
        "format": fmt,
        "width": width,
        "height": height,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def build(folder: Path, count: int, seed: int = 0, *, log: Any = None) -> list[dict[str, Any]]:
    """Make sure ``folder`` holds images 0..count-1 of ``seed``; return their index entries."""
    folder.mkdir(parents=True, exist_ok=True)
    index_file = folder / "index.json"
    entries: list[dict[str, Any]] = []
    if index_file.is_file():
        meta = json.loads(index_file.read_text())
        if meta.get("seed") == seed and meta.get("version") == VERSION:
            entries = [e for e in meta["images"] if (folder / e["name"]).is_file()]
    have = {e["index"] for e in entries}
    missing = [i for i in range(count) if i not in have]
    if missing:
        if log:
            print(f"building {len(missing)} corpus images in {folder} (once; cached)", file=log, flush=True)
        workers = min(os.cpu_count() or 1, max(1, len(missing) // 20))
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            made = pool.map(_make, [seed] * len(missing), missing, chunksize=8)
            for i, (fmt, data) in zip(missing, made, strict=True):
                entries.append(_save(folder, i, fmt, data))
        entries.sort(key=lambda e: e["index"])
        meta = {"version": VERSION, "seed": seed, "images": entries}
        tmp_index = folder / "index.json.part"
        tmp_index.write_text(json.dumps(meta, indent=0))
        tmp_index.replace(index_file)
    return [e for e in entries if e["index"] < count]


def describe(entries: list[dict[str, Any]]) -> str:
    sizes = sorted(e["width"] * e["height"] for e in entries)
    longs = sorted(max(e["width"], e["height"]) for e in entries)
    nbytes = sorted(e["bytes"] for e in entries)
    formats: dict[str, int] = {}
    for e in entries:
        formats[e["format"]] = formats.get(e["format"], 0) + 1
    mid = len(entries) // 2
    return (
        f"{len(entries)} images; median {sizes[mid] / 1e6:.2f} MP (long side median {longs[mid]},"
        f" max {longs[-1]}); median {nbytes[mid] / 1e3:.0f} kB, total {sum(nbytes) / 1e6:.0f} MB; "
        + ", ".join(f"{k} {v}" for k, v in sorted(formats.items()))
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    entries = build(args.folder, args.count, args.seed, log=sys.stderr)
    print(describe(entries), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
