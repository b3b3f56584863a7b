"""imgfetch.images: sniffing, header checks, filters, decoding and transforms."""

from __future__ import annotations

import pickle
import statistics
import time
from io import BytesIO

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageCms

import imagegen as gen
from imgfetch.config import ImageConfig
from imgfetch.images import (
    SUPPORTED,
    ImageInfo,
    Processed,
    Rejected,
    check,
    cover_size,
    crop_box,
    fit_size,
    pad_offset,
    process,
    psnr,
    sniff,
)
from imgfetch.outcome import Reason

DEFAULT = ImageConfig()
HAS_AVIF = "AVIF" in SUPPORTED


def _open(data: bytes) -> Image.Image:
    img = Image.open(BytesIO(data))
    img.load()
    return img


def _processed(result: Processed | Rejected) -> Processed:
    assert isinstance(result, Processed), result
    return result


def _rejected(result: object) -> Rejected:
    assert isinstance(result, Rejected), result
    return result


def _ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = b"ftyp" + major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return (len(body) + 4).to_bytes(4, "big") + body + b"\x00" * 32


# --- sniff ---------------------------------------------------------------------

SNIFF_TABLE: list[tuple[str, bytes, str | None]] = [
    ("jpeg", gen.jpeg(16, 16), "JPEG"),
    ("progressive-jpeg", gen.jpeg(16, 16, progressive=True), "JPEG"),
    ("png", gen.png(16, 16), "PNG"),
    ("gif89a", gen.gif(16, 16), "GIF"),
    ("gif87a", b"GIF87a" + b"\x00" * 20, "GIF"),
    ("webp", gen.webp(16, 16), "WEBP"),
    ("bmp", gen.bmp(16, 16), "BMP"),
    ("tiff-le", gen.tiff(16, 16), "TIFF"),
    ("tiff-be", b"MM\x00*\x00\x00\x00\x08" + b"\x00" * 16, "TIFF"),
    ("avif-brand", _ftyp(b"avif", b"mif1", b"miaf"), "AVIF"),
    ("avif-compatible", _ftyp(b"mif1", b"avif", b"miaf"), "AVIF"),
    ("heic", _ftyp(b"heic", b"mif1", b"heic"), "HEIF"),
    ("heif-mif1", _ftyp(b"mif1", b"heic"), "HEIF"),
    ("mp4", _ftyp(b"isom", b"iso2", b"mp41"), None),
    ("html", gen.html(), None),
    ("json", b'{"error": "not found"}', None),
    ("svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', None),
    ("xml-svg", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', None),
    ("empty", b"", None),
    ("jpeg-prefix-only", b"\xff\xd8", None),
    ("text-starting-BM", b"BMW is a car maker, not a bitmap", None),
    ("text-starting-II", b"II* is not a tiff", None),
    ("riff-wave", b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
    ("junk", bytes(range(256)), None),
]


@pytest.mark.parametrize(
    ("data", "expected"), [(d, e) for _, d, e in SNIFF_TABLE], ids=[n for n, _, _ in SNIFF_TABLE]
)
def test_sniff_table(data: bytes, expected: str | None) -> None:
    assert sniff(data) == expected


@pytest.mark.skipif(not HAS_AVIF, reason="this Pillow has no AVIF support")
def test_sniff_real_avif() -> None:
    assert sniff(gen.avif(16, 16)) == "AVIF"


def test_sniff_is_cheap() -> None:
    data = gen.jpeg(64, 64)
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        sniff(data)
    # ~0.2 µs on a laptop; the bound only catches accidental parsing.
    assert (time.perf_counter() - start) / n < 20e-6


# --- check ---------------------------------------------------------------------

FORMATS: list[tuple[str, bytes, str]] = [
    ("jpeg", gen.jpeg(40, 30), "JPEG"),
    ("jpeg-cmyk", gen.jpeg(40, 30, cmyk=True), "JPEG"),
    ("jpeg-grey", gen.jpeg(40, 30, grey=True), "JPEG"),
    ("jpeg-progressive", gen.jpeg(40, 30, progressive=True), "JPEG"),
    ("png-rgb", gen.png(40, 30), "PNG"),
    ("png-rgba", gen.png(40, 30, mode="RGBA"), "PNG"),
    ("png-p", gen.png(40, 30, mode="P"), "PNG"),
    ("png-p-transparent", gen.png(40, 30, mode="P-transparent"), "PNG"),
    ("png-16bit", gen.png(40, 30, mode="I;16"), "PNG"),
    ("png-grey", gen.png(40, 30, mode="L"), "PNG"),
    ("png-1bit", gen.png(40, 30, mode="1"), "PNG"),
    ("gif", gen.gif(40, 30), "GIF"),
    ("gif-animated", gen.gif(40, 30, frames=3), "GIF"),
    ("webp", gen.webp(40, 30), "WEBP"),
    ("webp-alpha", gen.webp(40, 30, alpha=True), "WEBP"),
    ("bmp", gen.bmp(40, 30), "BMP"),
    ("tiff", gen.tiff(40, 30), "TIFF"),
]
if HAS_AVIF:
    FORMATS.append(("avif", gen.avif(40, 30), "AVIF"))


@pytest.mark.parametrize(("data", "fmt"), [(d, f) for _, d, f in FORMATS], ids=[n for n, _, _ in FORMATS])
def test_check_reads_format_and_size(data: bytes, fmt: str) -> None:
    assert check(data, DEFAULT) == ImageInfo(fmt, 40, 30)


@pytest.mark.parametrize(
    "data", [gen.html(), b"", b"{}", b"<svg/>", bytes(100)], ids=["html", "empty", "json", "svg", "zeros"]
)
def test_check_not_an_image(data: bytes) -> None:
    rejected = _rejected(check(data, DEFAULT))
    assert rejected.reason == Reason.NOT_AN_IMAGE.value
    assert not rejected.skipped


@pytest.mark.skipif("HEIF" in SUPPORTED, reason="a HEIF plugin is installed")
def test_check_unsupported_sniffed_format_is_not_an_image() -> None:
    rejected = _rejected(check(_ftyp(b"heic", b"mif1"), DEFAULT))
    assert rejected.reason == Reason.NOT_AN_IMAGE.value
    assert "HEIF" in rejected.detail


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, b"\xff\xd8\xff" + b"\x00" * 50, b"GIF89a\x00"],
    ids=["png", "jpeg", "gif"],
)
def test_check_broken_header_is_decode_error(data: bytes) -> None:
    rejected = _rejected(check(data, DEFAULT))
    assert rejected.reason == Reason.DECODE_ERROR.value
    assert rejected.detail and len(rejected.detail) <= 200


def test_check_only_opens_the_sniffed_format() -> None:
    # A PNG signature followed by a valid JPEG must not be handed to the JPEG plugin.
    rejected = _rejected(check(b"\x89PNG\r\n\x1a\n" + gen.jpeg(8, 8), DEFAULT))
    assert rejected.reason == Reason.DECODE_ERROR.value


def test_check_passes_truncated_jpeg_header() -> None:
    assert check(gen.truncated_jpeg(320, 240), DEFAULT) == ImageInfo("JPEG", 320, 240)


def test_check_is_fast_on_a_100kb_jpeg() -> None:
    data = gen.jpeg(800, 600, quality=80)
    assert 50_000 < len(data) < 300_000
    check(data, DEFAULT)
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        check(data, DEFAULT)
    # Target is < 100 µs; a loose bound keeps slow CI machines green.
    assert (time.perf_counter() - start) / n < 1e-3


def test_huge_pixel_png_is_refused_without_decoding() -> None:
    data = gen.huge_pixels_png(30_000, 30_000)
    assert len(data) < 200
    start = time.perf_counter()
    for result in (check(data, DEFAULT), process(data, ImageConfig(size=(64, 64), resize="fit"))):
        assert _rejected(result).reason == Reason.TOO_MANY_PIXELS.value
    assert time.perf_counter() - start < 0.5


def test_too_many_pixels_uses_cfg_max_pixels() -> None:
    cfg = ImageConfig(max_pixels=1000)
    assert check(gen.png(40, 25), cfg) == ImageInfo("PNG", 40, 25)
    rejected = _rejected(check(gen.png(40, 26), cfg))
    assert rejected.reason == Reason.TOO_MANY_PIXELS.value
    assert rejected.info == ImageInfo("PNG", 40, 26)
    assert not rejected.skipped
    assert _rejected(process(gen.png(40, 26), ImageConfig(max_pixels=1000, verify=True))).reason == (
        Reason.TOO_MANY_PIXELS.value
    )


def test_pillow_guard_never_warns_below_cfg_max_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    # 100 MP is above Pillow's default warning threshold; with a higher
    # cfg.max_pixels check() accepts it, and (warnings are errors here) Pillow stays quiet.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    data = gen.huge_pixels_png(10_000, 10_000)
    assert check(data, ImageConfig(max_pixels=200_000_000)) == ImageInfo("PNG", 10_000, 10_000)
    limit = Image.MAX_IMAGE_PIXELS
    assert limit is not None and limit >= 200_000_000
    # A smaller limit later never lowers Pillow's guard again.
    check(data, ImageConfig(max_pixels=1000))
    assert limit == Image.MAX_IMAGE_PIXELS


def test_between_pillow_warning_and_error_is_too_many_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    rejected = _rejected(check(gen.huge_pixels_png(10_000, 10_000), DEFAULT))
    assert rejected.reason == Reason.TOO_MANY_PIXELS.value


# --- filters -------------------------------------------------------------------


def test_skip_small() -> None:
    cfg = ImageConfig(size=(100, 100), skip_small=True)
    rejected = _rejected(check(gen.png(80, 120), cfg))
    assert (rejected.reason, rejected.skipped) == (Reason.TOO_SMALL.value, True)
    assert rejected.info == ImageInfo("PNG", 80, 120)
    assert check(gen.png(100, 120), cfg) == ImageInfo("PNG", 100, 120)
    # Without skip_small the size is only a resize target.
    assert isinstance(check(gen.png(80, 120), ImageConfig(size=(100, 100))), ImageInfo)


def test_skip_small_uses_exif_orientation() -> None:
    data = gen.jpeg(200, 100, exif_orientation=6)  # displayed as 100x200
    too_narrow = _rejected(check(data, ImageConfig(size=(150, 50), skip_small=True)))
    assert too_narrow.reason == Reason.TOO_SMALL.value
    assert check(data, ImageConfig(size=(50, 150), skip_small=True)) == ImageInfo("JPEG", 200, 100)


def test_min_size() -> None:
    cfg = ImageConfig(min_size=50)
    rejected = _rejected(check(gen.png(100, 40), cfg))
    assert (rejected.reason, rejected.skipped) == (Reason.TOO_SMALL.value, True)
    assert isinstance(check(gen.png(100, 50), cfg), ImageInfo)


@pytest.mark.parametrize(("w", "h"), [(300, 100), (100, 300)])
def test_max_aspect_ratio(w: int, h: int) -> None:
    rejected = _rejected(check(gen.png(w, h), ImageConfig(max_aspect_ratio=2.5)))
    assert (rejected.reason, rejected.skipped) == (Reason.BAD_ASPECT_RATIO.value, True)
    assert isinstance(check(gen.png(w, h), ImageConfig(max_aspect_ratio=3.0)), ImageInfo)


def test_filters_apply_in_process_too() -> None:
    cfg = ImageConfig(size=(100, 100), resize="fit", skip_small=True)
    assert _rejected(process(gen.png(50, 50), cfg)).reason == Reason.TOO_SMALL.value


# --- process: verify -----------------------------------------------------------


def test_verify_returns_original_bytes() -> None:
    data = gen.jpeg(64, 48)
    assert process(data, ImageConfig(verify=True)) == Processed(data, "JPEG", 64, 48, "JPEG", 64, 48)


def test_verify_truncated_jpeg_is_decode_error() -> None:
    rejected = _rejected(process(gen.truncated_jpeg(320, 240), ImageConfig(verify=True)))
    assert rejected.reason == Reason.DECODE_ERROR.value
    assert "truncated" in rejected.detail
    assert not rejected.skipped


def test_truncated_jpeg_with_transforms_is_decode_error() -> None:
    cfg = ImageConfig(size=(32, 32), resize="fit")
    assert _rejected(process(gen.truncated_jpeg(320, 240), cfg)).reason == Reason.DECODE_ERROR.value


@pytest.mark.parametrize("transforms", [False, True])
def test_verify_checks_later_animation_frames(transforms: bool) -> None:
    cfg = ImageConfig(verify=True, size=(16, 16), resize="fit" if transforms else "none")
    data = gen.gif(32, 32, frames=3)
    assert isinstance(process(data, cfg), Processed)
    # Cutting the last frame in half must not pass just because frame 0 decodes.
    assert _rejected(process(data[: len(data) - 200], cfg)).reason == Reason.DECODE_ERROR.value
    # Without --verify a transform only needs (and only decodes) the first frame.
    if transforms:
        assert isinstance(
            process(data[: len(data) - 200], ImageConfig(size=(16, 16), resize="fit")), Processed
        )


def test_rgb_png_colour_key_becomes_alpha() -> None:
    img = gen.photo(20, 10)
    img.paste((1, 2, 3), (0, 0, 10, 10))
    out = _processed(process(gen.encode(img, "PNG", transparency=(1, 2, 3)), TO_PNG))
    alpha = _open(out.data).getchannel("A")
    assert (alpha.getpixel((5, 5)), alpha.getpixel((15, 5))) == (0, 255)


# --- process: modes ------------------------------------------------------------

TO_PNG = ImageConfig(format="png")


def test_cmyk_jpeg_becomes_rgb_not_inverted() -> None:
    out = _processed(process(gen.jpeg(64, 48, cmyk=True), ImageConfig(format="jpeg")))
    img = _open(out.data)
    assert img.mode == "RGB"
    reference = gen.photo(64, 48)
    assert psnr(img, reference) > 20  # an inverted image would score ~5 dB


def test_palette_with_transparency_becomes_rgba() -> None:
    out = _processed(process(gen.png(40, 30, mode="P-transparent"), TO_PNG))
    img = _open(out.data)
    assert img.mode == "RGBA"
    alpha = img.getchannel("A")
    assert (alpha.getpixel((0, 0)), alpha.getpixel((39, 29))) == (0, 255)


def test_palette_without_transparency_becomes_rgb() -> None:
    assert _open(_processed(process(gen.png(40, 30, mode="P"), TO_PNG)).data).mode == "RGB"


def test_16bit_png_is_scaled_not_clipped() -> None:
    out = _processed(process(gen.png(40, 30, mode="I;16"), TO_PNG))
    img = _open(out.data)
    assert img.mode == "L"
    # imagegen stores v * 257; dividing by 256 gives back exactly v.
    assert img.tobytes() == gen.photo(40, 30).convert("L").tobytes()


def test_grey_stays_grey() -> None:
    jpeg = _open(_processed(process(gen.jpeg(40, 30, grey=True), ImageConfig(format="jpeg"))).data)
    assert jpeg.mode == "L"
    png = _open(_processed(process(gen.png(40, 30, mode="L"), TO_PNG)).data)
    assert png.mode == "L"
    # WebP has no grey mode.
    webp = _open(_processed(process(gen.png(40, 30, mode="L"), ImageConfig(format="webp"))).data)
    assert webp.mode == "RGB"


def test_one_bit_becomes_grey() -> None:
    img = _open(_processed(process(gen.png(40, 30, mode="1"), TO_PNG)).data)
    assert img.mode == "L"
    assert set(img.tobytes()) <= {0, 255}


def test_la_becomes_rgba() -> None:
    img = _open(_processed(process(gen.encode(gen.photo(20, 10).convert("LA"), "PNG"), TO_PNG)).data)
    assert img.mode == "RGBA"


def test_animated_gif_keeps_first_frame_as_png() -> None:
    data = gen.gif(40, 30, frames=3)
    out = _processed(process(data, ImageConfig(size=(100, 100), resize="fit")))
    assert (out.format, out.width, out.height, out.orig_format) == ("PNG", 40, 30, "GIF")
    with Image.open(BytesIO(data)) as src:
        first = src.convert("RGB")
        src.seek(1)
        second = src.convert("RGB")
    result = _open(out.data).convert("RGB")
    assert result.tobytes() == first.tobytes()
    assert result.tobytes() != second.tobytes()


def test_exif_orientation_is_applied_and_dropped() -> None:
    stored = Image.new("RGB", (200, 100), (255, 0, 0))
    stored.paste((0, 0, 255), (100, 0, 200, 100))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: stored left becomes top
    data = gen.encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    out = _processed(process(data, ImageConfig(size=(100, 100), resize="fit")))
    assert (out.width, out.height) == (50, 100)
    assert (out.orig_width, out.orig_height) == (200, 100)
    img = _open(out.data)
    assert img.size == (50, 100)
    assert img.getexif().get(0x0112) is None
    top, bottom = img.getpixel((25, 10)), img.getpixel((25, 90))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_gives_display_size(orientation: int) -> None:
    data = gen.jpeg(120, 60, exif_orientation=orientation)
    out = _processed(process(data, ImageConfig(size=(30, 20), resize="crop")))
    assert (out.width, out.height) == (30, 20)
    fit = _processed(process(data, ImageConfig(size=(60, 60), resize="fit")))
    assert (fit.width, fit.height) == ((30, 60) if orientation >= 5 else (60, 30))


def test_progressive_jpeg_is_processed_to_baseline() -> None:
    out = _processed(process(gen.jpeg(160, 120, progressive=True), ImageConfig(size=(80, 80), resize="fit")))
    img = _open(out.data)
    assert img.size == (80, 60)
    assert "progressive" not in img.info


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (gen.jpeg(40, 30), "JPEG"),
        (gen.png(40, 30), "PNG"),
        (gen.webp(40, 30), "WEBP"),
        (gen.gif(40, 30), "PNG"),
        (gen.bmp(40, 30), "PNG"),
        (gen.tiff(40, 30), "PNG"),
        *([(gen.avif(40, 30), "PNG")] if HAS_AVIF else []),
    ],
)
def test_keep_format(data: bytes, fmt: str) -> None:
    out = _processed(process(data, ImageConfig(size=(20, 20), resize="fit")))
    assert out.format == fmt
    assert sniff(out.data) == fmt
    assert _open(out.data).size == (20, 15)


