"""Input lists -> a stream of :class:`Row`, in bounded memory.

Every reader streams: txt and jsonl read one capped line at a time, csv/tsv feed
the csv module through a line source with the same cap, parquet reads one row
group at a time and hands it on in bounded record batches.  A row that cannot be
parsed is still yielded, with ``error`` set, so the pipeline records it as a
failed outcome and the run goes on; only an input that cannot be opened or read
at all raises :class:`InputError`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import io
import json
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, BinaryIO, get_args

from imgfetch.config import InputConfig, InputFormat
from imgfetch.errors import ConfigError, InputError

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator, Mapping

    import pyarrow as pa
    import pyarrow.parquet as pq

MAX_LINE_BYTES = 1 << 20

_TOO_LONG = "line longer than 1 MiB"
_ROW_TOO_LONG = "row longer than 1 MiB"
_BATCH_ROWS = 8192
# A parquet row group at most this big (rows, and uncompressed bytes of all its columns)
# is read whole, one at a time; a bigger one is streamed page by page instead.
_GROUP_ROWS = 1 << 20
_GROUP_BYTES = 64 << 20
_PARQUET_BUFFER = 1 << 16  # read-buffer size per column while streaming a big row group
_DISCARD_CHUNK = 1 << 16
_BOM = b"\xef\xbb\xbf"
# Checked on the capped prefix of an over-long line, so a huge comment stays a comment.
_COMMENT = re.compile(rb"[ \t\f\v]*#")
_FORMAT_HINT = "use --input-format txt|csv|tsv|parquet|jsonl"
_EXTENSIONS: dict[str, InputFormat] = {
    "": "txt",
    ".txt": "txt",
    ".lst": "txt",
    ".list": "txt",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    """One data row of the input; ``error`` is set when the row itself is unparsable."""

    index: int
    url: str
    extra: Mapping[str, Any]
    error: str | None = None


def detect_format(source: str, explicit: InputFormat | None) -> InputFormat:
    """The format to read ``source`` as: ``explicit`` if given, else from the extension."""
    if explicit is not None:
        if explicit not in get_args(InputFormat):
            raise ConfigError(f"unknown input format {explicit!r}", hint=_FORMAT_HINT)
        return explicit
    if source == "-":
        return "txt"
    suffix = PurePath(source).suffix.lower()
    fmt = _EXTENSIONS.get(suffix)
    if fmt is None:
        raise ConfigError(
            f"cannot tell the format of input {source!r} from its extension {suffix!r}", hint=_FORMAT_HINT
        )
    return fmt


def open_check(cfg: InputConfig, needed: Mapping[str, str] | None = None) -> None:
    """Fail fast, before a run starts, if ``cfg.source`` cannot be read as its format, or
    lacks a column an option needs (``needed``: the option as written -> the column it names).

    Reads at most the csv header or the parquet footer; stdin is not checked,
    since looking at it would consume it, and neither are jsonl keys (rows may differ).
    """
    fmt = detect_format(cfg.source, cfg.format)
    needed = dict(needed or {})
    if fmt == "txt" and needed:
        option = next(iter(needed))
        raise ConfigError(
            f"{option} needs an input with columns; a txt list has one URL per line",
            hint="use a csv, tsv, jsonl or parquet list (or --input-format csv for a csv saved as .txt)",
        )
    if cfg.source == "-":
        return
    names: list[str] | None = None
    with _open_path(cfg.source) as stream:
        if fmt in ("csv", "tsv"):
            text = _text(stream)
            try:
                names = _csv_start(text, cfg.source, cfg.url_col, _delimiter(fmt))[2]
            finally:
                text.detach()
        elif fmt == "parquet":
            pf = _parquet_file(stream, cfg.source)
            try:
                _check_url_field(pf.schema_arrow, cfg.url_col, cfg.source)
                names = list(pf.schema_arrow.names)
            finally:
                pf.close()
    for option, column in needed.items():
        if names is not None and column not in names:
            raise ConfigError(
                f"{option}: input {cfg.source!r} has no column {column!r}",
                hint=f"its columns: {_list_columns(names)}",
            )


def row_bound(cfg: InputConfig) -> int | None:
    """An upper bound of the number of data rows (``None`` for stdin), in one cheap pass.

    Parquet: the footer's row count.  Text formats: the number of line breaks
    plus one, which is at least the number of rows (blank lines, comments, a
    header and newlines inside quoted fields only make it larger).  The
    shard formats number patch shards above it, so they never take the number of
    a shard the input has yet to reach.
    """
    if cfg.source == "-":
        return None
    fmt = detect_format(cfg.source, cfg.format)
    with _open_path(cfg.source) as stream:
        if fmt == "parquet":
            pf = _parquet_file(stream, cfg.source)
            try:
                count = int(pf.metadata.num_rows)
            finally:
                pf.close()
        else:
            count = 1
            try:
                while block := stream.read(1 << 20):
                    count += block.count(b"\n") + block.count(b"\r")
            except OSError as exc:
                raise _cannot_read(cfg.source, _os_reason(exc)) from exc
    return count if cfg.limit is None else min(count, max(cfg.limit, 0))


def read_rows(cfg: InputConfig, *, stdin: BinaryIO | None = None) -> Iterator[Row]:
    """Stream the data rows of ``cfg.source`` ("-": ``stdin`` or ``sys.stdin.buffer``).

    Lazy: nothing is opened before the first ``next()``, which is also where an
    :class:`InputError` for the whole input surfaces.  Stops after ``cfg.limit`` rows.
    """
    fmt = detect_format(cfg.source, cfg.format)
    limit = cfg.limit
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, not {limit}")
    if limit == 0:
        return
    with _open_source(cfg.source, stdin) as stream:
        rows: Generator[Row, None, None]
        match fmt:
            case "txt":
                rows = _read_txt(stream)
            case "jsonl":
                rows = _read_jsonl(stream, cfg.url_col)
            case "parquet":
                rows = _read_parquet(stream, cfg.source, cfg.url_col)
            case "csv" | "tsv":
                rows = _read_csv(stream, cfg.source, cfg.url_col, _delimiter(fmt))
        try:
            for row in rows:
                yield row
                if limit is not None and row.index + 1 >= limit:
                    return
        except InputError:
            raise
        except OSError as exc:
            raise _cannot_read(cfg.source, _os_reason(exc)) from exc
        finally:
            # Closes the inner reader (and its wrappers) while the stream is still open.
            rows.close()


# -- opening -------------------------------------------------------------------------------------


def _cannot_read(source: str, why: str) -> InputError:
    return InputError(f"cannot read input {source!r}: {why}")


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _short(exc: BaseException, limit: int = 80) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _open_path(source: str) -> BinaryIO:
    path = Path(source)
    # open() of a directory fails differently per platform; say it plainly everywhere.
    if path.is_dir():
        raise _cannot_read(source, "Is a directory")
    try:
        return path.open("rb")
    except OSError as exc:
        raise _cannot_read(source, _os_reason(exc)) from exc


@contextlib.contextmanager
def _open_source(source: str, stdin: BinaryIO | None) -> Iterator[BinaryIO]:
    if source == "-":
        # Never closed here: stdin belongs to the caller.
        yield stdin if stdin is not None else sys.stdin.buffer
        return
    with _open_path(source) as stream:
        yield stream


# -- txt and jsonl -------------------------------------------------------------------------------


def _lines(stream: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """Physical lines without their terminator, each with whether it was too long.

    A too-long line comes back capped (about MAX_LINE_BYTES) and the rest of it
    is read and dropped in small chunks, so memory never holds the whole line.
    """
    cap = MAX_LINE_BYTES + 2  # room for the content plus "\r\n"
    first = True
    while True:
        chunk = stream.readline(cap)
        if not chunk:
            return
        ended = chunk.endswith(b"\n")
        truncated = not ended and len(chunk) >= cap
        if truncated:
            while (rest := stream.readline(_DISCARD_CHUNK)) and not rest.endswith(b"\n"):
                pass
        line = (chunk[:-1] if ended else chunk).removesuffix(b"\r")
        if first:
            line = line.removeprefix(_BOM)
            first = False
        yield line, truncated or len(line) > MAX_LINE_BYTES


def _read_txt(stream: BinaryIO) -> Generator[Row, None, None]:
    index = 0
    for raw, too_long in _lines(stream):
        if too_long:
            if _COMMENT.match(raw):
                continue
            row = Row(index, "", {}, _TOO_LONG)
        else:
            url = raw.decode("utf-8", "replace").strip()
            if not url or url.startswith("#"):
                continue
            row = Row(index, url, {})
        yield row
        index += 1


def _read_jsonl(stream: BinaryIO, url_col: str) -> Generator[Row, None, None]:
    index = 0
    for raw, too_long in _lines(stream):
        if too_long:
            row = Row(index, "", {}, _TOO_LONG)
        else:
            text = raw.decode("utf-8", "replace")
            if not text.strip():
                continue
            row = _json_row(index, text, url_col)
        yield row
        index += 1


def _finite_float(text: str) -> float | None:
    # 1e999 parses to inf, which is not valid JSON on the way out (manifest, logs).
    value = float(text)
    return value if math.isfinite(value) else None


def _no_constant(_name: str) -> None:
    # NaN / Infinity are accepted by Python's json but are not JSON: keep them as null.
    return None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string"


def _json_row(index: int, text: str, url_col: str) -> Row:
    try:
        value = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        return Row(index, "", {}, f"invalid JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:
        return Row(index, "", {}, "invalid JSON: nested too deeply")
    except ValueError as exc:  # e.g. an integer with more digits than int() allows
        return Row(index, "", {}, f"invalid JSON: {_short(exc)}")
    if isinstance(value, str):
        return Row(index, value.strip(), {})
    if not isinstance(value, dict):
        return Row(index, "", {}, f"expected a JSON object or string, got {_json_type(value)}")
    if url_col not in value:
        return Row(index, "", value, f"missing url field {url_col!r}")
    url = value.pop(url_col)
    if url is None:
        return Row(index, "", value, "missing url")
    if not isinstance(url, str):
        return Row(index, "", value, f"url field {url_col!r} is a {_json_type(url)}, not a string")
    return Row(index, url.strip(), value)


# -- csv and tsv ---------------------------------------------------------------------------------


class _RowTooLong(Exception):
    """Raised through csv.reader by :class:`_BoundedLines`; the reader stays usable."""


class _BoundedLines:
    """Feeds csv.reader lines while capping the characters of one record.

    csv.reader would otherwise pull a line of any length into memory, and a
    stray quote can make one record swallow the rest of the file.  The caller
    resets ``used`` before each record (csv.reader never reads ahead).
    """

    def __init__(self, text: io.TextIOWrapper) -> None:
        self._text = text
        self._cap = MAX_LINE_BYTES + 2
        self.used = 0

    def __iter__(self) -> _BoundedLines:
        return self

    def __next__(self) -> str:
        line = self._text.readline(self._cap + 1)
        if not line:
            raise StopIteration
        self.used += len(line)
        if self.used > self._cap:
            if not line.endswith(("\n", "\r")):
                while (rest := self._text.readline(_DISCARD_CHUNK)) and not rest.endswith(("\n", "\r")):
                    pass
            self.used = 0
            raise _RowTooLong
        return line


def _delimiter(fmt: InputFormat) -> str:
    return "\t" if fmt == "tsv" else ","


def _text(stream: BinaryIO) -> io.TextIOWrapper:
    # newline="" as the csv module requires; utf-8-sig drops a BOM.
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")


def _list_columns(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:20])
    more = len(names) - 20
    return (shown + (f" and {more} more" if more > 0 else "")) if names else "none"


def _no_url_column(source: str, url_col: str, names: list[str]) -> InputError:
    return InputError(
        f"input {source!r} has no column {url_col!r} (columns: {_list_columns(names)})",
        hint="choose the URL column with --url-col",
    )


def _csv_start(
    text: io.TextIOWrapper, source: str, url_col: str, delimiter: str
) -> tuple[_BoundedLines, Iterator[list[str]], list[str], int]:
    """Read the header; return the line source, the reader, the column names and the url position."""
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    lines = _BoundedLines(text)
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next((cells for cells in reader if cells), None)
    except _RowTooLong:
        raise _cannot_read(source, "header row longer than 1 MiB") from None
    except csv.Error as exc:
        raise _cannot_read(source, f"invalid header row: {_short(exc)}") from exc
    if header is None:
        raise _cannot_read(source, "the file is empty, a header row is expected")
    names = [name.strip() for name in header]
    if url_col not in names:
        raise _no_url_column(source, url_col, names)
    return lines, reader, names, names.index(url_col)


def _read_csv(stream: BinaryIO, source: str, url_col: str, delimiter: str) -> Generator[Row, None, None]:
    text = _text(stream)
    try:
        lines, reader, names, url_at = _csv_start(text, source, url_col, delimiter)
        others = [(i, name) for i, name in enumerate(names) if i != url_at]
        index = 0
        while True:
            lines.used = 0
            try:
                cells = next(reader)
            except StopIteration:
                return
            except _RowTooLong:
                row = Row(index, "", {}, _ROW_TOO_LONG)
            except csv.Error as exc:
                row = Row(index, "", {}, f"invalid CSV row: {_short(exc)}")
            else:
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue
                row = _csv_row(index, cells, url_at, others)
            yield row
            index += 1
    finally:
        # Leaves the binary stream open: it belongs to read_rows (or is stdin).
        text.detach()


def _csv_row(index: int, cells: list[str], url_at: int, others: list[tuple[int, str]]) -> Row:
    n = len(cells)
    extra = {name: cells[i] if i < n else None for i, name in others}
    if url_at >= n:
        return Row(index, "", extra, "missing url")
    return Row(index, cells[url_at].strip(), extra)


# -- parquet -------------------------------------------------------------------------------------


def _parquet_file(stream: BinaryIO, source: str) -> pq.ParquetFile:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(stream)
    except (pa.ArrowException, OSError) as exc:
        raise _cannot_read(source, f"not a valid parquet file ({_short(exc)})") from exc


def _is_binary(t: pa.DataType) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _is_binary(t.value_type)
    return bool(
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or str(t) == "binary_view"
    )


def _is_string(t: pa.DataType) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _is_string(t.value_type)
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view")


def _is_plain(t: pa.DataType) -> bool:
    """Whether to_pylist already gives JSON-ready values (no per-value clean-up needed)."""
    import pyarrow as pa

    return bool(_is_string(t) or pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_null(t))


def _check_url_field(schema: pa.Schema, url_col: str, source: str) -> None:
    names = list(schema.names)
    if url_col not in names:
        raise _no_url_column(source, url_col, names)
    t = schema.field(url_col).type
    if not (_is_string(t) or _is_binary(t)):
        raise InputError(f"column {url_col!r} of input {source!r} holds {t}, not strings")


def _jsonable(value: Any) -> Any:
    """A JSON-serialisable stand-in for a value pyarrow's to_pylist produced."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return None  # binary nested in a struct/list: as with binary columns, not worth carrying
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return str(value)  # Decimal, UUID and other extension values


