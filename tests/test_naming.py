from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgfetch.config import Naming
from imgfetch.naming import (
    EXTENSIONS,
    MAX_NAME_BYTES,
    STEM_BYTES,
    Namer,
    fallback_stem,
    file_name,
    hash_stem,
    is_safe_name,
    relative_path,
    sanitize_stem,
    url_basename,
)

# shared/ is a sibling of the repository, wherever the repository is cloned.
URL_SHAPES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-url-shapes.txt"

# The longest extension, so a name check covers the worst case.
LONGEST_EXT = max(EXTENSIONS.values(), key=len)


def url_namer(folder_size: int = 0, folder_index: int = 0) -> Namer:
    return Namer(Naming(), folder_size, folder_index)


def claim_all(namer: Namer, urls: list[str]) -> list[str]:
    stems = [namer.claim(row, url, {}) for row, url in enumerate(urls)]
    assert all(s is not None for s in stems)
    return [s for s in stems if s is not None]


def assert_safe_and_unique(stems: list[str]) -> None:
    for stem in stems:
        name = file_name(stem, "AVIF")
        assert is_safe_name(name), name
        assert len(file_name(stem, "WEBP").encode()) <= MAX_NAME_BYTES
    assert len({s.casefold() for s in stems}) == len(stems)


# --- real URLs -------------------------------------------------------------


def test_real_url_shapes() -> None:
    if not URL_SHAPES.is_file():
        pytest.skip(f"shared data set not found at {URL_SHAPES}")
    urls = URL_SHAPES.read_text(encoding="utf-8").splitlines()
    assert len(urls) >= 1000
    stems = claim_all(url_namer(folder_size=10_000), urls)
    assert_safe_and_unique(stems)
    by_url = dict(zip(urls, stems, strict=True))
    # Query (with an &amp; entity) dropped, extension stripped, %2C decoded.
    wp = next(u for u in urls if "&amp;" in u and "2go-travel-sale" in u)
    assert by_url[wp] == "2go-travel-sale-ticket-valentines-day-promo"
    poster = next(u for u in urls if "poster%2C210x230" in u)
    assert by_url[poster] == "poster,210x230,f8f8f8-pad,210x230,f8f8f8.lite-1u6"
    # A decoded "/" must not become a path separator.
    google = next(u for u in urls if "58ff95783a59ca7dWMlY%2F" in u)
    assert by_url[google].startswith("58ff95783a59ca7dWMlY_10801571_")
    non_ascii = next(u for u in urls if "Advocate_of_the_Year" in u)
    assert "‘2012_Advocate_of_the_Year’" in by_url[non_ascii]
    # Trailing-slash URLs have no basename.
    slash = next(u for u in urls if u.endswith("/"))
    assert by_url[slash] == fallback_stem(slash) or by_url[slash].startswith(fallback_stem(slash) + "-")


# --- url_basename ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h/p/a.jpg?x=1&amp;y=2#frag", "a.jpg"),
        ("https://h/p/a.jpg#frag?x", "a.jpg"),
        ("https://h/p/caf%C3%A9.png", "café.png"),
        ("https://h/p/%ff%zz", "\ufffd%zz"),
        ("https://h/p/", ""),
        ("https://h", ""),
        ("https://h?q=/x.jpg", ""),
        ("https://[::1]:8080/a.gif", "a.gif"),
        ("https://[::1/a.gif", "a.gif"),
        ("//host/only", "only"),
        ("//host", ""),
        ("no-scheme/b.png", "b.png"),
        ("UNLIKELY", "UNLIKELY"),
        ("", ""),
    ],
)
def test_url_basename(url: str, expected: str) -> None:
    assert url_basename(url) == expected


# --- sanitize_stem and traversal ------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h/a/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "_.._etc_passwd"),
        ("http://h/..", ""),
        ("http://h/...", ""),
        ("http://h/....", ""),
        ("http://h/.hidden.png", "hidden"),
        ("http://h/a/..%5c..%5cwin.ini", "_.._win.ini"),
        ("http://h/a%00b%0A%0Dc.jpg", "a_b_c"),
        ("http://h/a%3A%2A%3F%22%3C%3E%7Cb", "a_b"),
        ("http://h/x.JPEG", "x"),
        ("http://h/x.jpg.", "x"),
        ("http://h/x..jpg", "x"),
        ("http://h/x.jpg.jpg", "x.jpg"),
        ("http://h/x.txt", "x.txt"),
        ("http://h/%E2%80%AEgpj.exe", "_gpj.exe"),
    ],
)
def test_traversal_and_special_characters(url: str, expected: str) -> None:
    assert sanitize_stem(url_basename(url)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CON", "_CON"),
        ("con.jpg", "_con"),
        ("con.txt", "_con.txt"),
        ("con .tar.gz", "_con .tar.gz"),
        ("lpt1", "_lpt1"),
        ("COM9.png", "_COM9"),
        ("Com\xb9", "_Com\xb9"),
        ("console", "console"),
        ("com0", "com0"),
        ("nul.", "_nul"),
    ],
)
def test_windows_device_names(text: str, expected: str) -> None:
    assert sanitize_stem(text) == expected