@pytest.mark.parametrize(("name", "fmt"), [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")])
def test_output_format(name: str, fmt: str) -> None:
    cfg = ImageConfig(format=name)  # type: ignore[arg-type]
    for data in (gen.jpeg(40, 30), gen.png(40, 30, mode="RGBA"), gen.gif(40, 30)):
        out = _processed(process(data, cfg))
        assert (out.format, sniff(out.data), out.width, out.height) == (fmt, fmt, 40, 30)


def test_quality_is_honoured() -> None:
    data = gen.jpeg(400, 300, quality=95)
    low = _processed(process(data, ImageConfig(format="jpeg", quality=30)))
    high = _processed(process(data, ImageConfig(format="jpeg", quality=95)))
    assert len(low.data) < len(high.data) * 0.6
    assert _open(low.data).size == _open(high.data).size == (400, 300)
    low_webp = _processed(process(data, ImageConfig(format="webp", quality=30)))
    high_webp = _processed(process(data, ImageConfig(format="webp", quality=95)))
    assert len(low_webp.data) < len(high_webp.data)


def test_alpha_is_composited_on_pad_color_for_jpeg() -> None:
    data = gen.png(64, 32, mode="RGBA")  # left half fully transparent
    out = _processed(process(data, ImageConfig(format="jpeg", pad_color=(0, 255, 0))))
    img = _open(out.data)
    assert img.mode == "RGB"
    left = img.getpixel((8, 16))
    assert isinstance(left, tuple)
    assert left[0] < 20 and left[1] > 235 and left[2] < 20
    assert psnr(img.crop((40, 0, 64, 32)), gen.photo(64, 32).crop((40, 0, 64, 32))) > 25


def test_alpha_is_kept_for_png_and_webp() -> None:
    data = gen.png(64, 32, mode="RGBA")
    for name in ("png", "webp"):
        img = _open(_processed(process(data, ImageConfig(format=name))).data)
        assert img.mode == "RGBA"
        alpha = img.getchannel("A")
        assert alpha.getpixel((8, 16)) == 0
        assert alpha.getpixel((56, 16)) == 255


def test_icc_profile_kept_for_rgb_dropped_for_cmyk() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = gen.encode(gen.photo(40, 30), "JPEG", icc_profile=srgb)
    out = _processed(process(rgb, ImageConfig(size=(20, 20), resize="fit")))
    assert _open(out.data).info.get("icc_profile") == srgb
    fake_cmyk_profile = b"not really a cmyk profile"
    cmyk = gen.encode(gen.photo(40, 30).convert("CMYK"), "JPEG", icc_profile=fake_cmyk_profile)
    for name in ("jpeg", "png", "webp"):
        out = _processed(process(cmyk, ImageConfig(size=(20, 20), resize="fit", format=name)))
        assert "icc_profile" not in _open(out.data).info


def test_results_are_picklable() -> None:
    values: list[object] = [
        _processed(process(gen.png(8, 8), TO_PNG)),
        _rejected(check(gen.png(8, 8), ImageConfig(min_size=20))),
        ImageInfo("PNG", 1, 2),
    ]
    for value in values:
        assert pickle.loads(pickle.dumps(value)) == value


# --- resize --------------------------------------------------------------------

RESIZE_TABLE = [
    # (source w, h, mode, box, upscale, expected output size)
    (400, 200, "fit", (100, 100), False, (100, 50)),
    (200, 400, "fit", (100, 100), False, (50, 100)),
    (400, 300, "fit", (160, 90), False, (120, 90)),
    (333, 100, "fit", (100, 100), False, (100, 30)),
    (1000, 3, "fit", (100, 100), False, (100, 1)),  # never below 1 px
    (50, 30, "fit", (100, 100), False, (50, 30)),  # small: untouched
    (50, 30, "fit", (100, 100), True, (100, 60)),
    (400, 200, "exact", (100, 100), False, (100, 100)),
    (50, 30, "exact", (100, 100), False, (100, 100)),
    (400, 200, "crop", (100, 100), False, (100, 100)),
    (200, 400, "crop", (100, 50), False, (100, 50)),
    (50, 30, "crop", (100, 100), False, (100, 100)),
    (400, 200, "pad", (100, 100), False, (100, 100)),
    (50, 30, "pad", (100, 100), False, (100, 100)),
    (50, 30, "pad", (100, 100), True, (100, 100)),
    (400, 200, "none", (100, 100), False, (400, 200)),
]


@pytest.mark.parametrize(("w", "h", "mode", "box", "upscale", "expected"), RESIZE_TABLE)
def test_resize_output_size(
    w: int, h: int, mode: str, box: tuple[int, int], upscale: bool, expected: tuple[int, int]
) -> None:
    cfg = ImageConfig(size=box, resize=mode, upscale=upscale, format="png")  # type: ignore[arg-type]
    for data in (gen.png(w, h), gen.jpeg(w, h)):
        out = _processed(process(data, cfg))
        assert (out.width, out.height) == expected
        assert _open(out.data).size == expected
        assert (out.orig_width, out.orig_height) == (w, h)


def test_small_image_is_left_untouched_by_fit() -> None:
    data = gen.png(50, 30)
    out = _processed(process(data, ImageConfig(size=(100, 100), resize="fit", format="png")))
    assert _open(out.data).tobytes() == gen.photo(50, 30).tobytes()


@pytest.mark.parametrize(("upscale", "content"), [(False, (50, 30)), (True, (100, 60))])
def test_pad_centres_on_pad_color(upscale: bool, content: tuple[int, int]) -> None:
    cfg = ImageConfig(size=(100, 100), resize="pad", upscale=upscale, pad_color=(255, 0, 0), format="png")
    img = _open(_processed(process(gen.png(50, 30), cfg)).data)
    assert img.size == (100, 100)
    x0, y0 = pad_offset(*content, 100, 100)
    assert img.getpixel((x0 + content[0] // 2, y0 - 1)) == (255, 0, 0)
    assert img.getpixel((x0 + content[0] // 2, y0 + content[1])) == (255, 0, 0)
    assert img.crop((x0, y0, x0 + content[0], y0 + content[1])).getcolors(1) is None  # photo, not flat


def test_pad_keeps_alpha_and_pads_opaque() -> None:
    cfg = ImageConfig(size=(64, 64), resize="pad", format="png", pad_color=(0, 0, 255))
    img = _open(_processed(process(gen.png(64, 32, mode="RGBA"), cfg)).data)
    assert img.mode == "RGBA"
    assert img.getpixel((10, 2)) == (0, 0, 255, 255)
    assert img.getchannel("A").getpixel((10, 32)) == 0


def test_pad_grey_with_colour_becomes_rgb() -> None:
    cfg = ImageConfig(size=(64, 64), resize="pad", format="png", pad_color=(255, 0, 0))
    assert _open(_processed(process(gen.png(64, 32, mode="L"), cfg)).data).mode == "RGB"
    grey_pad = ImageConfig(size=(64, 64), resize="pad", format="png", pad_color=(9, 9, 9))
    img = _open(_processed(process(gen.png(64, 32, mode="L"), grey_pad)).data)
    assert (img.mode, img.getpixel((0, 0))) == ("L", 9)


def test_crop_takes_the_centre() -> None:
    # Three vertical bands; cropping a square from the middle keeps only the centre band.
    src = Image.new("RGB", (300, 100), (255, 0, 0))
    src.paste((0, 255, 0), (100, 0, 200, 100))
    src.paste((0, 0, 255), (200, 0, 300, 100))
    out = _processed(process(gen.encode(src, "PNG"), ImageConfig(size=(50, 50), resize="crop")))
    img = _open(out.data)
    assert img.size == (50, 50)
    assert img.getpixel((25, 25)) == (0, 255, 0)
    for x in (2, 47):
        pixel = img.getpixel((x, 25))
        assert isinstance(pixel, tuple) and pixel[1] > 200


def test_fit_size_examples() -> None:
    assert fit_size(400, 200, 100, 100, False) == (100, 50)
    assert fit_size(50, 30, 100, 100, False) == (50, 30)
    assert fit_size(50, 30, 100, 100, True) == (100, 60)
    assert fit_size(3, 1000, 100, 100, False) == (1, 100)
    assert fit_size(1000, 1000, 101, 100, False) == (100, 100)
    assert fit_size(4000, 3000, 256, 256, False) == (256, 192)
    assert fit_size(5, 2, 2, 2, False) == (2, 1)  # 0.8 rounds to 1


def test_cover_size_and_crop_box_examples() -> None:
    assert cover_size(400, 200, 100, 100) == (200, 100)
    assert cover_size(50, 30, 100, 100) == (167, 100)
    assert crop_box(400, 200, 100, 100) == (100.0, 0.0, 300.0, 200.0)
    assert crop_box(200, 400, 100, 50) == (0.0, 150.0, 200.0, 250.0)
    assert crop_box(300, 200, 150, 100) == (0.0, 0.0, 300.0, 200.0)
    assert pad_offset(100, 50, 100, 100) == (0, 25)
    assert pad_offset(51, 31, 100, 100) == (24, 34)


sides = st.integers(min_value=1, max_value=10_000)


@given(sides, sides, sides, sides, st.booleans())
def test_fit_size_properties(w: int, h: int, bw: int, bh: int, upscale: bool) -> None:
    fw, fh = fit_size(w, h, bw, bh, upscale)
    assert fw >= 1 and fh >= 1
    if not upscale and w <= bw and h <= bh:
        assert (fw, fh) == (w, h)
    else:
        assert fw <= bw and fh <= bh
        assert fw == bw or fh == bh  # touches the box
        # Each side is the exact scaled side rounded to nearest (or the 1 px minimum).
        scale = min(bw / w, bh / h)
        assert abs(fw - w * scale) <= 0.5 + 1e-9 or fw == 1
        assert abs(fh - h * scale) <= 0.5 + 1e-9 or fh == 1


@given(sides, sides, sides, sides)
def test_cover_and_crop_properties(w: int, h: int, bw: int, bh: int) -> None:
    cw, ch = cover_size(w, h, bw, bh)
    assert cw >= bw and ch >= bh
    assert cw == bw or ch == bh
    left, top, right, bottom = crop_box(w, h, bw, bh)
    assert 0 <= left <= right <= w and 0 <= top <= bottom <= h
    assert right - left == pytest.approx(w) or bottom - top == pytest.approx(h)
    assert (right - left) * bh == pytest.approx((bottom - top) * bw)
    assert left == pytest.approx(w - right) and top == pytest.approx(h - bottom)


# --- fast path quality ------------------------------------------------------------


def _photos() -> list[Image.Image]:
    """Realistic photos at ~1600x1200: scikit-image's samples if installed, else synthetic."""
    try:
        import numpy as np
        from skimage import data as samples
    except ImportError:
        return [gen.photo(1600, 1200, seed=s) for s in range(3)]
    arrays = [getattr(samples, name)() for name in ("astronaut", "chelsea", "coffee")]
    photos = [Image.fromarray(np.asarray(a)).resize((1600, 1200), Image.Resampling.BICUBIC) for a in arrays]
    return [*photos, gen.photo(1600, 1200, seed=1)]


def test_fast_path_matches_full_decode() -> None:
    scores = []
    for photo in _photos():
        data = gen.encode(photo, "JPEG", quality=90)
        for box, mode in (((256, 256), "fit"), ((224, 224), "crop")):
            cfg = ImageConfig(size=box, resize=mode, format="png")  # type: ignore[arg-type]
            fast = _processed(process(data, cfg))
            full = _processed(process(data, cfg, fast=False))
            assert (fast.width, fast.height) == (full.width, full.height)
            scores.append(psnr(_open(fast.data), _open(full.data)))
    assert statistics.mean(scores) >= 40, scores
    assert min(scores) >= 35, scores


def test_psnr() -> None:
    a = gen.photo(32, 32)
    assert psnr(a, a) == float("inf")
    b = Image.eval(a, lambda v: min(255, v + 1))
    assert 45 < psnr(a, b) < 49  # MSE <= 1 -> >= 48.1 dB
    with pytest.raises(ValueError, match="cannot compare"):
        psnr(a, a.convert("L"))
