"""The shard formats end to end (``--output-format webdataset|parquet``), read back with the
loaders people use on them: Python's ``tarfile``, ``pyarrow``, ``webdataset`` and Hugging Face
``datasets``; plus the shard index, the stats files, ``--key name``, ``--retry-failed`` into
patch shards, foreign shard files, ``--state-dir``, ``--overwrite``, the files format's
sidecars, the schema-1 ledger upgrade, the option errors, and shards written by two event loops
(one staging log each, joined or renamed into the tar).

Every run downloads from the real loopback server of ``conftest``; nothing under test is mocked.
Hugging Face ``datasets`` runs offline with its caches in a temporary folder.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import hashlib
import json
import logging
import os
import re
import sqlite3
import tarfile
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
from PIL import Image

import imgfetch
from conftest import FAST, hits, key
from imgfetch import cli
from imgfetch.errors import ConfigError, ImgfetchError, OutputError
from imgfetch.records.manifest import read_manifest
from imgfetch.runners import loops

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path

    from imgfetch.bench.server import ImageServer

#: Rows per shard in these tests: several shards from a few rows, and a partial last shard.
SIZE = 4
SHARD_FILE = re.compile(r"\A(\d{5,})(\.tar|\.parquet|_stats\.json)\Z")
#: What the run writes beside the shards.
BOOKKEEPING = {"manifest.jsonl", "summary.json", "shards.json"}
#: The columns of every per-shard table (then the extra input columns).
COLUMNS = (
    "key",
    "row",
    "url",
    "status",
    "reason",
    "detail",
    "http_status",
    "attempts",
    "bytes",
    "format",
    "width",
    "height",
    "orig_format",
    "orig_width",
    "orig_height",
    "sha256",
    "orig_sha256",
    "final_url",
    "elapsed",
    "shard",
)
#: The schema-1 ledger (before the shard formats added ``outcomes.shard``, ``writer``, ``sample_end``
#: and ``image_offset``).
SCHEMA_1_SQL = """
CREATE TABLE outcomes(
    row INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    reason TEXT,
    folder TEXT,
    name TEXT,
    record TEXT NOT NULL
);
CREATE INDEX outcomes_file ON outcomes(folder, name) WHERE name IS NOT NULL;
CREATE INDEX outcomes_status ON outcomes(row, status, reason);
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- inputs -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Listing:
    """A CSV input (url, caption, id) and what each row must come to."""

    path: Path
    rows: list[dict[str, str]]
    #: row -> the image bytes the server sends (an ok row) or the failure reason.
    expect: dict[int, bytes | str]

    @property
    def ok(self) -> list[int]:
        return [row for row, want in self.expect.items() if isinstance(want, bytes)]