def test_nfc_and_underscore_runs() -> None:
    assert sanitize_stem("cafe\u0301") == "café"
    assert sanitize_stem("a//\\\\b") == "a_b"
    assert sanitize_stem("\x00\n\t") == "_"


def test_long_segment_is_truncated() -> None:
    stem = sanitize_stem(url_basename("http://h/" + "x" * 5000 + ".jpg"))
    assert stem == "x" * STEM_BYTES


@pytest.mark.parametrize("char", ["é", "€", "😀"])
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_truncation_at_a_character_boundary(char: str, offset: int) -> None:
    # Multi-byte characters straddle the STEM_BYTES boundary at every offset.
    stem = sanitize_stem("a" * (STEM_BYTES - offset) + char * 10)
    data = stem.encode("utf-8")
    assert len(data) <= STEM_BYTES
    assert len(data) > STEM_BYTES - len(char.encode())
    assert stem.startswith("a" * (STEM_BYTES - offset))
    assert "\ufffd" not in stem


def test_truncation_does_not_leave_a_trailing_dot() -> None:
    assert sanitize_stem("a" * (STEM_BYTES - 1) + ". b") == "a" * (STEM_BYTES - 1)


def test_fallback_stem() -> None:
    url = "http://h/"
    assert fallback_stem(url) == "img-" + hashlib.sha256(url.encode()).hexdigest()[:16]
    assert fallback_stem("http://h/\ud800") != fallback_stem("http://h/\ud801")
    assert url_namer().claim(0, url, {}) == fallback_stem(url)


# --- Namer -----------------------------------------------------------------


def test_same_rows_give_same_stems() -> None:
    urls = ["http://h/a.jpg", "http://x/A.png", "http://h/", "http://h/b.gif", "http://h/a.jpg?v=2"]
    first = claim_all(url_namer(), urls)
    assert first == claim_all(url_namer(), urls)
    assert first == ["a", "A-1", fallback_stem("http://h/"), "b", "a-2"]


def test_shared_basename_gets_numbered_suffixes() -> None:
    stems = claim_all(url_namer(), [f"http://h{i}/a.jpg" for i in range(500)])
    assert stems == ["a"] + [f"a-{i}" for i in range(1, 500)]


def test_suffixed_candidates_are_checked_too() -> None:
    urls = ["http://h/a", "http://h/a", "http://h/a-1", "http://h/a", "http://h/A-1"]
    assert claim_all(url_namer(), urls) == ["a", "a-1", "a-1-1", "a-2", "A-1-2"]


def test_extension_is_not_part_of_the_claim() -> None:
    assert claim_all(url_namer(), ["http://h/a.jpg", "http://h/a.png"]) == ["a", "a-1"]


def test_claims_reset_per_folder() -> None:
    namer = url_namer(folder_size=3)
    got = [(namer.folder(r), namer.claim(r, "http://h/a.jpg", {})) for r in range(7)]
    assert got == [
        ("00000", "a"),
        ("00000", "a-1"),
        ("00000", "a-2"),
        ("00001", "a"),
        ("00001", "a-1"),
        ("00001", "a-2"),
        ("00002", "a"),
    ]


def test_claims_kept_without_folders() -> None:
    namer = url_namer(folder_size=0)
    assert namer.folder(10**9) == ""
    assert namer.claim(0, "http://h/a", {}) == "a"
    assert namer.claim(10**9, "http://h/a", {}) == "a-1"


def test_folder_numbering() -> None:
    namer = url_namer(folder_size=10, folder_index=7)
    assert namer.folder(0) == "00007"
    assert namer.folder(19) == "00008"
    assert namer.folder(10**7) == "1000007"


def test_rows_must_increase() -> None:
    namer = url_namer()
    namer.claim(5, "http://h/a", {})
    with pytest.raises(ValueError, match="increasing"):
        namer.claim(5, "http://h/a", {})
    with pytest.raises(ValueError):
        Namer(Naming(), -1, 0)


