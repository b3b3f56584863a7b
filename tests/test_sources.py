"""Tests of imgfetch.sources: every format, error rows, limits, stdin and bounded memory."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tracemalloc
from itertools import islice
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import imgfetch
from imgfetch import sources
from imgfetch.config import InputConfig, InputFormat
from imgfetch.errors import ConfigError, InputError
from imgfetch.sources import MAX_LINE_BYTES, Row, detect_format, open_check, read_rows

if TYPE_CHECKING:
    from pathlib import Path


def rows_of(path: Path | str, **kwargs: Any) -> list[Row]:
    return list(read_rows(InputConfig(source=str(path), **kwargs)))


def urls_of(rows: list[Row]) -> list[str]:
    return [r.url for r in rows]


def write_parquet(path: Path, table: pa.Table, row_group_size: int | None = None) -> None:
    pq.write_table(table, path, row_group_size=row_group_size)


# -- txt -----------------------------------------------------------------------------------------


def test_txt_bom_crlf_comments_blank_lines_commas_and_spaces(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    path.write_bytes(
        b"\xef\xbb\xbfhttp://a.example/1.jpg\r\n"
        b"\r\n"
        b"   # a comment\r\n"
        b"#another\n"
        b"  http://b.example/x,y,z.png  \r\n"
        b"\t\n"
        b"http://c.example/with inner space.jpg\n"
        b"not a url at all\n"
        b"http://d.example/\xff.jpg"  # invalid UTF-8, no final newline
    )
    rows = rows_of(path)
    assert urls_of(rows) == [
        "http://a.example/1.jpg",
        "http://b.example/x,y,z.png",
        "http://c.example/with inner space.jpg",
        "not a url at all",
        "http://d.example/\ufffd.jpg",
    ]
    assert [r.index for r in rows] == [0, 1, 2, 3, 4]
    assert all(r.extra == {} and r.error is None for r in rows)


def test_txt_huge_line_becomes_an_error_row_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    with path.open("wb") as f:
        f.write(b"http://a.example/1\n")
        f.write(b"http://" + b"x" * (2 * MAX_LINE_BYTES) + b"\r\n")
        f.write(b"# " + b"c" * (2 * MAX_LINE_BYTES) + b"\n")  # a huge comment is still a comment
        f.write(b"http://b.example/2\n")
    rows = rows_of(path)
    assert rows == [
        Row(0, "http://a.example/1", {}),
        Row(1, "", {}, "line longer than 1 MiB"),
        Row(2, "http://b.example/2", {}),
    ]


def test_txt_line_limit_boundary(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    longest = b"u" * MAX_LINE_BYTES
    path.write_bytes(longest + b"\r\n" + longest + b"v\n" + longest)
    rows = rows_of(path)
    assert [r.error for r in rows] == [None, "line longer than 1 MiB", None]
    assert len(rows[0].url) == len(rows[2].url) == MAX_LINE_BYTES


def test_huge_line_is_never_held_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    with path.open("wb") as f:
        f.write(b"x" * (8 * MAX_LINE_BYTES) + b"\nhttp://after.example/\n")
    tracemalloc.start()
    try:
        rows = rows_of(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.url for r in rows] == ["", "http://after.example/"]
    assert peak < 3 * MAX_LINE_BYTES


line_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=30)


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(line_text, max_size=15), crlf=st.booleans())
def test_txt_keeps_every_non_blank_non_comment_line(lines: list[str], crlf: bool) -> None:
    data = ("\r\n" if crlf else "\n").join(lines).encode()
    got = list(read_rows(InputConfig(source="-"), stdin=io.BytesIO(data)))
    want = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
    assert urls_of(got) == want
    assert [r.index for r in got] == list(range(len(want)))


# -- csv / tsv -----------------------------------------------------------------------------------


def test_csv_quoted_commas_extra_columns_short_rows(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        "\ufeffcaption, url ,width\r\n"
        '"a cat, sitting","http://a.example/x,y.jpg",640\r\n'
        "\r\n"
        '"multi\nline",  http://b.example/2.jpg  ,480\r\n'
        "only a caption\r\n"
        "dog,http://c.example/3.jpg\r\n"
        "x,http://d.example/4.jpg,1,surplus\r\n",
        encoding="utf-8",
    )
    open_check(InputConfig(source=str(path)))
    assert rows_of(path) == [
        Row(0, "http://a.example/x,y.jpg", {"caption": "a cat, sitting", "width": "640"}),
        Row(1, "http://b.example/2.jpg", {"caption": "multi\nline", "width": "480"}),
        Row(2, "", {"caption": "only a caption", "width": None}, "missing url"),
        Row(3, "http://c.example/3.jpg", {"caption": "dog", "width": None}),
        Row(4, "http://d.example/4.jpg", {"caption": "x", "width": "1"}),
    ]


def test_tsv_and_custom_url_column(tmp_path: Path) -> None:
    path = tmp_path / "list.tsv"
    path.write_text("key\tlink\tnote\n1\thttp://a.example/a b.jpg\thas, comma\n2\thttp://b.example/\t\n")
    rows = rows_of(path, url_col="link")
    assert rows == [
        Row(0, "http://a.example/a b.jpg", {"key": "1", "note": "has, comma"}),
        Row(1, "http://b.example/", {"key": "2", "note": ""}),
    ]


def test_csv_overlong_row_is_an_error_row_and_never_held_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    with path.open("wb") as f:
        f.write(b"url,n\nhttp://a.example/,1\n")
        f.write(b"http://" + b"x" * (8 * MAX_LINE_BYTES) + b",2\n")
        f.write(b"http://b.example/,3\n")
    tracemalloc.start()
    try:
        rows = rows_of(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_LINE_BYTES
    assert [(r.index, r.url, r.error) for r in rows] == [
        (0, "http://a.example/", None),
        (1, "", "row longer than 1 MiB"),
        (2, "http://b.example/", None),
    ]


def test_csv_without_url_column_fails_in_read_rows_too(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("link,caption\nhttp://a.example/,x\n")
    with pytest.raises(InputError, match=r"no column 'url' \(columns: 'link', 'caption'\)"):
        rows_of(path)


# -- jsonl ---------------------------------------------------------------------------------------


def test_jsonl_bad_lines_are_error_rows(tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl"
    path.write_bytes(
        b'{"url": " http://a.example/1 ", "caption": "cat", "meta": {"w": 1, "tags": ["a"]}}\n'
        b"\n"
        b'{"url": "http://b.example/2", oops\n'
        b'{"url": 42, "caption": "n"}\r\n'
        b'"http://c.example/bare"\n'
        b'{"caption": "no url"}\n'
        b'{"url": null}\n'
        b"[1, 2]\n"
        b'{"url": "http://d.example/4", "score": NaN, "big": 1e999}\n'
    )
    rows = rows_of(path)
    assert rows[0] == Row(0, "http://a.example/1", {"caption": "cat", "meta": {"w": 1, "tags": ["a"]}})
    assert rows[1].url == ""
    assert rows[1].error is not None and rows[1].error.startswith("invalid JSON: ")
    assert len(rows[1].error) < 80
    assert rows[2] == Row(2, "", {"caption": "n"}, "url field 'url' is a number, not a string")
    assert rows[3] == Row(3, "http://c.example/bare", {})
    assert rows[4] == Row(4, "", {"caption": "no url"}, "missing url field 'url'")
    assert rows[5] == Row(5, "", {}, "missing url")
    assert rows[6] == Row(6, "", {}, "expected a JSON object or string, got array")
    assert rows[7] == Row(7, "http://d.example/4", {"score": None, "big": None})
    assert len(rows) == 8
    for row in rows:
        json.dumps(row.extra, allow_nan=False)


def test_jsonl_overlong_line(tmp_path: Path) -> None:
    path = tmp_path / "list.ndjson"
    with path.open("wb") as f:
        f.write(b'{"url": "' + b"x" * (2 * MAX_LINE_BYTES) + b'"}\n{"url": "http://a.example/"}\n')
    assert rows_of(path) == [Row(0, "", {}, "line longer than 1 MiB"), Row(1, "http://a.example/", {})]


# -- parquet -------------------------------------------------------------------------------------


def parquet_table(n: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "url": pa.array([None if i == 5 else f" http://p.example/{i}.jpg " for i in range(n)]),
            "blob": pa.array([b"\x00" * 10] * n, pa.binary()),
            "big_blob": pa.array([b"\x01"] * n, pa.large_binary()),
            "score": pa.array([float("nan") if i == 1 else i / 2 for i in range(n)]),
        }
    )


def test_parquet_several_row_groups_and_batches(tmp_path: Path) -> None:
    n = 20_000  # more than one 8192-row batch, across 3 row groups
    path = tmp_path / "list.parquet"
    write_parquet(path, parquet_table(n), row_group_size=7_000)
    assert pq.ParquetFile(path).num_row_groups == 3
    open_check(InputConfig(source=str(path)))
    rows = rows_of(path)
    assert [r.index for r in rows] == list(range(n))
    assert rows[0] == Row(0, "http://p.example/0.jpg", {"id": 0, "score": 0.0})
    assert rows[1].extra == {"id": 1, "score": None}  # NaN is not JSON
    assert rows[5] == Row(5, "", {"id": 5, "score": 2.5}, "missing url")
    assert rows[-1].url == f"http://p.example/{n - 1}.jpg"
    assert all(set(r.extra) == {"id", "score"} for r in rows)


def test_parquet_other_types_become_json_values(tmp_path: Path) -> None:
    import datetime
    import decimal

    table = pa.table(
        {
            "link": pa.array(["http://a.example/", "http://b.example/"]).dictionary_encode(),
            "when": pa.array([datetime.datetime(2024, 5, 1, 12, 0), None], pa.timestamp("ns")),
            "price": pa.array([decimal.Decimal("1.50"), None]),
            "meta": pa.array([{"w": 3, "raw": b"\x00"}, None]),
            "flag": [True, False],
        }
    )
    path = tmp_path / "list.pq"
    write_parquet(path, table)
    rows = rows_of(path, url_col="link")
    assert rows[0] == Row(
        0,
        "http://a.example/",
        {"when": "2024-05-01T12:00:00", "price": "1.50", "meta": {"w": 3, "raw": None}, "flag": True},
    )
    assert rows[1].extra == {"when": None, "price": None, "meta": None, "flag": False}
    json.dumps([dict(r.extra) for r in rows], allow_nan=False)


def test_parquet_url_column_must_hold_strings(tmp_path: Path) -> None:
    path = tmp_path / "list.parquet"
    write_parquet(path, pa.table({"url": [1, 2]}))
    with pytest.raises(InputError, match="holds int64, not strings"):
        open_check(InputConfig(source=str(path)))
    with pytest.raises(InputError, match="holds int64, not strings"):
        rows_of(path)


class GroupSpy:
    """Records which row groups the parquet reader reads whole and which it streams."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.whole: list[int] = []
        self.streamed: list[list[int]] = []
        read_row_group = pq.ParquetFile.read_row_group
        iter_batches = pq.ParquetFile.iter_batches

        def spy_read(pf: pq.ParquetFile, i: int, *args: Any, **kwargs: Any) -> pa.Table:
            self.whole.append(i)
            return read_row_group(pf, i, *args, **kwargs)

        def spy_iter(pf: pq.ParquetFile, *args: Any, **kwargs: Any) -> Any:
            self.streamed.append(list(kwargs["row_groups"]))
            return iter_batches(pf, *args, **kwargs)

        monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy_read)
        monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy_iter)


