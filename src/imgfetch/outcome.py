"""One outcome record per input row, and the reason codes it can carry.

Every row of the input ends as exactly one :class:`Outcome`: ``ok``, ``skipped``
(deliberately not saved) or ``failed`` (could not be saved), with a short
kebab-case :class:`Reason` for anything that is not ``ok``.  A fault caused by
one URL is always a value of this module, never an exception that escapes.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping


class Status(enum.StrEnum):
    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"


class Reason(enum.StrEnum):
    """Why a row is not ``ok``.  ``http-<code>`` reasons are built by :func:`http_reason`.

    The README's "Reason codes" table documents each one; keep both in step.
    """

    # The row itself
    INVALID_ROW = "invalid-row"
    INVALID_URL = "invalid-url"
    UNSUPPORTED_SCHEME = "unsupported-scheme"
    # Network
    DNS_ERROR = "dns-error"
    CONNECTION_ERROR = "connection-error"
    TLS_ERROR = "tls-error"
    PROXY_ERROR = "proxy-error"
    BLOCKED_ADDRESS = "blocked-address"
    CONNECT_TIMEOUT = "connect-timeout"
    READ_TIMEOUT = "read-timeout"
    TIMEOUT = "timeout"
    TOO_MANY_REDIRECTS = "too-many-redirects"
    BAD_REDIRECT = "bad-redirect"
    TRUNCATED = "truncated"
    TOO_LARGE = "too-large"
    BAD_RESPONSE = "bad-response"
    # Content
    NOT_AN_IMAGE = "not-an-image"
    DECODE_ERROR = "decode-error"
    TOO_MANY_PIXELS = "too-many-pixels"
    OPTED_OUT = "opted-out"
    TOO_SMALL = "too-small"
    BAD_ASPECT_RATIO = "bad-aspect-ratio"
    # Local
    WRITE_ERROR = "write-error"
    INTERNAL_ERROR = "internal-error"


#: Reasons that mean "deliberately not saved" (status ``skipped``) rather than "could not be saved".
SKIP_REASONS = frozenset({Reason.OPTED_OUT.value, Reason.TOO_SMALL.value, Reason.BAD_ASPECT_RATIO.value})


def status_for(reason: str) -> Status:
    return Status.SKIPPED if reason in SKIP_REASONS else Status.FAILED


def http_reason(status: int) -> str:
    """The reason code of a final HTTP error status, e.g. ``http-404``."""
    return f"http-{status}"


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """The final record of one input row; one line of the manifest."""

    row: int
    url: str
    status: Status
    reason: str | None = None
    detail: str | None = None
    http_status: int | None = None
    attempts: int = 0
    bytes: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    orig_format: str | None = None
    orig_width: int | None = None
    orig_height: int | None = None
    sha256: str | None = None
    orig_sha256: str | None = None
    path: str | None = None
    final_url: str | None = None
    elapsed: float = 0.0
    #: Shard formats: the sample's key and the shard file that holds the row (``00000.tar``).
    key: str | None = None
    shard: str | None = None
    #: Shard formats, rows with a sample: which event loop's staging log holds it, where the
    #: image's bytes start and where the sample ends in that log.  Bookkeeping for the
    #: ledger (the published offset is in the per-shard Parquet); never part of the record.
    writer: int | None = dataclasses.field(default=None, repr=False, compare=False)
    offset: int | None = dataclasses.field(default=None, repr=False, compare=False)
    end: int | None = dataclasses.field(default=None, repr=False, compare=False)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_record(self) -> dict[str, Any]:
        """A flat JSON-ready dict: the manifest line.  Extra input columns are nested."""
        rec: dict[str, Any] = {
            "row": self.row,
            "url": self.url,
            "status": self.status.value,
            "reason": self.reason,
            "detail": self.detail,
            "http_status": self.http_status,
            "attempts": self.attempts,
            "bytes": self.bytes,
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "orig_format": self.orig_format,
            "orig_width": self.orig_width,
            "orig_height": self.orig_height,
            "sha256": self.sha256,
            "orig_sha256": self.orig_sha256,
            "path": self.path,
            "final_url": self.final_url,
            "elapsed": round(self.elapsed, 4),
        }
        if self.shard is not None:
            rec.update(key=self.key, shard=self.shard)
        if self.extra:
            rec["extra"] = dict(self.extra)
        return rec

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Outcome:
        names = {f.name for f in dataclasses.fields(cls)} - {"writer", "offset", "end"}
        kwargs = {k: v for k, v in rec.items() if k in names}
        kwargs["status"] = Status(rec["status"])
        kwargs["extra"] = dict(rec.get("extra") or {})
        return cls(**kwargs)


@dataclasses.dataclass(slots=True)
class Summary:
    """Counts of a run (or of a resumed run's rows handled in this process)."""

    total: int = 0
    by_status: Counter[str] = dataclasses.field(default_factory=Counter)
    failed_reasons: Counter[str] = dataclasses.field(default_factory=Counter)
    skipped_reasons: Counter[str] = dataclasses.field(default_factory=Counter)
    failed_hosts: Counter[str] = dataclasses.field(default_factory=Counter)
    bytes: int = 0
    elapsed: float = 0.0
    already_done: int = 0
    interrupted: bool = False

    @property
    def ok(self) -> int:
        return self.by_status[Status.OK.value]

    @property
    def failed(self) -> int:
        return self.by_status[Status.FAILED.value]

    @property
    def skipped(self) -> int:
        return self.by_status[Status.SKIPPED.value]

    @property
    def images_per_second(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / 1e6 / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def failure_rate(self) -> float:
        return self.failed / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "ok": self.ok,
            "skipped": self.skipped,
            "failed": self.failed,
            "failed_reasons": dict(self.failed_reasons),
            "skipped_reasons": dict(self.skipped_reasons),
            "failed_hosts": dict(self.failed_hosts.most_common(20)),
            "bytes": self.bytes,
            "elapsed": round(self.elapsed, 3),
            "images_per_second": round(self.images_per_second, 2),
            "already_done": self.already_done,
            "interrupted": self.interrupted,
        }

    def add(self, outcome: Outcome, host: str | None) -> None:
        self.total += 1
        self.by_status[outcome.status.value] += 1
        if outcome.status is Status.FAILED:
            self.failed_reasons[outcome.reason or "unknown"] += 1
            if host:
                self.failed_hosts[host] += 1
        elif outcome.status is Status.SKIPPED:
            self.skipped_reasons[outcome.reason or "unknown"] += 1
        if outcome.ok and outcome.bytes:
            self.bytes += outcome.bytes
