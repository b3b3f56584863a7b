"""``imgfetch bench``: the engines and the peers measured side by side (see benchmarks/README.md)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    print("imgfetch: error[not-built]: 'imgfetch bench' is not built yet (issue 6)", file=sys.stderr)
    return 1