def batch_sizes(path: Path, others: list[str]) -> list[int]:
    with path.open("rb") as f:
        pf = pq.ParquetFile(f)
        return [len(urls) for urls, _ in sources._parquet_batches(pf, f, "url", others)]


def write_groups(path: Path, sizes: list[int]) -> None:
    """A parquet list with one row group per entry of ``sizes``, rows numbered throughout."""
    table = parquet_table(sum(sizes))
    start = 0
    with pq.ParquetWriter(path, table.schema) as writer:
        for size in sizes:
            writer.write_table(table.slice(start, size), row_group_size=size)
            start += size


def test_parquet_many_small_row_groups_are_read_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 1_000
    path = tmp_path / "list.parquet"
    write_parquet(path, parquet_table(n), row_group_size=20)
    assert pq.ParquetFile(path).num_row_groups == 50
    spy = GroupSpy(monkeypatch)
    rows = rows_of(path)
    assert spy.whole == list(range(50))
    assert spy.streamed == []
    assert [r.index for r in rows] == list(range(n))
    assert [r.extra["id"] for r in rows] == list(range(n))
    assert rows[5] == Row(5, "", {"id": 5, "score": 2.5}, "missing url")
    assert rows[-1] == Row(n - 1, f"http://p.example/{n - 1}.jpg", {"id": n - 1, "score": (n - 1) / 2})
    assert batch_sizes(path, ["id"]) == [20] * 50