def _values(array: pa.Array | pa.ChunkedArray) -> list[Any]:
    values: list[Any] = array.to_pylist()
    return values if _is_plain(array.type) else [_jsonable(v) for v in values]


def _read_parquet(stream: BinaryIO, source: str, url_col: str) -> Generator[Row, None, None]:
    if stream.seekable():
        yield from _parquet_rows(stream, source, url_col)
        return
    # The footer comes last, so a pipe is spooled to disk (not memory) first.
    with tempfile.TemporaryFile() as spool:
        shutil.copyfileobj(stream, spool, 1 << 20)
        spool.seek(0)
        yield from _parquet_rows(spool, source, url_col)


def _parquet_rows(stream: BinaryIO, source: str, url_col: str) -> Generator[Row, None, None]:
    import pyarrow as pa

    pf = _parquet_file(stream, source)
    try:
        schema = pf.schema_arrow
        _check_url_field(schema, url_col, source)
        others = [f.name for f in schema if f.name != url_col and not _is_binary(f.type)]
        index = 0
        for urls, columns in _parquet_batches(pf, stream, url_col, others):
            for url, *cells in zip(urls, *columns, strict=True):
                extra = dict(zip(others, cells, strict=True))
                if url is None:
                    yield Row(index, "", extra, "missing url")
                else:
                    if isinstance(url, bytes):
                        url = url.decode("utf-8", "replace")
                    yield Row(index, url.strip(), extra)
                index += 1
    except pa.ArrowException as exc:
        raise _cannot_read(source, f"broken parquet data ({_short(exc)})") from exc
    finally:
        pf.close()


