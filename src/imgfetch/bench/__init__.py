"""``imgfetch bench`` and the local servers it, the tests and ``imgfetch demo`` use.

Nothing on the download path imports this package: a run of ``imgfetch URLS -o OUT``
never loads it.  Everything ``imgfetch bench`` runs is in here, so it works from a
plain install (``pip install 'imgfetch[bench]'``), not only from a source checkout:

* :mod:`imgfetch.bench.harness`: the bench itself (:func:`main`, the tools, the measuring);
* :mod:`imgfetch.bench.server`: ``ImageServer`` (scripted faults: the tests, the demo) and
  ``LeanServer`` (the bench), ``python -m imgfetch.bench.server DIR``;
* :mod:`imgfetch.bench.corpus`: the cached corpus of real photos (``python -m imgfetch.bench.corpus``);
* :mod:`imgfetch.bench.classic`: the classic ``ThreadPool`` + ``requests`` peer;
* :mod:`imgfetch.bench.chart`: ``chart.png`` from ``results.json``.

The corpus, the classic peer and the chart need the ``bench`` extra (scikit-image, numpy,
requests, matplotlib); the server needs only imgfetch's own dependencies.  The harness's
names below are loaded on first use, so importing :mod:`imgfetch.bench.server` does not
load the harness.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imgfetch.bench.harness import CEILING, Server, main, processing_ceiling

_HARNESS = frozenset({"CEILING", "Server", "main", "processing_ceiling"})


def __getattr__(name: str) -> Any:
    if name in _HARNESS:
        from imgfetch.bench import harness

        return getattr(harness, name)
    raise AttributeError(f"module 'imgfetch.bench' has no attribute {name!r}")


__all__ = ["CEILING", "Server", "main", "processing_ceiling"]
