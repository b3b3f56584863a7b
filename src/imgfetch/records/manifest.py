"""The manifest: one JSON line per input row, the record users read (the ledger keeps it in step)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


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
