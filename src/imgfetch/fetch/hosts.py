"""Per-host politeness: in-flight limit, request rate, random delay and adaptive back-off.

Each host has its own gate, so a slow or rate-limiting host only ever delays
its own requests; waiting is done by sleeping on the event loop, never by
blocking it.

- In flight: at most ``limit`` requests, ``limit <= per_host``; slots are
  handed over first come, first served.
- Spacing: a request starts no earlier than the previous start to that host
  plus ``1/per_host_rate`` plus a delay drawn from ``delay=(MIN, MAX)``.
  Start times are reserved one after another, so requests are spaced exactly
  and never wake as a herd.  A request that then queues for a global slot
  checks again with :meth:`HostGate.try_start` once it holds one, so two
  requests that both waited there cannot leave back to back.
- Back-off (AIMD): a 429/503 halves ``limit`` and pauses the host (for
  ``Retry-After`` when given, capped); a pause also holds back requests that
  had already reserved a start time.  Every ``limit`` normal answers in a row
  give one slot back, up to ``per_host``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgfetch.config import HttpConfig

#: How long a host pauses after a 429/503 that carried no Retry-After.
DEFAULT_PENALTY = 1.0
#: A backed-off host that has been quiet this long is forgotten (and starts afresh if seen again).
FORGET_AFTER = 300.0
# Sleeps may end a hair early (clock resolution): a pause that ends within this is over.
_EPSILON = 1e-3


class HostGate:
    def __init__(
        self, max_limit: int, rate: float | None, delay: tuple[float, float] | None, rng: random.Random
    ) -> None:
        self.max_limit = max_limit
        self.limit = max_limit
        self.active = 0
        self.peak = 0
        #: Earliest start of the next request (spacing by rate and delay).
        self.next_start = 0.0
        #: No request starts before this (back-off after a 429/503).
        self.paused_until = 0.0
        #: When the last request really went out (see ``try_start``).
        self.last_start = float("-inf")
        self._rate = rate
        self._delay = delay
        self._min_gap = (1.0 / rate if rate is not None else 0.0) + (delay[0] if delay is not None else 0.0)
        self._rng = rng
        # Each waiter's future is resolved with a slot already counted in ``active``.
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._streak = 0

    def forgettable(self, now: float) -> bool:
        """True when dropping this gate loses nothing that still matters."""
        if self.active or self._waiters:
            return False
        quiet_since = max(self.next_start, self.paused_until)
        if quiet_since > now:
            return False
        return self.limit == self.max_limit or now - quiet_since > FORGET_AFTER

    async def acquire(self) -> None:
        """Take an in-flight slot, then wait until this host may see another request."""
        loop = asyncio.get_running_loop()
        await self._take_slot(loop)
        while True:
            try:
                ready = await self._wait_turn(loop)
            except BaseException:
                self.release()
                raise
            if ready:
                return
            # Paused while waiting, and the host now allows fewer in flight than are
            # taken: queue again rather than go out above the lowered limit.
            self.release()
            await self._take_slot(loop)

    async def _take_slot(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
        else:
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self.release()  # the slot was handed to us just before the cancellation
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(fut)
                raise
        self.peak = max(self.peak, self.active)

    async def _wait_turn(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Sleep until this request's start; False if it must give its slot back first."""
        while True:
            now = loop.time()
            start = max(now, self.next_start, self.paused_until)
            self.next_start = start + self._gap()
            if start <= now:
                return True
            paused_until = self.paused_until
            await asyncio.sleep(start - now)
            if self.paused_until <= loop.time() + _EPSILON:
                return True
            # A 429/503 arrived while we slept: our turn moves to after the pause.
            if self.paused_until > paused_until and self.active > self.limit:
                return False

    def try_start(self, now: float) -> float:
        """Called just before the request goes out: 0.0 if it may (recorded as this host's
        last start), else the seconds to wait first.

        Spacing and pauses are then measured between real starts, however long a
        request queued after its turn (for a global slot, say).
        """
        earliest = max(self.paused_until, self.last_start + self._min_gap)
        if earliest > now + _EPSILON:
            return earliest - now
        self.last_start = now
        return 0.0

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
                self.active += 1
                fut.set_result(None)

    def penalize(self, now: float, retry_after: float | None, cap: float) -> None:
        """The host said "slow down" (429/503): halve its concurrency and pause it."""
        self.limit = max(1, self.limit // 2)
        self._streak = 0
        pause = min(retry_after, cap) if retry_after is not None else min(DEFAULT_PENALTY, cap)
        self.paused_until = max(self.paused_until, now + pause)

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
        self._prune_at = self.PRUNE_AT

    def __len__(self) -> int:
        return len(self._gates)

    def get(self, host: str) -> HostGate:
        gate = self._gates.get(host)
        if gate is None:
            if len(self._gates) >= self._prune_at:
                self._prune()
                # Amortised: when most gates are busy, scanning again on every new host would be quadratic.
                self._prune_at = max(self.PRUNE_AT, 2 * len(self._gates))
            gate = HostGate(self._cfg.per_host, self._cfg.per_host_rate, self._cfg.delay, self._rng)
            self._gates[host] = gate
        return gate

    def _prune(self) -> None:
        now = asyncio.get_running_loop().time()
        for host, gate in list(self._gates.items()):
            if gate.forgettable(now):
                del self._gates[host]
