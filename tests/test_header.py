"""imgfetch.images.header_size: the built-in JPEG/PNG/WebP header parser agrees with Pillow.

``check()`` reads sizes with :func:`header_size` and opens Pillow only when the
parser is not sure (``None``).  The one rule these tests enforce: whenever the
parser reports a size, Pillow's opener reports exactly that size too.

The parser mirrors every check in Pillow's opener but one: a JPEG whose EXIF
block is malformed in one particular way (an XResolution tag Pillow can index
only once, e.g. a 1-character ASCII value, next to a ResolutionUnit, in a JPEG without JFIF density) makes
``JpegImageFile._read_dpi_from_exif`` raise an IndexError, and ``Image.open`` fail.
There the parser reports the frame header's size while Pillow refuses to
open: ``check()`` accepts a header that is itself fine (``process`` still
decodes it when configured to).  Reproducing it would mean parsing EXIF on
every JPEG, which is what the fast path avoids.  The property tests below
therefore accept exactly that outcome ("Pillow's JPEG opener raises in
``_read_dpi_from_exif``") besides agreement, never "Pillow reports another
size" or any other refusal, and pin down the EXIF case with an explicit example.
"""

from __future__ import annotations

import json
import struct
import traceback
import warnings
import zlib
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError

import imagegen as gen
from imgfetch.config import ImageConfig
from imgfetch.demo import sample_images
from imgfetch.images import (
    SUPPORTED,
    ImageInfo,
    Rejected,
    _check_pillow,
    check,
    headers,
    sniff,
)
from imgfetch.images.headers import _PNG_MODES, header_size
from imgfetch.outcome import Reason

CORPUS = Path.home() / ".cache" / "imgfetch" / "bench" / "corpus-seed0"
FAST_FORMATS = ("JPEG", "PNG", "WEBP")
CONFIGS = [
    ImageConfig(),
    ImageConfig(min_size=40),
    ImageConfig(max_aspect_ratio=1.2),
    ImageConfig(max_pixels=2000),
    ImageConfig(size=(64, 64), skip_small=True),  # needs the orientation: always Pillow
]


