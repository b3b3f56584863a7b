"""The core pipeline end to end (issue 2): real downloads from the local image server
through :func:`imgfetch.download` / :func:`imgfetch.stream`, every scripted fault,
naming, input formats and the Python API.  Invariants every run must keep are
checked by ``conftest.check_output``; each test adds the exact outcome it is about.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from yarl import URL

import imgfetch
from conftest import FAST, HOSTS, fetch, hits, key, key_fields
from imgfetch.bench.server import ImageServer, Latency
from imgfetch.naming import fallback_stem, is_safe_name

if TYPE_CHECKING:
    from imgfetch import Outcome

SHAPES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-url-shapes.txt"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- one scripted fault per row --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    path: str  # "{k}" becomes a fresh key, so the server's counters are this case's own
    expect: tuple[object, ...]  # status, reason, http_status, attempts
    hits: int | None  # requests the server must have seen for the row's URL
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


CASES = [
    Case("404-never-retried", "_/status/404?k={k}", ("failed", "http-404", 404, 1), 1, {"retries": 3}),
    Case("500-then-200", "_/flaky/{k}/1/500", ("ok", None, 200, 2), 2),
    Case(
        "503-past-retries",
        "_/flaky/{k}/9/503?retry_after=0",
        ("failed", "http-503", 503, 3),
        3,
        {"retries": 2},
    ),
    Case(
        "429-storm",
        "_/flaky/{k}/9/429?retry_after=1",
        ("failed", "http-429", 429, 3),
        3,
        {"retries": 2, "max_retry_after": 0.05},
    ),
    Case("hang-timeout", "_/hang?k={k}", ("failed", "timeout", None, 1), 1, {"timeout": 1, "retries": 0}),
    Case("hang-read-timeout", "_/hang?k={k}", ("failed", "read-timeout", None, 2), 2, {"read_timeout": 0.3}),
    # The server drips one byte every 50 ms: no gap trips the read timeout, the whole-download one ends it.
    Case(
        "slow-drip",
        "_/drip?bps=20&k={k}",
        ("failed", "timeout", 200, 1),
        1,
        {"timeout": 1, "read_timeout": 5, "retries": 0},
    ),
    Case("truncated", "_/truncated?k={k}", ("failed", "truncated", 200, 3), 3, {"retries": 2}),
    Case("html-as-jpeg", "_/html-as-jpeg?k={k}", ("failed", "not-an-image", 200, 1), 1),
    Case("jpeg-as-octet-stream", "_/octet/coffee.jpg?k={k}", ("ok", None, 200, 1), 1),
    Case("redirect-loop", "_/loop", ("failed", "too-many-redirects", 302, 1), None),
    Case(
        "redirect-to-file",
        "_/redirect-to?location=file:///etc/passwd&k={k}",
        ("failed", "unsupported-scheme", 302, 1),
        1,
    ),
    Case(
        "too-large-content-length",
        "_/big?size=300000&k={k}",
        ("failed", "too-large", 200, 1),
        1,
        {"max_bytes": 100_000},
    ),
    Case(
        "too-large-chunked",
        "_/big?size=300000&chunked=1&k={k}",
        ("failed", "too-large", 200, 1),
        1,
        {"max_bytes": 100_000},
    ),
    Case("huge-pixels", "_/huge-pixels?k={k}", ("failed", "too-many-pixels", 200, 1), 1),
    Case("corrupt-image", "_/corrupt?k={k}", ("failed", "decode-error", 200, 1), 1),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_scripted_fault(tmp_path: Path, server: ImageServer, case: Case) -> None:
    url = server.url(case.path.replace("{k}", key()))
    loops_before = server.stats.requests["/_/loop"]
    res = fetch(tmp_path, [url], **case.options)
    rec = res.only()
    assert key_fields(rec) == case.expect, rec
    if case.hits is not None:
        assert hits(server, url) == case.hits
    if rec["status"] != "ok":
        assert rec["final_url"] == url, "the last URL requested: none of these redirects elsewhere"
    if case.id == "redirect-loop":
        # The first request plus max_redirects (10) followed hops, then it gives up.
        assert server.stats.requests["/_/loop"] - loops_before == 11


def test_retry_after_is_honoured_up_to_the_cap(tmp_path: Path, server: ImageServer) -> None:
    url = server.url(f"_/flaky/{key()}/1/429?retry_after=30")
    res = fetch(tmp_path, [url], retries=3, backoff_base=0.001, backoff_max=0.001, max_retry_after=0.3)
    rec = res.only()
    assert key_fields(rec) == ("ok", None, 200, 2)
    assert hits(server, url) == 2
    # The wait is a sleep of at least min(Retry-After, cap): a lower bound, not a timing guess.
    assert 0.25 <= rec["elapsed"] < 10


def test_jpeg_served_as_octet_stream_is_saved_as_is(
    tmp_path: Path, server: ImageServer, images: dict[str, bytes]
) -> None:
    res = fetch(tmp_path, [server.url("_/octet/coffee.jpg")])
    rec = res.only()
    data = images["coffee.jpg"]
    with Image.open(io.BytesIO(data)) as img:
        size = img.size
    assert rec["path"] == "00000/coffee.jpg"
    assert (rec["format"], rec["width"], rec["height"]) == ("JPEG", *size)
    assert (rec["sha256"], rec["bytes"]) == (sha(data), len(data))


def test_redirect_chain_across_hosts(tmp_path: Path, server: ImageServer, images: dict[str, bytes]) -> None:
    # 127.0.0.1 -> 127.0.0.2 -> 2 more hops there -> the image.
    hop = server.url("_/redirect/2/rocket.jpg", 1)
    url = server.url(f"_/redirect-to?location={hop}&k={key()}")
    res = fetch(tmp_path, [url])
    rec = res.only()
    assert key_fields(rec) == ("ok", None, 200, 1)
    assert rec["final_url"] == server.url("img/rocket.jpg", 1)
    assert rec["sha256"] == sha(images["rocket.jpg"])
    assert rec["path"] == "00000/redirect-to.jpg"


def test_file_and_ftp_rows_are_never_read(
    tmp_path: Path, server: ImageServer, images: dict[str, bytes]
) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(images["rocket.jpg"])
    before = server.stats.total
    res = fetch(tmp_path, [secret.as_uri(), f"ftp://127.0.0.1:{server.port}/x.jpg", "FILE:///etc/passwd"])
    for rec in res.records:
        assert key_fields(rec) == ("failed", "unsupported-scheme", None, 0), rec
    assert server.stats.total == before, "an ftp: row must not even connect"


def test_bad_rows_each_get_one_record_and_the_run_goes_on(
    tmp_path: Path, server: ImageServer, closed_port: int
) -> None:
    good = server.url("img/hubble.jpg")
    listing = tmp_path / "rows.csv"
    listing.write_text(
        "url,label\n"
        ",empty\n"
        "not a url,text\n"
        "http://,no-host\n"
        f"http://127.0.0.1:{closed_port}/a.jpg,refused\n"
        f"{good},good\n",
        encoding="utf-8",
    )
    res = fetch(tmp_path, [], n_rows=5, listing=listing, retries=2)
    assert [key_fields(r) for r in res.records] == [
        ("failed", "invalid-url", None, 0),
        ("failed", "invalid-url", None, 0),
        ("failed", "invalid-url", None, 0),
        ("failed", "connection-error", None, 3),
        ("ok", None, 200, 1),
    ]
    assert [r["extra"] for r in res.records] == [
        {"label": v} for v in ("empty", "text", "no-host", "refused", "good")
    ]


def _no_such_host(name: str) -> bool:
    try:
        socket.getaddrinfo(name, 80)
    except socket.gaierror as exc:
        return exc.errno in {getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, n)}
    return False


def test_unresolvable_host_is_a_dns_error(tmp_path: Path) -> None:
    # .invalid is reserved (RFC 6761): it never resolves, so nothing is ever fetched from it.
    name = "nonexistent.invalid"
    if not _no_such_host(name):
        pytest.skip("this machine's resolver does not answer 'no such host' for .invalid")
    res = fetch(tmp_path, [f"http://{name}/a.jpg"], retries=3)
    assert key_fields(res.only()) == ("failed", "dns-error", None, 1)


# -- names -----------------------------------------------------------------------------------


def test_shared_basename_gets_suffixes_in_input_order(tmp_path: Path, server: ImageServer) -> None:
    urls = [
        server.url("_/as/rocket.jpg/x/a.jpg", 0),
        server.url("_/as/coins.png/y/a.jpg", 1),  # a PNG behind a .jpg name
        server.url("_/status/404/a.jpg", 2),  # fails, but still holds its name
        server.url("_/as/hubble.jpg/z/a.png", 0),  # a JPEG behind a .png name
        server.url("_/as/coins.png/w/A.JPG", 1),  # same name but for case
        server.url("_/as/astronaut.jpg/v/a-1.jpg", 2),  # the suffixed name, taken already
        server.url("_/as/coffee.jpg/u/a.jpg?size=large", 0),  # the query is not part of the name
    ]
    res = fetch(tmp_path, urls)
    assert res.paths() == [
        "00000/a.jpg",
        "00000/a-1.png",
        None,
        "00000/a-3.jpg",
        "00000/A-4.png",
        "00000/a-1-1.jpg",
        "00000/a-5.jpg",
    ]
    assert [r["format"] for r in res.records] == ["JPEG", "PNG", None, "JPEG", "PNG", "JPEG", "JPEG"]


def test_names_do_not_depend_on_completion_order(
    tmp_path: Path, server: ImageServer, images: dict[str, bytes]
) -> None:
    """The same list twice, with the slow and fast halves swapped: the same name for every row."""
    n = 8
    names = ["coins.png", "rocket.jpg", "hubble.jpg"]
    urls = [f"http://row{i}.test/_/as/{names[i % 3]}/d{i}/a.jpg" for i in range(n)]
    with ImageServer(images, latency=Latency(median=0.3, kind="fixed")) as slow:

        def resolve(slow_rows: range) -> tuple[tuple[str, str, int | None], ...]:
            return tuple(
                (
                    f"row{i}.test",
                    *((slow.hosts[0], slow.port) if i in slow_rows else (HOSTS[i % 3], server.port)),
                )
                for i in range(n)
            )

        orders: list[list[Outcome]] = [[], []]
        runs = [
            fetch(tmp_path / str(run), urls, resolve=resolve(rows), on_outcome=orders[run].append)
            for run, rows in enumerate((range(n // 2), range(n // 2, n)))
        ]
    rows_done = [[o.row for o in order] for order in orders]
    assert rows_done[0] != rows_done[1], "premise: the rows finished in different orders"
    assert runs[0].paths() == runs[1].paths()
    assert runs[0].paths() == [
        "00000/a.png",
        "00000/a-1.jpg",
        "00000/a-2.jpg",
        "00000/a-3.png",
        "00000/a-4.jpg",
        "00000/a-5.jpg",
        "00000/a-6.png",
        "00000/a-7.jpg",
    ]


def test_dot_dot_and_encoded_separators_stay_inside_the_output(tmp_path: Path, server: ImageServer) -> None:
    urls = [
        server.url("_/as/rocket.jpg/%2e%2e%2f%2e%2e%2f%2e%2e%2fevil.jpg"),
        server.url("_/as/rocket.jpg/..%2F..%2F..%2Fevil.jpg"),
        server.url("_/as/coins.png/q/..%5C..%5Cwin.png"),
        server.url("_/as/hubble.jpg/q/%2e%2e"),
        server.url("_/as/hubble.jpg/q/..jpg"),
        server.url("_/as/coffee.jpg/q/.hidden.jpg"),
        server.url("_/as/rocket.jpg/q/CON.jpg"),
    ]
    res = fetch(tmp_path, urls)
    paths = res.paths()
    assert all(r["status"] == "ok" for r in res.records), res.records
    assert len(set(paths)) == len(paths)
    for path in paths:
        assert path is not None
        folder, name = path.split("/")
        assert folder == "00000" and is_safe_name(name), path
    # Both decode to "../../../evil.jpg": one name, made safe, then its first suffix.
    assert paths[0] is not None and paths[1] == paths[0].removesuffix(".jpg") + "-1.jpg"
    assert paths[3] == f"00000/{fallback_stem(urls[3])}.jpg"
    assert paths[4] == f"00000/{fallback_stem(urls[4])}.jpg"
    assert paths[5:] == ["00000/hidden.jpg", "00000/_CON.jpg"]


def test_duplicate_url_rows_are_fetched_once_per_row(tmp_path: Path, server: ImageServer) -> None:
    k = key()
    url = server.url(f"_/as/rocket.jpg/dup/{k}.jpg")
    res = fetch(tmp_path, [url, url, url])
    assert hits(server, url) == 3
    assert res.paths() == [f"00000/{k}.jpg", f"00000/{k}-1.jpg", f"00000/{k}-2.jpg"]
    assert len({r["sha256"] for r in res.records}) == 1


def test_name_index(tmp_path: Path, server: ImageServer) -> None:
    urls = [server.url("img/rocket.jpg"), server.url("_/status/404"), server.url("img/coins.png")]
    res = fetch(tmp_path, urls, name="index")
    assert res.paths() == ["00000/000000000.jpg", None, "00000/000000002.png"]


def test_name_hash(tmp_path: Path, server: ImageServer, images: dict[str, bytes]) -> None:
    urls = [server.url("img/rocket.jpg"), server.url("img/coins.png"), server.url("img/rocket.jpg", 1)]
    res = fetch(tmp_path, urls, name="hash")
    rocket, coins = sha(images["rocket.jpg"])[:32], sha(images["coins.png"])[:32]
    # Identical bytes get the identical name: one file for both rows.
    assert res.paths() == [f"00000/{rocket}.jpg", f"00000/{coins}.png", f"00000/{rocket}.jpg"]


def test_name_column(tmp_path: Path, server: ImageServer) -> None:
    rows = [
        ("cat", "img/rocket.jpg"),
        ("../../escape", "img/coins.png"),
        ("", "img/hubble.jpg"),
        ("cat", "img/coffee.jpg"),
        ("CON", "img/astronaut.jpg"),
        ("a/b\\c", "img/chelsea-the-cat.jpg"),
    ]
    listing = tmp_path / "named.csv"
    listing.write_text("title,url\n" + "".join(f"{t},{server.url(p)}\n" for t, p in rows), encoding="utf-8")
    res = fetch(tmp_path, [], n_rows=len(rows), listing=listing, name="column:title")
    paths = res.paths()
    assert paths[0] == "00000/cat.jpg"
    assert paths[2] == f"00000/{fallback_stem(server.url('img/hubble.jpg'))}.jpg"
    assert paths[3] == "00000/cat-1.jpg"
    assert paths[4] == "00000/_CON.jpg"
    for path in (paths[1], paths[5]):
        assert path is not None and path.count("/") == 1 and path.endswith((".png", ".jpg")), path
    assert [r["extra"]["title"] for r in res.records] == [t for t, _ in rows]


def test_name_random(tmp_path: Path, server: ImageServer) -> None:
    urls = [server.url("img/rocket.jpg")] * 3 + [server.url("img/coins.png")]
    res = fetch(tmp_path, urls, name="random")
    names = [p.split("/")[1] for p in res.paths() if p is not None]
    assert len(set(names)) == 4
    for name, ext in zip(names, [".jpg", ".jpg", ".jpg", ".png"], strict=True):
        stem, _, rest = name.partition(".")
        assert len(stem) == 16 and set(stem) <= set("0123456789abcdef") and "." + rest == ext


def test_folder_size_and_index(tmp_path: Path, server: ImageServer) -> None:
    urls = [server.url(f"img/{n}") for n in ("rocket.jpg", "coins.png")]
    urls += [server.url("_/status/404/x.jpg"), server.url("img/hubble.jpg"), server.url("img/coffee.jpg")]
    res = fetch(tmp_path / "split", urls, folder_size=2, folder_index=5)
    # A row's folder comes from its row number, not from how many rows before it failed.
    assert res.paths() == [
        "00005/rocket.jpg",
        "00005/coins.png",
        None,
        "00006/hubble.jpg",
        "00007/coffee.jpg",
    ]
    flat = fetch(tmp_path / "flat", urls, folder_size=0)
    assert flat.paths() == ["rocket.jpg", "coins.png", None, "hubble.jpg", "coffee.jpg"]


# -- inputs ----------------------------------------------------------------------------------


def _write_input(path: Path, fmt: str, rows: list[dict[str, Any]]) -> None:
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        cols = list(rows[0])
        lines = [sep.join(cols)] + [sep.join(_cell(r[c], sep) for c in cols) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)


def _cell(value: object, sep: str) -> str:
    text = str(value)
    return f'"{text}"' if sep in text else text


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_tabular_inputs_carry_extra_columns(tmp_path: Path, server: ImageServer, fmt: str) -> None:
    rows = [
        {"id": 1, "image_url": server.url("img/rocket.jpg"), "caption": "a rocket, at night"},
        {"id": 2, "image_url": server.url("_/status/404"), "caption": "gone"},
        {"id": 3, "image_url": server.url("img/coins.png", 2), "caption": "coins"},
    ]
    listing = tmp_path / f"rows.{fmt}"
    _write_input(listing, fmt, rows)
    res = fetch(tmp_path, [], n_rows=3, listing=listing, url_col="image_url")
    assert [r["status"] for r in res.records] == ["ok", "failed", "ok"]
    assert [r["url"] for r in res.records] == [r["image_url"] for r in rows]
    textual = fmt in ("csv", "tsv")
    assert [r["extra"] for r in res.records] == [
        {"id": str(r["id"]) if textual else r["id"], "caption": r["caption"]} for r in rows
    ]


def test_unparsable_rows_are_recorded(tmp_path: Path, server: ImageServer) -> None:
    listing = tmp_path / "rows.jsonl"
    good = server.url("img/rocket.jpg")
    listing.write_text(
        f'{{"url": null, "id": 1}}\n{{not json\n[1, 2]\n{{"id": 4}}\n"{good}"\n', encoding="utf-8"
    )
    res = fetch(tmp_path, [], n_rows=5, listing=listing)
    assert [key_fields(r) for r in res.records] == [("failed", "invalid-row", None, 0)] * 4 + [
        ("ok", None, 200, 1)
    ]
    assert [r.get("extra") for r in res.records] == [{"id": 1}, None, None, {"id": 4}, None]


def test_limit(tmp_path: Path, server: ImageServer) -> None:
    urls = [server.url(f"_/as/rocket.jpg/{key()}.jpg") for _ in range(5)]
    res = fetch(tmp_path, urls, n_rows=2, limit=2)
    assert [r["url"] for r in res.records] == urls[:2]
    assert [hits(server, u) for u in urls] == [1, 1, 0, 0, 0]


# -- the API ---------------------------------------------------------------------------------


def test_download_summary_counts(tmp_path: Path, server: ImageServer, closed_port: int) -> None:
    urls = [
        server.url("img/rocket.jpg", 0),
        server.url("img/coins.png", 1),
        server.url("_/status/404", 1),
        server.url("_/html-as-jpeg", 2),
        server.url("_/status/404", 2),
        f"http://127.0.0.1:{closed_port}/x.jpg",
        "not a url",
    ]
    seen: list[Outcome] = []
    res = fetch(tmp_path, urls, retries=0, on_outcome=seen.append)
    summary = res.summary
    assert summary is not None
    assert (summary.total, summary.ok, summary.failed, summary.skipped) == (7, 2, 5, 0)
    assert dict(summary.failed_reasons) == {
        "http-404": 2,
        "not-an-image": 1,
        "connection-error": 1,
        "invalid-url": 1,
    }
    assert dict(summary.failed_hosts) == {"127.0.0.2": 1, "127.0.0.3": 2, "127.0.0.1": 1}
    assert sorted(o.row for o in seen) == list(range(7))
    written = json.loads((res.out / "summary.json").read_text(encoding="utf-8"))
    assert (written["total"], written["ok"], written["failed"]) == (7, 2, 5)


def test_download_raises_only_when_the_run_cannot_happen(tmp_path: Path) -> None:
    with pytest.raises(imgfetch.InputError):
        imgfetch.download(tmp_path / "missing.txt", tmp_path / "out")
    (tmp_path / "list.txt").write_text("http://127.0.0.1:1/a.jpg\n", encoding="utf-8")
    (tmp_path / "taken").write_bytes(b"")
    with pytest.raises(imgfetch.OutputError):
        imgfetch.download(tmp_path / "list.txt", tmp_path / "taken")
    with pytest.raises(imgfetch.ConfigError):
        imgfetch.download(tmp_path / "list.txt", tmp_path / "out", no_such_option=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.txt", "taken"]


def test_stream_yields_one_outcome_per_row(tmp_path: Path, server: ImageServer) -> None:
    urls = [server.url("img/rocket.jpg"), server.url("_/status/404"), server.url("img/coins.png", 1)]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(urls) + "\n", encoding="utf-8")
    out = tmp_path / "out"

    async def collect() -> list[Outcome]:
        return [o async for o in imgfetch.stream(listing, out, **FAST)]

    outcomes = sorted(asyncio.run(collect()), key=lambda o: o.row)
    assert [(o.row, o.status.value, o.reason) for o in outcomes] == [
        (0, "ok", None),
        (1, "failed", "http-404"),
        (2, "ok", None),
    ]
    assert all(isinstance(o, imgfetch.Outcome) for o in outcomes)
    assert (out / str(outcomes[0].path)).is_file()


# -- real URL shapes -------------------------------------------------------------------------


@pytest.mark.slow
def test_real_url_shapes(tmp_path: Path, images: dict[str, bytes]) -> None:
    """~1000 real-world URLs, every host mapped (like curl --resolve) to a local catch-all server."""
    if not SHAPES.is_file():
        pytest.skip(f"{SHAPES} is not there")
    lines = [ln.strip() for ln in SHAPES.read_text(encoding="utf-8", errors="replace").splitlines()]
    urls: list[str] = []
    for line in lines[::10][:1000]:
        if not line or line.startswith("#"):
            continue
        url = "http://" + line[len("https://") :] if line.lower().startswith("https://") else line
        parsed = URL(url)
        # An IP literal would be connected to as is, past --resolve: keep those off the internet.
        # The server scripts faults under /_/, which a real path could happen to start with.
        if parsed.raw_host is None or _is_ip(parsed.raw_host) or parsed.path.startswith("/_/"):
            continue
        urls.append(url)
    hosts = sorted({str(URL(u).raw_host) for u in urls})
    with ImageServer(images, hosts=HOSTS, catch_all=True) as srv:
        resolve = tuple((h, HOSTS[i % len(HOSTS)], srv.port) for i, h in enumerate(hosts))
        res = fetch(tmp_path, urls, resolve=resolve, retries=0, concurrency=64)
        assert srv.stats.total == len(urls), "every row made exactly one request, all to the local server"
    bad = [r for r in res.records if r["status"] != "ok"]
    assert bad == []
    paths = res.paths()
    assert len(set(paths)) == len(paths) == len(urls)


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
