"""Image checks and transforms: pure ``bytes -> bytes``, no file or network I/O.

:func:`sniff` and :func:`check` are cheap and header-only, so they run in the
event loop on every download.  :func:`process` fully decodes and re-encodes;
it runs in a worker process, so its arguments and results are picklable.

Decisions worth knowing:

* Only the sniffed format's Pillow plugin ever sees the bytes
  (``Image.open(..., formats=[fmt])``): a file that merely *claims* to be an
  image never reaches a parser for some other format.
* ``width``/``height`` of :class:`ImageInfo` (and ``orig_*`` of
  :class:`Processed`) are the stored dimensions, as the header says; EXIF
  orientation only swaps them for the size filters and for the transforms.
* ``format="keep"`` keeps JPEG, PNG and WEBP; every other source format (GIF,
  BMP, TIFF, AVIF, HEIF) is written as PNG, first frame only.
* :func:`check` reads JPEG, PNG and WebP sizes with a small built-in header
  parser (:func:`imgfetch.images.headers.header_size`): it is the fast path, ``Image.open`` (whose WebP
  opener alone builds a whole animation decoder) the fallback and the
  authority.  The parser mirrors the checks Pillow's opener makes that could
  fail and answers ``None`` whenever it is not sure; then, and for every other
  format, too-large image or filter that needs the EXIF orientation, Pillow
  opens the bytes as before.  Only a JPEG whose EXIF resolution Pillow cannot
  read (it then refuses the whole file) passes the fast path; see
  ``tests/test_header.py``.
* Importing this module loads only the Pillow plugins of :data:`SUPPORTED`,
  never ``Image.init()`` (which imports every plugin Pillow has).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import math
import re
from io import BytesIO
from typing import TYPE_CHECKING, Final

from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageChops,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
    features,
)

from imgfetch.images.headers import PNG_MAGIC, header_size
from imgfetch.outcome import Reason

if TYPE_CHECKING:
    from collections.abc import Callable

    from imgfetch.config import ImageConfig

__all__ = [
    "SUPPORTED",
    "ImageInfo",
    "Processed",
    "Rejected",
    "check",
    "cover_size",
    "crop_box",
    "fit_size",
    "header_size",
    "pad_offset",
    "process",
    "psnr",
    "sniff",
]


# Image.open(..., formats=[fmt]) and Image.save(..., fmt) only fall back to
# Image.init() (importing every plugin Pillow has: PDF, DDS, ...) for a format
# that no imported plugin registered, so import exactly the ones needed.
_PLUGINS: Final = (
    BmpImagePlugin,
    GifImagePlugin,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)


def _optional_formats() -> frozenset[str]:
    found: set[str] = set()
    # Pillow < 11.2 has no "avif" module at all; check_module() would raise.
    if "avif" in features.modules and features.check_module("avif"):
        importlib.import_module("PIL.AvifImagePlugin")
        found.add("AVIF")
    # HEIF needs the third-party pillow-heif plugin; use it when it happens to be installed.
    if importlib.util.find_spec("pillow_heif") is not None:
        # A broken optional plugin must not break imgfetch.
        with contextlib.suppress(Exception):
            importlib.import_module("pillow_heif").register_heif_opener()
        if "HEIF" in Image.OPEN:
            found.add("HEIF")
    return frozenset(found)


SUPPORTED: Final[frozenset[str]] = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"}) | (
    _optional_formats()
)

# BMP's magic is only two printable bytes, so also require a known DIB header size
# to keep text that happens to start with "BM" out of the BMP parser.
_BMP_DIB_SIZES: Final = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})
_HEIF_BRANDS: Final = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})


def sniff(data: bytes) -> str | None:
    """The real image format from the magic bytes alone, or ``None``.

    Returns a Pillow format name (``JPEG``, ``PNG``, ``GIF``, ``WEBP``, ``BMP``,
    ``TIFF``, ``AVIF``, ``HEIF``); SVG, HTML and anything else give ``None``.
    """
    first = data[:1]
    if first == b"\xff":
        return "JPEG" if data[1:3] == b"\xd8\xff" else None
    if first == b"\x89":
        return "PNG" if data[:8] == PNG_MAGIC else None
    if first == b"G":
        return "GIF" if data[:6] in (b"GIF87a", b"GIF89a") else None
    if first == b"R":
        return "WEBP" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else None
    if first == b"B":
        if data[:2] == b"BM" and len(data) >= 18 and int.from_bytes(data[14:18], "little") in _BMP_DIB_SIZES:
            return "BMP"
        return None
    if first in (b"I", b"M"):
        return "TIFF" if data[:4] in (b"II*\x00", b"MM\x00*") else None
    if data[4:8] == b"ftyp":
        return _sniff_ftyp(data)
    return None


def _sniff_ftyp(data: bytes) -> str | None:
    # ISO-BMFF: box size, "ftyp", major brand, minor version, then compatible brands.
    size = int.from_bytes(data[:4], "big")
    if size < 16 or size > len(data) or size > 4096:
        size = min(len(data), 4096)
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, size - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIF"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the header says: format and stored (un-rotated) size."""

    format: str
    width: int
    height: int


