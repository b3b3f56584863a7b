"""The Python API: :func:`download` (blocking, returns a Summary) and :func:`stream`
(an async iterator of outcomes, for embedding in an application's event loop)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, BinaryIO

from imgfetch import pipeline, sources
from imgfetch.config import RunConfig, build
from imgfetch.errors import ConfigError, ImgfetchError
from imgfetch.fetch.engines import make_engine

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from imgfetch.outcome import Outcome, Summary

__all__ = ["ImgfetchError", "config", "download", "execute", "prepare", "run_config", "stream"]

log = logging.getLogger("imgfetch")


def config(source: str | Path, out: str | Path | None = None, **options: object) -> RunConfig:
    """Options -> RunConfig, with bad options reported as :class:`ConfigError`."""
    try:
        return build(source, out, **options)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def prepare(cfg: RunConfig, *, stdin: BinaryIO | None = None) -> pipeline.Run:
    """Check the input and make a Run (fails fast on an unreadable input)."""
    out = cfg.output
    needed: dict[str, str] = {}  # the option as written -> the input column it names
    if out.caption_col is not None:
        needed[f"--caption-col {out.caption_col}"] = out.caption_col
    names_used = out.key == "name" or not out.sharded
    if out.naming.kind == "column" and out.naming.column is not None and names_used:
        needed[f"--name column:{out.naming.column}"] = out.naming.column
    sources.open_check(cfg.input, needed)
    engine = make_engine(cfg.engine, cfg.http)
    return pipeline.Run(cfg, engine, stdin=stdin)


def download(
    source: str | Path,
    out: str | Path | None = None,
    *,
    stdin: BinaryIO | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    **options: object,
) -> Summary:
    """Download every image listed in ``source`` into ``out``; one Outcome per row.

    ``options`` are the CLI's long options with underscores, e.g.
    ``download("cats.txt", "cats", concurrency=64, size=256, name="index")``.
    Raises :class:`~imgfetch.errors.ImgfetchError` only when the run cannot
    happen at all; per-URL failures are in the manifest and the Summary.

    Calling it again with the same ``out`` resumes: rows already done there
    are skipped (``Summary.already_done``), ``retry_failed=True`` /
    ``retry_all_failed=True`` redo failed rows, ``overwrite=True`` starts
    afresh, and a changed input or output-shaping option raises
    :class:`~imgfetch.errors.ResumeConflict` unless ``force=True``.
    """
    cfg = config(source, out, **options)
    return run_config(cfg, stdin=stdin, on_outcome=on_outcome)


def run_config(
    cfg: RunConfig,
    *,
    stdin: BinaryIO | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    handle_signals: bool = False,
) -> Summary:
    run = prepare(cfg, stdin=stdin)
    run.on_outcome = on_outcome
    return execute(run, handle_signals=handle_signals)


def execute(run: pipeline.Run, *, handle_signals: bool = False) -> Summary:
    """Run a prepared Run to the end in a new event loop."""
    return asyncio.run(_execute(run, handle_signals))


async def _execute(run: pipeline.Run, handle_signals: bool) -> Summary:
    if handle_signals:
        _install_signal_handlers(run)
    summary = await run.execute()
    _write_summary(run.cfg, summary)
    return summary


def _install_signal_handlers(run: pipeline.Run) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if run.stopping:
            # Second Ctrl-C: leave now.  Files are only ever renamed into place when
            # complete and the outcomes recorded so far are committed here, so this
            # is still safe: anything else is redone by the next run.
            try:
                run.flush_now()
            finally:
                sys.stderr.write("\nimgfetch: interrupted again, exiting now\n")
                sys.stderr.flush()
                os._exit(130)
        name = signal.Signals(signum).name
        sys.stderr.write(f"\nimgfetch: {name}: finishing rows in flight (Ctrl-C again to quit now)\n")
        run.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)


def _write_summary(cfg: RunConfig, summary: Summary) -> None:
    path = cfg.output.out / "summary.json"
    try:
        path.write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)


async def stream(
    source: str | Path, out: str | Path | None = None, **options: object
) -> AsyncIterator[Outcome]:
    """Yield each row's Outcome as it is recorded, inside the caller's event loop.

    Breaking out of the loop stops the run (rows in flight are finished or left for a later run).
    """
    cfg = config(source, out, **options)
    run = prepare(cfg)
    async for outcome in pipeline.iterate(run):
        yield outcome