def test_column_naming() -> None:
    namer = Namer(Naming(kind="column", column="id"), 0, 0)
    url = "http://h/ignored.jpg"
    rows: list[dict[str, object]] = [
        {"id": "cats/1.jpg"},
        {"id": 42},
        {},
        {"id": None},
        {"id": ""},
        {"id": float("nan")},
        {"id": ".."},
        {"id": "CATS_1"},
    ]
    stems = [namer.claim(i, url, extra) for i, extra in enumerate(rows)]
    fb = fallback_stem(url)
    assert stems == ["cats_1", "42", fb, f"{fb}-1", f"{fb}-2", f"{fb}-3", f"{fb}-4", "CATS_1-1"]


def test_index_naming() -> None:
    namer = Namer(Naming(kind="index"), 0, 0)
    assert namer.claim(0, "http://h/a", {}) == "000000000"
    assert namer.claim(123, "http://h/a", {}) == "000000123"
    assert namer.claim(10**10, "http://h/a", {}) == "10000000000"


def test_random_naming_is_unique() -> None:
    namer = Namer(Naming(kind="random"), 0, 0)
    stems = claim_all(namer, ["http://h/a.jpg"] * 2000)
    assert len(set(stems)) == len(stems)
    assert all(len(s) == 16 and int(s, 16) >= 0 for s in stems)


def test_hash_naming() -> None:
    namer = Namer(Naming(kind="hash"), 10, 0)
    assert namer.claim(0, "http://h/a.jpg", {}) is None
    digest = hashlib.sha256(b"x").hexdigest()
    assert hash_stem(digest) == digest[:32]
    assert hash_stem(digest.upper()) == digest[:32]
    for bad in ("abc", "../" + digest, "g" * 64):
        with pytest.raises(ValueError):
            hash_stem(bad)


# --- names and paths -------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "ext"),
    [
        ("JPEG", ".jpg"),
        ("MPO", ".jpg"),
        ("PNG", ".png"),
        ("GIF", ".gif"),
        ("WEBP", ".webp"),
        ("BMP", ".bmp"),
        ("TIFF", ".tif"),
        ("AVIF", ".avif"),
        ("HEIF", ".heic"),
        ("ICO", ".ico"),
        ("PSD", ".img"),
        ("", ".img"),
    ],
)
def test_file_name(fmt: str, ext: str) -> None:
    assert file_name("a", fmt) == "a" + ext


def test_relative_path() -> None:
    assert relative_path("00001", "a.jpg") == "00001/a.jpg"
    assert relative_path("", "a.jpg") == "a.jpg"


@pytest.mark.parametrize(
    "name", ["", ".", "..", ".a.jpg", "a/b", "a\\b", "a\x00", "a\nb", "con.jpg", "a ", "a.", "x" * 201]
)
def test_is_safe_name_rejects(name: str) -> None:
    assert not is_safe_name(name)


# --- properties ------------------------------------------------------------

_escapes = st.builds(lambda b: f"%{b:02x}", st.integers(0, 255)) | st.sampled_from(["%", "%z", "%2F", "%5C"])
_pieces = (
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
    | _escapes
    | st.sampled_from(["/", "//", "?", "#", ".", "..", ":", "http://", "[", "]", "CON", ".jpg", "é" * 70])
)
_urls = st.lists(_pieces, max_size=12).map("".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(_urls, min_size=1, max_size=8))
def test_any_urls_give_safe_unique_names(urls: list[str]) -> None:
    for url in urls:
        assert isinstance(url_basename(url), str)
    # Repeated so stems collide; small folders so rows also cross folder boundaries.
    namer = url_namer(folder_size=5)
    stems = claim_all(namer, urls + urls)
    by_folder: dict[str, list[str]] = {}
    for row, stem in enumerate(stems):
        by_folder.setdefault(namer.folder(row), []).append(stem)
    for folder_stems in by_folder.values():
        assert_safe_and_unique(folder_stems)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_sanitize_stem_is_safe_or_empty(text: str) -> None:
    stem = sanitize_stem(text)
    assert stem == "" or is_safe_name(stem + LONGEST_EXT)
    assert len(stem.encode("utf-8")) <= STEM_BYTES


def test_dotless_names_are_claimed_after_the_dots_are_replaced() -> None:
    """Sample keys (--key name) have no dot, and "a.b" and "a_b" still get two distinct keys."""
    namer = Namer(Naming(kind="url"), 10, 0, dotless=True)
    keys = [namer.claim(i, f"http://h/{stem}.jpg", {}) for i, stem in enumerate(["a.b", "a_b", "v1.2.3"])]
    assert keys == ["a_b", "a_b-1", "v1_2_3"]
    assert all(k is not None and "." not in k for k in keys)
