"""The Sink seam: where a run's samples go, one implementation per ``--output-format``.

The pipeline talks to a sink on its recording side, in this order:
``open(ledger)`` once (make the destination agree with the ledger after a
crash), ``locate(index, folder, stem)`` as each row is read (the folder or
shard and the name or key it is fetched with), ``skipped(index)`` for rows
done by an earlier run, ``add(outcome)`` as each row's outcome is recorded
(before the ledger commits it), ``ready()`` for shards that are complete,
``commit(shard, ledger)`` after the ledger holds all their rows,
``end_of_input(rows)`` and, when the run got to the end, ``finish()``, then
``close()``.  ``--overwrite`` follows what the *previous* run wrote, whatever its
format, so it is not a sink's job (``records.ledger.wipe``, ``sinks.shards.wipe``).

Image bytes are stored by the process that fetched them, with what
``fetch_writer(cfg, root, writer)`` gives each event loop: a
:class:`~imgfetch.sinks.files.FileSink` (files) or a
:class:`~imgfetch.sinks.samples.SampleWriter` (shards); they never travel
between processes.  A new format is one module with a class like these and
one row of :data:`imgfetch.sinks.SINKS`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from imgfetch.config import RunConfig
    from imgfetch.outcome import Outcome
    from imgfetch.records.ledger import Ledger


@dataclasses.dataclass(frozen=True, slots=True)
class Placed:
    """What a sink made of a row: its outcome as recorded and, for the ledger, its shard
    and where its sample is in staging (which writer's log, where it ends, where the
    image's bytes start)."""

    outcome: Outcome
    shard: int | None = None
    writer: int | None = None
    end: int | None = None
    offset: int | None = None


class FetchWriter(Protocol):
    """What a fetcher stores a row's bytes with: a FileSink (files) or a SampleWriter (shards)."""

    root: Path


class Sink(Protocol):
    name: ClassVar[str]
    root: Path

    @classmethod
    def fetch_writer(cls, cfg: RunConfig, root: Path, writer: int) -> FetchWriter: ...
    def locate(self, index: int, folder: str, stem: str | None) -> tuple[str, str | None]: ...
    def open(self, ledger: Ledger) -> None: ...
    def add(self, outcome: Outcome) -> Placed: ...
    def skipped(self, index: int) -> None: ...
    def end_of_input(self, rows: int) -> None: ...
    def ready(self) -> list[int]: ...
    def finish(self) -> list[int]: ...
    async def commit(self, shard: int, ledger: Ledger) -> None: ...
    def close(self) -> None: ...


class SinkFactory(Protocol):
    def __call__(self, cfg: RunConfig, root: Path, state: Path) -> Sink: ...