@pytest.mark.parametrize("limit", ["rows", "bytes"])
def test_parquet_big_row_group_is_streamed_in_bounded_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    n = 20_000
    path = tmp_path / "list.parquet"
    write_parquet(path, parquet_table(n))
    assert pq.ParquetFile(path).num_row_groups == 1
    monkeypatch.setattr(sources, "_BATCH_ROWS", 3_000)
    monkeypatch.setattr(sources, f"_GROUP_{limit.upper()}", 5_000)
    assert batch_sizes(path, ["id", "score"]) == [3_000] * 6 + [2_000]
    spy = GroupSpy(monkeypatch)
    rows = rows_of(path)
    assert spy.whole == []
    assert spy.streamed == [[0]]
    assert [r.index for r in rows] == list(range(n))
    assert rows[0] == Row(0, "http://p.example/0.jpg", {"id": 0, "score": 0.0})
    assert rows[1].extra == {"id": 1, "score": None}
    assert rows[5] == Row(5, "", {"id": 5, "score": 2.5}, "missing url")
    assert rows[-1].url == f"http://p.example/{n - 1}.jpg"
    assert all(set(r.extra) == {"id", "score"} for r in rows)


def test_parquet_limit_stops_inside_a_streamed_row_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "list.parquet"
    write_groups(path, [10, 9_000, 10])
    monkeypatch.setattr(sources, "_BATCH_ROWS", 1_000)
    monkeypatch.setattr(sources, "_GROUP_ROWS", 5_000)
    rows = rows_of(path, limit=2_500)
    assert [r.index for r in rows] == list(range(2_500))
    assert rows[-1].url == "http://p.example/2499.jpg"