def _parquet_batches(
    pf: pq.ParquetFile, stream: BinaryIO, url_col: str, others: list[str]
) -> Generator[tuple[list[Any], list[list[Any]]], None, None]:
    """The url column and the ``others`` columns as Python lists, at most _BATCH_ROWS rows a time.

    One row group at a time, each dropped before the next is read: iterating the
    whole file in one ``iter_batches`` keeps every column chunk it has read (its
    pre-buffer cache), so memory grew with the file.  A row group too big to hold
    decoded is streamed page by page through a second reader with small buffers.
    Decoding runs on this thread: pyarrow's thread pools would only add per-thread
    allocator heaps, and turning values into Python objects is the slow part anyway.
    Only Python lists leave here, so no Arrow buffer of a group outlives it.
    """
    import pyarrow.parquet as pq

    columns = [url_col, *others]
    streamer: pq.ParquetFile | None = None
    try:
        for i in range(pf.num_row_groups):
            group = pf.metadata.row_group(i)
            batches: Iterator[pa.RecordBatch]
            if group.num_rows <= _GROUP_ROWS and group.total_byte_size <= _GROUP_BYTES:
                table = pf.read_row_group(i, columns=columns, use_threads=False)
                batches = iter(table.to_batches(max_chunksize=_BATCH_ROWS))
                del table
            else:
                if streamer is None:
                    streamer = pq.ParquetFile(
                        stream, metadata=pf.metadata, pre_buffer=False, buffer_size=_PARQUET_BUFFER
                    )
                batches = streamer.iter_batches(
                    batch_size=_BATCH_ROWS, row_groups=[i], columns=columns, use_threads=False
                )
            for batch in batches:
                yield batch.column(url_col).to_pylist(), [_values(batch.column(name)) for name in others]
                del batch
            del batches
    finally:
        if streamer is not None:
            streamer.close()