def write_csv(path: Path, rows: Sequence[Mapping[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def mixed(folder: Path, server: ImageServer, images: Mapping[str, bytes]) -> Listing:
    """Ten rows, seven images (one a PNG) and three failures: two 404s, one page that is no image.

    With :data:`SIZE` 4: shards 00000 and 00001 have four rows each, 00002 the last two.
    """
    t = key()
    names = sorted(images)
    failures = {
        2: ("_/status/404", "http-404"),
        5: ("_/html-as-jpeg", "not-an-image"),
        9: ("_/status/404", "http-404"),
    }
    rows: list[dict[str, str]] = []
    expect: dict[int, bytes | str] = {}
    for i in range(10):
        if i in failures:
            path, reason = failures[i]
            rows.append(
                {"url": server.url(f"{path}?k={t}-{i}", i % 3), "caption": f"no image {i}", "id": f"id{i}"}
            )
            expect[i] = reason
            continue
        name = names[i % len(names)]
        rows.append(
            {
                "url": server.url(f"img/{name}?k={t}-{i}", i % 3),
                "caption": f"légende {i}: {name}",
                "id": f"id{i}",
            }
        )
        expect[i] = images[name]
    folder.mkdir(parents=True, exist_ok=True)
    return Listing(write_csv(folder / "list.csv", rows), rows, expect)


def download(listing: Path, out: Path, **options: Any) -> imgfetch.Summary:
    return imgfetch.download(listing, out, **{**FAST, **options})


# ---- reading the output ------------------------------------------------------------------------


def manifest(out: Path, n_rows: int) -> dict[int, dict[str, Any]]:
    """The manifest's records by row; exactly one per input row."""
    records = list(read_manifest(out / "manifest.jsonl"))
    rows = [int(r["row"]) for r in records]
    assert sorted(rows) == list(range(n_rows)), "exactly one manifest record per input row"
    return {int(r["row"]): r for r in records}


def shard_paths(out: Path, suffix: str) -> list[Path]:
    """The published shard files ending in ``suffix`` (``.tar``, ``.parquet``, ``_stats.json``)."""
    return sorted(p for p in out.iterdir() if (m := SHARD_FILE.match(p.name)) and m.group(2) == suffix)


def shard_numbers(out: Path) -> set[int]:
    return {int(m.group(1)) for p in out.iterdir() if (m := SHARD_FILE.match(p.name))}


def digests(out: Path) -> dict[str, str]:
    """SHA-256 of every published shard file."""
    return {p.name: sha(p.read_bytes()) for p in out.iterdir() if SHARD_FILE.match(p.name)}


@dataclasses.dataclass
class Sample:
    key: str
    #: field (``jpg``, ``json``, ``txt``) -> (member, bytes)
    members: dict[str, tuple[tarfile.TarInfo, bytes]]


def tar_samples(path: Path) -> list[Sample]:
    """The samples of a tar in order, asserting that each sample's members are adjacent,
    that no sample has a field twice and that the archive ends properly."""
    samples: list[Sample] = []
    seen: set[str] = set()
    end = 0
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            assert member.isfile(), member.name
            sample_key, dot, field = member.name.partition(".")
            assert dot and "/" not in member.name, member.name
            data = tar.extractfile(member)
            assert data is not None
            body = data.read()
            if not samples or samples[-1].key != sample_key:
                assert sample_key not in seen, (
                    f"{path.name}: the members of sample {sample_key} are not adjacent"
                )
                seen.add(sample_key)
                samples.append(Sample(sample_key, {}))
            assert field not in samples[-1].members, (
                f"{path.name}: two {field!r} members for key {sample_key}"
            )
            samples[-1].members[field] = (member, body)
            end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    raw = path.read_bytes()
    assert len(raw) % tarfile.BLOCKSIZE == 0, "a tar is whole blocks"
    tail = raw[end:]
    assert len(tail) >= 2 * tarfile.BLOCKSIZE and tail.count(0) == len(tail), (
        "two zero blocks end the archive"
    )
    return samples


def table(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    return rows


def wds_samples(urls: Sequence[Path]) -> list[dict[str, Any]]:
    """Every sample of ``urls`` through ``webdataset``, decoded to PIL."""
    import webdataset as wds

    # webdataset leaves each shard's open file to the garbage collector: collect here, quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        samples = list(wds.WebDataset([str(u) for u in urls], shardshuffle=False).decode("pil"))
        gc.collect()
    return samples


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Hugging Face ``datasets`` offline, every cache in a temporary folder; yields the cache dir."""
    cache = tmp_path_factory.mktemp("hf")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(cache / "home"))
        mp.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        import datasets

        datasets.disable_progress_bars()
        try:
            yield cache / "datasets"
        finally:
            datasets.enable_progress_bars()


@dataclasses.dataclass
class Done:
    """A finished shard run: its input, output folder, Summary and manifest records by row."""

    listing: Listing
    out: Path
    summary: imgfetch.Summary
    records: dict[int, dict[str, Any]]


def shard_run(folder: Path, server: ImageServer, images: Mapping[str, bytes], fmt: str) -> Done:
    listing = mixed(folder, server, images)
    out = folder / "out"
    summary = download(listing.path, out, output_format=fmt, shard_size=SIZE, caption_col="caption")
    assert (summary.ok, summary.failed) == (7, 3)
    return Done(listing, out, summary, manifest(out, len(listing.rows)))


@pytest.fixture(scope="module")
def wds_run(tmp_path_factory: pytest.TempPathFactory, server: ImageServer, images: dict[str, bytes]) -> Done:
    return shard_run(tmp_path_factory.mktemp("wds"), server, images, "webdataset")


@pytest.fixture(scope="module")
def parquet_run(
    tmp_path_factory: pytest.TempPathFactory, server: ImageServer, images: dict[str, bytes]
) -> Done:
    return shard_run(tmp_path_factory.mktemp("parquet"), server, images, "parquet")


# ---- 1. webdataset, read back four ways -----------------------------------------------------------


def test_webdataset_layout_and_manifest(wds_run: Done) -> None:
    out, records = wds_run.out, wds_run.records
    shards = {f"{s:05d}{suffix}" for s in range(3) for suffix in (".tar", ".parquet", "_stats.json")}
    assert {p.name for p in out.iterdir()} == shards | BOOKKEEPING | {".imgfetch"}
    assert list((out / ".imgfetch" / "staging").iterdir()) == [], (
        "staging is empty once every shard is published"
    )
    for row, rec in records.items():
        # 5 shard digits + len(str(SIZE - 1)) index digits; failures carry their key too.
        assert rec["key"] == f"{row // SIZE:05d}{row % SIZE}", rec
        assert rec["shard"] == f"{row // SIZE:05d}.tar", rec
        assert rec["path"] is None, "shard formats write no loose files"
        assert "offset" not in rec and "size" not in rec, (
            "an image's offset is only known once the logs are joined: it is in the per-shard Parquet"
        )
        want = wds_run.listing.expect[row]
        if isinstance(want, bytes):
            assert rec["status"] == "ok" and rec["sha256"] == sha(want) and rec["bytes"] == len(want), rec
        else:
            assert (rec["status"], rec["reason"]) == ("failed", want), rec


def test_webdataset_reads_back_with_tarfile(wds_run: Done) -> None:
    out, listing, records = wds_run.out, wds_run.listing, wds_run.records
    seen: Counter[str] = Counter()
    for tar in shard_paths(out, ".tar"):
        raw = tar.read_bytes()
        located = {t["key"]: t for t in table(tar.with_suffix(".parquet"))}
        for sample in tar_samples(tar):
            seen[sample.key] += 1
            assert set(sample.members) == {"jpg", "json", "txt"}, "the image field is jpg whatever the format"
            rec = next(r for r in records.values() if r["key"] == sample.key)
            assert rec["shard"] == tar.name
            member, data = sample.members["jpg"]
            assert data == listing.expect[rec["row"]]
            where = located[sample.key]
            assert (member.offset_data, member.size) == (where["offset"], where["size"]), sample.key
            assert raw[where["offset"] : where["offset"] + where["size"]] == data
            meta = json.loads(sample.members["json"][1])
            assert {k: meta[k] for k in ("key", "row", "url", "sha256", "width", "height", "format")} == {
                k: rec[k] for k in ("key", "row", "url", "sha256", "width", "height", "format")
            }
            assert (meta["caption"], meta["id"]) == (listing.rows[rec["row"]]["caption"], f"id{rec['row']}")
            assert sample.members["txt"][1].decode("utf-8") == listing.rows[rec["row"]]["caption"]
    ok_keys = {records[row]["key"] for row in listing.ok}
    assert set(seen) == ok_keys and set(seen.values()) == {1}, (
        "every ok row once over all shards, nothing else"
    )


def test_webdataset_per_shard_parquet_has_every_row(wds_run: Done) -> None:
    out, listing, records = wds_run.out, wds_run.listing, wds_run.records
    tables = shard_paths(out, ".parquet")
    assert [p.stem for p in tables] == [p.stem for p in shard_paths(out, ".tar")]
    all_rows: list[int] = []
    for path in tables:
        schema = pq.read_schema(path)
        assert list(schema.names) == [*COLUMNS, "offset", "size", "caption", "id"]
        shard = int(path.stem)
        rows = table(path)
        assert [r["row"] for r in rows] == [i for i in range(10) if i // SIZE == shard], (
            "one row per input row"
        )
        keys_in_tar = {s.key for s in tar_samples(out / f"{path.stem}.tar")}
        raw = (out / f"{path.stem}.tar").read_bytes()
        for rec in rows:
            all_rows.append(rec["row"])
            assert rec["shard"] == f"{path.stem}.tar"
            want = listing.expect[rec["row"]]
            if isinstance(want, bytes):
                data = raw[rec["offset"] : rec["offset"] + rec["size"]]
                assert data == want and sha(data) == rec["sha256"] and rec["size"] == rec["bytes"]
                assert rec["key"] in keys_in_tar
            else:
                assert (rec["status"], rec["reason"]) == ("failed", want)
                assert rec["key"] not in keys_in_tar, "a failure is in the shard's table only, not in its tar"
                assert rec["offset"] is None and rec["size"] is None and rec["sha256"] is None
            same = {k: v for k, v in records[rec["row"]].items() if k in COLUMNS and k != "elapsed"}
            assert {k: rec[k] for k in same} == same, "the table row is the manifest record"
            assert rec["caption"] == listing.rows[rec["row"]]["caption"]
    assert sorted(all_rows) == list(range(10))


def test_webdataset_reads_back_with_webdataset(wds_run: Done) -> None:
    listing, records = wds_run.listing, wds_run.records
    samples = wds_samples(shard_paths(wds_run.out, ".tar"))
    keys = [s["__key__"] for s in samples]
    assert sorted(keys) == sorted(records[row]["key"] for row in listing.ok) and len(set(keys)) == len(keys)
    for sample in samples:
        rec = next(r for r in records.values() if r["key"] == sample["__key__"])
        assert isinstance(sample["jpg"], Image.Image)
        assert sample["jpg"].size == (rec["width"], rec["height"])
        assert isinstance(sample["json"], dict) and sample["json"]["sha256"] == rec["sha256"]
        assert sample["txt"] == listing.rows[rec["row"]]["caption"]


def test_webdataset_reads_back_with_hugging_face_datasets(wds_run: Done, hf: Path) -> None:
    import datasets

    listing, records = wds_run.listing, wds_run.records
    tars = [str(p) for p in shard_paths(wds_run.out, ".tar")]
    ds = datasets.load_dataset("webdataset", data_files=tars, split="train", cache_dir=str(hf))
    assert isinstance(ds.features["jpg"], datasets.Image)
    assert len(ds) == len(listing.ok)
    assert sorted(ds["__key__"]) == sorted(records[row]["key"] for row in listing.ok)
    for item in ds:
        rec = next(r for r in records.values() if r["key"] == item["__key__"])
        assert isinstance(item["jpg"], Image.Image) and item["jpg"].size == (rec["width"], rec["height"])
        assert isinstance(item["json"], dict) and item["json"]["row"] == rec["row"]
        assert item["txt"] == listing.rows[rec["row"]]["caption"]


def test_webdataset_whose_first_shard_has_no_sample_loads_in_datasets(
    tmp_path: Path, server: ImageServer, hf: Path
) -> None:
    """Every row of shard 00000 failed (a dead host, say): the dataset still loads.

    ``datasets``' webdataset builder infers the features from the first tar's
    first samples; a first tar without samples makes ``load_dataset`` fail
    ("Must pass at least one table").
    """
    import datasets

    t = key()
    rows = [{"url": server.url(f"_/status/404?k={t}-{i}")} for i in range(SIZE)]
    rows += [{"url": server.url(f"img/coffee.jpg?k={t}-{i}")} for i in range(SIZE, SIZE + 3)]
    out = tmp_path / "out"
    download(write_csv(tmp_path / "list.csv", rows), out, output_format="webdataset", shard_size=SIZE)
    assert len(wds_samples(shard_paths(out, ".tar"))) == 3
    tars = [str(out / entry["url"]) for entry in json.loads((out / "shards.json").read_text())["shardlist"]]
    ds = datasets.load_dataset("webdataset", data_files=tars, split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 3


# ---- 2. parquet -----------------------------------------------------------------------------------


def test_parquet_reads_back_with_pyarrow(parquet_run: Done) -> None:
    out, listing, records = parquet_run.out, parquet_run.listing, parquet_run.records
    shards = {f"{s:05d}{suffix}" for s in range(3) for suffix in (".parquet", "_stats.json")}
    assert {p.name for p in out.iterdir()} == shards | BOOKKEEPING | {".imgfetch"}
    schemas = {str(pq.read_schema(p)) for p in shard_paths(out, ".parquet")}
    assert len(schemas) == 1, "one schema for every shard"
    for path in shard_paths(out, ".parquet"):
        schema = pq.read_schema(path)
        assert list(schema.names) == [*COLUMNS, "caption", "id", "image"], "no tar offsets in this format"
        features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
        assert features["image"] == {"_type": "Image"}
        rows = table(path)
        assert [r["row"] for r in rows] == [i for i in range(10) if i // SIZE == int(path.stem)]
        for rec in rows:
            want = listing.expect[rec["row"]]
            assert rec["shard"] == path.name == records[rec["row"]]["shard"]
            assert not {"offset", "size"} & set(records[rec["row"]]), "no offsets in the manifest either"
            assert rec["caption"] == listing.rows[rec["row"]]["caption"]
            if isinstance(want, bytes):
                assert rec["image"]["bytes"] == want and sha(want) == rec["sha256"]
                assert rec["image"]["path"] == rec["key"] + (".png" if rec["format"] == "PNG" else ".jpg")
            else:
                assert rec["image"] is None and (rec["status"], rec["reason"]) == ("failed", want)


def test_parquet_reads_back_with_hugging_face_datasets(parquet_run: Done, hf: Path) -> None:
    import datasets

    listing, records = parquet_run.listing, parquet_run.records
    files = [str(p) for p in shard_paths(parquet_run.out, ".parquet")]
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(hf))
    assert isinstance(ds.features["image"], datasets.Image), "an Image feature without a cast"
    assert len(ds) == 10, "failures are rows too"
    assert ds["row"] == list(range(10))
    assert ds["caption"] == [r["caption"] for r in listing.rows]
    for item in ds:
        rec = records[item["row"]]
        if rec["status"] == "ok":
            assert isinstance(item["image"], Image.Image)
            assert item["image"].size == (rec["width"], rec["height"])
            assert item["image"].format == rec["format"]
        else:
            assert item["image"] is None


# ---- 3, 4. the shard index and the stats files ------------------------------------------------------


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_shard_index_lists_every_committed_shard(fmt: str, request: pytest.FixtureRequest) -> None:
    done: Done = request.getfixturevalue("wds_run" if fmt == "webdataset" else "parquet_run")
    out = done.out
    index = json.loads((out / "shards.json").read_text(encoding="utf-8"))
    assert index["__kind__"] == "wids-shard-index-v1"
    suffix = ".tar" if fmt == "webdataset" else ".parquet"
    assert [e["url"] for e in index["shardlist"]] == [p.name for p in shard_paths(out, suffix)]
    ok_per_shard = Counter(r["shard"] for r in done.records.values() if r["status"] == "ok")
    for entry in index["shardlist"]:
        assert entry["nsamples"] == ok_per_shard[entry["url"]]
        assert entry["filesize"] == os.path.getsize(out / entry["url"])
    assert sum(e["nsamples"] for e in index["shardlist"]) == done.summary.ok


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_stats_match_the_shard_tables(fmt: str, request: pytest.FixtureRequest) -> None:
    done: Done = request.getfixturevalue("wds_run" if fmt == "webdataset" else "parquet_run")
    out = done.out
    data_suffix = ".tar" if fmt == "webdataset" else ".parquet"
    stats_files = shard_paths(out, "_stats.json")
    assert [p.name.removesuffix("_stats.json") for p in stats_files] == ["00000", "00001", "00002"]
    for path in stats_files:
        stats = json.loads(path.read_text(encoding="utf-8"))
        base = path.name.removesuffix("_stats.json")
        rows = table(out / f"{base}.parquet")
        statuses = Counter(r["status"] for r in rows)
        assert stats["shard"] == base and stats["kind"] == "base"
        assert stats["count"] == len(rows)
        assert stats["successes"] == statuses["ok"]
        assert stats["failed_to_download"] == statuses["failed"]
        assert stats["skipped"] == statuses["skipped"]
        assert stats["status_dict"] == dict(statuses)
        assert stats["reasons"] == dict(Counter(r["reason"] for r in rows if r["status"] != "ok"))
        assert stats["bytes"] == sum(r["bytes"] for r in rows if r["status"] == "ok")
        assert stats["filesize"] == os.path.getsize(out / f"{base}{data_suffix}")
        assert stats["start_time"] <= stats["end_time"]


# ---- 5. --key name -------------------------------------------------------------------------------


def test_key_name_from_a_column(tmp_path: Path, server: ImageServer) -> None:
    t = key()
    ids = ["cat", "a.b.c", "a_b_c", "Cat", "dog.v2", "", "x", "y"]
    rows = [
        {"url": server.url(f"img/rocket.jpg?k={t}-{i}", i % 3), "id": ident} for i, ident in enumerate(ids)
    ]
    out = tmp_path / "out"
    summary = download(
        write_csv(tmp_path / "list.csv", rows),
        out,
        output_format="webdataset",
        shard_size=SIZE,
        key="name",
        name="column:id",
    )
    assert summary.ok == len(rows)
    records = manifest(out, len(rows))
    keys = [records[i]["key"] for i in range(len(rows))]
    assert all(k and "." not in k for k in keys), keys
    assert len(set(keys)) == len(keys), keys
    assert keys[1] == "a_b_c", "a dot in a name becomes '_'"
    assert keys[2] != keys[1], "'a_b_c' keeps a key of its own next to 'a.b.c'"
    assert keys[0] == "cat" and keys[4] == "dog_v2" and keys[6:] == ["x", "y"]
    assert keys[5].startswith("img-"), "a row without a name gets the URL's fallback stem"
    in_tars = {s.key: tar.name for tar in shard_paths(out, ".tar") for s in tar_samples(tar)}
    assert in_tars == {k: records[i]["shard"] for i, k in enumerate(keys)}
    assert sorted(s["__key__"] for s in wds_samples(shard_paths(out, ".tar"))) == sorted(keys)


def test_key_name_from_url_stems(tmp_path: Path, server: ImageServer) -> None:
    t = key()
    stems = ["photo.v1.jpg", "photo_v1.png", "plain.jpeg", "plain.jpeg", "a.b"]
    rows = [{"url": server.url(f"_/as/coffee.jpg/{t}/{stem}", i % 3)} for i, stem in enumerate(stems)]
    out = tmp_path / "out"
    summary = download(
        write_csv(tmp_path / "list.csv", rows), out, output_format="webdataset", shard_size=10, key="name"
    )
    assert summary.ok == len(rows)
    records = manifest(out, len(rows))
    keys = [records[i]["key"] for i in range(len(rows))]
    assert keys[0] == "photo_v1" and keys[2] == "plain" and keys[4] == "a_b"
    assert all("." not in k for k in keys) and len(set(keys)) == len(keys), keys
    assert sorted(s.key for s in tar_samples(out / "00000.tar")) == sorted(keys), (
        "tars hold samples as rows finish"
    )


def test_key_name_long_and_non_ascii_names_read_back(tmp_path: Path, server: ImageServer) -> None:
    """Names over 100 bytes or not ASCII need PAX headers in the tar; offsets still point at the bytes."""
    t = key()
    ids = ["Ünïcödé-名前", "x" * 150, "y" * 99, "z" * 100, "emoji-😀"]
    rows = [
        {"url": server.url(f"img/rocket.jpg?k={t}-{i}", i % 3), "id": ident} for i, ident in enumerate(ids)
    ]
    out = tmp_path / "out"
    summary = download(
        write_csv(tmp_path / "list.csv", rows),
        out,
        output_format="webdataset",
        shard_size=10,
        key="name",
        name="column:id",
        caption_col="id",
    )
    assert summary.ok == len(ids)
    records = manifest(out, len(ids))
    assert [records[i]["key"] for i in range(len(ids))] == ids
    raw = (out / "00000.tar").read_bytes()
    samples = {s.key: s for s in tar_samples(out / "00000.tar")}
    assert set(samples) == set(ids)
    located = {t["key"]: t for t in table(out / "00000.parquet")}
    for rec in records.values():
        member, data = samples[rec["key"]].members["jpg"]
        where = located[rec["key"]]
        assert member.name == rec["key"] + ".jpg"
        assert (member.offset_data, member.size) == (where["offset"], where["size"]), rec["key"]
        assert sha(raw[where["offset"] : where["offset"] + where["size"]]) == rec["sha256"] == sha(data)
        assert samples[rec["key"]].members["txt"][1].decode("utf-8") == rec["key"]
    loaded = {s["__key__"]: s for s in wds_samples([out / "00000.tar"])}
    assert set(loaded) == set(ids) and all(loaded[k]["txt"] == k for k in ids)


def test_key_name_keys_stay_unique_in_a_patch_shard(tmp_path: Path, server: ImageServer) -> None:
    """Two rows of different base shards share a name (each unique in its own shard); both fail
    transiently, and --retry-failed puts both into the same patch shard."""
    t = key()
    rows = [{"url": server.url(f"img/rocket.jpg?k={t}-{i}"), "id": f"x{i}"} for i in range(2 * SIZE)]
    rows[1] = {"url": server.url(f"_/flaky/{t}-a/1/503"), "id": "cat"}
    rows[SIZE + 1] = {"url": server.url(f"_/flaky/{t}-b/1/503"), "id": "cat"}
    listing = write_csv(tmp_path / "list.csv", rows)
    out = tmp_path / "out"
    opts: dict[str, Any] = {
        "output_format": "webdataset",
        "shard_size": SIZE,
        "key": "name",
        "name": "column:id",
    }
    assert download(listing, out, retries=0, **opts).failed == 2
    assert download(listing, out, retries=0, retry_failed=True, **opts).ok == 2
    records = manifest(out, len(rows))
    for tar in shard_paths(out, ".tar"):
        tar_samples(tar)  # asserts no key appears twice in one tar
    located = Counter((r["shard"], r["key"]) for r in records.values() if r["status"] == "ok")
    assert set(located.values()) == {1}, f"each ok row has a sample of its own: {located}"
    wds_samples(shard_paths(out, ".tar"))


# ---- 6. --retry-failed into a patch shard ----------------------------------------------------------


def test_retry_failed_goes_to_a_new_patch_shard(
    tmp_path: Path, server: ImageServer, images: dict[str, bytes]
) -> None:
    t = key()
    rows = [
        {"url": server.url(f"img/hubble.jpg?k={t}-{i}", i % 3), "caption": f"c{i}"} for i in range(2 * SIZE)
    ]
    flaky = {1: server.url(f"_/flaky/{t}-1/1/503"), 6: server.url(f"_/flaky/{t}-6/1/503", 1)}
    for row, url in flaky.items():
        rows[row]["url"] = url  # 503 on the first request, an image after
    rows[3]["url"] = server.url(f"_/status/404?k={t}-3")
    listing = write_csv(tmp_path / "list.csv", rows)
    out = tmp_path / "out"
    opts: dict[str, Any] = {
        "output_format": "webdataset",
        "shard_size": SIZE,
        "caption_col": "caption",
        "retries": 0,
    }

    first = download(listing, out, **opts)
    assert (first.ok, first.failed_reasons) == (5, Counter({"http-503": 2, "http-404": 1}))
    before = digests(out)
    assert shard_numbers(out) == {0, 1}

    second = download(listing, out, retry_failed=True, **opts)
    assert (second.ok, second.failed, second.already_done) == (2, 0, 6)
    assert all(hits(server, r["url"]) == (2 if i in flaky else 1) for i, r in enumerate(rows)), (
        "only the 503s again"
    )
    after = digests(out)
    assert {name: after[name] for name in before} == before, "committed shards are never written again"
    (patch,) = shard_numbers(out) - {0, 1}
    assert patch >= 2, "a patch shard takes a number no base shard of the input can have"
    base = f"{patch:05d}"
    assert set(after) - set(before) == {f"{base}.tar", f"{base}.parquet", f"{base}_stats.json"}
    stats = json.loads((out / f"{base}_stats.json").read_text())
    assert (stats["kind"], stats["count"], stats["successes"]) == ("patch", 2, 2)

    records = manifest(out, len(rows))
    patch_rows = {t["row"]: t for t in table(out / f"{base}.parquet")}
    assert set(patch_rows) == set(flaky), "the patch shard's table holds the rows redone into it"
    for row in flaky:
        rec = records[row]
        assert (rec["status"], rec["shard"]) == ("ok", f"{base}.tar"), rec
        assert rec["key"] == f"{row // SIZE:05d}{row % SIZE}", "the key stays the row's"
        where = patch_rows[row]
        data = (out / rec["shard"]).read_bytes()[where["offset"] : where["offset"] + where["size"]]
        assert sha(data) == rec["sha256"] and len(data) == rec["bytes"]
    assert records[3]["reason"] == "http-404", "a permanent failure is not retried"

    # The old shard's table still holds the old failure; the ok rows of all tables name one sample each.
    assert table(out / "00000.parquet")[1]["status"] == "failed"
    ok_rows = [
        (r["row"], r["shard"], r["key"])
        for p in shard_paths(out, ".parquet")
        for r in table(p)
        if r["status"] == "ok"
    ]
    assert sorted(ok_rows) == sorted(
        (i, r["shard"], r["key"]) for i, r in records.items() if r["status"] == "ok"
    )
    index = json.loads((out / "shards.json").read_text())
    assert [(e["url"], e["nsamples"]) for e in index["shardlist"]] == [
        ("00000.tar", 2),
        ("00001.tar", 3),
        (f"{base}.tar", 2),
    ]
    tars = [out / e["url"] for e in index["shardlist"]]
    loaded = Counter(s["__key__"] for s in wds_samples(tars))
    assert loaded == Counter(r["key"] for r in records.values() if r["status"] == "ok"), "each ok key once"

    third = download(listing, out, retry_failed=True, **opts)
    assert (third.total, third.already_done) == (0, len(rows))
    assert digests(out) == after


# ---- 7. shard files imgfetch did not write -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("webdataset", "00000.tar"), ("parquet", "00000.parquet"), ("webdataset", "00003_stats.json")],
)
def test_a_foreign_shard_file_stops_the_first_run(
    tmp_path: Path, server: ImageServer, fmt: str, name: str
) -> None:
    t = key()
    rows = [{"url": server.url(f"img/coffee.jpg?k={t}-{i}")} for i in range(6)]
    listing = write_csv(tmp_path / "list.csv", rows)
    out = tmp_path / "out"
    out.mkdir()
    mine = out / name
    mine.write_bytes(b"the user's own archive\n")
    stamp = mine.stat().st_mtime_ns
    with pytest.raises(OutputError, match=re.escape(name)) as caught:
        download(listing, out, output_format=fmt, shard_size=SIZE)
    assert isinstance(caught.value, ImgfetchError)
    assert all(hits(server, r["url"]) == 0 for r in rows), "nothing is downloaded"
    assert mine.read_bytes() == b"the user's own archive\n" and mine.stat().st_mtime_ns == stamp
    assert {p.name for p in out.iterdir()} <= {name, ".imgfetch"}, "nothing else is written to the output"


# ---- 8. --state-dir ---------------------------------------------------------------------------------


def test_state_dir_elsewhere(tmp_path: Path, server: ImageServer) -> None:
    t = key()
    rows = [{"url": server.url(f"img/astronaut.jpg?k={t}-{i}", i % 3)} for i in range(7)]
    listing = write_csv(tmp_path / "list.csv", rows)
    out, state = tmp_path / "out", tmp_path / "state"
    opts: dict[str, Any] = {"output_format": "webdataset", "shard_size": SIZE, "state_dir": state}
    assert download(listing, out, **opts).ok == 7
    assert not (out / ".imgfetch").exists(), "nothing of the state in the output"
    assert {p.name for p in out.iterdir()} == {
        f"{s:05d}{x}" for s in (0, 1) for x in (".tar", ".parquet", "_stats.json")
    } | BOOKKEEPING
    assert {"ledger.sqlite", "lock", "staging"} <= {p.name for p in state.iterdir()}
    assert list((state / "staging").iterdir()) == []
    before = digests(out)

    again = download(listing, out, **opts)
    assert (again.total, again.already_done) == (0, len(rows))
    assert all(hits(server, r["url"]) == 1 for r in rows), "nothing is fetched twice"
    assert digests(out) == before and not (out / ".imgfetch").exists()


# ---- 9. the files format's sidecars ------------------------------------------------------------------


def test_files_format_caption_and_metadata_sidecars(
    tmp_path: Path, server: ImageServer, images: dict[str, bytes]
) -> None:
    listing = mixed(tmp_path, server, images)
    plain, extra = tmp_path / "plain", tmp_path / "extra"
    download(listing.path, plain)
    summary = download(listing.path, extra, caption_col="caption", write_metadata=True)
    assert (summary.ok, summary.failed) == (7, 3)
    records = manifest(extra, 10)

    def steady(recs: Mapping[int, Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
        return {row: {k: v for k, v in rec.items() if k != "elapsed"} for row, rec in recs.items()}

    assert steady(manifest(plain, 10)) == steady(records), "the sidecars change nothing in the manifest"
    expected: set[str] = set()
    for row, rec in records.items():
        if rec["status"] != "ok":
            continue
        image = extra / rec["path"]
        stem = image.with_suffix("")
        expected |= {rec["path"], f"{stem.relative_to(extra)}.txt", f"{stem.relative_to(extra)}.json"}
        assert image.read_bytes() == listing.expect[row]
        assert stem.with_suffix(".txt").read_text(encoding="utf-8") == listing.rows[row]["caption"]
        meta = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
        assert {k: meta[k] for k in ("row", "url", "sha256", "width", "height")} == {
            k: rec[k] for k in ("row", "url", "sha256", "width", "height")
        }
        assert (meta["caption"], meta["id"]) == (listing.rows[row]["caption"], f"id{row}")
    files = {p.relative_to(extra).as_posix() for p in extra.rglob("*") if p.is_file()}
    assert {f for f in files if not f.startswith(".imgfetch/")} == expected | {
        "manifest.jsonl",
        "summary.json",
    }

    again = download(listing.path, extra, caption_col="caption", write_metadata=True)
    assert (again.total, again.already_done) == (0, 10)


def test_overwrite_deletes_the_files_formats_sidecars(tmp_path: Path, server: ImageServer) -> None:
    t = key()
    rows = [{"url": server.url(f"img/coffee.jpg?k={t}-{i}"), "caption": f"c{i}"} for i in range(3)]
    listing = write_csv(tmp_path / "list.csv", rows)
    out = tmp_path / "out"
    download(listing, out, caption_col="caption", write_metadata=True)
    assert len(list(out.glob("00000/*.txt"))) == 3
    download(listing, out, overwrite=True)
    left = sorted(p.name for p in (out / "00000").iterdir())
    assert left == ["coffee-1.jpg", "coffee-2.jpg", "coffee.jpg"], (
        "no caption or metadata of the old run stays"
    )


# ---- 10. --overwrite on a shard output --------------------------------------------------------------


def test_overwrite_deletes_the_recorded_shards_and_keeps_user_files(
    tmp_path: Path, server: ImageServer
) -> None:
    t = key()
    rows = [{"url": server.url(f"img/rocket.jpg?k={t}-{i}", i % 3)} for i in range(10)]
    listing = write_csv(tmp_path / "list.csv", rows)
    out = tmp_path / "out"
    download(listing, out, output_format="webdataset", shard_size=SIZE)
    assert shard_numbers(out) == {0, 1, 2}
    (out / "notes.txt").write_text("mine\n")
    (out / "mine.tar").write_bytes(b"not a shard")

    summary = download(listing, out, output_format="webdataset", shard_size=10, overwrite=True)
    assert (summary.ok, summary.already_done) == (10, 0), "starts afresh"
    assert all(hits(server, r["url"]) == 2 for r in rows)
    assert {p.name for p in out.iterdir()} == {
        "00000.tar",
        "00000.parquet",
        "00000_stats.json",
        "notes.txt",
        "mine.tar",
        ".imgfetch",
    } | BOOKKEEPING
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "mine.tar").read_bytes() == b"not a shard"
    records = manifest(out, 10)
    assert {r["shard"] for r in records.values()} == {"00000.tar"}
    assert sorted(s.key for s in tar_samples(out / "00000.tar")) == [f"00000{i}" for i in range(10)]
    index = json.loads((out / "shards.json").read_text())
    assert [(e["url"], e["nsamples"]) for e in index["shardlist"]] == [("00000.tar", 10)]


@pytest.mark.parametrize(
    ("first", "then"),
    [("webdataset", "parquet"), ("webdataset", "files"), ("parquet", "webdataset"), ("parquet", "files")],
)
def test_overwrite_into_another_format_deletes_the_old_shards(
    tmp_path: Path, server: ImageServer, first: str, then: str
) -> None:
    t = key()
    rows = [{"url": server.url(f"img/rocket.jpg?k={t}-{i}", i % 3)} for i in range(6)]
    listing = write_csv(tmp_path / "list.csv", rows)
    out = tmp_path / "out"
    download(listing, out, output_format=first, shard_size=SIZE)
    summary = download(listing, out, output_format=then, shard_size=SIZE, overwrite=True)
    assert summary.ok == 6
    fresh = {
        "webdataset": (".tar", ".parquet", "_stats.json"),
        "parquet": (".parquet", "_stats.json"),
        "files": (),
    }
    shards = sorted(p.name for p in out.iterdir() if SHARD_FILE.match(p.name))
    assert shards == sorted(f"{s:05d}{x}" for s in (0, 1) for x in fresh[then]), (
        "no shard of the old run stays"
    )
    assert (out / "shards.json").exists() == (then != "files")


# ---- 11. a schema-1 ledger -------------------------------------------------------------------------


def test_schema_1_ledger_is_upgraded_in_place(tmp_path: Path, server: ImageServer) -> None:
    t = key()
    urls = [server.url(f"img/chelsea-the-cat.jpg?k={t}-{i}", i % 3) for i in range(5)]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(u + "\n" for u in urls))
    out = tmp_path / "out"
    assert download(listing, out).ok == 5
    manifest_before = (out / "manifest.jsonl").read_bytes()

    # The same ledger as the version before the shard formats wrote it: no shard columns, schema 1.
    path = out / ".imgfetch" / "ledger.sqlite"
    new = sqlite3.connect(path)
    outcomes = new.execute("SELECT row, status, reason, folder, name, record FROM outcomes").fetchall()
    meta = new.execute("SELECT key, value FROM meta").fetchall()
    new.close()
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    old = sqlite3.connect(path)
    old.executescript(SCHEMA_1_SQL)
    old.executemany("INSERT INTO outcomes VALUES (?, ?, ?, ?, ?, ?)", outcomes)
    old.executemany("INSERT INTO meta VALUES (?, ?)", [(k, "1" if k == "schema" else v) for k, v in meta])
    old.commit()
    old.close()

    again = download(listing, out)
    assert (again.total, again.already_done) == (0, 5), "resumes without a conflict"
    assert all(hits(server, u) == 1 for u in urls)
    assert (out / "manifest.jsonl").read_bytes() == manifest_before
    db = sqlite3.connect(path)
    try:
        columns = [row[1] for row in db.execute("PRAGMA table_info(outcomes)")]
        schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
        count = db.execute("SELECT count(*) FROM outcomes").fetchone()[0]
    finally:
        db.close()
    assert columns == [
        "row",
        "status",
        "reason",
        "folder",
        "name",
        "record",
        "shard",
        "writer",
        "sample_end",
        "image_offset",
    ]
    assert (schema, count) == ("2", 5)


# ---- 12. option errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"output_format": "nope"}, "unknown output format 'nope'"),
        ({"output_format": "webdataset", "shard_size": 0}, "shard_size must be >= 1"),
        ({"output_format": "parquet", "shard_size": -3}, "shard_size must be >= 1"),
        (
            {"output_format": "webdataset", "write_metadata": True},
            "--write-metadata is for --output-format files",
        ),
        ({"output_format": "webdataset", "key": "nope"}, "unknown key 'nope'"),
        ({"output_format": "parquet", "key": "name", "name": "random"}, "--key name needs names"),
    ],
)
def test_bad_shard_options_are_config_errors(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("http://127.0.0.1:9/x.jpg\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        download(listing, tmp_path / "out", **options)
    assert not (tmp_path / "out").exists(), "nothing is written"


@pytest.fixture
def quiet_cli_logging() -> Iterator[None]:
    """``cli.main`` configures the ``imgfetch`` logger for its process: put it back afterwards."""
    log = logging.getLogger("imgfetch")
    saved = (list(log.handlers), log.level, log.propagate)
    try:
        yield
    finally:
        log.handlers[:] = saved[0]
        log.setLevel(saved[1])
        log.propagate = saved[2]


@pytest.mark.usefixtures("quiet_cli_logging")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--output-format", "webdataset", "--shard-size", "0"], "--shard-size must be >= 1"),
        (["--output-format", "parquet", "--write-metadata"], "--write-metadata is for --output-format files"),
        (["--output-format", "webdataset", "--key", "name", "--name", "random"], "--key name needs names"),
    ],
)
def test_bad_shard_options_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("http://127.0.0.1:9/x.jpg\n")
    assert cli.main([str(listing), "-o", str(tmp_path / "out"), "--no-progress", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imgfetch: error[bad-option]: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("quiet_cli_logging")
def test_unknown_output_format_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("http://127.0.0.1:9/x.jpg\n")
    # argparse refuses a choice it does not know; imgfetch's parser makes that its one-line error, exit 1.
    with pytest.raises(SystemExit) as caught:
        cli.main([str(listing), "-o", str(tmp_path / "out"), "--output-format", "nope"])
    assert caught.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imgfetch: error[bad-option]: "), err
    assert "invalid choice: 'nope'" in err[0]
    assert not (tmp_path / "out").exists()


# ---- 13. several event loops: each writes its own staging log of a shard ------------------------


def ledger_samples(out: Path) -> dict[int, tuple[int, int, int]]:
    """row -> (writer, image_offset, sample_end) of every row with a sample, as the ledger holds it."""
    path = out / ".imgfetch" / "ledger.sqlite"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT row, writer, image_offset, sample_end FROM outcomes WHERE sample_end IS NOT NULL"
        ).fetchall()
    finally:
        db.close()
    return {int(row): (int(w), int(offset), int(end)) for row, w, offset, end in rows}


class LogInodes:
    """An ``on_outcome`` that notes the inode of every staging log it sees: a row's outcome
    comes after its sample is in its log and before the shard it completes is sealed."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        #: log name -> its inode
        self.found: dict[str, int] = {}

    def __call__(self, _outcome: imgfetch.Outcome) -> None:
        with os.scandir(self.staging) as entries:
            for entry in entries:
                if entry.name.endswith(".samples"):
                    self.found.setdefault(entry.name, entry.inode())


def tar_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """key -> (offset, size) of each sample's image member in a published tar."""
    return {s.key: (s.members["jpg"][0].offset_data, s.members["jpg"][0].size) for s in tar_samples(path)}


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_two_event_loops_write_a_shard_from_two_logs(
    tmp_path: Path, server: ImageServer, images: dict[str, bytes], fmt: str
) -> None:
    """``loops=2``: each loop writes the samples of the rows it fetched to its own log of the
    shard (``00000.<writer>.samples``); sealing joins them into the tar (webdataset; one log
    alone is renamed to it) or reads the images from both (parquet)."""
    owners = loops.Owners(loops.weights(2))
    assert {owners(h) for h in server.hosts} == {0, 1}, "the hosts must be spread over both loops"
    listing = mixed(tmp_path, server, images)
    out = tmp_path / "out"
    note = LogInodes(out / ".imgfetch" / "staging")
    summary = imgfetch.download(
        listing.path,
        out,
        on_outcome=note,
        **{**FAST, "output_format": fmt, "shard_size": SIZE, "caption_col": "caption", "loops": 2},
    )
    assert (summary.ok, summary.failed) == (7, 3)
    records = manifest(out, len(listing.rows))
    assert list((out / ".imgfetch" / "staging").iterdir()) == [], "every log is gone once committed"

    # Each ok row's sample is in the log of the loop that owns its host.
    samples = ledger_samples(out)
    assert set(samples) == set(listing.ok)
    for row, (writer, _, _) in samples.items():
        assert writer == owners(urlsplit(listing.rows[row]["url"]).hostname or ""), row
    writers = {s: {samples[r][0] for r in listing.ok if r // SIZE == s} for s in range(3)}
    # Rows 0-3 on hosts 0, 1, 2, 0; rows 8-9 on hosts 2, 0 with row 9 a 404.
    assert writers[0] == writers[1] == {0, 1} and len(writers[2]) == 1, writers
    found = note.found
    assert {f"{s:05d}.{w}.samples" for s, ws in writers.items() for w in ws} == set(found)

    for s in range(3):
        base = f"{s:05d}"
        shard_rows = table(out / f"{base}.parquet")
        assert [t["row"] for t in shard_rows] == [i for i in range(10) if i // SIZE == s]
        for t in shard_rows:
            assert "offset" not in records[t["row"]] and "size" not in records[t["row"]]
        if fmt == "parquet":
            assert "offset" not in shard_rows[0] and "size" not in shard_rows[0]
            for t in shard_rows:
                want = listing.expect[t["row"]]
                assert (t["image"] or {}).get("bytes") == (want if isinstance(want, bytes) else None), t
            continue
        tar = out / f"{base}.tar"
        raw = tar.read_bytes()
        in_tar = tar_offsets(tar)
        assert set(in_tar) == {t["key"] for t in shard_rows if t["status"] == "ok"}
        for t in shard_rows:
            if t["status"] != "ok":
                assert (t["offset"], t["size"]) == (None, None), t
                continue
            assert (t["offset"], t["size"]) == in_tar[t["key"]], t
            assert raw[t["offset"] : t["offset"] + t["size"]] == listing.expect[t["row"]]
        # Each log is in the tar whole, one after the other: an image's offset in the tar is
        # where its log starts there plus its offset in the log.
        starts: dict[int, set[int]] = {}
        for t in shard_rows:
            if t["status"] == "ok":
                writer, offset, _ = samples[t["row"]]
                starts.setdefault(writer, set()).add(t["offset"] - offset)
        assert all(len(v) == 1 for v in starts.values()), starts
        at = 0
        for start, writer in sorted((min(v), w) for w, v in starts.items()):
            assert start == at, (base, starts)
            at += max(end for r, (w, _, end) in samples.items() if r // SIZE == s and w == writer)
        if len(writers[s]) == 1:
            (writer,) = writers[s]
            assert tar.stat().st_ino == found[f"{base}.{writer}.samples"], "one log is renamed, not copied"
    if fmt == "webdataset":
        loaded = Counter(s["__key__"] for s in wds_samples(shard_paths(out, ".tar")))
        assert loaded == Counter(records[row]["key"] for row in listing.ok)


def test_one_event_loop_renames_its_log_to_the_tar(tmp_path: Path, server: ImageServer) -> None:
    """``loops=1``: every shard's tar is its one staging log renamed (the same inode), with the
    end-of-archive blocks appended; nothing is copied."""
    t = key()
    rows = [{"url": server.url(f"img/rocket.jpg?k={t}-{i}", i % 3)} for i in range(10)]
    out = tmp_path / "out"
    note = LogInodes(out / ".imgfetch" / "staging")
    summary = imgfetch.download(
        write_csv(tmp_path / "list.csv", rows),
        out,
        on_outcome=note,
        **{**FAST, "output_format": "webdataset", "shard_size": SIZE, "loops": 1},
    )
    assert summary.ok == 10
    found = note.found
    assert set(found) == {f"{s:05d}.0.samples" for s in range(3)}, "writer 0 is the pipeline's own loop"
    for s in range(3):
        tar = out / f"{s:05d}.tar"
        assert tar.stat().st_ino == found[f"{s:05d}.0.samples"], tar.name
        assert len(tar_samples(tar)) == min(SIZE, 10 - s * SIZE)
        located = {r["key"]: (r["offset"], r["size"]) for r in table(out / f"{s:05d}.parquet")}
        assert located == tar_offsets(tar)
    assert list((out / ".imgfetch" / "staging").iterdir()) == []


def test_a_sidecar_that_cannot_be_written_fails_its_row_not_the_run(
    tmp_path: Path, server: ImageServer
) -> None:
    """``--caption-col``: a ``.txt`` that cannot be written (a folder holds its name) makes its row
    a ``write-error``; the other rows and the run go on."""
    t = key()
    rows = [{"url": server.url(f"img/rocket.jpg?t={t}"), "caption": "a rocket"}]
    rows.append({"url": server.url(f"img/coffee.jpg?t={t}"), "caption": "a coffee"})
    listing = write_csv(tmp_path / "list.csv", rows)
    out = tmp_path / "out"
    (out / "00000" / "rocket.txt").mkdir(parents=True)
    summary = download(listing, out, caption_col="caption")
    assert (summary.ok, summary.failed_reasons) == (1, Counter({"write-error": 1}))
    records = manifest(out, 2)
    assert records[0]["status"] == "failed" and records[0]["path"] is None
    assert (out / "00000" / "coffee.txt").read_text() == "a coffee"
    assert (out / "00000" / "rocket.txt").is_dir(), "what imgfetch did not write stays"