# -- limit and stdin -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["txt", "csv", "tsv", "jsonl", "parquet"])
def test_limit(tmp_path: Path, fmt: InputFormat) -> None:
    urls = [f"http://l.example/{i}" for i in range(50)]
    path = tmp_path / f"list.{fmt}"
    if fmt == "txt":
        path.write_text("# header comment\n\n" + "\n".join(urls))
    elif fmt in ("csv", "tsv"):
        sep = "\t" if fmt == "tsv" else ","
        path.write_text(f"url{sep}i\n" + "".join(f"{u}{sep}{i}\n" for i, u in enumerate(urls)))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"url": u}) + "\n" for u in urls))
    else:
        write_parquet(path, pa.table({"url": urls}), row_group_size=10)
    assert urls_of(rows_of(path, limit=7)) == urls[:7]
    assert rows_of(path, limit=0) == []
    assert len(rows_of(path, limit=1000)) == 50
    assert len(rows_of(path)) == 50


def test_negative_limit_is_a_config_error(tmp_path: Path) -> None:
    """Refused when the configuration is built, before any file is opened or created."""
    path = tmp_path / "a.txt"
    path.write_text("x\n")
    with pytest.raises(ValueError, match="limit must be >= 0"):
        rows_of(path, limit=-1)
    with pytest.raises(ConfigError, match="limit must be >= 0"):
        imgfetch.config(path, tmp_path / "out", limit=-1)