@dataclasses.dataclass(frozen=True, slots=True)
class Rejected:
    """Why an image is not kept.  ``skipped`` marks deliberate filters (status ``skipped``)."""

    reason: str
    detail: str
    skipped: bool = False
    info: ImageInfo | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Processed:
    """The bytes to write, with final and original format and size."""

    data: bytes
    format: str
    width: int
    height: int
    orig_format: str
    orig_width: int
    orig_height: int


def _raise_bomb_limit(max_pixels: int) -> None:
    """Let Pillow's own decompression-bomb guard sit at or above ``max_pixels``.

    Process-wide and idempotent: it only ever raises ``Image.MAX_IMAGE_PIXELS``
    (never lowers it, never disables it), so Pillow cannot warn about an image
    that ``check`` accepts, yet still refuses anything absurd on its own.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and limit < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


_OBJECT_AT = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>")


def _short(exc: BaseException) -> str:
    # Pillow names the BytesIO by address ("<_io.BytesIO object at 0x7f...>"): drop it so
    # manifests of the same input are identical from run to run.
    message = _OBJECT_AT.sub("data", str(exc))
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _orientation(img: Image.Image, *, header_only: bool) -> int:
    # PngImageFile.getexif() decodes the whole file to look for a trailing eXIf
    # chunk; in the header-only path only an eXIf chunk before IDAT counts.
    if header_only and img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        value = img.getexif().get(0x0112, 1)
        return value if isinstance(value, int) and 1 <= value <= 8 else 1
    except Exception:  # a broken EXIF block is not a broken image
        return 1


def _sniffed(data: bytes) -> str | Rejected:
    fmt = sniff(data)
    if fmt is None:
        return Rejected(Reason.NOT_AN_IMAGE.value, f"not a supported image (starts with {data[:8]!r})")
    if fmt not in SUPPORTED:
        return Rejected(Reason.NOT_AN_IMAGE.value, f"{fmt} images are not supported by this Pillow")
    return fmt


def _open(data: bytes, cfg: ImageConfig, fmt: str | None = None) -> tuple[Image.Image, ImageInfo] | Rejected:
    """Open with the sniffed format's plugin only and apply the pixel limit (no decode).

    ``fmt``: the format :func:`_sniffed` already found, so the bytes are not sniffed twice.
    """
    if fmt is None:
        sniffed = _sniffed(data)
        if isinstance(sniffed, Rejected):
            return sniffed
        fmt = sniffed
    _raise_bomb_limit(cfg.max_pixels)
    try:
        img = Image.open(BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Rejected(Reason.TOO_MANY_PIXELS.value, _short(exc))
    except Exception as exc:
        return Rejected(Reason.DECODE_ERROR.value, _short(exc))
    width, height = img.size
    info = ImageInfo(fmt, width, height)
    if width <= 0 or height <= 0:
        img.close()
        return Rejected(Reason.DECODE_ERROR.value, f"empty image {width}x{height}", info=info)
    if width * height > cfg.max_pixels:
        img.close()
        return Rejected(
            Reason.TOO_MANY_PIXELS.value, f"{width}x{height} exceeds {cfg.max_pixels} pixels", info=info
        )
    return img, info


def _uses_orientation(cfg: ImageConfig) -> bool:
    """Whether :func:`_filter` needs the EXIF orientation (only ``skip_small`` with a size does)."""
    return cfg.skip_small and cfg.size is not None


def _filter(info: ImageInfo, cfg: ImageConfig, orientation: Callable[[], int]) -> Rejected | None:
    """Size and aspect filters; ``orientation()`` is called only when :func:`_uses_orientation`."""
    width, height = info.width, info.height
    if cfg.skip_small and cfg.size is not None:
        if orientation() >= 5:
            width, height = height, width
        if width < cfg.size[0] or height < cfg.size[1]:
            return Rejected(
                Reason.TOO_SMALL.value,
                f"{width}x{height} is smaller than {cfg.size[0]}x{cfg.size[1]}",
                skipped=True,
                info=info,
            )
    short, long = min(width, height), max(width, height)
    if cfg.min_size is not None and short < cfg.min_size:
        return Rejected(
            Reason.TOO_SMALL.value,
            f"{width}x{height} has a side below {cfg.min_size}",
            skipped=True,
            info=info,
        )
    if cfg.max_aspect_ratio is not None and long / short > cfg.max_aspect_ratio:
        return Rejected(
            Reason.BAD_ASPECT_RATIO.value,
            f"{width}x{height} aspect ratio {long / short:.2f} exceeds {cfg.max_aspect_ratio:g}",
            skipped=True,
            info=info,
        )
    return None


def _header_orientation(img: Image.Image) -> Callable[[], int]:
    return lambda: _orientation(img, header_only=True)


def _no_orientation() -> int:
    raise AssertionError("the header-only path never applies an orientation-dependent filter")


def _check_header(data: bytes, fmt: str, cfg: ImageConfig) -> ImageInfo | Rejected | None:
    """:func:`check` from :func:`header_size` alone, or ``None`` when Pillow must decide.

    Only for sizes Pillow accepts without a word: an empty or too-large image
    is left to :func:`_check_pillow`, so every rejection keeps Pillow's wording.
    """
    try:
        size = header_size(data, fmt)
    except Exception:  # a parser bug must not cost more than the fast path
        return None
    if size is None:
        return None
    width, height = size
    if width <= 0 or height <= 0 or width * height > cfg.max_pixels:
        return None
    _raise_bomb_limit(cfg.max_pixels)  # as _open() does: the guard is process-wide
    info = ImageInfo(fmt, width, height)
    return _filter(info, cfg, _no_orientation) or info


def _check_pillow(data: bytes, cfg: ImageConfig, fmt: str | None = None) -> ImageInfo | Rejected:
    """:func:`check` with Pillow's opener: the authority, and the path for everything unusual."""
    opened = _open(data, cfg, fmt)
    if isinstance(opened, Rejected):
        return opened
    img, info = opened
    try:
        return _filter(info, cfg, _header_orientation(img)) or info
    finally:
        img.close()


