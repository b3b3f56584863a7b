"""The Runner seam: what does a row, wherever it runs.

A runner takes a :class:`~imgfetch.runners.local.Job` (a row, its parsed URL,
its folder or shard and its name) and returns the row's
:class:`~imgfetch.outcome.Outcome`, or ``None`` when the run is stopping and
the row is left for the next run.  Everything a runner does to a row -- the
per-host gate, attempts through a transport (:mod:`imgfetch.fetch`), the retry
policy, the image check or processing, the write (files) or the hand-back of
the bytes (shards) -- is :class:`~imgfetch.runners.local.Fetcher`'s code; a
runner only decides *where* that code runs:

- :class:`~imgfetch.runners.local.Fetcher` runs it in the pipeline's own event loop;
- :class:`~imgfetch.runners.loops.LoopProcess` sends the row to a forked process
  that runs a Fetcher of its own, for the hosts that process owns (``--loops``).

What the pipeline keeps for itself (reading, naming, the window, the sink, the
ledger) never moves.  A runner for a cluster fits at the level above: it runs
the whole pipeline for one shard's rows in a task (see the shard formats,
where a shard is the unit that is committed at once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from imgfetch.outcome import Outcome
    from imgfetch.runners.local import Job


class Runner(Protocol):
    async def outcome(self, job: Job) -> Outcome | None:
        """The row's outcome; raises only what stops the whole run (``runners.local.FATAL``)."""
        ...

    def stop(self) -> None:
        """The run takes no new rows: retries that could still help are left for the next run."""
        ...
