"""The manifest: one JSON line per input row, the record users read.

:class:`Manifest` owns the file: appends, its size, an atomic rewrite.  The
ledger (:mod:`imgfetch.records.ledger`) decides *when*: it appends each batch
right after committing it, keeps in its ``meta`` how many bytes and lines the
manifest should hold, and has it rewritten from its rows when the two disagree
(a kill between commit and append, a cut line, a deleted manifest, rows
redone by a later run).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

#: Lines per write when rewriting.
_CHUNK = 10_000


class Manifest:
    """``manifest.jsonl``; OSError goes to the caller (who knows what it means for the run)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None

    def append(self, data: bytes) -> None:
        if self._fh is None:
            self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed by close()
        view = memoryview(data)
        while view:
            written = self._fh.write(view)
            view = view[written or 0 :]

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def rewrite(self, lines: Iterable[str]) -> tuple[int, int]:
        """Write the manifest afresh from ``lines`` (in row order), atomically (temp + rename);
        returns its bytes and lines."""
        self.close()
        tmp = self.path.with_name(f".{self.path.name}.imgfetch-rewrite")
        nbytes = nlines = 0
        try:
            with open(tmp, "wb", buffering=1 << 20) as fh:
                chunk: list[str] = []
                for line in lines:
                    chunk.append(line)
                    if len(chunk) >= _CHUNK:
                        nbytes += fh.write(("\n".join(chunk) + "\n").encode("utf-8"))
                        nlines += len(chunk)
                        chunk = []
                if chunk:
                    nbytes += fh.write(("\n".join(chunk) + "\n").encode("utf-8"))
                    nlines += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return nbytes, nlines

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None


def read_manifest(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a manifest; a last line cut short by a crash is ignored."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