def check(data: bytes, cfg: ImageConfig) -> ImageInfo | Rejected:
    """Header-only validation and filters; cheap enough for the event loop.

    Pixel limit first, then size filters (EXIF orientation 5-8 swaps width and
    height for ``skip_small``), then aspect ratio.  Never decodes pixels.
    JPEG, PNG and WebP headers are read by :func:`header_size` when no filter
    needs the orientation; Pillow opens everything else.
    """
    fmt = _sniffed(data)
    if isinstance(fmt, Rejected):
        return fmt
    if not _uses_orientation(cfg):
        result = _check_header(data, fmt, cfg)
        if result is not None:
            return result
    return _check_pillow(data, cfg, fmt)


# --- resize geometry (pure, unit-tested) ------------------------------------


def _round(x: float) -> int:
    # Half-up rather than Python's banker's rounding, and never below 1 px.
    return max(1, math.floor(x + 0.5))


def fit_size(w: int, h: int, box_w: int, box_h: int, upscale: bool) -> tuple[int, int]:
    """Largest size with ``w:h`` ratio inside the box; unchanged if it fits and not ``upscale``."""
    scale = min(box_w / w, box_h / h)
    if scale >= 1 and not upscale:
        return w, h
    return min(box_w, _round(w * scale)), min(box_h, _round(h * scale))


def cover_size(w: int, h: int, box_w: int, box_h: int) -> tuple[int, int]:
    """Smallest size with ``w:h`` ratio that covers the box (always scales, up or down)."""
    scale = max(box_w / w, box_h / h)
    return max(box_w, _round(w * scale)), max(box_h, _round(h * scale))


def crop_box(w: int, h: int, box_w: int, box_h: int) -> tuple[float, float, float, float]:
    """The centred region of a ``w x h`` source with the box's aspect ratio.

    Resizing exactly this region to the box equals "cover, then centre-crop",
    without the rounding of an intermediate size.
    """
    if w * box_h > h * box_w:  # source is wider than the box: trim left and right
        cw = h * box_w / box_h
        return (w - cw) / 2, 0.0, (w + cw) / 2, float(h)
    ch = w * box_h / box_w
    return 0.0, (h - ch) / 2, float(w), (h + ch) / 2