def test_stdin_defaults_to_txt_and_stays_open() -> None:
    stream = io.BytesIO(b"http://a.example/\n# c\nhttp://b.example/\n")
    rows = list(read_rows(InputConfig(source="-"), stdin=stream))
    assert urls_of(rows) == ["http://a.example/", "http://b.example/"]
    assert not stream.closed


def test_stdin_csv_and_jsonl() -> None:
    stream = io.BytesIO(b"\xef\xbb\xbfurl,c\nhttp://a.example/,1\n")
    rows = list(read_rows(InputConfig(source="-", format="csv"), stdin=stream))
    assert rows == [Row(0, "http://a.example/", {"c": "1"})]
    assert not stream.closed  # the text wrapper was detached, not closed
    stream = io.BytesIO(b'{"url": "http://j.example/"}\n')
    assert urls_of(list(read_rows(InputConfig(source="-", format="jsonl"), stdin=stream))) == [
        "http://j.example/"
    ]


class Pipe(io.BytesIO):
    """Like a pipe: bytes in order, no seeking."""

    def seekable(self) -> bool:
        return False


@pytest.mark.parametrize("stream_type", [io.BytesIO, Pipe])
def test_stdin_parquet(stream_type: type[io.BytesIO]) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"url": ["http://a.example/", "http://b.example/"], "n": [1, 2]}), buf)
    stream = stream_type(buf.getvalue())
    rows = list(read_rows(InputConfig(source="-", format="parquet"), stdin=stream))
    assert rows == [Row(0, "http://a.example/", {"n": 1}), Row(1, "http://b.example/", {"n": 2})]


@pytest.mark.parametrize("stream_type", [None, io.BytesIO, Pipe])
def test_parquet_small_and_big_row_groups_mixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream_type: type[io.BytesIO] | None
) -> None:
    sizes = [30, 7_000, 1, 6_000, 40]
    n = sum(sizes)
    path = tmp_path / "list.parquet"
    write_groups(path, sizes)
    assert [g.num_rows for g in (pq.ParquetFile(path).metadata.row_group(i) for i in range(5))] == sizes
    monkeypatch.setattr(sources, "_BATCH_ROWS", 1_000)
    monkeypatch.setattr(sources, "_GROUP_ROWS", 5_000)
    spy = GroupSpy(monkeypatch)
    if stream_type is None:
        rows = rows_of(path)
    else:
        stdin = stream_type(path.read_bytes())
        rows = list(read_rows(InputConfig(source="-", format="parquet"), stdin=stdin))
    assert spy.whole == [0, 2, 4]
    assert spy.streamed == [[1], [3]]
    assert [r.index for r in rows] == list(range(n))
    assert [r.extra["id"] for r in rows] == list(range(n))
    assert [r.url for r in rows if r.index != 5] == [f"http://p.example/{i}.jpg" for i in range(n) if i != 5]
    assert batch_sizes(path, []) == [30, *[1_000] * 7, 1, *[1_000] * 6, 40]


# -- detect_format -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fmt"),
    [
        ("urls.txt", "txt"),
        ("urls.lst", "txt"),
        ("dir.d/urls.list", "txt"),
        ("urls", "txt"),
        ("-", "txt"),
        ("a.CSV", "csv"),
        ("a.tsv", "tsv"),
        ("a.tab", "tsv"),
        ("a.parquet", "parquet"),
        ("a.pq", "parquet"),
        ("a.jsonl", "jsonl"),
        ("a.ndjson", "jsonl"),
    ],
)
def test_detect_format_from_extension(source: str, fmt: InputFormat) -> None:
    assert detect_format(source, None) == fmt


