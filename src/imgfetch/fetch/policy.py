"""Retry policy: which faults a retry can help, and how long to wait.  Pure: no I/O.

Shared by every engine, so all four make the same decisions.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import random
import re
from typing import TYPE_CHECKING

from imgfetch.outcome import Reason

if TYPE_CHECKING:
    from collections.abc import Callable

#: HTTP statuses worth another try: the server may answer differently later.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})

#: Network faults worth another try.  ``dns-error`` is not among them: the
#: client only reports it for a definite "no such host" (a temporary resolver
#: failure is reported as ``connection-error``).  ``truncated`` is: a dropped
#: connection mid-body is usually transient.
RETRYABLE_REASONS = frozenset(
    {
        Reason.CONNECTION_ERROR.value,
        Reason.CONNECT_TIMEOUT.value,
        Reason.READ_TIMEOUT.value,
        Reason.TIMEOUT.value,
        Reason.TRUNCATED.value,
        Reason.PROXY_ERROR.value,
    }
)


#: Longest Retry-After ever reported (a year); callers cap it much lower (``--max-retry-after``).
MAX_RETRY_AFTER = 365 * 86400.0
# ASCII only: str.isdigit() also accepts "²" and "١", which float() then rejects or misreads.
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)


def is_retryable(reason: str | None) -> bool:
    """True when the failure recorded as ``reason`` could go away on its own."""
    if reason is None:
        return False
    if reason in RETRYABLE_REASONS:
        return True
    if reason.startswith("http-"):
        try:
            return int(reason[5:]) in RETRYABLE_STATUSES
        except ValueError:
            return False
    return False


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    max_retry_after: float = 60.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    Capped exponential backoff with "equal jitter": half the step is fixed so
    retries never bunch at zero, half is random so clients spread out.  A
    server's ``Retry-After`` wins when it asks for longer, up to ``max_retry_after``.
    """
    # The exponent is clamped: 2**1024 overflows a float, and the cap is reached long before.
    step = min(cap, base * math.ldexp(1.0, min(max(attempt - 1, 0), 64)))
    delay = step / 2 + rng() * step / 2
    if retry_after is not None:
        delay = max(delay, min(retry_after, max_retry_after))
    return delay


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or bad.

    ``now`` is the current Unix time, passed in so the function stays pure.
    The header comes from an untrusted server: anything malformed is None, never
    an exception, and the result is always finite and >= 0.
    """
    if not value:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        # Only digits are delay-seconds (RFC 9110); a decimal fraction is tolerated.
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # asctime dates and "-0000" carry no zone; HTTP dates are always GMT.
        when = when.replace(tzinfo=datetime.UTC)
    try:
        seconds = when.timestamp() - now
    except (OverflowError, ValueError, OSError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)
