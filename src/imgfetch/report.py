"""What a person sees: the live progress line and the end-of-run summary."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from pathlib import Path

    from imgfetch.outcome import Outcome, Summary


class Progress:
    """A one-line progress display on a terminal; redrawn at most every ``interval`` seconds."""

    def __init__(self, stream: TextIO, summary: Summary, *, enabled: bool, interval: float = 0.25) -> None:
        self._stream = stream
        self._summary = summary
        self._enabled = enabled
        self._interval = interval
        self._start = time.monotonic()
        self._next = 0.0
        self._width = 0

    def __call__(self, _outcome: Outcome) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval
            self.draw(now)

    def draw(self, now: float | None = None) -> None:
        s = self._summary
        elapsed = max(1e-9, (now or time.monotonic()) - self._start)
        line = (
            f"\r{s.total:,} rows | ok {s.ok:,} | skipped {s.skipped:,} | failed {s.failed:,}"
            f" | {s.ok / elapsed:,.1f} img/s | {s.bytes / 1e6 / elapsed:,.2f} MB/s | {elapsed:,.0f} s"
        )
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self._stream.write(line + " " * pad)
        self._stream.flush()

    def close(self) -> None:
        if self._enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()


def _counts(counter: dict[str, int], limit: int) -> str:
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {v:,}" for k, v in items[:limit])
    if len(items) > limit:
        text += f", ... ({len(items) - limit} more)"
    return text


def format_summary(summary: Summary, out: Path, manifest: Path) -> str:
    s = summary
    lines = [
        f"imgfetch: {s.ok:,} ok, {s.skipped:,} skipped, {s.failed:,} failed of {s.total:,} rows"
        f" in {s.elapsed:,.1f} s ({s.images_per_second:,.1f} images/s, {s.megabytes_per_second:,.2f} MB/s)"
    ]
    if s.interrupted:
        lines.append("  interrupted: rows not started are left for the next run of the same command")
    if s.already_done:
        lines.append(f"  already done in earlier runs: {s.already_done:,} rows")
    if s.failed_reasons:
        lines.append(f"  failed by reason: {_counts(dict(s.failed_reasons), 8)}")
    if s.skipped_reasons:
        lines.append(f"  skipped by reason: {_counts(dict(s.skipped_reasons), 8)}")
    if s.failed_hosts:
        lines.append(f"  hosts with most failures: {_counts(dict(s.failed_hosts), 5)}")
    lines.append(f"  output: {out}  manifest: {manifest}")
    return "\n".join(lines)