def pad_offset(w: int, h: int, box_w: int, box_h: int) -> tuple[int, int]:
    """Top-left corner that centres ``w x h`` in the box (extra pixel right/bottom)."""
    return (box_w - w) // 2, (box_h - h) // 2


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB of two same-size 8-bit images (``inf`` if equal)."""
    if a.size != b.size or a.mode != b.mode:
        raise ValueError(f"cannot compare {a.mode} {a.size} with {b.mode} {b.size}")
    hist = ImageChops.difference(a, b).histogram()
    squared = sum(count * (i % 256) ** 2 for i, count in enumerate(hist))
    mse = squared / (a.size[0] * a.size[1] * len(a.getbands()))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


# --- process -----------------------------------------------------------------

_TRANSPOSE: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_KEEP_FORMATS: Final = frozenset({"JPEG", "PNG", "WEBP"})
_OUTPUT_FORMATS: Final[dict[str, str]] = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
#: zlib level 1: photos come out a few percent larger than at Pillow's default 6,
#: several times faster; PNG output is rarely the size that matters.
PNG_COMPRESS_LEVEL: Final = 1
WEBP_METHOD: Final = 4
#: Lanczos does the last step; before it, cheap integer reductions (JPEG DCT
#: scaling, Image.reduce) stop at this many times the final size.  Measured on
#: the bench corpus at --size 256 (benchmarks/processing.py; PSNR against a full
#: decode + Lanczos): draft 2.0 / reduce 3.0 gave mean 53.2 dB, p5 51.8; these
#: values give mean 51.0, p5 47.7 for 12-20 % less CPU per image; draft 1.0 would
#: save 30 % but drops p5 to 39 dB, visibly soft on fine detail.  2.0 is also
#: Pillow's own reducing_gap for thumbnail().
_DRAFT_GAP: Final = 1.5
_REDUCING_GAP: Final = 2.0
_GREY_MODES: Final = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def _target_format(cfg: ImageConfig, orig: str) -> str:
    if cfg.format == "keep":
        return orig if orig in _KEEP_FORMATS else "PNG"
    return _OUTPUT_FORMATS[cfg.format]


def _normalize_mode(img: Image.Image) -> Image.Image:
    """Bring any decoded mode to L, RGB or RGBA."""
    mode = img.mode
    if mode in ("L", "RGB") and "transparency" in img.info:
        return img.convert("RGBA")  # a PNG tRNS colour key
    if mode in ("L", "RGB", "RGBA"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I"):
        # 16-bit samples: convert("L") would clip everything above 255 to white.
        wide = img.convert("I")
        extrema = wide.getextrema()
        high = extrema[1] if isinstance(extrema[1], (int, float)) else 255
        if high > 255:
            wide = wide.point(lambda v: v * (1 / 256))
        return wide.convert("L")
    if mode == "F":
        return img.convert("L")
    if mode in ("LA", "La", "PA", "RGBa"):
        return img.convert("RGBA")
    if mode == "P":
        return img.convert("RGBA" if img.has_transparency_data else "RGB")
    # CMYK (Adobe's inverted CMYK is already undone by the JPEG decoder), YCbCr, LAB, HSV, RGBX...
    return img.convert("RGB")


def _pad_fill(mode: str, color: tuple[int, int, int]) -> tuple[int, ...] | int:
    if mode == "L":
        return color[0]
    return (*color, 255) if mode == "RGBA" else color


def _fit_mode(img: Image.Image, target: str, pad_color: tuple[int, int, int]) -> Image.Image:
    """Make the mode savable in ``target``: flatten alpha on pad_color where there is no alpha."""
    if img.mode == "RGBA" and target == "JPEG":
        flat = Image.new("RGB", img.size, pad_color)
        flat.paste(img, mask=img.getchannel("A"))
        return flat
    if img.mode == "L" and target == "WEBP":
        return img.convert("RGB")
    return img


def _encode(img: Image.Image, target: str, cfg: ImageConfig, icc: bytes | None) -> bytes:
    out = BytesIO()
    # Always pass icc_profile, even None: PNG's writer would otherwise fall back to
    # img.info, which convert() copied from the source (e.g. a CMYK profile).
    if target == "JPEG":
        img.save(out, "JPEG", quality=cfg.quality, optimize=False, progressive=False, icc_profile=icc)
    elif target == "WEBP":
        img.save(out, "WEBP", quality=cfg.quality, method=WEBP_METHOD, icc_profile=icc)
    else:
        img.save(out, "PNG", compress_level=PNG_COMPRESS_LEVEL, icc_profile=icc)
    return out.getvalue()


def _verify_frames(img: Image.Image, budget: int) -> None:
    """Decode the later frames of an animation too, within a pixel budget."""
    frames = getattr(img, "n_frames", 1)
    if frames <= 1:
        return
    spent = img.size[0] * img.size[1]
    for index in range(1, frames):
        spent += img.size[0] * img.size[1]
        if spent > budget:
            break
        img.seek(index)
        img.load()


def process(data: bytes, cfg: ImageConfig, *, fast: bool = True) -> Processed | Rejected:
    """Check, fully decode and (when ``cfg.transforms``) orient, resize and re-encode.

    Without transforms the original bytes come back unchanged once they decode
    cleanly (``--verify``).  ``fast=False`` disables JPEG DCT-domain scaling and
    integer pre-reduction (for benchmarks and the quality test).
    """
    opened = _open(data, cfg)
    if isinstance(opened, Rejected):
        return opened
    img, info = opened
    try:
        rejected = _filter(info, cfg, _header_orientation(img))
        if rejected is not None:
            return rejected
        if cfg.transforms:
            result = _transform(img, info, cfg, fast=fast)
        else:
            img.load()
            result = Processed(
                data, info.format, info.width, info.height, info.format, info.width, info.height
            )
        if cfg.verify or not cfg.transforms:
            # Only verification needs more than the first frame.
            _verify_frames(img, cfg.max_pixels)
        return result
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Rejected(Reason.TOO_MANY_PIXELS.value, _short(exc), info=info)
    except Exception as exc:
        return Rejected(Reason.DECODE_ERROR.value, _short(exc), info=info)
    finally:
        img.close()


def _geometry(
    w: int, h: int, cfg: ImageConfig, orientation: int
) -> tuple[tuple[int, int], tuple[float, float, float, float]]:
    """Resized size and source region, in stored orientation (box swapped for 5-8).

    Centring is symmetric under every transpose, so the small result can be
    transposed afterwards, which is far cheaper than transposing the source.
    """
    region = (0.0, 0.0, float(w), float(h))
    if cfg.size is None or cfg.resize == "none":
        return (w, h), region
    bw, bh = cfg.size if orientation < 5 else (cfg.size[1], cfg.size[0])
    if cfg.resize in ("fit", "pad"):
        return fit_size(w, h, bw, bh, cfg.upscale), region
    if cfg.resize == "exact":
        return (bw, bh), region
    return (bw, bh), crop_box(w, h, bw, bh)


def _transform(img: Image.Image, info: ImageInfo, cfg: ImageConfig, *, fast: bool) -> Processed:
    target = _target_format(cfg, info.format)
    icc = img.info.get("icc_profile")
    orig_mode = img.mode
    w, h = info.width, info.height
    scale = 1.0
    if fast and info.format == "JPEG":
        new_size, region = _geometry(w, h, cfg, _orientation(img, header_only=True))
        # A DCT-scaled decode that keeps the whole frame >= _DRAFT_GAP x its final
        # size, so the Lanczos step that follows loses nothing visible.
        want_w = math.ceil(w * new_size[0] / (region[2] - region[0]) * _DRAFT_GAP)
        want_h = math.ceil(h * new_size[1] / (region[3] - region[1]) * _DRAFT_GAP)
        drafted = img.draft(None, (want_w, want_h)) if want_w < w and want_h < h else None
        if drafted is not None:
            scale = drafted[1][2] / w
    img.load()
    # After load() even a PNG's trailing eXIf chunk is known.
    orientation = _orientation(img, header_only=False)
    new_size, region = _geometry(w, h, cfg, orientation)

    work = _normalize_mode(img)
    box = (region[0] * scale, region[1] * scale, region[2] * scale, region[3] * scale)
    if new_size != work.size or box != (0.0, 0.0, float(work.size[0]), float(work.size[1])):
        gap = _REDUCING_GAP if fast else None
        work = work.resize(new_size, Image.Resampling.LANCZOS, box=box, reducing_gap=gap)
    if orientation in _TRANSPOSE:
        work = work.transpose(_TRANSPOSE[orientation])
    if cfg.resize == "pad" and cfg.size is not None and work.size != cfg.size:
        if work.mode == "L" and len(set(cfg.pad_color)) != 1:
            work = work.convert("RGB")
        canvas = Image.new(work.mode, cfg.size, _pad_fill(work.mode, cfg.pad_color))
        canvas.paste(work, pad_offset(*work.size, *cfg.size))
        work = canvas
    work = _fit_mode(work, target, cfg.pad_color)
    # An ICC profile describes the source's colour space: useless after CMYK->RGB,
    # and wrong on a grey image turned RGB (or the reverse).
    keep_icc = orig_mode != "CMYK" and (orig_mode in _GREY_MODES) == (work.mode == "L")
    encoded = _encode(work, target, cfg, icc if keep_icc else None)
    return Processed(encoded, target, work.size[0], work.size[1], info.format, info.width, info.height)
