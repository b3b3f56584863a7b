"""The Sink seam: where a run's samples go, one implementation per ``--output-format``.

The pipeline talks to a sink on its recording side, in this order:
``open(ledger)`` once (make the destination agree with the ledger after a
crash), ``key(index, stem)`` as each row is read, ``skipped(index)`` for rows
done by an earlier run, ``add(outcome)`` as each row's outcome is recorded
(before the ledger commits it), ``ready()`` for shards that are complete,
``commit(shard, ledger)`` after the ledger holds all their rows,
``end_of_input(rows)`` and, when the run got to the end, ``finish()``, then
``close()``.  ``--overwrite`` follows what the *previous* run wrote, whatever its
format, so it is not a sink's job (``records.ledger.wipe``, ``sinks.shards.wipe``).

``keeps_bytes`` says where an image's bytes are stored: ``False`` (files), the
fetcher writes each file itself, in whichever process fetched it; ``True``
(shards), the fetcher hands the bytes back on the Outcome (``payload``) and
``add`` stores them.  A new format is one module with a class like these and
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
    """What a sink made of a row: its outcome as recorded, and where its sample sits in staging."""

    outcome: Outcome
    shard: int | None = None
    end: int | None = None


class Sink(Protocol):
    name: ClassVar[str]
    keeps_bytes: ClassVar[bool]
    root: Path

    def key(self, index: int, stem: str | None) -> str | None: ...
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