def test_detect_format_explicit_wins() -> None:
    assert detect_format("a.csv", "jsonl") == "jsonl"
    assert detect_format("-", "parquet") == "parquet"
    assert detect_format("a.weird", "txt") == "txt"


def test_detect_format_unknown_extension() -> None:
    with pytest.raises(ConfigError, match=r"'\.json'") as info:
        detect_format("list.json", None)
    assert info.value.hint is not None and "--input-format" in info.value.hint


# -- open_check ----------------------------------------------------------------------------------


def test_open_check_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        open_check(InputConfig(source="cats.txt"))
    assert str(info.value) == "cannot read input 'cats.txt': No such file or directory"
    with pytest.raises(InputError, match="No such file"):
        rows_of("cats.txt")


def test_open_check_directory(tmp_path: Path) -> None:
    (tmp_path / "d.txt").mkdir()
    with pytest.raises(InputError, match="Is a directory"):
        open_check(InputConfig(source=str(tmp_path / "d.txt")))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads anything")
def test_open_check_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("x\n")
    path.chmod(0)
    with pytest.raises(InputError, match="Permission denied"):
        open_check(InputConfig(source=str(path)))


@pytest.mark.parametrize(
    ("name", "header"), [("a.csv", "link,caption,width"), ("a.tsv", "link\tcaption\twidth")]
)
def test_open_check_missing_url_column_lists_columns(tmp_path: Path, name: str, header: str) -> None:
    path = tmp_path / name
    path.write_text(header + "\n")
    with pytest.raises(InputError, match=r"\(columns: 'link', 'caption', 'width'\)") as info:
        open_check(InputConfig(source=str(path)))
    assert "no column 'url'" in str(info.value)
    open_check(InputConfig(source=str(path), url_col="link"))


def test_open_check_parquet_missing_url_column(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    write_parquet(path, pa.table({"link": ["x"], "n": [1]}))
    with pytest.raises(InputError, match=r"no column 'url' \(columns: 'link', 'n'\)"):
        open_check(InputConfig(source=str(path)))


def test_open_check_empty_csv(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="header row"):
        open_check(InputConfig(source=str(path)))


def test_open_check_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(InputError, match="not a valid parquet file") as info:
        open_check(InputConfig(source=str(path)))
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="not a valid parquet file"):
        rows_of(path)


def test_open_check_accepts_good_inputs(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "a.jsonl").write_text("not even json\n")
    open_check(InputConfig(source=str(tmp_path / "a.txt")))
    open_check(InputConfig(source=str(tmp_path / "a.jsonl")))
    open_check(InputConfig(source="-"))


def test_open_check_unknown_extension(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text("")
    with pytest.raises(ConfigError):
        open_check(InputConfig(source=str(tmp_path / "a.xml")))


# -- streaming -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl"])
def test_first_rows_come_without_reading_the_file(tmp_path: Path, fmt: str) -> None:
    n = 200_000
    path = tmp_path / f"big.{fmt}"
    line = {"txt": "{url}\n", "csv": "{url},{i}\n", "jsonl": '{{"url": "{url}"}}\n'}[fmt]
    with path.open("w") as f:
        if fmt == "csv":
            f.write("url,i\n")
        for i in range(n):
            f.write(line.format(url=f"http://big.example/{i:07d}.jpg", i=i))
    assert path.stat().st_size > 5_000_000
    tracemalloc.start()
    try:
        rows = read_rows(InputConfig(source=str(path)))
        first = list(islice(rows, 3))
        _, peak = tracemalloc.get_traced_memory()
        del rows  # closes the generator, and so the file
    finally:
        tracemalloc.stop()
    assert urls_of(first) == [f"http://big.example/{i:07d}.jpg" for i in range(3)]
    assert peak < 512 * 1024


def test_row_is_frozen() -> None:
    row = Row(0, "u", {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.url = "v"  # type: ignore[misc]
