"""Real image bytes for tests, built with Pillow at test time (no binary fixtures).

Pixels are smooth gradients plus seeded noise, so encoders and resamplers see
something photo-like rather than flat colour, and every call is reproducible.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "avif",
    "bmp",
    "encode",
    "gif",
    "html",
    "huge_pixels_png",
    "jpeg",
    "photo",
    "png",
    "tiff",
    "truncated_jpeg",
    "webp",
]


def photo(w: int, h: int, *, seed: int = 0) -> Image.Image:
    """An RGB image of smooth colour fields, edges and mild grain (deterministic)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x /= max(w, 1)
    y /= max(h, 1)
    channels = []
    for c in range(3):
        fx, fy, phase = rng.uniform(1.0, 4.0), rng.uniform(1.0, 4.0), rng.uniform(0, 6.28)
        field = 0.5 + 0.3 * np.sin(fx * 6.28 * x + phase) * np.cos(fy * 6.28 * y + c)
        field += 0.15 * (x if c == 0 else y if c == 1 else 1 - x)
        channels.append(field)
    arr = np.stack(channels, axis=-1)
    # A few hard-edged shapes, so there is detail at every scale.
    for _ in range(4):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        arr[mask] = arr[mask] * 0.5 + rng.uniform(0, 0.5, size=3).astype(np.float32)
    arr += rng.normal(0.0, 0.02, size=arr.shape).astype(np.float32)
    return Image.fromarray((np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    """Save ``img`` in ``fmt`` and return the bytes."""
    out = BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


def jpeg(
    w: int,
    h: int,
    *,
    quality: int = 90,
    progressive: bool = False,
    exif_orientation: int | None = None,
    cmyk: bool = False,
    grey: bool = False,
    seed: int = 0,
) -> bytes:
    """A baseline (or progressive) JPEG; optionally CMYK, grey or with an EXIF orientation."""
    img = photo(w, h, seed=seed)
    if cmyk:
        img = img.convert("CMYK")
    elif grey:
        img = img.convert("L")
    params: dict[str, Any] = {"quality": quality, "progressive": progressive}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        params["exif"] = exif.tobytes()
    return encode(img, "JPEG", **params)


def png(w: int, h: int, *, mode: str = "RGB", seed: int = 0) -> bytes:
    """A PNG in ``mode``: RGB, RGBA, L, 1, P, P-transparent (palette + tRNS) or I;16."""
    base = photo(w, h, seed=seed)
    if mode == "RGB":
        img = base
    elif mode == "RGBA":
        img = base.copy()
        img.putalpha(_alpha(w, h))
    elif mode in ("L", "1"):
        img = base.convert(mode)
    elif mode == "P":
        img = base.quantize(64)
    elif mode == "P-transparent":
        img = base.quantize(64)
        # Palette index 0 is transparent; make a clear block of it.
        img.paste(0, (0, 0, max(1, w // 2), max(1, h // 2)))
        return encode(img, "PNG", transparency=0)
    elif mode == "I;16":
        grey = np.asarray(base.convert("L"), dtype=np.uint16)
        img = Image.fromarray(grey * 257)  # full 16-bit range: 255 -> 65535
    else:
        raise ValueError(f"unknown PNG mode {mode!r}")
    return encode(img, "PNG")


def _alpha(w: int, h: int) -> Image.Image:
    """Left half fully transparent, right half opaque."""
    alpha = Image.new("L", (w, h), 255)
    alpha.paste(0, (0, 0, max(1, w // 2), h))
    return alpha


def gif(w: int, h: int, *, frames: int = 1, seed: int = 0) -> bytes:
    """A GIF; with ``frames > 1`` an animation whose frames differ visibly."""
    images = [photo(w, h, seed=seed + i).quantize(64) for i in range(frames)]
    if frames == 1:
        return encode(images[0], "GIF")
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)


def webp(w: int, h: int, *, alpha: bool = False, seed: int = 0) -> bytes:
    """A lossy WebP, optionally with an alpha channel (left half transparent)."""
    img = photo(w, h, seed=seed)
    if alpha:
        img.putalpha(_alpha(w, h))
    return encode(img, "WEBP", quality=90)


def bmp(w: int, h: int, *, seed: int = 0) -> bytes:
    return encode(photo(w, h, seed=seed), "BMP")


def tiff(w: int, h: int, *, seed: int = 0) -> bytes:
    return encode(photo(w, h, seed=seed), "TIFF")


def avif(w: int, h: int, *, seed: int = 0) -> bytes:
    """An AVIF (only when this Pillow has AVIF support)."""
    return encode(photo(w, h, seed=seed), "AVIF", quality=80)


def truncated_jpeg(w: int, h: int, *, seed: int = 0) -> bytes:
    """A real JPEG cut half-way through its scan data: the header still parses."""
    data = jpeg(w, h, seed=seed)
    sos = data.index(b"\xff\xda")
    return data[: sos + (len(data) - sos) // 2]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_pixels_png(w: int = 30000, h: int = 30000) -> bytes:
    """A tiny PNG whose valid IHDR claims ``w x h`` RGB pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def html() -> bytes:
    return b"<!DOCTYPE html>\n<html><head><title>Not found</title></head><body>404</body></html>\n"