def pillow_size(data: bytes, fmt: str) -> tuple[int, int] | BaseException:
    """What ``Image.open(..., formats=[fmt])`` reports: warnings ignored as in production, no bomb guard."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(BytesIO(data), formats=[fmt]) as img:
                return img.size
    except Exception as exc:
        return exc
    finally:
        Image.MAX_IMAGE_PIXELS = limit


# --- real images of every kind ------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def raw_png(w: int, h: int, depth: int, ctype: int, *, interlace: int = 0, before_idat: bytes = b"") -> bytes:
    """A valid PNG of any (bit depth, colour type), all pixels zero, optionally Adam7-interlaced."""
    bits = depth * _CHANNELS[ctype]
    passes = _ADAM7 if interlace else [(0, 0, 1, 1)]
    raw = b""
    for x0, y0, dx, dy in passes:
        pw, ph = -(-(w - x0) // dx), -(-(h - y0) // dy)
        if pw > 0 and ph > 0:
            raw += (b"\x00" + bytes(-(-pw * bits // 8))) * ph
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace)
    plte = _png_chunk(b"PLTE", bytes(range(48))) if ctype == 3 else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + plte
        + before_idat
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def _exif(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "imgfetch test camera"
    exif[0x011A] = 300.0  # XResolution
    exif[0x0128] = 2  # ResolutionUnit
    return exif.tobytes()


SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
#: Larger than one APP2 segment holds: Pillow splits it over several.
BIG_ICC = SRGB + bytes(range(256)) * 400


def _jpegs() -> dict[str, bytes]:
    rgb = gen.photo(67, 45, seed=1)
    out: dict[str, bytes] = {}
    for mode in ("L", "RGB", "CMYK"):
        img = rgb.convert(mode)
        out[f"jpeg-{mode}"] = gen.encode(img, "JPEG", quality=85)
        out[f"jpeg-{mode}-progressive"] = gen.encode(img, "JPEG", progressive=True)
    out["jpeg-exif-icc"] = gen.encode(rgb, "JPEG", exif=_exif(), icc_profile=SRGB)
    out["jpeg-big-icc"] = gen.encode(rgb, "JPEG", icc_profile=BIG_ICC)
    out["jpeg-xmp-comment-dpi"] = gen.encode(
        rgb, "JPEG", xmp=b'<x:xmpmeta>tiff:Orientation="3"</x:xmpmeta>', comment=b"hi", dpi=(72, 72)
    )
    out["jpeg-restart-blocks"] = gen.encode(rgb, "JPEG", restart_marker_blocks=3)
    out["jpeg-restart-rows"] = gen.encode(rgb, "JPEG", restart_marker_rows=1, progressive=True)
    out["jpeg-optimized-444"] = gen.encode(rgb, "JPEG", optimize=True, subsampling=0)
    out["jpeg-16bit-qtables"] = gen.encode(rgb, "JPEG", qtables=[[300] * 64, [400] * 64])
    out["jpeg-tiny"] = gen.encode(gen.photo(1, 1), "JPEG")
    out["jpeg-wide"] = gen.encode(gen.photo(3000, 2), "JPEG")
    for orientation in range(1, 9):
        out[f"jpeg-orientation-{orientation}"] = gen.jpeg(40, 30, exif_orientation=orientation)
    return out


def _pngs() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for depth, ctype in _PNG_MODES:
        for interlace in (0, 1):
            name = f"png-{depth}bit-type{ctype}-i{interlace}"
            out[name] = raw_png(13, 7, depth, ctype, interlace=interlace)
    rgb = gen.photo(37, 23, seed=2)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "plain tEXt")
    info.add_text("Title", "compressed zTXt " * 20, zip=True)
    info.add_itxt("Author", "iTXt \u00e9\u00e8", lang="fr", tkey="Auteur")
    info.add_itxt("Description", "compressed iTXt " * 20, zip=True)
    info.add(b"gAMA", struct.pack(">I", 45455))
    info.add(b"cHRM", struct.pack(">8I", *range(8)))
    info.add(b"sRGB", b"\x00")
    info.add(b"bKGD", b"\x00\x01\x00\x02\x00\x03")
    info.add(b"tIME", b"\x07\xe9\x01\x02\x03\x04\x05")
    info.add(b"prVt", b"a private chunk")
    out["png-text-icc-exif"] = gen.encode(
        rgb, "PNG", pnginfo=info, icc_profile=SRGB, exif=_exif(), dpi=(300, 300)
    )
    out["png-rgb-transparency"] = gen.encode(rgb, "PNG", transparency=(1, 2, 3))
    out["png-grey-transparency"] = gen.encode(rgb.convert("L"), "PNG", transparency=7)
    out["png-palette-bits"] = gen.encode(rgb.quantize(4), "PNG", bits=2)
    out["png-la"] = gen.encode(rgb.convert("LA"), "PNG")
    trns = _png_chunk(b"tRNS", b"\x00\x05")
    out["png-i16-interlaced"] = raw_png(9, 5, 16, 0, interlace=1, before_idat=trns)
    out["png-optimized"] = gen.encode(rgb, "PNG", optimize=True)
    out["png-huge-header"] = gen.huge_pixels_png(30_000, 30_000)
    return out


def _webps() -> dict[str, bytes]:
    rgb = gen.photo(41, 27, seed=3)
    rgba = rgb.copy()
    rgba.putalpha(128)
    frames = [gen.photo(41, 27, seed=s) for s in range(3)]
    return {
        "webp-lossy": gen.encode(rgb, "WEBP", quality=80),
        "webp-lossless": gen.encode(rgb, "WEBP", lossless=True),
        "webp-lossy-alpha": gen.encode(rgba, "WEBP", quality=80),
        "webp-lossless-alpha": gen.encode(rgba, "WEBP", lossless=True),
        "webp-icc-exif": gen.encode(rgb, "WEBP", icc_profile=SRGB, exif=_exif()),
        "webp-animated": gen.encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50),
        "webp-animated-lossless": gen.encode(
            frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True
        ),
        "webp-animated-one-frame": gen.encode(frames[0], "WEBP", save_all=True, duration=50),
        "webp-odd": gen.encode(gen.photo(1, 1), "WEBP"),
        "webp-wide": gen.encode(gen.photo(3001, 3), "WEBP"),
    }


def _others() -> dict[str, bytes]:
    out = {
        "gif": gen.gif(20, 10),
        "gif-animated": gen.gif(20, 10, frames=2),
        "bmp": gen.bmp(20, 10),
        "tiff": gen.tiff(20, 10),
        "apng": gen.encode(
            gen.photo(20, 10), "PNG", save_all=True, append_images=[gen.photo(20, 10, seed=1)]
        ),
    }
    if "AVIF" in SUPPORTED:
        out["avif"] = gen.avif(20, 10)
    return out


def _helpers() -> dict[str, bytes]:
    """Every kind of image the shared test helpers make (imagegen and conftest's samples)."""
    out: dict[str, bytes] = {
        "gen-jpeg": gen.jpeg(40, 30),
        "gen-jpeg-cmyk": gen.jpeg(40, 30, cmyk=True),
        "gen-jpeg-grey": gen.jpeg(40, 30, grey=True),
        "gen-jpeg-progressive": gen.jpeg(40, 30, progressive=True),
        "gen-truncated-jpeg": gen.truncated_jpeg(320, 240),
        "gen-webp": gen.webp(40, 30),
        "gen-webp-alpha": gen.webp(40, 30, alpha=True),
        "gen-huge-png": gen.huge_pixels_png(),
    }
    for mode in ("RGB", "RGBA", "L", "1", "P", "P-transparent", "I;16"):
        out[f"gen-png-{mode}"] = gen.png(40, 30, mode=mode)
    out.update({f"sample-{name}": data for name, data in sample_images().items()})
    return out


IMAGES: dict[str, bytes] = {**_helpers(), **_jpegs(), **_pngs(), **_webps(), **_others()}
#: Real images the parser deliberately leaves to Pillow (APNG), besides other formats.
LEFT_TO_PILLOW = frozenset({"apng"})


def test_the_table_covers_every_kind() -> None:
    fmts = {sniff(data) for data in IMAGES.values()}
    assert {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"} <= fmts
    assert any(name.startswith("sample-") for name in IMAGES)
    # Each generated PNG really has the (bit depth, colour type) and interlace it claims.
    for name, data in IMAGES.items():
        if name.startswith("png-") and "bit-type" in name:
            assert name.endswith(f"i{data[28]}")
            assert f"png-{data[24]}bit-type{data[25]}-" in name


def test_png_modes_mirror_pillow() -> None:
    assert set(_PNG_MODES) == set(PngImagePlugin._MODES)
    assert {k: v[0] for k, v in PngImagePlugin._MODES.items()} == _PNG_MODES


def test_jpeg_markers_mirror_pillow() -> None:
    # Each marker the parser reads is read by Pillow with the handler it mirrors;
    # the rest (_J_NONE) is left to Pillow.  Fails if Pillow re-wires its marker table.
    mirrored: dict[int, set[str | None]] = {
        headers._J_SOF: {"SOF"},
        headers._J_SKIP: {"Skip", "COM"},
        headers._J_DQT: {"DQT"},
        headers._J_APP: {"APP"},
        headers._J_SOS: {"Skip"},
        headers._J_RST: {None},
    }
    for marker in range(256):
        kind = headers._JPEG_KINDS[marker]
        if kind in mirrored:
            handler = JpegImagePlugin.MARKER[0xFF00 | marker][2]
            assert (handler.__name__ if handler else None) in mirrored[kind], hex(marker)
    assert headers._JPEG_KINDS[0xFF] == headers._J_FILL and 0xFFFF not in JpegImagePlugin.MARKER


def test_png_chunk_handlers_mirror_pillow() -> None:
    # Pillow checks these chunks (the parser mirrors each) and reads any other
    # chunk without a check; a new handler in Pillow must be mirrored too.
    handlers = {
        name.removeprefix("chunk_") for name in dir(PngImagePlugin.PngStream) if name.startswith("chunk_")
    }
    mirrored = {"IHDR", "IDAT", "IEND", "acTL", "fcTL", "fdAT", "iCCP", "tRNS", "tEXt", "zTXt", "iTXt"}
    unchecked = {"PLTE", "eXIf"}
    assert handlers == mirrored | unchecked | {k.decode() for k in headers._PNG_MIN_LENGTH}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_header_size_equals_pillow(name: str) -> None:
    data = IMAGES[name]
    fmt = sniff(data)
    assert fmt is not None
    expected = pillow_size(data, fmt)
    got = header_size(data, fmt)
    if fmt in FAST_FORMATS and name not in LEFT_TO_PILLOW:
        assert isinstance(expected, tuple), expected
        assert got == expected
    else:
        assert got is None


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_check_equals_pillow_path(name: str) -> None:
    data = IMAGES[name]
    for cfg in CONFIGS:
        assert check(data, cfg) == _check_pillow(data, cfg), cfg


def test_generated_pngs_really_decode() -> None:
    for name in ("png-1bit-type0-i1", "png-16bit-type6-i1", "png-2bit-type3-i0", "png-i16-interlaced"):
        with Image.open(BytesIO(IMAGES[name])) as img:
            img.load()


# --- the bench corpus ------------------------------------------------------------


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no bench corpus at {CORPUS}")
def test_bench_corpus() -> None:
    index = json.loads((CORPUS / "index.json").read_text())
    fast = 0
    for entry in index["images"]:
        data = (CORPUS / entry["name"]).read_bytes()
        fmt = sniff(data)
        assert fmt is not None, entry["name"]
        got = header_size(data, fmt)
        if got is not None:
            fast += 1
            assert got == pillow_size(data, fmt) == (entry["width"], entry["height"]), entry["name"]
        assert check(data, ImageConfig()) == _check_pillow(data, ImageConfig()), entry["name"]
    fast_formats = [e for e in index["images"] if e["format"] in FAST_FORMATS]
    # The corpus is plain web images: every JPEG, PNG and WebP takes the fast path.
    assert fast == len(fast_formats)


# --- odd headers: the parser says None (and check() is Pillow's) -----------------


def _jpeg_segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def _after_soi(data: bytes, segment: bytes) -> bytes:
    return data[:2] + segment + data[2:]


def _with_trailing_chunk(webp: bytes) -> bytes:
    """A simple WebP with an unknown chunk after the image, the RIFF size updated."""
    return webp[:4] + struct.pack("<I", len(webp)) + webp[8:] + b"XYZW\x00\x00\x00\x00"


BASE_JPEG = gen.jpeg(40, 30)
BASE_PNG = gen.png(40, 30)
_SOF = BASE_JPEG.index(b"\xff\xc0")

ODD: dict[str, tuple[str, bytes]] = {
    "jpeg-12bit": ("JPEG", BASE_JPEG[: _SOF + 4] + b"\x0c" + BASE_JPEG[_SOF + 5 :]),
    "jpeg-2-components": ("JPEG", BASE_JPEG[: _SOF + 9] + b"\x02" + BASE_JPEG[_SOF + 10 :]),
    "jpeg-zero-height": ("JPEG", BASE_JPEG[: _SOF + 5] + b"\x00\x00" + BASE_JPEG[_SOF + 7 :]),
    "jpeg-two-frame-headers": (
        "JPEG",
        BASE_JPEG[:_SOF] + _jpeg_segment(0xC1, b"\x08\x00\x05\x00\x07\x01\x01\x11\x00") + BASE_JPEG[_SOF:],
    ),
    "jpeg-short-jfif": ("JPEG", _after_soi(BASE_JPEG, _jpeg_segment(0xE0, b"JFIF\x00"))),
    "jpeg-short-adobe": ("JPEG", _after_soi(BASE_JPEG, _jpeg_segment(0xEE, b"Adobe\x00"))),
    "jpeg-short-icc": ("JPEG", _after_soi(BASE_JPEG, _jpeg_segment(0xE2, b"ICC_PROFILE\x00\x01"))),
    "jpeg-bad-dqt": ("JPEG", _after_soi(BASE_JPEG, _jpeg_segment(0xDB, b"\x00" + bytes(30)))),
    "jpeg-photoshop-cut": (
        "JPEG",
        _after_soi(BASE_JPEG, _jpeg_segment(0xED, b"Photoshop 3.0\x008BIM\x04\x04")),
    ),
    "jpeg-mpo-index": ("JPEG", _after_soi(BASE_JPEG, _jpeg_segment(0xE2, b"MPF\x00II*\x00\x08\x00\x00\x00"))),
    "jpeg-tem-marker": ("JPEG", BASE_JPEG[:2] + b"\xff\x01" + BASE_JPEG[2:]),
    "jpeg-junk-between-segments": ("JPEG", BASE_JPEG[:2] + b"\x00\x00" + BASE_JPEG[2:]),
    "jpeg-no-frame": ("JPEG", BASE_JPEG[:_SOF] + BASE_JPEG[BASE_JPEG.index(b"\xff\xc4") :]),
    "jpeg-cut-in-header": ("JPEG", BASE_JPEG[: _SOF + 6]),
    "png-iend-first": ("PNG", BASE_PNG[:33] + _png_chunk(b"IEND", b"")),
    "png-bad-crc": ("PNG", BASE_PNG[:29] + b"\x00\x00\x00\x00" + BASE_PNG[33:]),
    "png-bad-mode": ("PNG", raw_png(4, 4, 4, 2)),
    "png-short-gama": ("PNG", raw_png(4, 4, 8, 2, before_idat=_png_chunk(b"gAMA", b"\x00\x01"))),
    "png-short-trns": ("PNG", raw_png(4, 4, 8, 2, before_idat=_png_chunk(b"tRNS", b"\x00\x01"))),
    "png-iccp-method": ("PNG", raw_png(4, 4, 8, 2, before_idat=_png_chunk(b"iCCP", b"x\x00\x01abc"))),
    "png-ztxt-method": ("PNG", raw_png(4, 4, 8, 2, before_idat=_png_chunk(b"zTXt", b"k\x00\x01abc"))),
    "png-bad-chunk-name": ("PNG", raw_png(4, 4, 8, 2, before_idat=_png_chunk(b"a-b!", b""))),
    "webp-riff-too-long": ("WEBP", gen.webp(40, 30)[:-10]),
    "webp-trailing-chunk": ("WEBP", _with_trailing_chunk(gen.webp(8, 8))),
}


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_headers_are_left_to_pillow(name: str) -> None:
    fmt, data = ODD[name]
    assert header_size(data, fmt) is None
    for cfg in CONFIGS:
        assert check(data, cfg) == _check_pillow(data, cfg)


def test_pillow_words_the_rejections() -> None:
    # Too many pixels and empty images go through Pillow, so the detail is unchanged.
    huge = gen.huge_pixels_png(30_000, 30_000)
    assert header_size(huge, "PNG") == (30_000, 30_000)
    assert check(huge, ImageConfig()) == _check_pillow(huge, ImageConfig())
    small = ImageConfig(max_pixels=100)
    rejected = check(gen.jpeg(40, 30), small)
    assert isinstance(rejected, Rejected) and rejected.reason == Reason.TOO_MANY_PIXELS.value
    assert rejected == _check_pillow(gen.jpeg(40, 30), small)


def test_filters_on_the_fast_path() -> None:
    data = gen.webp(300, 100)
    assert check(data, ImageConfig(min_size=50)) == ImageInfo("WEBP", 300, 100)
    rejected = check(data, ImageConfig(max_aspect_ratio=2))
    assert isinstance(rejected, Rejected) and rejected.reason == Reason.BAD_ASPECT_RATIO.value
    assert rejected.info == ImageInfo("WEBP", 300, 100)


def test_other_formats_and_garbage_give_none() -> None:
    for fmt in ("GIF", "BMP", "TIFF", "AVIF", "HEIF", "nonsense"):
        assert header_size(gen.jpeg(8, 8), fmt) is None
    for fmt in FAST_FORMATS:
        for data in (b"", b"\xff", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBP", bytes(64)):
            assert header_size(data, fmt) is None


def test_known_disagreement_corrupt_exif_resolution() -> None:
    # See the module docstring: a 1-character ASCII XResolution next to a
    # ResolutionUnit makes Pillow's opener raise IndexError; the header is fine.
    entries = [
        struct.pack("<HHI4s", 0x011A, 2, 2, b"7\x00\x00\x00"),  # XResolution: ASCII "7"
        struct.pack("<HHI4s", 0x0128, 3, 1, b"\x02\x00\x00\x00"),  # ResolutionUnit: inches
    ]
    exif = b"Exif\x00\x00II*\x00" + struct.pack("<IH", 8, len(entries)) + b"".join(entries) + bytes(4)
    data = gen.encode(gen.photo(40, 30), "JPEG", exif=exif)
    assert isinstance(pillow_size(data, "JPEG"), UnidentifiedImageError)  # from the IndexError
    assert refused_for_exif_dpi(data)
    assert_never_another_size(data, "JPEG")
    assert header_size(data, "JPEG") == (40, 30)
    assert check(data, ImageConfig()) == ImageInfo("JPEG", 40, 30)
    pillow = _check_pillow(data, ImageConfig())
    assert isinstance(pillow, Rejected) and pillow.reason == Reason.DECODE_ERROR.value


# --- property tests: truncated and corrupted headers --------------------------------

BASES: dict[str, tuple[str, bytes]] = {
    "jpeg": ("JPEG", IMAGES["jpeg-exif-icc"]),
    "jpeg-progressive-restart": ("JPEG", IMAGES["jpeg-restart-rows"]),
    "jpeg-cmyk": ("JPEG", IMAGES["jpeg-CMYK"]),
    "png": ("PNG", IMAGES["png-text-icc-exif"]),
    "png-palette": ("PNG", IMAGES["gen-png-P-transparent"]),
    "webp-lossy": ("WEBP", IMAGES["webp-lossy"]),
    "webp-alpha": ("WEBP", IMAGES["webp-lossy-alpha"]),
    "webp-lossless": ("WEBP", IMAGES["webp-lossless"]),
    "webp-animated": ("WEBP", IMAGES["webp-animated"]),
}
HEAD = 2048


def refused_for_exif_dpi(data: bytes) -> bool:
    """Whether Pillow's JPEG opener fails in ``_read_dpi_from_exif`` (the module docstring's case)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            JpegImagePlugin.JpegImageFile(BytesIO(data))
        except Exception as exc:
            cause = exc.__cause__ or exc
            return any(f.name == "_read_dpi_from_exif" for f in traceback.extract_tb(cause.__traceback__))
    return False


def assert_never_another_size(data: bytes, fmt: str) -> None:
    """The parser's size, if any, is Pillow's; and check() never raises."""
    got = header_size(data, fmt)
    if got is not None:
        expected = pillow_size(data, fmt)
        if isinstance(expected, BaseException):
            # The one acceptable disagreement: Pillow refuses a JPEG over its EXIF
            # resolution.  Never acceptable: Pillow opens the bytes with another size.
            assert fmt == "JPEG" and refused_for_exif_dpi(data), expected
        else:
            assert got == expected
    assert isinstance(check(data, CONFIGS[0]), (ImageInfo, Rejected))  # even with warnings as errors
    for cfg in CONFIGS[:2]:
        with warnings.catch_warnings():
            # As in production: a Pillow warning (say, about odd EXIF) is not an error.
            warnings.simplefilter("ignore")
            result = check(data, cfg)
            pillow = _check_pillow(data, cfg)
        assert isinstance(result, (ImageInfo, Rejected))
        if result != pillow:  # only in that case, where Pillow says "decode error"
            assert got is not None and fmt == "JPEG" and refused_for_exif_dpi(data)
            assert isinstance(pillow, Rejected) and pillow.reason == Reason.DECODE_ERROR.value


@pytest.mark.parametrize("name", sorted(BASES))
def test_every_truncation(name: str) -> None:
    fmt, data = BASES[name]
    cuts = [*range(min(len(data), HEAD)), *range(HEAD, len(data), 97), len(data)]
    for cut in cuts:
        assert_never_another_size(data[:cut], fmt)


mutations = st.lists(
    st.tuples(st.integers(min_value=0, max_value=HEAD - 1), st.integers(min_value=0, max_value=255)),
    min_size=1,
    max_size=6,
)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutate(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for offset, value in changes:
        if offset < len(out):
            out[offset] = value
    return bytes(out)


@PROPERTY
@given(name=st.sampled_from(sorted(BASES)), changes=mutations)
def test_replaced_bytes(name: str, changes: list[tuple[int, int]]) -> None:
    fmt, data = BASES[name]
    assert_never_another_size(_mutate(data, changes), fmt)


@PROPERTY
@given(name=st.sampled_from(sorted(BASES)), offsets=st.lists(st.integers(0, HEAD * 8 - 1), max_size=4))
def test_flipped_bits(name: str, offsets: list[int]) -> None:
    fmt, data = BASES[name]
    out = bytearray(data)
    for bit in offsets:
        if bit // 8 < len(out):
            out[bit // 8] ^= 1 << (bit % 8)
    assert_never_another_size(bytes(out), fmt)


@PROPERTY
@given(
    name=st.sampled_from(sorted(BASES)),
    at=st.integers(0, HEAD),
    inserted=st.binary(max_size=16),
    dropped=st.integers(0, 16),
)
def test_inserted_and_dropped_bytes(name: str, at: int, inserted: bytes, dropped: int) -> None:
    fmt, data = BASES[name]
    assert_never_another_size(data[:at] + inserted + data[at + dropped :], fmt)


@PROPERTY
@given(data=st.binary(max_size=256), fmt=st.sampled_from(FAST_FORMATS))
def test_arbitrary_bytes_after_a_magic(data: bytes, fmt: str) -> None:
    magic = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n", "WEBP": b"RIFF\x00\x01\x00\x00WEBP"}
    assert_never_another_size(magic[fmt] + data, fmt)


# --- import cost: no Image.init() ---------------------------------------------------

_NO_INIT_SCRIPT = """
import warnings
warnings.simplefilter("error")
from PIL import Image
import imgfetch.images as images
import imagegen as gen
from imgfetch.config import ImageConfig

assert Image._initialized < 2, "importing imgfetch.images ran Image.init()"
made = {
    "JPEG": gen.jpeg(24, 16), "PNG": gen.png(24, 16), "GIF": gen.gif(24, 16), "WEBP": gen.webp(24, 16),
    "BMP": gen.bmp(24, 16), "TIFF": gen.tiff(24, 16),
}
if "AVIF" in images.SUPPORTED:
    made["AVIF"] = gen.avif(24, 16)
assert set(made) == images.SUPPORTED - {"HEIF"}, images.SUPPORTED
for fmt, data in made.items():
    assert images._check_pillow(data, ImageConfig()) == images.ImageInfo(fmt, 24, 16), fmt
    for out in ("keep", "jpeg", "png", "webp"):
        result = images.process(data, ImageConfig(size=(12, 12), resize="fit", format=out))
        assert isinstance(result, images.Processed), (fmt, out, result)
assert Image._initialized < 2, "something ran Image.init()"
print("ok")
"""


def test_supported_formats_work_without_image_init() -> None:
    import os
    import subprocess
    import sys

    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent / "src")])}
    done = subprocess.run(
        [sys.executable, "-c", _NO_INIT_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
