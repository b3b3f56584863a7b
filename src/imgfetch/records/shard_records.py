"""What a shard says about its rows: the sample JSON, the per-shard Parquet table, the
stats file and the shard index.  Pure functions of the rows' manifest records; no I/O.

One Arrow schema for every shard of every run (:data:`FIELDS`, then the input's
extra columns as strings), so a loader reading many shards never meets two
schemas: extra values that are not strings are stored as their JSON text, and
an extra column whose name is one of imgfetch's is stored as ``extra_NAME``.
"""

from __future__ import annotations

import collections
import json
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from imgfetch.outcome import Outcome

#: The per-row fields of every shard table, in order, and their types.
FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("key", pa.string()),
    ("row", pa.int64()),
    ("url", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("http_status", pa.int64()),
    ("attempts", pa.int64()),
    ("bytes", pa.int64()),
    ("format", pa.string()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("orig_format", pa.string()),
    ("orig_width", pa.int64()),
    ("orig_height", pa.int64()),
    ("sha256", pa.string()),
    ("orig_sha256", pa.string()),
    ("final_url", pa.string()),
    ("elapsed", pa.float64()),
    ("shard", pa.string()),
    ("offset", pa.int64()),
    ("size", pa.int64()),
)
_NAMES = frozenset(name for name, _ in FIELDS) | {"image"}
#: Fields of each sample's ``{key}.json`` (then the extra columns).
SAMPLE_FIELDS = (
    "key",
    "row",
    "url",
    "status",
    "format",
    "width",
    "height",
    "orig_format",
    "orig_width",
    "orig_height",
    "bytes",
    "sha256",
    "orig_sha256",
    "final_url",
    "http_status",
)
#: Hugging Face ``datasets`` names of the Arrow types used here.
_HF_DTYPES = {pa.string(): "string", pa.int64(): "int64", pa.float64(): "float64"}


def extra_name(column: str) -> str:
    """The column an extra input column gets (prefixed when it clashes with a field of imgfetch's)."""
    return f"extra_{column}" if column in _NAMES else column


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def sample_metadata(outcome: Outcome) -> dict[str, Any]:
    """The ``{key}.json`` of a sample: the row's identity, sizes and hashes, and its extra columns."""
    rec = outcome.to_record()
    meta = {name: rec.get(name) for name in SAMPLE_FIELDS}
    for column, value in (outcome.extra or {}).items():
        meta[extra_name(str(column))] = value
    return meta


def caption(outcome: Outcome, column: str) -> str:
    """The row's ``--caption-col`` value as text ("" when the row has none)."""
    value = (outcome.extra or {}).get(column)
    return "" if value is None else str(value)


def extra_columns(records: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for rec in records:
        for column in rec.get("extra") or {}:
            seen.setdefault(str(column), None)
    return list(seen)


def table(
    records: Sequence[Mapping[str, Any]],
    *,
    images: Sequence[bytes | None] | None = None,
    image_paths: Sequence[str | None] | None = None,
    offsets: bool = True,
    extras: Sequence[str] | None = None,
) -> pa.Table:
    """The rows of one shard as an Arrow table with :data:`FIELDS` first.

    With ``images`` (the parquet format) an ``image`` column of ``{bytes, path}``
    structs is added and the schema carries the ``huggingface`` metadata that
    makes ``datasets`` read it as an ``Image`` feature, decoded to PIL.
    ``offsets=False`` leaves out ``offset`` and ``size`` (which locate a
    sample inside a tar).  ``extras`` fixes the extra columns (default: those
    the records have), so that the row groups of one file share one schema.
    """
    fields = [(n, t) for n, t in FIELDS if offsets or n not in ("offset", "size")]
    columns: dict[str, pa.Array] = {
        name: pa.array([rec.get(name) for rec in records], type=kind) for name, kind in fields
    }
    for column in extra_columns(records) if extras is None else extras:
        values = [_text((rec.get("extra") or {}).get(column)) for rec in records]
        columns[extra_name(column)] = pa.array(values, type=pa.string())
    features: dict[str, Any] = {
        name: {"dtype": _HF_DTYPES[array.type], "_type": "Value"} for name, array in columns.items()
    }
    if images is not None:
        paths = image_paths if image_paths is not None else [None] * len(images)
        # Built from two flat arrays (no dict per row): one copy of the bytes, into Arrow.
        columns["image"] = pa.StructArray.from_arrays(
            [pa.array(images, type=pa.binary()), pa.array(paths, type=pa.string())],
            names=["bytes", "path"],
            mask=pa.array([data is None for data in images], type=pa.bool_()),
        )
        features["image"] = {"_type": "Image"}
    tbl = pa.table(columns)
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode("utf-8")}
    return tbl.replace_schema_metadata(meta)


def stats(
    shard: str,
    kind: str,
    records: Iterable[Mapping[str, Any]],
    started: float,
    ended: float,
    filesize: int,
    files: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``{shard}_stats.json`` of a committed shard (written last: its presence marks the commit).

    ``count`` / ``successes`` / ``failed_to_download`` / ``status_dict`` are
    the names img2dataset's stats files use, so tools reading those read these.
    """
    statuses: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    nbytes = 0
    count = 0
    for rec in records:
        count += 1
        status = str(rec.get("status"))
        statuses[status] += 1
        if status == "ok":
            nbytes += int(rec.get("bytes") or 0)
        else:
            reasons[str(rec.get("reason"))] += 1
    return {
        "shard": shard,
        "kind": kind,
        "count": count,
        "successes": statuses["ok"],
        "failed_to_download": statuses["failed"],
        "skipped": statuses["skipped"],
        "status_dict": dict(statuses),
        "reasons": dict(reasons.most_common()),
        "bytes": nbytes,
        "filesize": filesize,
        "files": list(files),
        "start_time": started,
        "end_time": ended,
        "duration": round(ended - started, 3),
    }


def shard_index(shards: Iterable[tuple[str, int, int, str]], name: str) -> dict[str, Any]:
    """A ``wids`` shard index (``wids-shard-index-v1``) of ``(file, nsamples, filesize, kind)``."""
    return {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": name,
        "shardlist": [{"url": url, "nsamples": n, "filesize": size} for url, n, size, _kind in shards],
    }
