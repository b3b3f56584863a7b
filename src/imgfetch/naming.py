"""File names for saved images: stems from URLs or columns, collision-free, safe on every OS.

Pure functions and one small stateful :class:`Namer`; no I/O.  A saved file is
``folder/stem.ext``: the folder and stem are decided when the row is read, the
extension only after the bytes have been sniffed (see :func:`file_name`).
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import unicodedata
from typing import TYPE_CHECKING
from urllib.parse import unquote

if TYPE_CHECKING:
    from collections.abc import Mapping

    from imgfetch.config import Naming

EXTENSIONS: dict[str, str] = {
    "JPEG": ".jpg",
    # Pillow reports many camera/phone JPEGs (multi-picture format) as MPO.
    "MPO": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "AVIF": ".avif",
    "HEIF": ".heic",
    "ICO": ".ico",
}
UNKNOWN_EXTENSION = ".img"

MAX_NAME_BYTES = 200
#: Leaves room for a "-N" collision suffix and the longest extension.
STEM_BYTES = MAX_NAME_BYTES - 24

_IMAGE_EXT = re.compile(r"\.(?:jpe?g|jpe|png|gif|webp|bmp|tiff?|avif|hei[cf]|ico)\Z", re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
# Separators plus the characters Windows refuses in names.
_FORBIDDEN = re.compile(r'[/\\:*?"<>|]')
_UNDERSCORES = re.compile(r"_{2,}")
# Same set as CPython 3.13's ntpath.isreserved: Windows maps these to devices
# in any directory and with any extension.
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{dev}{d}" for dev in ("COM", "LPT") for d in "123456789\xb9\xb2\xb3"}
)


def url_basename(url: str) -> str:
    """The URL's last path segment, percent-decoded; ``""`` if the path is empty or ends in ``/``.

    Parsed by hand rather than with ``urlsplit``, which raises on some inputs
    (bad IPv6 brackets, odd netlocs); this never raises.
    """
    url = url.partition("#")[0].partition("?")[0]
    m = _SCHEME.match(url)
    if m is not None:
        url = url[m.end() :]
    if url.startswith("//"):
        slash = url.find("/", 2)
        url = "" if slash < 0 else url[slash:]
    segment = url.rpartition("/")[2]
    if not segment:
        return ""
    # Decoding after splitting keeps "%2F" inside the segment, where
    # sanitize_stem turns it into "_" instead of letting it make a path.
    return unquote(segment, encoding="utf-8", errors="replace")


def _is_blank(c: str) -> bool:
    return c == "." or c.isspace()


# Index loops instead of a "[\s.]+\Z" regex, which is quadratic on long blank runs.
def _rstrip_blank(text: str) -> str:
    end = len(text)
    while end and _is_blank(text[end - 1]):
        end -= 1
    return text[:end]


def _strip_ends(text: str) -> str:
    start = 0
    while start < len(text) and _is_blank(text[start]):
        start += 1
    return _rstrip_blank(text[start:])


def _truncate(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


def _is_reserved(stem: str) -> bool:
    return stem.partition(".")[0].rstrip(" ").upper() in _RESERVED


def sanitize_stem(text: str) -> str:
    """A file-name stem that is safe on Linux, macOS and Windows, or ``""`` if nothing usable remains.

    Drops one trailing image extension, NFC-normalises, turns separators,
    control/format/unassigned characters (category C*, plus line and paragraph
    separators) and ``: * ? " < > |`` into ``_``, collapses ``_`` runs, strips
    leading and trailing whitespace and dots, prefixes Windows device names
    with ``_`` and truncates to :data:`STEM_BYTES` UTF-8 bytes.
    """
    text = unicodedata.normalize("NFC", text)
    # isprintable() is a C-speed check that is False for every C* character;
    # only then pay for the per-character loop.
    if not text.isprintable():
        text = "".join("_" if unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" else c for c in text)
    text = _UNDERSCORES.sub("_", _FORBIDDEN.sub("_", text))
    # Trailing dots first so "a.jpg." still loses its extension, then the
    # extension, then the ends again so "a..jpg" does not end in a dot.
    text = _strip_ends(_IMAGE_EXT.sub("", _rstrip_blank(text)))
    text = _rstrip_blank(_truncate(text, STEM_BYTES))
    if _is_reserved(text):
        text = _rstrip_blank(_truncate("_" + text, STEM_BYTES))
    return text


def fallback_stem(url: str) -> str:
    """A stable stem for a URL that yields none: ``img-`` and 16 hex digits of its SHA-256."""
    digest = hashlib.sha256(url.encode("utf-8", errors="surrogatepass")).hexdigest()
    return f"img-{digest[:16]}"


def hash_stem(sha256_hex: str) -> str:
    """The stem of content-hash naming: the first 32 hex digits, lower case."""
    stem = sha256_hex[:32].lower()
    if len(stem) != 32 or stem.strip("0123456789abcdef"):
        raise ValueError(f"not a SHA-256 hex digest: {sha256_hex!r}")
    return stem


def file_name(stem: str, fmt: str) -> str:
    """``stem`` plus the extension of the sniffed Pillow format (``.img`` when unknown)."""
    return stem + EXTENSIONS.get(fmt, UNKNOWN_EXTENSION)


def relative_path(folder: str, name: str) -> str:
    """The POSIX path of a file below the output directory."""
    return f"{folder}/{name}" if folder else name


def is_safe_name(name: str) -> bool:
    """True if ``name`` is one non-hidden path component that every common OS accepts as is."""
    if not name or name.startswith(".") or name != _strip_ends(name):
        return False
    if _FORBIDDEN.search(name) or _is_reserved(name):
        return False
    if any(unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" for c in name):
        return False
    return len(name.encode("utf-8")) <= MAX_NAME_BYTES


def _claim_key(stem: str) -> str:
    # casefold is at least as coarse as the case folding of NTFS and APFS;
    # NFC again because casefolding can denormalise.
    return unicodedata.normalize("NFC", stem.casefold())


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == ""


class Namer:
    """Deterministic, collision-free stems, claimed in input order, one folder at a time.

    Call :meth:`claim` for every row in increasing row order, including rows
    that end up skipped or were done by an earlier run: a row's stem depends
    on the rows before it, so a resumed run gets the same stems only if it
    claims the same rows.

    Within a folder, stems are compared case-insensitively (casefold).  The
    first row to claim a stem keeps it; a later row whose stem ``s`` is taken
    gets ``s-N`` for the smallest ``N >= 1`` such that ``s-N`` is free, so rows
    ``a, a, a-1`` get ``a, a-1, a-1-1``.  The suffix is added once, to the
    row's own stem, so a name never exceeds :data:`MAX_NAME_BYTES`.  A per-stem
    counter makes ``k`` rows sharing one stem cost O(k), not O(k²).

    Memory: the claims of the current folder only, forgotten when the rows
    move on (a folder is never revisited).  With ``folder_size == 0`` there is
    one folder, so claims are kept for the whole run: roughly 100-150 bytes
    per row with typical stems, about 1-1.5 GB for ten million rows.  Index
    naming claims nothing (row numbers are unique) and hash naming is decided
    after download.
    """

    def __init__(self, naming: Naming, folder_size: int, folder_index: int, *, dotless: bool = False) -> None:
        if folder_size < 0 or folder_index < 0:
            raise ValueError("folder_size and folder_index must be >= 0")
        self._naming = naming
        self._folder_size = folder_size
        self._folder_index = folder_index
        self._last_row = -1
        self._current: str | None = None
        self._claimed: set[str] = set()
        self._next_suffix: dict[str, int] = {}
        #: Sample keys of the shard formats: loaders split a member name at its first dot, so
        #: dots become "_" *before* the claim (then "a.b" and "a_b" still get distinct keys).
        self._dotless = dotless

    def folder(self, row: int) -> str:
        """The sub-folder of ``row``: ``""`` without folders, else at least five digits."""
        if self._folder_size == 0:
            return ""
        return f"{self._folder_index + row // self._folder_size:05d}"

    def claim(self, row: int, url: str, extra: Mapping[str, object]) -> str | None:
        """Reserve and return the stem of ``row`` in its folder; ``None`` for hash naming."""
        if row <= self._last_row:
            raise ValueError(f"rows must be claimed in increasing order: {row} after {self._last_row}")
        self._last_row = row
        folder = self.folder(row)
        if folder != self._current:
            self._current = folder
            self._claimed = set()
            self._next_suffix = {}
        kind = self._naming.kind
        if kind == "hash":
            return None
        if kind == "index":
            return f"{row:09d}"
        if kind == "random":
            return self._reserve(secrets.token_hex(8))
        if kind == "column":
            column = self._naming.column
            value = extra.get(column) if column is not None else None
            stem = "" if _missing(value) else sanitize_stem(str(value))
        else:
            stem = sanitize_stem(url_basename(url))
        return self._reserve(stem or fallback_stem(url))

    def _reserve(self, stem: str) -> str:
        if self._dotless:
            stem = stem.replace(".", "_")
        key = _claim_key(stem)
        if key not in self._claimed:
            self._claimed.add(key)
            return stem
        # Numbers below the saved counter were all taken and claims only grow,
        # so resuming from it gives the same answer as scanning from 1.
        n = self._next_suffix.get(key, 1)
        while True:
            candidate = f"{stem}-{n}"
            candidate_key = _claim_key(candidate)
            n += 1
            if candidate_key not in self._claimed:
                break
        self._next_suffix[key] = n
        self._claimed.add(candidate_key)
        return candidate
