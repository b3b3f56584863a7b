"""Per-host politeness: in-flight limit, request rate, random delay and adaptive back-off.

Each host has its own gate, so a slow or rate-limiting host only ever delays
its own requests; waiting is done by sleeping on the event loop, never by
blocking it.  Start spacing: a request to a host starts no earlier than the
previous start to that host plus ``1/per_host_rate`` and plus a delay drawn
from ``delay=(MIN, MAX)``.  Back-off is AIMD: a 429/503 halves the host's
allowed concurrency and pauses it (for ``Retry-After`` when given); every
``limit`` successes in a row give one slot back, up to ``per_host``.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgfetch.config import HttpConfig

#: How long a host pauses after a 429/503 that carried no Retry-After.
DEFAULT_PENALTY = 1.0


class HostGate:
    def __init__(
        self, max_limit: int, rate: float | None, delay: tuple[float, float] | None, rng: random.Random
    ) -> None:
        self.max_limit = max_limit
        self.limit = max_limit
        self.active = 0
        self.peak = 0
        self.not_before = 0.0
        self._rate = rate
        self._delay = delay
        self._rng = rng
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._streak = 0

    @property
    def idle(self) -> bool:
        return self.active == 0 and not self._waiters and self.limit == self.max_limit

    async def acquire(self) -> None:
        """Take an in-flight slot, then wait for this request's reserved start time."""
        loop = asyncio.get_running_loop()
        while self.active >= self.limit:
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await fut
            except BaseException:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                elif fut.done() and not fut.cancelled():
                    self._wake()  # pass the wake-up on rather than lose it
                raise
        self.active += 1
        self.peak = max(self.peak, self.active)
        now = loop.time()
        start = max(now, self.not_before)
        # Reserving start times one after another spaces requests exactly, with no herd.
        self.not_before = start + self._gap()
        if start > now:
            try:
                await asyncio.sleep(start - now)
            except BaseException:
                self.release()
                raise

    def _gap(self) -> float:
        gap = 0.0
        if self._rate is not None:
            gap += 1.0 / self._rate
        if self._delay is not None:
            gap += self._rng.uniform(*self._delay)
        return gap

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def penalize(self, now: float, retry_after: float | None, cap: float) -> None:
        """The host said "slow down" (429/503): halve its concurrency and pause it."""
        self.limit = max(1, self.limit // 2)
        self._streak = 0
        pause = min(retry_after, cap) if retry_after is not None else DEFAULT_PENALTY
        self.not_before = max(self.not_before, now + pause)

    def reward(self) -> None:
        """A normal answer: after ``limit`` of them in a row, allow one more in flight."""
        if self.limit >= self.max_limit:
            return
        self._streak += 1
        if self._streak >= self.limit:
            self._streak = 0
            self.limit += 1
            self._wake()


class HostTable:
    """Gates by host name, created on first use and dropped when idle (bounded memory)."""

    PRUNE_AT = 4096

    def __init__(self, cfg: HttpConfig, rng: random.Random | None = None) -> None:
        self._cfg = cfg
        self._rng = rng or random.Random()
        self._gates: dict[str, HostGate] = {}

    def get(self, host: str) -> HostGate:
        gate = self._gates.get(host)
        if gate is None:
            if len(self._gates) >= self.PRUNE_AT:
                self._prune()
            gate = HostGate(self._cfg.per_host, self._cfg.per_host_rate, self._cfg.delay, self._rng)
            self._gates[host] = gate
        return gate

    def _prune(self) -> None:
        now = asyncio.get_running_loop().time()
        for host, gate in list(self._gates.items()):
            if gate.idle and gate.not_before <= now:
                del self._gates[host]
